"""Talking to models: the litellm adapter and direct path, retries, circuit breakers,
idempotency, the offline local model and the chaos stub provider used to test them."""
