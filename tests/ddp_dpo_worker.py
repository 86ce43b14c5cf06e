"""One process of an ExP-DPO run on CPU (alone, or one of two under torchrun with gloo), for
test_dpo_processes.py.

The solutions come from the real sampler (`expo.train.dpo.default_sampler`, transformers generation on
the tiny model); online explanations from a stand-in that writes "so \\boxed{<answer>}". The process
records what it sampled and what it trained on, under DUMP (R rounds):
- `solutions-rank<r>-call<k>.json`, `explanations-rank<r>-call<k>.json`: the ids of the rows it sampled;
- `pairs-rank<r>-call<k>.json`: the pairs it built (after the length filter), one file per round.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/ddp_dpo_worker.py ROOT OUT DUMP R

ROOT holds model/, data/ and explanations/ (tests.trainkit.make_folders).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]


@contextlib.contextmanager
def recording(dump: Path) -> Iterator[Any]:
    """While open, ExP-DPO's sampler and pair filter write what this process saw into `dump`; yields
    the recording `regenerate`."""
    import expo.train.dpo as dpo
    from expo.io import write_json

    rank = int(os.environ.get("RANK", "0"))
    calls = {"solutions": 0, "explanations": 0, "pairs": 0}

    def record(kind: str, value: Any) -> None:
        write_json(dump / f"{kind}-rank{rank}-call{calls[kind]}.json", value)
        calls[kind] += 1

    made, fit = dpo.default_sampler, dpo.fit_pairs

    def sampler(cfg: Any, tokenizer: Any, regenerator: Any = None) -> Any:
        sample = made(cfg, tokenizer, regenerator)

        def recorded(model: Any, rows: list[dict[str, Any]]) -> list[list[str]]:
            record("solutions", [r["id"] for r in rows])
            return sample(model, rows)

        return recorded

    def fit_recorded(pairs: list[dict[str, Any]], tokenizer: Any, max_length: int) -> Any:
        kept, too_long = fit(pairs, tokenizer, max_length)
        record("pairs", kept)
        return kept, too_long

    def regenerate(model: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        record("explanations", [r["id"] for r in rows])
        return [{"id": r["id"], "explanation": f"so \\boxed{{{r['answer']}}}", "accepted": True}
                for r in rows]

    dpo.default_sampler, dpo.fit_pairs = sampler, fit_recorded
    try:
        yield regenerate
    finally:
        dpo.default_sampler, dpo.fit_pairs = made, fit


def run(root: Path, out: Path, dump: Path, rounds: int) -> dict[str, Any]:
    """An ExP-DPO run of `rounds` rounds, one step each, 2 pairs per step (global batch)."""
    from expo.train import train_arm
    from trainkit import boxed_reward, small_config

    cfg = small_config(steps=rounds, learning_rate=1e-3)
    cfg.train.dpo_rounds = rounds
    with recording(dump) as regenerate:
        return train_arm("exp-dpo", cfg, root / "data", root / "model", root / "explanations", out,
                         reward_fn=boxed_reward, regenerate=regenerate, checkpoint_dir=out / "checkpoints")


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
