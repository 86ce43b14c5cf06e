"""Pulling final answers out of text: the last `\\boxed{...}` / `\\fbox{...}`, GSM8K's `#### n`, and
`final_answer`, which reads a model's answer as a person would when it wrote no box.

Shared by the data stage (gold answers), the verifier (model answers) and the explanation filter, so
all agree on what "the final answer" is. Pure string scanning: linear time, no regex backtracking on
hostile input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_GSM8K_FINAL = re.compile(r"####\s*([^\n]+)")
_BARE_TOKEN = re.compile(r"[^\s${}]+")
_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.DOTALL)
# A number: comma-grouped thousands (1,234.5), plain (1234, -0.5) or a bare decimal (.5). Commas that
# are not thousands separators ("1,2,3") split numbers instead of gluing them into 123.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")


class UnbalancedBraces(ValueError):
    """A `\\boxed{` whose braces never close."""


@dataclass(frozen=True)
class Boxed:
    content: str
    start: int  # index of the backslash of the box command
    end: int  # index just after the box (its closing brace, or its bare token)


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` or `\\fbox{...}`, nested braces kept; None if there is none.

    >>> last_boxed(r"so \\boxed{1} then \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> last_boxed("no box") is None
    True

    Raises UnbalancedBraces when the last box command opens a brace that never closes.
    """
    box = _find_last_box(text)
    return None if box is None else box.content


def last_boxed_span(text: str) -> Boxed | None:
    """Like `last_boxed`, with the position of the box (to check for reasoning before it)."""
    return _find_last_box(text)


def _find_last_box(text: str) -> Boxed | None:
    # Each command's last occurrence is tracked on its own, so every rfind scans only the stretch
    # since that command's previous hit: linear overall even on text full of rejected `\boxedx`.
    last = {cmd: text.rfind(cmd) for cmd in _BOX_COMMANDS}
    while True:
        cmd = max(last, key=last.__getitem__)
        start = last[cmd]
        if start == -1:
            return None
        box = _box_at(text, start, cmd)
        if box is not None:
            return box
        last[cmd] = text.rfind(cmd, 0, start)


def _box_at(text: str, start: int, cmd: str) -> Boxed | None:
    """The box whose command starts at `start`, or None when it is another macro (`\\fboxsep`) or empty."""
    i = start + len(cmd)
    if i < len(text) and text[i].isalpha():
        return None  # a longer macro name such as \fboxsep or \boxedanswer
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text) and text[i] == "{":
        content = _balanced(text, i)
        return Boxed(content, start, i + len(content) + 2)  # "{" + content + "}"
    # `\boxed 5` / `\boxed5` (no braces) is valid LaTeX; take the token up to a space, `$` or brace.
    token = _BARE_TOKEN.match(text, i)
    return Boxed(token.group(0), start, token.end()) if token else None


def _balanced(text: str, open_at: int) -> str:
    depth = 0
    # Only braces and escapes matter; the regex skips everything else in C (megabyte inputs stay fast).
    # An escape pair is consumed whole: \{ and \} are literal braces, and after \\ (a line break) the
    # next brace counts again.
    for tok in _BRACE_TOKENS.finditer(text, open_at):
        if tok.group() == "{":
            depth += 1
        elif tok.group() == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : tok.start()]
    raise UnbalancedBraces(f"unbalanced braces after position {open_at}")


def gsm8k_final(text: str) -> str | None:
    """GSM8K's final answer after `####`, thousands separators removed: '#### 1,234' -> '1234'."""
    matches = _GSM8K_FINAL.findall(text)
    if not matches:
        return None
    answer = matches[-1].strip().replace(",", "").rstrip(".")
    return answer or None


def last_number(text: str) -> str | None:
    """The last plain number in the text (GSM8K-style fallback when there is no box), commas removed.

    >>> last_number("so 1,234 apples, 2 of them 0.5 kg: .5")
    '.5'
    """
    # Only the tail can hold a final answer; scanning a bounded window keeps hostile input cheap.
    matches = _NUMBER.findall(text[-2000:])
    if not matches:
        return None
    return matches[-1].replace(",", "")


