"""Prompt-injection detection: cheap rules first, embedding similarity only when they hesitate.

Two signals, reported separately so an operator can see why a text was blocked:

- **rule**: the weighted regexes of `engine.guard.injection_rules`, run on the normalized
  text *and* on every decoded segment (base64, hex, rot13, alternative leet reading), so
  obfuscated attacks meet the same rules as plain ones. Distinct rules combine as a
  noisy-or: `1 - Π(1 - weight)`. Costs well under a millisecond per KB.
- **similarity**: the max cosine between the text and a shipped reference corpus of known
  attacks (`attacks.jsonl` next to this module), with all-MiniLM-L6-v2. Costs one model
  forward pass (≈ 12 ms on CPU), so it is consulted **only when the rule score lies in the
  inconclusive band `[low_band, threshold)`** — that is, some rule fired but not decisively.
  The `cue.*` rules (weight 0.12, never blocking) put text that merely talks about
  instructions, prompts, rules, personas or the assistant into that band. Text with no rule
  hit at all is never embedded (most customer tickets), and text the rules already block is
  not embedded either (the answer cannot change).

Why this policy: model-based guards cost 100-200 ms elsewhere and most traffic is benign and
keyword-free, so the model runs for the minority of texts where it can change the decision.
A paraphrased attack that avoids every cue word is out of reach of both signals by design.

Similarity evidence becomes a score by mapping the cosine linearly from `similarity_floor`
(0) to `similarity_threshold` (= `threshold`) and beyond (towards 1); it joins the rule score
with the same noisy-or. Long texts are embedded as up to three windows around the rule
hits, so a 10 KB ticket costs the same as a 1 KB one and the attack is not averaged away.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, Protocol

from engine.guard.injection_rules import GROUPS, RULES
from engine.guard.normalize import fold, normalize

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["Finding", "InjectionDetector", "InjectionResult", "TextEmbedder", "reference_attacks"]

Signal = Literal["rule", "similarity"]
_SKIP_ON = {"rot13": ("cue.",), "leet-l": ("cue.",)}  # cue words in rot13 text mean nothing
_WINDOW = 300
_MAX_WINDOWS = 3


class TextEmbedder(Protocol):
    """What the similarity signal needs: `engine.resources.embeddings.Embedder` or a fake."""

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True, slots=True)
class Finding:
    """Why a text looks like an injection. Plain data: `to_json()` is a dict of str/float."""

    signal: Signal
    name: str  # the rule name, or the id of the nearest reference attack
    score: float  # the rule's weight, or the cosine similarity
    snippet: str
    source: str = "text"  # text | base64 | hex | rot13 | leet-l

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class InjectionResult:
    """`signal` names the signal that contributed most to `score`, None when nothing fired."""

    score: float
    blocked: bool
    findings: list[Finding] = field(default_factory=list)
    signal: Signal | None = None

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "blocked": self.blocked, "signal": self.signal,
                "findings": [f.to_json() for f in self.findings]}


def reference_attacks() -> list[dict[str, str]]:
    """The shipped corpus of known attacks the similarity signal compares against."""
    raw = resources.files("engine.guard").joinpath("attacks.jsonl").read_text("utf-8")
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def _snippet(text: str, start: int, end: int, pad: int = 30) -> str:
    lo, hi = max(0, start - pad), min(len(text), end + pad)
    return text[lo:hi].replace("\n", " ")[:120]


def _noisy_or(weights: list[float]) -> float:
    miss = 1.0
    for weight in weights:
        miss *= 1.0 - weight
    return 1.0 - miss


class InjectionDetector:
    """Scores text for prompt injection; one instance per process, safe to share."""

    def __init__(
        self,
        threshold: float = 0.8,
        embedder: TextEmbedder | None = None,
        similarity_threshold: float = 0.75,
        *,
        similarity_floor: float = 0.45,
        low_band: float = 0.1,
    ) -> None:
        self.threshold = threshold
        self.embedder = embedder
        self.similarity_threshold = similarity_threshold
        self.similarity_floor = similarity_floor
        self.low_band = low_band
        self.similarity_calls = 0
        self._reference: list[dict[str, str]] | None = None
        self._matrix: npt.NDArray[np.float32] | None = None

    # -- rules --------------------------------------------------------------------------------
    def _hits(self, text: str) -> list[tuple[Finding, int]]:
        """Best hit per rule over all candidates, with its offset in the folded text (or -1)."""
        normalized = normalize(text)
        best: dict[str, tuple[Finding, int]] = {}
        for source, candidate in normalized.candidates():
            skip = _SKIP_ON.get(source, ())
            seen: list[bool | None] = [None] * len(GROUPS)
            for rule in RULES:
                if rule.name in best or (skip and rule.name.startswith(skip)):
                    continue
                match = rule.search(candidate, seen)
                if match is not None:
                    finding = Finding("rule", rule.name, rule.weight,
                                      _snippet(candidate, match.start(), match.end()), source)
                    best[rule.name] = (finding, match.start() if source == "text" else -1)
        strong = [f for f, _ in best.values() if not f.name.startswith("cue.")]
        obfuscated = sorted(normalized.flags & {"invisible", "homoglyph", "spaced", "leet"})
        if strong and obfuscated:
            best["obfuscation"] = (Finding("rule", "obfuscation", 0.3, ",".join(obfuscated)), -1)
        return list(best.values())

    def scan_rules(self, text: str) -> list[Finding]:
        """Rule findings for `text`, strongest first. Pure and synchronous."""
        return sorted((f for f, _ in self._hits(text)), key=lambda f: -f.score)

    @staticmethod
    def rule_score(findings: list[Finding]) -> float:
        return _noisy_or([f.score for f in findings if f.signal == "rule"])

    # -- similarity ---------------------------------------------------------------------------
    async def warm_up(self) -> None:
        """Load the model and embed the reference corpus now rather than on the first record."""
        if self.embedder is not None:
            warm = getattr(self.embedder, "warm_up", None)
            if warm is not None:
                await warm()
            await self._reference_matrix(self.embedder)

    async def _reference_matrix(self, embedder: TextEmbedder) -> npt.NDArray[np.float32]:
        if self._matrix is None:
            self._reference = reference_attacks()
            self._matrix = await embedder.embed([fold(a["text"]) for a in self._reference])
        return self._matrix

    def _windows(self, text: str, offsets: list[int]) -> list[str]:
        folded = fold(text)
        if len(folded) <= 2 * _WINDOW:
            return [folded]
        windows: list[str] = []
        last = -_WINDOW
        for offset in sorted(o for o in offsets if o >= 0):
            if offset - last >= _WINDOW and len(windows) < _MAX_WINDOWS:
                lo = max(0, offset - _WINDOW // 2)
                windows.append(folded[lo:lo + 2 * _WINDOW])
                last = offset
        return windows or [folded[: 2 * _WINDOW]]

    async def _similarity(
        self, embedder: TextEmbedder, text: str, offsets: list[int]
    ) -> tuple[float, Finding]:
        self.similarity_calls += 1
        matrix = await self._reference_matrix(embedder)
        windows = self._windows(text, offsets)
        sims = (await embedder.embed(windows)) @ matrix.T
        row, col = divmod(int(sims.argmax()), sims.shape[1])
        cosine = float(sims[row, col])
        assert self._reference is not None
        nearest = self._reference[col]["id"]
        finding = Finding("similarity", nearest, round(cosine, 4), windows[row][:120])
        return self._similarity_score(cosine), finding

    def _similarity_score(self, cosine: float) -> float:
        top, floor = self.similarity_threshold, self.similarity_floor
        if cosine >= top:
            return min(1.0, self.threshold + (1 - self.threshold) * (cosine - top) / (1 - top))
        return max(0.0, (cosine - floor) / (top - floor)) * self.threshold

    # -- both ---------------------------------------------------------------------------------
    def needs_similarity(self, rule_score: float) -> bool:
        """The policy: only an inconclusive rule score consults the embedding model."""
        return self.embedder is not None and self.low_band <= rule_score < self.threshold

    async def scan(self, text: str) -> InjectionResult:
        """Rules, then (only if inconclusive) similarity; see the module docstring."""
        hits = self._hits(text)
        findings = sorted((f for f, _ in hits), key=lambda f: -f.score)
        rules = self.rule_score(findings)
        strongest = max((f.score for f in findings if not f.name.startswith("cue.")), default=0)
        signal: Signal | None = "rule" if strongest > 0 else None
        score = rules
        if self.embedder is not None and self.needs_similarity(rules):
            evidence, finding = await self._similarity(self.embedder, text, [o for _, o in hits])
            if evidence > 0:
                findings.append(finding)
                score = _noisy_or([rules, evidence])
                if evidence > strongest:
                    signal = "similarity"
        score = round(score, 4)
        return InjectionResult(score, score >= self.threshold, findings, signal)
