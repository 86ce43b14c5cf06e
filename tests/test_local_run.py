"""The whole DAG through kfp.local on the smoke config (expo/toy/smoke.yaml): the wiring, the
summary and report it leaves, MLflow lineage, re-runs served from cache, and what the terminal shows
(at most 60 lines, a line at least every 30 s, the aligned table, the log file named last).

One cold run is shared by the tests of this module (it takes a few minutes on 2 cores); the cached
re-run and the partial re-run after a training change reuse its run folder, last.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "expo" / "toy" / "smoke.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def expo_run(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EXPO_"))}
    return subprocess.run([sys.executable, "-m", "expo", "run", "--config", str(SMOKE), "--output",
                           str(run_dir), *extra], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=1500)


def store(run_dir: Path) -> str:
    """The tracking store `expo run` used: the one every run folder beside `run_dir` shares."""
    return f"sqlite:///{run_dir.parent / 'mlflow.db'}"


def executed(run_dir: Path) -> set[str]:
    """The tasks the latest run executed, as summary.json records them (cached tasks leave no folder)."""
    return set(json.loads((run_dir / "summary.json").read_text())["executed_steps"])


def timed_expo_run(run_dir: Path) -> tuple[subprocess.CompletedProcess, list[float]]:
    """`expo_run`, also noting when each stdout line arrived (seconds since the start)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EXPO_"))}
    cmd = [sys.executable, "-m", "expo", "run", "--config", str(SMOKE), "--output", str(run_dir)]
    start, lines, times = time.monotonic(), [], []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=ROOT) as proc:
        for line in proc.stdout:
            lines.append(line)
            times.append(time.monotonic() - start)
        stderr = proc.stderr.read()
        proc.wait(timeout=1500)
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), stderr), times


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    proc, times = timed_expo_run(run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc.line_times = times
    # What the cold run left, read now: the re-run test below rewrites the log and summary.json.
    proc.log_text = (run_dir / "expo-run.log").read_text()
    proc.summary = json.loads((run_dir / "summary.json").read_text())
    return run_dir, proc


def test_cold_run_wires_every_stage(cold_run):
    run_dir, proc = cold_run
    ran = executed(run_dir)
    for task in ("prepare-data", "prepare-model", "evaluate", "generate-explanations", "train",
                 "evaluate-2", "report", "finish-run"):
        assert task in ran, task
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["models"]) == {"base", "grpo", "exp-grpo"}
    for model in summary["models"].values():
        assert set(model["levels"]) == {"1", "2", "3", "4", "5"}
        for level in model["levels"].values():
            assert 0.0 <= level["pass@1"] <= level["pass@k"] <= 1.0
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    assert summary["register"]  # the smoke config's gate margin of -1 registers the best arm always
    assert summary["registered_model_uri"].startswith("models:/expo-smoke/")
    assert "register" in ran
    assert "registered model:" in proc.stdout


