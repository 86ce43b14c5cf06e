"""Will it fit? Each stage's GPUs, its estimated peak GPU memory per GPU and CPU memory per pod, worked
out from the config and the model's shape before any cluster time is spent.

    plan = make_plan(load_pipeline_config("configs/qwen2.5-3b-math.yaml"))
    plan.stages[3].gpu           # {"weights": bytes, "grads": ..., "optimizer": ..., ...} per GPU
    plan.refusal()               # None, or one line: the stage, its need, the card, the key to change

`expo plan` prints it; `expo compile` and `expo submit` refuse a config whose plan does not fit. Pure
arithmetic: no torch, no kfp, no network. The shape comes from a local folder's config.json or from
`KNOWN_SHAPES` (the hub ids the recipes use). Sizes are in bytes; GiB = 2**30.

Notation: P parameters, L layers, hidden h, MLP width I, k = kv_heads x head_dim, vocab V, a card of
`cluster.gpu_memory_gib`.

A training process (one per GPU, DDP; expo.train.policy, grpo_training, dpo), per GPU:
- weights: fp32 master weights, 4P, whenever model.dtype is a half dtype or auto (bf16 is autocast's
  compute dtype; the weights stay fp32). LoRA keeps the frozen base in the half dtype (2P) and its
  adapters in fp32. Plus a reference model where one is built: TRL's GRPO with train.kl_beta > 0 loads
  one in the policy's dtype, ExP-DPO copies the policy at the start of each round; with LoRA neither
  (the adapter is switched off instead).
- grads: 4 bytes per trainable parameter, twice with several processes: HF Trainer's DDP keeps
  `gradient_as_bucket_view` off, so its buckets hold a second copy.
- optimizer: torch's fused AdamW keeps two fp32 moments, 8 bytes per trainable parameter; the fp32
  weights are themselves the master copy, so there is no third one.
- activations (per micro-batch; `_micro_batch`): R rows of S tokens, T = R x S. GRPO: R = the
  `train.rollouts_per_micro_batch` rollouts plus, in an arm with an NLL term, the explanation rows
  that micro-batch scores (the process's prompts over its micro-batches, rounded up: both are in
  memory together, the term's forward runs before the shared backward); S = max_prompt_tokens +
  max(max_new_tokens, the NLL term's longest text): TRL pads a micro-batch to its longest prompt and
  completion, and the plan takes the worst case, every row at the budget. ExP-DPO: R = 2 x the pairs
  of a process (chosen and rejected in one forward), S = train.dpo_max_length.
  Saved for backward per token and layer, attention through SDPA / flash (no S x S scores), residual
  stream in the weights' dtype (r bytes: 4 for fp32 masters, 2 for a bf16 base), compute dtype c bytes:
      attention  RMSNorm input and output 2rh, q/k/v input ch, q ch, k and v 2ck, output ch
      MLP        RMSNorm 2rh, gate/up input ch, gate, up, SiLU(gate) and their product 4cI
      a = 4rh + 4ch + 2ck + 4cI        (LoRA adds its adapters' input copies, c(6h + I) + 7cr)
  Without gradient checkpointing all L layers are kept (T x L x a). With it only each layer's input
  (T x L x rh), and one layer is recomputed at a time in backward (T x a, plus its gate and up
  gradients, T x 2cI). Autocast caches a bf16 copy of each fp32 weight it casts (2 bytes per weight
  of the L layers) until the forward returns; without checkpointing backward keeps them too.
- logits: TRL 1.16's GRPO and DPO never form the (rows x S x V) logits: their fused LM head
  (trl.trainer.utils.add_fused_lm_head) projects 4096-token x 32768-vocab tiles (c bytes each), and its
  backward accumulates the head's gradient in fp32 (4Vh, when the head trains) and the hidden states'
  (4 x completion tokens x h). The NLL term (expo.losses.scored_nll_sum) does form them for its E rows
  of L_nll tokens: bf16 logits and their fp32 copy in forward (6 x E x L_nll x V), the fp32 copy, its
  fp32 gradient and the gradient's bf16 cast in backward (10 x E x L_nll x V). The peak of a micro-batch
  is the largest of: the end of the forward, the start of backward (the term's logits), one layer's
  recomputation.
- vLLM: an engine in the training process (TRL's colocated rollouts; else the process's own for
  ExP-DPO's samples or online explanations) claims generation.vllm_train_memory x card when it starts,
  whatever it then uses.
- CUDA: ~1 GiB per process for the CUDA context, cuBLAS workspaces, NCCL buffers and allocator slack.

A generation stage (explain, evaluate) or the rollout server: vLLM claims generation.vllm_memory x card
on each of its tensor-parallel GPUs: the weights in model.dtype / TP, a runtime of ~1 GiB (CUDA graphs,
non-torch memory) plus its profiling pass (16384 tokens x c(2h + 2I/TP) of activations, 1024 sequences x
V fp32 logits: vLLM's defaults for the offline engine on this class of GPU), and the KV cache takes the
rest. vLLM refuses to start unless the KV cache holds one max_model_len sequence. With the transformers
backend on a GPU: the weights, the KV cache of a generate call's sequences (generation.batch_size
prompts x samples) and their last-position logits in fp32.

CPU memory per pod: per process ~3 GiB (Python, torch with CUDA, transformers, TRL), the model as it
is loaded on the CPU before it moves to the GPU (every process of a pod at once), ~2 GiB for a vLLM
engine's host side, and the verifier's workers (expo.verify_pool: each process starts one per CPU of
its pod, ~0.1 GiB each; a fresh one measured 58 MB resident, sympy's caches grow with use).
prepare_model: the model loaded and written out a 5 GB shard at a time (a GGUF file is dequantised,
fp32 by default, into a second model that is saved).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expo.config import EMBEDDED_MODEL, ExpoConfig
from expo.errors import ConfigError

GiB = 2**30
CUDA_CONTEXT = 1 * GiB
PROCESS_HOST = 3 * GiB  # one Python process with torch (CUDA), transformers and TRL imported
VLLM_HOST = 2 * GiB  # a vLLM engine's host side: scheduler, tokenizer, pinned buffers
VERIFIER_WORKER = GiB // 10
SAFETENSORS_SHARD = 5 * 10**9  # save_pretrained's default max_shard_size: what a save adds in memory
VLLM_RUNTIME = 1 * GiB  # CUDA graphs and non-torch memory inside an engine's share
VLLM_PROFILE_TOKENS = 16384  # max_num_batched_tokens of vLLM's offline engine (H100-class default)
VLLM_PROFILE_SEQS = 1024  # max_num_seqs, ditto: the sampler's fp32 logits in the profiling pass
TRL_VLLM_TOKENS = 4096  # TRL's colocated engine: max_num_batched_tokens
FUSED_TILE = (4096, 32768)  # TRL's fused LM head: tokens x vocab entries per tile
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
HALF_DTYPES = ("bfloat16", "float16")
# arm -> (its trainer, the train key weighing its NLL term: expo_beta scores self-explanations, sft_beta
# reference solutions). expo.train.arms holds the same facts; a test keeps the two in step.
ARMS: dict[str, tuple[str, str | None]] = {"grpo": ("grpo", None), "exp-grpo": ("grpo", "expo_beta"),
                                           "grpo-sft": ("grpo", "sft_beta"), "exp-dpo": ("dpo", None),
                                           "sdft": ("sdft", None)}


# ---------------------------------------------------------------------------------------------
# The model's shape.


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a decoder-only transformer depends on (a config.json's fields)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool  # the LM head is the input embedding
    qkv_bias: bool = False  # Qwen2 has biases on q, k and v
    head_dim: int | None = None  # None: hidden / heads

    @property
    def kv_width(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @property
    def q_width(self) -> int:
        return self.heads * (self.head_dim or self.hidden // self.heads)

    def layer_params(self) -> int:
        """One decoder layer: q, k, v, o projections (+ q/k/v biases), SwiGLU MLP, two RMSNorms."""
        h, q, k, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        attention = h * q + 2 * h * k + q * h + ((q + 2 * k) if self.qkv_bias else 0)
        return attention + 3 * h * i + 2 * h

    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * self.layer_params() + self.hidden  # + the final norm

    def lora_params(self, r: int) -> int:
        """LoRA of rank r on every linear layer of every decoder layer (PEFT's all-linear: not the
        LM head): r x (in + out) per adapted matrix."""
        h, q, k, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        per_layer = (h + q) + 2 * (h + k) + (q + h) + 2 * (h + i) + (i + h)
        return self.layers * r * per_layer

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int = 1) -> int:
        """K and V of every layer for one token on one of `tp` GPUs (kv heads split, at least one each)."""
        heads = max(1, math.ceil(self.kv_heads / tp))
        return 2 * self.layers * heads * (self.head_dim or self.hidden // self.heads) * dtype_bytes

    def summary(self) -> str:
        return (f"{self.params() / 1e9:.2f}B parameters: {self.layers} layers, hidden {self.hidden}, "
                f"MLP {self.intermediate}, {self.heads}/{self.kv_heads} heads, vocab {self.vocab}"
                f"{', tied embeddings' if self.tied else ''}")


# The hub ids the recipes use, from their config.json (no network here). Matched by name: a hub id, a
# GGUF file or folder whose name starts with the key (case-insensitive), Instruct or base alike.
KNOWN_SHAPES: dict[str, ModelShape] = {
    "qwen2.5-1.5b": ModelShape(28, 1536, 8960, 12, 2, 151936, tied=True, qkv_bias=True),
    "qwen2.5-3b": ModelShape(36, 2048, 11008, 16, 2, 151936, tied=True, qkv_bias=True),
    "qwen2.5-7b": ModelShape(28, 3584, 18944, 28, 4, 152064, tied=False, qkv_bias=True),
    "llama-3.2-3b": ModelShape(28, 3072, 8192, 24, 8, 128256, tied=True, head_dim=128),
    "smollm2-135m": ModelShape(30, 576, 1536, 9, 3, 49152, tied=True),
}


def shape_from_config(config: dict[str, Any]) -> ModelShape:
    """A ModelShape from a transformers config.json (its text_config for a multimodal one)."""
    c = config.get("text_config") or config
    heads = int(c["num_attention_heads"])
    return ModelShape(
        layers=int(c["num_hidden_layers"]), hidden=int(c["hidden_size"]),
        intermediate=int(c["intermediate_size"]), heads=heads,
        kv_heads=int(c.get("num_key_value_heads") or heads), vocab=int(c["vocab_size"]),
        tied=bool(c.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        qkv_bias=c.get("model_type") == "qwen2" or bool(c.get("attention_bias", False)),
        head_dim=int(c["head_dim"]) if c.get("head_dim") else None)


def model_shape(source: str) -> ModelShape | None:
    """The shape of `model.source`: a local folder's config.json, else a known name; None if unknown."""
    folder = Path(source)
    if folder.is_dir() and (folder / "config.json").is_file():
        return shape_from_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    name = re.split(r"[/:]", source.rstrip("/"))[-1].lower()
    for key, shape in KNOWN_SHAPES.items():
        if name.startswith(key) and not name[len(key):len(key) + 1].isalnum():
            return shape
    return None


