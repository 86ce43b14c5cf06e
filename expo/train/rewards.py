"""The reward the trainers call: a TRL reward function, the verifier's unless a caller gives its own."""

from __future__ import annotations

from collections.abc import Callable

# `reward_fn(completions, answer, **columns)`: 1.0 right, 0.0 wrong, None when it cannot be judged.
RewardFn = Callable[..., list[float | None]]


def default_reward() -> RewardFn:
    """The verifier reward: 1.0 when a completion's final answer is equivalent to the gold one."""
    from expo.verify import math_reward

    return math_reward


__all__ = ["RewardFn", "default_reward"]
