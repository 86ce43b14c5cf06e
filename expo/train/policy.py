"""The policy a trainer trains: loaded in its training dtype on this process's device, LoRA if asked.

Precision: the policy is trained with fp32 master weights whenever `model.dtype` is a half dtype (or
auto), and bf16 / fp16 is the compute dtype (TRL's autocast flags) on a GPU: AdamW updates of
lr x ~1 are far below bf16's resolution near typical weights, so pure-bf16 weights mostly never move.
With LoRA the frozen base stays in the half dtype (PEFT keeps the adapter itself in fp32).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from expo.config import ExpoConfig, ModelConfig
from expo.errors import ConfigError
from expo.modeling import load_model

HALF_DTYPES = ("bfloat16", "float16")


def mixed_precision(dtype: str, on_gpu: bool, bf16_supported: bool) -> dict[str, bool]:
    """TRL's `bf16` / `fp16` autocast flags for `model.dtype` (the compute dtype while training).

    CPU: none (fp32 throughout; this project's CPUs have no fast bf16). GPU: the configured half
    dtype, "auto" = bf16 where supported; the weights themselves stay fp32 (`training_dtype`).

    >>> mixed_precision("bfloat16", True, True), mixed_precision("bfloat16", False, False)
    ({'bf16': True, 'fp16': False}, {'bf16': False, 'fp16': False})
    """
    if not on_gpu or dtype == "float32":
        return {"bf16": False, "fp16": False}
    if dtype == "float16":
        return {"bf16": False, "fp16": True}
    if dtype == "bfloat16" and not bf16_supported:
        raise ConfigError("config key 'model.dtype': this GPU does not support bfloat16; "
                          "use float16 or float32")
    return {"bf16": bf16_supported, "fp16": False}


def training_dtype(cfg: ExpoConfig) -> str:
    """The dtype the policy's weights are loaded in for training: fp32 master weights, except the
    frozen base of a LoRA run, which keeps a configured half dtype (its adapter is fp32 anyway)."""
    if cfg.train.lora and cfg.model.dtype in HALF_DTYPES:
        return cfg.model.dtype
    return "float32" if cfg.model.dtype in ("auto", *HALF_DTYPES) else cfg.model.dtype


def lora_config(cfg: ExpoConfig) -> Any:
    """A LoRA adapter on every linear layer (rank lora_r, alpha 2r) when train.lora is on."""
    if not cfg.train.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.train.lora_r, lora_alpha=2 * cfg.train.lora_r, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def load_policy(model_dir: str | Path, cfg: ExpoConfig) -> tuple[Any, Any, bool]:
    """(model, tokenizer, on_gpu), the model in training mode with weights in `training_dtype(cfg)`
    (fp32 master weights for a configured bf16 / fp16: the trainer's autocast computes in it).
    Under torchrun each process takes its own GPU (LOCAL_RANK)."""
    on_gpu = torch.cuda.is_available()
    model_cfg = ModelConfig(**{**vars(cfg.model), "dtype": training_dtype(cfg)})
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if on_gpu else "cpu"
    model, tokenizer = load_model(model_dir, model_cfg, device=device)
    model.train()
    return model, tokenizer, on_gpu


__all__ = ["HALF_DTYPES", "lora_config", "load_policy", "mixed_precision", "training_dtype"]
