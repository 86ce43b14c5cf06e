"""The end of a training run: the final model folder, its model card and the summary.

Both trainers end here (expo.train.grpo_training, expo.train.dpo). The files are written by the main
process alone; every process returns the same summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expo.artifacts import fingerprint, read_card, write_card
from expo.config import ExpoConfig
from expo.io import write_json
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
        model.save_pretrained(final, safe_serialization=True)
        tokenizer.save_pretrained(final)
        write_model_card(final, model_dir, arm, cfg)
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


def write_model_card(model_dir: Path, parent_dir: str | Path, arm: str, cfg: ExpoConfig) -> None:
    """The model card beside the weights: lineage (base, parent), arm and the ExPO weight."""
    parent_card = read_card(parent_dir)
    write_card(model_dir, {
        "base": parent_card.get("base", str(parent_dir)), "parent": str(parent_dir), "arm": arm,
        "expo_beta": arm_spec(arm).expo_beta(cfg.train),
        "expo_beta_schedule": cfg.train.expo_beta_schedule, "steps": cfg.train.steps,
        "fingerprint": fingerprint(model_dir),
    })


__all__ = ["save_final_model", "write_model_card"]
