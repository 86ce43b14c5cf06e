r"""The answer verifier: is a completion's final answer mathematically equal to the gold answer?

What: `is_equivalent(completion, gold) -> bool`, `rewards(completions, golds) -> list[float | None]`
(1.0 right, 0.0 wrong / no answer / timed out, None when the gold answer itself cannot be parsed) and
`math_reward`, the same judgement as a TRL reward function. Training rewards, explanation filtering and
evaluation all call these, so "correct" has one definition in the whole pipeline.

Why this shape: Math-Verify (sympy) is the judge, but a hostile answer can run for ever and its own
timeouts work only in a main thread, so every judgement runs in worker processes under a soft and a
hard timeout (`expo.verify_pool`, which says how). This module is the parent's side: it extracts the
final answer (`expo.answers.final_answer`: the last `\boxed{}`; unless `boxed_only`, else GSM8K's
`#### n`, an answer statement such as "The answer is 3/4.", the value after a final `=`, or the last
number that is not a reference such as "see step 3"), caps its length and de-duplicates identical
(answer, gold) pairs (a group of G rollouts often agrees on one answer) before the pool judges them.
The pool's names (`VerifierPool`, `Outcome`, `HARD_GRACE_S`, ...) are importable from here too.
Workers never import the caller's main module, so the verifier works from any script (main guard or
not), `python -c`, a notebook, or a script read from standard input.

How:
    >>> rewards([r"so \boxed{\frac{1}{2}}", "I get 0.4", "no idea"], ["0.5", "0.5", r"\frac{"])
    [1.0, 0.0, None]
    >>> is_equivalent(r"\boxed{\dfrac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}")
    True

`bench/verify.py` measures the pool against one worker (a table, then one JSON line).
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from typing import Any, Sequence

from expo.answers import Found, UnbalancedBraces, final_answer, last_boxed
from expo.errors import ConfigError
from expo.verify_pool import (HARD_GRACE_S, MAX_CHUNK, STARTUP_TIMEOUT_S, Judge, Outcome, VerifierPool,
                              VerifyError, default_pool, judge, usable_cpus)

# The pool's names stay importable from here, where they were first defined: callers need one import.
__all__ = ["HARD_GRACE_S", "MAX_CHUNK", "STARTUP_TIMEOUT_S", "Judge", "Outcome",
           "VerifierPool", "VerifyError", "VerifyOptions", "completion_text", "default_pool",
           "extract_answer", "is_equivalent", "judge", "judge_batch", "locate_answer", "math_reward",
           "prepare_gold", "rewards", "usable_cpus"]


@dataclass(frozen=True)
class VerifyOptions:
    """How answers are found and how long each may take. The defaults suit MATH and GSM8K alike."""

    boxed_only: bool = False  # True: a completion without \boxed{} has no answer (no fallback reading)
    timeout_s: float = 5.0  # per pair, soft in the worker; hard (worker killed) at + HARD_GRACE_S
    max_chars: int = 20_000  # only this tail of a completion is searched: final answers come last
    max_answer_chars: int = 1_000  # a longer extracted answer (or gold) is not parsed at all
    min_parallel_items: int = 32  # fewer distinct pairs than this go to one worker, in one process

    def __post_init__(self) -> None:
        checks = [("timeout_s", 0.0 < self.timeout_s <= 600.0, "must be in (0, 600]"),
                  ("max_chars", self.max_chars > 0, "must be positive"),
                  ("max_answer_chars", self.max_answer_chars > 0, "must be positive"),
                  ("min_parallel_items", self.min_parallel_items >= 1, "must be >= 1")]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"VerifyOptions.{name}: {why} (got {getattr(self, name)!r})")


# ---------------------------------------------------------------------------------------------------
# Public API


def is_equivalent(completion: str, gold: str, options: VerifyOptions | None = None) -> bool:
    """True when the completion's final answer equals the gold answer (see the module docstring)."""
    return rewards([completion], [gold], options)[0] == 1.0


def rewards(completions: Sequence[str], golds: Sequence[Any], options: VerifyOptions | None = None,
            pool: VerifierPool | None = None) -> list[float | None]:
    """1.0 / 0.0 per completion; None where the gold answer itself cannot be parsed."""
    return [o.reward for o in judge_batch(completions, golds, options, pool)]


