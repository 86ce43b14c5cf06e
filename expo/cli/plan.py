"""`expo plan`: will the pipeline fit its GPUs? Each stage's GPUs, its estimated peak memory per GPU by
term, and the memory of its pod, against `cluster.gpu_memory_gib` (the formulas: expo/plan.py).

    expo plan --config configs/qwen2.5-7b-math-lora.yaml
    expo plan --config configs/qwen2.5-3b-math.yaml --set train.rollouts_per_micro_batch=256  # refused

A config with a stage that cannot fit gets the table, then one line on stderr naming the key to change,
and exit status 2. `expo compile` and `expo submit` run the same check first (`preflight`).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from expo.cli import add_config_arguments
from expo.errors import ExpoError

if TYPE_CHECKING:
    from expo.config import ExpoConfig
    from expo.plan import Plan, Stage

HEADER = ("stage", "GPUs", "weights", "grads", "optim", "activ", "logits", "vLLM/KV", "CUDA", "peak/GPU",
          "of card", "pod mem", "pod limit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from expo.config import load_pipeline_config
    from expo.plan import make_plan

    cfg = load_pipeline_config(args.config, args.overrides)
    plan = make_plan(cfg)
    if plan.shape is None and not plan.note.startswith("CPU"):
        raise ExpoError(f"model.source {cfg.model.source!r}: {plan.note}")
    print(format_plan(plan))
    refusal = plan.refusal()
    if refusal:
        raise ExpoError(refusal)
    return 0


def preflight(cfg: ExpoConfig, command: str) -> None:
    """What compile and submit run before anything else: a config that cannot fit raises the plan's
    one-line refusal; a model whose shape is unknown here is let through with a note on stderr."""
    from expo.plan import make_plan

    plan = make_plan(cfg)
    if plan.shape is None and not plan.note.startswith("CPU"):
        print(f"expo {command}: note: no memory plan for model.source {cfg.model.source!r} ({plan.note})",
              file=sys.stderr)
    refusal = plan.refusal()
    if refusal:
        raise ExpoError(refusal)


def format_plan(plan: Plan) -> str:
    """The header line, the table (GiB; one row per stage), each stage's notes, and the verdict."""
    from expo.plan import gib
    from expo.terminal import format_table

    lines = [f"{plan.name}: {plan.source}" + (f" ({plan.shape.summary()})" if plan.shape else "")]
    if not plan.stages:
        return "\n".join([*lines, plan.note])
    lines.append(f"card: {gib(plan.card)} GiB per GPU (cluster.gpu_memory_gib); estimates in GiB"
                 + (f"; {plan.note}" if plan.note else ""))
    lines += format_table(HEADER, [_row(s, plan.card) for s in plan.stages], align="lrrrrrrrrrrrr")
    lines += [f"  {s.name}: {note}" for s in plan.stages for note in s.notes]
    on_gpu = [s for s in plan.stages if s.gpus]
    if on_gpu and not plan.refusal():
        # vLLM stages claim their configured share whatever they use: name the highest training one
        top = max([s for s in on_gpu if "optimizer" in s.gpu] or on_gpu, key=lambda s: s.peak)
        lines.append(f"fits: every stage within {gib(plan.card)} GiB per GPU (highest training: {top.name}, "
                     f"{gib(top.peak)} GiB, {top.peak / plan.card:.0%})")
    elif not on_gpu:
        lines.append(f"CPU: no stage asks for a GPU; the largest pod needs "
                     f"~{gib(max(s.cpu for s in plan.stages))} GiB")
    return "\n".join(lines)


def _row(stage: Stage, card: int) -> list[str]:
    from expo.plan import TERMS, gib

    limit = gib(stage.cpu_limit) if stage.cpu_limit is not None else "-"
    gpus = f"{stage.pods}x{stage.gpus}" if stage.pods > 1 else str(stage.gpus)
    if not stage.gpus:
        return [stage.name, "0", *["-"] * len(TERMS), "CPU", "-", gib(stage.cpu), limit]
    terms = [gib(stage.gpu[t]) if t in stage.gpu else "-" for t in TERMS]
    return [stage.name, gpus, *terms, gib(stage.peak), f"{stage.peak / card:.0%}", gib(stage.cpu), limit]
