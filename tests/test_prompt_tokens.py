"""One token sequence per prompt: every path conditions on the same ids for the same question.

A Llama-3-style chat template writes `<|begin_of_text|>` into the rendered text, and TRL tokenizes text
prompts with special tokens on, which adds it again: rollouts, the ExPO NLL and the DPO pairs would see
[BOS, BOS, ...] while sampling, evaluation and the in-distribution check see one BOS.
Here the ids of one question's solve prompt are collected from each path, through the real seams (a
tiny model with the tokenizer's vocabulary, hidden 16), and compared with the chat template's own
tokenization, for the real SmolLM2 tokenizer (ChatML, adds no BOS) and a Llama-3-style one:
(a) the hf generation backend (explanation sampling, DPO's rejected solutions), (b) TRL's GRPO rollout
prompts from the trainer's data set, (c) the ExPO NLL batch's conditioning, (d) TRL's DPO tokenization
of our pairs, (e) `evaluate_model`, (f) the in-distribution check.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from expo.config import ExpoConfig, GenerationConfig, PromptConfig
from expo.generation.hf import HFGenerator
from expo.io import write_jsonl
from expo.prompts import explain_content, explain_prompt, solve_content, solve_prompt
from expo.scratch_models import tiny_qwen2

QUESTION = "What is 2+3?"
ANSWER = "5"
EXPLANATION = "2 plus 3 is 5, so the answer is \\boxed{5}."
WRONG = "The answer is \\boxed{6}."
ROW = {"id": "q0", "question": QUESTION, "answer": ANSWER, "level": 1, "solution": "2+3=5. \\boxed{5}"}
ACCEPTED = {**ROW, "explanation": EXPLANATION, "accepted": True}  # its explanation record
TOKENIZERS = ["smollm2_tokenizer", "llama3_tokenizer"]


@pytest.fixture(params=TOKENIZERS)
def tok(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


def template_ids(tok: Any, content: str) -> list[int]:
    """The chat template's own tokenization of one user turn with the assistant header: the ids the
    model was trained to answer from (one BOS where the template has one)."""
    out = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=True,
                                  add_generation_prompt=True, return_dict=True)
    return list(out["input_ids"])


def tiny_model(tok: Any) -> Any:
    return tiny_qwen2(tok, hidden=16, layers=1, heads=2, max_positions=512).float()


def record_generate(model: Any) -> list[list[int]]:
    """Wrap `model.generate` to record the unpadded prompt ids of every row it is given."""
    seen: list[list[int]] = []
    real = model.generate

    def generate(*args: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: Any) -> Any:
        seen.extend(ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask))
        return real(*args, input_ids=input_ids, attention_mask=attention_mask, **kw)

    model.generate = generate
    return seen


def small_cfg() -> ExpoConfig:
    cfg = ExpoConfig()
    cfg.train.steps, cfg.train.prompts_per_step, cfg.train.num_generations = 1, 1, 2
    cfg.train.expo_beta, cfg.explain.mode = 0.1, "offline"
    cfg.generation.max_new_tokens = 3
    cfg.explain.max_new_tokens = 64  # the explanation is scored whole: its budget fits it
    cfg.evaluate.samples, cfg.evaluate.greedy = 1, False
    return cfg


# ---------------------------------------------------------------------------------------------
# The definition itself.


def test_tokenizer_fixtures_are_the_two_kinds(smollm2_tokenizer: Any, llama3_tokenizer: Any) -> None:
    from expo.prompts import tokenizer_adds_bos

    assert not tokenizer_adds_bos(smollm2_tokenizer)  # ChatML: <|im_start|> comes from the template only
    assert tokenizer_adds_bos(llama3_tokenizer)
    naive = llama3_tokenizer(llama3_tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True))["input_ids"]
    assert naive[:2] == [llama3_tokenizer.bos_token_id] * 2  # the defect, as TRL would have tokenized it


def test_prompt_text_round_trips_to_the_template_ids(tok: Any) -> None:
    from expo.prompts import prompt_ids

    cfg = PromptConfig()
    text = solve_prompt(QUESTION, tok, cfg)
    expected = template_ids(tok, solve_content(QUESTION, cfg))
    assert tok(text)["input_ids"] == expected  # TRL's own call on our text
    assert prompt_ids(text, tok) == expected
    # A text that still carries the template's BOS gets it once, not twice.
    rendered = tok.apply_chat_template([{"role": "user", "content": solve_content(QUESTION, cfg)}],
                                       tokenize=False, add_generation_prompt=True)
    assert prompt_ids(rendered, tok) == expected


# ---------------------------------------------------------------------------------------------
# Every path, through its real seam.


def grpo_paths(tok: Any, tmp_path: Path, cfg: ExpoConfig) -> dict[str, list[int]]:
    """(b) the rollout prompt ids TRL tokenized from the trainer's data set, (c) the NLL conditioning."""
    from expo.train.grpo_training import build_trainer

    write_jsonl(tmp_path / "expl" / "explanations.jsonl", [ACCEPTED])

    def reward(completions: list[str], **kw: Any) -> list[float]:
        return [0.0] * len(completions)

    trainer = build_trainer("exp-grpo", cfg, [ROW], tiny_model(tok), tok, False, tmp_path / "expl",
                            tmp_path / "ckpt", reward, None, [])
    batch = [trainer.train_dataset[0]] * cfg.train.num_generations
    inputs = trainer._generate_and_score_completions(batch)
    rollout = inputs["prompt_ids"][0][inputs["prompt_mask"][0].bool()].tolist()
    return {"grpo_rollout": rollout, "expo_nll": nll_prompt_ids(trainer)}


