"""Hints for collapsed groups (`train.hints`): a second chance for the questions nothing else reaches.

When all G rollouts of a question are wrong, GRPO's advantages are all 0 and the question teaches
nothing; ExP-GRPO still has its NLL term, but only where the explanations stage accepted an explanation.
For a question with neither (all wrong, no accepted explanation; every all-wrong question for plain
GRPO, which reads no explanations), the group is rolled out again with a hint in the prompt (SAGE,
arXiv 2602.03143; NuRL, arXiv 2509.25666; QuestA, arXiv 2507.13266):
- a prefix of the reference solution where the row has one (QuestA's partial solutions): the first
  `hint_prefix` of its words at step 0, shortened on `hint_prefix_schedule` (linear: to none at the last
  step, so the policy is weaned off it), and never reaching the solution's final `\\boxed` nor its first
  statement of the answer (a solution that opens with the answer gives no prefix hint);
- else a hint the policy writes from the question and the answer (NuRL's abstract hints), kept for the
  question once written (and in the checkpoint), and thrown away when it states the answer
  (expo.explain.mentions_answer): such a hint is the answer, and the model would learn to copy it.
The hint enters the user turn after the question (`hint_template`), the rest of the prompt unchanged.

Training: the hinted rollouts are scored with the unchanged verifier reward and their advantages come
from their own group (reward minus the hinted group's mean). They replace the collapsed group's
rollouts in the step's batch, under the plain solve prompt's tokens: the policy is trained to write,
without the hint, what it wrote with it. No importance correction is applied: the ratio is taken
against the policy's own plain-prompt probability of the rollout at the step (TRL's on-policy ratio 1),
so the hinted rollouts count as if sampled from pi(.|q). The exact correction, pi(o|q) / pi(o|q, hint),
is tiny for precisely the rollouts worth learning (those the hint made right) and would cancel the
signal; SAGE and QuestA train hinted rollouts without it. With vLLM rollouts TRL keeps pi_old
from the prompt it sampled with; a hinted rollout's is recomputed under the plain prompt
(`plain_prompt_logps`), so its ratio starts at 1 there too, and TRL's sampler-vs-trainer correction
still applies within the hinted prompt.

With dynamic sampling (train.filter_groups) hints act on the groups the filter kept for training:
plain GRPO drops all-wrong groups first (DAPO's rule), so there hints reach only arms with an NLL term
(which keep them); a slot the filter left untrained (a filler) is never hinted.

Never at validation or evaluation: the trainer calls `rescue` only while the model trains; validation
(expo.train.validation) and evaluation (expo.evaluate) build their prompts with `solve_prompt` alone.

Logged per step: `hints/groups` (hinted groups, every process), `hints/solved_groups` (of those, with a
right rollout), `hints/no_hint` (collapsed groups that got no usable hint), and running totals
`hints/questions` (questions ever hinted) and `hints/rescued` (hinted questions later solved by a
rollout without a hint: what the hints were for).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from expo.config import ExpoConfig, TrainConfig
from expo.errors import ExpoError
from expo.explain import mentions_answer
from expo.losses import expo_beta_at
from expo.prompts import HINT_SEPARATOR, render, solve_content

# What the policy is asked when a question has no reference solution (NuRL's self-generated abstract hint).
HINT_WRITER = ("Problem: {question}\nThe answer is {answer}.\nWrite one short hint that would help a student "
               "solve this problem. Do not state the answer.")
HINT_SAMPLES = 4  # hints sampled per question; the first that does not state the answer is kept


def prefix_share(step: int, tc: TrainConfig) -> float:
    """The share of a reference solution's words shown at optimizer step `step` (0-based).

    >>> tc = TrainConfig(steps=5, hint_prefix=0.5, hint_prefix_schedule="linear")
    >>> [prefix_share(s, tc) for s in range(5)]
    [0.5, 0.375, 0.25, 0.125, 0.0]
    """
    return expo_beta_at(step, tc.steps, tc.hint_prefix, tc.hint_prefix_schedule)


def solution_prefix(solution: str, share: float, answer: str | None = None) -> str | None:
    """The first `share` of the solution's words, cut before its final `\\boxed` and before the first
    word that states `answer` (a prefix that states the answer is the answer, not a hint); None when
    no word is left.

    >>> solution_prefix("First add 2 and 3. Then double it: \\\\boxed{10}", 0.5)
    'First add 2 and'
    >>> solution_prefix("Add. \\\\boxed{5}", 0.1) is None
    True
    >>> solution_prefix("2 + 3 = 5, doubled: 10. \\\\boxed{10}", 1.0, answer="10")
    '2 + 3 = 5, doubled:'
    """
    words = solution.split()
    box = solution.rfind("\\boxed")
    before_box = (solution[:box] if box >= 0 else solution).split()
    if answer is not None:
        stated = next((i for i, w in enumerate(before_box) if mentions_answer(w, str(answer))), len(before_box))
        before_box = before_box[:stated]
    n = min(math.floor(len(words) * share), len(before_box))
    return " ".join(before_box[:n]) if n > 0 else None


def hinted_prompt(question: str, hint: str, tokenizer: Any, cfg: ExpoConfig) -> str:
    """The solve prompt with the hint after the question in the same user turn (nothing else changed)."""
    hint_text = cfg.train.hint_template.replace("{hint}", hint)
    return render(solve_content(question, cfg.prompts) + HINT_SEPARATOR + hint_text, tokenizer, cfg.prompts)


def usable_hint(texts: list[str], answer: str) -> str | None:
    """The first non-empty hint that does not state the answer (None when every one does)."""
    for text in texts:
        text = text.strip()
        if text and not mentions_answer(text, str(answer)):
            return text
    return None


# (model, rows) -> one list of sampled hint texts per row
WriteHints = Callable[[Any, list[dict[str, Any]]], list[list[str]]]


class PolicyHintWriter:
    """`write(model, rows)`: HINT_SAMPLES hints per row from the current policy (expo.generation)."""

    def __init__(self, cfg: ExpoConfig, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.generator: Any = None

    def __call__(self, model: Any, rows: list[dict[str, Any]]) -> list[list[str]]:
        from expo.generation import make_generator

        if self.generator is None:
            self.generator = make_generator(model, self.tokenizer, self.cfg.generation,
                                            memory=self.cfg.generation.vllm_train_memory,
                                            trust_remote_code=self.cfg.model.trust_remote_code)
        else:
            self.generator.load_weights(model)
        if not rows:  # the engine is built and loaded above even so: a collective step under torchrun
            return []
        prompts = [render(HINT_WRITER.replace("{question}", r["question"]).replace("{answer}", str(r["answer"])),
                          self.tokenizer, self.cfg.prompts) for r in rows]
        outs = self.generator.generate(prompts, n=HINT_SAMPLES, temperature=self.cfg.explain.temperature,
                                       max_new_tokens=self.cfg.train.hint_max_new_tokens,
                                       seed=self.cfg.generation.seed)
        return [[c.text for c in completions] for completions in outs]


class Hinter:
    """Which collapsed groups get a hint, the hint itself, the hinted rollouts spliced into the step.

    `explained(qid)`: whether the question has an accepted explanation (ExP-GRPO's buffer; always False
    for an arm without one). `write_hints`: the model-written hints' sampler (PolicyHintWriter)."""

    def __init__(self, cfg: ExpoConfig, rows_by_id: dict[str, dict[str, Any]], tokenizer: Any,
                 explained: Callable[[str], bool], write_hints: WriteHints | None = None) -> None:
        self.cfg = cfg
        self.rows_by_id = rows_by_id
        self.tokenizer = tokenizer
        self.explained = explained
        self.write_hints = write_hints or PolicyHintWriter(cfg, tokenizer)
        self.written: dict[str, str | None] = {}  # qid -> the model's hint (None: every sample stated the answer)
        self.hinted: dict[str, int] = {}  # qid -> the first step it was hinted at
        self.rescued: dict[str, int] = {}  # qid -> the first step a plain rollout solved it after a hint

    # -- the hint of one question ---------------------------------------------------------------

    def source(self, row: dict[str, Any]) -> str:
        """"solution" or "model": where this row's hint comes from."""
        has_solution = bool(str(row.get("solution") or "").strip())
        if self.cfg.train.hint_source == "auto":
            return "solution" if has_solution else "model"
        return self.cfg.train.hint_source

    def missing(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows whose hint the model has yet to write."""
        return [r for r in rows if self.source(r) == "model" and str(r["id"]) not in self.written]

    def hints_for(self, rows: list[dict[str, Any]], step: int, model: Any, write: bool = False) -> list[str | None]:
        """One hint per row at `step` (None: none usable); model hints are written once per question.
        `write`: call the writer even with nothing to write (another process writes: see `_hints`)."""
        share = prefix_share(step, self.cfg.train)
        missing = self.missing(rows)
        if missing or write:
            for row, texts in zip(missing, self.write_hints(model, missing), strict=True):
                self.written[str(row["id"])] = usable_hint(texts, row["answer"])
        out: list[str | None] = []
        for row in rows:
            if self.source(row) == "solution":
                out.append(solution_prefix(str(row.get("solution") or ""), share, str(row["answer"])))
            else:
                out.append(self.written[str(row["id"])])
        return out

    # -- the step --------------------------------------------------------------------------------

    def rescue(self, trainer: Any, inputs: list[dict[str, Any]], output: dict[str, Any],
               rewards: torch.Tensor) -> dict[str, Any]:
        """The step's batch with each eligible collapsed group's rollouts replaced by hinted ones.

        `inputs`: this process's rows, G per question in group order; `rewards`: their correctness
        (B * G,). Every process makes the same calls (the hinted rollouts are scored by TRL, which
        gathers over processes): as many hinted groups as the process that needs most, the surplus
        discarded."""
        G, step = trainer.num_generations, trainer.state.global_step
        qids = [str(x["id"]) for x in inputs[::G]]
        solved = (rewards.nan_to_num(0.0).view(-1, G).max(dim=1).values > 0).tolist()
        # a group dynamic sampling left untrained (a filler, or NLL term only) keeps its place as it is
        trained = (output["completion_mask"].view(len(qids), -1).sum(dim=1) > 0).tolist()
        for qid, ok in zip(qids, solved, strict=True):
            if ok and qid in self.hinted and qid not in self.rescued:
                self.rescued[qid] = step
        eligible = [i for i, (qid, ok, used) in enumerate(zip(qids, solved, trained, strict=True))
                    if used and not ok and not self.explained(qid)]
        hints = self._hints(trainer, [self.rows_by_id[qids[i]] for i in eligible], step)
        chosen = [(i, h) for i, h in zip(eligible, hints, strict=True) if h is not None]
        device = trainer.accelerator.device
        needed = int(trainer.accelerator.gather(torch.tensor([len(chosen)], device=device)).max().item())
        stats = {"hints/groups": 0.0, "hints/solved_groups": 0.0}
        if needed > 0:
            output, solved_hinted = self._roll_out_hinted(trainer, inputs, output, chosen, needed)
            for i, _ in chosen:
                self.hinted.setdefault(qids[i], step)
            counts = trainer.accelerator.gather(torch.tensor([len(chosen), solved_hinted], device=device,
                                                             dtype=torch.float32)).view(-1, 2).sum(dim=0)
            stats = {"hints/groups": counts[0].item(), "hints/solved_groups": counts[1].item()}
        stats["hints/no_hint"] = float(len(eligible) - len(chosen))
        stats["hints/questions"] = float(len(self.hinted))
        stats["hints/rescued"] = float(len(self.rescued))
        trainer._step_stats.update(stats)
        return output

    def _hints(self, trainer: Any, rows: list[dict[str, Any]], step: int) -> list[str | None]:
        """The rows' hints; the policy writes any it needs in eval mode, without gradients. A vLLM
        engine is built and loaded by every process together (torchrun), so when any process has hints
        to write, every process calls the writer, with an empty share if it has none."""
        want = torch.tensor([1 if self.missing(rows) else 0], device=trainer.accelerator.device)
        write = bool(trainer.accelerator.gather(want).max().item())
        if not rows and not write:
            return []
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        with torch.no_grad():
            model.eval()
            try:
                return self.hints_for(rows, step, model, write)
            finally:
                model.train(was_training)

    def _roll_out_hinted(self, trainer: Any, inputs: list[dict[str, Any]], output: dict[str, Any],
                         chosen: list[tuple[int, str]], needed: int) -> tuple[dict[str, Any], int]:
        from trl import GRPOTrainer

        G = trainer.num_generations
        batch = []
        for k in range(needed):
            i, hint = chosen[k] if k < len(chosen) else (chosen[0] if chosen else (0, None))
            row = self.rows_by_id[str(inputs[i * G]["id"])]
            prompt = (hinted_prompt(row["question"], hint, self.tokenizer, self.cfg) if hint is not None
                      else inputs[i * G]["prompt"])  # a process with nothing to hint fills its share
            batch.extend({**inputs[i * G + j], "prompt": prompt} for j in range(G))
        kept = {mode: {k: len(v) for k, v in m.items()} for mode, m in trainer._metrics.items()}
        trainer._last_rewards = None
        hinted = GRPOTrainer._generate_and_score_completions(trainer, batch)
        for mode, lengths in kept.items():  # the step's logged reward and lengths stay the plain rollouts'
            for key, values in trainer._metrics[mode].items():
                del values[lengths.get(key, 0):]
        hinted_rewards = trainer._last_rewards
        if hinted_rewards is None:
            raise ExpoError("train.hints: the hinted rollouts computed no rewards")
        groups = [i for i, _ in chosen]
        spliced = splice_groups(output, hinted, groups, G, trainer._tokenizer.pad_token_id)
        if "old_per_token_logps" in spliced:  # vLLM rollouts: TRL's pi_old, taken under the hinted prompt
            rows = [g * G + j for g in groups for j in range(G)]
            spliced["old_per_token_logps"][rows] = plain_prompt_logps(trainer, spliced, rows)
        spliced["num_items_in_batch"] = trainer.accelerator.gather(spliced["completion_mask"].sum()).sum()
        solved = int((hinted_rewards.nan_to_num(0.0).view(-1, G)[: len(chosen)].max(dim=1).values > 0).sum())
        return spliced, solved

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"written": self.written, "hinted": self.hinted, "rescued": self.rescued}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.written = {str(k): v for k, v in state.get("written", {}).items()}
        self.hinted = {str(k): int(v) for k, v in state.get("hinted", {}).items()}
        self.rescued = {str(k): int(v) for k, v in state.get("rescued", {}).items()}


# TRL batch keys of a text-only step: which side each is padded on.
_PROMPT_SIDE = ("prompt_ids", "prompt_mask")  # kept: the plain solve prompt's tokens
_COMPLETION_SIDE = {"completion_ids": "pad", "completion_mask": 0, "sampling_per_token_logps": 0.0,
                    "importance_sampling_ratio": 0.0, "old_per_token_logps": 0.0}
_PER_ROW = ("advantages",)


def splice_groups(output: dict[str, Any], hinted: dict[str, Any], groups: list[int], num_generations: int,
                  pad_id: int) -> dict[str, Any]:
    """`output` with the rollouts of groups `groups` (group indices of this process's batch) replaced by
    the first len(groups) groups of `hinted`, completion side only: the prompt tokens stay the plain
    ones. Completions are right-padded to the wider of the two batches."""
    G = num_generations
    unknown = set(output) - set(_PROMPT_SIDE) - set(_COMPLETION_SIDE) - set(_PER_ROW) - {"num_items_in_batch"}
    if unknown:
        raise ExpoError(f"train.hints supports text-only on-policy rollouts; this batch also has "
                        f"{', '.join(sorted(unknown))}")
    rows = torch.tensor([g * G + j for g in groups for j in range(G)], dtype=torch.long)
    source = torch.arange(len(groups) * G)
    out = dict(output)
    for key, fill in _COMPLETION_SIDE.items():
        if key not in output:
            continue
        mine, theirs = output[key], hinted[key]
        if mine.dim() == 1:  # a per-row value (TRL's sequence-level sampling ratio)
            merged = mine.clone()
            merged[rows.to(mine.device)] = theirs[source.to(theirs.device)].to(mine.dtype)
            out[key] = merged
            continue
        width = max(mine.shape[1], theirs.shape[1])
        fill = pad_id if fill == "pad" else fill
        merged = _right_pad(mine, width, fill)
        merged[rows.to(mine.device)] = _right_pad(theirs, width, fill)[source.to(theirs.device)].to(mine.dtype)
        out[key] = merged
    advantages = output["advantages"].clone()
    advantages[rows.to(advantages.device)] = hinted["advantages"][source.to(advantages.device)]
    out["advantages"] = advantages
    return out


def plain_prompt_logps(trainer: Any, batch: dict[str, Any], rows: list[int]) -> torch.Tensor:
    """The policy's log-probabilities of `rows`' completions under the batch's (plain) prompt tokens, for
    TRL's pi_old: with vLLM rollouts TRL computes pi_old under the prompt it sampled from, which for a
    hinted rollout is the hinted one, and the ratio pi(o|q) / pi(o|q, hint) would then weigh the
    rollout down to nothing. Under the plain prompt the ratio starts at 1, as without vLLM (where TRL
    takes pi_old from the step's own forward)."""
    index = torch.tensor(rows, dtype=torch.long, device=batch["completion_ids"].device)
    completion_ids = batch["completion_ids"][index]
    ids = torch.cat([batch["prompt_ids"][index], completion_ids], dim=1)
    mask = torch.cat([batch["prompt_mask"][index], batch["completion_mask"][index]], dim=1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, completion_ids.size(1), batch_size=trainer.args.per_device_train_batch_size)
    return logps.to(batch["old_per_token_logps"].dtype)


def _right_pad(t: torch.Tensor, width: int, fill: float | int) -> torch.Tensor:
    if t.shape[1] == width:
        return t.clone()
    return torch.cat([t, t.new_full((t.shape[0], width - t.shape[1]), fill)], dim=1)


def make_hinter(cfg: ExpoConfig, rows: list[dict[str, Any]], tokenizer: Any, buffer: Any,
                write_hints: WriteHints | None = None) -> Hinter | None:
    """The arm's Hinter (None when train.hints is off)."""
    if not cfg.train.hints:
        return None
    explained = buffer.has if buffer is not None else (lambda qid: False)
    return Hinter(cfg, {str(r["id"]): r for r in rows}, tokenizer, explained, write_hints)


__all__ = ["HINT_WRITER", "Hinter", "PolicyHintWriter", "WriteHints", "hinted_prompt", "make_hinter",
           "prefix_share", "solution_prefix", "splice_groups", "usable_hint"]
