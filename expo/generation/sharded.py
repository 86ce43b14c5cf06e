"""Generation and verification split over the processes torchrun started: data parallel.

A generation stage launched with one process per GPU (`torchrun --nproc-per-node N -m expo ...`) runs
one engine per GPU (`expo.generation.engine.engine_parallelism`: tensor parallel 1, vLLM's external
launcher), which for a model that fits one card samples N times as fast as one engine spread over the
N cards. Every process walks the same rows in the same order; only the expensive calls are split:
each generate call samples this process's share of the prompts and gathers everyone's completions,
and each verification scores this process's share of the texts. So every process ends holding the
same results, and the stage's main process writes them.

    generator = ProcessShards(make_generator(...))       # the same interface, split under torchrun
    scores = shared_scores(verify.rewards)(texts, golds)  # likewise for a reward function
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from expo.train.distributed import gather_shards, shard


class ProcessShards:
    """A generator whose `generate` samples this process's share of the prompts and returns
    everyone's completions, in prompt order. Everything else is the wrapped generator's (its `stats`
    count this process's share)."""

    def __init__(self, generator: Any) -> None:
        self.inner = generator

    def generate(self, prompts: list[str], **kwargs: Any) -> list[list[Any]]:
        return gather_shards(self.inner.generate(shard(prompts), **kwargs), len(prompts))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def shared_scores(score: Callable[..., list]) -> Callable[..., list]:
    """`score(texts, golds)` with each process scoring its share (the same list back on every one)."""

    def split(texts: Sequence[str], golds: Sequence[str], **kwargs: Any) -> list:
        return gather_shards(list(score(shard(texts), shard(golds), **kwargs)), len(texts))

    return split


__all__ = ["ProcessShards", "shared_scores"]