def nll_prompt_ids(trainer: Any) -> list[int]:
    """The conditioning of the step's first NLL row, as the trainer built it for compute_loss."""
    plan = getattr(trainer, "_nll_plan", None)  # micro-batched NLL: (prompt ids, text ids) rows
    if plan is not None:
        return list(next(rows for rows in plan.chunks if rows)[0][0])
    batch = trainer._nll_batch  # one padded batch with a target mask (before the micro-batched NLL)
    return batch["input_ids"][0, : int(batch["target_mask"][0].nonzero()[0])].tolist()


def dpo_path(tok: Any, tmp_path: Path, cfg: ExpoConfig) -> tuple[list[int], dict[str, Any]]:
    """(d) the prompt ids TRL's DPOTrainer computes from our pair, and the tokenized example."""
    from datasets import Dataset
    from trl import DPOTrainer

    from expo.train.dpo import build_pairs, dpo_args

    def reward(completions: list[str], golds: list[str]) -> list[float]:
        return [1.0 if c == EXPLANATION else 0.0 for c in completions]

    pairs = build_pairs([ROW], {"q0": EXPLANATION}.get, [[WRONG]], reward, tok, cfg)
    model = tiny_model(tok)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), train_dataset=dataset, processing_class=tok,
                         args=dpo_args(cfg, tmp_path / "dpo", 1, False))
    example = trainer.train_dataset[0]
    return list(example["prompt_ids"]), example


def evaluate_path(tok: Any, tmp_path: Path, cfg: ExpoConfig, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """(e) `evaluate_model` from a saved folder: the ids its generator hands `generate`."""
    import expo.verify
    from expo.evaluate import evaluate_model

    model = tiny_model(tok)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    write_jsonl(tmp_path / "data" / "eval.jsonl", [ROW])
    seen: list[list[int]] = []
    real = HFGenerator._generate_batch

    def spy(self: Any, batch: list[list[int]], *args: Any) -> Any:
        seen.extend(batch)
        return real(self, batch, *args)

    monkeypatch.setattr(HFGenerator, "_generate_batch", spy)
    monkeypatch.setattr(expo.verify, "rewards", lambda completions, golds: [0.0] * len(completions))
    evaluate_model(str(tmp_path / "model"), tmp_path / "data", cfg, tmp_path / "eval")
    assert len(seen) == 1
    return seen[0]


def in_distribution_path(tok: Any, cfg: ExpoConfig) -> list[int]:
    """(f) the prompt part of the sequences the in-distribution check scores."""
    from expo.evaluate import in_distribution_check

    model = tiny_model(tok)
    fed: list[list[int]] = []  # the unpadded sequences of every forward pass

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"]):
            fed.append(ids[mask.bool()].tolist())

    model.register_forward_pre_hook(hook, with_kwargs=True)
    in_distribution_check(model, tok, [ROW], [ACCEPTED], cfg.prompts)
    texts = [EXPLANATION, ROW["solution"]]  # the order the check scores them in
    assert len(fed) == 2
    prompts = [ids[: len(ids) - len(tok(t, add_special_tokens=False)["input_ids"])]
               for ids, t in zip(fed, texts, strict=True)]
    assert prompts[0] == prompts[1]
    return prompts[0]


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_every_path_sees_the_same_prompt_ids(tok_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(tok_name)
    cfg = small_cfg()
    expected = template_ids(tok, solve_content(QUESTION, cfg.prompts))
    model = tiny_model(tok)
    seen = record_generate(model)
    generator = HFGenerator(model, tok, GenerationConfig(max_new_tokens=2))
    generator.generate([solve_prompt(QUESTION, tok, cfg.prompts)], n=1, temperature=0.0)
    paths = {"generation": seen[0], **grpo_paths(tok, tmp_path, cfg)}
    paths["dpo"], example = dpo_path(tok, tmp_path, cfg)
    paths["evaluate"] = evaluate_path(tok, tmp_path, cfg, monkeypatch)
    paths["in_distribution"] = in_distribution_path(tok, cfg)
    assert {name: ids for name, ids in paths.items() if ids != expected} == {}
    bos = tok.bos_token_id
    if tok_name == "llama3_tokenizer":  # BOS in the template and added by the tokenizer: exactly one
        assert expected[0] == bos and expected.count(bos) == 1
    else:  # ChatML: the template's <|im_start|> (= bos) opens the text once, never twice in a row
        assert expected[0] == bos and expected[1] != bos
    # DPO's chosen and rejected end with exactly one EOS, and hold no other.
    for side in ("chosen_ids", "rejected_ids"):
        assert example[side][-1] == tok.eos_token_id and example[side].count(tok.eos_token_id) == 1, side


def test_explanation_prompt_has_one_bos_too(tok: Any) -> None:
    """The hint prompt goes through the same generator encoding: one BOS, hint in the user turn."""
    cfg = PromptConfig()
    model = tiny_model(tok)
    seen = record_generate(model)
    HFGenerator(model, tok, GenerationConfig(max_new_tokens=1)).generate(
        [explain_prompt(QUESTION, ANSWER, tok, cfg)], n=1, temperature=0.0)
    assert seen[0] == template_ids(tok, explain_content(QUESTION, ANSWER, cfg))
    assert seen[0][:2] != [tok.bos_token_id] * 2


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{5}", "so \\boxed{5}<E>"),  # the usual case: one EOS added
    ("so \\boxed{5}<E>", "so \\boxed{5}<E>"),  # already there: kept once
    ("so \\boxed{5}<E><E>\n", "so \\boxed{5}<E>"),  # repeated, then whitespace: one
    ("\n\nso \\boxed{5} \n", "so \\boxed{5}<E>"),  # whitespace around: dropped
])
def test_with_one_eos(text: str, expected: str) -> None:
    from expo.train.dpo import with_one_eos

    assert with_one_eos(text, "<E>") == expected
