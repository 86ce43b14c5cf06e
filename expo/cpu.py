"""Torch threads for stages that run side by side on one CPU machine.

kfp.local runs the iterations of the pipeline's ParallelFor (one per training arm) two at a time,
and each stage process starts as many torch threads as the machine has cores: two arms put twice the
threads on the cores. On the 2-core machine a training step of the embedded default then took 4.0 s
instead of 0.56 s (docs/benchmarks.md), the OpenMP threads of the two processes mostly waiting on
each other. `expo run` states in $EXPO_CONCURRENT_TASKS how many tasks share the machine, and the
stages inside the loop (train, the arms' evaluation) take their share of the cores. Nothing changes
on a GPU or without the variable (a cluster pod has cores of its own).

    share_cpu_threads()   # at the start of a stage that may run beside others
"""

from __future__ import annotations

import logging
import os

CONCURRENT_TASKS_ENV = "EXPO_CONCURRENT_TASKS"

log = logging.getLogger(__name__)


def share_cpu_threads() -> int | None:
    """Set torch's intra-op threads to this task's share of the usable cores; the count set, or None
    when nothing was changed (no variable, or a GPU)."""
    raw = os.environ.get(CONCURRENT_TASKS_ENV, "").strip()
    if not raw:
        return None
    try:
        tasks = int(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a whole number", CONCURRENT_TASKS_ENV, raw)
        return None
    import torch

    if torch.cuda.is_available():
        return None
    from expo.verify_pool import usable_cpus

    threads = max(1, usable_cpus() // max(1, tasks))
    torch.set_num_threads(threads)
    return threads
