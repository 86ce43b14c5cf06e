"""Time per training step: ExP-GRPO (our GRPOTrainer subclass) vs plain TRL GRPOTrainer, same everything.

Same tiny Qwen2, same prompts, batch (prompts x G rollouts x tokens), same reward (a string match
by default, Math-Verify with --reward verify), same GRPOConfig. Explanations are already sampled (offline buffer); the cost of one online
regeneration (expo.explain's sampler on the live policy, for the questions of one batch) is timed apart,
since it is paid once every `explain.regenerate_every` steps, not every step. The trainers run in turn
`--repeats` times; the first step of each run is warm-up and not counted; the median of the rest is
reported.

    .venv/bin/python bench/train_step.py [--steps 8] [--hidden 64] [--prompts 2] [--generations 8] [--tokens 16]
    .venv-vllm/bin/python bench/train_step.py --rollouts-model smollm2 [--rollout-steps 4]

Prints a table, then one JSON line: {"grpo_step_s", "expo_step_s", "ratio", "regen_s", ...}. Target ratio <= 1.3.

`--filter-groups` runs the ExP-GRPO trainer with ExPO's dynamic sampling (train.filter_groups): keys
`filter_groups` and `refill_rounds_mean` (refills cost generation in proportion to the groups dropped;
with the default string-match reward the random model solves nothing, so every group is all-wrong and
kept: the ratio is the filter's own cost).

`--rollouts-model` (smollm2 or a model folder) adds, in the same run, ExP-GRPO steps of that real model
with transformers rollouts (our shared-prefill path) against vLLM rollouts (TRL's `use_vllm`,
colocate, on the process's engine), same prompts and batch: keys `hf_rollout_step_s`,
`vllm_rollout_step_s`, `vllm_rollout_ratio`, `hf_generation_s`, `vllm_generation_s`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOTrainer

from expo.config import ExpoConfig
from expo.losses import expo_beta_at
from expo.prompts import solve_prompt
from expo.scratch_models import char_tokenizer, tiny_qwen2
from expo.train.explanations import ExplanationBuffer, OnlineRegenerator
from expo.train.grpo_training import grpo_args
from expo.train.group_filter import GroupFilter
from expo.train.grpo import ExpoGRPOTrainer, NLLTerm


def boxed_reward(completions: list[str], answer: list[str], **kwargs: Any) -> list[float]:
    """String match on the boxed gold answer: the same for both trainers, and cheap, so the timing is
    the trainers' own (--reward verify times the real Math-Verify reward instead)."""
    return [1.0 if f"\\boxed{{{a}}}" in c else 0.0 for c, a in zip(completions, answer, strict=True)]


def reward_fn(name: str) -> Any:
    if name == "verify":
        from expo.verify import math_reward

        return math_reward
    return boxed_reward


