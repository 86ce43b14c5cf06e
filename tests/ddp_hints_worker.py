"""One process of a two-process ExP-GRPO run with hints on CPU (torchrun, gloo), for test_train_hints.py.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/ddp_hints_worker.py ROOT OUT STEPS

ROOT holds model/, data/ and explanations/; the processes' questions differ, so in a step one process may
have a collapsed group to hint while the other has none (it fills its share of the hinted round).
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]


def main(root: Path, out: Path, steps: int) -> None:
    from expo.train import train_arm
    from trainkit import small_config, zero_reward

    cfg = small_config(steps=steps, expo_beta=0.1, hints=True, hint_max_new_tokens=8)
    train_arm("exp-grpo", cfg, root / "data", root / "model", root / "explanations", out, reward_fn=zero_reward,
              checkpoint_dir=root / "ckpt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
