"""Pulling final answers out of text: the last `\\boxed{...}` / `\\fbox{...}`, GSM8K's `#### n`.

Shared by the data stage (gold answers) and the verifier (model answers), so both agree on what
"the final answer" is. Pure string scanning: linear time, no regex backtracking on hostile input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_GSM8K_FINAL = re.compile(r"####\s*([^\n]+)")


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
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    while start != -1:
        cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
        i = start + len(cmd)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            return Boxed(_balanced(text, i), start)
        # `\boxed 5` (no braces) is valid LaTeX for a single token.
        if i < len(text) and i > start + len(cmd) and not text[i].isspace():
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return Boxed(token.group(0), start)
        start = max(text.rfind(c, 0, start) for c in _BOX_COMMANDS)
    return None


def _balanced(text: str, open_at: int) -> str:
    depth = 0
    for j in range(open_at, len(text)):
        ch = text[j]
        if ch == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
            continue  # an escaped brace \{ or \} does not count
        if ch == "{" and (j == 0 or text[j - 1] != "\\"):
            depth += 1
        elif ch == "}" and (j == 0 or text[j - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : j]
    raise UnbalancedBraces(f"unbalanced braces after position {open_at}")


def gsm8k_final(text: str) -> str | None:
    """GSM8K's final answer after `####`, thousands separators removed: '#### 1,234' -> '1234'."""
    matches = _GSM8K_FINAL.findall(text)
    if not matches:
        return None
    answer = matches[-1].strip().replace(",", "").rstrip(".")
    return answer or None


def last_number(text: str) -> str | None:
    """The last plain number in the text (GSM8K-style fallback when there is no box)."""
    matches = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text[-2000:])
    if not matches:
        return None
    return matches[-1].replace(",", "")
