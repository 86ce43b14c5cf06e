"""Checkpoint checks: a truncated or half-written newest checkpoint is skipped with a warning; a
checkpoint of several processes holds every process's state, and a resumed two-process run (torchrun,
gloo, on CPU) gives each process back its own explanation buffer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from expo.io import read_json, read_jsonl
from expo.train.resume import checkpoint_problem, latest_valid_checkpoint
from tests.trainkit import make_folders, run_torchrun


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


def test_a_multi_process_checkpoint_needs_every_process_files(tmp_path: Path) -> None:
    """Two processes: rng_state_0.pth and rng_state_1.pth instead of rng_state.pth, and rank 1's own
    expo_state-rank1.json beside rank 0's expo_state.json (which records the world of 2)."""
    folder = fake_checkpoint(tmp_path, 4)
    (folder / "rng_state.pth").unlink()
    for rank in (0, 1):
        torch.save({"x": rank}, folder / f"rng_state_{rank}.pth")
    (folder / "expo_state.json").write_text(json.dumps({"step": 4, "world": 2}))
    (folder / "expo_state-rank1.json").write_text(json.dumps({"step": 4, "rank": 1}))
    assert checkpoint_problem(folder) is None
    (folder / "rng_state_1.pth").unlink()
    assert "rng_state_1.pth" in checkpoint_problem(folder)
    torch.save({"x": 1}, folder / "rng_state_1.pth")
    (folder / "expo_state-rank1.json").unlink()  # rank 0 marked it complete, rank 1's file is gone
    assert "expo_state-rank1.json is missing" in checkpoint_problem(folder)


def _two_processes(root: Path, out: Path, steps: int) -> None:
    """An online exp-grpo run of `steps` steps with 2 CPU processes (tests/ddp_resume_worker.py)."""
    run_torchrun("ddp_resume_worker.py", root, out, steps)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_resumed_two_process_run_restores_every_process_buffer(tmp_path: Path) -> None:
    """Each process regenerates explanations for its own questions, so each has a buffer of its own.
    A 2-step run checkpoints both (rank 1's in expo_state-rank1.json); a longer run resumes from
    checkpoint 2 and every process starts from exactly the buffer it had when it saved."""
    make_folders(tmp_path)
    _two_processes(tmp_path, tmp_path / "first", steps=2)
    checkpoint = tmp_path / "ckpt" / "checkpoint-2"
    assert checkpoint_problem(checkpoint) is None
    assert json.loads((checkpoint / "expo_state.json").read_text())["world"] == 2
    saved = {rank: read_json(tmp_path / "dump" / f"saved-rank{rank}-step2.json") for rank in (0, 1)}
    assert read_json(checkpoint / "expo_state-rank1.json")["buffer"] == saved[1]
    texts = {rank: [item["text"] for items in saved[rank]["items"].values() for item in items]
             for rank in (0, 1)}
    assert any(t.startswith("r1n1") for t in texts[1]) and not any(t.startswith("r1") for t in texts[0])
    assert any(t.startswith("r0n1") for t in texts[0])

    _two_processes(tmp_path, tmp_path / "second", steps=3)
    assert Path(read_json(tmp_path / "second" / "summary.json")["resumed_from"]).name == "checkpoint-2"
    for rank in (0, 1):
        assert read_json(tmp_path / "dump" / f"loaded-rank{rank}.json") == saved[rank], rank
    assert [row["step"] for row in read_jsonl(tmp_path / "second" / "metrics.jsonl")] == [1, 2, 3]
