"""Prototype of the embedded default's experiment: does ExP-GRPO move the tiny model where GRPO cannot?

What: for each seed, build the needle data and the warmed-up `builtin:tiny` model (expo.toy), measure
the base model (pass@1 / pass@8 by level, answer-conditioned explanation acceptance by level), then
train a GRPO arm and an ExP-GRPO arm from the same checkpoint with the same seed and budget, and
evaluate both on held-out hardest-level questions. It prints a table, then one JSON line.

Why a prototype loop here: it isolates the method from the pipeline (TRL, MLflow, kfp) so designs can
be compared in minutes. Simplifications (one on-policy update per batch, so no ratio/clipping, TRL's
"dapo" token-mean aggregation, group-std-scaled advantages): the same ones as a TRL GRPO run with
num_iterations=1 and no KL. The ExPO term is beta * token-mean NLL of accepted self-explanations scored
under the plain solve prompt. Online explanations are regenerated every K steps; the acceptance guard
keeps the last accepted explanation of a question whenever a regeneration's acceptance falls below the
floor (and then for that question, and whenever a question's new sample is rejected).

    nice .venv/bin/python bench/toy_experiment.py --seeds 0 1 2 --steps 50
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from expo.answers import last_boxed
from expo.config import ModelConfig, PromptConfig
from expo.io import write_jsonl
from expo.modeling import load_tokenizer
from expo.prompts import explain_prompt, solve_prompt
from expo.toy.model import build_warm_model
from expo.toy.task import generate_rows


@dataclass
class Setup:
    steps: int = 50
    lr: float = 1e-3
    prompts_per_step: int = 4
    num_generations: int = 8
    temperature: float = 1.0
    beta: float = 0.04
    regenerate_every: int = 10
    explain_mode: str = "online"
    acceptance_floor: float = 0.5
    max_new_tokens: int = 128
    eval_samples: int = 8
    eval_questions: int = 80
    base_questions: int = 40  # per level, for the base model's by-level table
    hint_template: str = "The answer is {answer}."
    betas: str = "0.04"  # comma-separated: one ExP-GRPO arm per beta
    skip_grpo: int = 0


def prepare_data(seed: int, n_per_level: int, out: Path) -> tuple[list[dict], list[dict]]:
    """A stand-in for expo.data: normalise, split 80/20 by a seeded shuffle."""
    rows = []
    for i, r in enumerate(generate_rows(seed, n_per_level)):
        rows.append({"id": f"needle-{i}", "question": r["problem"], "answer": last_boxed(r["solution"]),
                     "level": int(r["level"].split()[-1]), "solution": r["solution"], "subject": r["type"],
                     "source": "builtin:needle"})
    random.Random(seed).shuffle(rows)
    cut = int(len(rows) * 0.8)
    train, evaluation = rows[:cut], rows[cut:]
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", evaluation)
    return train, evaluation


@torch.no_grad()
def sample(model, tok, prompts: list[str], n: int, temperature: float, max_new_tokens: int,
           batch: int = 64) -> list[list[str]]:
    """n completions per prompt (batched HF generate)."""
    flat = [p for p in prompts for _ in range(n)]
    outs: list[str] = []
    for i in range(0, len(flat), batch):
        enc = tok(flat[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, do_sample=temperature > 0, temperature=temperature or None, top_p=1.0,
                             max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        outs += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [outs[i * n:(i + 1) * n] for i in range(len(prompts))]


def correct(text: str, gold: str) -> bool:
    try:
        return last_boxed(text) == gold
    except ValueError:
        return False


def evaluate(model, tok, rows, pcfg, s: Setup, levels=(5,), questions: int | None = None) -> dict:
    res = {}
    for lv in levels:
        qs = [r for r in rows if r["level"] == lv][: questions or s.eval_questions]
        outs = sample(model, tok, [solve_prompt(r["question"], tok, pcfg) for r in qs], s.eval_samples, 0.7,
                      s.max_new_tokens)
        cs = [sum(correct(o, r["answer"]) for o in os_) for os_, r in zip(outs, qs)]
        res[lv] = {"pass@1": sum(c / s.eval_samples for c in cs) / len(qs),
                   "pass@8": sum(c > 0 for c in cs) / len(qs), "n": len(qs)}
    return res


def acceptance(model, tok, rows, pcfg, s: Setup, levels=(1, 2, 3, 4, 5), per_level=50) -> dict:
    res = {}
    for lv in levels:
        qs = [r for r in rows if r["level"] == lv][:per_level]
        outs = sample(model, tok, [explain_prompt(r["question"], r["answer"], tok, pcfg) for r in qs], 1, 0.7, 32)
        res[lv] = sum(correct(o[0], r["answer"]) for o, r in zip(outs, qs)) / len(qs)
    return res


def seq_logprobs(model, tok, prompts: list[str], completions: list[str]):
    """Per-token log-probs of each completion (+eos) given its prompt: (B, T) values and mask."""
    seqs, starts = [], []
    for p, c in zip(prompts, completions):
        pi = tok(p, add_special_tokens=False)["input_ids"]
        ci = tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append(pi + ci)
        starts.append(len(pi))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)  # (B, T) right-padded
    mask = torch.zeros((len(seqs), width))
    for i, q in enumerate(seqs):
        ids[i, :len(q)] = torch.tensor(q)
        mask[i, starts[i]:len(q)] = 1
    logits = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id) | (mask > 0)).logits  # (B, T, V)
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    return lp, mask[:, 1:]


def train_arm(arm: str, model_dir: Path, train_rows, s: Setup, seed: int, pcfg, log) -> tuple:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    schedule = [rng.sample(train_rows, s.prompts_per_step) for _ in range(s.steps)]
    buffer: dict[str, str] = {}
    acc_hist = []
    for step in range(s.steps):
        batch = schedule[step]
        if arm.startswith("exp-grpo") and (step % s.regenerate_every == 0) and (s.explain_mode == "online" or step == 0):
            # Step 0 plays the explanations stage: the initial policy explains every scheduled question
            # (the pipeline explains the whole train split). Later rounds re-explain the next K steps' questions.
            horizon = s.steps if step == 0 else s.regenerate_every
            window = list({r["id"]: r for b in schedule[step:step + horizon] for r in b}.values())
            model.eval()
            outs = sample(model, tok, [explain_prompt(r["question"], r["answer"], tok, pcfg) for r in window],
                          1, 0.7, 32)
            ok = [correct(o[0], r["answer"]) for o, r in zip(outs, window)]
            rate = sum(ok) / len(ok)
            acc_hist.append(round(rate, 2))
            if rate >= s.acceptance_floor or not buffer:  # guard: below the floor keep the buffer as it is
                for o, r, good in zip(outs, window, ok):
                    if good:
                        buffer[r["id"]] = o[0]
        model.eval()
        prompts = [solve_prompt(r["question"], tok, pcfg) for r in batch]
        outs = sample(model, tok, prompts, s.num_generations, s.temperature, s.max_new_tokens)
        model.train()
        comps, advs, rewards = [], [], []
        for os_, r in zip(outs, batch):
            rs = torch.tensor([float(correct(o, r["answer"])) for o in os_])
            a = (rs - rs.mean()) / (rs.std() + 1e-4)
            comps += os_
            advs += a.tolist()
            rewards += rs.tolist()
        lp, m = seq_logprobs(model, tok, [p for p in prompts for _ in range(s.num_generations)], comps)
        adv = torch.tensor(advs)[:, None]
        loss = -(lp * adv * m).sum() / m.sum()  # token-mean over the whole batch ("dapo")
        nll = torch.tensor(0.0)
        if arm.startswith("exp-grpo"):
            ex = [(solve_prompt(r["question"], tok, pcfg), buffer[r["id"]]) for r in batch if r["id"] in buffer]
            if ex:
                elp, em = seq_logprobs(model, tok, [e[0] for e in ex], [e[1] for e in ex])
                nll = -(elp * em).sum() / em.sum()
                loss = loss + s.beta * nll
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0 or step == s.steps - 1:
            log(f"  {arm} step {step:3d} reward {sum(rewards) / len(rewards):.2f} nll {float(nll):.3f}")
    model.eval()
    return model, tok, acc_hist


def run_seed(seed: int, s: Setup, work: Path, warmup_steps: int, n_per_level: int, log,
             reuse: bool = False) -> dict:
    pcfg = PromptConfig(hint_template=s.hint_template)
    t0 = time.perf_counter()
    train, evaluation = prepare_data(seed, n_per_level, work / f"data-{seed}")
    model_dir = work / f"model-{seed}"
    if not (reuse and (model_dir / "model.safetensors").is_file()):
        build_warm_model(ModelConfig(warmup_steps=warmup_steps, seed=seed), work / f"data-{seed}", model_dir,
                         prompts=pcfg)
    t_warm = time.perf_counter() - t0
    tok = load_tokenizer(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    base_eval, base_acc = {}, {}
    if not reuse:  # --reuse: the warm model and its base numbers come from an earlier run
        base_eval = evaluate(base, tok, evaluation, pcfg, s, levels=(1, 2, 3, 4))
        base_acc = acceptance(base, tok, evaluation, pcfg, s)
    base_eval[5] = evaluate(base, tok, evaluation, pcfg, s)[5]  # the hardest level on all its questions
    log(f"seed {seed} warm-up {t_warm:.0f}s base {base_eval} acceptance {base_acc}")
    out = {"seed": seed, "warmup_s": round(t_warm, 1), "base": base_eval, "base_acceptance": base_acc}
    arms = [("grpo", 0.0)] * (not s.skip_grpo) + [(f"exp-grpo@{b}", float(b)) for b in s.betas.split(",")]
    for arm, beta in arms:
        t1 = time.perf_counter()
        model, tok, acc_hist = train_arm(arm, model_dir, train, replace(s, beta=beta), seed, pcfg, log)
        out[arm] = evaluate(model, tok, evaluation, pcfg, s)[5]
        out[arm]["online_acceptance"] = acc_hist
        out[arm]["seconds"] = round(time.perf_counter() - t1, 1)
        log(f"seed {seed} {arm} {out[arm]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/toy-exp"))
    ap.add_argument("--warmup-steps", type=int, default=600)
    ap.add_argument("--n-per-level", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse", action="store_true", help="reuse work/model-<seed> and skip the by-level base table")
    for name, default in vars(Setup()).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = ap.parse_args(argv)
    s = Setup(**{k: getattr(args, k) for k in vars(Setup())})
    torch.set_num_threads(args.threads)  # 1 on a shared machine: spinning OpenMP threads cost 6x CPU
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results = [run_seed(seed, s, args.work, args.warmup_steps, args.n_per_level, log, args.reuse) for seed in args.seeds]
    arms = [k for k in results[0] if k == "grpo" or k.startswith("exp-grpo")]
    print(f"{'seed':>4} {'base p@1':>8} {'base p@8':>8} {'acc L5':>6} " + " ".join(f"{a:>14}" for a in arms))
    for r in results:
        print(f"{r['seed']:>4} {r['base'][5]['pass@1']:8.3f} {r['base'][5]['pass@8']:8.3f} "
              f"{r['base_acceptance'].get(5, float('nan')):6.2f} " + " ".join(f"{r[a]['pass@1']:14.3f}" for a in arms))
    print(json.dumps({"setup": vars(s), "warmup_steps": args.warmup_steps, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
