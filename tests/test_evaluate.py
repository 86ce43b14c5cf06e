"""expo.evaluate: tallies from a scripted generator, data errors, model resolution, the in-distribution
check, and one end-to-end evaluation of a tiny random model saved to a folder."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from expo.answers import UnbalancedBraces, last_boxed
from expo.config import EvaluateConfig, ExpoConfig, PromptConfig
from expo.errors import ConfigError, DataError, ModelError, TrackingError
from expo.evaluate import (build_metrics, flat_metrics, in_distribution_check,
                           load_eval_rows, mean_token_logprobs, model_summary, resolve_model,
                           run_evaluation, summarize_levels)
from expo.io import read_json, read_jsonl, write_jsonl
from expo.metrics import Z95
from expo.scratch_models import char_tokenizer, tiny_qwen2


@dataclass
class FakeCompletion:
    text: object
    num_tokens: int = 5
    truncated: bool = False
    token_ids: tuple = ()
    logprob: float = 0.0


class ScriptedGenerator:
    """Returns the scripted texts per prompt: `sampled[prompt]` at temperature > 0, `greedy[prompt]` at 0."""

    def __init__(self, sampled: dict[str, list], greedy: dict[str, object]):
        self.sampled, self.greedy, self.calls = sampled, greedy, []

    def generate(self, prompts, n=1, temperature=1.0, max_new_tokens=None, seed=None):
        self.calls.append((n, temperature))
        if temperature == 0.0:
            return [[FakeCompletion(self.greedy[p])] if p in self.greedy else [] for p in prompts]
        return [[c if isinstance(c, FakeCompletion) else FakeCompletion(c) for c in self.sampled[p]]
                for p in prompts]


def boxed_verifier(completions: list[str], golds: list[str]) -> list[float | None]:
    """1.0 when the last box equals the gold, 0.0 otherwise, None for text that cannot be parsed."""
    out: list[float | None] = []
    for text, gold in zip(completions, golds):
        try:
            out.append(float(last_boxed(text) == gold))
        except UnbalancedBraces:
            out.append(None)
    return out


ROWS = [{"id": "a", "question": "Qa", "answer": "1", "level": 1},
        {"id": "b", "question": "Qb", "answer": "2", "level": 1},
        {"id": "c", "question": "Qc", "answer": "3", "level": 3}]


def _scripted() -> ScriptedGenerator:
    return ScriptedGenerator(
        sampled={
            "Qa": [r"\boxed{1}", r"\boxed{1}", r"so \boxed{1}", r"\boxed{7}"],                    # 3 of 4
            "Qb": ["", None, "\x00\x01 garbage }}{{", FakeCompletion(r"\boxed{2", truncated=True)],  # 0 of 4
            "Qc": [FakeCompletion(r"\boxed{3}", num_tokens=9)],  # 1 of 4: three completions missing
        },
        greedy={"Qa": r"\boxed{1}", "Qb": r"\boxed{2}"},  # Qc: the generator skipped the prompt
    )


def test_run_evaluation_tallies_garbage_as_wrong():
    gen = _scripted()
    cfg = EvaluateConfig(samples=4, temperature=0.7, greedy=True)
    results, samples = run_evaluation(gen, ROWS, ["Qa", "Qb", "Qc"], cfg, verifier=boxed_verifier)
    assert gen.calls == [(4, 0.7), (1, 0.0)]
    assert [(r.id, r.level, r.n, r.c, r.greedy) for r in results] == [
        ("a", 1, 4, 3, True), ("b", 1, 4, 0, True), ("c", 3, 4, 1, False)]
    assert results[1].truncated == 1
    assert results[2].tokens == [9, 0, 0, 0]  # padded with empty samples
    assert len(samples) == 3 * (4 + 1)
    unjudged = [s for s in samples if s["reward"] is None]
    assert [(s["id"], s["index"]) for s in unjudged] == [("b", 3)]  # unbalanced box: cannot judge
    assert all(not s["correct"] for s in unjudged)
    assert samples[4] | {"text": None} == {"id": "a", "level": 1, "kind": "greedy", "index": 0, "answer": "1",
                                           "text": None, "num_tokens": 5, "truncated": False, "reward": 1.0,
                                           "correct": True}

    metrics = build_metrics(results, samples, "base", "some/dir", cfg)
    assert metrics["unscored"] == 1 and metrics["questions"] == 3
    assert metrics["overall"]["pass@1"]["mean"] == pytest.approx((3 / 4 + 0 + 1 / 4) / 3)
    # pass@2: a: 1 - C(1,2)/C(4,2) = 1; b: 0; c: 1 - C(3,2)/C(4,2) = 1/2
    assert metrics["overall"]["pass@k"]["2"]["mean"] == pytest.approx(0.5)
    assert metrics["by_level"]["1"]["pass@1"]["mean"] == pytest.approx(3 / 8)
    assert metrics["by_level"]["1"]["greedy"]["mean"] == 1.0

    assert summarize_levels(metrics) == {"1": {"pass@1": pytest.approx(3 / 8), "pass@k": 0.5},
                                         "3": {"pass@1": 0.25, "pass@k": 1.0}}
    assert model_summary(metrics)["overall"]["pass@k"] == pytest.approx(2 / 3)  # pass@4: 1, 0, 1
    flat = flat_metrics(metrics)
    assert flat["pass_at_1"] == pytest.approx(1 / 3) and flat["level3/pass_at_4"] == 1.0
    assert flat["level1/greedy_accuracy"] == 1.0
    assert not any("@" in key for key in flat)  # MLflow rejects "@" in metric names


def test_run_evaluation_without_greedy():
    cfg = EvaluateConfig(samples=1, greedy=False)
    gen = ScriptedGenerator({"Qa": [r"\boxed{1}"]}, {})
    results, samples = run_evaluation(gen, ROWS[:1], ["Qa"], cfg, verifier=boxed_verifier)
    assert gen.calls == [(1, 0.7)] and results[0].greedy is None and len(samples) == 1


def test_summarize_levels_leaves_unleveled_questions_to_overall():
    cfg = EvaluateConfig(samples=1, greedy=False)
    rows = [{"id": "x", "question": "Qa", "answer": "1", "level": None}, ROWS[1]]
    gen = ScriptedGenerator({"Qa": [r"\boxed{1}"], "Qb": ["no"]}, {})
    results, samples = run_evaluation(gen, rows, ["Qa", "Qb"], cfg, verifier=boxed_verifier)
    metrics = build_metrics(results, samples, "m", "m", cfg)
    assert list(metrics["by_level"]) == ["1", "unknown"]
    assert summarize_levels(metrics) == {"1": {"pass@1": 0.0, "pass@k": 0.0}}


def test_load_eval_rows_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_eval_rows(tmp_path)
    (tmp_path / "eval.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows"):
        load_eval_rows(tmp_path)
    (tmp_path / "eval.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="not valid JSONL"):
        load_eval_rows(tmp_path)
    write_jsonl(tmp_path / "eval.jsonl", [{"question": "q"}])
    with pytest.raises(DataError, match="line 1"):
        load_eval_rows(tmp_path)
    write_jsonl(tmp_path / "eval.jsonl", ROWS)
    # the cap takes levels in turn, so it never drops a level: a (level 1), then c (the next level)
    assert [r["id"] for r in load_eval_rows(tmp_path, max_questions=2)] == ["a", "c"]


def test_resolve_model_local_paths(tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        resolve_model(str(tmp_path / "missing"), tmp_path / "dl")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "m"), tmp_path / "dl") == tmp_path / "m"


def test_resolve_model_from_mlflow_registry(tmp_path, monkeypatch, no_tracking_env, sqlite_store):
    import mlflow

    uri = sqlite_store  # a migrated SQLite store (tests/mlflow_server.py)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "qwen2"}')
    from expo import registry
    from expo.config import RegisterConfig, TrackingConfig

    mlflow.set_registry_uri(uri)  # an earlier test may have left the process on another registry
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.create_run(client.create_experiment("resolve-test"))
    version = registry.log_and_register(src, "tiny", RegisterConfig(), tags={}, metrics={},
                                        run_id=run.info.run_id, tracking=TrackingConfig(tracking_uri=uri))
    client.set_registered_model_alias("tiny", "champion", str(version.version))
    for i, model_uri in enumerate(("models:/tiny/1", "models:/tiny@champion")):
        local = resolve_model(model_uri, tmp_path / f"download{i}")
        assert (local / "config.json").read_text() == '{"model_type": "qwen2"}'
        assert local != src
    with pytest.raises(TrackingError, match="models:/absent/1"):
        resolve_model("models:/absent/1", tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# In-distribution check.


class UniformLM(torch.nn.Module):
    """Every next token equally likely: each token's log-prob is exactly -log(V)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Cfg", (), {"max_position_embeddings": 512})()

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.dummy  # (B, T, V)
        return type("Out", (), {"logits": logits})()


