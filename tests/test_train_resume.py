"""Checkpoint checks: a truncated or half-written newest checkpoint is skipped with a warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from expo.train.resume import checkpoint_problem, latest_valid_checkpoint


def fake_checkpoint(root: Path, step: int) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, folder / "model.safetensors")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"x": step}, folder / name)
    (folder / "expo_state.json").write_text(json.dumps({"step": step}))
    return folder


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("damage,words", [
    (lambda f: truncate(f / "model.safetensors", 200), "truncated"),  # weights cut short
    (lambda f: truncate(f / "model.safetensors", 4), "header"),  # not even a header
    (lambda f: (f / "optimizer.pt").unlink(), "optimizer.pt"),
    (lambda f: truncate(f / "scheduler.pt", 0), "scheduler.pt"),
    (lambda f: (f / "expo_state.json").unlink(), "expo_state.json"),  # killed before the last write
    (lambda f: (f / "trainer_state.json").write_text("{"), "trainer_state.json"),
    (lambda f: (f / "model.safetensors").unlink(), "no model.safetensors"),
])
def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path: Path, damage, words: str) -> None:
    fake_checkpoint(tmp_path, 2)
    newest = fake_checkpoint(tmp_path, 10)
    assert checkpoint_problem(newest) is None
    damage(newest)
    assert words in checkpoint_problem(newest)
    with pytest.warns(RuntimeWarning, match="checkpoint-10 is damaged"):
        assert latest_valid_checkpoint(tmp_path).name == "checkpoint-2"


def test_numeric_order_and_none(tmp_path: Path) -> None:
    assert latest_valid_checkpoint(tmp_path / "missing") is None
    for step in (2, 10, 9):
        fake_checkpoint(tmp_path, step)
    assert latest_valid_checkpoint(tmp_path).name == "checkpoint-10"  # 10 > 9 although "10" < "9"
