# Generated from solutions/11_llama.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kuiper.errors import KuiperError


def top_p_filter(probs: np.ndarray, p: float) -> np.ndarray:
    """The nucleus of a distribution: its most likely tokens whose total reaches p, renormalised."""
    order = np.argsort(probs)[::-1]
    before = np.cumsum(probs[order]) - probs[order]
    kept = np.zeros_like(probs)
    keep = order[before < p]
    kept[keep] = probs[keep]
    return kept / kept.sum()


class Sampler:
    """Picks the next token: greedy at temperature 0, else repetition penalty, temperature, top-k, top-p."""

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, seed: int | None = None) -> None:
        """temperature >= 0 (0 = greedy), top_k >= 0 (0 = all), top_p in (0, 1], repetition_penalty > 0
        (1 = none), seed >= 0 or None; KuiperError naming the setting otherwise."""
        for name, value, ok, rule in (
                ("temperature", temperature, lambda v: v >= 0, ">= 0 (0 is greedy)"),
                ("top_p", top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
                ("repetition_penalty", repetition_penalty, lambda v: v > 0, "> 0 (1 is none)")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise KuiperError(f"sampler setting {name} must be a finite number {rule}, got {value!r}")
        for name, value in (("top_k", top_k), ("seed", 0 if seed is None else seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise KuiperError(f"sampler setting {name} must be an integer >= 0, got {value!r}")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.repetition_penalty = repetition_penalty
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """The next token id for logits (V,) after the tokens in `history`."""
        logits = np.array(logits.get() if hasattr(logits, "get") else logits, dtype=np.float64)  # cupy: to the CPU
        if self.repetition_penalty != 1.0 and len(history):
            seen = np.unique(np.asarray(history))
            logits[seen] = np.where(logits[seen] > 0, logits[seen] / self.repetition_penalty,
                                    logits[seen] * self.repetition_penalty)
        if self.temperature <= 0:
            return int(np.argmax(logits))
        logits /= self.temperature
        if 0 < self.top_k < len(logits):
            logits[logits < np.partition(logits, -self.top_k)[-self.top_k]] = -np.inf
        probs = np.exp(logits - logits.max())
        probs = top_p_filter(probs / probs.sum(), self.top_p) if self.top_p < 1.0 else probs / probs.sum()
        return int(min(np.searchsorted(np.cumsum(probs), self.rng.random()), len(probs) - 1))