def test_lineage_in_mlflow(cold_run):
    import mlflow

    run_dir, _ = cold_run
    client = mlflow.MlflowClient(tracking_uri=store(run_dir))
    exp = client.get_experiment_by_name("expo")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("expo.role") == "pipeline"]
    stages = [r for r in runs if r.data.tags.get("expo.role") == "stage"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.tags.get("kfp.run_id")
    # Named by the config and the run, carrying the run's parameters and headline metrics.
    assert parent.info.run_name == f"expo-smoke-{parent.data.tags['expo.pipeline_key']}"
    assert parent.info.run_name.startswith("expo-smoke-local-")
    assert parent.data.params["train.steps"] == "2" and parent.data.params["name"] == "expo-smoke"
    for model in ("base", "grpo", "exp-grpo"):
        assert f"{model}/hardest_level_pass_at_1" in parent.data.metrics, model
    mine = json.loads((run_dir / "summary.json").read_text())["mlflow"]
    assert (mine["run_id"], mine["run_name"]) == (parent.info.run_id, parent.info.run_name)
    assert (mine["experiment"], mine["experiment_id"]) == ("expo", exp.experiment_id)
    assert mine["results_from"] == parent.info.run_id  # its own report step ran
    names = {(r.data.tags["expo.stage"], r.data.tags.get("expo.arm")) for r in stages}
    assert {("prepare_data", None), ("train", "grpo"), ("train", "exp-grpo"), ("evaluate", "base")} <= names
    data_run = next(r for r in stages if r.data.tags["expo.stage"] == "prepare_data")
    contexts = {i.tags[0].value for i in data_run.inputs.dataset_inputs}
    assert contexts == {"train", "eval"}


def test_arm_runs_have_step_history_and_system_metrics(cold_run):
    """Each arm's train run holds the loss at every step (posted as training ran, expo.train.live),
    and every stage run holds MLflow system metrics."""
    import mlflow

    run_dir, _ = cold_run
    client = mlflow.MlflowClient(tracking_uri=store(run_dir))
    exp = client.get_experiment_by_name("expo")
    stages = [r for r in client.search_runs([exp.experiment_id], max_results=100)
              if r.data.tags.get("expo.role") == "stage"]
    train_runs = {r.data.tags["expo.arm"]: r for r in stages if r.data.tags["expo.stage"] == "train"}
    assert set(train_runs) == {"grpo", "exp-grpo"}
    for arm, run in train_runs.items():
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == [1, 2], arm  # smoke: 2 steps, each once
    for run in stages:
        assert "system/cpu_utilization_percentage" in run.data.metrics, run.data.tags["expo.stage"]
        assert "system/system_memory_usage_megabytes" in run.data.metrics


def test_registered_champion_is_a_servable_mlflow_model(cold_run, monkeypatch):
    """The registered version is a transformers-flavor MLflow model from a LoggedModel carrying the
    arm's metrics: mlflow.transformers.load_model takes the champion alias and generates."""
    import mlflow

    run_dir, _ = cold_run
    uri = store(run_dir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("expo-smoke", "champion")
    logged = client.get_logged_model(champion.source.removeprefix("models:/"))
    assert {m.key for m in logged.metrics} >= {"hardest_level_pass_at_1"}
    pipe = mlflow.transformers.load_model("models:/expo-smoke@champion")
    out = pipe("What is 2 + 3?", max_new_tokens=8, do_sample=False)
    assert isinstance(out[0]["generated_text"], str) and out[0]["generated_text"]
    info = mlflow.models.get_model_info("models:/expo-smoke@champion")
    assert info.signature is not None and "transformers" in info.flavors


def test_every_validated_checkpoint_is_a_logged_model_and_the_version_leads_to_one(cold_run):
    """mlflow.search_logged_models lists each validated checkpoint of each arm with its metrics; the
    registered version names the LoggedModel of the checkpoint it holds."""
    import mlflow

    run_dir, _ = cold_run
    client = mlflow.MlflowClient(tracking_uri=store(run_dir), registry_uri=store(run_dir))
    mlflow.set_tracking_uri(store(run_dir))
    exp = client.get_experiment_by_name("expo")
    found = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list",
                                        filter_string="model_type = 'checkpoint'")
    # smoke: 2 steps, validation at each, 2 arms
    assert sorted(m.name for m in found) == ["exp-grpo-step1", "exp-grpo-step2", "grpo-step1", "grpo-step2"]
    for model in found:
        assert {"pass_at_1", "hardest_level_pass_at_1"} <= {m.key for m in model.metrics}, model.name
        assert {m.dataset_name for m in model.metrics} == {"eval"}
    summary = json.loads((run_dir / "summary.json").read_text())
    version = client.get_model_version("expo-smoke", summary["registered_model_uri"].rsplit("/", 1)[1])
    chosen = client.get_logged_model(version.tags["expo.checkpoint_model_id"])
    assert chosen.name == f"{summary['best_arm']}-step{summary['checkpoint']['step']}"
    assert chosen.model_id in {m.model_id for m in found}


def test_report_has_the_learning_curve_and_names_the_registered_checkpoint(cold_run):
    run_dir, _ = cold_run
    summary = json.loads((run_dir / "summary.json").read_text())
    checkpoint = summary["checkpoint"]  # smoke: validation every step, the last step kept
    assert checkpoint["arm"] == summary["best_arm"] and (checkpoint["step"], checkpoint["chosen"]) == (2, "last")
    html = (run_dir / "report.html").read_text()
    assert 'id="validation"' in html and "validation_curve.png" in (run_dir / "report.md").read_text()
    assert f"Checkpoint registered: arm {summary['best_arm']}, step 2 of 2 (the last step)." in html


def test_report_of_the_run_renders_in_headless_chromium(cold_run, tmp_path):
    """The real report of this pipeline run, screenshot by headless Chromium (the Makefile installs
    Debian's chromium where it is missing; EXPO_NO_BROWSER=1 skips this on a machine without it)."""
    import shutil

    browser = shutil.which("chromium") or "/usr/bin/chromium"
    if os.environ.get("EXPO_NO_BROWSER") == "1":
        pytest.skip("EXPO_NO_BROWSER=1")
    assert Path(browser).exists(), "no chromium: run `make test` as root, or apt-get install -y chromium"
    run_dir, _ = cold_run
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1300,3000", (run_dir / "report.html").as_uri()],
                   check=True, timeout=180, capture_output=True)
    from matplotlib.image import imread

    pixels = imread(shot)  # (H, W, channels) floats in [0, 1]
    assert pixels.shape[:2] == (3000, 1300)
    # Not a blank page: text and the plots leave many dark pixels and more than a few colours.
    assert (pixels[..., :3].mean(axis=-1) < 0.5).mean() > 0.002
    assert len({tuple(p) for p in (pixels[::7, ::7, :3] * 255).astype(int).reshape(-1, 3)}) > 20


