"""Stage evaluate: verifier-based accuracy and pass@k of one model, overall and by difficulty level.

Why: ExPO's claim is about *which* problems a model can solve (the hardest level moves most), so the
measures are per level: pass@1 (mean accuracy of n samples at temperature 0.7), unbiased pass@k for
every k up to n, greedy accuracy, response length and truncation, each with a 95 % interval
(expo.metrics says which interval). "Correct" is the verifier's word (expo.verify.rewards), the same
function that rewards training: one definition of correct. Output that cannot be judged (empty,
garbage, a verifier timeout) counts as wrong and is counted under "unscored"; it never crashes the stage.

How:
    metrics = evaluate_model("runs/model", "runs/data", cfg, "runs/eval-base", name="base")
    summarize_levels(metrics)  # {"1": {"pass@1": 0.9, "pass@k": 0.97}, ...}  (for summary.json)

A model given as `models:/NAME@alias` or `models:/NAME/VERSION` (or `runs:/...`) is downloaded through
MLflow into a temporary folder first. Writes `metrics.json` and `samples.jsonl` into `output_dir`.
`in_distribution_check` is the paper's check that self-explanations are closer to the policy than
expert solutions: mean per-token log-prob of each under the plain solve prompt, paired on the questions
that have both.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from expo.artifacts import find_model_folder
from expo.config import EvaluateConfig, ExpoConfig, PromptConfig, TrackingConfig
from expo.errors import DataError, ExpoError, ModelError, TrackingError
from expo.io import read_json, read_jsonl, write_json, write_jsonl
from expo.metrics import QuestionResult, aggregate, level_key, mean_interval, sorted_levels
from expo.generation.base import progress_reader
from expo.progress import watch

Verifier = Callable[[list[str], list[str]], list[float | None]]
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
TEST_FILE = "test.jsonl"  # the data stage's test set (data.test_source), when there is one


class _Generator(Protocol):  # expo.generation.Generator, as far as evaluation needs it
    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                 max_new_tokens: int | None = None, seed: int | None = None) -> list[list[Any]]: ...


# ---------------------------------------------------------------------------------------------
# Inputs: evaluation rows and the model folder.


def cap_by_level(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most `limit` rows, taken round-robin across levels in file order, so a cap never drops the
    hardest level (held-out files are often sorted by level)."""
    by_level: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        by_level.setdefault(row.get("level"), []).append(row)
    queues = list(by_level.values())
    picked: list[dict[str, Any]] = []
    while len(picked) < limit and any(queues):
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return picked


def load_eval_rows(data_dir: str | Path, max_questions: int | None = None,
                   file_name: str = "eval.jsonl") -> list[dict[str, Any]]:
    """The rows of `data_dir/eval.jsonl` (the data stage's held-out split), capped at max_questions;
    `file_name="test.jsonl"` reads the test set (data.test_source) instead."""
    path = Path(data_dir) / file_name
    if not path.is_file():
        raise DataError(f"evaluation data {str(path)!r} does not exist (expected the data stage's folder)")
    try:
        rows = read_jsonl(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"evaluation data {str(path)!r} is not valid JSONL: {exc}") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or "answer" not in row:
            raise DataError(f"evaluation data {str(path)!r} line {i + 1}: needs 'question' and 'answer'")
    rows = cap_by_level(rows, max_questions) if max_questions else rows
    if not rows:
        raise DataError(f"evaluation data {str(path)!r} has no rows: nothing to evaluate "
                        "(is data.eval_fraction 0?)")
    return rows


def test_source(data_dir: str | Path) -> str:
    """Where the data stage's test set came from (its stats.json), "" when unknown."""
    stats = Path(data_dir) / "stats.json"
    return str(read_json(stats).get("test", {}).get("source", "")) if stats.is_file() else ""


def resolve_model(source: str, dst: str | Path, tracking: TrackingConfig | None = None) -> Path:
    """A local model folder for `source`: a path as it is, an MLflow URI downloaded under `dst`.

    Registry URIs go through expo.registry (its retries and tracking settings); other MLflow URIs
    (runs:/...) through mlflow.artifacts directly.
    """
    if not source.startswith(MLFLOW_SCHEMES):
        path = Path(source)
        if not (path / "config.json").is_file():
            raise ModelError(f"model {source!r} is not a model folder (no config.json there)")
        return path
    try:
        if source.startswith("models:/"):
            from expo.registry import download_model

            root = Path(download_model(source, dst, tracking=tracking))
        else:
            import mlflow

            root = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst)))
    except ExpoError:
        raise
    except Exception as exc:  # MLflow raises many types; the user needs one line naming the URI
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrackingError(f"cannot download model {source!r} from MLflow: {first}") from None
    return find_model_folder(root, source)


