"""Pulling final answers out of text: the last `\\boxed{...}` / `\\fbox{...}`, GSM8K's `#### n`.

Shared by the data stage (gold answers) and the verifier (model answers), so both agree on what
"the final answer" is. Pure string scanning: linear time, no regex backtracking on hostile input.
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
        return Boxed(_balanced(text, i), start)
    # `\boxed 5` / `\boxed5` (no braces) is valid LaTeX; take the token up to a space, `$` or brace.
    token = _BARE_TOKEN.match(text, i)
    return Boxed(token.group(0), start) if token else None


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