def test_the_terminal_is_short_alive_and_ends_with_the_table_uri_and_log(cold_run):
    """At most 60 lines, none of kfp.local's dumps or colour codes, a line at least every
    30 s, an aligned table, "from cache" never said on a first run, the log file named last."""
    run_dir, proc = cold_run
    lines = proc.stdout.splitlines()
    assert len(lines) <= 60, proc.stdout
    assert proc.stderr == ""  # warnings included: kfp.local's known ones are in the log file
    assert "\x1b" not in proc.stdout and "Executing task" not in proc.stdout and "outputs:" not in proc.stdout
    gaps = [b - a for a, b in zip([0.0, *proc.line_times], proc.line_times)]
    assert max(gaps) <= 32, gaps  # the console's interval is 28 s, its ticker wakes every second
    assert lines[0].startswith("expo run: expo-smoke in ")
    for stage in ("prepare-data", "prepare-model", "evaluate base", "generate-explanations", "train grpo",
                  "train exp-grpo", "evaluate grpo", "evaluate exp-grpo", "report", "register", "finish-run"):
        assert sum(line.split("  ")[0] == stage and " started" in line for line in lines) == 1, stage
        assert sum(line.split("  ")[0] == stage and " done " in line for line in lines) == 1, stage
    assert any(line.startswith("prepare-model") and "warm-up 150 steps" in line for line in lines)
    assert any(line.startswith("register") and "registered models:/expo-smoke/" in line for line in lines)
    head = next(i for i, line in enumerate(lines) if line.startswith("model "))
    table = lines[head: head + 4]  # header, base, grpo, exp-grpo
    assert [row.split()[0] for row in table][:2] == ["model", "base"]
    assert {row.split()[0] for row in table[2:]} == {"grpo", "exp-grpo"}
    assert len({len(row) for row in table}) == 1, table  # aligned: every row as wide as the header
    assert "steps: all 11 ran (none came from cache)" in lines
    assert not any("from cache (" in line for line in lines)
    assert any(line.startswith("registered model: models:/expo-smoke/") for line in lines)
    log = Path(lines[-1].removeprefix("log: "))
    log = log if log.is_absolute() else ROOT / log
    assert lines[-1].startswith("log: ") and log == run_dir / "expo-run.log"
    text = proc.log_text
    assert "Executing task" in text and "\x1b" not in text  # kfp.local's stream is kept, without colour
    assert "[progress] warm-up: step 150/150" in text


def test_report_md_in_the_run_folder_stands_alone(cold_run):
    from tests.test_report_md_links import assert_links_resolve

    run_dir, proc = cold_run
    assert "accuracy_by_level.png" in assert_links_resolve(run_dir / "report.md")
    summary = proc.summary
    assert {s["status"] for s in summary["stages"]} == {"done"} and summary["cached_steps"] == []
    assert json.loads((run_dir / "expo-run.json").read_text())["tracking_uri"] == store(run_dir)