# ---------------------------------------------------------------------------------------------
# Sampling and scoring.


def _completion_fields(completion: Any) -> tuple[str, int, bool]:
    """(text, num_tokens, truncated) of one completion; anything malformed reads as empty."""
    text = getattr(completion, "text", None)
    text = text if isinstance(text, str) else ""
    num_tokens = getattr(completion, "num_tokens", None)
    num_tokens = int(num_tokens) if isinstance(num_tokens, int) else 0
    return text, num_tokens, bool(getattr(completion, "truncated", False))


_Job = tuple[int, str, int, tuple[str, int, bool]]  # (question, "sample" | "greedy", index, fields)


def _flatten(sampled: list[list[Any]], greedy: list[list[Any]] | None, n: int) -> list[_Job]:
    """Every completion as one job, so the verifier sees one batch and its process pool stays busy.
    Missing completions (a skipped prompt) become empty ones: wrong, never a crash."""
    empty = ("", 0, False)
    jobs: list[_Job] = []
    for q, group in enumerate(sampled):
        fields = [_completion_fields(c) for c in list(group)[:n]]
        jobs += [(q, "sample", i, f) for i, f in enumerate(fields + [empty] * (n - len(fields)))]
        if greedy is not None:
            g = list(greedy[q])[:1]
            jobs.append((q, "greedy", 0, _completion_fields(g[0]) if g else empty))
    return jobs


def run_evaluation(generator: _Generator, rows: Sequence[dict[str, Any]], prompts: Sequence[str],
                   cfg: EvaluateConfig, seed: int = 0, verifier: Verifier | None = None,
                   ) -> tuple[list[QuestionResult], list[dict[str, Any]]]:
    """Sample, verify and tally: (one QuestionResult per row, one samples.jsonl row per completion).

    A prompt the generator returns fewer than `cfg.samples` completions for (e.g. an overlong prompt
    it skipped) is padded with wrong, empty samples, so every question has the same n.
    """
    if verifier is None:
        from expo.verify import rewards as verifier
    n = cfg.samples
    sampled = generator.generate(list(prompts), n=n, temperature=cfg.temperature, seed=seed)
    greedy = generator.generate(list(prompts), n=1, temperature=0.0, seed=seed) if cfg.greedy else None
    if len(sampled) != len(rows) or (greedy is not None and len(greedy) != len(rows)):
        raise ModelError(f"generator returned {len(sampled)} prompt groups for {len(rows)} prompts")
    jobs = _flatten(sampled, greedy, n)
    golds = [str(rows[q]["answer"]) for q, _, _, _ in jobs]
    scores = verifier([f[0] for _, _, _, f in jobs], golds)
    results = [QuestionResult(id=str(r.get("id", q)), level=r.get("level"), n=n, c=0,
                              greedy=False if greedy is not None else None) for q, r in enumerate(rows)]
    samples = []
    for (q, kind, i, (text, num_tokens, truncated)), gold, score in zip(jobs, golds, scores, strict=True):
        correct = score is not None and score >= 1.0  # None: the verifier could not judge -> wrong
        res = results[q]
        if kind == "sample":
            res.c += correct
            res.tokens.append(num_tokens)
            res.truncated += truncated
        else:
            res.greedy = correct
        samples.append({"id": res.id, "level": res.level, "kind": kind, "index": i, "answer": gold,
                        "text": text, "num_tokens": num_tokens, "truncated": truncated,
                        "reward": score, "correct": correct})
    return results, samples


def build_metrics(results: Sequence[QuestionResult], samples: Sequence[dict[str, Any]], name: str,
                  model: str, cfg: EvaluateConfig) -> dict[str, Any]:
    """metrics.json: settings, overall and by-level tables, and the per-question tallies (for deltas)."""
    return {
        "name": name, "model": model, "samples": cfg.samples, "temperature": cfg.temperature,
        "greedy_decoding": cfg.greedy, "questions": len(results),
        "unscored": sum(1 for s in samples if s["reward"] is None),
        **aggregate(results),
        "per_question": [r.to_dict() for r in results],
    }


