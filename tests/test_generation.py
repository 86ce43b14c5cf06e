"""The generation interface on a tiny random Qwen2 (CPU): batching, sampling, EOS, prompt policy, weights."""

from __future__ import annotations

import pytest
import torch

from expo.config import GenerationConfig
from expo.errors import ModelError
from expo.generation import Generator, make_generator, resolve_backend, vllm_available
from expo.generation.hf import HFGenerator, left_pad
from expo.scratch_models import char_tokenizer, tiny_qwen2

PROMPTS = ["What is 2+3?", "x", "A much longer prompt than the others, to force padding.", "hi there"]


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_qwen2(tok, hidden=32, layers=2, heads=2, seed=0)


def gen(model, tok, **cfg) -> HFGenerator:
    settings = {"max_new_tokens": 8, "batch_size": 3, "backend": "hf", **cfg}
    return HFGenerator(model, tok, GenerationConfig(**settings))


def test_left_padding_puts_pads_before_the_prompt():
    ids, mask = left_pad([[5, 6, 7], [9]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_tokenizer_pads_on_the_left(tok):
    assert tok.padding_side == "left"


def test_batched_greedy_equals_one_prompt_at_a_time(model, tok):
    # Different lengths in batches of 3: exercises left padding, the attention mask and position ids
    # (Qwen2's generate derives them from the mask). Any mismatch changes the greedy tokens.
    g = gen(model, tok, max_new_tokens=12)
    batched = g.generate(PROMPTS, temperature=0.0)
    for prompt, out in zip(PROMPTS, batched):
        alone = g.generate([prompt], temperature=0.0)[0][0]
        assert out[0].token_ids == alone.token_ids
        assert out[0].logprob == pytest.approx(alone.logprob, abs=1e-4)


def test_logprob_is_the_model_log_likelihood_of_the_sampled_tokens(model, tok):
    g = gen(model, tok, max_new_tokens=6)
    c = g.generate(["2+2="], n=1, temperature=1.3, seed=3)[0][0]  # temperature must not change it
    prompt_ids = tok("2+2=")["input_ids"]
    ids = torch.tensor([prompt_ids + c.token_ids])  # (1, T)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)  # (T, V)
    expected = sum(logp[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(c.token_ids))
    assert c.logprob == pytest.approx(expected, abs=1e-4)
    assert c.num_tokens == len(c.token_ids) == 6 and c.truncated


def test_n_samples_per_prompt_in_order(model, tok):
    outs = gen(model, tok).generate(PROMPTS[:2], n=5, temperature=1.0, seed=0)
    assert [len(o) for o in outs] == [5, 5]
    assert len({tuple(c.token_ids) for c in outs[0]}) > 1  # sampled, not copies


def test_greedy_with_n_returns_n_identical_copies(model, tok):
    outs = gen(model, tok).generate(["abc"], n=3, temperature=0.0)
    assert len(outs[0]) == 3 and len({tuple(c.token_ids) for c in outs[0]}) == 1
    assert outs[0][0].token_ids is not outs[0][1].token_ids  # callers may mutate one


def test_seed_reproduces_and_different_seeds_differ(model, tok):
    g = gen(model, tok)
    first = g.generate(PROMPTS, n=2, temperature=1.0, seed=11)
    again = g.generate(PROMPTS, n=2, temperature=1.0, seed=11)
    other = g.generate(PROMPTS, n=2, temperature=1.0, seed=12)
    assert first == again
    assert first != other


def test_seeded_call_leaves_the_global_rng_alone(model, tok):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    gen(model, tok).generate(["abc"], temperature=1.0, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_eos_stops_a_row_and_others_run_on(model, tok):
    g = gen(model, tok, max_new_tokens=10)
    greedy = g.generate(PROMPTS[:2], temperature=0.0)
    stop_token = greedy[0][0].token_ids[2]  # the 3rd token prompt 0 produces greedily
    if stop_token in greedy[1][0].token_ids:
        pytest.skip("the random model's two rows share the chosen token")
    g.eos_ids = (tok.eos_token_id, stop_token)  # as a model with two EOS ids (Qwen instruct)
    outs = g.generate(PROMPTS[:2], temperature=0.0)
    first = greedy[0][0].token_ids.index(stop_token)
    assert outs[0][0].token_ids == greedy[0][0].token_ids[: first + 1]  # EOS kept, nothing after it
    assert not outs[0][0].truncated and outs[0][0].num_tokens == first + 1
    assert outs[1][0].token_ids == greedy[1][0].token_ids and outs[1][0].truncated


def test_truncated_flag_when_max_new_tokens_is_hit(model, tok):
    c = gen(model, tok).generate(["abc"], temperature=0.0, max_new_tokens=4)[0][0]
    assert c.truncated and c.num_tokens == 4


def test_ignore_eos_generates_exactly_max_new_tokens(model, tok):
    plain = gen(model, tok, max_new_tokens=7)
    first_tokens = {o[0].token_ids[0] for o in plain.generate(PROMPTS, temperature=0.0)}
    g = HFGenerator(model, tok, GenerationConfig(max_new_tokens=7), ignore_eos=True)
    g.eos_ids = (tok.eos_token_id, *first_tokens)  # each row's first greedy token would end it
    outs = g.generate(PROMPTS, n=2, temperature=0.0)
    assert all(c.num_tokens == 7 and c.truncated for per in outs for c in per)


def test_overlong_prompt_is_truncated_from_the_left_and_counted(model, tok):
    g = gen(model, tok, max_prompt_tokens=10, overlong_prompt="truncate")
    long_prompt = "0123456789abcdefghij"  # 20 characters = 20 tokens
    out = g.generate([long_prompt, "short"], temperature=0.0)
    tail = gen(model, tok).generate([long_prompt[-10:]], temperature=0.0)
    assert out[0][0].token_ids == tail[0][0].token_ids
    assert g.stats.prompts_truncated == 1 and g.stats.prompts_skipped_overlong == 0


def test_overlong_prompt_is_skipped_and_counted(model, tok):
    g = gen(model, tok, max_prompt_tokens=10, overlong_prompt="skip")
    out = g.generate(["0123456789abcdefghij", "short"], n=2, temperature=1.0, seed=0)
    assert out[0] == [] and len(out[1]) == 2
    assert g.stats.prompts_skipped_overlong == 1 and g.stats.prompts_truncated == 0


def test_empty_prompt_is_skipped_and_counted(model, tok):
    g = gen(model, tok)
    out = g.generate(["", "   ", "abc"], temperature=0.0)
    assert out[0] == [] and out[1] == [] and len(out[2]) == 1
    assert g.stats.prompts_skipped_empty == 2


@pytest.mark.parametrize("tok_name", ["smollm2_tokenizer", "llama3_tokenizer"])
def test_prompts_encode_to_the_template_ids_with_one_bos(tok_name, request):
    """The rendered solve prompt and the raw template text (BOS included) encode alike: one BOS, the
    chat template's own ids, which are also what TRL's tokenizer call gives (tests/test_prompt_tokens.py)."""
    from expo.config import PromptConfig
    from expo.generation import encode_prompts
    from expo.prompts import solve_prompt

    real = request.getfixturevalue(tok_name)
    messages = [{"role": "user", "content": "What is 2+3?"}]
    raw = real.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = list(real.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"])
    prompts = [solve_prompt("What is 2+3?", real, PromptConfig()), raw]
    encoded = encode_prompts(prompts, real, GenerationConfig())
    assert encoded.ids == [expected, expected]
    assert expected[0] == real.bos_token_id and expected[1] != real.bos_token_id


def test_checkpoint_generation_config_does_not_leak_into_sampling(tok):
    # A checkpoint asking for top_k=1 would make "sampling" greedy; our settings must win.
    m = tiny_qwen2(tok, hidden=32, layers=2, heads=2, seed=0)
    m.generation_config.top_k = 1
    m.generation_config.repetition_penalty = 5.0
    outs = gen(m, tok).generate(["abc"], n=6, temperature=1.0, seed=0)
    assert len({tuple(c.token_ids) for c in outs[0]}) > 1


def test_model_under_training_goes_back_to_train_mode(tok):
    m = tiny_qwen2(tok, hidden=32, layers=1, heads=2)
    m.train()
    gen(m, tok).generate(["abc"], temperature=0.0)
    assert m.training


def test_load_weights_from_a_state_dict_and_a_module(tok):
    a = tiny_qwen2(tok, hidden=32, layers=2, heads=2, seed=0)
    b = tiny_qwen2(tok, hidden=32, layers=2, heads=2, seed=1)
    want_b = gen(b, tok).generate(PROMPTS, temperature=0.0)
    g = gen(tiny_qwen2(tok, hidden=32, layers=2, heads=2, seed=0), tok)
    assert g.generate(PROMPTS, temperature=0.0) != want_b
    g.load_weights(b.state_dict())
    assert g.generate(PROMPTS, temperature=0.0) == want_b
    g.load_weights(a)  # a live module is adopted, not copied
    assert g.model is a
    with pytest.raises(ModelError, match="state dict does not fit"):
        g.load_weights({"nonsense.weight": torch.zeros(1)})


def test_make_generator_picks_hf_on_cpu_and_refuses_missing_vllm(model, tok):
    g = make_generator(model, tok, GenerationConfig(backend="auto"))
    assert isinstance(g, HFGenerator) and isinstance(g, Generator)
    if vllm_available():
        pytest.skip("vllm is installed here")
    with pytest.raises(ModelError, match="vllm is not installed"):
        make_generator(model, tok, GenerationConfig(backend="vllm"))
    assert resolve_backend(GenerationConfig(backend="hf")) == "hf"


@pytest.mark.parametrize("sample", [False, True])
def test_shared_prefix_sampling_equals_repeated_prefill(sample: bool) -> None:
    """One prefill per distinct prompt, then the cache copied: token for token what plain generate gives
    on the repeated batch (prompts of different lengths, so left padding is exercised), greedy and sampled."""
    from transformers import GenerationConfig

    from expo.generation.shared_prefix import sample_shared_prefix

    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden=32, layers=2, seed=0).eval()
    prompts = ["What is 2+3? " * 3, "Hi", "Which has a seven? 512 903 374"]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    batch = [p for p in ids for _ in range(3)] + [ids[1]]  # G = 3, and a straggler repeat out of order
    config = GenerationConfig(max_new_tokens=12, do_sample=sample, temperature=1.0, top_k=0,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(3)
    got = sample_shared_prefix(model, batch, config, pad_token_id=tok.pad_token_id)
    inputs, mask = left_pad(batch, tok.pad_token_id, torch.device("cpu"))
    torch.manual_seed(3)
    want = model.generate(input_ids=inputs, attention_mask=mask, generation_config=config)[:, inputs.shape[1]:]
    assert [g.tolist() for g in got] == want.tolist()


def test_shared_prefix_with_one_token_prompts_has_nothing_to_share() -> None:
    from transformers import GenerationConfig

    from expo.generation.shared_prefix import sample_shared_prefix

    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden=32, layers=1, seed=0).eval()
    config = GenerationConfig(max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)
    got = sample_shared_prefix(model, [[5], [5], [6]], config, pad_token_id=tok.pad_token_id)
    want = model.generate(input_ids=torch.tensor([[5], [5], [6]]), generation_config=config)[:, 1:]
    assert [g.tolist() for g in got] == want.tolist()


def test_shared_prefix_rejects_an_empty_prompt() -> None:
    from transformers import GenerationConfig

    from expo.generation.shared_prefix import sample_shared_prefix

    tok = char_tokenizer()
    with pytest.raises(ValueError, match="at least one token"):
        sample_shared_prefix(tiny_qwen2(tok, hidden=32, layers=1), [[5], []], GenerationConfig(), tok.pad_token_id)


def test_tokens_are_counted_per_decoding_step_inside_one_batch(model, tok):
    # The progress a stage shows reads stats.generated(): it must move while one batch decodes, and
    # end equal to the tokens the completions kept (an EOS row stops counting after its EOS).
    g = gen(model, tok, max_new_tokens=10, batch_size=8)
    greedy = g.generate(PROMPTS[:2], temperature=0.0)
    g.eos_ids = (tok.eos_token_id, greedy[0][0].token_ids[2])  # row 0 ends at its 3rd token
    g.stats = type(g.stats)()
    seen: list[int] = []
    decode = g.model.forward

    def watched(*args, **kwargs):
        seen.append(g.stats.generated())
        return decode(*args, **kwargs)

    g.model.forward = watched
    try:
        outs = g.generate(PROMPTS[:2], temperature=0.0)
    finally:
        del g.model.forward
    kept = sum(c.num_tokens for per in outs for c in per)
    assert seen == sorted(seen) and 0 < seen[-1] < kept  # it grew inside the one generate call
    assert g.stats.tokens_in_flight == 0 and g.stats.generated() == g.stats.tokens == kept
