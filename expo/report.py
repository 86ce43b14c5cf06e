"""The pipeline's report: one self-contained HTML page and its Markdown twin, with PNG plots.

Why: a reader of an ExPO run wants one page that answers "did the hardest level move, by how much,
with what uncertainty, and what did training do to get there". The page stands alone (plots are inlined
as base64 data URIs) so it can be mailed or attached to an MLflow run; the PNGs are also written beside
it and `report.md` references them by file name.

How: every section is built once as a list of blocks (heading, paragraph, table, image) and rendered
twice, to HTML (all user text escaped) and to Markdown, so the twins never drift. A section whose input
is missing is omitted. Every section says which file its numbers come from (SOURCES), and `expo run`
copies the PNGs beside its run folder's report.md, so its relative image links resolve there.

    write_report("runs/report", {"base": m0, "exp-grpo": m1}, training={"exp-grpo": steps},
                 explanation_stats=stats, in_distribution=check, title="ExPO on MATH")

Inputs: `evaluations` are metrics.json dicts (expo.evaluate); `training` maps an arm to its
metrics.jsonl rows; the keys looked up in them are in TRAINING_PANELS (first present key wins) and
every key starting with "time/" is a phase of the step-time breakdown.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expo.arm_report import arm_blocks
from expo.blocks import Block, Image, Table
from expo.io import atomic_write_text
from expo.metrics import QuestionResult, compare, sorted_levels

# (panel title, metrics.jsonl keys that may carry it): TRL's names first, then ours.
TRAINING_PANELS: list[tuple[str, tuple[str, ...]]] = [
    ("reward mean", ("reward_mean", "reward", "rewards/mean")),
    ("ExPO term (weight x NLL)", ("expo_term", "expo/term")),
    ("explanation NLL", ("expo_nll", "expo/nll")),
    ("zero-variance group fraction", ("frac_reward_zero_std", "zero_std_fraction")),
    ("explanation acceptance", ("acceptance", "explain/acceptance", "explanation_acceptance")),
    # dynamic sampling (train.filter_groups): shown only for arms that ran with it
    ("groups dropped (dynamic sampling)", ("filter/dropped",)),
    ("refill rounds", ("filter/refill_rounds",)),
    ("all-wrong group share", ("filter/share_wrong",)),
]
# Where each section's numbers come from, said in both reports under the section's heading.
SOURCES: dict[str, str] = {
    "accuracy": "Source: each evaluate step's metrics.json (its samples, judged by expo.verify); "
                "samples.jsonl beside it holds every completion.",
    "deltas": "Source: the per-question tallies (per_question) of the same metrics.json files.",
    "pass_at_k": "Source: metrics.json's overall pass@k, for every k up to the number of samples.",
    "training": "Source: each arm's metrics.jsonl (the train step's output, one line per optimizer step); "
                "'last' is the final step's value.",
    "timing": "Source: the time/* keys of each arm's metrics.jsonl (the trainer's named phases).",
    "explanations": "Source: the generate-explanations step's stats.json; explanations.jsonl holds every "
                    "sample with the reason it was not kept.",
    "in_distribution": "Source: the generate-explanations step's in_distribution.json, scored with the "
                       "model that sampled the explanations.",
}
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
STEP_TIME_KEY = "time/step"  # a step's whole wall time; the other "time/" keys are its phases
ACCEPTANCE_KEYS = ("acceptance_rate", "acceptance")  # expo.explain writes acceptance_rate
SOLVE_RATE_KEYS = ("solve_rate", "unconditioned_solve_rate")


# ---------------------------------------------------------------------------------------------
# Blocks and their two renderings.


# Table, Image and Block: expo.blocks (sections outside this module build them too, expo.arm_report).


def _md_cell(text: str) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _source_note(section: str) -> Block:
    return ("p", SOURCES[section])


def image_links(markdown: str) -> list[str]:
    """The local files a Markdown text shows as images (`![alt](file)`), in order, without URLs."""
    return [m for m in _IMAGE_LINK.findall(markdown) if ":" not in m and not m.startswith("/")]


def render_markdown(title: str, blocks: Sequence[Block]) -> str:
    out = [f"# {_md_cell(title)}", ""]
    for kind, value in blocks:
        if kind == "h2":
            out += [f"## {_md_cell(value)}", ""]
        elif kind == "p":
            out += [_md_cell(value), ""]
        elif kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in value.header) + " |")
            out.append("|" + "---|" * len(value.header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in value.rows]
            out.append("")
        elif kind == "img":
            out += [f"![{_md_cell(value.alt)}]({value.file})", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%}
p{color:#555}"""