# ---------------------------------------------------------------------------------------------
# The plan.


@dataclass(frozen=True)
class Stage:
    """One stage's estimate: bytes per GPU by term (empty on CPU) and per pod."""

    name: str
    gpus: int  # per pod; 0 = CPU
    gpu: dict[str, int] = field(default_factory=dict)  # term -> bytes per GPU (TERMS)
    cpu: int = 0  # bytes per pod
    cpu_limit: int | None = None  # the pod's memory limit (cluster.<stage>_memory); None: none set
    pods: int = 1
    notes: tuple[str, ...] = ()
    problem: str | None = None  # why it cannot run, naming the key to change (one line)

    @property
    def peak(self) -> int:
        return sum(self.gpu.values())


TERMS = ("weights", "grads", "optimizer", "activations", "logits", "vllm", "cuda")


@dataclass(frozen=True)
class Plan:
    name: str
    source: str
    shape: ModelShape | None
    card: int  # bytes of one GPU (cluster.gpu_memory_gib)
    stages: tuple[Stage, ...]
    note: str = ""  # why there is nothing to plan (CPU, unknown shape)

    def refusal(self) -> str | None:
        """The first stage that cannot run, as one line; None when every stage fits."""
        return next((s.problem for s in self.stages if s.problem), None)


def make_plan(cfg: ExpoConfig) -> Plan:
    """Every stage of `cfg`'s pipeline: GPUs, peak GPU memory per GPU, CPU memory per pod."""
    cl = cfg.cluster
    card = int(cl.gpu_memory_gib * GiB)
    source = cfg.model.source
    uses_gpu = any(n > 0 for n in (cl.gpus_generate, cl.gpus_train, cl.gpus_evaluate))
    if source.startswith("builtin:") or source == EMBEDDED_MODEL:
        return Plan(cfg.name, source, None, card, (), "CPU: the embedded model is built and trained here, "
                    "under 2M parameters; nothing to plan")
    shape = model_shape(source)
    if shape is None:
        return Plan(cfg.name, source, None, card, (), "model shape unknown: a local folder with config.json, "
                    f"or a known name ({', '.join(KNOWN_SHAPES)}), gives the plan")
    stages = [_prepare_model(cfg, shape), _generation(cfg, shape, "evaluate"),
              _generation(cfg, shape, "generate_explanations")]
    stages += [_train(cfg, shape, arm, card) for arm in cfg.train.arms]
    if _needs_rollout_server(cfg):
        stages.append(_rollout_server(cfg, shape))
    note = "" if uses_gpu else "CPU: cluster.gpus_* are 0"
    return Plan(cfg.name, source, shape, card, tuple(stages), note)


