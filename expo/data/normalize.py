"""Turning one raw row into the pipeline's row, or into the reason it cannot be used.

Our row: `{"id", "question", "answer", "level", "subject", "solution", "source"}`. A `Schema` says which
of the source's columns hold our fields and how the gold answer is found: MATH keeps it in the last
`\\boxed{}` of `solution`, GSM8K after `####` in `answer`, a custom mapping may name an answer column
that is used as it is, and may join several text columns into one field (SVAMP's `Body` + `Question`).
`auto` picks a schema from a table's columns.

Numeric gold answers are written as integers where they are integral: a float cell 14.0 (MAWPS, SVAMP)
and a text answer "14.0" (a CSV cell, GSM8K's `#### 14.0`) both become "14", so the hint never says
"14.0"; 2.5 stays "2.5". Boxed LaTeX answers are kept as written ("3.0" may be the asked-for form).

A row that cannot be used raises `Skip(reason)`; the caller counts reasons (SKIP_REASONS) so nothing is
dropped silently. Ids are a digest of the whitespace- and case-normalised question, the same key that
dedupes, so re-runs and caches agree on them whatever the row order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from expo.answers import UnbalancedBraces, gsm8k_final, last_boxed
from expo.config import DataConfig
from expo.errors import DataError

# reason -> what the table and error messages say. Order: the order of the checks below.
SKIP_REASONS: dict[str, str] = {
    "not_a_mapping": "row is not a mapping",
    "missing_field": "missing field",
    "non_text": "non-text field",
    "empty_question": "empty question",
    "unbalanced_braces": "unbalanced braces",
    "no_answer": "no extractable answer",
    "bad_level": "bad level",
    "duplicate": "duplicate question",
}
# Filters drop good rows on purpose; counted beside the errors so every row is accounted for.
FILTER_REASONS: dict[str, str] = {
    "filtered_level": "filtered by level",
    "over_max_rows": "over max_rows",
    "in_test_set": "question in the test set",  # kept out of training so the test set stays unseen
}
OUR_FIELDS = ("question", "answer", "solution", "level", "subject")


class Skip(Exception):
    """This row cannot be used; `reason` is a key of SKIP_REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _boxed_answer(solution: str) -> str | None:
    try:
        return last_boxed(solution)
    except UnbalancedBraces:
        raise Skip("unbalanced_braces") from None


_INTEGRAL_DECIMAL = re.compile(r"([-+]?\d+)\.0+")


def integral_text(answer: str) -> str:
    """'14.0' -> '14', '-3.00' -> '-3'; anything else unchanged ('2.5', '1/2', '14')."""
    match = _INTEGRAL_DECIMAL.fullmatch(answer)
    return match.group(1).lstrip("+") if match else answer


def number_text(value: int | float | Decimal) -> str:
    """A numeric cell as answer text: 14.0 -> '14', 2.5 -> '2.5', 1e-05 -> '0.00001' (never '14.0',
    never an exponent). Non-finite values are `non_text`."""
    if isinstance(value, int):
        return str(value)
    number = Decimal(repr(value)) if isinstance(value, float) else value  # repr: the shortest round trip
    if not number.is_finite():
        raise Skip("non_text")
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def _gsm8k_answer(solution: str) -> str | None:
    answer = gsm8k_final(solution)
    return integral_text(answer) if answer is not None else None


def _boxed_or_gsm8k(solution: str) -> str | None:
    boxed = _boxed_answer(solution)
    return boxed if boxed is not None else _gsm8k_answer(solution)


# A source column: one name, or several whose texts are joined with a space.
Columns = str | tuple[str, ...]


@dataclass(frozen=True)
class Schema:
    """Where our fields live in a source: `columns` maps ours -> theirs."""

    name: str
    columns: dict[str, Columns]
    extract: Callable[[str], str | None] = _boxed_or_gsm8k  # gold answer from the solution text
    required: tuple[str, ...] = field(default=())  # ours; rows without them are `missing_field`
    # ours -> another column to read when the table lacks the usual one (MATH-500 says `subject`,
    # MATH says `type`).
    fallbacks: dict[str, str] = field(default_factory=dict)

    def answer_direct(self) -> bool:
        return "answer" in self.columns

    def without(self, ours: str) -> Schema:
        """This schema with one of our fields left unread (a level given by the config, not the row)."""
        return dataclasses.replace(self, columns={k: v for k, v in self.columns.items() if k != ours})


MATH = Schema("math", {"question": "problem", "solution": "solution", "level": "level", "subject": "type"},
              _boxed_answer, ("question", "solution"), {"subject": "subject"})
GSM8K = Schema("gsm8k", {"question": "question", "solution": "answer"}, _gsm8k_answer,
               ("question", "solution"))
# Our own output rows (train.jsonl, eval.jsonl) read back in: the answer column is already the answer.
EXPO = Schema("expo", {f: f for f in OUR_FIELDS}, required=("question", "answer"))

# auto-detection: the first schema whose columns the table has. EXPO first: its rows also match GSM8K.
_DETECT: list[tuple[Schema, set[str]]] = [
    (EXPO, {"id", "question", "answer", "solution"}),
    (MATH, {"problem", "solution"}),
    (GSM8K, {"question", "answer"}),
]


