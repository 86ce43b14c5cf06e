"""expo.terminal (the aligned table, stage lines, progress pacing, colour only on a terminal),
expo.progress (the progress-line protocol) and expo.headlines (each stage's end-line text)."""

from __future__ import annotations

import io

import pytest

from expo import progress as P
from expo.artifacts import META_FILE
from expo.headlines import headline
from expo.terminal import Console, duration, format_table, strip_ansi


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_table_aligns_columns_and_right_aligns_numbers():
    lines = format_table(["model", "L1 p@1", "L5 p@k"],
                         [["base", "0.412", "0.013"], ["exp-grpo", "1.000", "-"], ["grpo", "0.05", "nan"]])
    assert lines == [
        "model     L1 p@1  L5 p@k",
        "base       0.412   0.013",
        "exp-grpo   1.000       -",
        "grpo        0.05     nan",
    ]
    assert len({len(line) for line in lines}) == 1  # every line as wide: no drift


@pytest.mark.parametrize("rows, align, expected", [
    ([["a", "x1"]], None, ["h  long", "a  x1"]),  # text columns stay left-aligned, no trailing space
    ([["a", "12"]], "lr", ["h  long", "a    12"]),  # an explicit alignment wins
    ([], None, ["h  long"]),  # no rows: the header alone
])
def test_format_table_cases(rows, align, expected):
    assert format_table(["h", "long"], rows, align) == expected


def test_format_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="2 cells"):
        format_table(["a", "b"], [["1"]])


