"""ExP-GRPO on TRL 1.16: `GRPOTrainer` extended at its seams, GRPO itself left to TRL.

TRL generates G rollouts per prompt, scores them (our verifier reward), computes group advantages and
the clipped policy loss. This subclass adds, per step:
- an NLL term on one text per question of the batch (`NLLTerm`): a self-explanation from the
  `ExplanationBuffer` for ExP-GRPO, the data set's reference solution for GRPO + SFT. The text is
  appended to the very token ids the rollouts were conditioned on (the plain solve prompt, no hint) and
  scored with a token-mean; it is not a rollout and gets no advantage. `on="unsolved"` keeps only the
  questions whose G rollouts were all wrong (where GRPO's gradient is zero).
- online regeneration: every `regenerate_every` steps the questions of the batch get fresh explanations
  from the current policy through `regenerate(model, rows)`; the buffer's collapse guard decides
  whether to use them.
- named phase timings and ExPO statistics merged into TRL's per-step logs.
- one prefill per distinct prompt instead of G (`expo.generation.shared_prefix`) on the plain
  transformers generation path: the same samples, less work (bench/rollouts.py).

Seams used: `_generate`, `_calculate_rewards`, `_get_per_token_logps_and_entropies` (timed),
`_generate_single_turn` (shared prefill), `_generate_and_score_completions` (regenerate, build the NLL
batch), `compute_loss` (add the term), `log` (extra metrics), `_save_checkpoint` (buffer state),
`_get_train_sampler` (resumable order). Plain GRPO is this class with no term.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import RepeatSampler

from expo.generation.base import first_eos
from expo.generation.shared_prefix import sample_shared_prefix
from expo.losses import explanation_nll, unsolved_groups
from expo.train.explanations import ExplanationBuffer, Regenerate
from expo.train.timing import PhaseTimer

EXPO_STATE_FILE = "expo_state.json"


@dataclass
class NLLTerm:
    """The supervised term added to GRPO: which text per question, how heavy at each step, on which groups."""

    name: str  # "expo" (self-explanations) or "sft" (reference solutions)
    text_for: Callable[[str], str | None]  # question id -> text to score, None when it has none
    weight_at: Callable[[int], float]  # optimizer step -> weight (expo_beta schedule, or constant sft_beta)
    on: str = "all"  # "all" | "unsolved"


class ExpoGRPOTrainer(GRPOTrainer):
    """GRPOTrainer + an NLL term on self-explanations (or reference solutions), online regeneration, timings."""

    def __init__(self, *args: Any, nll_term: NLLTerm | None = None, buffer: ExplanationBuffer | None = None,
                 regenerate: Regenerate | None = None, regenerate_every: int = 0,
                 rows_by_id: dict[str, dict[str, Any]] | None = None, metrics_writer: Any = None,
                 **kwargs: Any) -> None:
        self.nll_term = nll_term
        self.buffer = buffer
        self.regenerate = regenerate
        self.regenerate_every = regenerate_every
        self.rows_by_id = rows_by_id or {}
        self.metrics_writer = metrics_writer  # its lines so far are copied into each checkpoint
        self.timer = PhaseTimer()
        self._nll_batch: dict[str, torch.Tensor] | None = None
        self._last_rewards: torch.Tensor | None = None
        self._step_tokens = 0
        self._step_stats: dict[str, float] = {}
        self._clock = _StepClock()
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
        with self.timer.phase("generation"):
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
            rows = sample_shared_prefix(unwrapped_model, prompt_ids, self.generation_config,
                                        pad_token_id=self._tokenizer.pad_token_id)
        completions = []
        for row in rows:  # up to and including the first end token, as TRL's completion mask keeps
            ids = row.tolist()
            eos_at = first_eos(ids, self.eos_token_ids)
            completions.append(ids if eos_at is None else ids[: eos_at + 1])
        return completions, None

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any
                           ) -> torch.Tensor:
        with self.timer.phase("reward"):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # (num_processes * B * G, n_funcs), gathered; keep this process's rows for the unsolved test.
        n = len(prompts)
        local = rewards_per_func[self.accelerator.process_index * n:(self.accelerator.process_index + 1) * n]
        self._last_rewards = local.nansum(dim=1)  # (B * G,)
        return rewards_per_func

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
        with self.timer.phase("logprobs"):
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    # -- the step ----------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        training = self.model.training
        if training:
            self._maybe_regenerate(inputs)
        output = super()._generate_and_score_completions(inputs)
        if training:
            self._step_tokens = int(output["prompt_mask"].sum() + output["completion_mask"].sum())
            self._nll_batch = self._build_nll_batch(inputs, self._last_rewards)
        return output

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

    def _build_nll_batch(self, inputs: list[dict[str, Any]], rewards: torch.Tensor | None
                         ) -> dict[str, torch.Tensor] | None:
        """[solve prompt ids; text ids; eos] per selected question, right-padded. None when nothing selected."""
        if self.nll_term is None:
            return None
        G = self.num_generations
        qids = [str(x["id"]) for x in inputs[::G]]  # rollouts come group by group
        prompts = [x["prompt"] for x in inputs[::G]]
        unsolved = unsolved_groups(rewards, G).tolist() if rewards is not None else [True] * len(qids)
        self._step_stats["unsolved_groups"] = float(sum(unsolved))
        rows = []
        for qid, prompt, is_unsolved in zip(qids, prompts, unsolved, strict=True):
            if self.nll_term.on == "unsolved" and not is_unsolved:
                continue
            text = self.nll_term.text_for(qid)
            if text is not None:
                rows.append(self.nll_token_ids(prompt, text))
        self._step_stats["explanations_used"] = float(len(rows))
        return _pad_right(rows, self.processing_class.pad_token_id, self.accelerator.device) if rows else None

    def nll_token_ids(self, prompt: str, text: str) -> tuple[list[int], int]:
        """Token ids of one scored row and where the scored part starts.

        The prompt is tokenized by the same call TRL uses for rollout prompts, so the conditioning is
        token-for-token the solve prompt the policy answers; the text is capped at the rollout length
        (max_completion_length), as a rollout would be."""
        prompt_ids = list(self.processing_class(text=[prompt])["input_ids"][0])
        text_ids = list(self.processing_class(text=text, add_special_tokens=False)["input_ids"])
        if len(text_ids) < self.max_completion_length:
            text_ids.append(self.processing_class.eos_token_id)  # a complete answer ends, as rollouts do
        else:
            text_ids = text_ids[: self.max_completion_length]  # cut like an overlong rollout: no EOS
        return prompt_ids + text_ids, len(prompt_ids)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor:
        grpo_loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # already / grad accum
        mode = "train" if self.model.training else "eval"
        weight = self.nll_term.weight_at(self.state.global_step) if self.nll_term else 0.0
        loss, nll_value = grpo_loss, float("nan")
        if mode == "train" and self._nll_batch is not None and weight > 0.0:
            with self.timer.phase("expo_nll"):
                nll, _ = explanation_nll(model, **self._nll_batch)
            loss = grpo_loss + weight * nll / self.current_gradient_accumulation_steps
            nll_value = nll.item()
        if mode == "train":
            accum = self.current_gradient_accumulation_steps
            self._metrics[mode]["grpo_loss"].append(grpo_loss.item() * accum)
            self._metrics[mode]["expo_term"].append(0.0 if math.isnan(nll_value) else weight * nll_value)
            self._metrics[mode]["total_loss"].append(loss.item() * accum)
            self._metrics[mode]["expo_nll"].append(nll_value)  # NaN (dropped by TRL's mean) when unused
            self._metrics[mode]["expo_weight"].append(weight)
        return loss

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
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            if self.metrics_writer is not None:
                self.metrics_writer.save_copy(folder)
            state = {"step": self.state.global_step,
                     "buffer": self.buffer.state_dict() if self.buffer is not None else None}
            # Written last: a checkpoint without it was interrupted mid-save (see resume.py).
            with open(os.path.join(folder, EXPO_STATE_FILE), "w", encoding="utf-8") as fh:
                json.dump(state, fh)

    def load_expo_state(self, checkpoint: str) -> None:
        with open(os.path.join(checkpoint, EXPO_STATE_FILE), encoding="utf-8") as fh:
            state = json.load(fh)
        if self.buffer is not None and state.get("buffer") is not None:
            self.buffer.load_state_dict(state["buffer"])


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


def _pad_right(rows: list[tuple[list[int], int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (E, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (E, T)
    target_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (E, T): 1 on the scored text
    for i, (ids, start) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        target_mask[i, start: len(ids)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
            "target_mask": target_mask.to(device)}


__all__ = ["EXPO_STATE_FILE", "ExpoGRPOTrainer", "NLLTerm"]
