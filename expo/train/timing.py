"""Named timing contexts for the phases of one training step.

The trainer wraps each phase (generation, reward, log-probs, the ExPO NLL, backward, explanation
regeneration) in `timer.phase(name)`; at the end of the step `timer.flush()` returns seconds per phase
and starts the next step from zero. Nested phases are allowed; each counts its own wall time.

    timer = PhaseTimer()
    with timer.phase("generation"):
        ...
    timer.flush()  # {"generation": 0.21}
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

PHASES = ("generation", "reward", "logprobs", "expo_nll", "backward", "explain_regen")


class PhaseTimer:
    """Accumulates wall-clock seconds per phase name until flushed."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] += time.perf_counter() - start

    def flush(self) -> dict[str, float]:
        """Seconds per phase since the last flush; every name of PHASES is present (0.0 if unused)."""
        out = {name: 0.0 for name in PHASES}
        out.update(self._seconds)
        self._seconds = defaultdict(float)
        return out


__all__ = ["PHASES", "PhaseTimer"]
