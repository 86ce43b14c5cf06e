"""train_arm end to end on a tiny model: outputs, bad configs, learning where GRPO cannot, kill and resume."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from expo.artifacts import card_path, read_card
from expo.errors import ConfigError, DataError
from expo.io import read_jsonl
from expo.modeling import load_tokenizer
from expo.prompts import solve_prompt
from expo.train import train_arm
from trainkit import boxed_reward, make_folders, small_config, zero_reward


def test_outputs_metrics_and_model_folder(tmp_path: Path) -> None:
    f = make_folders(tmp_path)
    cfg = small_config(steps=2, expo_beta=0.1)
    summary = train_arm("exp-grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out",
                        reward_fn=zero_reward)
    lines = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [row["step"] for row in lines] == [1, 2]
    for row in lines:
        for key in ("grpo_loss", "expo_term", "total_loss", "reward_mean", "frac_reward_zero_std",
                    "explanations_used", "expo/tokens", "expo/too_long", "acceptance", "lr", "tokens_per_s", "time/generation", "time/reward",
                    "time/logprobs", "time/backward", "time/expo_nll", "time/explain_regen"):
            assert key in row, key
        assert row["frac_reward_zero_std"] == 1.0 and row["grpo_loss"] == 0.0
        assert row["expo_term"] == pytest.approx(0.1 * row["expo_nll"], rel=1e-5)
        assert row["explanations_used"] == 2.0 and row["acceptance"] == 1.0
        assert row["expo/tokens"] > 2 and row["expo/too_long"] == 0.0  # two texts, each with its EOS
        assert row["time/generation"] > 0 and row["time/backward"] > 0
    assert summary["steps"] == 2 and summary["final_metrics"]["step"] == 2
    card = read_card(tmp_path / "out" / "model")
    assert card["arm"] == "exp-grpo" and card["expo_beta"] == 0.1 and card["parent"] == str(f["model"])
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    assert load_tokenizer(tmp_path / "out" / "model")("1+1=")["input_ids"]


@pytest.mark.parametrize("arm,change,error,words", [
    ("exp-grpo", {"expo_beta": -0.1}, ConfigError, "train.expo_beta"),
    ("grpo", {"num_generations": 1}, ConfigError, "train.num_generations"),
    ("ppo", {}, ConfigError, "unknown arm 'ppo'"),
    ("exp-grpo", {"expo_beta_schedule": "exponential"}, ConfigError, "expo_beta_schedule"),
    ("exp-grpo", {"no_explanations": True}, ConfigError, "needs self-explanations"),
    ("exp-grpo", {"none_accepted": True}, ConfigError, "no accepted explanation"),
    ("grpo-sft", {"no_solutions": True}, DataError, "no row .* has a 'solution'"),
])
def test_bad_configs_fail_before_any_work(tmp_path: Path, arm: str, change: dict[str, Any], error: type,
                                          words: str) -> None:
    f = make_folders(tmp_path, solutions=not change.pop("no_solutions", False),
                     accepted=not change.pop("none_accepted", False))
    explanations = None if change.pop("no_explanations", False) else f["explanations"]
    cfg = small_config(**change)
    with pytest.raises(error, match=words):
        train_arm(arm, cfg, f["data"], f["model"], explanations, tmp_path / "out", reward_fn=zero_reward)
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_trained_model(tmp_path: Path) -> None:
    f = make_folders(tmp_path)
    (tmp_path / "out" / "model").mkdir(parents=True)
    card_path(tmp_path / "out" / "model").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a trained model"):
        train_arm("grpo", small_config(), f["data"], f["model"], None, tmp_path / "out", reward_fn=zero_reward)


def gold_logprob(model_dir: Path, question: str, answer: str) -> float:
    """log p("\\boxed{answer}" | solve prompt) under the model in `model_dir`."""
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = tok(solve_prompt(question, tok, small_config().prompts))["input_ids"]
    target = tok(f"\\boxed{{{answer}}}", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
    return float(logps[len(prompt) - 1:].gather(-1, ids[0, len(prompt):, None]).sum())


@pytest.mark.slow
def test_expo_learns_the_hard_question_grpo_cannot(tmp_path: Path) -> None:
    """Random tiny model, boxed reward: every group has zero reward variance, so GRPO's update is exactly
    zero and its model is unchanged; ExP-GRPO's NLL falls and p(gold | question) rises."""
    f = make_folders(tmp_path, n=2)
    base = gold_logprob(f["model"], "1+1=", "2")
    results = {}
    for arm in ("grpo", "exp-grpo"):
        cfg = small_config(steps=8, expo_beta=1.0, learning_rate=3e-3)
        summary = train_arm(arm, cfg, f["data"], f["model"], f["explanations"], tmp_path / arm,
                            reward_fn=boxed_reward)
        results[arm] = (summary, read_jsonl(tmp_path / arm / "metrics.jsonl"))
    grpo_rows, expo_rows = results["grpo"][1], results["exp-grpo"][1]
    assert all(row["frac_reward_zero_std"] == 1.0 and row["grad_norm"] == 0.0 for row in grpo_rows)
    assert gold_logprob(tmp_path / "grpo" / "model", "1+1=", "2") == pytest.approx(base, abs=1e-5)
    assert expo_rows[-1]["expo_nll"] < expo_rows[0]["expo_nll"] - 0.5
    assert gold_logprob(tmp_path / "exp-grpo" / "model", "1+1=", "2") > base + 3.0