def gib(n: float) -> str:
    """Bytes as GiB, one decimal place below 100."""
    value = n / GiB
    return f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"


def _inference_bytes(cfg: ExpoConfig) -> int:
    """Bytes per weight when generating on a GPU: model.dtype, "auto" being bf16."""
    return DTYPE_BYTES.get(cfg.model.dtype, 2)


def _training_dtype(cfg: ExpoConfig) -> str:
    """expo.train.policy.training_dtype: fp32 masters, except a LoRA run's half-dtype frozen base."""
    if cfg.train.lora and cfg.model.dtype in HALF_DTYPES:
        return cfg.model.dtype
    return "float32" if cfg.model.dtype in ("auto", *HALF_DTYPES) else cfg.model.dtype


def _pod(cfg: ExpoConfig, stage: str) -> tuple[float, int]:
    """(CPUs, memory limit in bytes) of a stage's pod: cluster.<stage>_cpu and <stage>_memory."""
    cl = cfg.cluster
    return parse_cpu(getattr(cl, f"{stage}_cpu")), parse_memory(getattr(cl, f"{stage}_memory"))


def parse_cpu(text: str) -> float:
    """A Kubernetes CPU quantity: "16" -> 16.0, "500m" -> 0.5."""
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_memory(text: str) -> int:
    """A Kubernetes memory quantity in bytes: "512Gi" -> 549755813888, "128G" -> 128000000000."""
    m = re.fullmatch(r"([0-9.]+)([KMGTPE]i?)?", text.strip())
    if not m:
        raise ValueError(f"not a memory quantity: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def _verifier_workers(cpus: float) -> int:
    return max(1, int(cpus))


# ---------------------------------------------------------------------------------------------
# Stages that do not train.


def _prepare_model(cfg: ExpoConfig, shape: ModelShape) -> Stage:
    """CPU only: the model loaded in its stored (or configured) dtype, written out a shard at a time;
    a GGUF file is dequantised (fp32 unless a dtype is set) and loaded into a second model to save."""
    gguf = cfg.model.source.endswith(".gguf") or bool(cfg.model.gguf_file)
    stored = 4 if gguf and cfg.model.dtype == "auto" else DTYPE_BYTES.get(cfg.model.dtype, 2)
    _, limit = _pod(cfg, "model")
    model = shape.params() * stored
    cpu = PROCESS_HOST + (2 * model if gguf else model + SAFETENSORS_SHARD)
    return _cpu_checked(Stage("prepare_model", 0, cpu=cpu, cpu_limit=limit), "model")


def _generation(cfg: ExpoConfig, shape: ModelShape, stage: str) -> Stage:
    """evaluate or generate_explanations: vLLM over the pod's GPUs, or transformers' generate."""
    key = {"evaluate": "evaluate", "generate_explanations": "generate"}[stage]
    gpus = getattr(cfg.cluster, f"gpus_{key}")
    seq = generation_length(cfg, stage)
    samples = cfg.explain.samples_per_question if stage == "generate_explanations" else cfg.evaluate.samples
    cpus, limit = _pod(cfg, key)
    vllm = gpus > 0 and cfg.generation.backend != "hf"
    card = int(cfg.cluster.gpu_memory_gib * GiB)
    processes = generation_processes(cfg, stage, gpus, shape, card) if vllm else 1
    # each data-parallel process holds what the one process would (as the training processes do)
    cpu = processes * (PROCESS_HOST + shape.params() * _inference_bytes(cfg) + (VLLM_HOST if vllm else 0)
                       + _verifier_workers(cpus) * VERIFIER_WORKER)
    base = Stage(stage, gpus, cpu=cpu, cpu_limit=limit)
    if gpus == 0:
        return _cpu_checked(base, key)
    if vllm:
        engine = generation_engine(cfg, shape, stage, 1 if processes > 1 else gpus, card)
        problem = engine.problem(stage, "generation.vllm_memory", f"cluster.gpus_{key}", gpus)
        if problem and processes > 1:
            problem += " (generation.parallelism data puts the whole model on every GPU: tensor spreads it)"
        layout = (f"data parallel: {processes} processes, one engine per GPU" if processes > 1 else
                  f"one engine over {gpus} GPUs (tensor parallel)")
        notes = (layout, engine.note) if gpus > 1 else (engine.note,)
        return _cpu_checked(dataclasses.replace(base, gpu={"vllm": engine.share}, notes=notes, problem=problem),
                            key)
    seqs = cfg.generation.batch_size * samples
    kv = seqs * seq * shape.kv_bytes_per_token(2) + seqs * shape.vocab * 4
    note = (f"transformers generate: {seqs} sequences of {seq} tokens per call "
            f"(generation.batch_size {cfg.generation.batch_size} x {samples} samples)")
    gpu = {"weights": shape.params() * _inference_bytes(cfg), "vllm": kv, "cuda": CUDA_CONTEXT}
    problem = None if sum(gpu.values()) <= card else (
        f"{stage} needs ~{gib(sum(gpu.values()))} GiB per GPU, cluster.gpu_memory_gib is {gib(card)}: lower "
        f"generation.batch_size (now {cfg.generation.batch_size}) or use generation.backend vllm")
    return _cpu_checked(dataclasses.replace(base, gpu=gpu, notes=(note,), problem=problem), key)


@dataclass(frozen=True)
class Engine:
    """A vLLM engine on one of its tensor-parallel GPUs: what its share holds."""

    share: int  # bytes it claims: memory fraction x card
    weights: int
    runtime: int
    seq: int  # max_model_len
    seq_bytes: int  # KV cache of one max_model_len sequence
    share_name: str  # "generation.vllm_memory 0.9"

    @property
    def kv(self) -> int:
        return self.share - self.weights - self.runtime

    @property
    def note(self) -> str:
        held = max(0, self.kv) // self.seq_bytes
        return (f"vLLM at {self.share_name}: {gib(self.share)} GiB = weights {gib(self.weights)}, runtime "
                f"{gib(self.runtime)}, KV cache {gib(max(0, self.kv))} GiB "
                f"({held} sequences of {self.seq} tokens)")

    def problem(self, stage: str, share_key: str, gpus_key: str, gpus: int) -> str | None:
        """vLLM refuses to start unless its KV cache holds one max_model_len sequence."""
        if self.kv >= self.seq_bytes:
            return None
        need = self.weights + self.runtime + self.seq_bytes
        return (f"{stage} needs ~{gib(need)} GiB per GPU for vLLM (weights, runtime, one {self.seq}-token "
                f"sequence), {self.share_name} x cluster.gpu_memory_gib gives {gib(self.share)}: raise "
                f"{share_key} or {gpus_key} (now {gpus}) for tensor parallelism")


def generation_length(cfg: ExpoConfig, stage: str) -> int:
    """max_model_len of a generation stage's engine: prompt plus the longest budget it samples."""
    budget = cfg.generation.max_new_tokens
    if stage == "generate_explanations":
        budget = max(budget, cfg.explanation_budget())  # one engine for solves and explanations
    return cfg.generation.max_prompt_tokens + budget


def generation_engine(cfg: ExpoConfig, shape: ModelShape, stage: str, tp: int, card: int) -> Engine:
    """The vLLM engine of a generation stage on one of its `tp` GPUs of `card` bytes each."""
    return _engine(cfg, shape, cfg.generation.vllm_memory, tp, generation_length(cfg, stage),
                   VLLM_PROFILE_TOKENS, VLLM_PROFILE_SEQS, card=card)


def generation_processes(cfg: ExpoConfig, stage: str, gpus: int, shape: ModelShape | None, card: int) -> int:
    """How many processes a generation stage with vLLM runs on `gpus` GPUs of `card` bytes
    (`generation.parallelism`): 1 (one engine across them, tensor parallel) or `gpus` (one engine each,
    the questions split). `auto`: one per GPU when one card's engine holds the weights with at least as
    much left for the KV cache; a model of unknown shape stays tensor parallel (it fits wherever the
    cards hold it together)."""
    parallelism = cfg.generation.parallelism
    if gpus <= 1 or parallelism == "tensor":
        return 1
    if parallelism == "data":
        return gpus
    if shape is None:
        return 1
    engine = generation_engine(cfg, shape, stage, 1, card)
    return gpus if engine.kv >= max(engine.weights, engine.seq_bytes) else 1


def _engine(cfg: ExpoConfig, shape: ModelShape, fraction: float, tp: int, seq: int, tokens: int,
            seqs: int, share_key: str = "generation.vllm_memory", card: int | None = None) -> Engine:
    c = _inference_bytes(cfg)
    profile = tokens * c * (2 * shape.hidden + 2 * shape.intermediate // tp) + seqs * shape.vocab * 4
    card = int(cfg.cluster.gpu_memory_gib * GiB) if card is None else card
    return Engine(share=int(fraction * card), weights=shape.params() * c // tp,
                  runtime=VLLM_RUNTIME + profile, seq=seq, seq_bytes=seq * shape.kv_bytes_per_token(c, tp),
                  share_name=f"{share_key} {fraction:g}")


def _needs_rollout_server(cfg: ExpoConfig) -> bool:
    """expo.cluster.vllm_server.needs_server: server mode with no URL starts one per train step."""
    gen = cfg.generation
    trains_grpo = any(ARMS[arm][0] == "grpo" for arm in cfg.train.arms)
    return (trains_grpo and cfg.cluster.gpus_train > 0 and gen.backend != "hf" and gen.vllm_mode == "server"
            and not gen.vllm_server_url.strip())


def _rollout_server(cfg: ExpoConfig, shape: ModelShape) -> Stage:
    """The rollout server each GRPO arm starts: `vllm serve` on cluster.gpus_vllm GPUs."""
    gpus = cfg.cluster.gpus_vllm
    engine = _engine(cfg, shape, cfg.generation.vllm_memory, gpus, _engine_length(cfg), VLLM_PROFILE_TOKENS,
                     VLLM_PROFILE_SEQS)
    return Stage("vllm server", gpus, gpu={"vllm": engine.share}, cpu=PROCESS_HOST + VLLM_HOST,
                 notes=(engine.note,),
                 problem=engine.problem("vllm server", "generation.vllm_memory", "cluster.gpus_vllm", gpus))


def _engine_length(cfg: ExpoConfig) -> int:
    """expo.generation.trl_rollouts.engine_length: prompt + the longest budget a training engine serves."""
    gen = cfg.generation
    return gen.max_prompt_tokens + max(gen.max_new_tokens, cfg.explain.max_new_tokens or 0)


def _cpu_checked(stage: Stage, pod: str) -> Stage:
    """The stage, with a problem when its pod's memory limit is below the estimate."""
    if stage.problem or stage.cpu_limit is None or stage.cpu <= stage.cpu_limit:
        return stage
    key = f"cluster.{pod}_memory"
    return dataclasses.replace(stage, problem=f"{stage.name} needs ~{gib(stage.cpu)} GiB of memory per pod, "
                                              f"{key} is {gib(stage.cpu_limit)} GiB: raise {key}")


# ---------------------------------------------------------------------------------------------
# Training.


@dataclass(frozen=True)
class MicroBatch:
    """What one process puts through one forward/backward."""

    rows: int  # rollouts (or DPO sequences) plus NLL rows
    seq: int  # tokens per row
    nll_rows: int  # rows of the NLL term (E)
    nll_tokens: int  # their text length (L_nll)
    completion_tokens: int  # tokens the fused LM head scores
    world: int  # training processes
    label: str  # how it was counted, for the notes


def _micro_batch(cfg: ExpoConfig, arm: str) -> MicroBatch:
    """The micro-batch of the module docstring. A split the trainers would refuse at their start
    (expo.train.grpo_training.batch_plan, expo.train.dpo.dpo_args) is refused here, before a cluster
    starts them."""
    tc, gen = cfg.train, cfg.generation
    world = max(1, cfg.cluster.gpus_train) * cfg.cluster.train_nodes
    if tc.prompts_per_step % world:
        raise ConfigError(f"config key 'train.prompts_per_step': {tc.prompts_per_step} prompts do not split "
                          f"evenly over {world} training processes (cluster.gpus_train x train_nodes); "
                          f"use a multiple of {world}")
    prompts = tc.prompts_per_step // world
    trainer, weight_key = ARMS[arm]
    if trainer == "dpo":
        seq = cfg.dpo_max_length()
        return MicroBatch(2 * prompts, seq, 0, 0, 2 * prompts * seq, world,
                          f"{prompts} pairs (train.prompts_per_step / {world}) x 2 x {seq} tokens")
    per_process = prompts * tc.num_generations
    micro = tc.rollouts_per_micro_batch or per_process
    if per_process % micro:
        raise ConfigError(f"config key 'train.rollouts_per_micro_batch': {micro} does not divide the "
                          f"{per_process} rollouts each of the {world} processes trains on per step; "
                          f"use a divisor of {per_process}")
    has_term = weight_key is not None and getattr(tc, weight_key) > 0
    nll_rows = math.ceil(prompts / (per_process // micro)) if has_term else 0  # over the micro-batches
    nll_tokens = cfg.nll_max_tokens() if nll_rows else 0
    seq = gen.max_prompt_tokens + max(gen.max_new_tokens, nll_tokens)
    rows = f" + {nll_rows} NLL row{'s' if nll_rows > 1 else ''}" if nll_rows else ""
    return MicroBatch(micro + nll_rows, seq, nll_rows, nll_tokens, micro * gen.max_new_tokens, world,
                      f"{micro} rollouts{rows} x {seq} tokens")


def _train_static(cfg: ExpoConfig, shape: ModelShape, arm: str, world: int) -> dict[str, int]:
    """Weights (with any reference model), gradients (with DDP's buckets) and AdamW's moments."""
    tc = cfg.train
    weight_bytes = DTYPE_BYTES[_training_dtype(cfg)]
    params = shape.params()
    trainable = shape.lora_params(tc.lora_r) if tc.lora else params
    weights = params * weight_bytes + (trainable * 4 if tc.lora else 0)
    # DPO's reference model, GRPO's KL reference, SDFT's teacher (a copy unless it is the live policy)
    has_reference = not tc.lora and (ARMS[arm][0] == "dpo" or tc.for_arm(arm).kl_beta > 0
                                     or (ARMS[arm][0] == "sdft" and tc.sdft_teacher != "live"))
    weights += params * weight_bytes if has_reference else 0
    grads = trainable * 4 * (2 if world > 1 else 1)
    return {"weights": weights, "grads": grads, "optimizer": trainable * 8}


def _train_transient(cfg: ExpoConfig, shape: ModelShape, mb: MicroBatch) -> dict[str, int]:
    """Activations and logits at the micro-batch's peak (the largest of its three moments)."""
    tc = cfg.train
    r = DTYPE_BYTES[_training_dtype(cfg)]
    autocast = cfg.model.dtype != "float32"
    c = 2 if autocast else 4
    h, i, k, n_layers = shape.hidden, shape.intermediate, shape.kv_width, shape.layers
    per_layer = 4 * r * h + 4 * c * h + 2 * c * k + 4 * c * i
    if tc.lora:
        per_layer += c * (6 * h + i) + 7 * c * tc.lora_r
    tokens = mb.rows * mb.seq
    working = tokens * 2 * c * i  # the gate and up gradients while one layer runs backward
    copies = 2 * n_layers * shape.layer_params() if autocast and r == 4 else 0  # bf16 casts of fp32 weights
    head_trains = not tc.lora
    fused = (min(mb.completion_tokens, FUSED_TILE[0]) * min(shape.vocab, FUSED_TILE[1]) * c
             + mb.completion_tokens * h * 4 + (shape.vocab * h * 4 if head_trains else 0))
    nll = mb.nll_rows * mb.nll_tokens * shape.vocab
    if tc.gradient_checkpointing:
        kept = tokens * n_layers * r * h
        layer = tokens * per_layer + working + 2 * shape.layer_params()
        moments = [(kept + copies, 6 * nll), (kept, 10 * nll), (kept + layer, fused)]
    else:
        kept = tokens * n_layers * per_layer + copies
        moments = [(kept, 6 * nll), (kept, 10 * nll), (kept + working, fused)]
    activations, logits = max(moments, key=sum)
    return {"activations": activations, "logits": logits}


def _train_gpu(cfg: ExpoConfig, shape: ModelShape, arm: str
               ) -> tuple[dict[str, int], list[str], Engine | None]:
    """Bytes per GPU of one training process, its notes, and its vLLM engine (None without one)."""
    mb = _micro_batch(cfg, arm)
    gpu = {**_train_static(cfg, shape, arm, mb.world), **_train_transient(cfg, shape, mb)}
    ckpt = "on" if cfg.train.gradient_checkpointing else "off"
    notes = [f"micro-batch {mb.label}, gradient checkpointing {ckpt}, {_training_dtype(cfg)} weights"
             + (f", LoRA r {cfg.train.lora_r}" if cfg.train.lora else "")]
    rollouts = max(1, cfg.train.prompts_per_step // mb.world) * cfg.train.num_generations
    engine = _train_engine(cfg, shape, arm, rollouts)
    if engine is not None:
        gpu["vllm"] = engine.share
        notes.append(engine.note)
    elif cfg.generation.backend == "hf" and ARMS[arm][0] in ("grpo", "sdft"):
        seq = _engine_length(cfg)
        gpu["vllm"] = rollouts * seq * shape.kv_bytes_per_token(2) + rollouts * shape.vocab * 4
        notes.append(f"transformers rollouts: KV cache of {rollouts} sequences of {seq} tokens")
    gpu["cuda"] = CUDA_CONTEXT
    return gpu, notes, engine


def _train_engine(cfg: ExpoConfig, shape: ModelShape, arm: str, rollouts: int) -> Engine | None:
    """The vLLM engine a training process holds at generation.vllm_train_memory: TRL's colocated one
    for the rollouts (online explanations sample from it too), else the process's own where it samples
    ExP-DPO's solutions or online explanations (rollouts from a server leave those in the process)."""
    gen, tc = cfg.generation, cfg.train
    if gen.backend == "hf":
        return None
    trainer, weight_key = ARMS[arm]
    length = _engine_length(cfg)
    if trainer in ("grpo", "sdft") and gen.vllm_mode == "colocate":  # TRL's colocated rollout engine
        return _engine(cfg, shape, gen.vllm_train_memory, 1, length, TRL_VLLM_TOKENS, rollouts,
                       "generation.vllm_train_memory")
    online = weight_key == "expo_beta" and tc.expo_beta > 0 and cfg.explain.mode == "online"
    if trainer == "dpo" or online:
        return _engine(cfg, shape, gen.vllm_train_memory, 1, length, VLLM_PROFILE_TOKENS, VLLM_PROFILE_SEQS,
                       "generation.vllm_train_memory")
    return None


def _train(cfg: ExpoConfig, shape: ModelShape, arm: str, card: int) -> Stage:
    """One arm's training processes: one per GPU of each of cluster.train_nodes pods."""
    cl = cfg.cluster
    name = f"train {arm}"
    processes = max(1, cl.gpus_train)
    cpus, limit = _pod(cfg, "train")
    host_model = shape.params() * DTYPE_BYTES[_training_dtype(cfg)]
    cpu = processes * (PROCESS_HOST + host_model + _verifier_workers(cpus) * VERIFIER_WORKER)
    if cl.gpus_train == 0:
        return _cpu_checked(Stage(name, 0, cpu=cpu, cpu_limit=limit, pods=cl.train_nodes), "train")
    gpu, notes, engine = _train_gpu(cfg, shape, arm)
    cpu += processes * VLLM_HOST if engine else 0
    peak = sum(gpu.values())
    if peak > card:
        problem = (f"{name} needs ~{gib(peak)} GiB per GPU, cluster.gpu_memory_gib is {gib(card)}: "
                   + " or ".join(_train_fixes(cfg, shape, arm, card, peak)))
    elif engine is not None:
        problem = engine.problem(name, "generation.vllm_train_memory", "cluster.gpus_train", cl.gpus_train)
    else:
        problem = None
    stage = Stage(name, cl.gpus_train, gpu=gpu, cpu=cpu, cpu_limit=limit, pods=cl.train_nodes,
                  notes=tuple(notes), problem=problem)
    return _cpu_checked(stage, "train")


def _train_fixes(cfg: ExpoConfig, shape: ModelShape, arm: str, card: int, peak: int) -> list[str]:
    """The two changes that help most, those that alone make it fit first; least disruptive first
    among equals: checkpointing and micro-batches change speed only, LoRA changes the method."""
    tc, gen = cfg.train, cfg.generation
    world = max(1, cfg.cluster.gpus_train) * cfg.cluster.train_nodes
    static = sum(_train_static(cfg, shape, arm, world).values()) + CUDA_CONTEXT
    if static > card:  # no batch or engine setting helps: every DDP process holds all of it
        lora = sum(_train_static(_with(cfg, "train", lora=True), shape, arm, world).values()) + CUDA_CONTEXT
        return [f"choose a smaller model.source (weights, gradients and optimizer state alone take "
                f"~{gib(static)} GiB on every GPU)"] + (["turn on train.lora"] if lora < card else [])
    options: list[tuple[str, ExpoConfig]] = []
    if not tc.gradient_checkpointing:
        options.append(("turn on train.gradient_checkpointing",
                        _with(cfg, "train", gradient_checkpointing=True)))
    micro = tc.rollouts_per_micro_batch
    if ARMS[arm][0] == "dpo":
        if tc.prompts_per_step > world:
            options.append((f"lower train.prompts_per_step (now {tc.prompts_per_step}: pairs per step)",
                            _with(cfg, "train", prompts_per_step=world)))
    elif micro is None or micro > 1:
        now = "null: a process's whole share per forward" if micro is None else str(micro)
        options.append((f"lower train.rollouts_per_micro_batch (now {now})",
                        _with(cfg, "train", rollouts_per_micro_batch=1)))
    engine = _train_engine(cfg, shape, arm, 1)
    if engine is not None:  # down to the least share that still starts it: weights, runtime, one sequence
        least = math.ceil(100 * (engine.weights + engine.runtime + engine.seq_bytes) / card) / 100
        if least < gen.vllm_train_memory:
            options.append((f"lower generation.vllm_train_memory (now {gen.vllm_train_memory:g})",
                            _with(cfg, "generation", vllm_train_memory=least)))
    if not tc.lora:
        options.append(("turn on train.lora", _with(cfg, "train", lora=True)))
    scored = [(text, sum(_train_gpu(alt, shape, arm)[0].values())) for text, alt in options]
    fitting = [text for text, new in scored if new <= card]
    rest = [text for text, new in sorted(scored, key=lambda s: s[1]) if text not in fitting and new < peak]
    return (fitting + rest)[:2] or ["use a card with more memory (cluster.gpu_memory_gib)"]


def _with(cfg: ExpoConfig, section: str, **changes: Any) -> ExpoConfig:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


__all__ = ["GiB", "KNOWN_SHAPES", "ModelShape", "Plan", "Stage", "TERMS", "gib", "make_plan", "model_shape",
           "parse_cpu", "parse_memory", "shape_from_config"]
