"""Shared pieces for tests/test_train_*.py: a tiny model folder, a toy data set, explanations, rewards.

The task: question "k+k=" with gold answer 2k written as "\\boxed{2k}". A random-weight tiny Qwen2 never
writes a boxed answer in 16 characters, so every GRPO group has zero reward variance: GRPO alone
cannot learn, while the ExPO term on "\\boxed{2k}" explanations can.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from expo.config import ExpoConfig
from expo.io import write_jsonl
from expo.scratch_models import char_tokenizer, tiny_qwen2


def boxed_reward(completions: list[str], answer: list[str], **kwargs: Any) -> list[float]:
    """1.0 when the completion contains the gold answer boxed (a stand-in for the verifier)."""
    return [1.0 if f"\\boxed{{{a}}}" in c else 0.0 for c, a in zip(completions, answer, strict=True)]


def even_length_reward(completions: list[str], answer: list[str], **kwargs: Any) -> list[float]:
    """A reward that varies within groups (non-zero advantages), for gradient checks."""
    return [1.0 if len(c) % 2 == 0 else 0.0 for c in completions]


def zero_reward(completions: list[str], answer: list[str], **kwargs: Any) -> list[float]:
    return [0.0] * len(completions)


def rows(n: int = 4, solutions: bool = True) -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "question": f"{i}+{i}=", "answer": str(2 * i), "level": 5, "subject": "toy",
             "solution": f"\\boxed{{{2 * i}}}" if solutions else "", "source": "test"} for i in range(n)]


def explanation(row: dict[str, Any]) -> str:
    return f"\\boxed{{{row['answer']}}}"


def make_folders(root: Path, n: int = 4, solutions: bool = True, accepted: bool = True,
                 hidden: int = 32, heads: int = 4) -> dict[str, Path]:
    """model/ (tiny Qwen2 + char tokenizer), data/train.jsonl, explanations/explanations.jsonl."""
    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden=hidden, layers=2, heads=heads)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    data = rows(n, solutions)
    write_jsonl(root / "data" / "train.jsonl", data)
    write_jsonl(root / "explanations" / "explanations.jsonl", [
        {"id": r["id"], "question": r["question"], "answer": r["answer"], "level": r["level"],
         "explanation": explanation(r), "logprob": -3.0, "accepted": accepted,
         "reject_reason": None if accepted else "wrong_answer"} for r in data])
    return {"model": root / "model", "data": root / "data", "explanations": root / "explanations"}


def small_config(steps: int = 3, **train: Any) -> ExpoConfig:
    """2 prompts x 4 rollouts x 16 tokens per step; offline explanations; no chat template."""
    cfg = ExpoConfig()
    cfg.train.steps = steps
    cfg.train.prompts_per_step = 2
    cfg.train.num_generations = 4
    cfg.train.checkpoint_every = 100
    cfg.generation.max_new_tokens = 16
    cfg.explain.mode = "offline"
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters() if p.requires_grad}


def manual_nll(model: torch.nn.Module, tok: Any, prompts: list[str], texts: list[str]) -> torch.Tensor:
    """Token-mean NLL of each text after its prompt, one unpadded sequence at a time."""
    total, count = 0.0, 0
    for prompt, text in zip(prompts, texts, strict=True):
        p = tok(prompt)["input_ids"]
        t = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + t])
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)  # (T-1, V)
        targets = ids[0, 1:]
        token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[len(p) - 1:]  # text tokens only
        total = total - token_logps.sum()
        count += len(t)
    return total / count


def run_torchrun(script: str, *args: object, processes: int = 2, timeout: int = 400,
                 env: dict[str, str] | None = None) -> None:
    """Run tests/`script` as `processes` torchrun processes on this CPU (gloo), with `env` added to their
    environment, failing the test with the tail of their stderr when they do not exit cleanly."""
    from expo.cluster.pod import torchrun_env

    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            str(Path(__file__).resolve().parent / script), *map(str, args)]
    proc = subprocess.run(argv, env={**torchrun_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def pipeline_task_env(monkeypatch: Any, root: Path, run_id: str) -> None:
    """The environment a pipeline task sees (`expo run` sets it for kfp.local): an MLflow store, the
    pipeline run's id, and the workspace shared by the steps, all under `root`."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("EXPO_PIPELINE_RUN_ID", run_id)
    monkeypatch.setenv("EXPO_WORKSPACE", str(root / "workspace"))
