"""Validation during training: pass@1 by level on a validation subset every `train.eval_every` steps,
as a learning curve, and the choice of the checkpoint that is evaluated and registered.

Why: verl (`test_freq`) and OpenRLHF (`--eval.dataset`, `best_metric_key`) measure the policy while it
trains; a run that peaked at step 300 and collapsed by step 500 should not ship step 500. The subset is
the data stage's validation split (`eval.jsonl`, capped stratified by level to `train.eval_questions`),
scored with the verifier the evaluation uses (expo.evaluate.run_evaluation), `train.eval_samples` samples
per question at the rollout temperature 0.7 of the evaluation.

Each validation is a line of `validation.jsonl` ({"step", "levels": {"3": pass@1}, "overall", "value"}),
MLflow step metrics `val/level3/pass_at_1` and `val/overall/pass_at_1` on the arm's run (through the live
poster), and the report's learning curve. With `train.select_checkpoint: best` the weights of the step
best on `train.select_metric` (ties: the later step) are kept in `best/` and become the arm's model;
`last` keeps the final weights. `selection.json` says which step the model folder holds.

Under several processes only rank 0 validates (the others wait at their next collective).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from expo.artifacts import card_path, fingerprint, read_card, write_card
from expo.config import EvaluateConfig, ExpoConfig
from expo.gates import gate_value
from expo.io import read_json, read_jsonl, write_json
from expo.train.distributed import is_main_process
from expo.train.final_model import cast_saved_weights

log = logging.getLogger(__name__)

VALIDATION_FILE = "validation.jsonl"
SELECTION_FILE = "selection.json"
BEST_DIR = "best"


def _gate_value(levels: dict[str, float], overall: float, metric: str) -> float:
    """`hardest_level_pass@1` or `overall_pass@1` of one validation (NaN for other metrics).

    The gate's own reading (expo.gates.gate_value), so "the hardest level" means the same while
    training and at the report: a validation point holds pass@1 alone, put here in a summary's shape.
    """
    summary = {"levels": {lv: {"pass@1": v} for lv, v in levels.items()}, "overall": {"pass@1": overall}}
    return gate_value(summary, metric)


class Validator(TrainerCallback):
    """Validates every `eval_every` steps and at the last step; keeps the best weights if asked."""

    def __init__(self, cfg: ExpoConfig, tokenizer: Any, data_dir: str | Path, out: str | Path) -> None:
        from expo.evaluate import cap_by_level, load_eval_rows
        from expo.prompts import solve_prompt
        from expo.train.live import LivePoster

        self.cfg = cfg
        self.tokenizer = tokenizer
        self.out = Path(out)
        self.live = LivePoster.from_env(self.out / VALIDATION_FILE)  # the curve to MLflow as it grows
        self.rows = cap_by_level(load_eval_rows(data_dir), cfg.train.eval_questions)
        self.prompts = [solve_prompt(r["question"], tokenizer, cfg.prompts) for r in self.rows]
        self.history: list[dict[str, Any]] = read_jsonl(self.out / VALIDATION_FILE) if (
            self.out / VALIDATION_FILE).is_file() else []
        self.best = max((h["value"] for h in self.history if not math.isnan(h["value"])), default=-math.inf)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        step, every = state.global_step, self.cfg.train.eval_every
        if not is_main_process() or model is None or not (step % every == 0 or step == state.max_steps):
            return
        if any(h["step"] == step for h in self.history):
            return  # a resumed run redoing a step that was validated
        self.validate(getattr(model, "module", model), step)

    def validate(self, model: Any, step: int) -> dict[str, Any]:
        """Score `model` on the subset, record the point, keep the weights if they are the best."""
        from expo.evaluate import run_evaluation
        from expo.generation import make_generator
        from expo.metrics import aggregate

        tc = self.cfg.train
        was_training = model.training
        model.eval()
        try:
            generator = make_generator(model, self.tokenizer, self.cfg.generation,
                                       trust_remote_code=self.cfg.model.trust_remote_code)
            results, _ = run_evaluation(generator, self.rows, self.prompts,
                                        EvaluateConfig(samples=tc.eval_samples, greedy=False),
                                        seed=self.cfg.generation.seed + step)
        finally:
            model.train(was_training)
        summary = aggregate(results)
        levels = {lv: s["pass@k"]["1"]["mean"] for lv, s in summary["by_level"].items() if lv.isdigit()}
        overall = summary["overall"]["pass@k"]["1"]["mean"]
        point = {"step": step, "levels": levels, "overall": overall,
                 "value": _gate_value(levels, overall, tc.select_metric)}
        self.history.append(point)
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / VALIDATION_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(point, sort_keys=True) + "\n")
        if self.live is not None:
            self.live.add(curve_rows([point])[0])
        log.info("step %d: validation pass@1 %.3f (%s)", step, overall, tc.select_metric)
        if tc.select_checkpoint == "best" and point["value"] >= self.best:  # ties: the later step
            self.best = point["value"]
            self._keep(model, step)
        return point

    def _keep(self, model: Any, step: int) -> None:
        """Save these weights as the best so far (a LoRA policy merged into a copy, not in place)."""
        best = self.out / BEST_DIR
        if best.exists():
            shutil.rmtree(best)
        to_save = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
        to_save.save_pretrained(best, safe_serialization=True)
        write_json(best / "step.json", {"step": step})


def curve_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation points as MLflow step rows: {"step", "val/overall/pass_at_1", "val/level3/pass_at_1"}."""
    return [{"step": h["step"], "val/overall/pass_at_1": h["overall"],
             **{f"val/level{lv}/pass_at_1": v for lv, v in h["levels"].items()}} for h in history]


def select_checkpoint(cfg: ExpoConfig, out: str | Path, final_step: int) -> dict[str, Any]:
    """Put the chosen weights in `out/model` and write `selection.json`; returns it.

    `last`: the final weights stay. `best`: the best validated weights replace them (tokenizer and
    the model card stay; the card gains `selected_step`). Without validation: last."""
    out = Path(out)
    tc = cfg.train
    history = read_jsonl(out / VALIDATION_FILE) if (out / VALIDATION_FILE).is_file() else []
    step, how = final_step, "last"
    best = out / BEST_DIR
    if tc.select_checkpoint == "best" and (best / "step.json").is_file():
        step, how = int(read_json(best / "step.json")["step"]), "best"
        model = out / "model"
        for old in list(model.glob("*.safetensors")) + list(model.glob("*.safetensors.index.json")):
            old.unlink()
        for path in best.iterdir():
            if path.name != "step.json":
                shutil.copy2(path, model / path.name)
        shutil.rmtree(best)
        dtype = read_card(model).get("dtype")
        if dtype:  # best/ was saved from the fp32 master weights; the final folder holds the saved dtype
            cast_saved_weights(model, dtype)
    if card_path(out / "model").is_file():
        card = read_card(out / "model")
        card.update({"selected_step": step, "selected_by": how})
        if how == "best":  # other weights than the card was written for
            card["fingerprint"] = fingerprint(out / "model")
        write_card(out / "model", card)
    value = next((h["value"] for h in history if h["step"] == step), None)
    selection = {"select": tc.select_checkpoint, "chosen": how, "step": step, "final_step": final_step,
                 "metric": tc.select_metric, "value": value, "validations": len(history)}
    write_json(out / SELECTION_FILE, selection)
    return selection


__all__ = ["BEST_DIR", "SELECTION_FILE", "VALIDATION_FILE", "Validator", "curve_rows", "select_checkpoint"]
