r"""The self-explanation sampler: answer-conditioned samples, verified, filtered, cached (stage 3).

What: for each question, `samples_per_question` explanations `c ~ pi(.|q, a*)` from `explain_prompt`,
each judged, in this order:
- `truncated`: cut at the token limit (`explain.max_new_tokens`, default generation.max_new_tokens)
  before a boxed final answer: what reads as its answer is a step of unfinished work;
- `no_answer`: no final answer found by `expo.verify.extract_answer`, the extraction the training reward
  and evaluation use (a box, `#### n`, "The answer is 3/4", a final "= x", the last number): one rule
  for what "the final answer" is, wherever a text is judged;
- `wrong_answer` / `unverifiable`: its final answer does not verify against the gold answer
  (`expo.verify.rewards`: 0.0 / None);
- `no_reasoning`: fewer than `min_reasoning_chars` non-space characters before that answer once answer
  boilerplate ("**Final Answer**", "Therefore, the answer is", `$`, markdown) is taken out: it
  restates the hint instead of deriving the answer;
- `refers_to_hint`: it treats the answer as given (`HINT_PATTERNS`: "since the answer is 42", "we are
  told the answer", "the expected answer", "the hint", or opening with "The correct answer is 42."),
  which makes no sense under the solve prompt the explanation is trained under; ordinary conclusions
  ("Therefore, the correct answer is 5") and the problem's own givens ("as stated in the problem") are
  not that;
- `not_derived` (only with `explain.require_derivation`): its final answer is not a result of its
  reasoning, only stated after it (`derived`: the value occurs nowhere before the statement, or only as a
  list number, an index or an earlier answer statement): a weak model given the answer writes unrelated
  arithmetic and pastes the answer at the end ("5 * 6 = 25 hours ... So, the answer is 20.");
- `duplicate` / `over_keep_limit`: it passed, but is the same text as a kept one, or `keep_per_question`
  were already kept.
Every sample becomes one record `{id, question, answer, level, explanation, logprob, accepted,
reject_reason, passed, sample, num_tokens, truncated}`; `accepted` marks the ones kept (at most m per
question), `passed` every sample that passed the filters. Statistics: acceptance (passed / samples)
and the reject reasons counted, overall and by level, beside the unconditioned solve rate by level,
from `solve_rate_samples` samples of the plain solve prompt with the same model and sampling settings
(and `generation.max_new_tokens`).

Why a cache: online ExPO regenerates every K steps and a re-run of the pipeline repeats the stage;
samples are stored under (model fingerprint, prompt digest, sampling settings, question id), so work
whose inputs did not change is never redone. Offline keys use `fingerprint(model_dir)`, online keys
`state_fingerprint(model)`. Within one call, questions are sampled in chunks with seeds
`generation.seed + chunk`, so a partly cached run draws different (equally valid) samples for the
rest than a cold one would.

How:
    expo explain --data runs/data --model runs/model --output runs/explanations
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from expo.answers import Found, last_boxed_span
from expo.config import ExplainConfig, ExpoConfig, GenerationConfig, PromptConfig
from expo import workspace
from expo.artifacts import fingerprint, read_table
from expo.io import write_json, write_jsonl
from expo.generation.base import progress_reader
from expo.progress import watch
from expo.prompts import explain_prompt, solve_prompt

log = logging.getLogger(__name__)

# Wording that treats the answer as given rather than found. Matched case-insensitively anywhere in the
# explanation; tests/test_explain.py has a case for each pattern and for the ordinary phrases that
# must not match. Each pattern is a fixed run of words (no nested repetition): linear-time search.
_QUALIFIED = r"(?:the\s+|this\s+|that\s+)?(?:final\s+|correct\s+)?answer"
_VALUE_NEXT = r"\s*(?:[$\\(\-\u2212]|\d)"  # a value follows: "is 42", "is $\frac12$"; not "is positive"
HINT_PATTERNS = (
    # the answer as a premise: "Since the answer is 42", "Given that the answer is 42", "We know it is"
    rf"\b(?:since|because|as|given(?:\s+that)?|knowing(?:\s+that)?|we\s+know(?:\s+that)?)\s+{_QUALIFIED}"
    rf"\s+(?:is|was|of|=){_VALUE_NEXT}",
    # having been given or told it: "We are given that the answer is 42", "Given the answer 42"
    rf"\b(?:we|i)\s+(?:are|were|have\s+been|was|am)\s+(?:given|told|provided|shown)(?:\s+that)?"
    rf"\s+{_QUALIFIED}\b",
    rf"\b(?:given|told|provided)(?:\s+that)?\s+{_QUALIFIED}\b",
    # an answer someone supplied: "The expected answer is 42", "the stated answer of 42"
    r"\b(?:given|stated|expected|provided|supplied|known|target|intended|suggested|claimed|hinted)"
    r"\s+(?:final\s+)?answer\b",
    r"\banswer\s+(?:that\s+)?(?:is\s+|was\s+|has\s+been\s+|we\s+(?:are|were)\s+|you\s+)?"
    r"(?:given|stated|provided|supplied|told|expected|gave)\b(?!\s+by\b)",
    # working toward a known answer: "To reach the stated answer of 42", "show why the answer is 42"
    r"\bto\s+(?:reach|arrive\s+at|get\s+to|obtain|get|match)\s+(?:the|this|that)\s+(?:[a-z]{1,20}\s+)?answer"
    rf"(?:\s+of)?{_VALUE_NEXT}",
    rf"\b(?:show|prove|justify|explain)\s+(?:why\s+|that\s+|how\s+)?{_QUALIFIED}\s+is\b",
    # someone said what the answer is: "the problem states that the answer is", "you told me"
    rf"\b(?:problem|question|prompt|task|you)\s+(?:says|said|states|stated|tells\s+us|told\s+us|gives|gave)"
    rf"(?:\s+that)?\s+{_QUALIFIED}\b",
    r"\byou\s+(?:told|gave|showed)\s+me\b",
    # opening with the answer, as the hint does ("The correct answer is 42. ..."): a solution finds its
    # answer at the end; one that starts from it takes it as given
    rf"\A[\s*#]*(?:the\s+)?(?:final\s+|correct\s+)?answer(?:\s+is|\s*[:=])[\s*]*{_VALUE_NEXT}",
    # the hint itself ("hints" and "thinking" are other words)
    r"\bhint\b",
)
_HINT_RE = re.compile("|".join(f"(?:{p})" for p in HINT_PATTERNS), re.IGNORECASE)

# Answer boilerplate that is not reasoning: "Therefore, the final answer is:", "**Final Answer**",
# math-mode and markdown marks. Removed before counting reasoning characters; what is left ("2+3=5",
# the toy's "374:yes") counts as before.
_BOILERPLATE = re.compile(
    r"\b(?:therefore|thus|hence|so|finally|in\s+conclusion|in\s+summary|overall)\b\s*,?"
    r"|\b(?:(?:the|our|my)\s+)?(?:final\s+|correct\s+)?answer\b"
    r"(?:\s+(?:is|would\s+be|will\s+be|equals)\b)?\s*[:=]?"
    r"|\\[\[\]()]|[*#$`]",
    re.IGNORECASE)
CACHE_FILE = "explanations-cache.jsonl"
IN_DISTRIBUTION_FILE = "in_distribution.json"

Rewards = Callable[[Sequence[str], Sequence[str]], list[float | None]]


def hint_phrase(text: str) -> str | None:
    """The first wording in `text` that treats the answer as given (lower case, spaces collapsed), or None."""
    match = _HINT_RE.search(text)
    return " ".join(match.group(0).lower().split()) if match else None


def reasoning_chars(text: str) -> int:
    """Non-space characters of `text` that are not answer boilerplate (see `_BOILERPLATE`)."""
    return len("".join(_BOILERPLATE.sub(" ", text).split()))


# ---------------------------------------------------------------------------------------------
# The derivation check (explain.require_derivation): is the final answer a result of the reasoning,
# or pasted after it? A weak chat model given the answer often writes unrelated arithmetic and then
# states the given answer ("5 hours * 6 rooms = 25 hours ... So, the answer is 20."); real solutions
# compute the value before stating it ("13 * 6 = 78. So the answer is 78", "<<48/2=24>>24",
# "... = \frac{3}{4}. \boxed{\frac34}"). Every scan reads a bounded window: linear time.

_DERIVATION_WINDOW = 4000  # characters before the final answer searched for the value
_CONTEXT = 40  # characters before an occurrence read to tell what it is
# A value in running text: \frac{3}{4}, \frac34, 1,234.5, -3, .5, 3/4 (not part of a word or a date).
_VALUE_TOKEN = re.compile(
    r"\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}|\\[dt]?frac(\d)(\d)"
    r"|(?<![\w.])(-?(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+))(?:/(\d+)(?![\d/.]))?")
# An occurrence that is not a result: inside an earlier answer statement ("The answer is 3 units."),
# a reference ("step 3", "Eq. (2)"), an exponent or an index (x^3, a_2).
_ANSWER_BEFORE = re.compile(r"\banswers?\b[^.\n]{0,30}$", re.IGNORECASE)
_REFERENCE = re.compile(
    r"\b(?:steps?|equations?|eqn?|lines?|parts?|case|problem|question|example|option)\s*[.#:]?\s*\(?\s*$",
    re.IGNORECASE)
_ANSWER_IS = re.compile(r"\banswers?(?:\s+is)?[\s*:$]*$", re.IGNORECASE)  # "The answer = 20"
_INDEX_BEFORE = re.compile(r"[\^_]\{?$")
_LIST_NUMBER = re.compile(r"\d+[.)][ \t]")  # "3. We add ...", when it opens a line
# The answer is itself the right-hand side of a computation: "100 \cdot 80 = \boxed{8000}",
# "... \equiv \boxed{9}", "so 66 + 13 * 6 = 30" read as the final "= x". Solutions that solve for x
# end "so x = \boxed{28}" without writing 28 before: the `=` is where it is computed.
_RESULT_OF = re.compile(r"(?:=|\\approx|\\equiv)[\s$]*$")
# LaTeX spellings of one value: \dfrac / \frac, \left( / (, \text{cm} / cm, thin spaces, `$`.
_LATEX_SPELLING = (
    (re.compile(r"\\[dt]frac(?![a-zA-Z])"), r"\\frac"),
    (re.compile(r"\\(?:left|right)(?![a-zA-Z])|\\[,!;: ]|\\?\$"), ""),  # \$5 -> 5 too
    (re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{([^{}]*)\}"), r"\1"),
    (re.compile(r"\\frac(\d)(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\s+"), " "),
    (re.compile(r" (?!\w)|(?<!\w) "), ""),  # spaces matter only between two word characters
)
# What a numeric answer may carry around its number: a currency sign, a percent, a degree, a unit.
_NUMERIC_DRESS = re.compile(r"\\?%$|\^\{?\\circ\}?$|(?<=\d) ?[a-zA-Z]{2,}(?:\^\d)?$")


def normalise_latex(text: str) -> str:
    r"""`text` with cheap LaTeX spelling differences removed: '\dfrac{3}{4}', '\frac34' -> '\frac{3}{4}'."""
    for pattern, replacement in _LATEX_SPELLING:
        text = pattern.sub(replacement, text)
    return text


def answer_value(answer: str) -> Fraction | None:
    r"""The number a numeric answer states ('1,234', '\$5.00', '75\%', '\dfrac{3}{4}', '30^\circ') or None."""
    text = _NUMERIC_DRESS.sub("", normalise_latex(answer).strip())
    match = _VALUE_TOKEN.fullmatch(text) if len(text) <= 40 else None
    return None if match is None else _token_value(match)


def _token_value(match: re.Match) -> Fraction | None:
    if match.group(1) is not None:
        top, bottom = match.group(1), match.group(2)
    elif match.group(3) is not None:
        top, bottom = match.group(3), match.group(4)
    else:
        top, bottom = match.group(5).replace(",", ""), match.group(6) or "1"
    try:
        return Fraction(top) / Fraction(bottom)
    except (ValueError, ZeroDivisionError):
        return None


def derived(text: str, found: Found) -> bool:
    r"""True when the final answer `found` (from `expo.verify.locate_answer(text)`) is a result of the
    reasoning before it rather than pasted after it.

    It is when (1) the answer is itself the right-hand side of `=` / `\approx` / `\equiv` that is not
    an answer statement ("100 \cdot 80 = \boxed{8000}", "so x = 28"; not "The answer = 28"), or (2) its
    value occurs in the `_DERIVATION_WINDOW` characters before it: a numeric answer as a number of the
    same value ("= 24", "<<48/2=24>>24", "0.75" for "\frac34") that is not a list number, an exponent,
    an index, a reference ("step 3") or inside an earlier answer statement ("The answer is 3 units.");
    any other answer as its LaTeX (`normalise_latex`) between word boundaries; a tuple or list
    ("(3, \frac{\pi}{2})") when each of its parts does.

    Measured (bench/derivation_check.py): it keeps 99.6 % of GSM8K reference solutions (the misses are
    label errors, gold 14 where the solution computes 18) and 87.5 % of MATH-500 dev ones: the rest do
    their last step in the answer sentence ("for a total area of \boxed{12}", counts such as "so there
    are \boxed{7}"), which no surface rule tells from a pasted answer.
    """
    start = max(0, found.start - _DERIVATION_WINDOW)
    before = text[start : found.start]
    result_of = _RESULT_OF.search(before, max(0, len(before) - _CONTEXT))
    if result_of is not None and not _ANSWER_IS.search(before, max(0, result_of.start() - _CONTEXT),
                                                       result_of.start()):
        return True  # "124 + x + x = 180 ... x = \boxed{28}", "&= \boxed{78}"; not "the answer = 20"
    answer = normalise_latex(found.content)
    parts = _parts(answer)
    if len(parts) > 1:
        return all(_occurs(part, before) for part in parts)
    return _occurs(answer, before)


def _parts(answer: str) -> list[str]:
    """The top-level comma-separated parts of a tuple, interval or list answer (one part otherwise)."""
    inner = answer[1:-1] if len(answer) > 1 and answer[0] in "([" and answer[-1] in ")]" else answer
    parts, depth, begin = [], 0, 0
    for i, c in enumerate(inner):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            parts.append(inner[begin:i])
            begin = i + 1
    parts.append(inner[begin:])
    parts = [p for p in parts if p]
    return parts if 1 < len(parts) <= 10 else [answer]


def _occurs(answer: str, before: str) -> bool:
    """Whether `answer` (normalised) occurs in `before` as a result (see `derived`)."""
    value = answer_value(answer)
    if value is not None:
        for match in _VALUE_TOKEN.finditer(before):
            if _token_value(match) == value and _is_result(before, match.start()):
                return True
        return False
    if not answer:
        return False
    text = normalise_latex(before)
    at = text.find(answer)
    while at != -1:
        ends = (at == 0 or not (text[at - 1].isalnum() and answer[0].isalnum())) and (
            at + len(answer) == len(text) or not (text[at + len(answer)].isalnum() and answer[-1].isalnum()))
        if ends and not _ANSWER_BEFORE.search(text, max(0, at - _CONTEXT), at):
            return True
        at = text.find(answer, at + 1)
    return False


def _is_result(text: str, at: int) -> bool:
    """Whether the number at `text[at]` is a value of the reasoning (`_is_value`) outside an earlier
    answer statement (see `derived`)."""
    return _is_value(text, at) and not _ANSWER_BEFORE.search(text, max(0, at - _CONTEXT), at)


# ---------------------------------------------------------------------------------------------
# The premise check: does the explanation lean on the answer being given? Phrases ("since the answer
# is 42", "the hint") catch the wordings a model has been seen to use; the structure catches the rest.
# A solution names its answer once it has worked something out: as the result of a computation
# ("6 * 7 = 42", "giving 42 outfits") or in the closing statement. An explanation that names the
# answer first and then works toward it ("To confirm the correct answer of 42, ...", "Since 42 is the
# target, ...") starts from the answer; under the solve prompt it is trained with, that answer comes
# from nowhere.

_CLAUSE = 48  # characters before a mention read to tell a result from a premise
_MENTIONS = 64  # mentions of the answer looked at (bounded work on hostile text)
# The mention is a result of what precedes it: "= 42", "is 42", "gives 42", "so he has 42", "Multiply: 42".
_RESULT_CUE = re.compile(
    r"(?:=|\\approx|\\equiv|\\to|\\Rightarrow|\\implies|→|<<[^>]*>>|\b(?:is|are|was|were|be|equals?|gives?|"
    r"giving|gave|gets?|getting|got|makes?|making|made|yields?|yielding|becomes?|leaves?|leaving|results?|"
    r"totals?|total|sum|product|comes?|obtain(?:s|ed)?|finds?|found|ha(?:s|ve|d)|needs?|so|thus|hence|"
    r"therefore|then|multiply(?:ing)?|add(?:ing)?|subtract(?:ing)?|divid(?:e|ing)|times|plus|minus)\b)"
    r"[^.;!?\n=]{0,24}$",
    re.IGNORECASE)
# The mention names the answer: "answer of 42", "the answer is 42", "42 is the target".
# Also a value to confirm or reach: "we know the total should be 42", "check that 42 is correct".
_ANSWER_BEFORE_MENTION = re.compile(
    r"\b(?:answer|target|goal|aim|expect(?:ed|s)?|should\s+be|must\s+be|supposed\s+to\s+be|know|confirm|verify|"
    r"check|show|prove|reach|arrive\s+at)\b[^.;!?\n,=]{0,30}$", re.IGNORECASE)
_ANSWER_AFTER_MENTION = re.compile(
    r"[\s$*)]*(?:(?:is|was|as|will\s+be|must\s+be)\s+(?:the|our|my|a)\s+(?:[a-z]{1,12}\s+)?(?:answer|target|goal)\b"
    r"|(?:is|was)\s+(?:correct|right|true|indeed)\b|works\b)",
    re.IGNORECASE)
# Anything worked out: an equation or inequality, an operation between two numbers, a root or power.
_WORK = re.compile(r"=|<|>|\\approx|\\equiv|\\[lg]eq?\b|\\times|\\cdot|\\div|\\sqrt|\^|[\d)}]\s*[-+*/×÷x]\s*[\d({]|[-+*/×÷]\s*$")
_OPERAND = 4  # characters after a mention read too: "8 / 2" uses 2 in a computation, names nothing


def _mentions(text: str, answer: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each place `answer` occurs in `text` as a value: a number of the same value that
    is not a list number, an exponent, an index or a reference; any other answer as its LaTeX."""
    value = answer_value(answer)
    if value is not None:
        for m in _VALUE_TOKEN.finditer(text):
            if _token_value(m) == value and _is_value(text, m.start()):
                yield m.start(), m.end()
        return
    answer = normalise_latex(answer)
    at = text.find(answer) if answer else -1
    while at != -1:
        yield at, at + len(answer)
        at = text.find(answer, at + 1)


def mentions_answer(text: str, answer: str) -> bool:
    """Whether `text` states `answer` anywhere as a value (a number of the same value, or its LaTeX):
    a hint that does is no hint but the answer, and is not used (expo.train.hints)."""
    return next(_mentions(text, answer), None) is not None


def _is_value(text: str, at: int) -> bool:
    """Whether the number at `text[at]` is a value, not a list number, an exponent, an index or a reference."""
    window = max(0, at - _CONTEXT)
    before = text[window:at]
    opens_line = ("\n" in before or window == 0) and not before.rsplit("\n", 1)[-1].strip()
    if opens_line and _LIST_NUMBER.match(text, at):
        return False
    return not (_INDEX_BEFORE.search(text, window, at) or _REFERENCE.search(text, window, at))


def _names_answer(text: str, start: int, end: int) -> bool:
    return bool(_ANSWER_BEFORE_MENTION.search(text, max(0, start - _CLAUSE), start)
                or _ANSWER_AFTER_MENTION.match(text, end))


def _is_result_of(text: str, start: int) -> bool:
    return bool(_RESULT_CUE.search(text, max(0, start - _CLAUSE), start))


def answer_as_premise(text: str, found: Found, question: str = "") -> bool:
    r"""True when `text` names its final answer `found` before working anything out, as a premise.

    The first mention of the answer before the final statement decides (an answer among the question's
    own givens cannot be told from a restated given, and passes):
    - one that names the answer ("the correct answer of 42", "42 is the target") is a premise when
      nothing was worked out before it (`_WORK`), or when the text then derives that very value
      again, or ends in it as the result of `=`: it works toward a known answer;
    - any other mention that is a result of its clause ("6 * 7 = 42", "which gives 42") is derived;
    - a bare number ("Since 42 ...") is a premise when nothing was worked out before it. A bare word
      ("Evelyn covered more ...") is not: a non-numeric answer is often the subject of the reasoning.
    """
    if next(_mentions(normalise_latex(question), found.content), None) is not None:
        return False
    mentions = _mentions(text[: found.start], found.content)
    first = next(mentions, None)
    if first is None:
        return False  # first named in the closing statement: `derived` judges that one
    start, end = first
    worked_before = bool(_WORK.search(text, 0, start) or _WORK.search(text, start, min(end + _OPERAND, found.start)))
    if _names_answer(text, start, end):
        if not worked_before or _RESULT_OF.search(text, max(0, found.start - _CONTEXT), found.start):
            return True
        return any(_is_result_of(text, at) and not _names_answer(text, at, stop)
                   for at, stop in itertools.islice(mentions, _MENTIONS))
    if _is_result_of(text, start) or answer_value(found.content) is None:
        return False
    return not worked_before


def judge_text(text: str, reward: float | None, min_reasoning_chars: int, *, truncated: bool = False,
               require_derivation: bool = False, question: str = "") -> str | None:
    """Why an explanation is rejected (see the module docstring for the order), or None when it passes.

    `reward` is the verifier's judgement of the same text; the answer's position comes from the same
    extraction (`expo.verify.locate_answer`), so an answer the reward accepts is an answer here too.
    """
    from expo.verify import VerifyOptions, locate_answer

    found = locate_answer(text, VerifyOptions())
    if truncated and (found is None or found.kind != "boxed"):
        return "truncated"
    if found is None:
        return "no_answer"
    if reward is None:
        return "unverifiable"
    if reward < 1.0:
        return "wrong_answer"
    if reasoning_chars(text[: found.start]) < min_reasoning_chars:
        return "no_reasoning"
    if hint_phrase(text) or answer_as_premise(text, found, question):
        return "refers_to_hint"
    if require_derivation and not derived(text, found):
        return "not_derived"
    return None


_AFTER_BOX = re.compile(r"[ \t]*(?:\$\$|\$|\\\]|\\\))?[ \t]*[.!]?")  # "$", "$$", "\]" or "\)", then "."


def through_final_answer(text: str, box_end: int) -> str:
    r"""`text` cut right after its box, which ends at `box_end` (`expo.answers.Boxed.end`), and the `$`,
    `\]` or full stop closing it.

    A sample cut at the token limit after its last box passes the filter on that box; what follows the
    box is unfinished work. Trained on, the explanation is the text through its answer, so the NLL
    target ends where the verified answer does (the trainer adds the EOS), never mid-sentence.
    """
    return text[: _AFTER_BOX.match(text, box_end).end()].rstrip()


# ---------------------------------------------------------------------------------------------
# The cache: one JSON line per (key -> samples); appends only, last line for a key wins.


class ExplanationCache:
    """Samples by key in a JSONL file (a folder gets `explanations-cache.jsonl` inside).

    Append-only, one writer at a time: a line cut short by a crash is ignored on the next load. Under
    torchrun every process holds the same entries and only the main one appends (`writer`).
    """

    def __init__(self, path: str | Path, writer: bool = True) -> None:
        path = Path(path)
        self.writer = writer
        self.path = path / CACHE_FILE if path.is_dir() or not path.suffix else path
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, list[dict[str, Any]]] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        bad = 0
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    self._entries[entry["key"]] = entry["samples"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    bad += 1
        if bad:
            log.warning("explanation cache %s: ignored %d unreadable line(s)", self.path, bad)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> list[dict[str, Any]] | None:
        samples = self._entries.get(key)
        if samples is None:
            self.misses += 1
        else:
            self.hits += 1
        return samples

    def put(self, key: str, samples: list[dict[str, Any]]) -> None:
        self._entries[key] = samples
        if not self.writer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": key, "samples": samples}, ensure_ascii=False) + "\n")


def cache_key(model_key: str, prompt: str, settings: dict[str, Any], question_id: str) -> str:
    """sha256 of the model, the exact prompt text (template, question, answer, chat format), the
    sampling settings and the question id."""
    payload = json.dumps({"model": model_key, "prompt": hashlib.sha256(prompt.encode()).hexdigest(),
                          "settings": settings, "id": question_id}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Sampling.


def sample_explanations(generator: Any, rows: list[dict[str, Any]], cfg: ExplainConfig, prompts: PromptConfig,
                        tokenizer: Any, cache: ExplanationCache | None, model_key: str,
                        progress: bool = False, generation: GenerationConfig | None = None,
                        reward_fn: Rewards | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sample, verify and filter explanations of `rows` (data-stage rows); returns (records, stats).

    `generation` gives top_p / max_new_tokens / seed / batch size (default: the generator's own
    config; pass the run's own `cfg.generation` when the generator was made by `generator_config`):
    explanations get `cfg.max_new_tokens` new tokens when set, solve-rate samples always
    `generation.max_new_tokens`. `reward_fn` defaults to `expo.verify.rewards`.
    """
    generation = generation or getattr(generator, "cfg", None) or GenerationConfig()
    if reward_fn is None:
        from expo.verify import rewards as reward_fn
    usable, skipped = _usable_rows(rows)
    sampler = _Sampler(generator, cfg, prompts, tokenizer, cache, model_key, generation)
    per_call = max(1, generation.batch_size * 4 // cfg.samples_per_question)  # questions per generate call
    records: list[dict[str, Any]] = []
    solved: list[tuple[Any, list[float | None]]] = []
    bar = _progress_bar(len(usable), progress)
    expected = len(usable) * (cfg.samples_per_question + cfg.solve_rate_samples)
    with watch("explain", _progress_reader(generator, records, expected)):  # a line every few seconds, tokens moving per decoding step
        for chunk_index, start in enumerate(range(0, len(usable), per_call)):
            chunk = usable[start : start + per_call]
            explained = sampler.samples(chunk, "explain", cfg.samples_per_question, seed_offset=2 * chunk_index)
            records.extend(_judge(chunk, explained, cfg, reward_fn))
            if cfg.solve_rate_samples:
                attempts = sampler.samples(chunk, "solve", cfg.solve_rate_samples,
                                           seed_offset=2 * chunk_index + 1)
                scores = reward_fn([s["text"] for a in attempts for s in a],
                                   [str(r["answer"]) for r, a in zip(chunk, attempts) for _ in a])
                it = iter(scores)
                solved.extend((r.get("level"), [next(it) for _ in a]) for r, a in zip(chunk, attempts))
            _advance(bar, len(chunk), records, sampler)
    if bar is not None:
        bar.close()
    stats = _statistics(records, solved, usable)
    stats.update(skipped=skipped, cache={"hits": sampler.hits, "misses": sampler.misses},
                 generation=sampler.generation_stats())
    return records, stats


def _usable_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows with a question and an answer; the rest are counted by reason (no sample is drawn)."""
    usable, skipped = [], Counter()
    for row in rows:
        if not str(row.get("question") or "").strip():
            skipped["empty_question"] += 1
        elif not str(row.get("answer") or "").strip():
            skipped["missing_answer"] += 1
        else:
            usable.append(row)
    if skipped:
        log.warning("explanations: skipped %s", dict(skipped))
    return usable, dict(skipped)


class _Sampler:
    """Samples per question for one prompt kind, from the cache where possible."""

    def __init__(self, generator: Any, cfg: ExplainConfig, prompts: PromptConfig, tokenizer: Any,
                 cache: ExplanationCache | None, model_key: str, generation: GenerationConfig) -> None:
        self.generator, self.cfg, self.prompts, self.tokenizer = generator, cfg, prompts, tokenizer
        self.cache, self.model_key, self.generation = cache, model_key, generation
        self.hits = self.misses = self.tokens = 0
        self.seconds = 0.0

    def prompt(self, row: dict[str, Any], kind: str) -> str:
        if kind == "explain":
            return explain_prompt(row["question"], str(row["answer"]), self.tokenizer, self.prompts)
        return solve_prompt(row["question"], self.tokenizer, self.prompts)

    def max_new_tokens(self, kind: str) -> int:
        """The explanation budget (explain.max_new_tokens) or, for solves and when unset, the rollouts'."""
        if kind == "explain" and self.cfg.max_new_tokens is not None:
            return self.cfg.max_new_tokens
        return self.generation.max_new_tokens

    def samples(self, rows: list[dict[str, Any]], kind: str, n: int, seed_offset: int) -> list[list[dict]]:
        # The budget in use is part of the key; unset, the key is what it was before the knob existed.
        max_new_tokens = self.max_new_tokens(kind)
        settings = {"kind": kind, "n": n, "temperature": self.cfg.temperature, "top_p": self.generation.top_p,
                    "max_new_tokens": max_new_tokens, "seed": self.generation.seed,
                    "max_prompt_tokens": self.generation.max_prompt_tokens,
                    "overlong_prompt": self.generation.overlong_prompt}
        prompts = [self.prompt(row, kind) for row in rows]
        keys = [cache_key(self.model_key, p, settings, str(row["id"])) for p, row in zip(prompts, rows)]
        found = [self.cache.get(k) if self.cache is not None else None for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        self.hits += len(rows) - len(todo)
        self.misses += len(todo)
        if todo:
            started = time.perf_counter()
            outs = self.generator.generate([prompts[i] for i in todo], n=n, temperature=self.cfg.temperature,
                                           max_new_tokens=max_new_tokens,
                                           seed=self.generation.seed + seed_offset)
            self.seconds += time.perf_counter() - started
            for i, completions in zip(todo, outs):
                found[i] = [{"text": c.text, "logprob": c.logprob, "num_tokens": c.num_tokens,
                             "truncated": c.truncated} for c in completions]
                self.tokens += sum(c.num_tokens for c in completions)
                if self.cache is not None and completions:  # a skipped prompt is not worth remembering
                    self.cache.put(keys[i], found[i])
        return [f or [] for f in found]

    def generation_stats(self) -> dict[str, Any]:
        from expo.train.distributed import world_size

        out = {"tokens": self.tokens, "seconds": round(self.seconds, 3),
               "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else 0.0,
               "processes": world_size()}  # under torchrun each sampled its share of the questions
        stats = getattr(self.generator, "stats", None)
        if stats is not None and hasattr(stats, "as_dict"):
            out.update({k: v for k, v in stats.as_dict().items() if k.startswith("prompts_")})
        return out


def _judge(rows: list[dict[str, Any]], samples: list[list[dict]], cfg: ExplainConfig,
           reward_fn: Rewards) -> list[dict[str, Any]]:
    """One record per sample, verified in one batch; the first m distinct passing ones are kept."""
    texts = [s["text"] for per in samples for s in per]
    golds = [str(r["answer"]) for r, per in zip(rows, samples) for _ in per]
    scores = iter(reward_fn(texts, golds) if texts else [])
    records = []
    for row, per in zip(rows, samples):
        kept: list[str] = []
        for k, sample in enumerate(per):
            reason = judge_text(sample["text"], next(scores), cfg.min_reasoning_chars,
                                truncated=bool(sample["truncated"]), require_derivation=cfg.require_derivation,
                                question=str(row["question"]))
            text = sample["text"]
            if reason is None and sample["truncated"]:  # passed on a box before the cut: keep through it
                text = through_final_answer(text, last_boxed_span(text).end)
            passed = reason is None
            if passed and text in kept:
                reason = "duplicate"
            elif passed and len(kept) >= cfg.keep_per_question:
                reason = "over_keep_limit"
            elif passed:
                kept.append(text)
            records.append({
                "id": row["id"], "question": row["question"], "answer": row["answer"],
                "level": row.get("level"), "explanation": text, "logprob": sample["logprob"],
                "accepted": reason is None, "reject_reason": reason, "passed": passed, "sample": k,
                "num_tokens": sample["num_tokens"], "truncated": sample["truncated"],
            })
    return records


# ---------------------------------------------------------------------------------------------
# Statistics.


def _level_key(level: Any) -> str:
    return "unknown" if level is None else str(level)


def _statistics(records: list[dict[str, Any]], solved: list[tuple[Any, list[float | None]]],
                rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Acceptance (passed / samples) and solve rate (correct / solve samples), overall and by level."""
    levels: dict[str, dict[str, Any]] = defaultdict(lambda: Counter())
    for row in rows:
        levels[_level_key(row.get("level"))]["questions"] += 1
    with_expl: dict[str, set] = defaultdict(set)
    for rec in records:
        lv = levels[_level_key(rec["level"])]
        lv["samples"] += 1
        lv["passed"] += rec["passed"]
        lv["kept"] += rec["accepted"]
        if rec["accepted"]:
            with_expl[_level_key(rec["level"])].add(str(rec["id"]))
    for level, scores in solved:
        lv = levels[_level_key(level)]
        lv["solve_samples"] += len(scores)
        lv["solved"] += sum(1 for s in scores if s == 1.0)
    by_level = {key: _rates(dict(counts), len(with_expl[key])) for key, counts in sorted(levels.items())}
    reasons_by_level: dict[str, Counter] = defaultdict(Counter)  # why samples failed, per level
    for rec in records:
        if rec["reject_reason"]:
            reasons_by_level[_level_key(rec["level"])][rec["reject_reason"]] += 1
    for key, level_stats in by_level.items():
        level_stats["reject_reasons"] = dict(sorted(reasons_by_level[key].items()))
    total = Counter()
    for counts in levels.values():
        total.update(counts)
    overall = _rates(dict(total), sum(len(v) for v in with_expl.values()))
    reasons = Counter(rec["reject_reason"] for rec in records if rec["reject_reason"])
    return {**overall, "by_level": by_level, "reject_reasons": dict(sorted(reasons.items()))}


def _rates(counts: dict[str, int], questions_with_explanation: int) -> dict[str, Any]:
    samples, solve_samples = counts.get("samples", 0), counts.get("solve_samples", 0)
    questions = counts.get("questions", 0)
    return {
        "questions": questions, "samples": samples, "passed": counts.get("passed", 0),
        "kept": counts.get("kept", 0),
        "acceptance_rate": counts.get("passed", 0) / samples if samples else 0.0,
        "questions_with_explanation": questions_with_explanation,
        "coverage": questions_with_explanation / questions if questions else 0.0,
        "solve_samples": solve_samples, "solved": counts.get("solved", 0),
        "solve_rate": counts.get("solved", 0) / solve_samples if solve_samples else None,
    }


def _progress_reader(generator: Any, records: list[dict[str, Any]], expected: int) -> Callable[[], str]:
    """The explain stage's progress line (expo.progress.watch): samples and tokens generated so far
    (tokens move every decoding step, inside one generate call), tok/s, explanations passed."""
    stats = getattr(generator, "stats", None)
    generated = progress_reader(stats, expected) if stats is not None else (lambda: "")

    def read() -> str:
        judged = f"{sum(1 for rec in records if rec['passed'])}/{len(records)} explanations passed" \
            if records else ""
        return ", ".join(part for part in (generated(), judged) if part)

    return read


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="q", desc="explain", file=sys.stderr, dynamic_ncols=True)


def _advance(bar: Any, done: int, records: list[dict[str, Any]], sampler: _Sampler) -> None:
    if bar is None:
        return
    passed = sum(rec["passed"] for rec in records)
    bar.update(done)
    bar.set_postfix(accept=f"{passed / len(records):.0%}" if records else "-",
                    tok_s=f"{sampler.tokens / sampler.seconds:.0f}" if sampler.seconds else "-")


# ---------------------------------------------------------------------------------------------
# The stage.


def generator_config(generation: GenerationConfig, explain: ExplainConfig) -> GenerationConfig:
    """`generation` with room for the longer of the two budgets: an engine sized by its config (vLLM's
    max_model_len) must fit explanations of `explain.max_new_tokens`. Each generate call still passes
    its own budget, so solve samples keep `generation.max_new_tokens`."""
    budget = max(generation.max_new_tokens, explain.max_new_tokens or 0)
    return generation if budget == generation.max_new_tokens else replace(generation, max_new_tokens=budget)


def cache_root(cache_dir: str, output_dir: Path) -> Path:
    """`<output>/cache` by default; a configured folder lives in the workspace shared by runs."""
    if not cache_dir:
        return output_dir / "cache"
    return (workspace.root() or output_dir) / cache_dir


def generate_explanations(cfg: ExpoConfig, data_dir: str | Path, model_dir: str | Path,
                          output_dir: str | Path, progress: bool = False) -> dict[str, Any]:
    """Sample explanations of the train split with the model in `model_dir`; write
    `explanations.jsonl` (every sample), `stats.json` and `in_distribution.json` (the paper's check,
    scored with the same model: accepted explanations vs expert solutions of the same questions, where
    the data carry solutions); return the statistics.

    Under torchrun (one process per GPU) the processes split the sampling and the verification
    (`expo.generation.sharded`) and the main process writes the files and runs the check."""
    from expo.evaluate import in_distribution_check
    from expo.generation import make_generator, resolve_backend
    from expo.generation.sharded import ProcessShards, shared_scores
    from expo.modeling import load_for_generation
    from expo.train.distributed import is_main_process, join_process_group, world_size
    from expo.verify import rewards

    rows = read_table(data_dir, "train.jsonl", hint=" (run the data stage first)")
    join_process_group()  # several processes: before a model or an engine takes this process's GPU
    # vLLM: no model here (the engine loads it); the check loads one after sampling (_check_model)
    model, tokenizer = load_for_generation(model_dir, cfg.model, resolve_backend(cfg.generation))
    generator = make_generator(model if model is not None else str(model_dir), tokenizer,
                               generator_config(cfg.generation, cfg.explain),
                               trust_remote_code=cfg.model.trust_remote_code)
    split = world_size() > 1
    output_dir = Path(output_dir)
    cache = ExplanationCache(cache_root(cfg.explain.cache_dir, output_dir) / CACHE_FILE, writer=is_main_process())
    started = time.perf_counter()
    records, stats = sample_explanations(ProcessShards(generator) if split else generator, rows, cfg.explain,
                                         cfg.prompts, tokenizer, cache, model_key=fingerprint(model_dir),
                                         progress=progress, generation=cfg.generation,
                                         reward_fn=shared_scores(rewards) if split else rewards)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    if not is_main_process():
        return stats
    write_jsonl(output_dir / "explanations.jsonl", records)
    write_json(output_dir / "stats.json", stats)
    started = time.perf_counter()
    if model is None:
        model = _check_model(model_dir, cfg)
    check = in_distribution_check(model, tokenizer, rows, records, cfg.prompts)
    check["seconds"] = round(time.perf_counter() - started, 3)
    write_json(output_dir / IN_DISTRIBUTION_FILE, check)
    return stats


def _check_model(model_dir: str | Path, cfg: ExpoConfig) -> Any:
    """The model for the in-distribution check once a vLLM engine has sampled: on a GPU the engine is
    released first and the model scored there. Its log-probs need a forward pass over every compared
    text, minutes for a 7B model on a GPU and hours on a CPU; the engine is not needed after sampling.
    Where the card did not get its memory back, the CPU (`device_with_room`)."""
    import torch

    from expo.generation.engine import release_engine
    from expo.modeling import device_with_room, load_model

    if torch.cuda.is_available():
        release_engine()
    return load_model(model_dir, cfg.model, device=device_with_room(model_dir))[0]
