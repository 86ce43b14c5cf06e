"""One process of a two-process sdft run on CPU (torchrun, gloo), for test_train_sdft.py.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/ddp_sdft_worker.py ROOT OUT STEPS

ROOT holds model/ and data/ (tests.trainkit.make_folders); checkpoints go to ROOT/ckpt, one per step.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]


def main(root: Path, out: Path, steps: int) -> None:
    from expo.train import train_arm
    from trainkit import boxed_reward, small_config

    cfg = small_config(steps=steps, checkpoint_every=1, sdft_teacher="ema", learning_rate=1e-2)
    train_arm("sdft", cfg, root / "data", root / "model", None, out, reward_fn=boxed_reward,
              checkpoint_dir=root / "ckpt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