class UnigramLM(torch.nn.Module):
    """The same next-token distribution everywhere: p("a") = 1/2, p("b") = 1/4, the rest share 1/4,
    so a text of a's and b's has a mean token log-prob of -(1 per "a", 2 per "b") * ln 2 / length."""

    def __init__(self, tok):
        super().__init__()
        a, b = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
        probs = torch.full((len(tok),), 0.25 / (len(tok) - 2))
        probs[a], probs[b] = 0.5, 0.25
        self.logits = torch.nn.Parameter(probs.log())
        self.config = type("Cfg", (), {"max_position_embeddings": 512})()

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.logits.expand(*input_ids.shape, -1)})()  # (B, T, V)


def test_in_distribution_check_is_paired_on_the_same_questions():
    """By hand, in units of ln 2 (log p(a) = -1, log p(b) = -2 per token):
    q1 (level 1): explanation "a" = -1, expert "b" = -2: diff +1.
    q2 (level 1): explanations "aa" = -1 and "ab" = -1.5, no expert solution: unpaired, left out.
    q3 (level 2): expert "bb" = -2, its only explanation rejected: unpaired, left out.
    q4 (level 2): explanation "b" = -2, expert "ab" = -1.5: diff -0.5.
    Paired (q1, q4): explanation mean -1.5, expert mean -1.75, mean diff +0.25, 2 pairs.
    Unpaired, the old way, it would read explanation (-1 -1 -1.5 -2) / 4 = -1.375 against expert
    (-2 -2 -1.5) / 3 = -1.833: a gap of +0.458 that mostly compares different questions.
    """
    tok, ln2 = char_tokenizer(), math.log(2)
    rows = [{"id": "q1", "question": "1?", "level": 1, "solution": "b"},
            {"id": "q2", "question": "2?", "level": 1, "solution": ""},
            {"id": "q3", "question": "3?", "level": 2, "solution": "bb"},
            {"id": "q4", "question": "4?", "level": 2, "solution": "ab"}]
    explanations = [{"id": "q1", "question": "1?", "level": 1, "explanation": "a", "accepted": True},
                    {"id": "q2", "question": "2?", "level": 1, "explanation": "aa", "accepted": True},
                    {"id": "q2", "question": "2?", "level": 1, "explanation": "ab", "accepted": True},
                    {"id": "q3", "question": "3?", "level": 2, "explanation": "a", "accepted": False},
                    {"id": "q4", "question": "4?", "level": 2, "explanation": "b", "accepted": True}]
    check = in_distribution_check(UnigramLM(tok), tok, rows, explanations, PromptConfig())
    overall = check["overall"]
    assert overall["paired"]["pairs"] == 2
    assert overall["explanation"]["count"] == 2 and overall["expert"]["count"] == 2
    assert overall["explanation"]["mean"] == pytest.approx(-1.5 * ln2)
    assert overall["expert"]["mean"] == pytest.approx(-1.75 * ln2)
    assert overall["paired"]["mean_diff"] == pytest.approx(0.25 * ln2)
    half = Z95 * math.sqrt(((1 - 0.25) ** 2 + (-0.5 - 0.25) ** 2) / 1 / 2) * ln2  # sd over the 2 diffs
    assert (overall["paired"]["lo"], overall["paired"]["hi"]) == pytest.approx((0.25 * ln2 - half,
                                                                                0.25 * ln2 + half))
    assert list(check["by_level"]) == ["1", "2"]
    one, two = check["by_level"]["1"], check["by_level"]["2"]
    assert one["paired"] == {"pairs": 1, "mean_diff": pytest.approx(1 * ln2), "lo": None, "hi": None}
    assert (one["explanation"]["mean"], one["expert"]["mean"]) == pytest.approx((-1 * ln2, -2 * ln2))
    assert two["paired"]["mean_diff"] == pytest.approx(-0.5 * ln2)
    assert (two["explanation"]["mean"], two["expert"]["mean"]) == pytest.approx((-2 * ln2, -1.5 * ln2))
    assert check["unpaired"] == {"explanation_only": 1, "expert_only": 1}


