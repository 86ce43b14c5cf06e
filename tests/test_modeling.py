"""Safe model loading, live-weight fingerprints and the prepare_model stage, on tiny models saved in the test."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch

from expo.artifacts import META_FILE, fingerprint
from expo.config import ModelConfig
from expo.errors import ModelError
from expo.io import read_json
from expo.modeling import (
    check_source,
    load_model,
    prepare_model,
    resolve_dtype,
    state_fingerprint,
)
from expo.scratch_models import char_tokenizer, tiny_qwen2


def save_tiny(folder, seed=0, safetensors=True):
    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden=32, layers=1, heads=2, seed=seed)
    if safetensors:
        model.save_pretrained(folder, safe_serialization=True)
    else:  # what an old checkpoint looks like: config + a pickled state dict
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tok.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny(folder)
    return folder


def test_load_model_from_a_local_folder(model_dir):
    model, tok = load_model(model_dir, ModelConfig(), device="cpu")
    assert not model.training and model.dtype == torch.float32
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert model.generation_config.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize("source", ["/no/such/model", "./relative/missing", "~/missing-model"])
def test_missing_path_is_a_model_error(source):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(source, ModelConfig())


def test_a_hub_id_is_not_taken_for_a_missing_path():
    assert check_source("Qwen/Qwen2.5-0.5B-Instruct", ModelConfig()) is None


def test_pickle_only_weights_are_refused_unless_allowed(tmp_path):
    saved = save_tiny(tmp_path, safetensors=False)
    with pytest.raises(ModelError, match="allow_pickle_weights") as err:
        load_model(tmp_path, ModelConfig())
    assert str(tmp_path) in str(err.value) and "pytorch_model.bin" in str(err.value)
    model, _ = load_model(tmp_path, ModelConfig(allow_pickle_weights=True), device="cpu")
    assert torch.equal(model.model.embed_tokens.weight, saved.model.embed_tokens.weight)


def test_folder_without_weights_or_config(tmp_path):
    with pytest.raises(ModelError, match="no weights"):
        load_model(tmp_path, ModelConfig())
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path, ModelConfig())


def test_trust_remote_code_is_off_by_default_and_warned_when_on(model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="expo.modeling"):
        load_model(model_dir, ModelConfig(), device="cpu")
        assert not caplog.records
        load_model(model_dir, ModelConfig(trust_remote_code=True), device="cpu")
    assert any("trust_remote_code is on" in r.getMessage() for r in caplog.records)


def test_dtype_auto_is_fp32_on_cpu_and_bf16_on_a_capable_gpu(monkeypatch):
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda:0") == torch.float32


def test_state_fingerprint_changes_with_every_weight_update():
    tok = char_tokenizer()
    a, b = (tiny_qwen2(tok, hidden=32, layers=1, heads=2, seed=0) for _ in range(2))
    assert state_fingerprint(a) == state_fingerprint(b)
    before = state_fingerprint(a)
    with torch.no_grad():
        a.model.norm.weight[0] += 1e-3
    assert state_fingerprint(a) != before


def test_prepare_model_copies_a_local_model_as_safetensors(model_dir, tmp_path):
    out = prepare_model(ModelConfig(source=str(model_dir)), tmp_path / "data", tmp_path / "out")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    meta = read_json(out / META_FILE)
    assert meta["base"] == str(model_dir) and meta["fingerprint"] == fingerprint(out)
    model, _ = load_model(out, ModelConfig(), device="cpu")
    reference, _ = load_model(model_dir, ModelConfig(), device="cpu")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_prepare_model_converts_pickles_only_when_allowed(tmp_path):
    save_tiny(tmp_path / "old", safetensors=False)
    with pytest.raises(ModelError, match="allow_pickle_weights"):
        prepare_model(ModelConfig(source=str(tmp_path / "old")), "", tmp_path / "out")
    out = prepare_model(ModelConfig(source=str(tmp_path / "old"), allow_pickle_weights=True), "",
                        tmp_path / "out")
    assert (out / "model.safetensors").is_file()


def test_prepare_model_never_overwrites(model_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="not empty"):
        prepare_model(ModelConfig(source=str(model_dir)), "", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(ModelError, match="builtin:tiny"):
        prepare_model(ModelConfig(source="builtin:huge"), "", tmp_path / "new")


def test_prepare_model_builds_the_embedded_model_through_the_toy_module(monkeypatch, tmp_path):
    calls = []

    def fake_build(cfg, data_dir, output_dir, prompts=None):
        calls.append((cfg.source, str(data_dir), str(output_dir)))
        return output_dir

    monkeypatch.setattr("expo.toy.model.build_warm_model", fake_build)
    out = prepare_model(ModelConfig(), tmp_path / "data", tmp_path / "m")
    assert calls == [("builtin:tiny", str(tmp_path / "data"), str(tmp_path / "m"))] and out == tmp_path / "m"


def test_cli_model_prints_the_fingerprint(model_dir, tmp_path, capsys):
    from expo.cli import prepare_model as cli

    args = argparse.Namespace(source=str(model_dir), data="", output=str(tmp_path / "out"), config=None,
                              overrides=[])
    assert cli.run(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert fingerprint(tmp_path / "out")[:16] in line and str(tmp_path / "out") in line


def test_a_hub_load_failure_is_one_model_error(monkeypatch):
    import transformers

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nmore detail")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", unreachable)
    with pytest.raises(ModelError, match=r"cannot load model 'org/name': We couldn't connect") as err:
        load_model("org/name", ModelConfig(), device="cpu")
    assert "\n" not in str(err.value)
