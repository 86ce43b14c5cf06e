"""expo.train.progress: the `step N/total` lines of each training arm, ExP-DPO's rounds counted as one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from expo.train.progress import StepProgress, step_text


@pytest.mark.parametrize("logs,expect", [
    ({"reward": 0.3125, "expo_term": 0.05213, "loss": 0.4, "time/step": 2.14},
     "step 8/50  reward 0.3125  expo 0.05213  loss 0.4  2.1 s/step"),
    ({"reward_mean": 0.5, "expo_term": 0.0, "loss": float("nan")}, "step 8/50  reward 0.5"),  # GRPO: no term
    ({"rewards/margins": 0.731, "loss": 0.65}, "step 8/50  margin 0.731  loss 0.65"),  # ExP-DPO
    ({}, "step 8/50"),
])
def test_step_text(logs, expect):
    assert step_text(8, 50, logs) == expect


def test_rounds_of_one_arm_count_as_one_sequence(capsys):
    """ExP-DPO trains its rounds with one trainer each (max_steps 3, then 2): with total 5 and the
    round's offset the lines read 1/5 .. 5/5, the last one always printed."""
    progress = StepProgress("exp-dpo", every_s=0.0, total=5)
    args = SimpleNamespace(max_steps=3)
    for offset, steps in ((0, 3), (3, 2)):
        progress.offset = offset
        for step in range(1, steps + 1):
            state = SimpleNamespace(global_step=step, max_steps=steps)
            progress.on_log(args, state, None, logs={"loss": 0.5})
        progress.on_log(args, state, None, logs={"loss": 0.5, "train_loss": 0.5})  # the trainer's summary
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"[progress] train exp-dpo: step {i}/5 loss 0.5" for i in range(1, 6)]  # one space


def test_without_a_total_the_trainer_s_max_steps_count():
    progress = StepProgress("grpo", every_s=3600.0)
    shown = []
    progress.tick.update = lambda text, force=False: shown.append((text, force))
    state = SimpleNamespace(global_step=50, max_steps=50)
    progress.on_log(SimpleNamespace(max_steps=50), state, None, logs={"loss": 0.1})
    assert shown == [("step 50/50  loss 0.1", True)]  # the last step is forced out


def test_a_long_step_prints_a_heartbeat_when_nothing_else_speaks(capsys):
    import time

    from expo.progress import emit, parse_line

    cb = StepProgress("exp-grpo", total=4, quiet_s=0.3)
    cb.heartbeat.poll_s = 0.05
    state, args = SimpleNamespace(global_step=2, max_steps=4), SimpleNamespace(max_steps=4)
    cb.on_step_begin(args, state, None)
    time.sleep(0.5)
    emit("train exp-grpo", "step 3/4 rollouts: 8/16 samples")  # the step's own line: the heartbeat waits
    time.sleep(0.2)
    cb.on_step_end(args, state, None)
    time.sleep(0.2)
    lines = [parse_line(line) for line in capsys.readouterr().err.splitlines()]
    beats = [text for label, text in lines if text.startswith("step 3/4 running")]
    assert beats and all(label == "train exp-grpo" for label, _ in lines)
    assert lines[-1] == ("train exp-grpo", "step 3/4 rollouts: 8/16 samples")  # quiet after its own line, and after the step
