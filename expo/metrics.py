"""Evaluation statistics: the unbiased pass@k estimator, confidence intervals, by-level tables and a
paired comparison of two models on the same questions. Pure Python (no torch), so it is cheap to test.

What each interval is (all 95 % by default, z = 1.96):
- **Greedy accuracy** is one Bernoulli outcome per question: a Wilson score interval over questions.
- **pass@k** (pass@1 included) is a mean over questions of a per-question estimate in [0, 1] computed from
  n samples. Samples of one question are not independent, so the interval is a normal interval over
  *questions*: mean +- z * sd / sqrt(Q), sd with ddof=1, clipped to [0, 1]. Where that says nothing (fewer
  than two questions, or every question has the same value, e.g. none solved, where the normal interval
  collapses to a point) it is the Wilson interval of the mean over Q questions instead; that one is
  conservative because a variable in [0, 1] with mean p has variance at most p(1 - p).
- **Deltas** between two models are per-question paired differences, with the normal interval (it
  collapses to a point when every difference is the same, e.g. both models solve nothing).

    pass_at_k(4, 1, 2)      # 1 - C(3,2)/C(4,2) = 0.5
    wilson_interval(5, 10)  # (0.2366, 0.7634)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
UNKNOWN_LEVEL = "unknown"  # by-level key for questions without a difficulty level (e.g. GSM8K)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Product form 1 - prod_{i=n-c+1}^{n} (1 - k/i) (Chen et al., 2021): no huge binomials, no overflow.

    >>> pass_at_k(4, 1, 2)
    0.5
    >>> pass_at_k(4, 0, 2), pass_at_k(4, 4, 4)
    (0.0, 1.0)
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion successes / n; (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got {successes} of {n}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The interval always contains p; clamping to it removes rounding (0 of 75 gave lo = 3e-18 > p,
    # a negative error bar that made matplotlib refuse the report's plot).
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def mean_interval(values: Sequence[float], z: float = Z95,
                  bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float, float]:
    """(mean, lo, hi): normal interval over independent units (questions), clipped to `bounds`.

    With fewer than two values the spread is unknown, so the interval is the whole of `bounds`.
    """
    q = len(values)
    if q == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = math.fsum(values) / q
    if q < 2:
        return mean, bounds[0], bounds[1]
    var = math.fsum((v - mean) ** 2 for v in values) / (q - 1)
    half = z * math.sqrt(var / q)
    return mean, max(bounds[0], mean - half), min(bounds[1], mean + half)


@dataclass
class QuestionResult:
    """What evaluation keeps per question: enough to recompute every metric and paired deltas."""

    id: str
    level: int | None
    n: int  # samples drawn at the evaluation temperature
    c: int  # of which verified correct
    greedy: bool | None = None  # greedy answer correct; None when greedy decoding was off
    tokens: list[int] = field(default_factory=list)  # response length of each sample
    truncated: int = 0  # samples cut at max_new_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuestionResult:
        return cls(**{k: d[k] for k in ("id", "level", "n", "c")},
                   greedy=d.get("greedy"), tokens=list(d.get("tokens", [])), truncated=d.get("truncated", 0))


def level_key(level: int | None) -> str:
    """Levels are strings in JSON: 3 -> "3", None -> "unknown"."""
    return UNKNOWN_LEVEL if level is None else str(level)


def sorted_levels(keys: Iterable[str]) -> list[str]:
    """Numeric levels in order, then "unknown"."""
    return sorted(keys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))


def pass_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, lo, hi) of per-question pass@k values: normal over questions, Wilson when that collapses."""
    mean, lo, hi = mean_interval(values, z)
    if len(values) < 2 or all(v == values[0] for v in values):
        lo, hi = wilson_interval(math.fsum(values), len(values), z)
    return mean, lo, hi


def _interval(mean: float, lo: float, hi: float) -> dict[str, float]:
    return {"mean": mean, "lo": lo, "hi": hi}


def summarize(results: Sequence[QuestionResult], z: float = Z95) -> dict[str, Any]:
    """Metrics of one group of questions: pass@k for every k up to n with intervals, greedy, lengths."""
    if not results:
        raise ValueError("summarize needs at least one question")
    n = min(r.n for r in results)  # pass@k is defined up to the smallest sample count
    out: dict[str, Any] = {"questions": len(results), "samples_per_question": n, "pass@k": {}}
    for k in range(1, n + 1):
        per_q = [pass_at_k(r.n, r.c, k) for r in results]
        out["pass@k"][str(k)] = _interval(*pass_interval(per_q, z))
    out["pass@1"] = out["pass@k"]["1"] if n else None
    judged = [r.greedy for r in results if r.greedy is not None]
    if judged:
        correct = sum(judged)
        out["greedy"] = {**_interval(correct / len(judged), *wilson_interval(correct, len(judged), z)),
                         "correct": correct, "questions": len(judged)}
    else:
        out["greedy"] = None
    tokens = [t for r in results for t in r.tokens]
    out["mean_tokens"] = math.fsum(tokens) / len(tokens) if tokens else 0.0
    total = sum(r.n for r in results)
    out["truncated_fraction"] = sum(r.truncated for r in results) / total if total else 0.0
    return out


def aggregate(results: Sequence[QuestionResult], z: float = Z95) -> dict[str, Any]:
    """{"overall": summary, "by_level": {"1": summary, ...}} (levels as strings, in order)."""
    groups: dict[str, list[QuestionResult]] = {}
    for r in results:
        groups.setdefault(level_key(r.level), []).append(r)
    return {"overall": summarize(results, z),
            "by_level": {key: summarize(groups[key], z) for key in sorted_levels(groups)}}


def compare(base: Sequence[QuestionResult], other: Sequence[QuestionResult], k: int | None = None,
            z: float = Z95) -> dict[str, Any]:
    """Paired deltas other - base on the questions both evaluated, overall and by level.

    For each group: pass@1 and pass@k (k defaults to the largest both support) of each model, the
    mean per-question difference and its paired normal interval, and the number of shared questions.
    """
    by_id = {r.id: r for r in base}
    pairs = [(by_id[r.id], r) for r in other if r.id in by_id]
    if not pairs:
        raise ValueError("compare: the two evaluations share no question id")
    k = k or min(min(b.n, o.n) for b, o in pairs)
    groups: dict[str, list[tuple[QuestionResult, QuestionResult]]] = {"overall": pairs}
    for b, o in pairs:
        groups.setdefault(level_key(b.level), []).append((b, o))
    out: dict[str, Any] = {"k": k, "by_level": {}}
    for key in ["overall", *sorted_levels(g for g in groups if g != "overall")]:
        row: dict[str, Any] = {"questions": len(groups[key])}
        for metric, kk in (("pass@1", 1), ("pass@k", k)):
            b_vals = [pass_at_k(b.n, b.c, kk) for b, _ in groups[key]]
            o_vals = [pass_at_k(o.n, o.c, kk) for _, o in groups[key]]
            diffs = [ov - bv for bv, ov in zip(b_vals, o_vals)]
            row[metric] = {"base": math.fsum(b_vals) / len(b_vals), "other": math.fsum(o_vals) / len(o_vals),
                           "delta": _interval(*mean_interval(diffs, z, bounds=(-1.0, 1.0)))}
        if key == "overall":
            out["overall"] = row
        else:
            out["by_level"][key] = row
    return out
