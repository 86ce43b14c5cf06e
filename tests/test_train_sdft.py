"""The sdft arm (expo.train.sdft) on tiny models: its loss worked out by hand on a fixed rollout, the
teacher prompt equal to the explanation prompt for both kinds of tokenizer, a real run with its
outputs, kill and resume (with the EMA teacher), and one clear error per bad setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from expo.config import load_config
from expo.errors import ConfigError
from expo.io import read_json, read_jsonl
from expo.modeling import load_tokenizer
from expo.prompts import explain_content, explain_prompt, hint_sentence, prompt_ids, solve_content, solve_prompt
from expo.scratch_models import tiny_qwen2
from expo.train import train_arm
from expo.train.resume import checkpoint_problem
from expo.train.sdft import SDFT_STATE_FILE, build_sdft_trainer
from trainkit import boxed_reward, make_folders, rows, run_torchrun, small_config


def sdft_batch(trainer: Any, tok: Any, cfg: Any, qrows: list[dict[str, Any]], completion: str) -> dict[str, Any]:
    """One micro-batch as the trainer builds it, with a fixed completion for every row instead of a
    sampled one: the student's solve prompt ids and the teacher's (the trainer's own builder)."""
    prompts = [solve_prompt(r["question"], tok, cfg.prompts) for r in qrows]
    hints = [hint_sentence(r["answer"], cfg.prompts) for r in qrows]
    ids = [torch.tensor(p) for p in trainer._tokenize_prompts(prompts)]
    width = max(len(t) for t in ids)
    prompt_ids = torch.stack([torch.cat([t.new_full((width - len(t),), tok.pad_token_id), t]) for t in ids])
    prompt_mask = torch.stack([torch.cat([torch.zeros(width - len(t), dtype=torch.long),
                                          torch.ones(len(t), dtype=torch.long)]) for t in ids])
    comp = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    completion_ids = torch.tensor([comp] * len(qrows))
    completion_mask = torch.ones_like(completion_ids)
    teacher = trainer.teacher_context_builder.build(prompts, hints, completion_ids, completion_mask)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, **teacher}


