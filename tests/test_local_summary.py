"""What `expo run` prints last (pipelines.local_run.format_summary), on hand-made summaries: the aligned
table, "from cache" only for steps that were cache hits, the registered model, the report and the log
file named last. (tests/test_local_run.py checks the same on a real kfp.local run.)"""

from __future__ import annotations

import pytest

from pipelines.local_run import format_summary

LEVELS = {str(lv): {"pass@1": 0.1 * lv, "pass@k": min(1.0, 0.2 * lv)} for lv in range(1, 6)}
MODELS = {"base": {"levels": LEVELS, "k": 8}, "grpo": {"levels": LEVELS, "k": 8},
          "exp-grpo": {"levels": {**LEVELS, "5": {"pass@1": 0.212, "pass@k": 0.4}}, "k": 8}}
TASKS = ["prepare-data", "prepare-model", "evaluate base", "generate-explanations", "train grpo",
         "train exp-grpo", "evaluate grpo", "evaluate exp-grpo", "report", "register", "finish-run"]


def summary(cached: set[str], uri: str | None = "models:/expo-tiny/3") -> dict:
    stages = [{"task": t, "label": t, "status": "cached" if t in cached else "done", "seconds": 1.0,
               "headline": "", "outputs": {}} for t in TASKS]
    return {"models": MODELS, "stages": stages, "run_folder": "/runs/expo-embedded",
            "registered_model_uri": uri, "registered_aliases": ["candidate", "champion"] if uri else [],
            "model_name": "expo-tiny", "log_file": "/runs/expo-embedded/expo-run.log"}


def test_a_first_run_says_nothing_came_from_cache_and_ends_with_the_log():
    lines = format_summary(summary(set())).splitlines()
    table = lines[:4]
    assert table[0].split() == ["model"] + [w for lv in range(1, 6) for w in (f"L{lv}", "p@1", f"L{lv}", "p@8")]
    assert len({len(row) for row in table}) == 1  # aligned: every row as wide as the header
    assert table[3].split()[-2:] == ["21.2", "40.0"]  # exp-grpo, level 5, in % as the README gives them
    assert lines[4].startswith("p@1 / p@8: pass@1 / pass@8 in % by level")
    assert "steps: all 11 ran (none came from cache)" in lines
    assert not any("from cache (" in line for line in lines)
    assert "registered model: models:/expo-tiny/3 (aliases: candidate, champion)" in lines
    assert lines[-2] == "report: /runs/expo-embedded/report.html (and report.md)"
    assert lines[-1] == "log: /runs/expo-embedded/expo-run.log"
    assert max(map(len, lines)) <= 100


@pytest.mark.parametrize("cached, ran_line", [
    (set(TASKS) - {"finish-run"}, "steps ran (1): finish-run"),  # a re-run: only the exit handler runs
    ({"prepare-data", "prepare-model"}, "steps ran (9): evaluate base, generate-explanations, train grpo, "),
])
def test_a_rerun_names_what_ran_and_what_came_from_cache(cached, ran_line):
    lines = format_summary(summary(cached)).splitlines()
    assert any(line.startswith(ran_line) for line in lines), lines
    cache_line = next(line for line in lines if line.startswith("from cache ("))
    assert cache_line.startswith(f"from cache ({len(cached)}): prepare-data, prepare-model")
    assert max(map(len, lines)) <= 100  # long lists wrap


def test_no_registration_says_why():
    lines = format_summary(summary(set(), uri=None)).splitlines()
    assert "registered model: none (no trained arm beat the base model on the gate metric)" in lines
    assert not any("expo models" in line for line in lines)


def test_the_embedded_default_says_where_its_figures_stand_against_the_measured_seeds():
    from pipelines.local_run import against_reference

    reference = {"metric": "level 5 pass@1", "level": "5", "seeds": "0-2",
                 "models": {"base": [0.0, 1.2], "grpo": [2.7, 10.3], "exp-grpo": [16.7, 47.3]}}
    line = against_reference(summary(set()), reference)
    # base and grpo score 50.0 on level 5 here (LEVELS), exp-grpo 21.2
    assert line == ("level 5 pass@1 in %, this run (seeds 0-2 measured on the development machine): "
                    "base 50.0 (0-1.2, outside), grpo 50.0 (2.7-10.3, outside), exp-grpo 21.2 (16.7-47.3)")


def test_the_shipped_reference_is_the_embedded_defaults():
    from importlib import resources

    import yaml

    from expo.config import load_pipeline_config
    from pipelines.local_run import REFERENCE, is_embedded_default

    reference = yaml.safe_load(resources.files("expo").joinpath("toy", REFERENCE).read_text())
    assert set(reference["models"]) == {"base", *load_pipeline_config(None, []).train.arms}
    assert is_embedded_default(load_pipeline_config(None, []))
    assert not is_embedded_default(load_pipeline_config(None, ["train.steps=3"]))
