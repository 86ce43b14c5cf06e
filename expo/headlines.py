"""The one-line headline each stage's end line carries in `expo run` (rows kept, acceptance, pass@1,
the registered URI), made from what the stage returned: its KFP metrics, its return value, and the
files of its outputs. A stage with nothing to say gets "" (the line still shows done and its time).

    headline("prepare-data", {"rows_in": 2000, "rows_out": 2000, "train_rows": 1600, "eval_rows": 400})
    # '2,000 of 2,000 rows kept (1,600 train, 400 eval)'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from expo.artifacts import read_card

Numbers = dict[str, float]


def _prepare_data(m: Numbers, params: dict[str, Any], files: dict[str, str]) -> str:
    if "rows_out" not in m:
        return ""
    return (f"{int(m['rows_out']):,} of {int(m.get('rows_in', m['rows_out'])):,} rows kept "
            f"({int(m.get('train_rows', 0)):,} train, {int(m.get('eval_rows', 0)):,} eval)")


def _prepare_model(m: Numbers, params: dict[str, Any], files: dict[str, str]) -> str:
    if not files.get("model"):
        return ""
    meta = read_card(files["model"])
    if not meta:
        return ""
    warmup = meta.get("warmup") or {}
    if warmup.get("steps"):
        loss = warmup.get("final_loss")
        return (f"{meta.get('base', '')}: {warmup.get('parameters', 0) / 1e6:.2f}M parameters, warm-up "
                f"{warmup['steps']:,} steps" + (f", final loss {loss:.4f}" if loss is not None else ""))
    return str(meta.get("base", ""))


def _evaluate(m: Numbers, params: dict[str, Any], files: dict[str, str]) -> str:
    if "pass_at_1" not in m:
        return ""
    ks = sorted(int(k.rsplit("_", 1)[1]) for k in m if re.fullmatch(r"pass_at_\d+", k))
    text = f"pass@1 {100 * m['pass_at_1']:.1f}%"  # in %, as the summary table, report and README
    if ks and ks[-1] > 1:
        text += f"  pass@{ks[-1]} {100 * m[f'pass_at_{ks[-1]}']:.1f}%"
    levels = sorted(int(k[5:].split("/")[0]) for k in m if re.fullmatch(r"level\d+/pass_at_1", k))
    if levels:
        text += f"  level {levels[-1]} pass@1 {100 * m[f'level{levels[-1]}/pass_at_1']:.1f}%"
    return text


def _explain(m: Numbers, params: dict[str, Any], files: dict[str, str]) -> str:
    if "acceptance_rate" not in m:
        return ""
    text = f"acceptance {100 * m['acceptance_rate']:.1f}%"
    if "samples" in m:
        text += f" ({int(m.get('passed', 0)):,} of {int(m['samples']):,} samples)"
    if "coverage" in m:
        text += f", coverage {100 * m['coverage']:.0f}%"
    tokens_per_s = m.get("generation/tokens_per_s")
    return text + (f", {tokens_per_s:.0f} tok/s" if tokens_per_s else "")


def _train(m: Numbers, params: dict[str, Any], files: dict[str, str]) -> str:
    if "steps" not in m:
        return ""
    text = f"{int(m['steps'])} steps"
    for shown, keys in (("reward", ("final_metrics/reward", "final_metrics/reward_mean")),
                        ("expo", ("final_metrics/expo_term",))):
        value = next((m[k] for k in keys if k in m), None)
        if value is not None and not (shown == "expo" and value == 0.0):
            text += f", last {shown} {value:.4g}"
    return text


def _report(m: Numbers, params: dict[str, Any], files: dict[str, str]) -> str:
    arm = params.get("Output", "")
    best, base = m.get("best_value"), m.get("base_value")
    known = best is not None and base is not None
    score = f" ({100 * best:.1f}% vs base {100 * base:.1f}% on the gate metric)" if known else ""
    return f"best arm {arm}{score}: registering" if arm else f"no arm beat the base model{score}"


def _register(m: Numbers, params: dict[str, Any], files: dict[str, str]) -> str:
    uri = params.get("Output", "")
    return f"registered {uri}" if uri else ""


def _finish(m: Numbers, params: dict[str, Any], files: dict[str, str]) -> str:
    return "MLflow run closed"


# task name (kfp.local's, without its "-2" suffix) -> headline maker
HEADLINES: dict[str, Callable[[Numbers, dict[str, Any], dict[str, str]], str]] = {
    "prepare-data": _prepare_data, "prepare-model": _prepare_model, "evaluate": _evaluate,
    "generate-explanations": _explain, "train": _train, "report": _report, "register": _register,
    "finish-run": _finish,
}


def headline(task: str, metrics: Numbers, params: dict[str, Any] | None = None,
             files: dict[str, str] | None = None) -> str:
    """The end-line text for `task`; "" when it has none or its numbers are not there (never raises:
    a headline must not fail a run)."""
    maker = HEADLINES.get(task)
    if maker is None:
        return ""
    try:
        return maker(metrics, params or {}, files or {})
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return ""


__all__ = ["HEADLINES", "headline"]