def test_in_distribution_check_pairs_on_question_text_without_ids():
    tok = char_tokenizer()
    rows = [{"question": "1+1?", "level": 1, "solution": "two"},
            {"question": "3+3?", "level": 2, "solution": "six"}]  # no accepted explanation: unpaired
    explanations = [{"question": "1+1?", "level": 1, "explanation": "1+1=2", "accepted": True},
                    {"question": "1+1?", "level": 1, "explanation": "wrong", "accepted": False}]
    check = in_distribution_check(UniformLM(len(tok)), tok, rows, explanations, PromptConfig())
    assert check["overall"]["paired"]["pairs"] == 1 and list(check["by_level"]) == ["1"]
    assert check["overall"]["explanation"]["mean"] == pytest.approx(-math.log(len(tok)))
    assert check["overall"]["paired"]["mean_diff"] == pytest.approx(0.0, abs=1e-6)
    assert check["unpaired"] == {"explanation_only": 0, "expert_only": 1}


def test_in_distribution_check_with_no_pairs_reports_none():
    tok = char_tokenizer()
    check = in_distribution_check(UniformLM(len(tok)), tok, [{"id": "a", "question": "1?", "solution": "x"}],
                                  [{"id": "b", "question": "2?", "explanation": "y", "accepted": True}],
                                  PromptConfig())
    assert check["overall"]["paired"] == {"pairs": 0, "mean_diff": None, "lo": None, "hi": None}
    assert check["overall"]["explanation"]["mean"] is None and check["by_level"] == {}


