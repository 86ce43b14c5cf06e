"""One process of a two-process online ExP-GRPO run on CPU (torchrun, gloo), for test_train_resume.py.

Each process's online explanations name the process ("r<rank>n<round>\\boxed{<answer>}"), so the
processes' buffers differ. The process writes its buffer as it is when the trainer saves a checkpoint
(`dump/saved-rank<r>-step<n>.json`) and right after it loads one (`dump/loaded-rank<r>.json`): what the
test compares, apart from the checkpoint's own files.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/ddp_resume_worker.py ROOT OUT STEPS

ROOT holds model/, data/ and explanations/ (tests.trainkit.make_folders); checkpoints go to ROOT/ckpt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]


def main(root: Path, out: Path, steps: int) -> None:
    from expo.io import write_json
    from expo.train import train_arm
    from expo.train.grpo import ExpoGRPOTrainer
    from trainkit import small_config, zero_reward

    rank = int(os.environ["RANK"])
    dump = root / "dump"
    save, load = ExpoGRPOTrainer._save_checkpoint, ExpoGRPOTrainer.load_expo_state

    def saving(self: ExpoGRPOTrainer, model: Any, trial: Any) -> None:
        save(self, model, trial)
        write_json(dump / f"saved-rank{rank}-step{self.state.global_step}.json", self.buffer.state_dict())

    def loading(self: ExpoGRPOTrainer, checkpoint: str) -> None:
        load(self, checkpoint)
        write_json(dump / f"loaded-rank{rank}.json", self.buffer.state_dict())

    ExpoGRPOTrainer._save_checkpoint = saving  # type: ignore[method-assign]
    ExpoGRPOTrainer.load_expo_state = loading  # type: ignore[method-assign]
    rounds = 0

    def regenerate(model: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal rounds
        rounds += 1  # short texts: with their EOS within the 16-token budget, so the term scores them
        return [{"id": r["id"], "explanation": f"r{rank}n{rounds}\\boxed{{{r['answer']}}}", "accepted": True,
                 "passed": True} for r in rows]

    cfg = small_config(steps=steps, expo_beta=0.5, checkpoint_every=1)
    cfg.explain.mode = "online"
    cfg.explain.regenerate_every = 1  # every step after the first
    train_arm("exp-grpo", cfg, root / "data", root / "model", root / "explanations", out,
              reward_fn=zero_reward, regenerate=regenerate, checkpoint_dir=root / "ckpt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
