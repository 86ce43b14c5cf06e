"""One vLLM engine per training process: an online ExP-GRPO run with `generation.backend: vllm` on CPU.

The real SmolLM2-135M-Instruct, 2 steps of 1 prompt x 2 rollouts x 8 tokens, explanations regenerated
at step 1 (`explain.mode: online`, `regenerate_every: 1`). The run is a fresh Python process, as the
train stage is, and every construction of `vllm.LLM` in it is counted (ours and TRL's own import of
the class): TRL's rollouts and the online explanations must share one engine, with the weights pushed
into it. The rollouts must have gone through vLLM (TRL's importance-sampling metrics are logged).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from expo.io import read_jsonl, write_jsonl

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("EXPO_REQUIRE_VLLM"):
        raise RuntimeError("EXPO_REQUIRE_VLLM is set but vllm does not import here (make vllm-env)")
    pytest.skip("vllm is not installed here (the vLLM environment: make vllm-env)", allow_module_level=True)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]

RUN = textwrap.dedent('''
    import json, sys

    import vllm
    import trl.generation.vllm_generation as trl_vllm

    built = []

    class CountedLLM(vllm.LLM):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("model"))
            super().__init__(*args, **kwargs)

    vllm.LLM = CountedLLM  # what expo.generation.engine builds
    trl_vllm.LLM = CountedLLM  # what TRL would build on its own

    from expo.config import ExpoConfig
    from expo.train import train_arm

    def main(model, data, explanations, out):
        cfg = ExpoConfig()
        cfg.model.source = model
        cfg.generation.backend = "vllm"
        cfg.generation.max_new_tokens = 8
        cfg.generation.max_prompt_tokens = 192
        cfg.generation.vllm_cpu_kv_gib = 1
        cfg.explain.mode = "online"
        cfg.explain.regenerate_every = 1
        cfg.explain.samples_per_question, cfg.explain.keep_per_question = 2, 1
        cfg.explain.solve_rate_samples = 0
        cfg.train.arms = ["exp-grpo"]
        cfg.train.steps, cfg.train.prompts_per_step, cfg.train.num_generations = 2, 1, 2
        cfg.train.checkpoint_every = 100
        cfg.train.acceptance_floor = 0.0
        summary = train_arm("exp-grpo", cfg, data, model, explanations, out)
        print("RESULT " + json.dumps({"built": built, "steps": summary["steps"],
                                      "rounds": summary["explanation_rounds"]}))

    if __name__ == "__main__":
        main(*sys.argv[1:])
''')


def test_online_exp_grpo_with_vllm_builds_one_engine(smollm2_dir, tmp_path):
    rows = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i), "level": 1}
            for i in range(1, 4)]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    write_jsonl(tmp_path / "explanations" / "explanations.jsonl", [
        {"id": r["id"], "question": r["question"], "answer": r["answer"], "level": 1, "logprob": -3.0,
         "explanation": f"{r['question'][8:-1]} = {r['answer']}, so the answer is \\boxed{{{r['answer']}}}.",
         "accepted": True, "reject_reason": None} for r in rows])
    script = tmp_path / "run.py"
    script.write_text(RUN)
    proc = subprocess.run([sys.executable, str(script), str(smollm2_dir), str(tmp_path / "data"),
                           str(tmp_path / "explanations"), str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=480,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["built"] == [str(smollm2_dir)]  # one engine, for the whole run
    assert result["steps"] == 2
    assert [r["step"] for r in result["rounds"]] == [0, 1]  # the seed and the online round at step 1
    assert result["rounds"][1]["samples"] == 2  # 1 question x 2 samples, from the shared engine
    metrics = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [m["explain/regenerated"] for m in metrics] == [0.0, 1.0]
    assert all(any(k.startswith("sampling/") for k in m) for m in metrics), metrics[0].keys()