def judge_batch(completions: Sequence[str], golds: Sequence[Any], options: VerifyOptions | None = None,
                pool: VerifierPool | None = None) -> list[Outcome]:
    """Like `rewards`, with each judgement's time and timeout flag (for benchmarks and logs)."""
    options = options or VerifyOptions()
    if len(completions) != len(golds):
        raise VerifyError(f"verifier got {len(completions)} completions but {len(golds)} gold answers")
    tasks: list[tuple[str | None, str]] = []
    index: dict[tuple[str | None, str], int] = {}
    task_of: list[int | None] = []  # position in `tasks`, None when the gold is unusable as it stands
    for completion, gold in zip(completions, golds):
        g = prepare_gold(gold, options)
        if g is None:
            task_of.append(None)
            continue
        key = (extract_answer(completion, options), g)
        task_of.append(index.setdefault(key, len(tasks)))
        if task_of[-1] == len(tasks):
            tasks.append(key)
    pool = pool or default_pool()
    outcomes = pool.run(tasks, options.timeout_s, parallel=len(tasks) >= options.min_parallel_items)
    no_gold = Outcome(None, 0.0, False)
    return [no_gold if j is None else outcomes[j] for j in task_of]


def math_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """TRL reward function: `answer` is the data set's gold column; other columns arrive in kwargs.

    Completions may be strings or conversations (lists of {"role", "content"} messages, the last one
    being the model's turn).
    """
    return rewards([completion_text(c) for c in completions], list(answer))


def completion_text(completion: Any) -> str:
    """The model's text from a TRL completion: a string, a message dict, or a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)) and all(isinstance(m, dict) for m in completion):
        if not completion:
            return ""
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # multimodal-style parts: [{"type": "text", "text": ...}]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else ""
    raise VerifyError("a completion must be a string or a list of chat messages, "
                      f"got {type(completion).__name__}")


# ---------------------------------------------------------------------------------------------------
# Extraction (parent side: cheap, linear-time string work)

# `1\,234` (thin-space thousands) confuses Math-Verify (it reads 235); `1{,}234` it handles itself.
_THIN_SPACE_GROUP = re.compile(r"(?<=\d)(?:\\,|\\!|\\ |~)(?=\d{3}(?!\d))")


def extract_answer(completion: Any, options: VerifyOptions | None = None) -> str | None:
    """The final answer of a completion, cleaned; None when it has none (or it was cut off)."""
    found = locate_answer(completion, options)
    return None if found is None else found.content


def locate_answer(completion: Any, options: VerifyOptions | None = None) -> Found | None:
    """`extract_answer` with where the answer starts in `completion` and which rule found it.

    The explanation filter uses the position (is there reasoning before the answer?), so rewards and
    explanations judge the one answer this function finds.
    """
    options = options or VerifyOptions()
    if not isinstance(completion, str):
        return None
    text = completion[-options.max_chars :]
    try:
        found = final_answer(text, boxed_only=options.boxed_only)
    except UnbalancedBraces:
        return None  # the last box never closes: the final answer was truncated, not given
    answer = None if found is None else _clean(found.content, options)
    if found is None or answer is None:
        return None
    return Found(answer, found.start + len(completion) - len(text), found.kind)


def prepare_gold(gold: Any, options: VerifyOptions | None = None) -> str | None:
    """A gold answer as workers parse it: bare LaTeX (a stray \\boxed{} is unwrapped); None if unusable."""
    options = options or VerifyOptions()
    if isinstance(gold, bool) or not isinstance(gold, (str, numbers.Real)):  # numpy numbers are Real too
        return None
    text = str(gold)
    if "\\boxed" in text or "\\fbox" in text:
        try:
            text = last_boxed(text) or ""
        except UnbalancedBraces:
            return None
    return _clean(text, options)


def _clean(answer: str | None, options: VerifyOptions) -> str | None:
    if answer is None:
        return None
    if "$" in answer and "\\$" not in answer:
        answer = answer.replace("$", "")  # math-mode delimiters ($\frac12$) or a bare dollar sign ($5)
    answer = _THIN_SPACE_GROUP.sub("", answer.strip().rstrip(".").rstrip())
    if not answer or len(answer) > options.max_answer_chars:
        return None
    return answer

