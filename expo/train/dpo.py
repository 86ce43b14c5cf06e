"""ExP-DPO on TRL's DPOTrainer: prefer the policy's own self-explanation to its own wrong solution.

For every training question a pair is built from the policy itself, under the plain solve prompt:
- chosen: an accepted self-explanation (it ends in the verified gold answer), from the buffer;
- rejected: one of the policy's own solutions to the same question, sampled with the solve prompt at
  the rollout temperature and verified wrong (reward 0; unjudgeable samples are not used).
Questions lacking either side get no pair. Offline (`dpo_rounds = 1`): one round on the initial
policy's explanations. Online (`dpo_rounds = R`): `train.steps` split exactly over R rounds
(`round_steps`); before each round after the first, both sides are regenerated with the current policy
(explanations through the same collapse guard as ExP-GRPO), and the reference model is the policy at
the start of the round. A round planned with 0 steps is not trained, and a round that yields no pair
(say, the policy no longer writes a wrong solution) is skipped; both are logged and listed in the
summary's `round_log`. Only a run in which no round had any pair is an error.

Several processes (torchrun): each samples only its share of the questions (process r takes rows r,
r + W, ...; with vLLM, from an engine on its own GPU), and every process gets everyone's samples back,
so all of them build the same pairs and train on the same data set.

Resume: each round's pairs are saved before it trains (`round-r/pairs.jsonl`), each finished or
skipped round leaves `round-r/done.json`, and each trained round's policy is saved (`round-r/policy/`),
so a killed run redoes at most the unfinished part of one round, from that round's newest intact
checkpoint.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PrinterCallback
from trl import DPOConfig, DPOTrainer

from expo.config import ExpoConfig
from expo.errors import ConfigError, DataError
from expo.io import read_json, read_jsonl, write_json, write_jsonl
from expo.prompts import solve_prompt
from expo.train.distributed import (
    from_main,
    gather_lists,
    gather_shards,
    is_main_process,
    join_process_group,
    shard,
    world_size,
)
from expo.train.explanations import OnlineRegenerator, Regenerate, make_buffer
from expo.train.final_model import save_final_model
from expo.train.metrics_jsonl import MetricsWriter
from expo.train.policy import load_policy, lora_config
from expo.train.progress import StepProgress
from expo.train.resume import latest_valid_checkpoint
from expo.train.rewards import RewardFn

log = logging.getLogger(__name__)

SampleSolutions = Callable[[Any, list[dict[str, Any]]], list[list[str]]]
NO_PAIRS = ("no question has both an accepted explanation and a wrong solution of the policy "
            "(nothing to prefer)")


def round_steps(total: int, rounds: int) -> list[int]:
    """Split `total` steps over `rounds` exactly (the sum is `total`), as evenly as possible, earlier
    rounds first: (10, 3) -> [4, 3, 3], (7, 3) -> [3, 2, 2], (2, 3) -> [1, 1, 0] (the last round is
    not trained)."""
    if rounds < 1 or total < 0:
        raise ValueError(f"round_steps needs rounds >= 1 and total >= 0, got total={total}, rounds={rounds}")
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def with_one_eos(text: str, eos: str) -> str:
    """A DPO completion that ends with exactly one EOS (ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`).

    Trailing whitespace and EOS strings already there (a decode that kept special tokens) are removed
    before one is added, so TRL, which appends an EOS only when the text lacks one, adds nothing.
    Leading whitespace goes too: the prompt ends with the assistant header's newline, and a completion
    starting with more would merge with it into one token and move TRL's prompt/completion boundary
    off the prompt's own ids."""
    text = text.strip()
    while eos and text.endswith(eos):
        text = text[: -len(eos)].rstrip()
    return text + eos


def default_sampler(cfg: ExpoConfig, tokenizer: Any, regenerator: OnlineRegenerator | None = None
                    ) -> SampleSolutions:
    """The policy's own solutions: `explain.samples_per_question` samples per question, solve prompt,
    at the rollout budget (`generation.max_new_tokens`).

    With `regenerator`, its generator is used (made on first use, the current weights pushed each
    round): with vLLM, every round's explanations and solutions come from the process's one engine."""
    regenerator = regenerator or OnlineRegenerator(cfg, tokenizer)

    def sample(model: Any, rows: list[dict[str, Any]]) -> list[list[str]]:
        # Made even for no rows: under several processes building a vLLM engine is a collective call.
        generator = regenerator.generator_for(model)
        if not rows:
            return []
        prompts = [solve_prompt(r["question"], tokenizer, cfg.prompts) for r in rows]
        outs = generator.generate(prompts, n=cfg.explain.samples_per_question,
                                  temperature=cfg.train.temperature,
                                  max_new_tokens=cfg.generation.max_new_tokens, seed=cfg.train.seed)
        return [[c.text for c in completions] for completions in outs]

    return sample


def build_pairs(rows: list[dict[str, Any]], chosen_for: Callable[[str], str | None],
                solutions: list[list[str]], reward_fn: RewardFn, tokenizer: Any, cfg: ExpoConfig
                ) -> list[dict[str, Any]]:
    """One (prompt, chosen, rejected) per question that has an explanation and a verified-wrong solution.

    The prompt is the solve prompt's text, which TRL's tokenizer call turns into
    `expo.prompts.prompt_ids` (one BOS, as generation and evaluation see it); chosen and rejected end
    with one EOS each (`with_one_eos`)."""
    flat = [(i, s) for i, sols in enumerate(solutions) for s in sols]
    scores = reward_fn([s for _, s in flat], [str(rows[i]["answer"]) for i, _ in flat]) if flat else []
    wrong: dict[int, str] = {}
    for (i, text), score in zip(flat, scores, strict=True):
        if score is not None and score < 0.5 and text.strip() and i not in wrong:
            wrong[i] = text
    eos = tokenizer.eos_token or ""
    pairs = []
    for i, row in enumerate(rows):
        chosen = chosen_for(str(row["id"]))
        if chosen is not None and i in wrong:
            pairs.append({"id": str(row["id"]), "prompt": solve_prompt(row["question"], tokenizer, cfg.prompts),
                          "chosen": with_one_eos(chosen, eos), "rejected": with_one_eos(wrong[i], eos)})
    return pairs


def fit_pairs(pairs: list[dict[str, Any]], tokenizer: Any, max_length: int
              ) -> tuple[list[dict[str, Any]], int]:
    """(the pairs whose both sides fit `max_length` tokens, how many did not).

    A side's length is counted as TRL's DPOTrainer tokenizes it: prompt and completion (EOS included)
    in one call. TRL would cut a longer side at `max_length` from the end: the chosen explanation
    would lose its verified answer and its EOS, so such a pair is left out instead."""
    def fits(pair: dict[str, Any]) -> bool:
        return all(len(tokenizer(text=pair["prompt"] + pair[side])["input_ids"]) <= max_length
                   for side in ("chosen", "rejected"))

    kept = [pair for pair in pairs if fits(pair)]
    return kept, len(pairs) - len(kept)


def dpo_args(cfg: ExpoConfig, folder: Path, steps: int, on_gpu: bool, world: int | None = None) -> DPOConfig:
    """Our TrainConfig in TRL's DPO terms (`world`: training processes, default $WORLD_SIZE)."""
    tc = cfg.train
    world = world if world is not None else world_size()
    if tc.prompts_per_step % world:
        raise ConfigError(f"config key 'train.prompts_per_step': {tc.prompts_per_step} pairs do not split "
                          f"evenly over {world} training processes; use a multiple of {world}")
    return DPOConfig(
        # prompts_per_step pairs is the global batch: each of the W processes takes 1/W of it
        output_dir=str(folder), max_steps=steps, per_device_train_batch_size=tc.prompts_per_step // world,
        gradient_accumulation_steps=1, learning_rate=tc.learning_rate, lr_scheduler_type="constant",
        beta=tc.dpo_beta, max_grad_norm=tc.max_grad_norm, seed=tc.seed, logging_steps=1,
        max_length=cfg.dpo_max_length(),  # every pair fits it (fit_pairs): TRL never truncates
        save_strategy="steps", save_steps=tc.checkpoint_every, save_total_limit=3, report_to=[],
        use_cpu=not on_gpu, bf16=on_gpu and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=tc.gradient_checkpointing, disable_tqdm=True,
    )


def train_dpo(cfg: ExpoConfig, rows: list[dict[str, Any]], model_dir: str | Path,
              explanations_dir: str | Path | None, out: Path, *, reward_fn: RewardFn,
              regenerate: Regenerate | None, callbacks: list[Any] | None, checkpoint_dir: Path,
              sample_solutions: SampleSolutions | None = None) -> dict[str, Any]:
    """The rounds of the module docstring; the summary adds `rounds`, `planned_steps` and `round_log`
    (per round: planned_steps, steps trained, pairs, and why it was skipped, or None)."""
    join_process_group()  # the first round's samples are gathered before any trainer joins it
    model, tokenizer, on_gpu = load_policy(model_dir, cfg)
    buffer = make_buffer(cfg, explanations_dir)
    shared = OnlineRegenerator(cfg, tokenizer)  # one generator (one vLLM engine) for every round
    regenerate = regenerate or shared
    sample_solutions = sample_solutions or default_sampler(cfg, tokenizer, shared)
    writer = MetricsWriter(out / "metrics.jsonl", "exp-dpo")
    progress = StepProgress("exp-dpo", total=cfg.train.steps)  # one step N/steps over all rounds
    plan = round_steps(cfg.train.steps, cfg.train.dpo_rounds)
    start, resume_ckpt, round_log = _resume_point(checkpoint_dir, plan, buffer, writer)
    policy = _latest_policy(checkpoint_dir, start)
    if policy is not None:
        model = load_policy(policy, cfg)[0].train()
    for r in range(start, len(plan)):
        folder = checkpoint_dir / f"round-{r}"
        entry: dict[str, Any] = {"round": r, "planned_steps": plan[r], "steps": 0, "pairs": 0,
                                 "pairs_too_long": 0, "skipped": None}
        if plan[r] == 0:
            entry["skipped"] = "0 steps planned (train.steps < train.dpo_rounds)"
        else:
            pairs, too_long = _round_pairs(folder, r, model, rows, buffer, regenerate, sample_solutions,
                                           reward_fn, tokenizer, cfg)
            entry["pairs"], entry["pairs_too_long"] = len(pairs), too_long
            if too_long:
                log.warning("exp-dpo round %d: %d pair(s) longer than train.dpo_max_length (%d tokens) "
                            "left out", r, too_long, cfg.dpo_max_length())
            if pairs:
                done_steps = sum(e["steps"] for e in round_log)
                progress.offset = done_steps
                model = _train_round(model, tokenizer, pairs, cfg, folder, r, plan[r], on_gpu, writer,
                                     done_steps, [progress, *(callbacks or [])],
                                     resume_ckpt if r == start else None)
                entry["steps"] = plan[r]
            else:
                entry["skipped"] = NO_PAIRS
        if entry["skipped"]:
            log.warning("exp-dpo round %d of %d skipped: %s", r, len(plan), entry["skipped"])
        round_log.append(entry)
        if is_main_process():  # one writer under torchrun: rank 0
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / "done.json", {"round": r, "buffer": buffer.state_dict(), "metrics": writer.rows,
                                              "entry": entry})
    tried = [e for e in round_log if e["planned_steps"] > 0]
    if tried and not any(e["steps"] for e in tried):  # a round with steps planned trains iff it had pairs
        raise DataError(f"exp-dpo: none of its {len(tried)} round(s) had a pair: {NO_PAIRS}")
    steps = sum(e["steps"] for e in round_log)
    summary = save_final_model("exp-dpo", cfg, model, steps, buffer, tokenizer, model_dir, out, writer,
                               resume_ckpt)
    summary.update(rounds=len(plan), planned_steps=plan, round_log=round_log,
                   pairs_too_long=sum(e.get("pairs_too_long", 0) for e in round_log))
    if is_main_process():
        write_json(out / "summary.json", summary)  # save_final_model wrote it without the rounds
    return summary


def _train_round(model: Any, tokenizer: Any, pairs: list[dict[str, Any]], cfg: ExpoConfig, folder: Path,
                 r: int, steps: int, on_gpu: bool, writer: MetricsWriter, done_steps: int,
                 callbacks: list[Any] | None, resume_ckpt: Path | None) -> Any:
    """`steps` DPO steps on `pairs` (after `done_steps` steps of earlier rounds); saves the policy at
    the end of the round into `folder/policy` and returns it."""
    writer.offset, writer.extra = done_steps, {"round": r, "pairs": len(pairs)}
    # The reference is the policy at the start of the round (TRL would reload the model folder's
    # weights from disk instead); with LoRA, TRL disables the adapter to get it.
    ref = None if cfg.train.lora else copy.deepcopy(model).eval().requires_grad_(False)
    trainer = DPOTrainer(model=model, ref_model=ref, args=dpo_args(cfg, folder, steps, on_gpu),
                         train_dataset=Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")}
                                                          for p in pairs]),
                         processing_class=tokenizer, peft_config=lora_config(cfg),
                         callbacks=[writer, *(callbacks or [])])
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=str(resume_ckpt) if resume_ckpt else None)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # the next round starts (and takes its reference) from here
    if is_main_process():
        model.save_pretrained(folder / "policy", safe_serialization=True)
        tokenizer.save_pretrained(folder / "policy")  # a whole model folder: a resumed run loads it as one
    return model


def _latest_policy(root: Path, start: int) -> Path | None:
    """The policy of the newest trained round before `start` (skipped rounds save none); None: the
    initial model."""
    for r in range(start - 1, -1, -1):
        if (root / f"round-{r}" / "policy" / "config.json").is_file():
            return root / f"round-{r}" / "policy"
    return None


def _round_pairs(folder: Path, r: int, model: Any, rows: list[dict[str, Any]], buffer: Any,
                 regenerate: Regenerate, sample_solutions: SampleSolutions, reward_fn: RewardFn,
                 tokenizer: Any, cfg: ExpoConfig) -> tuple[list[dict[str, Any]], int]:
    """(this round's pairs, possibly none; how many were too long): read back when a killed run saved
    them, else sampled.

    Each process samples its share of `rows` (`shard`) and gets every share back (`gather_shards`):
    the buffer's new round and the solutions are the same on every process, and so are the pairs."""
    saved, counts = folder / "pairs.jsonl", folder / "pairs.json"
    # The main process's record decides, so every process either reads the same pairs or samples.
    stored = from_main(lambda: _saved_pairs(saved, counts))
    if stored is not None:
        return stored
    mine = shard(rows)
    model.eval()
    with torch.no_grad():
        if r > 0:
            records = gather_lists(regenerate(model, mine))
            buffer.add_round(_in_row_order(records, rows), step=r)
        solutions = gather_shards(sample_solutions(model, mine), len(rows))
    model.train()
    pairs, too_long = fit_pairs(build_pairs(rows, buffer.pick, solutions, reward_fn, tokenizer, cfg),
                                tokenizer, cfg.dpo_max_length())
    if pairs and is_main_process():  # one writer; the others hold the same pairs
        write_json(counts, {"too_long": too_long})  # before the pairs: pairs.jsonl marks the round sampled
        write_jsonl(saved, pairs)
    return pairs, too_long


def _saved_pairs(saved: Path, counts: Path) -> tuple[list[dict[str, Any]], int] | None:
    """(the pairs a killed run saved for this round, how many were too long), or None."""
    if not saved.is_file():
        return None
    return read_jsonl(saved), read_json(counts)["too_long"] if counts.is_file() else 0


def _in_row_order(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Explanation records grouped by their question's place in `rows` (each question's samples keep
    their order): the buffer gets a round in the same order however many processes sampled it."""
    place: dict[str, int] = {}
    for i, row in enumerate(rows):
        place.setdefault(str(row["id"]), i)
    return sorted(records, key=lambda rec: place.get(str(rec["id"]), len(rows)))


def _resume_point(root: Path, plan: list[int], buffer: Any, writer: MetricsWriter
                  ) -> tuple[int, Path | None, list[dict[str, Any]]]:
    """(first unfinished round, its newest intact checkpoint or None, the finished rounds' `round_log`
    entries); restores buffer and metrics."""
    rounds = len(plan)
    start = 0
    while start < rounds and (root / f"round-{start}" / "done.json").is_file():
        start += 1
    writer.rows = []
    states = [read_json(root / f"round-{r}" / "done.json") for r in range(start)]
    if states:
        buffer.load_state_dict(states[-1]["buffer"])
        writer.rows = states[-1]["metrics"]
    ckpt = latest_valid_checkpoint(root / f"round-{start}", extra_files=()) if start < rounds else None
    if ckpt is not None and (ckpt / "metrics.jsonl").is_file():
        writer.rows = read_jsonl(ckpt / "metrics.jsonl")  # cumulative: earlier rounds included
    write_jsonl(writer.path, writer.rows)
    # A done.json without its entry was written before rounds could be skipped: that round trained.
    trained = {"pairs": None, "skipped": None}
    return start, ckpt, [s.get("entry") or {**trained, "round": r, "planned_steps": plan[r], "steps": plan[r]}
                         for r, s in enumerate(states)]


__all__ = ["round_steps", "with_one_eos", "build_pairs", "fit_pairs", "default_sampler", "dpo_args", "train_dpo"]