def evaluate_model(model_dir_or_uri: str, data_dir: str | Path, cfg: ExpoConfig, output_dir: str | Path,
                   name: str = "model") -> dict[str, Any]:
    """Evaluate one model on `data_dir/eval.jsonl`; write metrics.json and samples.jsonl; return metrics.

    With a test set (`data_dir/test.jsonl`, from data.test_source) the model is evaluated on it too, in
    full: its metrics are `metrics["test"]` (same shape) and its samples `test_samples.jsonl`.

    Under torchrun (one process per GPU) the processes split the sampling and the verification
    (`expo.generation.sharded`); every one returns the metrics, the main process writes them."""
    rows = load_eval_rows(data_dir, cfg.evaluate.max_questions)  # fail on bad data before loading a model
    has_test = (Path(data_dir) / TEST_FILE).is_file()
    test_rows = load_eval_rows(data_dir, file_name=TEST_FILE) if has_test else []
    from expo.generation import make_generator, resolve_backend
    from expo.generation.sharded import ProcessShards, shared_scores
    from expo.modeling import load_for_generation
    from expo.prompts import solve_prompt
    from expo.train.distributed import is_main_process, join_process_group, world_size
    from expo.verify import rewards

    join_process_group()  # several processes: before a model or an engine takes this process's GPU
    output_dir = Path(output_dir)
    with tempfile.TemporaryDirectory(prefix="expo-eval-model-") as tmp:
        local = resolve_model(str(model_dir_or_uri), tmp, cfg.tracking)
        # vLLM: no model on the GPU it claims; the engine is built here, while the folder exists
        model, tokenizer = load_for_generation(str(local), cfg.model, resolve_backend(cfg.generation))
        generator = make_generator(model if model is not None else str(local), tokenizer, cfg.generation,
                                   trust_remote_code=cfg.model.trust_remote_code)
    verifier = rewards
    if world_size() > 1:
        generator, verifier = ProcessShards(generator), shared_scores(rewards)
    prompts = [solve_prompt(r["question"], tokenizer, cfg.prompts) for r in rows]
    expected = len(prompts) * (cfg.evaluate.samples + (1 if cfg.evaluate.greedy else 0))
    with watch(f"evaluate {name}", _progress_reader(generator, expected)):  # a line every few seconds, tokens moving per decoding step
        results, samples = run_evaluation(generator, rows, prompts, cfg.evaluate, seed=cfg.generation.seed,
                                          verifier=verifier)
    metrics = build_metrics(results, samples, name, str(model_dir_or_uri), cfg.evaluate)
    metrics["split"] = "validation"  # which set these numbers come from (the held-out fraction)
    if test_rows:
        test_prompts = [solve_prompt(r["question"], tokenizer, cfg.prompts) for r in test_rows]
        test_results, test_samples = run_evaluation(generator, test_rows, test_prompts, cfg.evaluate,
                                                    seed=cfg.generation.seed, verifier=verifier)
        metrics["test"] = {**build_metrics(test_results, test_samples, name, str(model_dir_or_uri),
                                           cfg.evaluate), "split": "test", "source": test_source(data_dir)}
        if is_main_process():
            write_jsonl(output_dir / "test_samples.jsonl", test_samples)
    if not is_main_process():
        return metrics
    write_jsonl(output_dir / "samples.jsonl", samples)
    write_json(output_dir / "metrics.json", metrics)
    return metrics


def _progress_reader(generator: Any, expected: int) -> Callable[[], str | None]:
    """The evaluate stage's progress line: samples of the expected sampled + greedy ones, tokens, tok/s."""
    stats = getattr(generator, "stats", None)
    return (lambda: None) if stats is None else progress_reader(stats, expected)


def _headline(summary: dict[str, Any], k: str) -> dict[str, float]:
    return {"pass@1": summary["pass@k"]["1"]["mean"], "pass@k": summary["pass@k"][k]["mean"]}


