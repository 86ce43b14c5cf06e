"""The explanation buffer, the collapse guard, and online regeneration through the trainer (faked sampler)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from expo.io import read_jsonl
from expo.train import train_arm
from expo.train.explanations import ExplanationBuffer
from trainkit import make_folders, small_config, zero_reward


def rec(qid: str, text: str, accepted: bool = True) -> dict[str, Any]:
    return {"id": qid, "explanation": text, "accepted": accepted}


def test_buffer_keeps_accepted_newest_round_robin_and_capacity() -> None:
    buf = ExplanationBuffer(capacity=2, acceptance_floor=0.5)
    assert buf.add([rec("a", "x"), rec("a", "y"), rec("a", "bad", False), rec("a", "x")], step=0) == 2
    assert [buf.pick("a") for _ in range(3)] == ["x", "y", "x"]  # round robin over the newest round
    buf.add([rec("a", "z")], step=5)
    assert [buf.pick("a") for _ in range(2)] == ["z", "z"]  # a newer round wins
    assert len(buf) == 2  # capacity 2: the oldest ("x") was dropped
    assert buf.pick("nobody") is None


def test_collapse_guard_keeps_the_buffer_below_the_floor() -> None:
    buf = ExplanationBuffer(capacity=4, acceptance_floor=0.5)
    buf.seed([rec("a", "initial"), rec("b", "initial-b")], samples=2)
    low = buf.add_round([rec("a", "fresh"), rec("a", "n1", False), rec("a", "n2", False)], step=10)
    assert low.acceptance == 1 / 3 and not low.used
    assert buf.pick("a") == "initial"  # the collapsed round is not used
    high = buf.add_round([rec("a", "fresh"), rec("b", "n", False)], step=20)
    assert high.acceptance == 0.5 and high.used  # at the floor counts as healthy
    assert buf.pick("a") == "fresh" and buf.pick("b") == "initial-b"  # b never starves


def test_initial_explanations_survive_many_rounds() -> None:
    """Capacity 2, seeded with the initial policy's "initial": after 3 healthy online rounds the seed is
    still held (the docstring's promise; before the fix it was trimmed away in round 2), beside the 2
    newest online ones, and round robin serves the newest round."""
    buf = ExplanationBuffer(capacity=2, acceptance_floor=0.5)
    buf.seed([rec("a", "initial")], samples=1)
    for step, text in ((10, "r1"), (20, "r2"), (30, "r3")):
        assert buf.add_round([rec("a", text)], step).used
    held = [item["text"] for item in buf.state_dict()["items"]["a"]]
    assert held == ["initial", "r2", "r3"]  # r1, the oldest online one, made room
    assert buf.pick("a") == "r3"
    again = ExplanationBuffer()
    again.load_state_dict(json.loads(json.dumps(buf.state_dict())))
    again.add_round([rec("a", "r4")], 40)  # the seed flag survives a checkpoint
    assert [item["text"] for item in again.state_dict()["items"]["a"]] == ["initial", "r3", "r4"]


def test_buffer_state_round_trips_through_json() -> None:
    buf = ExplanationBuffer(capacity=3, acceptance_floor=0.4)
    buf.seed([rec("a", "x"), rec("a", "y")], samples=4)
    buf.pick("a")
    again = ExplanationBuffer()
    again.load_state_dict(json.loads(json.dumps(buf.state_dict())))
    assert again.state_dict() == buf.state_dict()
    assert again.pick("a") == buf.pick("a") == "y"  # the cursor came along
    assert again.rounds[0].acceptance == 0.5


class FakeRegenerate:
    """Round 1 explains every question (accepted); round 2 collapses (nothing accepted)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, model: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert not model.training  # sampled in eval mode, under no_grad
        self.calls.append([r["id"] for r in rows])
        ok = len(self.calls) == 1
        return [rec(r["id"], f"round {len(self.calls)}: \\boxed{{{r['answer']}}}", ok) for r in rows]


def test_online_regeneration_logs_acceptance_and_guard(tmp_path: Path) -> None:
    f = make_folders(tmp_path)
    cfg = small_config(steps=3, expo_beta=0.1, acceptance_floor=0.5)
    cfg.explain.mode = "online"
    cfg.explain.regenerate_every = 1
    cfg.explain.max_new_tokens = 32  # the fake's explanations (~20 characters) fit their budget, scored whole
    fake = FakeRegenerate()
    summary = train_arm("exp-grpo", cfg, f["data"], f["model"], f["explanations"], tmp_path / "out",
                        reward_fn=zero_reward, regenerate=fake)
    assert len(fake.calls) == 2 and all(len(ids) == 2 for ids in fake.calls)  # steps 1 and 2, batch questions
    rows = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [r["acceptance"] for r in rows] == [1.0, 1.0, 0.0]  # initial stage, round 1, collapsed round 2
    assert [r["explain/regenerated"] for r in rows] == [0.0, 2.0, 2.0]
    assert rows[2]["explain/guard_held"] == 1.0 and rows[1]["explain/guard_held"] == 0.0
    assert all(r["explanations_used"] == 2.0 for r in rows)  # the term never starves
    assert rows[1]["time/explain_regen"] > 0 and rows[0]["time/explain_regen"] == 0
    assert [r["used"] for r in summary["explanation_rounds"]] == [True, True, False]


def test_online_regenerator_samples_and_verifies_with_the_live_policy(tmp_path: Path) -> None:
    """The real sampler (expo.explain + expo.generation + verifier) behind `regenerate(model, rows)`."""
    from expo.modeling import load_model
    from expo.train.explanations import OnlineRegenerator

    f = make_folders(tmp_path)
    cfg = small_config()
    cfg.explain.samples_per_question, cfg.explain.keep_per_question, cfg.explain.solve_rate_samples = 2, 1, 0
    model, tok = load_model(f["model"], cfg.model, device="cpu")
    batch = read_jsonl(f["data"] / "train.jsonl")[:2]
    records = OnlineRegenerator(cfg, tok)(model, batch)
    assert sorted(r["id"] for r in records) == ["q0", "q0", "q1", "q1"]
    assert all(isinstance(r["accepted"], bool) and "explanation" in r for r in records)
    assert not any(r["accepted"] for r in records)  # a random model does not explain "\boxed{2}"


def test_online_regenerator_draws_explanations_only_and_no_fingerprint_without_cache(monkeypatch: Any
                                                                                      ) -> None:
    """No cache: no full-weight fingerprint each round (it keys a cache nobody gave it). Solve-rate
    samples only feed the explanations stage's statistics: a round asks for none."""
    import expo.explain
    import expo.generation
    import expo.modeling
    from expo.train.explanations import OnlineRegenerator

    fingerprints: list[Any] = []
    seen: list[Any] = []
    monkeypatch.setattr(expo.modeling, "state_fingerprint", lambda model: fingerprints.append(model) or "fp")
    monkeypatch.setattr(expo.generation, "make_generator", lambda *a, **k: "generator")

    def fake_sample(generator: Any, rows: Any, cfg: Any, prompts: Any, tok: Any, cache: Any, key: str,
                    **kw: Any) -> Any:
        seen.append((cfg.solve_rate_samples, cache, key))
        return [rec(r["id"], "x") for r in rows], {}

    monkeypatch.setattr(expo.explain, "sample_explanations", fake_sample)
    cfg = small_config()
    assert cfg.explain.solve_rate_samples > 0  # the stage's default draws them
    records = OnlineRegenerator(cfg, tokenizer=None)("model", [{"id": "q0"}])
    assert records == [rec("q0", "x")]
    assert fingerprints == [] and seen == [(0, None, "")]
    assert cfg.explain.solve_rate_samples > 0  # the caller's config is left as it was
    cache = object()
    OnlineRegenerator(cfg, tokenizer=None, cache=cache)("model", [{"id": "q0"}])
    assert fingerprints == ["model"] and seen[-1] == (0, cache, "fp")  # with a cache, keyed by the weights
