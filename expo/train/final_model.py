"""The end of a training run: the final model folder, its model card and the summary.

Both trainers end here (expo.train.grpo_training, expo.train.dpo). The files are written by the main
process alone; every process returns the same summary.

The model is saved in its compute dtype (`saved_dtype`: `model.dtype`, "auto" = bf16 on a capable
GPU, fp32 on the CPU), not in the fp32 master weights it trained in (expo.train.policy): half the
bytes per copy and per registered version, and what a served model computes in. The card records it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from expo.artifacts import SAFE_WEIGHTS, fingerprint, read_card, write_card
from expo.config import ExpoConfig
from expo.io import read_json, write_json
from expo.modeling import resolve_dtype
from expo.train.arms import arm_spec
from expo.train.distributed import is_main_process
from expo.train.metrics_jsonl import MetricsWriter


def save_final_model(arm: str, cfg: ExpoConfig, model: Any, steps: int, buffer: Any, tokenizer: Any,
                     model_dir: str | Path, out: Path, writer: MetricsWriter,
                     resumed_from: Path | None) -> dict[str, Any]:
    """Save the final model folder `out/model` (LoRA merged into plain weights, the model card beside
    the weights) and `out/summary.json`; returns the summary."""
    final = out / "model"
    main = is_main_process()
    if main:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        dtype = saved_dtype(cfg, next(model.parameters()).device.type)
        model.to(dtype)  # in place: training is over, and a cast copy would need the memory twice
        model.save_pretrained(final, safe_serialization=True)
        tokenizer.save_pretrained(final)
        write_model_card(final, model_dir, arm, cfg, dtype_name(dtype))
    summary = {
        "arm": arm, "steps": steps, "model_dir": str(final),
        "metrics_path": str(out / "metrics.jsonl"),
        "resumed_from": str(resumed_from) if resumed_from else None,
        "final_metrics": writer.rows[-1] if writer.rows else {},
        "expo_beta": arm_spec(arm).expo_beta(cfg.train),
    }
    if buffer is not None:
        summary["explanation_rounds"] = [vars(r) for r in buffer.rounds]
    if main:
        write_json(out / "summary.json", summary)
    return summary


def saved_dtype(cfg: ExpoConfig, device: str) -> Any:
    """The torch dtype a model trained on `device` ("cuda" or "cpu") is saved in: the compute dtype.

    >>> from expo.config import ExpoConfig
    >>> cfg = ExpoConfig(); cfg.model.dtype = "bfloat16"
    >>> saved_dtype(cfg, "cpu"), saved_dtype(ExpoConfig(), "cpu")
    (torch.bfloat16, torch.float32)
    """
    return resolve_dtype(cfg.model.dtype, device)


def dtype_name(dtype: Any) -> str:
    """A torch dtype as `model.dtype` and config.json spell it: torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


def write_model_card(model_dir: Path, parent_dir: str | Path, arm: str, cfg: ExpoConfig, dtype: str) -> None:
    """The model card beside the weights: lineage (base, parent), arm, the ExPO weight and the dtype
    the weights are stored in."""
    parent_card = read_card(parent_dir)
    write_card(model_dir, {
        "base": parent_card.get("base", str(parent_dir)), "parent": str(parent_dir), "arm": arm,
        "expo_beta": arm_spec(arm).expo_beta(cfg.train),
        "expo_beta_schedule": cfg.train.expo_beta_schedule, "steps": cfg.train.steps,
        "dtype": dtype, "fingerprint": fingerprint(model_dir),
    })


def cast_saved_weights(model_dir: str | Path, dtype: str) -> None:
    """Rewrite a saved model folder's floating-point weights in `dtype` (config.json and a shard index
    follow): for weights saved from the fp32 master weights mid-training (the best validated step),
    so the final folder holds one dtype whichever step it keeps. One shard in memory at a time."""
    import torch
    from safetensors.torch import load_file, save_file

    folder, target = Path(model_dir), getattr(torch, dtype)
    total = 0
    for path in sorted(p for pattern in SAFE_WEIGHTS for p in folder.glob(pattern)):
        tensors = {k: v.to(target) if v.is_floating_point() else v for k, v in load_file(path).items()}
        total += sum(v.numel() * v.element_size() for v in tensors.values())
        staged = path.with_name(f".{path.name}.tmp")
        save_file(tensors, staged, metadata={"format": "pt"})
        os.replace(staged, path)  # never a half-written weight file under the final name
    for index in folder.glob("*.safetensors.index.json"):
        data = read_json(index)
        data.setdefault("metadata", {})["total_size"] = total
        write_json(index, data)
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        data["dtype"] = dtype
        write_json(config, data)


__all__ = ["cast_saved_weights", "dtype_name", "save_final_model", "saved_dtype", "write_model_card"]
