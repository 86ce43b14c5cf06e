"""Which training process this is: the launcher's environment (torchrun, accelerate) read in one place.

Under a launcher every process trains; only the main process (rank 0) writes the output folder.
"""

from __future__ import annotations

import os


def world_size() -> int:
    """Training processes of this run: $WORLD_SIZE, which torchrun and accelerate launch set (1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or a run without a launcher): the one process that writes the output folder."""
    return int(os.environ.get("RANK", "0")) == 0


__all__ = ["is_main_process", "world_size"]
