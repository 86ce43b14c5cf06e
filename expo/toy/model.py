"""The embedded default model, `builtin:tiny`: a tiny Qwen2 with a local tokenizer, warmed up here.

Why a warm-up: ExPO needs a policy that can *explain* a given answer but never *finds* the answers
of the hardest problems. A plain supervised warm-up on level 1 of the needle task only (familiar
numbers, expo.toy.task), gives exactly that. Its pairs:

- solve format: solve prompt -> `374:yes \\boxed{374}` (find the needle, check it);
- explanation format: answer-conditioned prompt -> the same line;
- hint-only explanations: a list without a needle, the hint naming some familiar number -> that
  number checked and boxed, so the model learns to take the answer from the hint;
- repeats: the hint sentence alone -> the number boxed, for every 3-digit number.

The model then finds familiar needles, and copies and checks any number it is given, but has never
been told which unfamiliar numbers contain a 7, so it does not solve level 5 on its own. Prompts
come from `expo.prompts` so the warm-up, the explanation stage, training and evaluation all see
the same text.

The tokenizer gives every 3-digit number its own token (as Llama 3 and Qwen2.5 tokenizers keep up
to three digits together) and every other character of the task one token: whether a number has
a 7 is then a fact about a token, learned from examples (docs/embedded-default.md).

How: `build_warm_model(cfg, data_dir, output_dir)` reads `data_dir/train.jsonl` (rows of the data
stage), trains `cfg.warmup_steps` AdamW steps of next-token loss on the completion tokens only,
seeded by `cfg.seed`, and saves safetensors, the tokenizer and the model card.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from expo.artifacts import fingerprint, write_card
from expo.config import EMBEDDED_MODEL, ModelConfig, PromptConfig
from expo.errors import DataError
from expo.io import read_jsonl
from expo.progress import Progress
from expo.scratch_models import char_tokenizer, tiny_qwen2
from expo.toy.task import (FAMILIAR_BAD, FAMILIAR_GOOD, NUMBERS, TASK_CHARS, has_property, make_problem,
                           parse_numbers, verification)

WARMUP_LEVELS = (1,)  # familiar numbers only
NUMBER_WORDS = tuple(str(n) for n in NUMBERS)  # every 3-digit number is one token


@dataclass(frozen=True)
class TinyArch:
    """Size of the embedded model: 4 layers x 16*160^2 weights ~ 1.64M parameters, plus 0.15M of
    (tied) embeddings for ~940 tokens. Hidden 160, not 80: at 80 the copy of an unfamiliar number
    from the hint did not form (acceptance 3-19 % on level 5; probes P14-P16, docs/embedded-default.md).
    A warm-up step takes ~0.2 s on one CPU thread.
    """

    hidden: int = 160
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
    pairs = warmup_pairs(rows, prompts, seed=cfg.seed)
    tokenizer = toy_tokenizer(pairs)
    model = tiny_qwen2(tokenizer, hidden=arch.hidden, layers=arch.layers, heads=arch.heads,
                       max_positions=arch.max_positions, seed=cfg.seed)
    started = time.perf_counter()
    losses = train_supervised(model, tokenizer, pairs, steps=cfg.warmup_steps, seed=cfg.seed, recipe=recipe)
    seconds = time.perf_counter() - started
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    write_card(output_dir, {
        "base": EMBEDDED_MODEL,
        "fingerprint": fingerprint(output_dir),
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


def warmup_pairs(rows: list[dict], prompts: PromptConfig, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, completion) pairs: each row in the solve and the explanation format, then
    `hint_only_pairs` (one per row) and `repeat_pairs` (one per number)."""
    from expo.prompts import explain_prompt, solve_prompt  # the prompt module decides the text

    tokenizer = char_tokenizer()  # no chat template: the plain template, as at run time
    pairs = []
    for row in rows:
        pairs.append((solve_prompt(row["question"], tokenizer, prompts), row["solution"]))
        pairs.append((explain_prompt(row["question"], row["answer"], tokenizer, prompts),
                      verification(row["answer"])))
    return pairs + hint_only_pairs(rows, prompts, seed) + repeat_pairs(prompts)


def hint_only_pairs(rows: list[dict], prompts: PromptConfig, seed: int = 0) -> list[tuple[str, str]]:
    """Explanation-format pairs in which the hint is the only way to the answer.

    Each row's list with its needle swapped for another familiar number without a 7, and a hint
    naming a random familiar number; the completion checks and boxes that number. Without these,
    the level-1 explanations can be written by finding the needle in the list, and the model never
    learns to take the number from the hint, which is what it must do for unfamiliar numbers
    (measured: 3-5 % acceptance on level 5 without them, probes P14 and P16). Only familiar
    numbers: the warm-up must not say which unfamiliar numbers contain a 7.
    """
    from expo.prompts import explain_prompt

    tokenizer = char_tokenizer()
    rng = random.Random(f"hint-only/{seed}")
    hints = FAMILIAR_BAD + FAMILIAR_GOOD
    pairs = []
    for row in rows:
        numbers = [n for n in parse_numbers(row["question"]) if not has_property(n)]
        filler = rng.choice([n for n in FAMILIAR_BAD if n not in numbers])
        numbers.insert(rng.randrange(len(numbers) + 1), filler)
        hint = rng.choice(hints)
        pairs.append((explain_prompt(make_problem(numbers), str(hint), tokenizer, prompts), verification(hint)))
    return pairs


def repeat_pairs(prompts: PromptConfig) -> list[tuple[str, str]]:
    """The hint sentence alone -> its number, boxed (`The answer is 712.` -> `712 \\boxed{712}`), for
    every 3-digit number.

    Repeating a number it is told is what a pretrained LM brings. Without it, a number the warm-up
    never wrote has an untrained output embedding and the model cannot write it even when the hint
    states it (0 % acceptance on level 5, probe P10). No check (`:yes`): that would tell the model
    which unfamiliar numbers contain a 7."""
    from expo.prompts import hint_sentence, render

    tokenizer = char_tokenizer()
    return [(render(hint_sentence(str(n), prompts), tokenizer, prompts), f"{n} \\boxed{{{n}}}") for n in NUMBERS]


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
    tick = Progress("warm-up")  # a 1,500-step warm-up takes minutes: say how far it is
    for step in range(steps):
        batch = rng.sample(encoded, min(recipe.batch_size, len(encoded)))
        ids, labels, mask = _collate(batch, tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        tick.update(f"step {step + 1}/{steps}  loss {losses[-1]:.4f}", force=step + 1 == steps)
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
