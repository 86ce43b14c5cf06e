"""The explanation buffer and its collapse guard: where the ExPO term gets its self-explanations.

Offline, the buffer is filled once from the explanations stage (rows with `accepted: true`). Online,
the trainer also calls a `regenerate(model, rows) -> records` callable every K steps for the
questions of the batch; each round's acceptance rate is logged. Collapse guard: the buffer always keeps
the accepted explanations of the initial policy (the seed, never trimmed) and the newest `capacity`
of the online rounds, so a question that once had an explanation never loses it. A round whose
acceptance falls below `acceptance_floor` is not trusted to
replace anything: its explanations are not used, and training keeps the older buffered ones. (If the
policy drifts so far that it no longer explains its own answers, fresh samples are rare and likely
degenerate; the earlier explanations are still correct derivations of the gold answer.)

The buffer is plain JSON (state_dict / load_state_dict) so a checkpoint carries it across a resume.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from expo.artifacts import read_table
from expo.config import ExpoConfig


class Regenerate(Protocol):
    """Samples explanations of `rows` with the current policy; returns every sample with `accepted`."""

    def __call__(self, model: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


@dataclass
class RoundStats:
    """One regeneration round: how many samples, how many accepted, and whether the guard held them back."""

    step: int
    samples: int
    accepted: int
    used: bool  # False when acceptance < floor (the guard kept the buffer instead)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.samples if self.samples else 0.0


class ExplanationBuffer:
    """Accepted explanations per question id, oldest first: the seed's (all kept) plus at most
    `capacity` from online rounds (the oldest online ones are dropped first)."""

    def __init__(self, capacity: int = 4, acceptance_floor: float = 0.5) -> None:
        self.capacity = capacity
        self.acceptance_floor = acceptance_floor
        self._items: dict[str, list[dict[str, Any]]] = {}  # id -> [{"text", "step", "seed"}], oldest first
        self._cursor: dict[str, int] = {}  # id -> how many times it was drawn (round robin)
        self.rounds: list[RoundStats] = []

    def __len__(self) -> int:
        return sum(len(v) for v in self._items.values())

    def questions(self) -> int:
        return len(self._items)

    def has(self, qid: str) -> bool:
        """Whether question `qid` has an accepted explanation (without drawing one, as `pick` does)."""
        return bool(self._items.get(str(qid)))

    def add(self, records: Iterable[dict[str, Any]], step: int, seed: bool = False) -> int:
        """Add the accepted records (others are ignored); returns how many were added. `seed` marks
        the initial policy's explanations, which the capacity never trims."""
        added = 0
        for rec in records:
            if not rec.get("accepted") or not str(rec.get("explanation", "")).strip():
                continue
            qid = str(rec["id"])
            items = self._items.setdefault(qid, [])
            if any(item["text"] == rec["explanation"] for item in items):
                continue  # the same text twice would only double its weight
            items.append({"text": rec["explanation"], "step": step, "seed": seed})
            online = [i for i, item in enumerate(items) if not item.get("seed")]
            for i in reversed(online[: max(0, len(online) - self.capacity)]):
                del items[i]  # the oldest online explanations beyond capacity; the seed stays
            added += 1
        return added

    def seed(self, records: list[dict[str, Any]], samples: int, step: int = 0) -> RoundStats:
        """The initial policy's explanations (the explanations stage): always kept, whatever the acceptance."""
        self.add(records, step, seed=True)
        accepted = sum(1 for rec in records if rec.get("passed", rec.get("accepted")))
        stats = RoundStats(step=step, samples=samples, accepted=accepted, used=True)
        self.rounds.append(stats)
        return stats

    def add_round(self, records: list[dict[str, Any]], step: int) -> RoundStats:
        """Record one online regeneration round; its explanations are used only above the floor.

        Acceptance counts samples that passed the verifier and the hint filter (`passed`), not only
        the ones kept: keeping m of n would otherwise cap acceptance at m/n, under the floor."""
        accepted = sum(1 for rec in records if rec.get("passed", rec.get("accepted")))
        stats = RoundStats(step=step, samples=len(records), accepted=accepted, used=False)
        stats.used = bool(records) and stats.acceptance >= self.acceptance_floor
        if stats.used:
            self.add(records, step)
        self.rounds.append(stats)
        return stats

    def pick(self, qid: str) -> str | None:
        """An explanation for `qid`: the newest round's ones in turn (round robin), None if there is none."""
        items = self._items.get(str(qid))
        if not items:
            return None
        newest = max(item["step"] for item in items)
        fresh = [item for item in items if item["step"] == newest]
        n = self._cursor.get(str(qid), 0)
        self._cursor[str(qid)] = n + 1
        return fresh[n % len(fresh)]["text"]

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "acceptance_floor": self.acceptance_floor, "items": self._items,
                "cursor": self._cursor, "rounds": [vars(r) for r in self.rounds]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.acceptance_floor = float(state["acceptance_floor"])
        self._items = {str(k): list(v) for k, v in state["items"].items()}
        self._cursor = {str(k): int(v) for k, v in state["cursor"].items()}
        self.rounds = [RoundStats(**r) for r in state.get("rounds", [])]