def summarize_levels(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{"1": {"pass@1": .., "pass@k": ..}, ...} for summary.json; pass@k is at k = the sample count.

    Only numeric levels: questions without a level are in "overall" (see `model_summary`), so a
    consumer can take `max(levels, key=int)` as the hardest level.
    """
    k = str(metrics["samples"])
    return {level: _headline(metrics["by_level"][level], k)
            for level in sorted_levels(metrics["by_level"]) if level.isdigit()}


def model_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """One model's part of summary.json: {"levels": summarize_levels(..), "overall": {"pass@1", "pass@k"},
    "k"} (pass@k's k: evaluate.samples)."""
    k = str(metrics["samples"])
    return {"levels": summarize_levels(metrics), "overall": _headline(metrics["overall"], k), "k": int(k)}


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalars for MLflow (whose metric names cannot hold "@"): pass_at_1, pass_at_8, level3/pass_at_1..."""
    k = str(metrics["samples"])
    out = {"questions": float(metrics["questions"]), "unscored": float(metrics.get("unscored", 0))}
    groups = [("", metrics["overall"])] + [(f"level{lv}/", s) for lv, s in metrics["by_level"].items()]
    for prefix, s in groups:
        for kk in sorted({"1", k}, key=int):
            out[f"{prefix}pass_at_{kk}"] = s["pass@k"][kk]["mean"]
        if s.get("greedy"):
            out[f"{prefix}greedy_accuracy"] = s["greedy"]["mean"]
        out[f"{prefix}mean_tokens"] = s["mean_tokens"]
        out[f"{prefix}truncated_fraction"] = s["truncated_fraction"]
    return out


# ---------------------------------------------------------------------------------------------
# The paper's in-distribution check.


def mean_token_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], texts: Sequence[str],
                        batch_size: int = 4) -> list[float | None]:
    """Mean log-prob per token of each text given its prompt (None for a text with no tokens).

    Prompt and text are tokenised apart, so the scored tokens are exactly the text's. Sequences longer
    than the model's context lose the start of the prompt first, then the end of the text.
    """
    import torch

    from expo.prompts import prompt_ids

    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None) or 10**9
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float | None] = []
    for start in range(0, len(prompts), batch_size):
        pairs = []
        for p, t in zip(prompts[start:start + batch_size], texts[start:start + batch_size]):
            # The prompt's ids are the ones every other path uses (expo.prompts.prompt_ids: one BOS, as
            # TRL's trainers and the generator see it); the text gets no special tokens of its own.
            p_ids = prompt_ids(p, tokenizer)
            t_ids = list(tokenizer(t, add_special_tokens=False)["input_ids"])[: limit - 1]
            p_ids = p_ids[max(0, len(p_ids) + len(t_ids) - limit):]
            if not p_ids and t_ids:  # the first token needs a context to be scored
                p_ids, t_ids = t_ids[:1], t_ids[1:]
            pairs.append((p_ids, t_ids))
        width = max(len(p) + len(t) for p, t in pairs)
        ids = torch.full((len(pairs), width), pad, dtype=torch.long)  # (B, T), right-padded
        mask = torch.zeros_like(ids)
        for b, (p, t) in enumerate(pairs):
            ids[b, : len(p) + len(t)] = torch.tensor(p + t, dtype=torch.long)
            mask[b, : len(p) + len(t)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
        for b, (p, t) in enumerate(pairs):
            if not t:
                out.append(None)
                continue
            # Logits at position j predict token j+1: the text's tokens are predicted from len(p)-1 on.
            rows = logits[b, len(p) - 1: len(p) + len(t) - 1].float().log_softmax(-1)  # (len(t), V)
            target = ids[b, len(p): len(p) + len(t)].to(rows.device)  # (len(t),)
            out.append(rows.gather(-1, target[:, None]).mean().item())
    return out


def _group_stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "mean": None, "lo": None, "hi": None}
    mean, lo, hi = mean_interval(values, bounds=(-math.inf, 0.0))
    return {"count": len(values), "mean": mean, "lo": lo, "hi": hi}


def _paired_stats(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    """Both means over the same questions and the mean of the per-question differences (explanation -
    expert) with a normal interval over questions (None with fewer than two pairs: spread unknown)."""
    diffs = [e - x for e, x in pairs]
    paired: dict[str, Any] = {"pairs": len(pairs), "mean_diff": None, "lo": None, "hi": None}
    if len(diffs) >= 2:
        paired["mean_diff"], paired["lo"], paired["hi"] = mean_interval(diffs, bounds=(-math.inf, math.inf))
    elif diffs:
        paired["mean_diff"] = diffs[0]
    return {"explanation": _group_stats([e for e, _ in pairs]), "expert": _group_stats([x for _, x in pairs]),
            "paired": paired}


def _question_key(record: dict[str, Any]) -> str:
    """Explanation records and data rows meet on the question id, or on the question text without one."""
    return f"id:{record['id']}" if record.get("id") is not None else f"q:{record.get('question')}"


def in_distribution_check(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]],
                          explanations: Sequence[dict[str, Any]], prompts_cfg: PromptConfig,
                          batch_size: int = 4) -> dict[str, Any]:
    """Mean per-token log-prob under `model` of accepted self-explanations vs expert solutions, paired.

    Only questions that have both an accepted self-explanation and a reference solution are compared,
    so the two means cover the same questions (unpaired, easy questions with many accepted explanations
    would pull one side and not the other). Per question: the mean over its accepted explanations vs
    its expert solution, both scored under the plain solve prompt of the question (no hint), as the
    ExPO loss scores explanations. A higher (less negative) value means closer to the policy's own
    distribution; the paper finds self-explanations well above expert solutions. Returns
    {"overall": group, "by_level": {"1": group, ...}, "unpaired": {"explanation_only": n, "expert_only": n}}
    with group = {"explanation": stats, "expert": stats, "paired": {"pairs", "mean_diff", "lo", "hi"}},
    stats = {"count" (questions), "mean", "lo", "hi"} (normal interval over questions).
    """
    from expo.prompts import solve_prompt

    texts: dict[str, list[str]] = {}  # question key -> accepted explanations
    for e in explanations:
        if e.get("accepted") and isinstance(e.get("explanation"), str) and e["explanation"].strip():
            texts.setdefault(_question_key(e), []).append(e["explanation"])
    solved = {_question_key(r): r for r in rows
              if isinstance(r.get("solution"), str) and r["solution"].strip()}
    paired_rows = [r for key, r in solved.items() if key in texts]
    items: list[tuple[int, str, str]] = []  # (index into paired_rows, kind, text)
    for i, r in enumerate(paired_rows):
        items += [(i, "explanation", t) for t in texts[_question_key(r)]] + [(i, "expert", r["solution"])]
    prompts = [solve_prompt(paired_rows[i]["question"], tokenizer, prompts_cfg) for i, _, _ in items]
    scores = mean_token_logprobs(model, tokenizer, prompts, [t for *_, t in items], batch_size)
    per_row: list[dict[str, list[float]]] = [{"explanation": [], "expert": []} for _ in paired_rows]
    for (i, kind, _), score in zip(items, scores, strict=True):
        if score is not None:  # a text with no tokens cannot be scored
            per_row[i][kind].append(score)
    groups: dict[str, list[tuple[float, float]]] = {"overall": []}
    for r, got in zip(paired_rows, per_row, strict=True):
        if got["explanation"] and got["expert"]:
            pair = (math.fsum(got["explanation"]) / len(got["explanation"]), got["expert"][0])
            for key in ("overall", level_key(r.get("level"))):
                groups.setdefault(key, []).append(pair)
    levels = sorted_levels(g for g in groups if g != "overall")
    # How many compared explanations are their question's reference solution word for word: where the
    # check contradicts ExPO's premise, the others are where to look (expo.report says so).
    compared = [(t, r["solution"]) for r in paired_rows for t in texts[_question_key(r)]]
    return {"overall": _paired_stats(groups["overall"]),
            "by_level": {lv: _paired_stats(groups[lv]) for lv in levels},
            "unpaired": {"explanation_only": sum(1 for key in texts if key not in solved),
                         "expert_only": sum(1 for key in solved if key not in texts)},
            "same_text": {"explanations": len(compared),
                          "equal_to_expert": sum(1 for t, x in compared if t.strip() == x.strip())}}


def in_distribution_for(model_dir_or_uri: str, data_dir: str | Path, explanations_dir: str | Path,
                        cfg: ExpoConfig) -> dict[str, Any]:
    """`in_distribution_check` from folders: the explanations stage's explanations.jsonl and the expert
    solutions of the same questions in the data stage's train.jsonl, scored under the given model
    (paired: only questions with both an accepted explanation and a reference solution are compared)."""
    from expo.modeling import load_model

    expl_file = Path(explanations_dir) / "explanations.jsonl"
    train_file = Path(data_dir) / "train.jsonl"
    for path in (expl_file, train_file):
        if not path.is_file():
            raise DataError(f"in-distribution check: {str(path)!r} does not exist")
    explanations = read_jsonl(expl_file)
    explained = {str(e.get("id")) for e in explanations}
    rows = [r for r in read_jsonl(train_file) if str(r.get("id")) in explained]
    with tempfile.TemporaryDirectory(prefix="expo-eval-model-") as tmp:
        model, tokenizer = load_model(str(resolve_model(str(model_dir_or_uri), tmp, cfg.tracking)), cfg.model)
    return in_distribution_check(model, tokenizer, rows, explanations, cfg.prompts)