@pytest.mark.parametrize("seconds, text", [(4.24, "4.2s"), (59.9, "59.9s"), (65, "1m05s"), (3725, "1h02m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_a_stage_that_runs_prints_started_progress_and_done():
    out, clock = io.StringIO(), Clock()
    console = Console(out, clock=clock, interval_s=28.0)
    key = console.stage_started("train grpo")
    assert out.getvalue() == ""  # nothing until it really runs (it could be a cache hit)
    console.stage_running(key)
    console.progress(key, "train grpo", "step 1/50  reward 0.1")
    clock.now += 10
    console.tick()  # 10 s since the started line: not yet
    console.progress(key, "train grpo", "step 8/50  reward 0.31")
    clock.now += 20
    console.tick()  # 30 s: the latest progress, once
    console.tick()
    clock.now += 28
    console.tick()  # nothing new for 28 s: a heartbeat
    console.progress(None, "warm-up", "step 9/10")  # no stage has this label: ignored
    clock.now += 2.5
    console.stage_finished(key, "done", 60.5, "50 steps, last reward 0.312")
    assert out.getvalue().splitlines() == [
        "train grpo             started",
        "train grpo             running  30.0s  step 8/50  reward 0.31",
        "train grpo             running  58.0s  still running",
        "train grpo             done     1m00s  50 steps, last reward 0.312",
    ]
    assert console.lines == 4 and "\x1b" not in out.getvalue()  # a StringIO is no terminal: no colour


def test_stages_side_by_side_take_turns_so_lines_grow_with_time_not_with_stages():
    """Two arms train at once: one heartbeat per 28 s for the terminal, the arm silent longest first;
    any line (a stage ending) restarts the 28 s."""
    out, clock = io.StringIO(), Clock()
    console = Console(out, clock=clock, interval_s=28.0)
    grpo, expo = console.stage_started("train grpo"), console.stage_started("train exp-grpo")
    console.stage_running(grpo)
    console.stage_running(expo)
    console.progress(grpo, "train grpo", "step 3/50")
    console.progress(expo, "train exp-grpo", "step 2/50")
    for _ in range(3):  # 84 s: three heartbeats in all, not six
        clock.now += 28
        console.tick()
    clock.now += 20
    console.stage_finished(grpo, "done", 104.0, "50 steps")
    clock.now += 20  # 20 s after the done line: no heartbeat yet
    console.tick()
    clock.now += 8
    console.tick()
    assert [line.split("  ")[0] + " " + line.split()[2] for line in out.getvalue().splitlines()] == [
        "train grpo started", "train exp-grpo started",
        "train grpo running", "train exp-grpo running", "train grpo running",  # in turns
        "train grpo done", "train exp-grpo running",
    ]


def test_a_cache_hit_is_one_line_without_time_and_progress_inside_names_its_source():
    out, clock = io.StringIO(), Clock()
    console = Console(out, clock=clock, interval_s=5.0)
    cached = console.stage_started("prepare-data")
    console.stage_finished(cached, "cached", 0.01, "2,000 of 2,000 rows kept (1,600 train, 400 eval)")
    key = console.stage_started("prepare-model")
    console.stage_running(key)
    console.progress(key, "warm-up", "step 300/1500  loss 0.41")
    clock.now += 5
    console.tick()
    assert out.getvalue().splitlines() == [
        "prepare-data           cached          2,000 of 2,000 rows kept (1,600 train, 400 eval)",
        "prepare-model          started",
        "prepare-model          running   5.0s  warm-up: step 300/1500  loss 0.41",
    ]
    lines = out.getvalue().splitlines()
    assert lines[0].index("2,000") == lines[2].index("warm-up")  # headlines and progress share a column


def test_colour_and_the_live_line_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    tty = Tty()
    console = Console(tty)
    key = console.stage_started("report")
    console.stage_running(key)
    console.progress(key, "report", "writing")
    console.stage_finished(key, "done", 1.0, "")
    console.stop()
    text = tty.getvalue()
    assert "\x1b[32m" in text and "\r\x1b[K" in text  # green "done", the status line cleared
    assert [line.strip() for line in strip_ansi(text).replace("\r", "\n").splitlines() if line.strip()][-1] \
        .startswith("report")
    monkeypatch.setenv("NO_COLOR", "1")
    assert Console(Tty()).colour is False


def test_progress_lines_round_trip_and_pace():
    line = P.format_line("train exp-grpo", "step 8/50   reward 0.31")
    assert line == "[progress] train exp-grpo: step 8/50 reward 0.31"
    assert P.parse_line("    " + line + "\n") == ("train exp-grpo", "step 8/50 reward 0.31")  # kfp indents
    assert P.parse_line("step 8: loss=0.1") is None
    assert P.parse_line(P.format_line("a:b", "x")) == ("a b", "x")  # a ':' in a label cannot split it


def test_progress_throttles_but_forced_lines_always_print(capsys):
    clock = Clock()
    tick = P.Progress("warm-up", every_s=2.0, clock=clock)
    printed = [tick.update("step 1"), tick.update("step 2")]
    clock.now += 2.0
    printed += [tick.update("step 3"), tick.update("step 4", force=True)]
    assert printed == [True, False, True, True]
    assert capsys.readouterr().err.splitlines() == [
        "[progress] warm-up: step 1", "[progress] warm-up: step 3", "[progress] warm-up: step 4"]


def test_watch_reports_from_a_thread_and_once_at_the_end(capsys):
    counter = {"n": 0}
    with P.watch("explain", lambda: f"{counter['n']} samples", every_s=0.05):
        import time

        for _ in range(4):
            counter["n"] += 1
            time.sleep(0.06)
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == "[progress] explain: 4 samples"
    assert len(lines) == len(set(lines)) >= 2  # repeated texts are not printed twice


@pytest.mark.parametrize("task, metrics, params, expected", [
    ("prepare-data", {"rows_in": 2000.0, "rows_out": 1990.0, "train_rows": 1592.0, "eval_rows": 398.0}, {},
     "1,990 of 2,000 rows kept (1,592 train, 398 eval)"),
    ("evaluate", {"pass_at_1": 0.41234, "pass_at_2": 0.5, "pass_at_8": 0.6, "level5/pass_at_1": 0.012,
                  "level1/pass_at_1": 0.9}, {}, "pass@1 41.2%  pass@8 60.0%  level 5 pass@1 1.2%"),
    ("generate-explanations", {"acceptance_rate": 0.7625, "samples": 4000.0, "passed": 3050.0,
                               "coverage": 0.91, "generation/tokens_per_s": 812.4},
     {}, "acceptance 76.2% (3,050 of 4,000 samples), coverage 91%, 812 tok/s"),
    ("train", {"steps": 50.0, "final_metrics/reward": 0.3125, "final_metrics/expo_term": 0.0521}, {},
     "50 steps, last reward 0.3125, last expo 0.0521"),
    ("train", {"steps": 2.0, "final_metrics/reward": 0.0, "final_metrics/expo_term": 0.0}, {},
     "2 steps, last reward 0"),  # GRPO: no ExPO term to speak of
    ("report", {"best_value": 0.212, "base_value": 0.012}, {"Output": "exp-grpo"},
     "best arm exp-grpo (21.2% vs base 1.2% on the gate metric): registering"),
    ("report", {"best_value": 0.0, "base_value": 0.1}, {"Output": ""},
     "no arm beat the base model (0.0% vs base 10.0% on the gate metric)"),
    ("register", {}, {"Output": "models:/expo-tiny/3"}, "registered models:/expo-tiny/3"),
    ("evaluate", {}, {}, ""),  # nothing to say: the end line shows done and its time alone
    ("no-such-task", {"x": 1.0}, {}, ""),
])
def test_headlines(task, metrics, params, expected):
    assert headline(task, metrics, params) == expected


def test_prepare_model_headline_reads_the_model_card(tmp_path):
    (tmp_path / META_FILE).write_text('{"base": "builtin:tiny", "warmup": {"steps": 1500, '
                                      '"final_loss": 0.01234, "parameters": 1790000}}')
    assert headline("prepare-model", {}, {}, {"model": str(tmp_path)}) == \
        "builtin:tiny: 1.79M parameters, warm-up 1,500 steps, final loss 0.0123"
    (tmp_path / META_FILE).write_text("{not json")
    assert headline("prepare-model", {}, {}, {"model": str(tmp_path)}) == ""  # never raises
