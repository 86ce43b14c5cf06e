"""The pipeline's two gates, side by side: both compare one number, the gate metric, with a margin.

1. **Best arm vs base** (the report stage): the best trained arm on `register.gate_metric` is
   registered only if it beats the base model by more than `register.gate_margin`. Arms whose value is
   NaN (the metric is missing from their evaluation) are not candidates; ties between arms go to the
   first name in sorted order, so the choice does not depend on the order evaluations arrived in. A NaN
   base value (the base model has no such number) cannot be beaten or matched: any arm with a value
   registers.
2. **Candidate vs champion** (the register stage, in expo.registry): alias `champion` moves to the
   newly registered version only if it beats the current champion by more than the same margin, or if
   nobody holds the alias. A missing value on either side proves nothing, so the champion stays.

"Beats by more than the margin" is strict in both: `value > reference + margin`, so a tie at the
margin keeps what there is. Pure functions on plain numbers; expo.stages and expo.registry fetch them.

    gate_value({"levels": {"1": {"pass@1": 0.9}, "3": {"pass@1": 0.2}}}, "hardest_level_pass@1")  # 0.2
    best_arm_vs_base(summary["models"], "hardest_level_pass@1", 0.0)
    candidate_vs_champion(4, 2, candidate_value=0.31, champion_value=0.30, margin=0.0)  # "promoted"
"""

from __future__ import annotations

import math
from typing import Any

# What gate 2 decides (also the `expo.gate.decision` tag on the candidate version).
PROMOTED = "promoted"
KEPT = "kept"  # not better by more than the margin
NO_METRIC = "no-metric"  # a value is missing: no improvement can be shown
ALREADY_CHAMPION = "already-champion"


def beats(value: float, reference: float, margin: float) -> bool:
    """Whether `value` beats `reference` by more than `margin` (strictly; False when either is NaN)."""
    return value > reference + margin


def gate_value(model_summary: dict[str, Any], metric: str) -> float:
    """The gate metric of one model's summary: `hardest_level_<m>` (the highest level's `<m>`) or
    `overall_<m>`; NaN when the summary does not have it."""
    levels = model_summary.get("levels", {})
    if metric.startswith("hardest_level_") and levels:
        hardest = max(levels, key=int)
        return float(levels[hardest].get(metric.removeprefix("hardest_level_"), math.nan))
    if metric.startswith("overall_"):
        return float(model_summary.get("overall", {}).get(metric.removeprefix("overall_"), math.nan))
    return math.nan


def best_arm_vs_base(models: dict[str, dict[str, Any]], metric: str, margin: float) -> dict[str, Any]:
    """Gate 1 on `models` (name -> summary, "base" among them): {"best_arm", "best_value",
    "base_value", "register"}; best_arm is "" (and register False) when no arm has a value."""
    base_value = gate_value(models["base"], metric)
    arms = {name: gate_value(m, metric) for name, m in models.items() if name != "base"}
    arms = {name: value for name, value in arms.items() if not math.isnan(value)}
    if not arms:
        return {"best_arm": "", "best_value": math.nan, "base_value": base_value, "register": False}
    best = max(sorted(arms), key=arms.get)
    register = math.isnan(base_value) or beats(arms[best], base_value, margin)
    return {"best_arm": best, "best_value": arms[best], "base_value": base_value, "register": register}


def candidate_vs_champion(candidate: int, champion: int | None, candidate_value: float | None,
                          champion_value: float | None, margin: float) -> str:
    """Gate 2: what happens to alias `champion` (one of PROMOTED, KEPT, NO_METRIC, ALREADY_CHAMPION)."""
    if champion == candidate:
        return ALREADY_CHAMPION
    if candidate_value is None or (champion is not None and champion_value is None):
        return NO_METRIC  # cannot prove an improvement: the champion stays
    if champion is None or beats(candidate_value, champion_value, margin):  # type: ignore[arg-type]
        return PROMOTED
    return KEPT


__all__ = ["ALREADY_CHAMPION", "KEPT", "NO_METRIC", "PROMOTED", "beats", "best_arm_vs_base",
           "candidate_vs_champion", "gate_value"]