def completion_logits(model: Any, prefix: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """Logits predicting each completion token after `prefix`, one unpadded sequence: (T, V)."""
    ids = torch.tensor([prefix + completion])
    logits = model(input_ids=ids).logits[0, len(prefix) - 1:-1].double()  # (T, V)
    return logits / temperature


def divergence_by_hand(student: torch.Tensor, teacher: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per token: alpha 0 KL(teacher || student), 1 KL(student || teacher), else
    (1 - alpha) KL(student || m) + alpha KL(teacher || m) with m = (1 - alpha) student + alpha teacher."""
    ps, pt = student.exp(), teacher.exp()
    if alpha == 0.0:
        return (pt * (teacher - student)).sum(-1)
    if alpha == 1.0:
        return (ps * (student - teacher)).sum(-1)
    m = ((1 - alpha) * ps + alpha * pt).log()
    return (1 - alpha) * (ps * (student - m)).sum(-1) + alpha * (pt * (teacher - m)).sum(-1)


@pytest.mark.parametrize("mode,alpha,topk", [
    ("full_logits", 0.0, 100),  # forward KL over the whole vocabulary
    ("full_logits", 1.0, 100),  # reverse KL
    ("topk_logits", 0.5, 5),  # the default mix on the student's top 5 tokens, renormalised
])
def test_the_loss_of_one_step_by_hand(tmp_path: Path, mode: str, alpha: float, topk: int) -> None:
    """On a fixed rollout ("\\boxed{2}" + EOS for two questions) the trainer's loss is the mean over
    rollouts of the token-mean divergence between the teacher (the initial weights, on the explanation
    prompt) and the student (on the solve prompt), worked out here from the two models' logits."""
    f = make_folders(tmp_path, n=2)
    cfg = small_config(steps=1, sdft_mode=mode, sdft_alpha=alpha, sdft_topk=topk, sdft_teacher="base",
                       prompts_per_step=2, num_generations=2, temperature=0.7)
    tok = load_tokenizer(f["model"])
    model = AutoModelForCausalLM.from_pretrained(f["model"]).float()
    trainer = build_sdft_trainer(cfg, rows(2), model, tok, False, tmp_path / "ckpt", boxed_reward, [])
    qrows = rows(2)
    batch = sdft_batch(trainer, tok, cfg, qrows, "\\boxed{2}")
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop: one micro-batch per step here
    loss = trainer.compute_loss(trainer.model, batch)

    reference = AutoModelForCausalLM.from_pretrained(f["model"]).double().eval()  # the teacher's weights
    comp = batch["completion_ids"][0].tolist()
    per_row = []
    with torch.no_grad():
        for r in qrows:
            s = completion_logits(reference, prompt_ids(solve_prompt(r["question"], tok, cfg.prompts), tok), comp, 0.7)
            t = completion_logits(reference, prompt_ids(explain_prompt(r["question"], r["answer"], tok, cfg.prompts),
                                                         tok), comp, 0.7)
            if mode == "topk_logits":
                top = s.topk(topk, dim=-1).indices
                s, t = s.gather(-1, top), t.gather(-1, top)
            per_row.append(divergence_by_hand(s.log_softmax(-1), t.log_softmax(-1), alpha).mean())
    want = torch.stack(per_row).mean()
    assert want.item() > 1e-6  # the two prompts differ, so the distributions do
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)


@pytest.mark.parametrize("tokenizer", ["smollm2_tokenizer", "llama3_tokenizer"])
def test_the_teacher_prompt_is_the_explanation_prompt_token_for_token(tokenizer: str, request: Any,
                                                                      tmp_path: Path) -> None:
    """The teacher conditions on the ids of the explanation prompt (the chat template's own tokenization
    of the solve turn with the hint sentence, one BOS where the template has one), and the student on
    the solve prompt's; a ChatML tokenizer and a Llama-3-style one that adds a BOS itself."""
    tok = request.getfixturevalue(tokenizer)
    cfg = small_config(steps=1, sdft_teacher="live", sdft_topk=5, prompts_per_step=1, num_generations=2)
    model = tiny_qwen2(tok, hidden=16, layers=1, heads=2, max_positions=512).float()
    row = {"id": "q0", "question": "What is 2+3?", "answer": "5"}
    trainer = build_sdft_trainer(cfg, [row], model, tok, False, tmp_path / "ckpt", boxed_reward, [])
    batch = sdft_batch(trainer, tok, cfg, [row], "5")
    n = len(tok("5", add_special_tokens=False)["input_ids"]) + 1
    teacher = batch["teacher_input_ids"][0][batch["teacher_attention_mask"][0].bool()].tolist()[:-n]
    student = batch["prompt_ids"][0][batch["prompt_mask"][0].bool()].tolist()

    def template_ids(content: str) -> list[int]:
        return list(tok.apply_chat_template([{"role": "user", "content": content}], tokenize=True,
                                            add_generation_prompt=True, return_dict=True)["input_ids"])

    assert teacher == template_ids(explain_content(row["question"], "5", cfg.prompts))
    assert teacher == prompt_ids(explain_prompt(row["question"], "5", tok, cfg.prompts), tok)
    assert student == template_ids(solve_content(row["question"], cfg.prompts))
    assert trainer.train_dataset[0]["privileged_context"] == "The correct answer is 5."


class KillAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step + 1 == self.step:
            raise KeyboardInterrupt("killed")


def test_a_real_run_then_kill_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    """Three real steps with the EMA teacher; killed at step 3 after a checkpoint at step 2, a retry in a
    fresh output folder resumes (the teacher's average included) and ends with the same weights."""
    f = make_folders(tmp_path)
    cfg = small_config(steps=3, checkpoint_every=2, learning_rate=1e-2, sdft_teacher="ema",
                       sdft_teacher_update_rate=0.5)
    whole = train_arm("sdft", cfg, f["data"], f["model"], None, tmp_path / "whole", reward_fn=boxed_reward)
    lines = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2, 3] and whole["steps"] == 3
    for row in lines:
        for key in ("loss", "reward_mean", "sdft/distillation_loss", "grad_norm", "time/generation",
                    "time/distillation", "time/step", "tokens_per_s"):
            assert key in row, key
        assert row["loss"] > 0 and row["arm"] == "sdft"
    start = load_file(f["model"] / "model.safetensors")
    end = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    assert any(not torch.equal(start[k], end[k]) for k in start)  # the steps moved the weights

    with pytest.raises(KeyboardInterrupt):
        train_arm("sdft", cfg, f["data"], f["model"], None, tmp_path / "cut", reward_fn=boxed_reward,
                  callbacks=[KillAt(3)], checkpoint_dir=tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "checkpoint-2" / "teacher.safetensors").is_file()
    resumed = train_arm("sdft", cfg, f["data"], f["model"], None, tmp_path / "retry", reward_fn=boxed_reward,
                        checkpoint_dir=tmp_path / "ckpt")
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 3
    rows_ = read_jsonl(tmp_path / "retry" / "metrics.jsonl")
    assert [r["step"] for r in rows_] == [1, 2, 3]
    assert rows_[-1]["loss"] == pytest.approx(lines[-1]["loss"], rel=1e-4)  # same teacher, same data
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "retry" / "model" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("setting,words", [
    ("train.sdft_teacher=frozen", "train.sdft_teacher': 'frozen' is not one of 'base', 'live', 'ema'"),
    ("train.sdft_mode=kl", "train.sdft_mode': 'kl' is not one of"),
    ("train.sdft_alpha=1.5", "train.sdft_alpha': must be in \\[0, 1\\]"),
    ("train.sdft_topk=0", "train.sdft_topk': must be positive"),
    ("train.sdft_teacher_update_rate=0", "train.sdft_teacher_update_rate': must be in \\(0, 1\\]"),
    ("train.sdft_mode=sampled_token", "train.sdft_alpha': .*reverse KL only"),  # alpha 0.5 with it
])
def test_each_bad_setting_is_one_error_naming_its_key(setting: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(None, [setting])


def test_a_top_k_wider_than_the_vocabulary_is_the_whole_vocabulary(tmp_path: Path) -> None:
    """The default top 100 on a 104-token model is kept; 1000 becomes 104, so the default runs on the
    embedded task's ~50-token model too (where top-k over everything is full_logits' divergence)."""
    f = make_folders(tmp_path, n=2)
    tok = load_tokenizer(f["model"])
    for asked, used in ((100, 100), (1000, 104)):
        cfg = small_config(steps=1, sdft_topk=asked)
        model = AutoModelForCausalLM.from_pretrained(f["model"]).float()
        trainer = build_sdft_trainer(cfg, rows(2), model, tok, False, tmp_path / "ckpt", boxed_reward, [])
        assert trainer.args.distillation_topk == used


def _two_processes(root: Path, out: Path, steps: int) -> None:
    run_torchrun("ddp_sdft_worker.py", root, out, steps)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_processes_train_checkpoint_and_resume(tmp_path: Path) -> None:
    """Two real processes (torchrun, gloo) split each step's prompts; a checkpoint is complete only with
    both processes' files (the mark records the world), and a longer run resumes from it."""
    make_folders(tmp_path)
    _two_processes(tmp_path, tmp_path / "first", steps=2)
    checkpoint = tmp_path / "ckpt" / "checkpoint-2"
    assert checkpoint_problem(checkpoint, (SDFT_STATE_FILE,)) is None
    assert read_json(checkpoint / SDFT_STATE_FILE)["world"] == 2
    assert (checkpoint / "sdft_state-rank1.json").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    (checkpoint / "sdft_state-rank1.json").unlink()  # a process's files missing: not a checkpoint to resume
    assert "sdft_state-rank1.json is missing" in checkpoint_problem(checkpoint, (SDFT_STATE_FILE,))
    _two_processes(tmp_path, tmp_path / "second", steps=3)
    assert Path(read_json(tmp_path / "second" / "summary.json")["resumed_from"]).name == "checkpoint-1"
    assert [row["step"] for row in read_jsonl(tmp_path / "second" / "metrics.jsonl")] == [1, 2, 3]