def test_mean_token_logprobs_independent_of_batching():
    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden=32, layers=1, heads=2)
    prompts, texts = ["What is 2+3?\n", "Hi\n", "A much longer question here?\n"], ["5", "hello there", ""]
    one = mean_token_logprobs(model, tok, prompts, texts, batch_size=1)
    batched = mean_token_logprobs(model, tok, prompts, texts, batch_size=3)  # right padding in play
    assert one[2] is None and batched[2] is None  # no tokens to score
    assert batched[:2] == pytest.approx(one[:2], abs=1e-5)
    # By hand for the first text: log p("5" | prompt) from one forward pass of prompt + "5".
    ids = tok(prompts[0] + "5", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, -2].log_softmax(-1)[ids[0, -1]].item()
    assert one[0] == pytest.approx(logp, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# End to end on a tiny random model saved to a folder.


def test_evaluate_end_to_end_on_tiny_model(tmp_path, capsys, make_model_dir):
    """`expo evaluate` on a tiny random model saved to a folder: real generation, verifier, report."""
    (tmp_path / "model").symlink_to(make_model_dir(seed=0))  # a saved tiny Qwen2 + char tokenizer
    write_jsonl(tmp_path / "data" / "eval.jsonl", ROWS)
    write_jsonl(tmp_path / "data" / "train.jsonl", [
        {"id": "t1", "question": "1+1?", "answer": "2", "level": 1, "solution": r"1+1 = \boxed{2}"},
        {"id": "t2", "question": "9*9?", "answer": "81", "level": 2, "solution": "no explanation asked"}])
    write_jsonl(tmp_path / "expl" / "explanations.jsonl", [
        {"id": "t1", "question": "1+1?", "answer": "2", "level": 1, "explanation": r"one and one: \boxed{2}",
         "accepted": True, "reject_reason": None}])

    cli, args = _cli_args(tmp_path, "--name", "tiny", "--explanations", str(tmp_path / "expl"),
                          "--set", "evaluate.samples=2", "--set", "generation.max_new_tokens=6")
    assert cli.run(args) == 0
    out = tmp_path / "out"
    metrics = read_json(out / "metrics.json")
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 3 * (2 + 1)
    assert all(0 <= s["num_tokens"] <= 6 for s in samples)
    assert metrics["name"] == "tiny" and metrics["questions"] == 3
    assert set(metrics["by_level"]) == {"1", "3"} and sorted(metrics["overall"]["pass@k"]) == ["1", "2"]
    assert 0.0 <= metrics["overall"]["pass@1"]["mean"] <= 1.0
    in_dist = read_json(out / "in_distribution.json")
    # t2 was not explained: only t1's expert solution is compared, paired with t1's explanation
    assert in_dist["overall"]["explanation"]["count"] == 1 and in_dist["overall"]["expert"]["count"] == 1
    assert in_dist["overall"]["paired"]["pairs"] == 1
    assert in_dist["overall"]["expert"]["mean"] < 0
    html = (out / "report.html").read_text()
    assert 'id="in_distribution"' in html and 'id="accuracy"' in html
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["all", "3"]


def test_evaluate_model_empty_eval_set_is_a_data_error(tmp_path):
    from expo.evaluate import evaluate_model

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eval.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        evaluate_model(str(tmp_path / "model"), tmp_path / "data", ExpoConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written on failure


# ---------------------------------------------------------------------------------------------
# The `expo evaluate` command.


def _cli_args(tmp_path, *extra):
    import argparse

    from expo.cli import evaluate as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli, parser.parse_args(["--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"),
                                   "--output", str(tmp_path / "out"), *extra])


def test_cli_prints_table_and_writes_report(tmp_path, monkeypatch, capsys):
    import expo.evaluate

    cfg = EvaluateConfig(samples=4)
    results, samples = run_evaluation(_scripted(), ROWS, ["Qa", "Qb", "Qc"], cfg, verifier=boxed_verifier)
    seen = {}

    def fake_evaluate(model, data, cfg, output, name):
        seen.update(model=model, samples=cfg.evaluate.samples, name=name)
        return build_metrics(results, samples, name, model, cfg.evaluate)

    monkeypatch.setattr(expo.evaluate, "evaluate_model", fake_evaluate)
    cli, args = _cli_args(tmp_path, "--name", "base", "--set", "evaluate.samples=4")
    assert cli.run(args) == 0
    assert seen == {"model": str(tmp_path / "model"), "samples": 4, "name": "base"}
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["level", "questions", "pass@1", "95%", "CI", "pass@4", "greedy"]
    assert out[1].split()[:3] == ["all", "3", "33.3%"] and out[2].split()[:3] == ["1", "2", "37.5%"]
    assert out[3].split()[-2:] == ["100.0%", "0.0%"]  # level 3: pass@4 = 1, greedy wrong
    assert "1 completions could not be judged" in out[4]
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "report.md").is_file()


def test_cli_bad_input_is_one_clear_error(tmp_path):
    cli, args = _cli_args(tmp_path)  # no data folder
    with pytest.raises(DataError, match="eval.jsonl"):
        cli.run(args)
    cli, args = _cli_args(tmp_path, "--set", "evaluate.samples=0")
    with pytest.raises(ConfigError, match="evaluate.samples"):
        cli.run(args)


def test_question_cap_keeps_every_level():
    from expo.evaluate import cap_by_level

    rows = [{"id": f"{lv}-{i}", "level": lv} for lv in (1, 2, 3) for i in range(4)]  # sorted by level
    picked = cap_by_level(rows, 5)
    assert [r["id"] for r in picked] == ["1-0", "2-0", "3-0", "1-1", "2-1"]
    assert cap_by_level(rows, 100) != [] and len(cap_by_level(rows, 100)) == 12