# ---------------------------------------------------------------------------------------------------
# The final answer of a completion, as a person would read it.
#
# A model's final answer is its last box; failing that GSM8K's `#### n`; failing that an answer
# statement ("The answer is 3/4.", "**Final Answer:** $-\frac{1}{2}$"); failing that the value after a
# final `=`; failing that the last number that is not a reference ("see step 3") or inside a closing
# remark in parentheses ("12 apples (see step 3)"). Everything after the box search reads only the
# last `_TAIL` characters and every scan is bounded, so hostile input costs linear time at most.

_TAIL = 2000  # final answers come last; the statement / equation / number fallbacks read only this tail
_VALUE_WINDOW = 200  # an answer statement's value must start and end within this many characters

KINDS = ("boxed", "gsm8k", "statement", "equation", "number")


@dataclass(frozen=True)
class Found:
    """A final answer: its text, where it starts in the searched text, and which rule found it."""

    content: str
    start: int  # index of the box command, the `####`, or the value itself
    kind: str  # one of KINDS


_ANSWER_WORD = re.compile(r"\banswer\b", re.IGNORECASE)
# What joins "answer" to its value: "is", ":", "=", a closing `**` or a line break (a header such as
# "**Final Answer**\n42"). Every part is optional, so the match never backtracks; `final_answer`
# demands that at least one of them is there ("the answer 42" is not a statement).
_CONNECTOR = re.compile(
    r"[ \t]*(?P<bold>\*\*|__)?[ \t]*"
    r"(?P<verb>(?:is|was|would\s+be|will\s+be|should\s+be|must\s+be|equals|becomes)\b)?[ \t]*"
    r"(?:(?:therefore|thus|then|indeed|simply|just|clearly|exactly|now)\b[ \t]*)?"
    r"(?P<sep>[:=])?[ \t]*(?P<bold2>\*\*|__)?[ \t]*(?P<newline>\n\s{0,40})?",
    re.IGNORECASE)
_COMMAND = re.compile(r"\\(?:[a-zA-Z]+|[,!;% ])")
# LaTeX commands that are values (or build one) on their own: `\pi`, `\sqrt{2}`, `\frac{a}{b}`.
_VALUE_COMMANDS = frozenset({"frac", "dfrac", "tfrac", "sqrt", "pi", "infty", "e"})
_OPERATORS = "+-*/^=\u2212"
_OPERATOR_COMMANDS = ("\\times", "\\cdot", "\\div", "\\pm")
# Words in math mode that are prose, not math: `$5 and $6` is two dollar amounts, not one formula.
_PROSE = re.compile(r"(?<![\\a-zA-Z{])[a-zA-Z]{2,}")
# A number that names a step, an equation or a part of the text: "see step 3", "(Eq. 2)".
_REFERENCE_BEFORE = re.compile(
    r"\b(?:steps?|equations?|eqn?|lines?|lemma|theorem|fig|figure|table|section|sec|case|part|problem|"
    r"question|example|exercise|page|chapter|item|rule|round|method|option)\s*[.#:]?\s*\(?\s*$",
    re.IGNORECASE)
_NUMBER_OR_FRACTION = re.compile(
    r"\\[dt]?frac\{-?\d+\}\{-?\d+\}"  # \frac{3}{4}
    r"|(?<![\d/])[-\u2212]?(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"  # 1,234.5 / -3 / .5
    r"(?:/(?:\d+(?:\.\d+)?)(?![\d/]))?")  # 3/4 (not a date such as 1/2/2020, read as its parts)


