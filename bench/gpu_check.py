"""The GPU check: GRPO and ExP-GRPO training steps of a Qwen2.5-1.5B-shaped model on one GPU, through the
project's own trainer, timed and measured against the card's bf16 peak and against `expo plan`.

    bench/gpu_check.sh                  # on a GPU machine (one H100 or H200, no network; < 8 minutes)
    bench/gpu_check.sh --cpu-smoke      # tiny shapes on a CPU: the same code path in well under a minute

The wrapper installs what the machine lacks from `.whl/` (`make gpu-wheels`) and starts this script as
one process through torchrun, as the cluster's train step starts its processes. Everything is built
here: random weights of the real shape (28 layers, hidden 1536, MLP 8960, 12/2 heads, vocab 151,936, tied
embeddings; no download), a character tokenizer, questions and explanations of set lengths. The trainer
is the pipeline's: `expo.train.grpo_training.build_trainer` (ExpoGRPOTrainer on TRL's GRPOTrainer),
fp32 master weights with bf16 autocast (`expo.train.policy`), transformers rollouts with one prefill per
prompt, the verifier's reward, and for exp-grpo the ExPO NLL term on offline explanations.

A random model over 151,936 tokens almost never samples its EOS, so every rollout runs to the budget
and every row is as long as the plan's worst case: the measured peak is comparable with the estimate.

Utilisation is model FLOPs over time (no recomputation, no padding; attention counted causal):
  train FLOPs      forward + backward (3 x forward) of every trained row: rollouts, and the NLL rows;
                   forward = 2 x layer params x tokens + 2 x V x h x scored tokens + 2 x L x S^2 x q_width
  generation FLOPs one prefill per distinct prompt, then 2 x params per new token (+ attention)
  step MFU  = (train + generation FLOPs) / step time / peak
  train MFU = train FLOPs / (step time - generation - reward) / peak
The peak is the card's bf16 dense figure from its data sheet (H100 / H200 SXM: 989 TFLOP/s), else
(an unknown card, or the CPU) the bf16 matmul rate measured here. Memory: `torch.cuda.max_memory_allocated`
per arm against the plan's estimate for the same settings (`expo.plan.make_plan`) less its CUDA-context
term, which the allocator does not see. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerCallback

from expo.config import ExpoConfig
from expo.io import write_jsonl
from expo.plan import GiB, ModelShape, make_plan, shape_from_config
from expo.scratch_models import char_tokenizer
from expo.train.grpo_training import build_trainer
from expo.train.policy import training_dtype
from expo.train.rewards import default_reward

# Qwen2.5-1.5B's config.json (the shape only; the weights here are random).
QWEN25_15B = dict(num_hidden_layers=28, hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                  tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6)
TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=256, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True)
# bf16 dense tensor-core peaks from NVIDIA's data sheets, first match on torch.cuda.get_device_name().
CARD_PEAKS = (("H100 PCIe", 756e12), ("NVL", 835e12), ("H100", 989e12), ("H200", 989e12))
ARMS = ("grpo", "exp-grpo")


@dataclass(frozen=True)
class Settings:
    """One run's model and batch: every figure of the check follows from these."""

    model: dict[str, Any]  # Qwen2Config fields
    prompts: int  # prompts per optimizer step
    generations: int  # G rollouts per prompt
    micro: int  # rollouts per forward/backward (train.rollouts_per_micro_batch)
    prompt_tokens: int  # every prompt exactly this long
    new_tokens: int  # rollout budget; also the explanations' (their NLL rows are as long as rollouts)
    steps: int  # optimizer steps per arm; the first is warm-up and not timed
    gradient_checkpointing: bool = False