def render_html(title: str, blocks: Sequence[Block]) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    for kind, value in blocks:
        if kind in ("h2", "p"):
            out.append(f"<{kind}>{esc(value)}</{kind}>")
        elif kind == "table":
            out.append(f'<table id="{esc(value.id)}"><thead><tr>'
                       + "".join(f"<th>{esc(h)}</th>" for h in value.header) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in value.rows]
            out.append("</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(value.png).decode("ascii")
            out.append(f'<img src="data:image/png;base64,{data}" alt="{esc(value.alt)}">')
    out.append("</body></html>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Formatting and plotting helpers.


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(d: dict[str, float] | None) -> str:
    """A mean with its interval in percent: "51.2% [40.1, 62.3]"."""
    if not d or d.get("mean") is None:
        return "-"
    return f"{100 * d['mean']:.1f}% [{100 * d['lo']:.1f}, {100 * d['hi']:.1f}]"


def _signed_ci(d: dict[str, float]) -> str:
    return f"{100 * d['mean']:+.1f} pts [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _figure(ncols: int = 1, width: float = 7.0, height: float = 3.6) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in pods
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), squeeze=False)


def _grid(panels: int, ncols: int = 3, width: float = 3.6, height: float = 2.9) -> tuple[Any, list[Any]]:
    """A figure of `panels` axes in rows of at most `ncols` (never a long strip); unused cells hidden."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[panels:]:
        ax.set_visible(False)
    for ax in flat[:panels]:
        ax.grid(alpha=0.3)
    return fig, flat[:panels]


# One colour per model (base, then arms in pipeline order) in every plot of a report.
_PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
_MODEL_ORDER = ("base", "grpo", "exp-grpo", "grpo-sft", "exp-dpo", "sdft")


def model_colour(name: str) -> str:
    """The colour of model `name` in every plot: fixed per name, so an arm never changes colour."""
    if name in _MODEL_ORDER:
        return _PALETTE[_MODEL_ORDER.index(name)]
    return _PALETTE[len(_MODEL_ORDER) + sum(map(ord, name)) % (len(_PALETTE) - len(_MODEL_ORDER))]


def _pass_at(summary: dict[str, Any], k: int) -> dict[str, float] | None:
    return summary.get("pass@k", {}).get(str(k))


# ---------------------------------------------------------------------------------------------
# Sections.


def accuracy_section(evaluations: dict[str, dict[str, Any]]) -> list[Block]:
    header = ["model", "level", "questions", "pass@1 [95% CI]", "pass@k [95% CI]", "k", "greedy [95% CI]",
              "mean tokens", "truncated"]
    rows = []
    for name, m in evaluations.items():
        k = m.get("samples", 1)
        groups = [("all", m["overall"])] + [(lv, m["by_level"][lv]) for lv in sorted_levels(m["by_level"])]
        for level, s in groups:
            rows.append([name, level, str(s["questions"]), _ci(_pass_at(s, 1)), _ci(_pass_at(s, k)), str(k),
                         _ci(s.get("greedy")), f"{s.get('mean_tokens', 0):.1f}",
                         _pct(s.get("truncated_fraction"))])
    blocks: list[Block] = [("h2", "Accuracy by level"),
                           ("p", "pass@1 and pass@k: unbiased estimator from k samples per question; "
                                 "95% interval normal over questions (Wilson where every question scores "
                                 "the same). Greedy: Wilson 95% interval."),
                           _source_note("accuracy"),
                           ("table", Table("accuracy", header, rows)),
                           ("img", Image("accuracy_by_level.png", _accuracy_plot(evaluations),
                                         "pass@1 by level"))]
    return blocks


def _accuracy_plot(evaluations: dict[str, dict[str, Any]]) -> bytes:
    """Grouped bars: pass@1 per level, one bar per model, 95% interval as error bars."""
    fig, axes = _figure(width=8)
    ax = axes[0][0]
    levels = sorted_levels({lv for m in evaluations.values() for lv in m["by_level"]})
    width = 0.8 / max(1, len(evaluations))
    for j, (name, m) in enumerate(evaluations.items()):
        xs, ys, errs = [], [], [[], []]
        for i, lv in enumerate(levels):
            p1 = _pass_at(m["by_level"][lv], 1) if lv in m["by_level"] else None
            if p1:
                xs.append(i + j * width)
                ys.append(p1["mean"])
                errs[0].append(p1["mean"] - p1["lo"])
                errs[1].append(p1["hi"] - p1["mean"])
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=name, color=model_colour(name))
    ax.grid(axis="y", alpha=0.3)
    ax.set_xticks([i + width * (len(evaluations) - 1) / 2 for i in range(len(levels))], levels)
    ax.set(xlabel="level", ylabel="pass@1", ylim=(0, 1.05), title="pass@1 by level (95% CI)")
    ax.legend(fontsize=8)
    return _png(fig)


def _base_name(evaluations: dict[str, dict[str, Any]]) -> str:
    return "base" if "base" in evaluations else next(iter(evaluations))


def delta_section(evaluations: dict[str, dict[str, Any]], against: str | None = None) -> list[Block]:
    """Paired changes of every model against `against` (default the base model), the base model left
    out of a comparison against another arm (it has its own)."""
    base = against or _base_name(evaluations)
    if base not in evaluations:
        return []
    b = evaluations[base]
    rows = []
    for name, m in evaluations.items():
        if name == base or (against is not None and name == _base_name(evaluations)):
            continue
        if b.get("per_question") and m.get("per_question"):
            cmp = compare([QuestionResult.from_dict(d) for d in b["per_question"]],
                          [QuestionResult.from_dict(d) for d in m["per_question"]])
            for level, row in [("all", cmp["overall"])] + list(cmp["by_level"].items()):
                rows.append([name, level, str(row["questions"]), _signed_ci(row["pass@1"]["delta"]),
                             _signed_ci(row["pass@k"]["delta"]), str(cmp["k"])])
        else:  # no per-question tallies: unpaired difference of means, no interval
            k = min(b.get("samples", 1), m.get("samples", 1))
            for level in ["all", *sorted_levels(set(b["by_level"]) & set(m["by_level"]))]:
                sb = b["overall"] if level == "all" else b["by_level"][level]
                sm = m["overall"] if level == "all" else m["by_level"][level]
                d1 = _pass_at(sm, 1)["mean"] - _pass_at(sb, 1)["mean"]
                dk = _pass_at(sm, k)["mean"] - _pass_at(sb, k)["mean"]
                rows.append([name, level, str(sm["questions"]), f"{100 * d1:+.1f} pts",
                             f"{100 * dk:+.1f} pts", str(k)])
    if not rows:
        return []
    return [("h2", f"Change against {base}"),
            ("p", f"Per-question paired differences against {base} on shared questions, "
                  "normal 95% interval."),
            _source_note("deltas"),
            ("table", Table("deltas" if against is None else f"deltas_vs_{base}",
                            ["model", "level", "questions", "delta pass@1", "delta pass@k", "k"], rows))]


def pass_at_k_section(evaluations: dict[str, dict[str, Any]]) -> list[Block]:
    kmax = max(m.get("samples", 1) for m in evaluations.values())
    rows = [[name] + [_pct((_pass_at(m["overall"], k) or {}).get("mean")) for k in range(1, kmax + 1)]
            for name, m in evaluations.items()]
    fig, axes = _figure()
    ax = axes[0][0]
    for name, m in evaluations.items():
        ks = sorted(int(k) for k in m["overall"]["pass@k"])
        ax.plot(ks, [m["overall"]["pass@k"][str(k)]["mean"] for k in ks], marker="o", label=name,
                color=model_colour(name))
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)  # k is a count
    ax.set(xlabel="k", ylabel="pass@k", ylim=(0, 1.05), title="pass@k (all levels)")
    ax.legend(fontsize=8)
    return [("h2", "pass@k"), _source_note("pass_at_k"),
            ("table", Table("pass_at_k", ["model"] + [f"k={k}" for k in range(1, kmax + 1)], rows)),
            ("img", Image("pass_at_k.png", _png(fig), "pass@k curves"))]


def _series(steps: Sequence[dict[str, Any]], keys: tuple[str, ...]) -> tuple[list[float], list[float]]:
    key = next((k for k in keys if any(isinstance(s.get(k), (int, float)) for s in steps)), None)
    if key is None:
        return [], []
    pts = [(s.get("step", i + 1), s[key]) for i, s in enumerate(steps)
           if isinstance(s.get(key), (int, float)) and math.isfinite(s[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def training_section(training: dict[str, list[dict[str, Any]]]) -> list[Block]:
    panels = [(title, keys) for title, keys in TRAINING_PANELS
              if any(_series(steps, keys)[0] for steps in training.values())]
    if not panels:
        return []
    fig, axes = _grid(len(panels))
    rows = []
    for arm, steps in training.items():
        row = [arm, str(len(steps))]
        for ax, (title, keys) in zip(axes, panels):
            xs, ys = _series(steps, keys)
            if xs:
                ax.plot(xs, ys, label=arm, color=model_colour(arm), marker="o" if len(xs) < 20 else None,
                        markersize=3)
            row.append(f"{ys[-1]:.4g}" if ys else "-")
        rows.append(row)
    for ax, (title, _) in zip(axes, panels):
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize=7)
    return [("h2", "Training"), _source_note("training"),
            ("table", Table("training", ["arm", "steps"] + [f"last {t}" for t, _ in panels], rows)),
            ("img", Image("training_curves.png", _png(fig), "training curves"))]


# (column, how to read it from a step's filter/* keys): counts of the batch's groups by kind.
_GROUP_KINDS = (("all-correct", "filter/share_correct"), ("all-wrong", "filter/share_wrong"),
                ("mixed", "filter/share_mixed"))


MAX_FILTER_ROWS = 10  # per arm: longer runs are summed over windows of steps, so the table stays short


def group_filter_section(training: dict[str, list[dict[str, Any]]]) -> list[Block]:
    """Dynamic sampling step by step (train.filter_groups): the groups each step generated (over all
    its rounds) by kind, the groups dropped and the refill rounds. Only arms that logged `filter/groups`.
    An arm with more than MAX_FILTER_ROWS steps gets one row per window of steps, its counts summed."""
    rows, windowed = [], False
    for arm, steps in training.items():
        counted = [(s.get("step", i + 1), _group_counts(s)) for i, s in enumerate(steps)
                   if isinstance(s.get("filter/groups"), (int, float))]
        width = -(-len(counted) // MAX_FILTER_ROWS)  # ceil: steps per row
        windowed = windowed or width > 1
        for at in range(0, len(counted), max(width, 1)):
            window = counted[at:at + width]
            first, last = window[0][0], window[-1][0]
            sums = [sum(c[k] for _, c in window) for k in range(len(window[0][1]))]
            rows.append([arm, f"{first}" if first == last else f"{first}-{last}", *(f"{v:d}" for v in sums)])
    if not rows:
        return []
    summed = f" Runs of more than {MAX_FILTER_ROWS} steps are summed over windows of steps." if windowed else ""
    return [("h2", "Dynamic sampling, per step"),
            ("p", "Groups each step generated, over all its rounds, by kind (all-correct groups are "
                  "dropped: no signal for either term; all-wrong groups keep their ExPO term), the groups "
                  "dropped and the generation rounds added to refill the batch." + summed),
            _source_note("training"),
            ("table", Table("group_filter", ["arm", "step", "groups generated", *[k for k, _ in _GROUP_KINDS],
                                             "dropped", "refill rounds"], rows))]


def _group_counts(step: dict[str, Any]) -> list[int]:
    """[generated, all-correct, all-wrong, mixed, dropped, refill rounds] of one step's filter/* keys
    (the kinds are logged as shares of the generated groups)."""
    groups = step["filter/groups"]
    kinds = [round(groups * step.get(key, 0.0)) for _, key in _GROUP_KINDS]
    return [round(groups), *kinds, round(step.get("filter/dropped", 0)),
            round(step.get("filter/refill_rounds", 0))]


def _phase_means(steps: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean seconds per step of each phase; "other" is the step time the named phases leave out."""
    def mean(key: str) -> float | None:
        vals = [s[key] for s in steps if isinstance(s.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else None

    phases = sorted({k for s in steps for k in s if k.startswith("time/") and k != STEP_TIME_KEY})
    table = {ph[len("time/"):]: m for ph in phases if (m := mean(ph)) is not None}
    total = mean(STEP_TIME_KEY)
    if total is not None and total > sum(table.values()):
        table["other"] = total - sum(table.values())
    return table


def timing_section(training: dict[str, list[dict[str, Any]]]) -> list[Block]:
    """Mean seconds per step of each "time/<phase>" key, per arm, as a stacked bar."""
    means = {arm: table for arm, steps in training.items() if (table := _phase_means(steps))}
    if not means:
        return []
    rows = []
    for arm, table in means.items():
        total = sum(table.values()) or 1.0
        rows += [[arm, ph, f"{sec:.3f}", _pct(sec / total)] for ph, sec in table.items()]
    phases = list(dict.fromkeys(ph for table in means.values() for ph in table))
    fig, axes = _figure(width=6)
    ax = axes[0][0]
    bottom = [0.0] * len(means)
    for ph in phases:
        vals = [table.get(ph, 0.0) for table in means.values()]
        ax.bar(list(means), vals, bottom=bottom, label=ph)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set(ylabel="seconds per step (mean)", title="Where does a step's time go")
    ax.legend(fontsize=7)
    return [("h2", "Step time by phase"),
            ("p", "Mean wall time per step of each named phase; 'other' is the rest of the step."),
            _source_note("timing"),
            ("table", Table("timing", ["arm", "phase", "mean s/step", "share"], rows)),
            ("img", Image("step_time.png", _png(fig), "step time by phase"))]


def _pick(d: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    return next((float(d[k]) for k in keys if isinstance(d.get(k), (int, float))), None)


def explanation_section(stats: dict[str, Any]) -> list[Block]:
    by_level = stats.get("by_level") or {}
    levels = sorted_levels(by_level)
    overall = stats.get("overall") or stats  # expo.explain puts the overall rates at the top level

    # The solve rate needs explain.solve_rate_samples > 0: without it the column would be all "-".
    solved = any(_pick(d, SOLVE_RATE_KEYS) is not None for d in [overall, *by_level.values()])

    def row(name: str, d: dict[str, Any]) -> list[str]:
        count = lambda key: str(d[key]) if isinstance(d.get(key), int) else "-"  # noqa: E731
        cells = [name, count("questions"), count("samples"), _pct(_pick(d, ACCEPTANCE_KEYS)),
                 _pct(_pick(d, ("coverage",)))]
        return cells + ([_pct(_pick(d, SOLVE_RATE_KEYS))] if solved else [])

    rows = [row(lv, by_level[lv]) for lv in levels] + [row("all", overall)]
    meaning = ("Acceptance: share of answer-conditioned samples that pass the verifier and filters. Coverage: "
               "share of questions left with an explanation.")
    meaning += (" Unconditioned solve rate: share of samples of the plain solve prompt that are correct, on "
                "the same questions; the gap between acceptance and solve rate is what the hint buys."
                if solved else " (No unconditioned solve rate: explain.solve_rate_samples is 0.)")
    header = ["level", "questions", "samples", "acceptance", "coverage"] + (
        ["unconditioned solve rate"] if solved else [])
    blocks: list[Block] = [("h2", "Self-explanations"), ("p", meaning), _source_note("explanations"),
                           ("table", Table("explanations", header, rows))]
    if levels:
        fig, axes = _figure(width=6)
        ax = axes[0][0]
        xs = range(len(levels))
        width = 0.4 if solved else 0.6
        ax.bar([x - (0.2 if solved else 0.0) for x in xs],
               [_pick(by_level[lv], ACCEPTANCE_KEYS) or 0 for lv in levels], width, label="explanation acceptance")
        if solved:
            ax.bar([x + 0.2 for x in xs], [_pick(by_level[lv], SOLVE_RATE_KEYS) or 0 for lv in levels], width,
                   label="unconditioned solve rate")
        ax.set_xticks(list(xs), levels)
        ax.set(xlabel="level", ylim=(0, 1.05), title="Acceptance vs solve rate" if solved else "Acceptance")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        blocks.append(("img", Image("explanations.png", _png(fig), "explanation acceptance by level")))
    return blocks + reject_reason_section(stats, levels)


def reject_reason_section(stats: dict[str, Any], levels: list[str]) -> list[Block]:
    """Why samples were not kept: one row per reason, overall and by level (when the stats have it)."""
    overall = stats.get("reject_reasons") or {}
    if not overall:
        return []
    by_level = stats.get("by_level") or {}
    per_level = [by_level[lv].get("reject_reasons") or {} for lv in levels]
    show_levels = any(per_level)
    header = ["reason", "all"] + ([f"level {lv}" for lv in levels] if show_levels else [])
    rows = [[reason, str(count)] + ([str(p.get(reason, 0)) for p in per_level] if show_levels else [])
            for reason, count in sorted(overall.items(), key=lambda kv: -kv[1])]
    return [("p", "Samples not kept, by reason (a sample has one reason: the first filter it fails)."),
            ("table", Table("reject_reasons", header, rows))]


def _lp(s: dict[str, Any] | None) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}] (n={s['count']})"


def in_distribution_reading(check: dict[str, Any], note: str = "") -> str:
    """What the check says, when it contradicts ExPO's premise (self-explanations less likely under the
    policy than expert solutions): the share that are the expert text itself, where to look, and `note`
    (a task-specific reason the caller knows). Empty when the premise holds or nothing was compared."""
    overall = check.get("overall", {})
    e, x = overall.get("explanation"), overall.get("expert")
    if not (e and x and e.get("mean") is not None and x.get("mean") is not None) or e["mean"] >= x["mean"]:
        return ""
    same = check.get("same_text") or {}
    text = (f"Here self-explanations score below expert solutions ({e['mean'] - x['mean']:+.3f} per token): the "
            "premise does not hold for this model and data. The check scores each text under the plain "
            "solve prompt, so what lowers an explanation is text the policy, unaided, would not write.")
    if same.get("explanations"):
        text += (f" {same['equal_to_expert']} of {same['explanations']} compared explanations are the reference "
                 "solution word for word; the others (explanations.jsonl) hold the difference.")
    return f"{text} {note}".strip()


def in_distribution_section(check: dict[str, Any], note: str = "") -> list[Block]:
    rows = []
    for level, g in [("all", check.get("overall", {}))] + list(check.get("by_level", {}).items()):
        e, x = g.get("explanation"), g.get("expert")
        gap = (f"{e['mean'] - x['mean']:+.3f}" if e and x and e.get("mean") is not None
               and x.get("mean") is not None else "-")
        rows.append([level, _lp(e), _lp(x), gap])
    return [("h2", "In-distribution check"),
            ("p", "Mean per-token log-prob under the policy, scored under the plain solve prompt. "
                  "Self-explanations above expert solutions means they are closer to the policy."),
            _source_note("in_distribution"),
            ("table", Table("in_distribution", ["level", "self-explanations", "expert solutions",
                                                "gap (explanation - expert)"], rows))] + (
        [("p", reading)] if (reading := in_distribution_reading(check, note)) else [])


def split_note(evaluations: dict[str, dict[str, Any]]) -> list[Block]:
    """Which set the tables above come from, when the evaluation says (expo.evaluate sets "split")."""
    if not any(m.get("split") == "validation" for m in evaluations.values()):
        return []
    return [("p", "Set: the validation split (the held-out data.eval_fraction of the training data); "
                  "the registration gate decides on it." +
             (" Test-set numbers are in their own section below." if any("test" in m for m in
                                                                         evaluations.values()) else ""))]


def test_section(evaluations: dict[str, dict[str, Any]]) -> list[Block]:
    """The same accuracy table and plot on the test set (data.test_source), apart from validation."""
    tested = {name: m["test"] for name, m in evaluations.items() if "test" in m}
    if not tested:
        return []
    source = next(iter(tested.values())).get("source") or "data.test_source"
    blocks: list[Block] = []
    for kind, value in accuracy_section(tested):
        if kind == "h2":
            value = f"Test set: accuracy by level ({source})"
        elif kind == "table":
            value = Table("test_accuracy", value.header, value.rows)
        elif kind == "img":
            value = Image("test_accuracy_by_level.png", value.png, f"test set ({source}): pass@1 by level")
        blocks.append((kind, value))
    return blocks


# ---------------------------------------------------------------------------------------------


def validation_section(validation: dict[str, list[dict[str, Any]]] | None,
                       checkpoint: dict[str, Any] | None) -> list[Block]:
    """The learning curve of validation during training (expo.train.validation): pass@1 by level per
    arm and step, and which checkpoint of the chosen arm was evaluated and registered."""
    blocks: list[Block] = []
    curves = {arm: rows for arm, rows in (validation or {}).items() if rows}
    if curves:
        levels = sorted({lv for rows in curves.values() for r in rows for lv in r["levels"]}, key=int)
        fig, axes = _figure(ncols=len(curves), width=4.2 * len(curves))
        table = []
        for ax, (arm, rows) in zip(axes[0], curves.items()):
            for lv in levels:
                pts = [(r["step"], r["levels"][lv]) for r in rows if lv in r["levels"]]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"L{lv}")
            ax.set(xlabel="step", ylabel="validation pass@1", ylim=(-0.02, 1.02), title=arm)
            ax.legend(fontsize=7)
            table += [[arm, str(r["step"])] + [_pct(r["levels"].get(lv)) for lv in levels]
                      + [_pct(r["overall"])] for r in rows]
        blocks += [("h2", "Validation during training"),
                   ("p", "pass@1 by level on a stratified subset of the validation split, every "
                         "train.eval_every steps and at the last step."),
                   ("table", Table("validation", ["arm", "step"] + [f"L{lv}" for lv in levels] + ["all"],
                                   table)),
                   ("img", Image("validation_curve.png", _png(fig), "validation pass@1 by level and step"))]
    if checkpoint:
        best = checkpoint.get("chosen") == "best"
        how = f"the best validated step on {checkpoint.get('metric')}" if best else "the last step"
        verb = ("registered" if checkpoint.get("register")
                else "evaluated (not registered: it did not beat base)")
        blocks += [("p", f"Checkpoint {verb}: arm {checkpoint['arm']}, step {checkpoint['step']} of "
                         f"{checkpoint['final_step']} ({how}).")]
    return blocks


