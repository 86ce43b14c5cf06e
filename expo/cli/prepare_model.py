"""`expo model`: the prepare_model stage alone.

    expo model --data out/data --output out/model                          # builtin:tiny, warmed up here
    expo model --source Qwen/Qwen2.5-0.5B-Instruct --data out/data --output out/model
    expo model --source ./my-model --set model.allow_pickle_weights=true --output out/model

A hub id or local folder is loaded under the safety settings (safetensors only, no repository code
unless `model.allow_pickle_weights` / `model.trust_remote_code`) and saved again as safetensors. The
last line on stdout names the output folder and the model fingerprint.
"""

from __future__ import annotations

import argparse
import dataclasses

from expo.cli import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="a Hugging Face hub id, a local model folder, or builtin:tiny "
                        "(default: the config's model.source, builtin:tiny)")
    parser.add_argument("--data", metavar="DIR", default="",
                        help="data stage folder (train.jsonl); builtin:tiny warms up on it")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for the prepared model (created; must be empty if it exists)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from expo.config import EMBEDDED_MODEL, load_config
    from expo.errors import ConfigError
    from expo.io import read_json
    from expo.artifacts import META_FILE
    from expo.modeling import prepare_model

    cfg = load_config(args.config, args.overrides)
    model_cfg = dataclasses.replace(cfg.model, source=args.source) if args.source else cfg.model
    model_cfg.validate("model")
    if model_cfg.source == EMBEDDED_MODEL and not args.data:
        raise ConfigError(f"--data DIR is needed for {EMBEDDED_MODEL} (it warms up on the data stage's train.jsonl)")
    out = prepare_model(model_cfg, args.data, args.output, prompts=cfg.prompts)
    meta = read_json(out / META_FILE)
    print(f"model {meta.get('base', model_cfg.source)} (fingerprint {str(meta.get('fingerprint', ''))[:16]}) -> {out}")
    return 0
