"""One process of the explain and evaluate stages' library calls under torchrun (gloo), for
test_generation_processes.py: `generate_explanations` then `evaluate_model` on a tiny model with the
transformers backend, greedy where the stage allows it, each process writing how many prompts its
own generator sampled.

    python -m torch.distributed.run --standalone --nproc-per-node=N tests/ddp_generation_worker.py ROOT OUT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]


def config() -> Any:
    from expo.config import ExpoConfig

    cfg = ExpoConfig()
    cfg.generation.backend = "hf"
    cfg.generation.max_new_tokens = 12
    cfg.explain.temperature = 0.0  # greedy: the same text whichever process samples a question
    cfg.explain.samples_per_question, cfg.explain.keep_per_question = 1, 1
    cfg.explain.solve_rate_samples = 0
    cfg.evaluate.samples = 2
    return cfg


def main(root: Path, out: Path) -> None:
    from expo.evaluate import evaluate_model
    from expo.explain import generate_explanations
    from expo.generation.hf import HFGenerator
    from expo.io import write_json
    from expo.train.distributed import rank

    sampled: list[int] = []
    generate = HFGenerator.generate

    def counting(self: HFGenerator, prompts: list[str], **kwargs: Any) -> list:
        sampled.append(len(prompts))
        return generate(self, prompts, **kwargs)

    HFGenerator.generate = counting  # type: ignore[method-assign]
    cfg = config()
    generate_explanations(cfg, root / "data", root / "model", out / "explanations")
    evaluate_model(str(root / "model"), root / "data", cfg, out / "evaluation")
    write_json(out / f"sampled-rank{rank()}.json", sampled)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
