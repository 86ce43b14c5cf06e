"""One process of an offline ExP-GRPO run on CPU (torchrun, gloo), for test_grpo_processes.py.

Rewards are all zero, so every group is unsolved, GRPO's advantages are zero and the loss is the ExPO
term alone: beta x the token-mean NLL of the verified explanations of the step's questions. That term
depends on which questions a step draws and on the weights, not on the sampled rollouts, so a run in
two processes must give what one process gives with the same global batch. Rank 0 writes the run's
folder (metrics.jsonl, model/).

    python -m torch.distributed.run --standalone --nproc-per-node=N tests/ddp_grpo_worker.py ROOT OUT STEPS

ROOT holds model/, data/ and explanations/ (tests.trainkit.make_folders).
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]


def main(root: Path, out: Path, steps: int) -> None:
    from expo.train import train_arm
    from trainkit import small_config, zero_reward

    cfg = small_config(steps=steps, expo_beta=0.5)
    cfg.train.prompts_per_step = 4  # 2 questions per process under two processes
    train_arm("exp-grpo", cfg, root / "data", root / "model", root / "explanations", out,
              reward_fn=zero_reward)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
