"""What the stages hand each other as folders: the model card, the model's fingerprint, the tables.

One definition of each, so a stage that writes a folder and one that reads it cannot drift apart.

- **The model card** (`META_FILE`) sits beside the weights of every model folder a
  stage writes: lineage (`base`, `parent`), `arm`, the ExPO weight, warm-up facts, `fingerprint`, and
  for a trained model `dtype`, the dtype its weights are stored in (the compute dtype, not fp32 masters).
- **The fingerprint** of a model folder is its content digest: sha256 (64 hex) over the names and
  bytes of the files that decide what the model computes or how text becomes tokens (weights, configs,
  tokenizer, adapter config). Nothing else counts: not the card itself (it describes the model: two
  identical weight sets are one model whatever arm made them), not a README, not `checkpoints/`
  (resumable training state). The same bytes give the same key whatever the folder is called, so it
  keys the explanation cache, and the MLflow tag `expo.fingerprint` holds it both on the prepare-model
  run and on every registered version (where it makes registration idempotent).
- **A downloaded model**: an MLflow download holds the Hugging Face folder at its top or one level
  down (the transformers flavor); `find_model_folder` finds it.
- **A required table**: a stage that needs `train.jsonl` (or `explanations.jsonl`) from an earlier
  stage's folder raises DataError naming the folder and the file, not a bare FileNotFoundError.

    card = read_card("runs/x/model")                   # {} when the folder has no card
    fingerprint("runs/x/model")                         # 64 hex
    rows = read_table(data_dir, "train.jsonl", keys=("id", "question", "answer"), nonempty=True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expo.errors import DataError, ModelError
from expo.io import read_json, read_jsonl, write_json

META_FILE = "expo_model.json"

SAFE_WEIGHTS = ("*.safetensors",)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
# Everything that decides what a model computes or how text becomes tokens (and nothing else: a README
# or a training log beside the weights must not change the key). Top-level files only: Hugging Face
# folders are flat, and `checkpoints/` below is training state, not the model.
MODEL_FILES = SAFE_WEIGHTS + PICKLE_WEIGHTS + (
    "*.safetensors.index.json", "*.bin.index.json", "config.json", "generation_config.json",
    "adapter_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "chat_template.jinja", "chat_template.json",
)
_CHUNK = 1 << 22  # 4 MiB: large enough to stream a multi-GB weight file quickly, small enough for RAM


def card_path(model_dir: str | Path) -> Path:
    """Where the model card of `model_dir` lives (whether or not it exists)."""
    return Path(model_dir) / META_FILE


def read_card(model_dir: str | Path) -> dict[str, Any]:
    """The model card of `model_dir`, or {} when the folder has none (a hand-made or hub model)."""
    path = card_path(model_dir)
    return read_json(path) if path.is_file() else {}


def write_card(model_dir: str | Path, card: dict[str, Any]) -> None:
    """Write the model card beside the weights (atomically, like every JSON file a stage writes)."""
    write_json(card_path(model_dir), card)


def hash_file(path: str | Path, digest: Any = None) -> Any:
    """Feed a file's bytes, in chunks, into `digest` (a new sha256 when None); returns the digest."""
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest


def model_files(model_dir: str | Path) -> list[Path]:
    """The files of `model_dir` that the fingerprint covers, sorted by name."""
    folder = Path(model_dir)
    return sorted({p for pattern in MODEL_FILES for p in folder.glob(pattern) if p.is_file()})


def fingerprint(model_dir: str | Path) -> str:
    """The content digest of a model folder (see the module docstring): 64 hex.

    Stable across copies and renames of the folder; changes when any weight, config or tokenizer byte
    changes. Reads every weight byte once (about 1 s per GB). Raises ModelError for a missing folder
    or one without model files.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelError(f"model folder {str(folder)!r} does not exist")
    files = model_files(folder)
    if not files:
        raise ModelError(f"model folder {str(folder)!r} has no weight, config or tokenizer files")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        hash_file(file, digest)
        digest.update(b"\0")
    return digest.hexdigest()


def find_model_folder(root: Path, source: str = "") -> Path:
    """The folder under `root` that holds a Hugging Face model (config.json), shallowest first.

    MLflow layouts differ: a version registered from a folder is that folder; a transformers-flavour
    model keeps the weights one level down. `source` (the URI it came from) names it in the error.
    """
    candidates = sorted((p.parent for p in root.rglob("config.json")), key=lambda p: len(p.parts))
    if not candidates:
        raise ModelError(f"model {source or str(root)!r}: downloaded, but no config.json inside")
    return candidates[0]


def read_table(folder: str | Path, name: str, keys: Sequence[str] = (), *, kind: str = "data",
               hint: str = "", nonempty: bool = False) -> list[dict[str, Any]]:
    """The rows of `folder/name`, a JSONL table an earlier stage wrote.

    DataError when the file is missing ("<kind> folder '<folder>' has no <name><hint>"), when
    `nonempty` and it has no rows, or when a row lacks one of `keys`.
    """
    path = Path(folder) / name
    if not path.is_file():
        raise DataError(f"{kind} folder {str(folder)!r} has no {name}{hint}")
    rows = read_jsonl(path)
    if nonempty and not rows:
        raise DataError(f"{path} has no rows")
    for i, row in enumerate(rows):
        if not set(keys) <= set(row):
            raise DataError(f"{path}: row {i + 1} lacks one of " + ", ".join(f"'{k}'" for k in keys))
    return rows


__all__ = ["META_FILE", "MODEL_FILES", "PICKLE_WEIGHTS", "SAFE_WEIGHTS", "card_path", "find_model_folder",
           "fingerprint", "hash_file", "model_files", "read_card", "read_table", "write_card"]
