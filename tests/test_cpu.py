"""share_cpu_threads: a stage that runs beside others takes its share of the cores, and only then."""

from __future__ import annotations

import pytest
import torch

from expo import cpu


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("tasks, cores, want", [("2", 2, 1), ("2", 8, 4), ("3", 8, 2), ("4", 2, 1), ("1", 6, 6)])
def test_threads_are_the_cores_divided_by_the_tasks(monkeypatch, tasks, cores, want) -> None:
    monkeypatch.setenv(cpu.CONCURRENT_TASKS_ENV, tasks)
    monkeypatch.setattr("expo.verify_pool.usable_cpus", lambda: cores)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cpu.share_cpu_threads() == want
    assert torch.get_num_threads() == want


@pytest.mark.parametrize("value", ["", "  ", "two"])
def test_no_or_bad_variable_changes_nothing(monkeypatch, value) -> None:
    monkeypatch.setenv(cpu.CONCURRENT_TASKS_ENV, value)
    torch.set_num_threads(2)
    assert cpu.share_cpu_threads() is None
    assert torch.get_num_threads() == 2


def test_a_gpu_keeps_its_threads(monkeypatch) -> None:
    monkeypatch.setenv(cpu.CONCURRENT_TASKS_ENV, "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    torch.set_num_threads(2)
    assert cpu.share_cpu_threads() is None
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("arms,side_by_side", [(["exp-grpo"], "1"), (["grpo", "exp-grpo"], "2"),
                                               (["grpo", "exp-grpo", "sdft"], "2")])
def test_expo_run_states_how_many_arms_share_the_machine(monkeypatch, tmp_path, arms, side_by_side) -> None:
    """kfp.local runs two iterations of a ParallelFor at once: a third arm waits for one of them, so
    each arm's share of the cores is half of them, not a third."""
    from expo.config import ExpoConfig
    from pipelines.local_run import _set_run_environment

    for key in (cpu.CONCURRENT_TASKS_ENV, "MLFLOW_TRACKING_URI", "EXPO_WORKSPACE", "EXPO_PIPELINE_RUN_ID",
                "PYTHONPATH"):
        monkeypatch.delenv(key, raising=False)  # monkeypatch restores them after the test
    cfg = ExpoConfig()
    cfg.train.arms = arms
    _set_run_environment(cfg, tmp_path)
    import os

    assert os.environ[cpu.CONCURRENT_TASKS_ENV] == side_by_side