def custom_schema(columns: dict[str, str | list[str]]) -> Schema:
    required = ("question", "answer") if "answer" in columns else ("question", "solution")
    theirs = {ours: tuple(c) if isinstance(c, list) else c for ours, c in columns.items()}
    return Schema("custom", theirs, _boxed_or_gsm8k, required)


SCHEMAS: dict[str, Callable[[DataConfig], Schema]] = {
    "math": lambda cfg: MATH,
    "gsm8k": lambda cfg: GSM8K,
    "custom": lambda cfg: custom_schema(cfg.columns),
}


def _names_of(theirs: Columns) -> tuple[str, ...]:
    return theirs if isinstance(theirs, tuple) else (theirs,)


def _with_fallbacks(schema: Schema, columns: list[str]) -> Schema:
    have = set(columns)
    swap = {ours: alt for ours, alt in schema.fallbacks.items()
            if ours in schema.columns and not set(_names_of(schema.columns[ours])) <= have and alt in have}
    return dataclasses.replace(schema, columns={**schema.columns, **swap}) if swap else schema


def resolve_schema(cfg: DataConfig, columns: list[str], label: str) -> Schema:
    """The configured schema, or for `auto` the one the columns match; checks required columns exist."""
    if cfg.schema == "auto":
        have = set(columns)
        schema = next((s for s, need in _DETECT if need <= have), None)
        if schema is None:
            raise DataError(f"{label}: cannot tell the schema from columns {_names(columns)}; expected "
                            "MATH (problem, solution) or GSM8K (question, answer), or set data.schema=custom "
                            "and data.columns")
        return _with_fallbacks(schema, columns)
    schema = SCHEMAS[cfg.schema](cfg)
    absent = [name for f in schema.required for name in _names_of(schema.columns[f]) if name not in columns]
    if absent and columns:
        raise DataError(f"{label}: no column {absent[0]!r} for schema {schema.name!r} "
                        f"(columns: {_names(columns)})")
    return _with_fallbacks(schema, columns)


def _names(columns: list[str], most: int = 12) -> str:
    """Column names for a one-line message: quoted (a name may hold a newline), at most `most`."""
    shown = ", ".join(repr(c) for c in columns[:most])
    return f"[{shown}{', ...' if len(columns) > most else ''}]"


# ---------------------------------------------------------------------------------------------
# Fields.


def _text(row: dict[str, Any], schema: Schema, ours: str) -> str:
    """A text field; absent optional fields are ''. Joined columns: every part must be there (a question
    without its body is not the question), their stripped texts joined with a space."""
    theirs = schema.columns.get(ours)
    if isinstance(theirs, tuple):
        parts = [_cell(row.get(name), ours) for name in theirs]
        if any(part is None for part in parts) and ours in schema.required:
            raise Skip("missing_field")
        return " ".join(p.strip() for p in parts if p is not None and p.strip())
    value = _cell(row.get(theirs) if theirs is not None else None, ours)
    if value is None:
        if ours in schema.required:
            raise Skip("missing_field")
        return ""
    return value


def _cell(value: Any, ours: str) -> str | None:
    """One cell as text (None when absent), or `Skip('non_text')`."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise Skip("non_text") from None
    if ours == "answer" and isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        # A direct answer column may hold numbers (42, 14.0, 0.5); they are answers, written as text.
        return number_text(value)
    if not isinstance(value, str):
        raise Skip("non_text")
    try:
        value.encode("utf-8")  # lone surrogates: undecodable bytes in the file, or "\ud800" in JSON
    except UnicodeEncodeError:
        raise Skip("non_text") from None
    return value


_LEVEL = re.compile(r"(?:level\s*)?(\d{1,3})", re.IGNORECASE)


def parse_level(value: Any) -> int | None:
    """'Level 5' -> 5, 5 -> 5, '5' -> 5, None or '' -> None; anything else ('Level ?') is `bad_level`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise Skip("bad_level")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if value < 1:
            raise Skip("bad_level")
        return value
    if isinstance(value, str):
        match = _LEVEL.fullmatch(value.strip())
        if match and int(match.group(1)) >= 1:
            return int(match.group(1))
    raise Skip("bad_level")


def question_key(question: str) -> str:
    """The dedupe key: case-folded, whitespace runs collapsed ('What  is 2+2?' == 'what is 2+2?')."""
    return " ".join(question.casefold().split())


def row_id(question: str) -> str:
    return hashlib.sha256(question_key(question).encode("utf-8")).hexdigest()[:16]


def normalise_row(raw: Any, schema: Schema, source: str) -> dict[str, Any]:
    """One raw row -> our row, or `Skip(reason)`."""
    if not isinstance(raw, dict):
        raise Skip("not_a_mapping")
    question = _text(raw, schema, "question").strip()
    solution = _text(raw, schema, "solution")
    subject = _text(raw, schema, "subject").strip()
    if not question:
        raise Skip("empty_question")
    if schema.answer_direct():
        answer = integral_text(_text(raw, schema, "answer").strip())  # a CSV cell "14.0" is 14 too
    else:
        answer = schema.extract(solution) or ""
    answer = answer.strip()
    if not answer:
        raise Skip("no_answer")
    level_col = schema.columns.get("level")
    level = parse_level(raw.get(level_col)) if level_col else None
    return {"id": row_id(question), "question": question, "answer": answer, "level": level,
            "subject": subject, "solution": solution.strip(), "source": source}
