# Generated from solutions/11_llama.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from kuiper.llm.model import Llama
from kuiper.llm.sample import Sampler
from kuiper.llm.tokenizer import chat_prompt, StreamDecoder, Tokenizer


@dataclass
class Stats:
    """Token counts and seconds of one generation, and the next free position in the KV cache."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    position: int = 0

    @property
    def prefill_rate(self) -> float:
        """Prompt tokens per second."""
        return self.prompt_tokens / max(self.prefill_seconds, 1e-9)

    @property
    def decode_rate(self) -> float:
        """Generated tokens per second (each decode step makes one)."""
        return max(self.new_tokens - 1, 0) / max(self.decode_seconds, 1e-9)

    def __str__(self) -> str:
        return (f"prefill: {self.prompt_tokens} tokens, {self.prefill_rate:.1f} tok/s; "
                f"decode: {self.new_tokens} tokens, {self.decode_rate:.1f} tok/s")


def generate(model: Llama, prompt: Sequence[int], sampler: Sampler, max_tokens: int,
             stop: Sequence[int] = (), pos: int = 0, stats: Stats | None = None) -> Iterator[int]:
    """Yield up to `max_tokens` new token ids after `prompt`, whose first token goes to cache position `pos`;
    generation ends early, without an error, at a stop id or when the KV cache is full."""
    stats = Stats() if stats is None else stats
    with model.in_use():
        start = time.perf_counter()
        logits = model.forward(np.asarray(prompt), pos)
        history = list(prompt)
        token = sampler(logits[-1], history)
        stats.prompt_tokens, stats.prefill_seconds, stats.position = len(prompt), time.perf_counter() - start, pos + len(prompt)
        for count in range(max_tokens):
            stats.new_tokens += 1
            yield token
            if token in stop or count == max_tokens - 1 or stats.position >= model.max_seq_len:
                return
            start = time.perf_counter()
            history.append(token)
            logits = model.forward(np.array([token]), stats.position)
            stats.position += 1
            token = sampler(logits[-1], history)
            stats.decode_seconds += time.perf_counter() - start


class Chat:
    """A conversation with a chat model that reuses the KV cache of earlier turns."""

    def __init__(self, model: Llama, tokenizer: Tokenizer, sampler: Sampler, max_tokens: int = 256) -> None:
        self.model, self.tokenizer, self.sampler, self.max_tokens = model, tokenizer, sampler, max_tokens
        self.messages: list[dict[str, str]] = []
        self.cached: list[int] = []

    def say(self, text: str, stats: Stats | None = None) -> Iterator[str]:
        """Add a user message and stream the reply's text; the reply joins the conversation."""
        self.messages.append({"role": "user", "content": text})
        ids = self.tokenizer.encode(chat_prompt(self.messages, self.tokenizer.chat_template))
        same = next((i for i, (a, b) in enumerate(zip(ids, self.cached)) if a != b), min(len(ids), len(self.cached)))
        same = min(same, len(ids) - 1)
        stats = Stats() if stats is None else stats
        reply, decoder, stop = [], StreamDecoder(self.tokenizer), self.tokenizer.eos_ids
        for token in generate(self.model, ids[same:], self.sampler, self.max_tokens, stop, same, stats):
            reply.append(token)
            if token not in stop:
                yield decoder.push(token)
        yield decoder.flush()
        self.cached = (ids + reply)[:stats.position]
        self.messages.append({"role": "assistant", "content": self.tokenizer.decode(t for t in reply if t not in stop)})
