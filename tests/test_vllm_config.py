"""The vLLM settings of `generation` (no vllm needed): defaults that change nothing, and bad values."""

from __future__ import annotations

import pytest

from expo.config import ExpoConfig, load_config
from expo.errors import ConfigError
from expo.generation.trl_rollouts import engine_length, rollout_args


def test_defaults_keep_transformers_rollouts_on_cpu():
    cfg = ExpoConfig()
    assert cfg.generation.backend == "auto" and cfg.generation.vllm_mode == "colocate"
    assert rollout_args(cfg) == {}  # auto on a CPU: transformers, our shared-prefill path
    cfg.generation.max_prompt_tokens, cfg.generation.max_new_tokens = 100, 20
    assert engine_length(cfg) == 120
    cfg.explain.max_new_tokens = 50
    assert engine_length(cfg) == 150


@pytest.mark.parametrize("override,key", [
    ("cluster.gpus_vllm=0", "cluster.gpus_vllm"),
    ("generation.vllm_memory=0", "generation.vllm_memory"),
    ("generation.vllm_train_memory=1.5", "generation.vllm_train_memory"),
    ("generation.vllm_cpu_kv_gib=0", "generation.vllm_cpu_kv_gib"),
    ("generation.vllm_mode=remote", "generation.vllm_mode"),
])
def test_bad_vllm_settings_name_their_key(override, key):
    # (server mode without a URL is valid here: a cluster's train step starts the server; the
    # trainer refuses an empty URL, tests/test_vllm.py)
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, [override])


def test_the_counting_bar_moves_progress_as_vllm_finishes_requests():
    # vLLM's offline loop (vllm/entrypoints/common/offline.py, _run_engine) builds the bar with
    # total=..., reads format_dict["elapsed"] twice per finished request, sets postfix to its rates,
    # then calls update(n): the stage's progress must follow, without vLLM installed.
    import time

    from expo.generation.base import GenerationStats, progress_reader
    from expo.generation.vllm import CountingBar

    stats = GenerationStats()
    read = progress_reader(stats, expected=6)
    bar = CountingBar(stats, total=3, desc="Processed prompts", dynamic_ncols=True, postfix="")
    total_out = 0
    for n, tokens in ((2, 40), (2, 60)):  # two requests of n=2 samples finish
        time.sleep(0.01)
        total_out += tokens
        bar.format_dict["elapsed"]  # the input rate
        out_spd = total_out / bar.format_dict["elapsed"]
        bar.postfix = f"est. speed input: 1.00 toks/s, output: {out_spd:.2f} toks/s"
        bar.update(n)
    assert bar.n == 4 and stats.finished() == 4
    assert abs(stats.generated() - 100) <= 1  # the rate times the elapsed time it was computed over
    assert read().startswith("4/6 samples, ")


def test_the_counting_bar_passes_the_prompts_vllm_adds_through():
    # vLLM wraps the prompts it adds in the same callable: maybe_tqdm(prompts, use_tqdm=..., desc=...)
    from expo.generation.base import GenerationStats
    from expo.generation.vllm import CountingBar

    stats = GenerationStats()
    assert list(CountingBar(stats, ["a", "b"], desc="Adding requests")) == ["a", "b"]
    assert stats.finished() == 0  # adding is not finishing


@pytest.mark.parametrize("trusted", [False, True])
def test_rollouts_trust_a_models_code_only_when_the_config_does(monkeypatch, trusted):
    from fake_vllm import install

    install(monkeypatch)  # the vllm backend is resolved against an importable vllm
    cfg = ExpoConfig()
    cfg.generation.backend, cfg.model.trust_remote_code = "vllm", trusted
    assert rollout_args(cfg)["trust_remote_code"] is trusted  # TRL builds the colocated engine from it
