"""The embedded default model, `builtin:tiny`: a tiny Qwen2 with a local tokenizer, warmed up here.

Why a warm-up: ExPO needs a policy that can *explain* a given answer but never *finds* the answers
of the hardest problems. A plain supervised warm-up on level 1 of the needle task only (the needle
in the first four places of the list), in both formats, gives exactly that:

- solve format: solve prompt -> `374:yes \\boxed{374}` (find the needle, check it);
- explanation format: answer-conditioned prompt -> the same line, the number copied from the hint.

The model then checks a given answer at every depth but looks for the needle only near the front of
the list, so it rarely solves level 5 on its own. Prompts come from `expo.prompts` so the warm-up, the
explanation stage, training and evaluation all see the same text.

The tokenizer gives every 3-digit number its own token (as Llama 3 and Qwen2.5 tokenizers keep up
to three digits together) and every other character of the task one token: naming a number from
the list is then one copy, which the ExPO term can teach in tens of steps (docs/embedded-default.md).

How: `build_warm_model(cfg, data_dir, output_dir)` reads `data_dir/train.jsonl` (rows of the data
stage), trains `cfg.warmup_steps` AdamW steps of next-token loss on the completion tokens only,
seeded by `cfg.seed`, and saves safetensors, the tokenizer and `expo_model.json`.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from expo.config import EMBEDDED_MODEL, ModelConfig, PromptConfig
from expo.errors import DataError
from expo.io import read_jsonl, write_json
from expo.tiny import char_tokenizer, tiny_qwen2
from expo.toy.task import NUMBERS, TASK_CHARS, verification

WARMUP_LEVELS = (1,)  # the needle in the first four places only
NUMBER_WORDS = tuple(str(n) for n in NUMBERS)  # every 3-digit number is one token


@dataclass(frozen=True)
class TinyArch:
    """Size of the embedded model: 4 layers x 16*80^2 weights ~ 0.41M parameters, plus 0.07M of
    (tied) embeddings for ~940 tokens. Measured (docs/embedded-default.md): the copy from the list forms
    after ~700-1,000 warm-up steps; a step takes ~0.1 s on one CPU thread.
    """

    hidden: int = 80
    layers: int = 4
    heads: int = 4
    max_positions: int = 512


@dataclass(frozen=True)
class WarmupRecipe:
    batch_size: int = 16  # sequences per step; half solve format, half explanation format on average
    learning_rate: float = 3e-3  # with number tokens, 1e-3 had not formed the copy after 1,500 steps (docs)
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05  # linear ramp, then cosine decay to 10%


def build_warm_model(cfg: ModelConfig, data_dir: str | Path, output_dir: str | Path,
                     prompts: PromptConfig | None = None, arch: TinyArch = TinyArch(),
                     recipe: WarmupRecipe = WarmupRecipe()) -> Path:
    """Build the tokenizer and tiny Qwen2, warm them up on levels 1-2 of `data_dir/train.jsonl`, save.

    Returns `output_dir`, a Hugging Face model folder loadable with `expo.modeling.load_tokenizer`
    and `AutoModelForCausalLM.from_pretrained`.
    """
    prompts = prompts or PromptConfig()
    output_dir = Path(output_dir)
    rows = _easy_rows(Path(data_dir) / "train.jsonl")
    pairs = warmup_pairs(rows, prompts)
    tokenizer = toy_tokenizer(pairs)
    model = tiny_qwen2(tokenizer, hidden=arch.hidden, layers=arch.layers, heads=arch.heads,
                       max_positions=arch.max_positions, seed=cfg.seed)
    started = time.perf_counter()
    losses = train_supervised(model, tokenizer, pairs, steps=cfg.warmup_steps, seed=cfg.seed, recipe=recipe)
    seconds = time.perf_counter() - started
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    write_json(output_dir / "expo_model.json", {
        "base": EMBEDDED_MODEL,
        "fingerprint": _fingerprint(output_dir / "model.safetensors"),
        "arm": None,
        "warmup": {"steps": cfg.warmup_steps, "seed": cfg.seed, "levels": list(WARMUP_LEVELS),
                   "examples": len(pairs), "final_loss": losses[-1] if losses else None,
                   "seconds": round(seconds, 1), "parameters": model.num_parameters(),
                   "arch": asdict(arch), "recipe": asdict(recipe)},
    })
    return output_dir


def _easy_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"warm-up data {str(path)!r} does not exist (run the data stage first)")
    rows = [r for r in read_jsonl(path) if r.get("level") in WARMUP_LEVELS]
    if not rows:
        raise DataError(f"{str(path)!r} has no rows of level {WARMUP_LEVELS} to warm the tiny model up on")
    return rows


def warmup_pairs(rows: list[dict], prompts: PromptConfig) -> list[tuple[str, str]]:
    """(prompt, completion) pairs: each row once in the solve format and once in the explanation format."""
    from expo.prompts import explain_prompt, solve_prompt  # the prompt module decides the text

    tokenizer = char_tokenizer()  # no chat template: the plain template, as at run time
    pairs = []
    for row in rows:
        pairs.append((solve_prompt(row["question"], tokenizer, prompts), row["solution"]))
        pairs.append((explain_prompt(row["question"], row["answer"], tokenizer, prompts),
                      verification(row["answer"])))
    return pairs


def toy_tokenizer(pairs: list[tuple[str, str]]):
    """The task's characters and its prompts' characters, one token each, plus one token per 3-digit number."""
    return char_tokenizer(_alphabet(pairs), words=NUMBER_WORDS)


def _alphabet(pairs: list[tuple[str, str]]) -> str:
    """Only the characters the task and its prompts use: a ~45-token vocabulary keeps the head cheap."""
    seen = set(TASK_CHARS) | set("\n")
    for prompt, completion in pairs:
        seen.update(prompt)
        seen.update(completion)
    return "".join(sorted(seen))


def train_supervised(model: torch.nn.Module, tokenizer, pairs: list[tuple[str, str]], steps: int,
                     seed: int, recipe: WarmupRecipe = WarmupRecipe()) -> list[float]:
    """`steps` AdamW steps of token-mean NLL on the completions (prompt tokens masked out)."""
    if steps == 0:
        return []
    torch.manual_seed(seed)
    rng = random.Random(seed)
    encoded = [_encode(tokenizer, p, c) for p, c in pairs]
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    ramp = max(1, int(steps * recipe.warmup_fraction))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, ramp))
    model.train()
    losses = []
    for _ in range(steps):
        batch = rng.sample(encoded, min(recipe.batch_size, len(encoded)))
        ids, labels, mask = _collate(batch, tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def _lr_factor(step: int, steps: int, ramp: int) -> float:
    if step < ramp:
        return (step + 1) / ramp
    progress = (step - ramp) / max(1, steps - ramp)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _encode(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p + c, len(p)


def _collate(batch: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, labels with -100 on prompt and padding, attention mask."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
    for i, (seq, n_prompt) in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
        mask[i, : len(seq)] = 1
    return ids, labels, mask


def _fingerprint(weights: Path) -> str:
    digest = hashlib.sha256()
    with open(weights, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
