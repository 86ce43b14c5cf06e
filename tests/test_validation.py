"""Validation during training (expo.train.validation): a learning curve every train.eval_every steps,
and the checkpoint that is kept as the arm's model (last, or best on the selection metric)."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from expo.artifacts import fingerprint, read_card, write_card
from expo.config import load_config
from expo.errors import ConfigError
from expo.io import read_json, read_jsonl, write_json, write_jsonl
from expo.train import train_arm
from expo.train.validation import _gate_value, curve_rows, select_checkpoint
from tests.trainkit import boxed_reward, make_folders, small_config


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_select_best_replaces_the_weights_and_says_which_step(tmp_path, make_model_dir):
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    last, best = make_model_dir(seed=1), make_model_dir(seed=2)
    for path in last.iterdir():
        if path.is_file():
            (out / "model" / path.name).write_bytes(path.read_bytes())
    (out / "best").mkdir()
    (out / "best" / "model.safetensors").write_bytes((best / "model.safetensors").read_bytes())
    write_json(out / "best" / "step.json", {"step": 2})
    write_jsonl(out / "validation.jsonl", [  # hand-made curve: step 2 is best on the hardest level
        {"step": 1, "levels": {"1": 0.5, "5": 0.1}, "overall": 0.3, "value": 0.1},
        {"step": 2, "levels": {"1": 0.4, "5": 0.3}, "overall": 0.35, "value": 0.3},
        {"step": 3, "levels": {"1": 0.9, "5": 0.2}, "overall": 0.55, "value": 0.2}])
    cfg = load_config(None, ["train.eval_every=1", "train.select_checkpoint=best"])
    selection = select_checkpoint(cfg, out, final_step=3)
    assert selection == {"select": "best", "chosen": "best", "step": 2, "final_step": 3,
                         "metric": "hardest_level_pass@1", "value": 0.3, "validations": 3}
    assert all((_weights(out / "model")[k] == _weights(best)[k]).all() for k in _weights(best))
    card = read_card(out / "model")
    assert (card["selected_step"], card["selected_by"]) == (2, "best")
    assert not (out / "best").exists() and read_json(out / "selection.json") == selection
    assert curve_rows(read_jsonl(out / "validation.jsonl"))[1] == {
        "step": 2, "val/overall/pass_at_1": 0.35, "val/level1/pass_at_1": 0.4, "val/level5/pass_at_1": 0.3}


def test_best_weights_take_the_saved_dtype(tmp_path, make_model_dir):
    """best/ holds fp32 master weights saved mid-training; once chosen they are stored in the dtype the
    final model was saved in (the card's), config.json says so, and the folder loads as bf16."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    best = make_model_dir(seed=3)
    (out / "best").mkdir()
    for path in best.iterdir():
        if path.is_file():
            (out / "model" / path.name).write_bytes(path.read_bytes())
            if path.name != "expo_model.json":  # what Validator saves: weights and config, no card
                (out / "best" / path.name).write_bytes(path.read_bytes())
    write_json(out / "best" / "step.json", {"step": 2})
    card = read_card(out / "model")
    write_card(out / "model", {**card, "dtype": "bfloat16"})
    write_jsonl(out / "validation.jsonl", [{"step": 2, "levels": {"5": 0.3}, "overall": 0.3, "value": 0.3}])
    select_checkpoint(load_config(None, ["train.eval_every=1", "train.select_checkpoint=best"]), out, 3)
    masters = _weights(best)
    stored = _weights(out / "model")
    assert {t.dtype for t in masters.values()} == {torch.float32}
    assert all(torch.equal(stored[k], masters[k].bfloat16()) for k in masters)
    assert read_json(out / "model" / "config.json")["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out / "model").dtype == torch.bfloat16
    assert read_card(out / "model")["fingerprint"] == fingerprint(out / "model")


@pytest.mark.parametrize("levels, overall, metric, expected", [
    ({"1": 0.5, "10": 0.25, "2": 0.75}, 0.5, "hardest_level_pass@1", 0.25),  # level 10 by number, not text
    ({"1": 0.5, "5": 0.1}, 0.3, "overall_pass@1", 0.3),
    ({}, 0.3, "hardest_level_pass@1", None),  # no level: no hardest level
    ({"1": 0.5}, 0.3, "overall_pass@8", None),  # a validation point holds pass@1 only
])
def test_gate_value_of_a_validation_point(levels, overall, metric, expected):
    value = _gate_value(levels, overall, metric)
    assert value != value if expected is None else value == expected  # None: NaN


def test_best_needs_validation():
    with pytest.raises(ConfigError, match="train.select_checkpoint"):
        load_config(None, ["train.select_checkpoint=best"])


@pytest.mark.slow
def test_training_validates_every_step_and_keeps_the_chosen_checkpoint(tmp_path: Path) -> None:
    """A real 3-step run validating every 2 steps (and at the last): points at steps 2 and 3, by level;
    with select best the model folder holds the weights of the step the curve says is best."""
    f = make_folders(tmp_path, n=4)
    write_jsonl(f["data"] / "eval.jsonl", read_jsonl(f["data"] / "train.jsonl"))  # a validation split
    cfg = small_config(steps=3, eval_every=2, eval_questions=4, eval_samples=1, select_checkpoint="best",
                       checkpoint_every=1)
    summary = train_arm("grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out",
                        reward_fn=boxed_reward)
    curve = read_jsonl(tmp_path / "out" / "validation.jsonl")
    assert [p["step"] for p in curve] == [2, 3] and all(set(p["levels"]) == {"5"} for p in curve)
    assert all(p["value"] == p["levels"]["5"] for p in curve)  # hardest level's pass@1
    best = max(curve, key=lambda p: (p["value"], p["step"]))  # ties: the later step
    selection = summary["selection"]
    assert selection["step"] == best["step"] and selection["validations"] == 2
    chosen = _weights(tmp_path / "out" / "checkpoints" / f"checkpoint-{best['step']}")
    model = _weights(tmp_path / "out" / "model")
    assert all((model[k] == chosen[k]).all() for k in chosen)