def load_offline(explanations_dir: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The accepted rows of an explanations stage folder (`explanations.jsonl`) and the number of samples."""
    rows = read_table(explanations_dir, "explanations.jsonl", ("id", "explanation", "accepted"),
                      kind="explanations")
    return [row for row in rows if row["accepted"]], len(rows)


def make_buffer(cfg: ExpoConfig, explanations_dir: str | Path | None) -> ExplanationBuffer:
    """The buffer seeded with the initial policy's accepted explanations (the collapse guard's floor)."""
    buffer = ExplanationBuffer(capacity=max(cfg.explain.keep_per_question, 1) * 2,
                               acceptance_floor=cfg.train.acceptance_floor)
    if explanations_dir is not None:
        accepted, samples = load_offline(explanations_dir)
        buffer.seed(accepted, samples)
    return buffer


class OnlineRegenerator:
    """`regenerate(model, rows)` for online ExPO: the explanations stage's sampler on the live policy.

    One generator for the life of the training process, made on the first round: with the vLLM
    backend that is the process's one engine (`expo.generation.engine`; in a GRPO run the one TRL's
    rollouts already use), and each round pushes the current weights into it (`load_weights`, LoRA
    merged) instead of building an engine per round. The transformers backend adopts the live module.
    Under torchrun each process's engine is on its own GPU (`expo.generation.engine.engine_parallelism`),
    and a caller that splits rows over processes calls every process, an empty share included:
    building the engines is a collective step there.

    With a `cache` (expo.explain's ExplanationCache), samples are keyed by the policy's parameter
    fingerprint, so a resumed run (or a second arm from the same weights) finds the explanations it
    already sampled instead of sampling them again. Without one, no fingerprint is computed (it hashes
    every weight, every round, for nothing). Only explanations are drawn: the stage's solve-rate
    samples (`explain.solve_rate_samples`) feed its statistics, which nothing reads here.
    """

    def __init__(self, cfg: Any, tokenizer: Any, cache: Any = None) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.cache = cache
        self.generator: Any = None

    def generator_for(self, model: Any) -> Any:
        """The process's generator, now sampling from `model`'s current weights."""
        from expo.explain import generator_config
        from expo.generation import make_generator

        if self.generator is None:
            # Sized for the longer explanation budget (vLLM's max_model_len); each call passes its own.
            self.generator = make_generator(model, self.tokenizer,
                                            generator_config(self.cfg.generation, self.cfg.explain),
                                            memory=self.cfg.generation.vllm_train_memory,
                                            trust_remote_code=self.cfg.model.trust_remote_code)
        else:
            self.generator.load_weights(model)
        return self.generator

    def __call__(self, model: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from expo.explain import sample_explanations
        from expo.modeling import state_fingerprint

        generator = self.generator_for(model)  # even for no rows: a collective step under torchrun
        if not rows:
            return []
        explain = dataclasses.replace(self.cfg.explain, solve_rate_samples=0)
        model_key = state_fingerprint(model) if self.cache is not None else ""
        records, _stats = sample_explanations(generator, rows, explain, self.cfg.prompts, self.tokenizer,
                                              self.cache, model_key, generation=self.cfg.generation)
        return records


__all__ = ["ExplanationBuffer", "OnlineRegenerator", "Regenerate", "RoundStats", "load_offline",
           "make_buffer"]