class KillAt(TrainerCallback):
    """Simulates a crash in the middle of step `step` (after earlier checkpoints were written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step + 1 == self.step:
            raise KeyboardInterrupt("killed")


@pytest.mark.slow
def test_kill_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    f = make_folders(tmp_path)
    cfg = small_config(steps=4, expo_beta=0.5, checkpoint_every=2, learning_rate=1e-3,
                       expo_beta_schedule="linear")
    whole = train_arm("exp-grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "whole",
                      reward_fn=zero_reward)
    with pytest.raises(KeyboardInterrupt):
        train_arm("exp-grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "cut",
                  reward_fn=zero_reward, callbacks=[KillAt(4)], checkpoint_dir=tmp_path / "ckpt")
    assert [r["step"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl")] == [1, 2, 3]
    # The retry gets a fresh output folder (as a KFP retry does) and the same checkpoint folder.
    resumed = train_arm("exp-grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "retry",
                        reward_fn=zero_reward, checkpoint_dir=tmp_path / "ckpt")
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["steps"] == whole["steps"] == 4
    rows = read_jsonl(tmp_path / "retry" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # 1-2 from the checkpoint; 3 lost with the kill, redone
    want = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    assert [r["expo_weight"] for r in rows] == [r["expo_weight"] for r in want]  # the schedule continued
    assert rows[-1]["expo_weight"] == 0.0  # linear decay: the last trained step's weight is exactly 0
    assert rows[-2]["expo_nll"] == pytest.approx(want[-2]["expo_nll"], rel=1e-4)
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "retry" / "model" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_one_step_at_lr_1e6_moves_the_fp32_master_weights(tmp_path: Path) -> None:
    """A bf16 recipe trains fp32 master weights: one AdamW step at lr 1e-6 (a change of ~1e-6 per
    weight) moves nearly every weight that has a gradient. In bf16 (8 bits of mantissa: a step of
    ~1e-4 near 0.02) almost none of those changes survive, which is what pure-bf16 training did.
    The checkpoint holds the masters (a resume continues from them)."""
    f = make_folders(tmp_path)
    cfg = small_config(steps=1, expo_beta=1.0, learning_rate=1e-6, checkpoint_every=1)
    cfg.model.dtype = "bfloat16"
    train_arm("exp-grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out",
              reward_fn=zero_reward)
    base = load_file(f["model"] / "model.safetensors")
    tuned = load_file(tmp_path / "out" / "checkpoints" / "checkpoint-1" / "model.safetensors")
    assert {t.dtype for t in tuned.values()} == {torch.float32}
    moved = sum(int((base[k] != tuned[k]).sum()) for k in base)
    total = sum(t.numel() for t in base.values())
    assert moved / total > 0.9, f"only {moved} of {total} weights changed"  # measured: all of them
    bf16_moved = sum(int((base[k].bfloat16() != tuned[k].bfloat16()).sum()) for k in base)
    assert bf16_moved / total < 0.1  # the same step at bf16 resolution: ~5 % survive (measured)


def stored_dtypes(path: Path) -> set[str]:
    """The dtypes a safetensors file stores, read from its header (no tensor is loaded)."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    return {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}


