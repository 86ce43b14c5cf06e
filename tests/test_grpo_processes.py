"""ExP-GRPO in two processes (torchrun, gloo) against the same run in one, with the same global batch.

tests/ddp_grpo_worker.py makes every reward zero, so the loss is the ExPO term alone and does not
depend on the sampled rollouts: two processes, each with half of the step's questions, must give what
one process gives, step for step (loss, gradient norm, the NLL term and its counts, all over every
process), and end with the same weights. The explanations differ in length ("\\boxed{2}" against
"\\boxed{10}"), so a term averaged per process instead of over every process's tokens shows up.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from expo.io import read_jsonl
from trainkit import make_folders, run_torchrun

STEPS = 3
COMPARED = ("loss", "grad_norm", "expo_nll", "expo_term", "total_loss", "grpo_loss", "expo/tokens",
            "explanations_used", "unsolved_groups")


def _run(root: Path, processes: int) -> Path:
    out = root / f"processes-{processes}"
    run_torchrun("ddp_grpo_worker.py", root, out, STEPS, processes=processes, timeout=500)
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path: Path) -> None:
    make_folders(tmp_path, n=8)
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    rows = {n: read_jsonl(out / "metrics.jsonl") for n, out in ((1, one), (2, two))}
    assert [r["step"] for r in rows[2]] == list(range(1, STEPS + 1))
    for alone, split in zip(rows[1], rows[2], strict=True):
        assert split["explanations_used"] == split["unsolved_groups"] == 4  # both processes' questions
        for key in COMPARED:
            assert split[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-6), (split["step"], key)
    weights = {n: load_file(str(out / "model" / "model.safetensors")) for n, out in ((1, one), (2, two))}
    start = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert weights[1].keys() == weights[2].keys()
    for name, tensor in weights[1].items():
        torch.testing.assert_close(weights[2][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert any(not torch.equal(weights[1][name], start[name]) for name in start)  # it trained
