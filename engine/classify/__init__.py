"""The classify stage's two engines: local embeddings (`prototypes`) and a model (`prompt`)."""