def test_a_bf16_recipe_saves_registers_and_serves_bf16(tmp_path: Path, sqlite_store: str,
                                                       no_tracking_env: None) -> None:
    """model.dtype bfloat16: fp32 master weights train, the saved model is bf16 (half the bytes; what
    it computes in), its card says so, and it loads back as bf16 from the folder and, registered, from
    MLflow's transformers flavor, and generates."""
    import mlflow

    from expo import registry
    from expo.config import RegisterConfig, TrackingConfig
    from expo.tracking import pipeline_key, stage_run

    f = make_folders(tmp_path)
    cfg = small_config(steps=1, expo_beta=1.0, checkpoint_every=1)
    cfg.model.dtype = "bfloat16"
    train_arm("exp-grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out", reward_fn=zero_reward)
    final = tmp_path / "out" / "model"
    assert stored_dtypes(final / "model.safetensors") == {"BF16"}
    assert stored_dtypes(tmp_path / "out" / "checkpoints" / "checkpoint-1" / "model.safetensors") == {"F32"}
    assert read_card(final)["dtype"] == "bfloat16"
    masters = load_file(tmp_path / "out" / "checkpoints" / "checkpoint-1" / "model.safetensors")
    saved = load_file(final / "model.safetensors")
    assert all(torch.equal(saved[k], masters[k].bfloat16()) for k in saved)  # the masters, rounded once
    assert AutoModelForCausalLM.from_pretrained(final).dtype == torch.bfloat16

    track = TrackingConfig(tracking_uri=sqlite_store)
    with stage_run(pipeline_key({"exp": "bf16"}), "register", track) as run:
        pass
    info = registry.log_and_register(final, "expo-bf16", RegisterConfig(), {}, {}, run.run_id, tracking=track)
    mlflow.set_tracking_uri(sqlite_store)
    mlflow.set_registry_uri(sqlite_store)
    pipe = mlflow.transformers.load_model(info.uri)
    assert pipe.model.dtype == torch.bfloat16
    out = pipe("1+1=", max_new_tokens=4, do_sample=False)
    assert isinstance(out[0]["generated_text"], str)


def test_micro_batched_run_is_the_same_step(tmp_path: Path) -> None:
    """Micro-batches of 2 rollouts (4 forward/backward passes per step) still make one optimizer step
    per configured step, and the first step's NLL (same weights, same explanations) is the same."""
    f = make_folders(tmp_path)
    runs = {}
    for micro in (None, 2):
        cfg = small_config(steps=2, expo_beta=0.5, rollouts_per_micro_batch=micro)
        summary = train_arm("exp-grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / str(micro),
                            reward_fn=zero_reward)
        runs[micro] = (summary, read_jsonl(tmp_path / str(micro) / "metrics.jsonl"))
    whole, split = runs[None][1], runs[2][1]
    assert [r["step"] for r in split] == [1, 2] and runs[2][0]["steps"] == 2
    assert split[0]["expo_nll"] == pytest.approx(whole[0]["expo_nll"], rel=1e-5)
    assert split[0]["explanations_used"] == whole[0]["explanations_used"] == 2.0


def test_lora_with_gradient_checkpointing_saves_merged_weights(tmp_path: Path) -> None:
    f = make_folders(tmp_path)
    cfg = small_config(steps=2, expo_beta=1.0, lora=True, lora_r=4, learning_rate=1e-2,
                       gradient_checkpointing=True)
    train_arm("exp-grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out", reward_fn=zero_reward)
    base = load_file(f["model"] / "model.safetensors")
    tuned = load_file(tmp_path / "out" / "model" / "model.safetensors")
    assert set(tuned) == set(base)  # plain weights, adapter merged: evaluation loads it like any model
    assert not (tmp_path / "out" / "model" / "adapter_config.json").exists()
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert any("q_proj" in k for k in changed)  # LoRA touched the linear layers ...
    assert all("norm" not in k for k in changed)  # ... and nothing else


def test_cli_trains_and_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from expo.cli import main

    f = make_folders(tmp_path)
    args = ["train", "--arm", "grpo", "--data", str(f["data"]), "--model", str(f["model"]),
            "--output", str(tmp_path / "out"), "--set", "train.steps=1", "--set", "train.prompts_per_step=2",
            "--set", "train.num_generations=2", "--set", "generation.max_new_tokens=4"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "out" / "model")
    assert main(args[:-2] + ["--set", "train.expo_beta=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.expo_beta" in err[0]


def test_grpo_sft_scores_reference_solutions_with_constant_weight(tmp_path: Path) -> None:
    f = make_folders(tmp_path)
    cfg = small_config(steps=2, sft_beta=0.2, expo_beta_schedule="linear")  # the schedule is ExPO's only
    train_arm("grpo-sft", cfg, f["data"], f["model"], None, tmp_path / "out", reward_fn=zero_reward)
    lines = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [r["expo_weight"] for r in lines] == [0.2, 0.2]
    assert all(r["explanations_used"] == 2.0 and r["expo_term"] > 0 for r in lines)
    assert "acceptance" not in lines[0]  # no explanation buffer in this arm