# The headline's registration line until the register step finishes: it replaces the line in the
# run's report with the registered version (`complete_headline`).
REGISTRATION_PENDING = "Registered model: named here once the register step has run."


def _points(value: float) -> str:
    return f"{100 * value:+.1f} points"


def headline_section(headline: dict[str, Any]) -> list[Block]:
    """The answer first: the best arm and its margin over the base model on the gate metric, the gate's
    decision, the registered model (completed by the register step) and the MLflow run."""
    metric, best, base = headline["metric"], headline.get("best_value"), headline.get("base_value")
    lines = []
    if headline.get("best_arm") and best is not None and not math.isnan(best):
        versus = (f" vs base {_pct(base)} ({_points(best - base)})"
                  if base is not None and not math.isnan(base) else "")
        lines.append(f"Best arm: {headline['best_arm']}, {metric} {_pct(best)}{versus}.")
    else:
        lines.append(f"Best arm: none (no trained arm has a value of {metric}).")
    if headline.get("register"):
        lines.append(f"Gate: passed (better than base by more than register.gate_margin = "
                     f"{headline.get('margin', 0.0):g}): the best arm is registered with alias candidate; champion "
                     "moves only past the current champion.")
        lines.append(REGISTRATION_PENDING)
    else:
        lines.append(f"Gate: not passed (no arm beat base by more than register.gate_margin = "
                     f"{headline.get('margin', 0.0):g}); nothing is registered.")
    if headline.get("mlflow_run"):
        lines.append(f"MLflow: parent run {headline['mlflow_run']} in experiment "
                     f"{headline.get('experiment', 'expo')!r} ({headline.get('tracking_uri', '')}).")
    return [("h2", "Headline")] + [("p", line) for line in lines]


