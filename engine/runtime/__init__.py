"""Running compiled pipelines: one record (`executor`), many records (`batch`)."""
