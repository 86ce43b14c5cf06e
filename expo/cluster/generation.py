"""The explanations and evaluation stages on several GPUs: one engine across them, or one per GPU.

A generation stage's pod holds `cluster.gpus_generate` (explain) or `cluster.gpus_evaluate` GPUs. One
process can spread one vLLM engine over all of them (tensor parallel: any model the cards hold
together, at the price of an exchange between cards on every token), or one process per GPU can run
an engine each and sample its share of the questions (data parallel: independent engines, the most
samples per second for a model one card holds). `generation.parallelism` chooses; `auto` takes data
parallel when one card's engine holds the weights with at least as much left for its KV cache
(expo.plan's estimate from the model folder's config.json and the card's memory), else tensor.

Data parallel starts `torchrun --standalone --nproc-per-node N -m expo.cluster.generation_worker ...`
in the step's pod: expo.generation.sharded splits the questions between the processes, the main
process writes the stage's files, and the step reads them as if it had sampled them itself.

    n = stage_processes(cfg, "evaluate", model_dir)
    metrics = run_stage_processes(n, cfg, "evaluate", data_dir, model_dir, output_dir, name="base")
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from expo.config import ExpoConfig
from expo.errors import ModelError
from expo.io import read_json
from expo.sections import given_dict

log = logging.getLogger(__name__)

STAGES = ("generate_explanations", "evaluate")
OUTPUT_FILE = {"generate_explanations": "stats.json", "evaluate": "metrics.json"}  # what the step returns


def stage_processes(cfg: ExpoConfig, stage: str, model_dir: str | Path, visible_gpus: int | None = None,
                    card_bytes: int | None = None) -> int:
    """How many processes `stage` runs on this pod's GPUs: 1 in this process (one GPU, none, transformers,
    or one engine across the GPUs), else one per visible GPU (`generation.parallelism`)."""
    from expo.generation import resolve_backend
    from expo.plan import generation_processes, model_shape

    if cfg.generation.backend == "hf" or cfg.generation.parallelism == "tensor":
        return 1
    if visible_gpus is None:
        import torch

        visible_gpus = torch.cuda.device_count()
    if visible_gpus <= 1:
        return 1
    try:
        if resolve_backend(cfg.generation) != "vllm":
            return 1
    except ModelError:
        return 1  # the in-process path says what is missing, in its own words
    if card_bytes is None:
        import torch

        card_bytes = torch.cuda.get_device_properties(0).total_memory
    return generation_processes(cfg, stage, visible_gpus, model_shape(str(model_dir)), card_bytes)


def worker_argv(nproc: int, cfg: ExpoConfig, stage: str, data_dir: str | Path, model_dir: str | Path,
                output_dir: str | Path, name: str = "model") -> list[str]:
    """torchrun running expo.cluster.generation_worker for `stage` in `nproc` processes."""
    config = json.dumps(given_dict(cfg), sort_keys=True, separators=(",", ":"))
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "expo.cluster.generation_worker", "--stage", stage, "--config-json", config,
            "--data", str(data_dir), "--model", str(model_dir), "--output", str(output_dir), "--name", name]


def run_stage_processes(nproc: int, cfg: ExpoConfig, stage: str, data_dir: str | Path, model_dir: str | Path,
                        output_dir: str | Path, name: str = "model") -> dict[str, Any]:
    """Run `stage` in `nproc` processes (one GPU and engine each) and return what it returns in-process
    (the explanations' statistics, or the evaluation's metrics), read from the file it wrote."""
    from expo.cluster.pod import run_processes, torchrun_env

    if stage not in STAGES:
        raise ValueError(f"run_stage_processes: unknown stage {stage!r} (known: {', '.join(STAGES)})")
    log.info("%s: %d processes, one vLLM engine per GPU (generation.parallelism %s)", stage, nproc,
             cfg.generation.parallelism)
    run_processes(worker_argv(nproc, cfg, stage, data_dir, model_dir, output_dir, name), torchrun_env(),
                  what=stage)
    return read_json(Path(output_dir) / OUTPUT_FILE[stage])


__all__ = ["STAGES", "run_stage_processes", "stage_processes", "worker_argv"]
