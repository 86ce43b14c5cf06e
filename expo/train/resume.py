"""Finding the checkpoint to resume from, and refusing a damaged one.

A run killed mid-save can leave a truncated `checkpoint-N/`: weights cut short, optimizer state missing,
no `expo_state.json` (written last). `latest_valid_checkpoint` walks the checkpoints newest first, checks
each one, warns about every damaged one it skips, and returns the newest intact one (or None).

Checks: `trainer_state.json` parses and names step N; the weights (`model.safetensors` or, with LoRA,
`adapter_model.safetensors`) have a readable safetensors header whose tensors fit in the file;
`optimizer.pt`, `scheduler.pt` and the RNG state exist and are not empty; `expo_state.json` parses.

Several processes (torchrun, a TrainJob): each keeps state of its own, the RNG state that HF Trainer
saves as `rng_state_<rank>.pth` and the trainer's `expo_state-rank<r>.json` (`rank_file`). Rank 0
writes `expo_state.json` last, after every process has written its files, and records the number of
processes in it (`world`), so a checkpoint is complete only when every process's files are there.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_RNG_OF_RANK = re.compile(r"^rng_state_(\d+)\.pth$")
REQUIRED_NONEMPTY = ("optimizer.pt", "scheduler.pt")
WEIGHTS = ("model.safetensors", "adapter_model.safetensors")


def rank_file(name: str, rank: int) -> str:
    """The file process `rank` keeps its own copy of `name` in: rank 0 `name` itself.

    >>> rank_file("expo_state.json", 0), rank_file("expo_state.json", 1)
    ('expo_state.json', 'expo_state-rank1.json')
    """
    if rank == 0:
        return name
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}-rank{rank}.{suffix}" if dot else f"{name}-rank{rank}"


def checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `checkpoint-N` under `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found, reverse=True)


def checkpoint_problem(folder: str | Path, extra_files: tuple[str, ...] = ("expo_state.json",)) -> str | None:
    """Why `folder` cannot be resumed from, or None when it looks intact."""
    folder = Path(folder)
    m = _CHECKPOINT.match(folder.name)
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "trainer_state.json is missing or unreadable"
    if m and state.get("global_step") != int(m.group(1)):
        return f"trainer_state.json says step {state.get('global_step')}, folder says {m.group(1)}"
    weights = [folder / name for name in WEIGHTS if (folder / name).is_file()]
    if not weights:
        return "no model.safetensors or adapter_model.safetensors"
    problem = safetensors_problem(weights[0])
    if problem:
        return problem
    world = 1
    for name in extra_files:
        try:
            record = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{name} is missing or unreadable"
        world = max(world, int(record.get("world", 1)) if isinstance(record, dict) else 1)
        for rank in range(1, world):
            try:
                json.loads((folder / rank_file(name, rank)).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return f"{rank_file(name, rank)} is missing or unreadable (process {rank} of {world})"
    for name in REQUIRED_NONEMPTY + _rng_files(folder, world):
        path = folder / name
        if not path.is_file() or path.stat().st_size == 0:
            return f"{name} is missing or empty"
    return None


def _rng_files(folder: Path, world: int) -> tuple[str, ...]:
    """HF Trainer's RNG state: `rng_state.pth` from one process, `rng_state_<rank>.pth` from each of
    several. Without a recorded world, the numbered files present say how many processes there were."""
    if world == 1 and not (folder / "rng_state.pth").is_file():
        ranks = [int(m.group(1)) for p in folder.glob("rng_state_*.pth") if (m := _RNG_OF_RANK.match(p.name))]
        world = max(ranks) + 1 if ranks else 1
    return ("rng_state.pth",) if world == 1 else tuple(f"rng_state_{rank}.pth" for rank in range(world))


def safetensors_problem(path: Path) -> str | None:
    """None when the file's header parses and every tensor's byte range lies inside the file."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                return f"{path.name}: header longer than the file (truncated)"
            header = json.loads(fh.read(header_len))
    except (OSError, ValueError, struct.error):
        return f"{path.name}: unreadable safetensors header"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        return f"{path.name}: {8 + header_len + end} bytes expected, {size} on disk (truncated)"
    return None


def latest_valid_checkpoint(root: str | Path, extra_files: tuple[str, ...] = ("expo_state.json",)
                            ) -> Path | None:
    """The newest intact checkpoint under `root`; each damaged newer one is skipped with a warning."""
    for step, folder in checkpoints(root):
        problem = checkpoint_problem(folder, extra_files)
        if problem is None:
            return folder
        message = f"checkpoint {folder} is damaged ({problem}); falling back to an earlier one"
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return None


__all__ = ["checkpoints", "checkpoint_problem", "latest_valid_checkpoint", "rank_file", "safetensors_problem"]
