"""TRL's loss types combined with the ExPO term, by hand; dynamic sampling inside the trainer; the
loss config keys (loss settings, per-arm overrides) as TRL receives them.

The policy part is checked on a fixed batch where every number is chosen: 8 rollouts with completion
lengths L = 1, 2, 3, 4, 1, 2, 3, 4 and advantages A = 1, 0, 0, -1, 0, 2, 0, 0. Each batch is used once,
so the importance ratio is exactly 1 and the per-token policy loss is -A_i; the loss types differ only
in how the tokens are summed:
  grpo     mean over rollouts of the per-rollout token mean: -(1 - 1 + 2) / 8          = -0.25
  dapo     sum over tokens / active tokens of the step:      -(1*1 - 1*4 + 2*2) / 20   = -0.05
  dr_grpo  sum over tokens / (rollouts x max_completion_length 16): -1 / (8 * 16)     = -0.0078125
  bnpo     sum over tokens / active tokens of the micro-batch (= dapo in one micro-batch)
The ExPO term adds beta x the token-mean NLL of the step's two explanations, whatever the loss type.
Dynamic sampling's filler slots count in no loss type's average (a second fixed batch, below).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from expo.config import ExpoConfig, load_config
from expo.errors import ConfigError
from expo.prompts import solve_prompt
from expo.train.grpo_training import build_trainer, grpo_args, length_rewards, loss_args
from expo.train.policy import load_policy
from expo.train.run import arm_config
from trainkit import explanation, grads, make_folders, manual_nll, rows, small_config, zero_reward

LENGTHS = [1, 2, 3, 4, 1, 2, 3, 4]
ADVANTAGES = [1.0, 0.0, 0.0, -1.0, 0.0, 2.0, 0.0, 0.0]
POLICY_LOSS = {"grpo": -0.25, "dapo": -0.05, "dr_grpo": -1 / 128, "bnpo": -0.05}
BETA = 0.5


def make_trainer(tmp_path: Path, arm: str, reward: Any, n_rows: int = 4,
                 **train: Any) -> tuple[Any, ExpoConfig]:
    folders = make_folders(tmp_path, n=n_rows)
    cfg = small_config(**train)
    model, tok, _ = load_policy(folders["model"], cfg)
    trainer = build_trainer(arm, cfg, rows(n_rows), model, tok, False, folders["explanations"],
                            tmp_path / "out" / "checkpoints", reward, None, [])
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps  # set by train()
    return trainer, cfg


def generation_batch(trainer: Any, questions: int = 2) -> list[dict[str, Any]]:
    G = trainer.num_generations
    return [trainer.train_dataset[i] for i in range(questions) for _ in range(G)]


def fixed_batch(trainer: Any, generated: dict[str, Any]) -> dict[str, Any]:
    """The step's prompts with chosen completions: lengths LENGTHS, advantages ADVANTAGES."""
    tok = trainer.processing_class
    width = max(LENGTHS)
    letters = tok("abcd", add_special_tokens=False)["input_ids"]
    ids = torch.full((8, width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((8, width), dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        ids[i, :n] = torch.tensor(letters[:n])
        mask[i, :n] = 1
    return {"prompt_ids": generated["prompt_ids"], "prompt_mask": generated["prompt_mask"],
            "completion_ids": ids, "completion_mask": mask, "advantages": torch.tensor(ADVANTAGES),
            "num_items_in_batch": mask.sum()}


@pytest.fixture(scope="module")
def stepped(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    """One exp-grpo trainer per micro-batch size, with its step's NLL plan built (rewards play no part:
    the fixed batch below replaces the rollouts). TRL reads `loss_type` at each loss call, so one
    trainer serves every loss type (test_loss_settings_reach_trl checks the config's way there)."""
    out = {}
    for micro in (None, 4):
        trainer, cfg = make_trainer(tmp_path_factory.mktemp(f"micro{micro}"), "exp-grpo", zero_reward,
                                    expo_beta=BETA, rollouts_per_micro_batch=micro)
        torch.manual_seed(0)
        batch = generation_batch(trainer)
        generated = trainer._generate_and_score_completions(batch)  # builds the step's NLL plan
        out[micro] = (trainer, cfg, batch, fixed_batch(trainer, generated))
    return out


@pytest.mark.parametrize("loss_type,micro", [
    ("grpo", None), ("dapo", None), ("dr_grpo", None), ("bnpo", None),
    ("grpo", 4), ("dapo", 4), ("dr_grpo", 4),  # two micro-batches of 4 rollouts, one optimizer step
])
def test_loss_type_plus_expo_term_by_hand(stepped: dict[Any, Any], loss_type: str, micro: int | None) -> None:
    trainer, cfg, batch, inputs = stepped[micro]
    trainer.loss_type = loss_type
    model, tok = trainer.model, trainer.processing_class
    model.zero_grad()
    parts = 1 if micro is None else 8 // micro
    total = 0.0
    for k in range(parts):  # the step's micro-batches, as TRL's accumulation feeds them
        trainer._step = k
        rows_k = slice(k * 8 // parts, (k + 1) * 8 // parts)
        part = {key: (v[rows_k] if key != "num_items_in_batch" else v) for key, v in inputs.items()}
        loss = trainer.compute_loss(model, part)
        loss.backward()
        total += loss.item()
    got = grads(model)

    by_id = {r["id"]: r for r in rows()}
    questions = [batch[0]["id"], batch[trainer.num_generations]["id"]]
    model.zero_grad()
    nll = manual_nll(model, tok, [solve_prompt(by_id[q]["question"], tok, cfg.prompts) for q in questions],
                     [explanation(by_id[q]) for q in questions])
    assert total == pytest.approx(POLICY_LOSS[loss_type] + BETA * nll.item(), rel=1e-5)

    # The gradient, by hand: the policy part is sum_i w_i (-A_i) sum_t grad log p_it with the loss
    # type's weight w_i, plus beta x the gradient of the token-mean NLL.
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    width = inputs["completion_ids"].size(1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, attn, width)
    lengths = torch.tensor(LENGTHS, dtype=torch.float32)
    weight = {"grpo": 1 / (8 * lengths), "dapo": torch.full((8,), 1 / 20),
              "dr_grpo": torch.full((8,), 1 / 128), "bnpo": torch.full((8,), 1 / 20)}[loss_type]
    adv = torch.tensor(ADVANTAGES)
    surrogate = (weight * -adv * (logps * inputs["completion_mask"]).sum(dim=1)).sum()
    (surrogate + BETA * nll).backward()
    want = grads(model)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7, msg=name)


# -- dynamic sampling in the trainer ------------------------------------------------------------


def kind_reward(completions: list[str], answer: list[str], **kw: Any) -> list[float]:
    """q0 and q3 always right, q1 never, q2 right on every other rollout (a mixed group)."""
    out = []
    for i, a in enumerate(answer):
        out.append({"0": 1.0, "2": 0.0, "4": float(i % 2 == 0), "6": 1.0}[a])
    return out


def test_exp_grpo_keeps_wrong_groups_and_refills_dropped_ones(tmp_path: Path) -> None:
    """The step's prompts q0 (correct) and q1 (wrong): q0 is dropped, q1 kept for its NLL term; refills
    draw from q2 (mixed) and q3 (correct) until q2 fills the open slot."""
    trainer, _ = make_trainer(tmp_path, "exp-grpo", kind_reward, expo_beta=BETA, filter_groups=True,
                              filter_max_rounds=3)
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(generation_batch(trainer))
    G = trainer.num_generations
    assert out["completion_ids"].shape[0] == 2 * G
    stats = trainer._step_stats
    assert stats["filter/refill_rounds"] in (1.0, 2.0)  # q2 drawn first, or q3 then q2
    rounds = int(stats["filter/refill_rounds"]) + 1
    assert stats["filter/groups"] == 2 + (rounds - 1)
    assert stats["filter/dropped"] == rounds - 1  # q0, and q3 when it came first
    assert stats["filter/share_wrong"] == pytest.approx(1 / stats["filter/groups"])
    assert stats["filter/share_mixed"] == pytest.approx(1 / stats["filter/groups"])
    assert stats["filter/fillers"] == 0.0
    tok = trainer.processing_class
    explained = sorted(tok.decode(p) for p, _ in trainer._nll_plan.chunks[0])
    assert [("1+1=" in e, "2+2=" in e) for e in explained] == [(True, False), (False, True)]
    assert torch.equal(out["num_items_in_batch"], out["completion_mask"].sum())
    # q1's group: zero advantage; q2's: non-zero
    assert sorted(out["advantages"].abs().view(2, G).sum(dim=1).gt(0).tolist()) == [False, True]


def assert_grpo_two_round_counts(stats: dict[str, float]) -> None:
    """Plain GRPO on kind_reward, 2 rounds: q0, q1 (round 1), q2, q3 (refill) generated; q0, q1, q3
    dropped; one filler slot; half the groups correct, a quarter wrong, a quarter mixed."""
    assert (stats["filter/groups"], stats["filter/refill_rounds"], stats["filter/dropped"],
            stats["filter/fillers"]) == (4.0, 1.0, 3.0, 1.0)
    assert (stats["filter/share_correct"], stats["filter/share_wrong"], stats["filter/share_mixed"]) == \
        (0.5, 0.25, 0.25)


def test_grpo_drops_wrong_groups_and_pads_the_last_round_with_fillers(tmp_path: Path) -> None:
    """Plain GRPO (DAPO's filter): q0 and q1 both dropped; one refill round of 2 prompts draws q2
    (mixed, kept) and q3 (correct, dropped); the open slot takes q0's group as a filler (no loss)."""
    trainer, _ = make_trainer(tmp_path, "grpo", kind_reward, filter_groups=True, filter_max_rounds=2)
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(generation_batch(trainer))
    G = trainer.num_generations
    stats = trainer._step_stats
    assert_grpo_two_round_counts(stats)
    per_group_tokens = out["completion_mask"].view(2, G, -1).sum(dim=(1, 2))
    assert per_group_tokens[1].item() == 0 and per_group_tokens[0].item() > 0  # mixed first, filler last
    assert out["num_items_in_batch"].item() == per_group_tokens[0].item()
    assert trainer._nll_plan is None  # no NLL term in this arm


# A step whose second group is a filler (rows 4-7: no loss), the first one trained: lengths 1, 2, 3, 4
# and advantages 2, 0, 0, -1. The loss averages over the 4 trained rollouts, never the 8 rows:
#   grpo     -(2 + 0 + 0 - 1) / 4                           = -0.25     (over 8 rows: -0.125)
#   dr_grpo  -(2*1 - 1*4) / (4 rollouts x 16)               =  0.03125  (over 8 rows: 0.015625)
#   dapo     -(2*1 - 1*4) / 10 active tokens                =  0.2      (masked tokens: never counted)
FILLED_LENGTHS = [1, 2, 3, 4, 1, 2, 3, 4]
FILLED_ADVANTAGES = [2.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0]
FILLED_LOSS = {"grpo": -0.25, "dr_grpo": 2 / 64, "dapo": 0.2, "bnpo": 0.2}


@pytest.mark.parametrize("loss_type,micro", [
    ("grpo", None), ("dr_grpo", None), ("dapo", None), ("bnpo", None),
    ("grpo", 4), ("dr_grpo", 4), ("dapo", 4),  # trained rows in one micro-batch, the filler in the other
])
def test_filler_slots_do_not_dilute_the_policy_loss(tmp_path: Path, loss_type: str, micro: int | None) -> None:
    trainer, _ = make_trainer(tmp_path, "grpo", kind_reward, filter_groups=True, filter_max_rounds=2,
                              loss_type=loss_type, rollouts_per_micro_batch=micro)
    torch.manual_seed(0)
    generated = trainer._generate_and_score_completions(generation_batch(trainer))
    assert trainer._step_stats["filter/fillers"] == 1.0  # slot 0: q2 (mixed), slot 1: a dropped group
    assert generated["completion_mask"][4:].sum() == 0
    tok = trainer.processing_class
    letters = tok("abcd", add_special_tokens=False)["input_ids"]
    ids = torch.full((8, 4), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((8, 4), dtype=torch.long)
    for i, n in enumerate(FILLED_LENGTHS[:4]):  # the filler's rows keep mask 0, as assemble_slots left them
        ids[i, :n] = torch.tensor(letters[:n])
        mask[i, :n] = 1
    inputs = {"prompt_ids": generated["prompt_ids"], "prompt_mask": generated["prompt_mask"],
              "completion_ids": ids, "completion_mask": mask, "advantages": torch.tensor(FILLED_ADVANTAGES),
              "num_items_in_batch": mask.sum()}
    parts = 1 if micro is None else 8 // micro
    total = 0.0
    for k in range(parts):
        trainer._step = k
        rows_k = slice(k * 8 // parts, (k + 1) * 8 // parts)
        part = {key: (v[rows_k] if key != "num_items_in_batch" else v) for key, v in inputs.items()}
        total += trainer.compute_loss(trainer.model, part).item()
    assert total == pytest.approx(FILLED_LOSS[loss_type], rel=1e-5)


def test_skip_unsolved_rollouts_masks_the_wrong_group(tmp_path: Path) -> None:
    trainer, _ = make_trainer(tmp_path, "exp-grpo", kind_reward, expo_beta=BETA, filter_groups=True,
                              filter_skip_unsolved_rollouts=True)
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(generation_batch(trainer))
    G = trainer.num_generations
    tokens = out["completion_mask"].view(2, G, -1).sum(dim=(1, 2)).tolist()
    assert tokens[0] == 0 and tokens[1] > 0  # q1 (wrong, slot 0): no loss; q2 (mixed): trained
    assert len(trainer._nll_plan.chunks[0]) == 2  # q1's explanation still scored


def test_a_filtered_step_trains(tmp_path: Path) -> None:
    """An optimizer step through Trainer.train with dynamic sampling on: its line carries the counts."""
    from expo.train.metrics_jsonl import MetricsWriter

    trainer, _ = make_trainer(tmp_path, "exp-grpo", kind_reward, steps=1, expo_beta=BETA, filter_groups=True,
                              rollouts_per_micro_batch=4)
    writer = MetricsWriter(tmp_path / "metrics.jsonl", "exp-grpo")
    trainer.add_callback(writer)
    trainer.train()
    assert len(writer.rows) == 1
    for row in writer.rows:
        assert row["filter/share_correct"] + row["filter/share_wrong"] + row["filter/share_mixed"] == \
            pytest.approx(1.0)
        assert row["filter/groups"] >= 2 and "filter/refill_rounds" in row


def test_overlong_penalty_by_hand() -> None:
    """DAPO's Eq. 13 with a 16-token cap and a 4-token buffer: no penalty up to 12 tokens, then
    (12 - length) / 4, so -0.25 at 13, -0.5 at 14 and -1 at the cap (what a wrong answer costs)."""
    assert length_rewards(small_config()) == []  # off by default
    (penalty,) = length_rewards(small_config(overlong_buffer=4))
    assert penalty(completion_ids=[[1] * n for n in (1, 12, 13, 14, 16)]) == [0.0, 0.0, -0.25, -0.5, -1.0]


def test_the_group_filter_judges_correctness_not_the_length_penalty(tmp_path: Path) -> None:
    """With a buffer of 15 of 16 tokens every rollout longer than one token loses reward (a correct one
    at the cap sums to 0): the filter must still see q0 and q3 as correct, q1 as wrong, q2 as mixed,
    so the counts equal the unpenalised run's."""
    trainer, _ = make_trainer(tmp_path, "grpo", kind_reward, filter_groups=True, filter_max_rounds=2,
                              overlong_buffer=15)
    assert [getattr(f, "__name__", "") for f in trainer.reward_funcs][1] == "soft_overlong_punishment_reward"
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(generation_batch(trainer))
    stats = trainer._step_stats
    assert_grpo_two_round_counts(stats)
    lengths = out["completion_mask"].sum(dim=1)
    assert lengths.max().item() > 1  # the penalty did bite on this batch


# -- config keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("train,want", [
    ({}, {"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": None, "scale_rewards": "group",
          "mask_truncated_completions": False, "top_entropy_quantile": 1.0,
          "importance_sampling_level": "token"}),
    ({"loss_type": "grpo", "epsilon_high": 0.28, "scale_rewards": "none", "mask_truncated_completions": True},
     {"loss_type": "grpo", "epsilon_high": 0.28, "scale_rewards": "none",
      "mask_truncated_completions": True}),
    ({"loss_type": "cispo"}, {"epsilon_high": 5.0}),  # a ratio cap, not a clip range: TRL's recommendation
    ({"loss_type": "luspo"}, {"importance_sampling_level": "sequence"}),  # LUSPO's sequence-level ratios
    ({"top_entropy_quantile": 0.2}, {"top_entropy_quantile": 0.2}),
])
def test_loss_settings_reach_trl(tmp_path: Path, train: dict[str, Any], want: dict[str, Any]) -> None:
    cfg = small_config(**train)
    args = grpo_args(cfg, tmp_path, on_gpu=False, world=1)
    for key, value in want.items():
        assert getattr(args, key) == value, key
    assert {k: v for k, v in loss_args(cfg.train).items() if k in want} == want


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"])
def test_every_trl_loss_type_is_accepted(tmp_path: Path, loss_type: str) -> None:
    cfg = load_config(None, [f"train.loss_type={loss_type}"])
    assert grpo_args(cfg, tmp_path, on_gpu=False, world=1).loss_type == loss_type


def test_arm_overrides_give_each_arm_its_own_optimizer_settings(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.learning_rate=2.0e-3", "train.arm_overrides.grpo.learning_rate=5.0e-4",
                             "train.arm_overrides.grpo.loss_type=dr_grpo",
                             "train.arm_overrides.exp-grpo.weight_decay=0.01"])
    grpo, expo = arm_config(cfg, "grpo"), arm_config(cfg, "exp-grpo")
    want = (5.0e-4, "dr_grpo", 0.0)
    assert (grpo.train.learning_rate, grpo.train.loss_type, grpo.train.weight_decay) == want
    assert (expo.train.learning_rate, expo.train.loss_type, expo.train.weight_decay) == (2.0e-3, "dapo", 0.01)
    assert cfg.train.learning_rate == 2.0e-3  # the shared section is unchanged
    args = grpo_args(grpo, tmp_path, on_gpu=False, world=1)
    assert (args.learning_rate, args.loss_type) == (5.0e-4, "dr_grpo")


@pytest.mark.parametrize("override,message", [
    ("train.arm_overrides.gpro.learning_rate=1.0e-3",
     "config key 'train.arm_overrides': unknown algorithm 'gpro'"),
    ("train.arm_overrides.grpo.learning_rate=-1",
     "config key 'train.arm_overrides.grpo.learning_rate': must be positive"),
    ("train.arm_overrides.grpo.lr=1.0e-3", "unknown config key 'train.arm_overrides.grpo.lr'"),
    ("train.arm_overrides.grpo.loss_type=ppo",
     "config key 'train.arm_overrides.grpo.loss_type': 'ppo' is not"),
    ("train.loss_type=ppo", "config key 'train.loss_type': 'ppo' is not one of"),
    ("train.scale_rewards=std", "config key 'train.scale_rewards'"),
    ("train.filter_max_rounds=0", "config key 'train.filter_max_rounds': must be >= 1"),
    ("train.top_entropy_quantile=1.5", "config key 'train.top_entropy_quantile': must be in [0, 1]"),
    ("train.epsilon_high=0", "config key 'train.epsilon_high': must be positive"),
    ("train.overlong_buffer=-1", "config key 'train.overlong_buffer': must be >= 0"),
    ("train.overlong_buffer=64",
     "config key 'train.overlong_buffer': must be below generation.max_new_tokens"),
])
def test_bad_loss_and_override_keys_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value) and "\n" not in str(info.value)
