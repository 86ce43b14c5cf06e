"""The sdft arm: answer-conditioned self-distillation on TRL 1.16's `SDFTTrainer` (arXiv 2601.19897).

The student is the policy on the plain solve prompt; the teacher is the same model (its initial, live or
EMA weights: `train.sdft_teacher`) on the explanation prompt, the solve prompt plus the hint sentence of
`prompts.hint_template`. The privileged context is exactly that sentence, so the teacher conditions on
the very prompt the explanations stage samples ExPO's self-explanations from, token for token
(`ExplanationPromptTeacher`). Each step the student samples G rollouts per question (the same
`prompts_per_step x num_generations` budget, split over processes and micro-batches as the GRPO arms'
`batch_plan`), and is trained towards the teacher's token distribution on those rollouts:

    L = mean over rollouts of ( token-mean over the rollout of D_alpha(teacher_t || student_t) )

D_alpha is TRL's divergence: alpha 0 forward KL, 1 reverse KL, between the generalised Jensen-Shannon
mix; on the student's top-k tokens renormalised (`topk_logits`), the whole vocabulary (`full_logits`),
or the sampled token only (`sampled_token`, reverse KL). It is ExP-GRPO's cousin: ExPO trains on a whole
sequence the model wrote given the answer; SDFT trains every token the model wrote without it towards
what the model would say given it. No reward enters the loss; the verifier still scores each rollout
for the logs (`reward`), so the arm's curve reads like the others'.

What every arm has, here too: metrics.jsonl and MLflow lines (MetricsWriter), progress lines
(StepProgress), validation (expo.train.validation), checkpoints every `train.checkpoint_every` steps with
the EMA teacher's weights (`teacher.safetensors`: a resumed run continues the same average) and a
`sdft_state.json` written last (the checkpoint's completeness mark), resume from the newest intact one,
the final model folder and summary (expo.train.final_model).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PrinterCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

# TRL warns on every import from trl.experimental; the pin (trl==1.16) is this module's answer to it.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
from trl.experimental.sdft import SDFTConfig, SDFTTrainer  # noqa: E402
from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder  # noqa: E402

from expo.config import ExpoConfig
from expo.errors import ExpoError
from expo.generation.trl_rollouts import rollout_args, shared_engine_rollouts
from expo.io import write_json
from expo.prompts import explain_prompt, hint_sentence, solve_prompt
from expo.train.final_model import save_final_model
from expo.train.grpo import _EpochSeededRepeatSampler, _StepClock
from expo.train.grpo_training import batch_plan
from expo.train.metrics_jsonl import MetricsWriter
from expo.train.policy import load_policy, lora_config, mixed_precision
from expo.train.progress import StepProgress
from expo.train.distributed import world_size
from expo.train.resume import latest_valid_checkpoint, rank_file
from expo.train.rewards import RewardFn
from expo.train.timing import PhaseTimer

SDFT_STATE_FILE = "sdft_state.json"  # written last: a checkpoint without it was cut mid-save
TEACHER_FILE = "teacher.safetensors"  # the EMA teacher's weights (sdft_teacher: ema)


def sdft_args(cfg: ExpoConfig, checkpoint_dir: Path, on_gpu: bool, world: int | None = None) -> SDFTConfig:
    """Our train section in SDFTConfig's terms: the GRPO arms' batch split, optimizer and checkpoints,
    plus the teacher and divergence keys."""
    tc = cfg.train
    plan = batch_plan(tc, world if world is not None else world_size())
    precision = mixed_precision(cfg.model.dtype, on_gpu, on_gpu and torch.cuda.is_bf16_supported())
    # The GRPO arms' vLLM settings, less the one SDFTConfig lacks (TRL's SDFT trainer has no IS correction).
    vllm = {k: v for k, v in rollout_args(cfg).items() if k in {f.name for f in dataclasses.fields(SDFTConfig)}}
    return SDFTConfig(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=plan.micro,
        gradient_accumulation_steps=plan.accumulation,
        steps_per_generation=plan.accumulation,  # the step's rollouts sampled once, then split
        num_generations=tc.num_generations,
        max_completion_length=cfg.generation.max_new_tokens,
        max_prompt_length=None,  # never cut a prompt: the teacher's must stay the explanation prompt
        temperature=tc.temperature,
        top_p=cfg.generation.top_p,
        learning_rate=tc.learning_rate,
        lr_scheduler_type="constant",
        max_grad_norm=tc.max_grad_norm,
        max_steps=tc.steps,
        weight_decay=tc.weight_decay,
        teacher_model_kind=tc.sdft_teacher,
        teacher_update_rate=tc.sdft_teacher_update_rate,
        distillation_mode=tc.sdft_mode,
        distillation_topk=tc.sdft_topk,
        distillation_alpha=tc.sdft_alpha,
        seed=tc.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=tc.checkpoint_every,
        save_total_limit=3,
        report_to=[],
        use_cpu=not on_gpu,
        **precision,
        gradient_checkpointing=tc.gradient_checkpointing,
        disable_tqdm=True,
        **vllm,
    )


def teacher_prompts(rows: list[dict[str, Any]], tokenizer: Any, cfg: ExpoConfig) -> dict[tuple[str, str], str]:
    """(solve prompt, hint sentence) -> explanation prompt, for every training row."""
    return {(solve_prompt(r["question"], tokenizer, cfg.prompts), hint_sentence(str(r["answer"]), cfg.prompts)):
            explain_prompt(r["question"], str(r["answer"]), tokenizer, cfg.prompts) for r in rows}


class ExplanationPromptTeacher(DemonstrationTeacherContextBuilder):
    """The teacher prompt is the explanation prompt of expo.prompts, not TRL's `{prompt}\\n\\n{context}`.

    TRL composes the teacher prompt from the student's and the privileged context by a template; on a
    rendered chat prompt that would put the context after the assistant header. Here the pair (solve
    prompt, hint sentence) maps to `explain_prompt(question, answer)`: the hint inside the user turn,
    where `prompts.hint_position` puts it, rendered by the same chat template."""

    def __init__(self, trainer: Any, prompts: dict[tuple[str, str], str]) -> None:
        super().__init__(trainer)
        self.prompts = prompts

    def _compose_teacher_prompt(self, prompt: Any, privileged_context: Any) -> Any:
        try:
            return self.prompts[(prompt, privileged_context)]
        except KeyError:
            raise ExpoError("sdft: a rollout's prompt and hint are not a training question's solve prompt and "
                            "hint sentence") from None


class ExpoSDFTTrainer(SDFTTrainer):
    """SDFTTrainer + the explanation prompt as the teacher's, verifier rewards and timings in the logs,
    a resumable data order, and the EMA teacher in every checkpoint."""

    def __init__(self, *args: Any, teacher_prompts: dict[tuple[str, str], str], reward_fn: RewardFn,
                 metrics_writer: MetricsWriter | None = None, **kwargs: Any) -> None:
        self.reward_fn = reward_fn
        self.metrics_writer = metrics_writer
        self.timer = PhaseTimer()
        self._clock = _StepClock()
        self._step_tokens = 0
        with shared_engine_rollouts():  # a colocated vLLM engine is the process's one engine
            super().__init__(*args, **kwargs)
        self.teacher_context_builder = ExplanationPromptTeacher(self, teacher_prompts)
        self.add_callback(self._clock)

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        """Reseeded from (seed, epoch) at each epoch, as the GRPO arms' (a resumed run draws the same)."""
        sampler = super()._get_train_sampler(dataset)
        sampler.__class__ = _EpochSeededRepeatSampler
        return sampler

    def sample_rollouts(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's rollouts, timed and scored by the verifier (for the logs only: no reward in the loss)."""
        with self.timer.phase("generation"):
            batch = super().sample_rollouts(inputs)
        with self.timer.phase("reward"):
            texts = self.processing_class.batch_decode(batch["completion_ids"], skip_special_tokens=True)
            rewards = self.reward_fn(texts, answer=[x["answer"] for x in inputs], id=[x["id"] for x in inputs])
        scored = torch.tensor([float("nan") if r is None else float(r) for r in rewards],
                              device=self.accelerator.device)
        everyone = self.accelerator.gather(scored)
        G = self.num_generations
        per_group = everyone.view(-1, G)
        self._metrics["train"]["reward"].append(everyone.nanmean().item())
        self._metrics["train"]["solved_groups"].append(float((per_group.nan_to_num(0.0).max(dim=1).values > 0)
                                                             .float().sum().item()))
        self._step_tokens = int(batch["prompt_mask"].sum() + batch["completion_mask"].sum())
        # the rollouts' prompt and completion tokens over every process, a running total as TRL's GRPO keeps
        seen = self.accelerator.gather(torch.tensor([self._step_tokens], device=self.accelerator.device))
        self.state.num_input_tokens_seen += int(seen.sum().item())
        self._metrics["train"]["num_tokens"] = [float(self.state.num_input_tokens_seen)]
        return batch

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor:
        with self.timer.phase("distillation"):  # the student's forward and the teacher's
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and "loss" in logs:
            logs.update({f"time/{name}": seconds for name, seconds in self.timer.flush().items()})
            logs["time/step"] = self._clock.last_step_s
            logs["tokens_per_s"] = self._step_tokens / self._clock.last_step_s if self._clock.last_step_s else 0.0
        super().log(logs, start_time)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """HF Trainer's checkpoint, the EMA teacher's weights, the metrics so far, then the mark: rank 0
        writes it once every process has written its files (as the GRPO arms do, expo.train.resume)."""
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        state = {"step": self.state.global_step, "teacher": self.args.teacher_model_kind}
        if rank > 0:
            os.makedirs(folder, exist_ok=True)
            write_json(os.path.join(folder, rank_file(SDFT_STATE_FILE, rank)), {**state, "rank": rank})
        if world > 1:
            self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return
        if self.args.teacher_model_kind == "ema" and self.teacher_model is not self.model:
            from safetensors.torch import save_model  # tied embeddings saved once, as save_pretrained does

            save_model(self.accelerator.unwrap_model(self.teacher_model), os.path.join(folder, TEACHER_FILE))
        if self.metrics_writer is not None:
            self.metrics_writer.save_copy(folder)
        write_json(os.path.join(folder, SDFT_STATE_FILE), {**state, "world": world})

    def load_teacher(self, checkpoint: Path) -> None:
        """The EMA teacher as `checkpoint` left it (the base and live teachers need nothing)."""
        path = checkpoint / TEACHER_FILE
        if self.args.teacher_model_kind != "ema" or self.teacher_model is self.model:
            return
        if not path.is_file():
            raise ExpoError(f"checkpoint {checkpoint} has no {TEACHER_FILE}: it was written without an EMA teacher "
                            "(train.sdft_teacher changed since?); resume with the same teacher, or start afresh")
        from safetensors.torch import load_model

        teacher = self.accelerator.unwrap_model(self.teacher_model)
        # where its weights live ("cpu", "cuda:1"): accelerate names a process's CPU "cpu:0", which safetensors refuses
        load_model(teacher, path, device=str(next(teacher.parameters()).device))


def sdft_dataset(rows: list[dict[str, Any]], tokenizer: Any, cfg: ExpoConfig) -> Dataset:
    """The trainer's rows: the solve prompt, its privileged context (the hint sentence), id and answer."""
    return Dataset.from_list([
        {"prompt": solve_prompt(r["question"], tokenizer, cfg.prompts),
         "privileged_context": hint_sentence(str(r["answer"]), cfg.prompts),
         "id": str(r["id"]), "answer": str(r["answer"])} for r in rows])


def build_sdft_trainer(cfg: ExpoConfig, rows: list[dict[str, Any]], model: Any, tokenizer: Any, on_gpu: bool,
                       checkpoint_dir: Path, reward_fn: RewardFn, callbacks: list[Any],
                       metrics_writer: MetricsWriter | None = None) -> ExpoSDFTTrainer:
    vocab = model.get_output_embeddings().weight.shape[0]
    if cfg.train.sdft_topk > vocab:  # a support wider than the vocabulary is the vocabulary (full_logits' sum)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, sdft_topk=vocab))
    trainer = ExpoSDFTTrainer(
        model=model, args=sdft_args(cfg, checkpoint_dir, on_gpu), train_dataset=sdft_dataset(rows, tokenizer, cfg),
        processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=callbacks,
        teacher_prompts=teacher_prompts(rows, tokenizer, cfg), reward_fn=reward_fn, metrics_writer=metrics_writer)
    trainer.remove_callback(PrinterCallback)  # MetricsWriter logs one short line per step instead
    return trainer


def train_sdft(cfg: ExpoConfig, rows: list[dict[str, Any]], model_dir: str | Path, out: Path, *,
               reward_fn: RewardFn, callbacks: list[Any] | None, checkpoint_dir: Path) -> dict[str, Any]:
    """Train the sdft arm (resuming from the newest intact checkpoint) and save it."""
    model, tokenizer, on_gpu = load_policy(model_dir, cfg)
    writer = MetricsWriter(out / "metrics.jsonl", "sdft")
    trainer = build_sdft_trainer(cfg, rows, model, tokenizer, on_gpu, checkpoint_dir, reward_fn,
                                 [writer, StepProgress("sdft"), *(callbacks or [])], metrics_writer=writer)
    resume = latest_valid_checkpoint(checkpoint_dir, extra_files=(SDFT_STATE_FILE,))
    if resume is not None:
        trainer.load_teacher(resume)
    writer.restore(resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    summary = save_final_model("sdft", cfg, trainer.accelerator.unwrap_model(trainer.model),
                               trainer.state.global_step, None, tokenizer, model_dir, out, writer, resume)
    trainer.accelerator.wait_for_everyone()
    return summary


__all__ = ["ExpoSDFTTrainer", "ExplanationPromptTeacher", "SDFT_STATE_FILE", "build_sdft_trainer", "sdft_args",
           "sdft_dataset", "teacher_prompts", "train_sdft"]