def complete_headline(folder: str | Path, registered: str) -> list[Path]:
    """Put the registered model into the headline of the reports in `folder` (register step); returns
    the files changed."""
    changed = []
    for name in ("report.md", "report.html"):
        path = Path(folder) / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if REGISTRATION_PENDING in text:
                done = f"Registered model: {registered}."
                atomic_write_text(path, text.replace(REGISTRATION_PENDING, html.escape(done) if name.endswith(
                    ".html") else done))
                changed.append(path)
    return changed


def build_blocks(evaluations: dict[str, dict[str, Any]] | None, training: dict[str, list[dict]] | None,
                 explanation_stats: dict[str, Any] | None, in_distribution: dict[str, Any] | None,
                 validation: dict[str, list[dict[str, Any]]] | None = None,
                 checkpoint: dict[str, Any] | None = None,
                 headline: dict[str, Any] | None = None, in_distribution_note: str = "") -> list[Block]:
    blocks: list[Block] = headline_section(headline) if headline else []
    if evaluations:
        blocks += accuracy_section(evaluations) + split_note(evaluations) + delta_section(evaluations)
        blocks += delta_section(evaluations, against="grpo")  # every other arm against plain GRPO
        blocks += pass_at_k_section(evaluations) + test_section(evaluations)
    if training:
        blocks += training_section(training) + group_filter_section(training) + timing_section(training)
    blocks += arm_blocks(evaluations or {}, training or {})  # the arms compared with each other
    blocks += validation_section(validation, checkpoint)
    if explanation_stats:
        blocks += explanation_section(explanation_stats)
    if in_distribution:
        blocks += in_distribution_section(in_distribution, in_distribution_note)
    return blocks


