"""Finding the checkpoint to resume from, and refusing a damaged one.

A run killed mid-save can leave a truncated `checkpoint-N/`: weights cut short, optimizer state missing,
no `expo_state.json` (written last). `latest_valid_checkpoint` walks the checkpoints newest first, checks
each one, warns about every damaged one it skips, and returns the newest intact one (or None).

Checks: `trainer_state.json` parses and names step N; the weights (`model.safetensors` or, with LoRA,
`adapter_model.safetensors`) have a readable safetensors header whose tensors fit in the file;
`optimizer.pt`, `scheduler.pt` and `rng_state.pth` exist and are not empty; `expo_state.json` parses.
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
REQUIRED_NONEMPTY = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
WEIGHTS = ("model.safetensors", "adapter_model.safetensors")


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
    for name in REQUIRED_NONEMPTY:
        path = folder / name
        if not path.is_file() or path.stat().st_size == 0:
            return f"{name} is missing or empty"
    for name in extra_files:
        try:
            json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{name} is missing or unreadable"
    return None


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


__all__ = ["checkpoints", "checkpoint_problem", "safetensors_problem", "latest_valid_checkpoint"]
