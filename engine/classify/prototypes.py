"""The embedding engine: labels known by the texts that exemplify them, decided by nearness.

Each label is a cloud of prototype vectors — its description and its examples, embedded once
with the local model. A text's score for a label is the mean cosine similarity of its `k`
nearest prototypes of that label (k-NN averaged per label: nearest-centroid's stability with
a nearest-neighbour's reach into a label's odd corners), plus the label's `bias` (to favour
the label whose miss costs more: an urgent ticket taken for routine). The confidence is the
winning label's share of a softmax over the scores at `temperature`: a function of the
margins to the other labels, 1/n when every label scores the same. Free and fast — the
high-volume tier; the model engine is for what this one is unsure of.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["Decision", "LabelSet"]


@dataclass(frozen=True, slots=True)
class Decision:
    label: str
    confidence: float
    scores: dict[str, float]


class LabelSet:
    """One label set (category, say): its labels' prototype texts, then their vectors."""

    def __init__(self, texts: Mapping[str, Sequence[str]], biases: Mapping[str, float], *,
                 k: int, temperature: float) -> None:
        self.labels = list(texts)
        self.texts = [text for label in self.labels for text in texts[label]]
        self._owner = [i for i, label in enumerate(self.labels) for _ in texts[label]]
        self._bias = [biases.get(label, 0.0) for label in self.labels]
        self.k = k
        self.temperature = temperature
        self.vectors: npt.NDArray[np.float32] | None = None

    def fit(self, vectors: npt.NDArray[np.float32]) -> None:
        """Take the prototype vectors, in the order of `texts` (numpy is imported here, at
        warm-up, not when the pipeline compiles: `engine validate` never needs it)."""
        import numpy as np

        self.vectors = vectors
        self.owner = np.array(self._owner, dtype=np.intp)
        self.bias = np.array(self._bias)

    def decide(self, vector: npt.NDArray[np.float32]) -> Decision:
        import numpy as np

        assert self.vectors is not None, "fit() first"
        similarity = self.vectors @ vector
        scores = np.array([self._score(similarity[self.owner == i])
                           for i in range(len(self.labels))]) + self.bias
        shifted = np.exp((scores - scores.max()) / self.temperature)
        shares = shifted / shifted.sum()
        best = int(np.argmax(scores))
        return Decision(self.labels[best], round(float(shares[best]), 4),
                        {label: round(float(score), 4)
                         for label, score in zip(self.labels, scores, strict=True)})

    def _score(self, similarities: npt.NDArray[np.float32]) -> float:
        import numpy as np

        k = min(self.k, len(similarities))
        return float(np.partition(similarities, -k)[-k:].mean())