def write_report(output_dir: str | Path, evaluations: dict[str, dict[str, Any]] | None,
                 training: dict[str, list[dict[str, Any]]] | None = None,
                 explanation_stats: dict[str, Any] | None = None,
                 in_distribution: dict[str, Any] | None = None, title: str = "ExPO report",
                 validation: dict[str, list[dict[str, Any]]] | None = None,
                 checkpoint: dict[str, Any] | None = None, headline: dict[str, Any] | None = None,
                 in_distribution_note: str = "") -> Path:
    """Write report.html (self-contained), report.md and the PNGs into output_dir; return the HTML path.
    `validation`: each arm's validation.jsonl rows; `checkpoint`: the chosen arm's selection.json with
    "arm" and "register" (which step was evaluated and registered); `headline`: the gate's decision
    (`headline_section`); `in_distribution_note`: a task's own reading of a check against the premise."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(evaluations, training, explanation_stats, in_distribution, validation, checkpoint,
                          headline, in_distribution_note)
    if not blocks:
        blocks = [("p", "Nothing to report: no evaluation, training, explanation or in-distribution input.")]
    for kind, value in blocks:
        if kind == "img":
            (out / value.file).write_bytes(value.png)
    atomic_write_text(out / "report.md", render_markdown(title, blocks))
    atomic_write_text(out / "report.html", render_html(title, blocks))
    return out / "report.html"