class StepTimes(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.times.append(time.perf_counter() - self._t)


def setup(a: argparse.Namespace) -> tuple[ExpoConfig, Any, list[dict[str, Any]]]:
    cfg = ExpoConfig()
    cfg.train.steps, cfg.train.prompts_per_step, cfg.train.num_generations = a.steps, a.prompts, a.generations
    cfg.train.checkpoint_every = 10_000  # no checkpoint inside the timed steps
    cfg.generation.max_new_tokens = a.tokens
    cfg.explain.samples_per_question = 4
    cfg.explain.solve_rate_samples = 0
    rows = [{"id": f"q{i}", "question": f"What is {i} times {i + 3}?", "answer": str(i * (i + 3)), "level": 5}
            for i in range(a.prompts * 4)]
    return cfg, char_tokenizer(), rows


def run(kind: str, a: argparse.Namespace, out: Path) -> tuple[list[float], Any]:
    cfg, tok, rows = setup(a)
    model = tiny_qwen2(tok, hidden=a.hidden, layers=2)
    dataset = Dataset.from_list([{"prompt": solve_prompt(r["question"], tok, cfg.prompts), "id": r["id"],
                                  "answer": r["answer"]} for r in rows])
    clock = StepTimes()
    common = dict(model=model, reward_funcs=[reward_fn(a.reward)], args=grpo_args(cfg, out / kind, on_gpu=False),
                  train_dataset=dataset, processing_class=tok, callbacks=[clock])
    if kind == "grpo":
        trainer = GRPOTrainer(**common)
    else:
        buffer = ExplanationBuffer()
        buffer.seed([{"id": r["id"], "accepted": True,
                      "explanation": f"{r['question'][8:-1]} is \\boxed{{{r['answer']}}}"} for r in rows], len(rows))
        term = NLLTerm("expo", buffer.pick, lambda s: expo_beta_at(s, cfg.train.steps, 0.04, "constant"))
        # --filter-groups: ExPO's dynamic sampling on (all-wrong groups kept for the term, correct ones
        # dropped and refilled); the logged group counts come back in the trainer's `filter_logs`.
        group_filter = GroupFilter(keep_wrong=True, max_rounds=3) if a.filter_groups else None
        filter_logs = LoggedSeries("filter/refill_rounds")
        common["callbacks"].append(filter_logs)
        trainer = ExpoGRPOTrainer(**common, nll_term=term, buffer=buffer, group_filter=group_filter)
        trainer.filter_logs = filter_logs
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return clock.times[1:], trainer


class LoggedSeries(TrainerCallback):
    """One logged metric's value at every step it is logged (e.g. `filter/refill_rounds`)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.values: list[float] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        if logs and self.key in logs:
            self.values.append(float(logs[self.key]))


def regen_cost(a: argparse.Namespace, model: Any, repeats: int = 3) -> float:
    cfg, tok, rows = setup(a)
    regenerate = OnlineRegenerator(cfg, tok)  # no cache: every call samples
    batch = rows[: a.prompts]
    times = []
    model.eval()
    for _ in range(repeats):
        t = time.perf_counter()
        regenerate(model, batch)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rollout_steps(backend: str, folder: str, a: argparse.Namespace, out: Path
                  ) -> tuple[list[float], list[float]]:
    """ExP-GRPO steps of the real model with `backend` rollouts: (step times, generation times), the
    first step (warm-up, and the vLLM engine's weight sync) left out."""
    from expo.config import ModelConfig
    from expo.modeling import load_model

    cfg, _, rows = setup(argparse.Namespace(**{**vars(a), "steps": a.rollout_steps,
                                               "tokens": a.rollout_tokens}))
    cfg.generation.backend = backend
    cfg.generation.vllm_cpu_kv_gib = 1
    model, tok = load_model(folder, ModelConfig(dtype="float32"), device="cpu")
    model.train()
    dataset = Dataset.from_list([{"prompt": solve_prompt(r["question"], tok, cfg.prompts), "id": r["id"],
                                  "answer": r["answer"]} for r in rows])
    buffer = ExplanationBuffer()
    buffer.seed([{"id": r["id"], "accepted": True,
                  "explanation": f"{r['question'][8:-1]} is \\boxed{{{r['answer']}}}"} for r in rows],
                len(rows))
    term = NLLTerm("expo", buffer.pick, lambda s: 0.04)
    clock, gen = StepTimes(), LoggedSeries("time/generation")  # the rollouts' share
    trainer = ExpoGRPOTrainer(model=model, reward_funcs=[boxed_reward],
                              args=grpo_args(cfg, out / backend, False),
                              train_dataset=dataset, processing_class=tok, callbacks=[clock, gen],
                              nll_term=term, buffer=buffer)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return clock.times[1:], gen.values[1:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="training steps per trainer run (first is warm-up)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each trainer")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--reward", choices=["boxed", "verify"], default="boxed",
                    help="boxed: string match (isolates trainer cost); verify: the Math-Verify reward")
    ap.add_argument("--filter-groups", action="store_true",
                    help="ExP-GRPO with dynamic sampling (train.filter_groups) against plain TRL GRPO")
    ap.add_argument("--rollouts-model", default=None, help="smollm2 or a folder: hf vs vLLM rollouts")
    ap.add_argument("--rollout-steps", type=int, default=4, help="real-model steps per backend")
    ap.add_argument("--rollout-tokens", type=int, default=32, help="real-model rollout length")
    a = ap.parse_args(argv)
    grpo_times: list[float] = []
    expo_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        # Alternate the two trainers so load from other processes on a shared machine hits both alike.
        for i in range(a.repeats):
            grpo_times += run("grpo", a, Path(tmp) / str(i))[0]
            times, expo_trainer = run("exp-grpo", a, Path(tmp) / str(i))
            expo_times += times
        regen = regen_cost(a, expo_trainer.model)
        real: dict[str, tuple[list[float], list[float]]] = {}
        if a.rollouts_model:
            from generation import real_model  # bench/generation.py: the GGUF wheel converted once

            folder = real_model(a.rollouts_model)
            for backend in ("hf", "vllm"):  # vLLM last: its engine stays in this process
                real[backend] = rollout_steps(backend, folder, a, Path(tmp) / "real")
    grpo_s, expo_s = statistics.median(grpo_times), statistics.median(expo_times)
    print(f"batch: {a.prompts} prompts x {a.generations} rollouts x {a.tokens} tokens, tiny Qwen2 hidden "
          f"{a.hidden}, {len(grpo_times)} timed steps each (median), reward {a.reward}")
    print(f"{'trainer':<28}{'s/step':>10}{'min':>10}{'max':>10}")
    for name, times in (("TRL GRPOTrainer", grpo_times), ("ExP-GRPO (offline buffer)", expo_times)):
        print(f"{name:<28}{statistics.median(times):>10.3f}{min(times):>10.3f}{max(times):>10.3f}")
    print(f"{'online regeneration (1x)':<28}{regen:>10.3f}   per regeneration of {a.prompts} questions x "
          f"{setup(a)[0].explain.samples_per_question} samples")
    result = {"grpo_step_s": round(grpo_s, 4), "expo_step_s": round(expo_s, 4),
              "ratio": round(expo_s / grpo_s, 3), "regen_s": round(regen, 4),
              "prompts": a.prompts, "generations": a.generations, "tokens": a.tokens,
              "hidden": a.hidden, "timed_steps": len(grpo_times), "filter_groups": a.filter_groups}
    if a.filter_groups:
        rounds = expo_trainer.filter_logs.values
        result["refill_rounds_mean"] = round(statistics.mean(rounds), 3) if rounds else None
    if real:
        print(f"{a.rollouts_model}: ExP-GRPO, {a.prompts} prompts x {a.generations} rollouts x "
              f"{a.rollout_tokens} tokens, {a.rollout_steps - 1} timed steps each (median)")
        print(f"{'rollouts':<28}{'s/step':>10}{'generation':>12}")
        for backend, name in (("hf", "transformers (shared prefill)"), ("vllm", "vLLM colocate")):
            steps, gens = real[backend]
            print(f"{name:<28}{statistics.median(steps):>10.3f}{statistics.median(gens):>12.3f}")
            result[f"{backend}_rollout_step_s"] = round(statistics.median(steps), 4)
            result[f"{backend}_generation_s"] = round(statistics.median(gens), 4)
        result["vllm_rollout_ratio"] = round(result["vllm_rollout_step_s"] / result["hf_rollout_step_s"], 3)
        result["rollout_tokens"] = a.rollout_tokens
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
