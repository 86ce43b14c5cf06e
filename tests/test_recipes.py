"""configs/: the paper's settings as ready recipes; each loads strictly and compiles into the pipeline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from expo.config import EMBEDDED_PRESET, load_config, to_dict
from tests.lint_tools import ROOT, run, tool

RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
# Configs on the embedded task (the tiny model): the embedded default with other arms, to compare arms in
# minutes on a CPU; every other config is a real model's recipe.
EMBEDDED_TASK = {"compare-privileged"}


def header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(
        line for line in lines[: next(i for i, ln in enumerate(lines) if not ln.startswith("#"))]
    )


def test_there_are_recipes():
    assert len(RECIPES) >= 8


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_strictly(path):
    cfg = load_config(path)
    assert cfg.name == path.stem  # the run name says which recipe made it
    if path.stem not in EMBEDDED_TASK:
        assert cfg.model.source != "builtin:tiny"
        assert cfg.data.sources or cfg.data.source != "builtin:needle"
    raw = yaml.safe_load(path.read_text())
    assert "tracking" not in raw  # the tracking server comes from the cluster's secret, not a recipe


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_notes_gpus_and_time_matching_its_settings(path):
    text, cfg = header(path), load_config(path)
    assert "Expected time" in text and "GPUs:" in text
    m = re.search(r"\((\d+) nodes? x (\d+)", text)
    assert m, f"{path.name}: note the training layout as '(N node(s) x G)'"
    assert (int(m.group(1)), int(m.group(2))) == (cfg.cluster.train_nodes, cfg.cluster.gpus_train)
    assert f"configs/{path.name}" in text  # the command to run it


def test_an_embedded_task_config_is_the_embedded_default_but_for_its_name_and_arms():
    """So its figures compare with the embedded default's (docs/embedded-default.md), and a change of
    the preset reaches it (or fails here)."""
    preset = to_dict(load_config(EMBEDDED_PRESET))
    for name in EMBEDDED_TASK:
        cfg = to_dict(load_config(ROOT / "configs" / f"{name}.yaml"))
        assert cfg["name"] == name and cfg["train"]["arms"] != preset["train"]["arms"]
        cfg["name"], cfg["train"]["arms"] = preset["name"], preset["train"]["arms"]
        assert cfg == preset


def test_compare_privileged_runs_every_arm():
    from expo.config import ALGORITHMS

    assert load_config(ROOT / "configs" / "compare-privileged.yaml").train.arms == list(ALGORITHMS)


def test_recipes_cover_the_papers_settings():
    cfgs = {p.stem: load_config(p) for p in RECIPES if p.stem not in EMBEDDED_TASK}
    pairs = {(c.model.source, c.data.schema) for c in cfgs.values()}
    for model in ("Qwen/Qwen2.5-3B-Instruct", "meta-llama/Llama-3.2-3B-Instruct"):
        for schema in ("math", "gsm8k"):
            assert (model, schema) in pairs
    arms = {arm for c in cfgs.values() for arm in c.train.arms}
    assert {"grpo", "grpo-sft", "exp-grpo", "exp-dpo"} <= arms
    assert all(c.train.expo_beta == 0.04 for c in cfgs.values() if "exp-grpo" in c.train.arms)
    dpo = [c for c in cfgs.values() if c.train.arms == ["exp-dpo"]]
    assert {(c.train.dpo_rounds > 1, c.explain.mode) for c in dpo} == {(False, "offline"), (True, "online")}
    assert any(c.train.lora and "7B" in c.model.source for c in cfgs.values())
    assert any(c.cluster.train_nodes > 1 for c in cfgs.values())  # the TrainJob path


def test_recipes_pass_yamllint():
    proc = run([tool("yamllint"), "-s", "-c", str(ROOT / ".yamllint.yaml"), str(ROOT / "configs")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_compiles_into_the_pipeline(path, tmp_path):
    expo_pipeline = pytest.importorskip("pipelines.expo_pipeline")
    cfg = load_config(path)
    out = Path(expo_pipeline.compile_pipeline(cfg, tmp_path / f"{path.stem}.yaml"))
    docs = list(yaml.safe_load_all(out.read_text()))
    assert docs[0]["pipelineInfo"]["name"] == path.stem.replace(".", "-")
    text = out.read_text()
    assert cfg.model.source in text
    executors = next(d for d in docs if "deploymentSpec" in d)["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {cfg.cluster.image}

    def gpus(executor: str) -> int:
        accelerator = executors[executor]["container"].get("resources", {}).get("accelerator")
        return int(accelerator["count"]) if accelerator else 0  # CPU recipes ask for none

    # vLLM's tensor parallel size is the step's GPU count; one node's training holds its GPUs itself.
    assert gpus("exec-generate-explanations") == cfg.cluster.gpus_generate
    if cfg.cluster.train_nodes == 1:
        assert gpus("exec-train") == cfg.cluster.gpus_train


SMOLLM2_RECIPES = sorted((ROOT / "configs").glob("smollm2-*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("path", SMOLLM2_RECIPES, ids=lambda p: p.stem)
def test_a_real_model_recipe_gets_past_its_data_stage_in_a_clean_clone(path, tmp_path):
    """A user's clone has no ../shared: the recipe's data ships with the package. `expo run` in a fresh
    clone of the committed tree (its own `expo` package first on the path) finishes prepare-data with
    real rows on every level; the run is stopped there, with its process group."""
    import os
    import signal
    import subprocess
    import sys

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    assert not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EXPO_"))}
    env["PYTHONPATH"] = str(clone)
    cmd = [sys.executable, "-m", "expo", "run", "--config", f"configs/{path.name}", "--output", str(tmp_path / "run")]
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        try:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith(("prepare-data ", "expo run:")) and ("done" in line or "error" in line):
                    break
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
    done = next((line for line in lines if line.startswith("prepare-data") and " done " in line), None)
    assert done is not None, "".join(lines)[-3000:]
    levels = {json.loads(line)["level"] for line in next((tmp_path / "run").rglob("prepare-data/data/train.jsonl"))
              .read_text().splitlines()}
    assert len(levels) >= 4  # the ladder's four sources, or MATH's five levels
