"""The arms, one record each: which trainer, which text the NLL term scores, its weight, what it reads.

    arm = arm_spec("exp-grpo")
    arm.trainer, arm.nll                  # "grpo", "expo"
    arm.weight_at(cfg.train)(step)        # expo_beta_at(step, steps, expo_beta, expo_beta_schedule)
    arm.needs_explanations(cfg.train)     # True when expo_beta > 0

- grpo: the GRPO trainer (ExpoGRPOTrainer) with no NLL term;
- exp-grpo: the GRPO trainer + an NLL term on self-explanations (the buffer), weight expo_beta on its
  schedule;
- grpo-sft: the GRPO trainer + an NLL term on the data set's reference solutions, constant sft_beta;
- exp-dpo: DPO rounds (expo.train.dpo); self-explanations are the chosen side, no NLL term;
- sdft: answer-conditioned self-distillation (expo.train.sdft, TRL's SDFTTrainer): the teacher is the
  policy on the explanation prompt, no reward in the loss, no NLL term.

Every other module asks this table, never an arm's name. The names are `expo.config.ALGORITHMS` (the
config checks `train.arms` against it; a test keeps the two in step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from expo.config import ALGORITHMS, TrainConfig
from expo.errors import ConfigError
from expo.losses import expo_beta_at

Trainer = Literal["grpo", "dpo", "sdft"]
# What an NLL term scores: "expo" self-explanations (weight expo_beta), "sft" reference solutions (sft_beta)
NLLText = Literal["expo", "sft"]


@dataclass(frozen=True)
class Arm:
    """One arm: its trainer, the text its NLL term scores (None: no term), whether it learns from
    self-explanations."""

    name: str
    trainer: Trainer  # "grpo": expo.train.grpo_training (ExpoGRPOTrainer); "dpo": expo.train.dpo; "sdft"
    nll: NLLText | None  # the GRPO trainer's NLL term; its name in NLLTerm
    explanations: bool  # reads the explanations stage (an ExplanationBuffer)

    def beta(self, tc: TrainConfig) -> float:
        """The configured weight of the NLL term (0 without one): expo_beta or sft_beta."""
        if self.nll == "expo":
            return tc.expo_beta
        if self.nll == "sft":
            return tc.sft_beta
        return 0.0

    def expo_beta(self, tc: TrainConfig) -> float:
        """The ExPO weight recorded in the model card and the summary: expo_beta for the arm whose term
        scores self-explanations, 0 for every other arm (grpo-sft's weight is sft_beta, not ExPO's)."""
        return tc.expo_beta if self.nll == "expo" else 0.0

    def weight_at(self, tc: TrainConfig) -> Callable[[int], float]:
        """The NLL weight per optimizer step: expo_beta on its schedule, a constant sft_beta, or 0."""
        if self.nll == "expo":
            return lambda step: expo_beta_at(step, tc.steps, tc.expo_beta, tc.expo_beta_schedule)
        if self.nll == "sft":
            return lambda step: tc.sft_beta
        return lambda step: 0.0

    def has_nll_term(self, tc: TrainConfig) -> bool:
        """Whether the GRPO trainer adds an NLL term: the arm has one and its weight is not 0."""
        return self.nll is not None and self.beta(tc) > 0

    def needs_explanations(self, tc: TrainConfig) -> bool:
        """Whether training needs the explanations stage's folder: DPO always (its chosen side), the
        GRPO trainer only when its term scores them with a weight above 0."""
        return self.explanations and (self.trainer == "dpo" or self.has_nll_term(tc))

    @property
    def needs_solutions(self) -> bool:
        """Whether the data set must have reference solutions (the sft term scores them)."""
        return self.nll == "sft"


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("grpo", trainer="grpo", nll=None, explanations=False),
    Arm("exp-grpo", trainer="grpo", nll="expo", explanations=True),
    Arm("grpo-sft", trainer="grpo", nll="sft", explanations=False),
    Arm("exp-dpo", trainer="dpo", nll=None, explanations=True),
    Arm("sdft", trainer="sdft", nll=None, explanations=False),
)}


def arm_spec(name: str) -> Arm:
    """The record of arm `name`; an unknown name is a config error listing the known ones."""
    if name not in ARMS:
        raise ConfigError(f"unknown arm {name!r} (known: {', '.join(ALGORITHMS)})")
    return ARMS[name]


__all__ = ["ARMS", "Arm", "NLLText", "Trainer", "arm_spec"]