def final_answer(text: str, boxed_only: bool = False) -> Found | None:
    """The final answer of `text` (see above); None when there is none.

    >>> final_answer("so x = 3, and the answer is 3/4 (see step 3).").content
    '3/4'

    Raises UnbalancedBraces when the last box never closes (a truncated answer, not a missing one).
    """
    box = _find_last_box(text)
    if box is not None:
        return Found(box.content, box.start, "boxed")
    if boxed_only:
        return None
    final = None
    for final in _GSM8K_FINAL.finditer(text):
        pass
    if final is not None:
        answer = final.group(1).strip().replace(",", "").rstrip(".")
        if answer:
            return Found(answer, final.start(), "gsm8k")
    offset = max(0, len(text) - _TAIL)
    tail = text[offset:]
    found = _statement(tail) or _equation(tail) or _number(tail)
    return None if found is None else Found(found.content, found.start + offset, found.kind)


def _statement(text: str) -> Found | None:
    """The value of the last "the answer is X" / "Answer: X" / "**Final Answer**\\nX" that has one."""
    for word in reversed(list(_ANSWER_WORD.finditer(text))):
        join = _CONNECTOR.match(text, word.end(), min(len(text), word.end() + 80))
        if join is None or not any(join.group(g) for g in ("bold", "verb", "sep", "bold2", "newline")):
            continue
        value = _read_value(text, join.end(), min(len(text), join.end() + _VALUE_WINDOW))
        if value is not None:
            return Found(value[1], value[0], "statement")
    return None


def _equation(text: str) -> Found | None:
    """The value after the last `=` of the last line, when only a few words (a unit) follow it."""
    body = _drop_closing_remarks(text).rstrip()
    line_start = body.rfind("\n") + 1
    eq = body.rfind("=", line_start)
    if eq == -1:
        return None
    value = _read_value(body, eq + 1, len(body))
    if value is None:
        return None
    start, content, end = value[0], value[1], value[2]
    rest = body[end:].replace("\\]", " ").replace("\\)", " ")  # the end of display math is not a word
    rest = rest.strip(" \t.,;:!$*").split()
    if len(rest) > 3 or not all(w.strip(".,;:!").isalpha() for w in rest):
        return None  # more than a unit after the value: the line goes on, the `=` is not its end
    return Found(content, start, "equation")


def _number(text: str) -> Found | None:
    """The last number (or a/b, \\frac{a}{b}) that is not a reference and not in a closing remark; a
    closing group of numbers, "(1, 2)" or "[0, 1)", is read whole (a point or an interval)."""
    body = _drop_closing_remarks(text)
    end = body.rstrip(" \t\n.,;:!*$")
    open_at = _opening_bracket(end) if end.endswith((")", "]")) else None
    if open_at is not None and "," in end[open_at:] and any(c.isdigit() for c in end[open_at:]):
        return Found(end[open_at:], open_at, "number")
    for match in reversed(list(_NUMBER_OR_FRACTION.finditer(body))):
        if _REFERENCE_BEFORE.search(body, max(0, match.start() - 24), match.start()):
            continue  # "step 3", "Eq. (2)": the number names a part of the text
        return Found(match.group(0).replace(",", "").replace("\u2212", "-"), match.start(), "number")
    return None


def _drop_closing_remarks(text: str) -> str:
    """`text` without the remarks in parentheses that close it: "12 apples (see step 3)." -> "12 apples".

    A closing group with words in it is a remark or a reference; one without words, "(3, 4)" or
    "(\\frac{1}{2})", may be the answer itself and stays.
    """
    for _ in range(3):
        body = text.rstrip(" \t\n.,;:!*")
        if not body.endswith((")", "]")):
            break
        open_at = _opening_bracket(body)
        if open_at is None or not _PROSE.search(body, open_at):
            break
        text = body[:open_at]
    return text


def _opening_bracket(text: str) -> int | None:
    """Where the bracket that closes `text` opens (at most 300 characters back), or None."""
    depth = 0
    for i in range(len(text) - 1, max(-1, len(text) - 301), -1):
        c = text[i]
        if c in ")]":
            depth += 1
        elif c in "([":
            depth -= 1
            if depth == 0:
                return i
    return None


