"""Quality and rollout: golden-dataset tests (`engine test`), shadow comparisons
(`engine compare`) and the statistics that tell two versions apart."""