# 4 prompts x 8 rollouts = 32 rollouts of 256 + 256 tokens per step, in 4 micro-batches of 8 (+ 1 NLL row
# each). The plan: 23 GiB of fp32 weights, gradients and AdamW moments, 16 GiB of activations, 41 GiB in
# all, half an 80 GB card. Time, estimated: 256 decoding steps of ~30 ms (generation dominates) and
# ~160 TFLOP of training per step, so ~10 s per step, 5 steps per arm: about 2 minutes for both arms.
FULL = Settings(QWEN25_15B, prompts=4, generations=8, micro=8, prompt_tokens=256, new_tokens=256, steps=5)
SMOKE = Settings(TINY, prompts=2, generations=2, micro=2, prompt_tokens=16, new_tokens=8, steps=2)


# ---------------------------------------------------------------------------------------------
# The run's inputs: config, model, questions, explanations.


def check_config(s: Settings, model_dir: Path, card_gib: float) -> ExpoConfig:
    """The pipeline config these steps run under; `expo plan` reads the same one."""
    cfg = ExpoConfig(name="gpu-check")
    cfg.model.source = str(model_dir)  # a folder with config.json: the plan reads the shape from it
    cfg.model.dtype = "bfloat16"  # compute dtype: autocast over fp32 master weights (expo.train.policy)
    cfg.generation.backend = "hf"  # no vLLM on the GPU machine; transformers rollouts (shared prefill)
    cfg.generation.max_new_tokens = s.new_tokens
    cfg.generation.max_prompt_tokens = s.prompt_tokens
    cfg.explain.mode = "offline"  # the NLL term scores explanations written below
    cfg.train.arms = list(ARMS)
    cfg.train.steps = s.steps
    cfg.train.prompts_per_step = s.prompts
    cfg.train.num_generations = s.generations
    cfg.train.rollouts_per_micro_batch = s.micro
    cfg.train.gradient_checkpointing = s.gradient_checkpointing
    cfg.train.checkpoint_every = s.steps + 1  # no checkpoint inside the timed steps
    cfg.cluster.gpus_train = 1
    cfg.cluster.gpu_memory_gib = card_gib
    cfg.validate()
    return cfg