def _read_value(text: str, i: int, end: int) -> tuple[int, str, int] | None:
    """(start, value, end) of the math value that starts at `text[i]` (after spaces and `**`), or None.

    A value is a math-mode span (`$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`) or a run of math:
    numbers, operators, LaTeX commands, braces and brackets, single-letter variables; a space
    continues it only next to an operator ("3 + 4"), so "12 apples" is 12. After an `=` only the
    right-hand side counts ("2 + 3 = 5" is 5). It must hold a digit or a value command (`\\pi`).
    """
    while i < end and text[i] in " \t*":
        i += 1
    if text.startswith("\\$", i):
        i += 2  # an escaped dollar sign: a currency amount follows
    for opener, closer in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if not text.startswith(opener, i):
            continue
        close = text.find(closer, i + len(opener), end)
        if close != -1:
            content = text[i + len(opener) : close]
            if content.strip() and not (opener == "$" and _PROSE.search(content)):
                value = _right_hand_side(content.strip())
                if value is not None:
                    return i + len(opener) + content.find(content.strip()), value, close + len(closer)
        if opener not in ("$", "$$"):
            return None
        i += len(opener)  # "$18." or "$5 and $6": a dollar sign before an amount, not math mode
        break
    j = _scan_math(text, i, end)
    value = text[i:j].rstrip(" \t.,;:" + _OPERATORS + "_")
    if not value or _unbalanced(value):
        return None
    value = _right_hand_side(value)
    return None if value is None else (i, value, i + len(text[i:j].rstrip(" \t")))


def _right_hand_side(value: str) -> str | None:
    value = value[value.rfind("=") + 1 :].strip().replace("\u2212", "-")
    has_value = any(c.isdigit() for c in value) or any(
        m.group(0)[1:] in _VALUE_COMMANDS for m in _COMMAND.finditer(value))
    return value if has_value else None


def _unbalanced(value: str) -> bool:
    return value.count("{") != value.count("}") or (value.count("(") + value.count("[")
                                                     != value.count(")") + value.count("]"))


def _scan_math(text: str, i: int, end: int) -> int:
    """The end of the run of math that starts at `text[i]`; one pass, at most `end - i` steps."""
    braces = brackets = 0
    j = i
    while j < end:
        c = text[j]
        if c.isdigit() or c in _OPERATORS or c in "%_":
            j += 1
        elif c == "\\":
            command = _COMMAND.match(text, j, end)
            if command is None:
                break
            j = command.end()
        elif c in "{([":
            braces, brackets = (braces + 1, brackets) if c == "{" else (braces, brackets + 1)
            j += 1
        elif c in "})]":
            if (braces if c == "}" else brackets) == 0:
                break  # closes something opened before the value
            braces, brackets = (braces - 1, brackets) if c == "}" else (braces, brackets - 1)
            j += 1
        elif c == ".":
            if not (j + 1 < end and text[j + 1].isdigit()):
                break  # a full stop, not a decimal point
            j += 1
        elif c == ",":
            thousands = text[j + 1 : j + 4].isdigit() and not (j + 4 < end and text[j + 4].isdigit())
            if not (braces or brackets or thousands):
                break  # "5, which is" ends the value; "(3, 4)" and "1,234" do not
            j += 1
        elif c.isalpha():
            single = not (j + 1 < end and text[j + 1].isalpha()) and not (j > i and text[j - 1].isalpha())
            if not (braces or single):
                break  # a word: "12 apples"
            j += 1
        elif c in " \t":
            k = j
            while k < end and text[k] in " \t":
                k += 1
            before = text[j - 1] if j > i else ""
            after = text[k] if k < end else ""
            if not (braces or brackets or (before and before in _OPERATORS) or (after and after in _OPERATORS)
                    or text.startswith(_OPERATOR_COMMANDS, k)):
                break
            j = k
        else:
            break
    return j