def test_a_second_run_beside_it_meets_the_first_run_s_champion(cold_run):
    """A run of another config in a run folder beside the first shares its store: the registry holds
    both versions, the second's gate compared it with the first's champion, the two parents are named
    apart, and the aliases printed are the registry's."""
    import mlflow

    run_dir, _ = cold_run
    second = run_dir.parent / "second"
    proc = expo_run(second, "--set", "train.learning_rate=0.001", "--set", "train.arms=[grpo]",
                    "--set", "model.warmup_steps=20")  # another config; a short warm-up saves minutes
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((second / "expo-run.json").read_text())["tracking_uri"] == store(run_dir)
    client = mlflow.MlflowClient(tracking_uri=store(run_dir), registry_uri=store(run_dir))
    first_uri = json.loads((run_dir / "summary.json").read_text())["registered_model_uri"]
    summary = json.loads((second / "summary.json").read_text())
    first, mine = int(first_uri.rsplit("/", 1)[1]), int(summary["registered_model_uri"].rsplit("/", 1)[1])
    assert mine > first
    tags = client.get_model_version("expo-smoke", str(mine)).tags
    assert tags["expo.gate.champion_version"] == str(first)  # the first run's champion, from another folder
    assert tags["expo.gate.decision"] == "promoted"  # smoke's margin of -1: any candidate beats it
    held = sorted(a for a, v in client.get_registered_model("expo-smoke").aliases.items() if int(v) == mine)
    assert held == summary["registered_aliases"] == ["candidate", "champion"]
    assert f"registered model: models:/expo-smoke/{mine} (aliases: candidate, champion)" in proc.stdout
    listed = subprocess.run([sys.executable, "-m", "expo", "models", "expo-smoke", "--run", str(second), "--json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert {row["version"] for row in json.loads(listed.stdout)} >= {first, mine}
    parents = [client.get_run(json.loads((d / "summary.json").read_text())["mlflow"]["run_id"])
               for d in (run_dir, second)]
    assert parents[0].info.run_name != parents[1].info.run_name
    assert parents[1].data.params["train.learning_rate"] == "0.001"


def test_a_failed_run_keeps_what_the_finished_run_left(cold_run):
    """A run that fails in the folder of a finished one puts back its log, record and config; the
    failed run's own log is kept beside them, and the error names it."""
    run_dir, proc = cold_run
    kept = {name: (run_dir / name).read_bytes()
            for name in ("expo-run.log", "expo-run.json", "config.yaml", "summary.json", "report.md")}
    failed = expo_run(run_dir, "--set", "data.source=nosuch.jsonl")
    assert failed.returncode == 2
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    failed_log = run_dir / "expo-run.failed.log"
    assert failed_log.is_file() and str(failed_log) in failed.stderr
    assert (run_dir / "expo-run.log").read_text() == proc.log_text


def test_rerun_is_all_cache_hits_then_training_change_reruns_only_training(cold_run):
    run_dir, _ = cold_run
    again = expo_run(run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert executed(run_dir) == {"finish-run"}  # only the (uncached) exit handler executes
    out = again.stdout.splitlines()
    assert "steps ran (1): finish-run" in out, again.stdout  # only what really ran is said to have run ...
    assert any(line.startswith("from cache (10): ") for line in out), again.stdout
    cached = json.loads((run_dir / "summary.json").read_text())["cached_steps"]
    assert set(cached) == {"prepare-data", "prepare-model", "evaluate base", "generate-explanations",
                           "train grpo", "train exp-grpo", "evaluate grpo", "evaluate exp-grpo", "report",
                           "register"}, cached
    assert sum(" cached " in line for line in out) == 10, again.stdout  # ... each hit has its one line
    # In MLflow, the re-run's parent says what it reused, and from which run.
    import mlflow

    said = json.loads((run_dir / "summary.json").read_text())["mlflow"]
    parent = mlflow.MlflowClient(tracking_uri=store(run_dir)).get_run(said["run_id"])
    assert set(parent.data.tags["expo.cached_steps"].split(", ")) == set(cached)
    assert parent.data.tags["expo.executed_steps"] == "finish-run"
    assert said["results_from"] == parent.data.tags["expo.results_from"] != said["run_id"]
    assert mlflow.MlflowClient(tracking_uri=store(run_dir)).get_run(said["results_from"]).data.tags[
        "expo.executed_steps"].startswith("prepare-data")

    changed = expo_run(run_dir, "--set", "train.learning_rate=0.001")
    assert changed.returncode == 0, changed.stderr[-3000:]
    ran = executed(run_dir)
    assert not ran & {"prepare-data", "prepare-model", "evaluate", "generate-explanations"}, ran
    assert {"train", "evaluate-2", "report", "finish-run"} <= ran

    # A second --set of a key only report and register read (a root parameter, register.gate_margin):
    # every other task, training included, comes from the cache of the run just before.
    margin = expo_run(run_dir, "--set", "train.learning_rate=0.001", "--set", "register.gate_margin=-0.5")
    assert margin.returncode == 0, margin.stderr[-3000:]
    assert executed(run_dir) == {"report", "register", "finish-run"}