def fill(text: str, n: int, pad: str) -> str:
    """`text` preceded by as much of `pad`, repeated, as makes it exactly n characters (one token each)."""
    return ((pad * (n // len(pad) + 1))[: max(0, n - len(text))] + text)[-n:]


def questions(s: Settings) -> list[dict[str, Any]]:
    """Distinct questions of exactly `prompt_tokens` characters, enough for every step."""
    return [{"id": f"q{i}", "question": fill(f" Question {i}: what is {i} + {i}?", s.prompt_tokens,
                                              "Read the problem carefully. "),
             "answer": str(2 * i), "level": 5} for i in range(s.prompts * s.steps)]


def write_explanations(rows: list[dict[str, Any]], length: int, folder: Path) -> None:
    """An accepted explanation per question, `length` characters: with its EOS exactly the NLL term's
    longest text (config.nll_max_tokens), the plan's worst case."""
    write_jsonl(folder / "explanations.jsonl", [
        {"id": r["id"], "question": r["question"], "answer": r["answer"], "level": r["level"],
         "explanation": fill(f" so {r['answer']} is \\boxed{{{r['answer']}}}.", length,
                             "Add the two numbers. "),
         "logprob": -1.0, "accepted": True, "reject_reason": None} for r in rows])


def random_policy(s: Settings, tokenizer: Any, cfg: ExpoConfig, device: torch.device, model_dir: Path
                  ) -> Qwen2ForCausalLM:
    """The model, random weights in the training dtype (fp32 masters) built on `device` directly (a
    1.5B model initialised on the CPU takes minutes); its config.json is written to `model_dir`."""
    config = Qwen2Config(**s.model, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    config.save_pretrained(model_dir)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(getattr(torch, training_dtype(cfg)))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.train()
    return model


# ---------------------------------------------------------------------------------------------
# Measuring.


class StepRecorder(TrainerCallback):
    """Each optimizer step's wall time (the device synchronised at both ends) and its logged metrics.
    It also stops the trainer's save at the last step: a 1.5B checkpoint with its optimizer state is
    18 GB of disk and half a minute that measure nothing here."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self.logs: list[dict[str, float]] = []
        self._start = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._sync()
        elapsed = time.perf_counter() - self._start
        self.times.append(elapsed)
        control.should_save = False  # runs after HF's flow callback, which asks for a save at the end
        print(f"gpu check: step {len(self.times)} {elapsed:.2f} s", file=sys.stderr, flush=True)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        if logs and "time/step" in logs:
            self.logs.append(dict(logs))


def forward_flops(shape: ModelShape, tokens: int, scored: int) -> float:
    """One causal forward over a row of `tokens` of which `scored` reach the LM head."""
    body = shape.layers * shape.layer_params()
    attention = 2 * shape.layers * tokens * tokens * shape.q_width  # QK^T and AV, causal half each
    return 2 * body * tokens + 2 * shape.vocab * shape.hidden * scored + attention


def generation_flops(shape: ModelShape, prompts: int, group: int, prompt_tokens: int, new: float) -> float:
    """One prefill per distinct prompt, then every rollout's new tokens one at a time."""
    per_token = 2 * (shape.layers * shape.layer_params() + shape.vocab * shape.hidden)  # layers + LM head
    context = prompt_tokens + new / 2  # mean keys attended per new token
    decode = prompts * group * new * (per_token + 4 * shape.layers * context * shape.q_width)
    return prompts * forward_flops(shape, prompt_tokens, 0) + decode


def step_flops(shape: ModelShape, s: Settings, completion: float, nll_tokens: float) -> tuple[float, float]:
    """(train FLOPs, generation FLOPs) of one step: completion = mean rollout length, nll_tokens = the
    step's scored explanation tokens (0 without the term)."""
    rollouts = s.prompts * s.generations
    seq = s.prompt_tokens + completion
    train = 3 * rollouts * forward_flops(shape, int(seq), int(completion))
    if nll_tokens:
        per_row = nll_tokens / s.prompts
        train += 3 * s.prompts * forward_flops(shape, int(s.prompt_tokens + per_row), int(per_row))
    return train, generation_flops(shape, s.prompts, s.generations, s.prompt_tokens, completion)


def data_sheet_peak(device_name: str) -> float | None:
    """The card's bf16 dense FLOP/s from its data sheet; None for a card not in CARD_PEAKS.

    >>> data_sheet_peak("NVIDIA H100 80GB HBM3"), data_sheet_peak("NVIDIA H100 PCIe"), data_sheet_peak("cpu")
    (989000000000000.0, 756000000000000.0, None)
    """
    return next((flops for key, flops in CARD_PEAKS if key in device_name), None)


def matmul_rate(device: torch.device, n: int) -> float:
    """bf16 FLOP/s of an n x n matrix product, the mean of 20 after a warm-up."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 20 * 2 * n**3 / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# One arm.


def run_arm(arm: str, s: Settings, cfg: ExpoConfig, device: torch.device, work: Path, peak: float
            ) -> dict[str, Any]:
    """`s.steps` optimizer steps of `arm` on a fresh model; its times, utilisation and memory. Running
    out of memory is a result too (the plan under-estimated): recorded under "error", the other arm
    still runs, and the JSON line still comes."""
    tokenizer = char_tokenizer()
    rows = questions(s)
    model_dir, expl_dir = work / "model", work / "explanations"
    write_explanations(rows, cfg.nll_max_tokens() - 1, expl_dir)
    start_bytes = 0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)  # 0 unless an earlier arm left tensors behind
    model = random_policy(s, tokenizer, cfg, device, model_dir)
    recorder = StepRecorder(device)
    trainer = build_trainer(arm, cfg, rows, model, tokenizer, device.type == "cuda", expl_dir,
                            work / f"checkpoints-{arm}", default_reward(), None, [recorder])
    error = None
    try:
        trainer.train()
    except torch.OutOfMemoryError as exc:
        error = f"out of memory after {len(recorder.times)} steps: {str(exc).splitlines()[0]}"
    peak_bytes = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    del trainer, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    stage = next(st for st in make_plan(cfg).stages if st.name == f"train {arm}")
    visible = stage.peak - stage.gpu.get("cuda", 0)  # what the caching allocator can account for
    shape = shape_from_config(json.loads((model_dir / "config.json").read_text(encoding="utf-8")))
    return {**step_figures(recorder, s, shape, peak), "error": error,
            "peak_gib": round(peak_bytes / GiB, 2) if peak_bytes is not None else None,
            "start_gib": round(start_bytes / GiB, 2),
            "plan_gib": round(stage.peak / GiB, 2), "plan_allocator_gib": round(visible / GiB, 2),
            "peak_vs_plan": (round((peak_bytes - start_bytes) / visible, 3) if peak_bytes is not None
                             else None),
            "plan_terms_gib": {k: round(v / GiB, 2) for k, v in stage.gpu.items()},
            "plan_notes": list(stage.notes)}


def step_figures(recorder: StepRecorder, s: Settings, shape: ModelShape, peak: float) -> dict[str, Any]:
    """Medians over the steps after the first (all of them when there is one; None when none ran)."""
    timed = slice(1, None) if len(recorder.times) > 1 else slice(None)  # the first step warms up
    times, logs = recorder.times[timed], recorder.logs[timed]
    if not times or not logs:
        return dict.fromkeys(("step_s", "generation_s", "reward_s", "train_s", "completion_tokens",
                              "nll_tokens", "step_mfu", "train_mfu"), None) | {"steps_timed": 0}
    step_s = statistics.median(times)
    generation_s = statistics.median(log.get("time/generation", 0.0) for log in logs)
    reward_s = statistics.median(log.get("time/reward", 0.0) for log in logs)
    completion = statistics.mean(log.get("completions/mean_length", s.new_tokens) for log in logs)
    nll_tokens = statistics.mean(log.get("expo/tokens", 0.0) for log in logs)
    train_flops, gen_flops = step_flops(shape, s, completion, nll_tokens)
    train_s = max(step_s - generation_s - reward_s, 1e-9)
    return {"steps_timed": len(times), "step_s": round(step_s, 4), "generation_s": round(generation_s, 4),
            "reward_s": round(reward_s, 4), "train_s": round(train_s, 4),
            "completion_tokens": round(completion, 1), "nll_tokens": round(nll_tokens, 1),
            "step_mfu": round((train_flops + gen_flops) / step_s / peak, 4),
            "train_mfu": round(train_flops / train_s / peak, 4)}


# ---------------------------------------------------------------------------------------------
# The report.


def report(device_name: str, peak: float, peak_source: str, matmul: float, params: int, s: Settings,
           arms: dict[str, dict[str, Any]], wall_s: float, smoke: bool) -> dict[str, Any]:
    """Print the table; return the JSON line's object."""
    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    print(f"device      {device_name}; bf16 peak {peak / 1e12:.4g} TFLOP/s ({peak_source}), "
          f"measured bf16 matmul {matmul / 1e12:.4g} TFLOP/s")
    print(f"model       {'tiny smoke shape' if smoke else 'Qwen2.5-1.5B shape'}, "
          f"{params / 1e9:.3f}B parameters, "
          "random weights, fp32 master weights" + (", bf16 autocast" if not smoke else ", fp32 (CPU)"))
    print(f"step        {s.prompts} prompts x {s.generations} rollouts, {s.prompt_tokens} prompt + "
          f"{s.new_tokens} new tokens, micro-batches of {s.micro} rollouts, gradient checkpointing "
          f"{'on' if s.gradient_checkpointing else 'off'}; {s.steps} steps per arm, the first a warm-up "
          "(the median of the others)")
    header = (f"{'arm':<9} {'step s':>8} {'gen s':>7} {'reward s':>8} {'train s':>8} {'step MFU':>8} "
              f"{'train MFU':>9} {'peak GiB':>8} {'plan GiB':>8} {'peak/plan':>9}")
    print(header)
    for arm, r in arms.items():
        print(f"{arm:<9} {cell(r['step_s'], '.3f'):>8} {cell(r['generation_s'], '.3f'):>7} "
              f"{cell(r['reward_s'], '.3f'):>8} {cell(r['train_s'], '.3f'):>8} "
              f"{cell(r['step_mfu'], '.1%'):>8} {cell(r['train_mfu'], '.1%'):>9} "
              f"{cell(r['peak_gib'], '.2f'):>8} {r['plan_allocator_gib']:>8.2f} "
              f"{cell(r['peak_vs_plan'], '.2f'):>9}"
              + (f"  {r['error']}" if r["error"] else ""))
    for arm, r in arms.items():
        terms = ", ".join(f"{k} {v:.2f}" for k, v in r["plan_terms_gib"].items())
        print(f"plan {arm}: {terms} GiB (plan GiB above: all but cuda, the context the allocator does not "
              f"see); {'; '.join(r['plan_notes'])}")
    grpo, expo = arms.get("grpo"), arms.get("exp-grpo")
    both = grpo and expo and grpo["step_s"] and expo["step_s"]
    ratio = round(expo["step_s"] / grpo["step_s"], 3) if both else None
    print(f"wall time {wall_s:.0f} s" + (f"; ExP-GRPO / GRPO step time {ratio:.2f}" if ratio else ""))
    return {
        "device": device_name, "cpu_smoke": smoke, "peak_tflops": round(peak / 1e12, 4),
        "peak_source": peak_source, "matmul_tflops": round(matmul / 1e12, 4), "params": params,
        "settings": {k: v for k, v in dataclasses.asdict(s).items() if k != "model"},
        "grpo_step_s": grpo and grpo["step_s"], "expo_step_s": expo and expo["step_s"], "ratio": ratio,
        "grpo_mfu": grpo and grpo["step_mfu"], "expo_mfu": expo and expo["step_mfu"],
        "expo_train_mfu": expo and expo["train_mfu"],
        "expo_peak_gib": expo and expo["peak_gib"], "expo_plan_gib": expo and expo["plan_allocator_gib"],
        "arms": {arm: {k: v for k, v in r.items() if k != "plan_notes"} for arm, r in arms.items()},
        "versions": versions(), "wall_s": round(wall_s, 1),
    }


def versions() -> dict[str, str]:
    import transformers
    import trl

    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes, 2 steps, on the CPU")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    ap.add_argument("--steps", type=int, help="optimizer steps per arm (the first is warm-up)")
    ap.add_argument("--new-tokens", type=int, help="rollout and explanation budget")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    a = ap.parse_args(argv)
    started = time.perf_counter()
    s = SMOKE if a.cpu_smoke else FULL
    s = dataclasses.replace(s, steps=a.steps or s.steps, new_tokens=a.new_tokens or s.new_tokens,
                            gradient_checkpointing=a.gradient_checkpointing)
    if a.cpu_smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        raise SystemExit("gpu check: no CUDA device here; run it on a GPU machine (or --cpu-smoke)")
    card_gib = torch.cuda.get_device_properties(device).total_memory / GiB if device.type == "cuda" else 80.0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)"
    matmul = matmul_rate(device, 8192 if device.type == "cuda" else 256)
    sheet = data_sheet_peak(name)
    peak, source = (sheet, "data sheet") if sheet else (matmul, "measured matmul")
    arms: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for arm in a.arms:
            work = Path(tmp) / arm
            cfg = check_config(s, work / "model", card_gib)
            arms[arm] = run_arm(arm, s, cfg, device, work, peak)
        shape = shape_from_config(json.loads((Path(tmp) / a.arms[0] / "model" / "config.json").read_text()))
    out = report(name, peak, source, matmul, shape.params(), s, arms, time.perf_counter() - started,
                 a.cpu_smoke)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
