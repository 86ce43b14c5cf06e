"""ExP-GRPO on TRL 1.16: `GRPOTrainer` extended at its seams, GRPO itself left to TRL.

TRL generates G rollouts per prompt, scores them (our verifier reward), computes group advantages and
the clipped policy loss. This subclass adds, per step:
- an NLL term on one text per question of the batch (`NLLTerm`): a self-explanation from the
  `ExplanationBuffer` for ExP-GRPO, the data set's reference solution for GRPO + SFT. The text is
  appended to the very token ids the rollouts were conditioned on (the plain solve prompt, no hint) and
  scored with a token-mean; it is not a rollout and gets no advantage. `on="unsolved"` keeps only the
  questions whose G rollouts were all wrong (where GRPO's gradient is zero).
- the term under micro-batching and data parallelism: one optimizer step is W processes x A
  micro-batches (TRL's gradient accumulation). Each process splits its explanations over its A
  micro-batches and each micro-batch adds `weight * W * nll_sum / n_tokens_of_the_whole_step`; DDP
  averages the W gradients, so the step's total is exactly `weight * token-mean NLL over every
  explanation of the step`, whatever W and A are. Only the explanation positions reach the lm_head.
- online regeneration: every `regenerate_every` steps the questions of the batch get fresh explanations
  from the current policy through `regenerate(model, rows)`; the buffer's collapse guard decides
  whether to use them.
- named phase timings and ExPO statistics merged into TRL's per-step logs.
- dynamic sampling fitted to ExPO (`train.filter_groups`, expo.train.group_filter): all-correct groups
  dropped, all-wrong ones kept for the NLL term (dropped by plain GRPO), open slots refilled from
  further prompts for up to `filter_max_rounds` rounds; group counts logged per step (`filter/...`).
  Untrained slots (fillers) count in no loss type's average (`rollout_loss_scale`).
- the loss: TRL's `loss_type` aggregation for the policy term (grpo: mean of per-sequence means; dapo:
  token sum / the step's active rollout tokens; dr_grpo: token sum / (rollouts x max_completion_length)),
  and the NLL term normalised apart, by the step's explanation tokens, whatever the loss type.
- one prefill per distinct prompt instead of G (`expo.generation.shared_prefix`) on the plain
  transformers generation path: the same samples, less work (bench/rollouts.py).

Seams used: `_generate`, `_calculate_rewards`, `_get_per_token_logps_and_entropies` (timed),
`_generate_single_turn` (shared prefill), `_generate_and_score_completions` (regenerate, dynamic
sampling, build the NLL plan), `compute_loss` (add this micro-batch's share of the term), `log` (extra
metrics),
`_save_checkpoint` (every process's buffer state), `_get_train_sampler` (resumable order). Plain GRPO is this class with no term.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessorList, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import RepeatSampler

from expo.errors import ExpoError
from expo.io import read_json, write_json
from expo.generation.base import GenerationStats, first_eos, progress_reader
from expo.generation.hf import StepTokenCounter
from expo.generation.shared_prefix import sample_shared_prefix
from expo.generation.trl_rollouts import shared_engine_rollouts
from expo.losses import micro_batch_share, pack_scored_rows, scored_nll_sum, unsolved_groups
from expo.progress import watch
from expo.train.explanations import ExplanationBuffer, Regenerate
from expo.train.group_filter import GroupFilter, Selection, group_kinds, rollout_loss_scale, select_groups
from expo.train.resume import rank_file
from expo.train.timing import PhaseTimer

EXPO_STATE_FILE = "expo_state.json"
log = logging.getLogger(__name__)


@dataclass
class NLLTerm:
    """The supervised term added to GRPO: which text per question, how heavy at each step, on which groups."""

    name: str  # "expo" (self-explanations) or "sft" (reference solutions)
    text_for: Callable[[str], str | None]  # question id -> text to score, None when it has none
    weight_at: Callable[[int], float]  # optimizer step -> weight (expo_beta schedule, or constant sft_beta)
    on: str = "all"  # "all" | "unsolved"
    # The longest text scored, in tokens with its EOS (train.expo_max_tokens). A longer one is left out
    # of the term and counted, never cut: a cut text loses its final answer, the part that verified.
    max_tokens: int = 1024


@dataclass
class NLLPlan:
    """One step's NLL work on this process: its scored rows split over the step's micro-batches."""

    chunks: list[list[tuple[list[int], list[int]]]]  # micro-batch k -> [(prompt ids, text ids)]
    step_tokens: int  # text tokens of the whole step, over every process (the token-mean's divisor)
    world: int  # processes whose gradients DDP averages


class ExpoGRPOTrainer(GRPOTrainer):
    """GRPOTrainer + an NLL term on self-explanations (or reference solutions), online regeneration, timings."""

    def __init__(self, *args: Any, nll_term: NLLTerm | None = None, buffer: ExplanationBuffer | None = None,
                 regenerate: Regenerate | None = None, regenerate_every: int = 0,
                 rows_by_id: dict[str, dict[str, Any]] | None = None, metrics_writer: Any = None,
                 group_filter: GroupFilter | None = None, progress_label: str = "train", hinter: Any = None,
                 **kwargs: Any) -> None:
        self.hinter = hinter  # hints for collapsed groups (expo.train.hints.Hinter); None = off
        self.nll_term = nll_term
        self.group_filter = group_filter  # dynamic sampling (expo.train.group_filter); None = off
        self.buffer = buffer
        self.regenerate = regenerate
        self.regenerate_every = regenerate_every
        self.rows_by_id = rows_by_id or {}
        self.metrics_writer = metrics_writer  # its lines so far are copied into each checkpoint
        self.timer = PhaseTimer()
        self._nll_plan: NLLPlan | None = None
        self._rollouts = (0, 0)  # the step's (rollouts, trained rollouts) over every process; (0, 0): all train
        self._last_rewards: torch.Tensor | None = None
        self._loss_acc = _new_loss_acc()  # this step's sums over its micro-batches (for the logs)
        self._step_tokens = 0
        self._step_stats: dict[str, float] = {}
        self._clock = _StepClock()
        self.progress_label = progress_label  # `train <arm>`: rollout progress inside a step
        self.rollout_stats = GenerationStats()  # tokens per decoding step (transformers rollouts)
        with shared_engine_rollouts():  # TRL's colocate vLLM engine is the process's one engine
            super().__init__(*args, **kwargs)
        self.add_callback(self._clock)
        backward = self.accelerator.backward

        def timed_backward(loss: torch.Tensor, **kw: Any) -> None:
            with self.timer.phase("backward"):
                backward(loss, **kw)

        self.accelerator.backward = timed_backward  # the one seam HF Trainer offers around backward

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        """TRL's RepeatSampler, reseeded from (seed, epoch) at each epoch: its own generator otherwise
        carries state across epochs that a resumed run cannot rebuild, and the batches would differ."""
        sampler = super()._get_train_sampler(dataset)
        sampler.__class__ = _EpochSeededRepeatSampler  # same fields, one extra method
        return sampler

    # -- timed seams -------------------------------------------------------------------------

    def _generate(self, prompts: list) -> Any:
        """Timed, and watched: a step's rollouts can take minutes on a real model, so a progress line
        (rollout tokens, tok/s) every few seconds says the step is alive (rank 0)."""
        reader = progress_reader(self.rollout_stats, len(prompts))
        step = f"step {self.state.global_step + 1}/{self.state.max_steps or self.args.max_steps} rollouts"
        watching = (watch(self.progress_label, lambda: f"{step}: {reader()}", every_s=10.0)
                    if self.accelerator.is_main_process else contextlib.nullcontext())
        with self.timer.phase("generation"), watching:
            return super()._generate(prompts)

    def _generate_single_turn(self, prompt_ids: list[list[int]], images: Any, multimodal_fields: Any,
                              num_generations: int, has_tool_images: bool = False) -> Any:
        """Text-only transformers generation with one prefill per distinct prompt; anything else
        (vLLM, continuous batching, images) goes to TRL unchanged."""
        if (self.use_vllm or self.use_transformers_continuous_batching or images is not None or multimodal_fields
                or self.pad_to_multiple_of is not None):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        with (
            unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
        ):
            counter = StepTokenCounter(self.rollout_stats, tuple(self.eos_token_ids))
            rows = sample_shared_prefix(unwrapped_model, prompt_ids, self.generation_config,
                                        pad_token_id=self._tokenizer.pad_token_id,
                                        logits_processor=LogitsProcessorList([counter]))
        self.rollout_stats.tokens_in_flight = 0
        completions = []
        for row in rows:  # up to and including the first end token, as TRL's completion mask keeps
            ids = row.tolist()
            eos_at = first_eos(ids, self.eos_token_ids)
            completions.append(ids if eos_at is None else ids[: eos_at + 1])
        self.rollout_stats.sequences += len(completions)
        self.rollout_stats.tokens += sum(len(ids) for ids in completions)
        return completions, None

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any
                           ) -> torch.Tensor:
        with self.timer.phase("reward"):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # (num_processes * B * G, n_funcs), gathered; keep this process's rows for the unsolved test.
        # Column 0 is correctness (the verifier's reward); the others shape it (train.overlong_buffer)
        # and must not make a right answer look wrong to the group filter or expo_on.
        n = len(prompts)
        local = rewards_per_func[self.accelerator.process_index * n:(self.accelerator.process_index + 1) * n]
        self._last_rewards = local[:, :1].nansum(dim=1)  # (B * G,)
        return rewards_per_func

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        with self.timer.phase("logprobs"):
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    # -- the step ----------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        training = self.model.training
        if training:
            self._maybe_regenerate(inputs)
        self._last_rewards = None  # set by _calculate_rewards below; never a previous step's
        explained = None
        self._rollouts = (0, 0)
        if training and self.group_filter is not None:
            output, inputs, rewards, explained = self._filtered_generation(inputs)
        else:
            output = super()._generate_and_score_completions(inputs)
            rewards = self._last_rewards
        if training and self.hinter is not None and rewards is not None:  # never while validating
            output = self.hinter.rescue(self, inputs, output, rewards)
        if training:
            self._step_tokens = int(output["prompt_mask"].sum() + output["completion_mask"].sum())
            self._nll_plan = self._plan_nll(self._nll_rows(inputs, rewards, explained))
        return output

    def _filtered_generation(self, inputs: list[dict[str, Any]]
                             ) -> tuple[dict[str, Any], list[dict[str, Any]], torch.Tensor, list[bool]]:
        """Dynamic sampling: generate, sort groups by kind, refill open slots from further prompts for
        up to `max_rounds` rounds, then assemble the step's batch from the chosen groups.

        Returns (TRL's batch dict, the chosen groups' inputs, their rewards, per group whether its
        question may get the NLL term). Every process runs the same number of rounds with the same
        prompt count (TRL gathers rewards over processes), the largest any process needs."""
        gf, G = self.group_filter, self.num_generations
        capacity = len(inputs) // G
        outputs, batches, rewards, kinds = [], [], [], []
        batch = inputs
        for round_ in range(gf.max_rounds):
            self._last_rewards = None
            outputs.append(super()._generate_and_score_completions(batch))
            if self._last_rewards is None:
                raise ExpoError("train.filter_groups: this step computed no rewards, so groups cannot be "
                                "sorted into correct, wrong and mixed")
            batches.append(batch)
            rewards.append(self._last_rewards)
            kinds.append(group_kinds(self._last_rewards.tolist(), G))
            selection = select_groups(kinds, capacity, gf.keep_wrong, gf.skip_wrong_rollouts)
            missing = int(self.accelerator.gather(torch.tensor([selection.missing],
                                                               device=self.accelerator.device)).max().item())
            if missing == 0 or round_ == gf.max_rounds - 1:
                break
            seen = {str(x["id"]) for b in batches for x in b}
            batch = self._refill_inputs(missing, round_ + 1, seen)
        selection = select_groups(kinds, capacity, gf.keep_wrong, gf.skip_wrong_rollouts, final=True)
        self._log_selection(selection, len(outputs))
        output = assemble_slots(outputs, selection, G, self._tokenizer.pad_token_id)
        output["num_items_in_batch"] = self.accelerator.gather(output["completion_mask"].sum()).sum()
        mine = torch.tensor([len(selection.slots) * G, sum(G for s in selection.slots if s.trained)],
                            device=self.accelerator.device)
        rollouts, trained = self.accelerator.gather(mine).view(-1, 2).sum(dim=0).tolist()
        self._rollouts = (int(rollouts), int(trained))
        rows = [(s.round, slice(s.index * G, (s.index + 1) * G)) for s in selection.slots]
        chosen = [x for r, group in rows for x in batches[r][group]]
        chosen_rewards = torch.cat([rewards[r][group] for r, group in rows])
        return output, chosen, chosen_rewards, [slot.explained for slot in selection.slots]

    def _refill_inputs(self, prompts: int, round_: int, seen: set[str]) -> list[dict[str, Any]]:
        """`prompts` further training rows not yet in this step, each repeated G times (TRL's layout),
        drawn by a generator seeded from (seed, step, round, process): a resumed run draws the same."""
        seed = ((self.args.seed * 1_000_003 + self.state.global_step) * 31 + round_) * 257
        gen = torch.Generator().manual_seed(seed + self.accelerator.process_index)
        order = torch.randperm(len(self.train_dataset), generator=gen).tolist()
        ids = [str(i) for i in self.train_dataset["id"]]  # one column read, not a row read per index
        fresh = [i for i in order if ids[i] not in seen]
        picked = (fresh + order)[:prompts]  # a data set smaller than the step reuses questions
        return [self.train_dataset[i] for i in picked for _ in range(self.num_generations)]

    def _log_selection(self, selection: Selection, rounds: int) -> None:
        """Per-step group counts, summed over processes: shares of each kind among the generated groups."""
        local = [selection.counts["correct"], selection.counts["wrong"], selection.counts["mixed"],
                 selection.dropped, selection.surplus, selection.fillers]
        mine = torch.tensor(local, dtype=torch.float32, device=self.accelerator.device)
        total = self.accelerator.gather(mine).view(-1, len(local)).sum(dim=0).tolist()
        correct, wrong, mixed, dropped, surplus, fillers = total
        groups = max(correct + wrong + mixed, 1.0)
        self._step_stats.update({
            "filter/groups": correct + wrong + mixed, "filter/refill_rounds": float(rounds - 1),
            "filter/share_correct": correct / groups, "filter/share_wrong": wrong / groups,
            "filter/share_mixed": mixed / groups, "filter/dropped": dropped, "filter/surplus": surplus,
            "filter/fillers": fillers})

    def _maybe_regenerate(self, inputs: list[dict[str, Any]]) -> None:
        """Every K steps (not at step 0: the explanations stage already sampled the initial policy)."""
        step = self.state.global_step
        if self.regenerate is None or self.buffer is None or self.regenerate_every <= 0:
            return
        if step == 0 or step % self.regenerate_every != 0:
            return
        rows = list({str(x["id"]): self.rows_by_id[str(x["id"])] for x in inputs}.values())
        model = self.accelerator.unwrap_model(self.model)
        with self.timer.phase("explain_regen"), torch.no_grad(), \
                disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            model.eval()
            try:
                records = self.regenerate(model, rows)
            finally:
                model.train()
        stats = self.buffer.add_round(records, step)
        self._step_stats["explain/regenerated"] = float(len(rows))
        self._step_stats["explain/guard_held"] = 0.0 if stats.used else 1.0

    def _nll_rows(self, inputs: list[dict[str, Any]], rewards: torch.Tensor | None,
                  explained: list[bool] | None = None) -> list[tuple[list[int], list[int]]] | None:
        """(solve prompt ids, text ids) per selected question of this process's generation batch;
        None when the arm has no NLL term. `explained` (one per group; dynamic sampling): False for a
        group whose question gets no term (a filler)."""
        if self.nll_term is None:
            return None
        G = self.num_generations
        qids = [str(x["id"]) for x in inputs[::G]]  # rollouts come group by group, whole groups per process
        prompts = [x["prompt"] for x in inputs[::G]]
        if rewards is None:
            if self.nll_term.on == "unsolved":
                raise ExpoError("train.expo_on 'unsolved': this step computed no rewards, so solved and "
                                "unsolved groups cannot be told apart (use expo_on: all)")
            unsolved = [True] * len(qids)
        else:
            unsolved = unsolved_groups(rewards, G).tolist()
        self._step_stats["unsolved_groups"] = float(sum(unsolved))
        rows, too_long = [], 0
        explained = explained if explained is not None else [True] * len(qids)
        for qid, prompt, is_unsolved, used in zip(qids, prompts, unsolved, explained, strict=True):
            if not used or (self.nll_term.on == "unsolved" and not is_unsolved):
                continue
            text = self.nll_term.text_for(qid)
            if text is None:
                continue
            row = self.nll_token_ids(prompt, text)
            if row is None:
                too_long += 1
            else:
                rows.append(row)
        self._step_stats["explanations_used"] = float(len(rows))
        self._step_stats["expo/too_long"] = float(too_long)
        self._step_stats["expo/over_rollout_budget"] = float(
            sum(1 for _, ids in rows if len(ids) > self.max_completion_length))
        return rows

    def _plan_nll(self, rows: list[tuple[list[int], list[int]]] | None) -> NLLPlan | None:
        """Split this process's rows over the step's micro-batches and count the step's text tokens
        over every process (one all-gather, made by every process, rows or not)."""
        if rows is None:
            return None
        micro = max(int(self.args.steps_per_generation), 1)
        # The step's counts are logged for every process together, so they travel in the same gather.
        counted = ("unsolved_groups", "explanations_used", "expo/too_long", "expo/over_rollout_budget")
        local = torch.tensor([float(sum(len(text) for _, text in rows))]
                             + [self._step_stats.get(key, 0.0) for key in counted], device=self.accelerator.device)
        totals = self.accelerator.gather(local).view(-1, local.numel()).sum(dim=0).tolist()
        step_tokens = int(totals[0])
        self._step_stats["expo/tokens"] = float(step_tokens)  # scored text tokens, every process
        self._step_stats.update(zip(counted, totals[1:], strict=True))
        return NLLPlan(chunks=[rows[k::micro] for k in range(micro)], step_tokens=step_tokens,
                       world=self.accelerator.num_processes)

    def nll_token_ids(self, prompt: str, text: str) -> tuple[list[int], list[int]] | None:
        """(prompt ids, text ids ending in EOS) of one scored row, or None when the text does not fit.

        The prompt is tokenized by the same call TRL uses for rollout prompts, so the conditioning is
        token-for-token the solve prompt the policy answers. The text is scored whole, with the EOS a
        finished answer ends with: its final answer, the part the verifier accepted, is always in the
        target. A text longer than the term's `max_tokens` (EOS included) is not cut but left out
        (None; counted as `expo/too_long`). It may be longer than a rollout (`max_completion_length`):
        the explanation budget is the longer one when the model needs more room to reason from the
        answer than to guess it (docs/explanations.md, "How long an explanation may be")."""
        prompt_ids = list(self.processing_class(text=[prompt])["input_ids"][0])
        text_ids = list(self.processing_class(text=text, add_special_tokens=False)["input_ids"])
        text_ids.append(self.processing_class.eos_token_id)
        budget = self.nll_term.max_tokens if self.nll_term is not None else self.max_completion_length
        if len(text_ids) > budget:
            return None
        return prompt_ids, text_ids

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor:
        grpo_loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # already / grad accum
        if not self.model.training:
            return grpo_loss
        # A loss type that divides by rollouts counted the untrained slots' rows: undo it for the step.
        # (TRL adds to this loss only its entropy bonus, which no config key turns on, and a MoE router
        # loss, off unless the model's config asks for router logits.)
        grpo_loss = grpo_loss * rollout_loss_scale(self.loss_type, *self._rollouts)
        micro = max(int(self.args.steps_per_generation), 1)
        k = self._step % micro  # which micro-batch of the step this is (TRL's own buffer index)
        if k == 0:
            self._loss_acc = _new_loss_acc()
        weight = self.nll_term.weight_at(self.state.global_step) if self.nll_term else 0.0
        loss = grpo_loss
        plan = self._nll_plan
        if plan is not None and weight > 0.0 and plan.step_tokens > 0 and plan.chunks[k]:
            with self.timer.phase("expo_nll"):
                # The unwrapped module: processes may run different numbers of NLL forwards, and a DDP
                # forward can hold a collective (buffer broadcast); the gradient still reaches DDP's hooks.
                module = self.accelerator.unwrap_model(model)
                batch = pack_scored_rows(plan.chunks[k], self.processing_class.pad_token_id,
                                         self.accelerator.device)
                nll_sum, n_tokens = scored_nll_sum(module, batch)
            loss = grpo_loss + micro_batch_share(nll_sum, weight, plan.world, plan.step_tokens)
            self._loss_acc["nll_sum"] += nll_sum.item()
            self._loss_acc["nll_tokens"] += n_tokens
        self._loss_acc["grpo"] += grpo_loss.item()  # each micro-batch's is already 1/A of its mean
        if k == micro - 1:  # the step's last micro-batch: one line of loss metrics per step
            grpo, nll = self._step_losses()
            term = 0.0 if math.isnan(nll) else weight * nll
            metrics = self._metrics["train"]
            metrics["grpo_loss"].append(grpo)
            metrics["expo_term"].append(term)
            metrics["total_loss"].append(grpo + term)
            metrics["expo_nll"].append(nll)  # NaN (dropped by TRL's mean) when unused
            metrics["expo_weight"].append(weight)
        return loss

    def _step_losses(self) -> tuple[float, float]:
        """The step's GRPO loss and token-mean NLL over every process, as the optimizer sees them: DDP
        averages the processes' gradients, so the GRPO loss is the processes' mean and the NLL is the
        sum over every process's explanation tokens by their count (NaN when none was scored). Every
        process calls it once per step (one all-gather)."""
        acc = self._loss_acc
        local = torch.tensor([acc["grpo"], acc["nll_sum"], float(acc["nll_tokens"])], device=self.accelerator.device)
        grpo, nll_sum, nll_tokens = self.accelerator.gather(local).view(-1, 3).sum(dim=0).tolist()
        return grpo / self.accelerator.num_processes, (nll_sum / nll_tokens if nll_tokens else float("nan"))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and "loss" in logs:
            timings = self.timer.flush()
            logs.update({f"time/{name}": seconds for name, seconds in timings.items()})
            logs["time/step"] = self._clock.last_step_s
            logs["tokens_per_s"] = self._step_tokens / self._clock.last_step_s if self._clock.last_step_s else 0.0
            if self.buffer is not None and self.buffer.rounds:
                last = self.buffer.rounds[-1]
                logs["acceptance"] = last.acceptance  # of the newest round (carried between rounds)
                logs["explain/buffer_size"] = float(len(self.buffer))
            logs.setdefault("explain/regenerated", 0.0)
            logs.update(self._step_stats)
            self._step_stats = {}
        super().log(logs, start_time)

    # -- checkpoints -------------------------------------------------------------------------

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """HF Trainer's checkpoint plus every process's own explanation buffer (each process regenerates
        explanations for its own share of the questions): rank r writes `expo_state-rank<r>.json`, then,
        once every process has written its files, rank 0 writes `expo_state.json`, the mark that the
        checkpoint is complete (expo.train.resume)."""
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        state = {"step": self.state.global_step,
                 "buffer": self.buffer.state_dict() if self.buffer is not None else None,
                 "hints": self.hinter.state_dict() if self.hinter is not None else None}
        if rank > 0:
            os.makedirs(folder, exist_ok=True)  # rank 0 may not have made it yet
            write_json(os.path.join(folder, rank_file(EXPO_STATE_FILE, rank)), {**state, "rank": rank})
        if world > 1:
            self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if self.metrics_writer is not None:
                self.metrics_writer.save_copy(folder)
            # Written last, after every process's files: a checkpoint without it was interrupted mid-save.
            write_json(os.path.join(folder, EXPO_STATE_FILE), {**state, "world": world})

    def load_expo_state(self, checkpoint: str) -> None:
        """This process's own buffer from `checkpoint`. A checkpoint written by fewer processes has no
        file for this rank: it starts from rank 0's (the same seed explanations, rank 0's online ones)."""
        rank = self.accelerator.process_index
        path = os.path.join(checkpoint, rank_file(EXPO_STATE_FILE, rank))
        if not os.path.isfile(path):
            log.warning("%s has no explanation buffer of process %d (it was written by fewer processes); "
                        "process %d starts from process 0's", checkpoint, rank, rank)
            path = os.path.join(checkpoint, EXPO_STATE_FILE)
        state = read_json(path)
        if self.hinter is not None and state.get("hints") is not None:
            self.hinter.load_state_dict(state["hints"])
        if self.buffer is not None and state.get("buffer") is not None:
            self.buffer.load_state_dict(state["buffer"])


# TRL batch keys (text-only rollouts) and how a row is padded when rounds of different widths are joined.
_LEFT_PADDED = {"prompt_ids": "pad", "prompt_mask": 0}
_RIGHT_PADDED = {"completion_ids": "pad", "completion_mask": 0, "old_per_token_logps": 0.0,
                 "sampling_per_token_logps": 0.0, "ref_per_token_logps": 0.0,
                 "importance_sampling_ratio": 0.0}
_PER_ROW = ("advantages",)
_RECOMPUTED = ("num_items_in_batch",)


def assemble_slots(outputs: list[dict[str, Any]], selection: Selection, num_generations: int,
                   pad_id: int) -> dict[str, Any]:
    """One TRL batch from the selected groups of several generation rounds.

    Rows are taken group by group in slot order; prompts are left-padded and completions right-padded
    to the widest round; an untrained slot's completion mask is 0 (no loss; and its advantage is 0 by
    construction: it is a correct or wrong group). `num_items_in_batch` is left to the caller (a
    gather over processes)."""
    G = num_generations
    keys = set().union(*outputs)
    unknown = keys - set(_LEFT_PADDED) - set(_RIGHT_PADDED) - set(_PER_ROW) - set(_RECOMPUTED)
    if unknown:
        raise ExpoError(f"train.filter_groups supports text-only rollouts; this batch also has "
                        f"{', '.join(sorted(unknown))}")
    index = [[(s.round, s.index * G + j) for j in range(G)] for s in selection.slots]
    rows = [pair for group in index for pair in group]
    out: dict[str, Any] = {}
    for key in sorted(keys - set(_RECOMPUTED)):
        parts = [outputs[r][key][i] for r, i in rows]
        if key in _PER_ROW or parts[0].dim() == 0:
            out[key] = torch.stack(parts)
            continue
        width = max(p.shape[-1] for p in parts)
        fill = {**_LEFT_PADDED, **_RIGHT_PADDED}[key]
        fill = pad_id if fill == "pad" else fill
        padded = []
        for p in parts:
            extra = p.new_full((width - p.shape[-1],), fill)
            padded.append(torch.cat([extra, p]) if key in _LEFT_PADDED else torch.cat([p, extra]))
        out[key] = torch.stack(padded)
    trained = torch.tensor([s.trained for s in selection.slots for _ in range(G)],
                           device=out["completion_mask"].device)
    out["completion_mask"] = out["completion_mask"] * trained.unsqueeze(1).to(out["completion_mask"].dtype)
    return out


def _new_loss_acc() -> dict[str, float]:
    return {"grpo": 0.0, "nll_sum": 0.0, "nll_tokens": 0.0}


class _EpochSeededRepeatSampler(RepeatSampler):
    def set_epoch(self, epoch: int) -> None:  # accelerate calls this at the start of every epoch
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) * 100_003 + epoch)


class _StepClock(TrainerCallback):
    """Wall time of the last optimizer step (generation to optimizer update)."""

    def __init__(self) -> None:
        self._start = 0.0
        self.last_step_s = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last_step_s = time.perf_counter() - self._start


__all__ = ["EXPO_STATE_FILE", "ExpoGRPOTrainer", "NLLPlan", "NLLTerm", "assemble_slots"]
