"""Input guards: normalization, prompt-injection detection and PII handling for the guard stage."""
