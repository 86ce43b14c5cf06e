"""Render the results pages' tables from the JSON files the measuring commands wrote, so no figure is typed.

    .venv/bin/python bench/results_pages.py          # rewrite every block in README.md and docs/*.md
    .venv/bin/python bench/results_pages.py --check  # exit 1 when a block differs from its file

A block is the text between `<!-- results:NAME begin ... -->` and `<!-- results:NAME end -->`; it is
rendered from docs/results/NAME.json by the renderer for NAME (RENDERERS). Each rendering names the
command that wrote the file, the commit and the machine. Which command writes which file:

- embedded-default-seeds.json: bench/toy_sweep.py, one run per seed and arm (the file's `command`);
- privileged-embedded.json: bench/privileged_sweep.py (base, GRPO, ExP-GRPO, SDFT, ExP-GRPO + hints);
- privileged-ladder.json: bench/privileged_ladder.py (the same arms on the SmolLM2 ladder recipe);
- smollm2-135m-*.json: bench/recipe_numbers.py on a recipe's run folder;
- bench-*.json: bench/record.py around one benchmark script.

The README's `make run` block is bench/readme_numbers.py's (docs/make-run.json). tests/test_results_pages.py
checks that every block is what its file gives and that every table of a results page is in a block.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"<!-- results:(?P<name>[\w.-]+) begin[^>]*-->\n.*?<!-- results:(?P=name) end -->", re.S)
NAMES = {"base": "base", "grpo": "GRPO", "exp-grpo": "ExP-GRPO", "grpo-sft": "GRPO+SFT", "exp-dpo": "ExP-DPO",
         "sdft": "SDFT", "exp-grpo + hints": "ExP-GRPO + hints"}


def begin(name: str) -> str:
    return f"<!-- results:{name} begin: bench/results_pages.py renders this from docs/results/{name}.json -->"


def end(name: str) -> str:
    return f"<!-- results:{name} end -->"


def _minutes(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def _provenance(n: dict[str, Any]) -> str:
    return f"Command: `{n['command']}`. Commit {n['commit']}; machine: {n['machine']}."


def embedded_seeds(n: dict[str, Any]) -> list[str]:
    """The embedded default on several seeds: level 5 in one table, every level in a second."""
    lv, k = str(n["level"]), n["k"]
    seeds = n["seeds"]
    out = [f"Level {lv}, pass@1 / pass@{k} in % ({n['questions_per_level']} held-out questions a level, {k} samples "
           "each); the gains are in pass@1 points; GRPO truncated: its share of answers cut at the token cap.", "",
           "| seed | base | GRPO | ExP-GRPO | ExP-GRPO - base | ExP-GRPO - GRPO | GRPO truncated | "
           "base explanation acceptance by level |",
           "|---|---|---|---|---|---|---|---|"]
    for seed, s in seeds.items():
        r = s["results"]
        p = {m: r[m][lv] for m in ("base", "grpo", "exp-grpo")}
        acceptance = ", ".join(f"{a:.1f}" for a in s["acceptance"].values())
        out.append(f"| {seed} | {p['base'][0]} / {p['base'][1]} | {p['grpo'][0]} / {p['grpo'][1]} | "
                   f"{p['exp-grpo'][0]} / {p['exp-grpo'][1]} | {p['exp-grpo'][0] - p['base'][0]:+.1f} | "
                   f"{p['exp-grpo'][0] - p['grpo'][0]:+.1f} | {s['truncated_percent']['grpo']:.1f} % | "
                   f"{acceptance} % |")
    levels = list(next(iter(seeds.values()))["results"]["base"])
    out += ["", f"Every level, pass@1 / pass@{k} in %:", "",
            "| seed | model | " + " | ".join(f"L{x}" for x in levels) + " |",
            "|---|---|" + "---|" * len(levels)]
    for seed, s in seeds.items():
        for model, table in s["results"].items():
            out.append(f"| {seed} | {NAMES[model]} | " + " | ".join(f"{table[x][0]} / {table[x][1]}" for x in levels)
                       + " |")
    return out + ["", _provenance(n), f"Source: {n['source']}."]


def recipe(n: dict[str, Any]) -> list[str]:
    """One SmolLM2 recipe run: explanation filter by level, then pass@1 by level of every model."""
    levels = [lv for lv in n["explanations"] if lv != "all"]
    k = next(iter(n["models"].values()))["k"]
    peak = f", largest process {n['peak_rss_gb']} GiB" if n.get("peak_rss_gb") else ""
    out = [f"One cold run: {_minutes(n['wall_s'])} wall{peak}; registered `{n['run']}`.", "",
           "| level | explanation acceptance | coverage | unconditioned solve rate (same questions) |",
           "|---|---|---|---|"]
    for lv in [*levels, "all"]:
        e = n["explanations"][lv]
        out.append(f"| {lv} | {e['acceptance']} % | {e['coverage']} % | {e['solve_rate']} % |")
    out += ["", f"Held-out pass@1 in % by level, and overall pass@1 / pass@{k}:", "",
            "| model | " + " | ".join(f"L{lv}" for lv in levels) + " | all |",
            "|---|" + "---|" * (len(levels) + 1)]
    order = sorted(n["models"], key=lambda m: list(NAMES).index(m) if m in NAMES else len(NAMES))
    for model in order:
        m = n["models"][model]
        out.append(f"| {NAMES.get(model, model)} | " + " | ".join(str(m["levels"][lv]) for lv in levels)
                   + f" | {m['overall'][0]} / {m['overall'][1]} |")
    stages = ", ".join(f"{name} {_minutes(s)}" for name, s in n["stage_s"].items())
    note = f" {n['note']}" if n.get("note") else ""
    return out + ["", f"Stage times: {stages}.{note}", "", _provenance(n)]


def benchmark(n: dict[str, Any]) -> list[str]:
    """One benchmark's JSON line (bench/record.py): the script's own table of figures."""
    rows = [f"| `{key}` | {value} |" for key, value in n["result"].items() if not isinstance(value, (dict, list))]
    return ["| figure | value |", "|---|---|", *rows, "",
            f"{_provenance(n)} Load average while it ran: {n['load']}; {n['date']}."]


def privileged(n: dict[str, Any]) -> list[str]:
    """The privileged-information family on several seeds (bench/privileged_sweep.py): the hardest
    level per seed, the easier levels' means, the hints' counts and the training seconds."""
    levels, seeds = n["levels"], n["seeds"]
    hardest, easier = levels[-1], levels[:-1]
    out = [f"Level-{hardest} pass@1 (%) per seed and the mean of each easier level "
           f"({n['questions_per_level']} questions a level, {n['k']} samples each):", "",
           "| model | " + " | ".join(f"seed {s}" for s in seeds) + f" | mean | L{easier[0]}-L{easier[-1]} mean |",
           "|---" * (len(seeds) + 3) + "|"]
    for model, by_level in n["pass@1"].items():
        per_seed = by_level[hardest]
        means = " / ".join(f"{sum(v) / len(v):.1f}" for lv, v in by_level.items() if lv in easier)
        out.append(f"| {model} | " + " | ".join(f"{v:.1f}" for v in per_seed)
                   + f" | {sum(per_seed) / len(per_seed):.1f} | {means} |")
    h = n["hints"]
    out += ["", "Hints (ExP-GRPO + hints), seeds " + ", ".join(map(str, seeds)) + ": hinted groups "
            + ", ".join(str(h[str(s)]["hinted_groups"]) for s in seeds) + "; of them with a right rollout "
            + ", ".join(str(h[str(s)]["hinted_groups_with_a_right_rollout"]) for s in seeds)
            + "; hinted questions later solved without a hint "
            + ", ".join(str(h[str(s)]["questions_rescued"]) for s in seeds) + ".",
            "", "Training seconds per seed: " + "; ".join(
                f"{model} " + ", ".join(f"{t:.0f}" for t in sec["train"]) for model, sec in n["seconds"].items()) + ".",
            "", _provenance(n)]
    return out


def privileged_ladder(n: dict[str, Any]) -> list[str]:
    """The privileged-information arms on the SmolLM2 ladder (bench/privileged_ladder.py): pass@1 by level,
    the paired changes against the base and GRPO, the questions the base never solved, and the cost."""
    levels, k = n["levels"], n["k"]
    cell = lambda v: f"{v[0]} [{v[1]}, {v[2]}]"  # noqa: E731
    change = lambda v: f"{v[0]:+.1f} [{v[1]:+.1f}, {v[2]:+.1f}]"  # noqa: E731
    per_level = ", ".join(f"L{lv} {q}" for lv, q in n["questions_per_level"].items())
    out = [f"Held-out pass@1 in % with 95 % intervals ({per_level} questions, {k} samples each; where every "
           "question scored the same, Wilson's interval over the questions), overall "
           f"pass@1 / pass@{k}, and the paired change of overall pass@1 in points:", "",
           "| model | " + " | ".join(f"L{lv}" for lv in levels) + " | all | vs base | vs GRPO |",
           "|---|" + "---|" * (len(levels) + 3)]
    for model, m in n["models"].items():
        overall = f"{m['overall']['pass@1'][0]} / {m['overall'][f'pass@{k}'][0]}"
        out.append(f"| {NAMES.get(model, model)} | " + " | ".join(cell(m["pass@1"][lv]) for lv in levels)
                   + f" | {overall} | " + (change(m["vs_base"]["overall"]) if "vs_base" in m else "")
                   + " | " + (change(m["vs_grpo"]["overall"]) if "vs_grpo" in m else "") + " |")
    never = n["never_solved_by_base"]
    out += ["", "Questions no base sample solved, solved at least once after training (by level), and the cost: the "
            "train and evaluate stages' seconds, the training steps' own seconds (rollouts, scoring, updates) "
            "and the tokens of every rollout:", "",
            "| model | " + " | ".join(f"L{lv} (of {never[lv]})" for lv in levels)
            + " | train stage s | steps s | evaluate stage s | rollout tokens |",
            "|---|" + "---|" * (len(levels) + 4)]
    for model, m in n["models"].items():
        if "cost" not in m:
            continue
        c = m["cost"]
        tokens = "n/a" if c["rollout_tokens"] is None else f"{c['rollout_tokens']:,}"
        out.append(f"| {NAMES.get(model, model)} | " + " | ".join(str(m["newly_solved"][lv]) for lv in levels)
                   + f" | {c['train_stage_s']} | {c['steps_s']} | {c['eval_stage_s']} | {tokens} |")
    for model, m in n["models"].items():
        if "hints" in m:
            h = m["hints"]
            out += ["", f"Hints ({NAMES.get(model, model)}): {h['groups']} collapsed groups rolled out again with a "
                    f"hint, {h['solved_groups']} of them with a right rollout; {h['no_hint']} more found no usable "
                    f"hint; {h['questions']} questions hinted, {h['rescued']} rescued (later solved without a hint)."]
    walls = "; ".join(f"`{cmd}` (commit {n['run_commits'][name]}): {_minutes(n['wall'][name]['wall_s'])} wall, "
                      f"largest process {n['wall'][name]['peak_rss_gb']} GiB" for name, cmd in n["runs"].items())
    return out + ["", f"Runs, in one run folder, the second served from the first's cache up to training: {walls}.",
                  "", _provenance(n)]


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "embedded-default-seeds": embedded_seeds,
    "privileged-embedded": privileged,
    "privileged-ladder": privileged_ladder,
    "smollm2-135m-": recipe,
    "bench-": benchmark,
}


def renderer(name: str) -> Callable[[dict[str, Any]], list[str]]:
    for prefix, fn in RENDERERS.items():
        if name == prefix or (prefix.endswith("-") and name.startswith(prefix)):
            return fn
    raise SystemExit(f"no renderer for docs/results/{name}.json (known: {', '.join(RENDERERS)})")


def render(name: str) -> str:
    numbers = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    return "\n".join([begin(name), *renderer(name)(numbers), end(name)])


def rewrite(text: str) -> str:
    return BLOCK.sub(lambda m: render(m.group("name")), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a block is stale")
    args = parser.parse_args()
    stale = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        new = rewrite(text)
        if new != text:
            stale.append(str(page.relative_to(ROOT)))
            if not args.check:
                page.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"stale results blocks in {', '.join(stale)}: run `.venv/bin/python bench/results_pages.py`",
              file=sys.stderr)
        return 1
    print("\n".join(f"rewrote {p}" for p in stale) if stale and not args.check else "results blocks up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
