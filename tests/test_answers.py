"""Final-answer extraction (expo.answers): boxes, GSM8K's `#### n`, the last-number fallback."""

import time

import pytest

from expo.answers import UnbalancedBraces, gsm8k_final, last_boxed, last_boxed_span, last_number

LAST_BOXED = [
    # (text, expected content)
    (r"so \boxed{42}", "42"),  # the plain case
    (r"\boxed{1} then \boxed{2}", "2"),  # several boxes: the last one is the final answer
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces kept whole
    (r"\boxed{\sqrt{\frac{a}{b^{2}}}}", r"\sqrt{\frac{a}{b^{2}}}"),  # three levels deep
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are literal set braces, not nesting
    (r"\boxed{\}}", r"\}"),  # a lone escaped closing brace does not close the box
    (r"\boxed{a\\{b}}", r"a\\{b}"),  # after a LaTeX line break \\ the next brace counts again
    (r"\fbox{7}", "7"),  # \fbox is a box too
    (r"\boxed{1} and \fbox{3}", "3"),  # last of either command wins
    (r"\fbox{3} and \boxed{1}", "1"),
    (r"the answer is \boxed 5", "5"),  # \boxed with one bare token, no braces
    (r"$\boxed 5$.", "5"),  # the bare token stops at $
    (r"\boxed5", "5"),  # no space needed before a non-letter token
    (r"\boxed {12}", "12"),  # space before the brace
    (r"\boxed{2} \fboxsep{3}", "2"),  # \fboxsep is another macro, not a box
    (r"\boxed{2} \boxedanswer", "2"),  # so is a longer macro name
    (r"\boxed{}", ""),  # an empty box is found (and empty)
    ("no box here", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), LAST_BOXED)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_last_boxed_span_points_at_the_command():
    text = r"work... \boxed{3}"
    span = last_boxed_span(text)
    assert span is not None and span.content == "3" and text[span.start :].startswith(r"\boxed")


@pytest.mark.parametrize("text", [
    r"\boxed{\frac{1}{2}",  # a truncated generation: the last box never closes
    r"\boxed{1} \boxed{2",  # an earlier closed box does not rescue a broken last one
    r"\boxed{\}",  # the only closing brace is escaped
])
def test_unbalanced_last_box_raises(text):
    with pytest.raises(UnbalancedBraces):
        last_boxed(text)


def test_hostile_inputs_stay_linear():
    # 2.4 MB of rejected box-like macros, and a million unmatched braces: both well under a second.
    t0 = time.perf_counter()
    assert last_boxed(r"\boxedx" * 350_000) is None
    with pytest.raises(UnbalancedBraces):
        last_boxed(r"\boxed{" + "{" * 1_000_000)
    assert time.perf_counter() - t0 < 5.0  # generous for a shared 2-core machine; quadratic takes hours


GSM8K = [
    ("She has 5 apples.\n#### 5", "5"),
    ("#### 1,234", "1234"),  # thousands separators removed
    ("#### 72.", "72"),  # a trailing full stop is not part of the number
    ("#### 3\nmore text\n#### 4", "4"),  # the last marker wins
    ("#### -7", "-7"),
    ("no marker 42", None),
    ("####   ", None),  # a marker with nothing after it
]


@pytest.mark.parametrize(("text", "expected"), GSM8K)
def test_gsm8k_final(text, expected):
    assert gsm8k_final(text) == expected


LAST_NUMBER = [
    ("so the total is 18.", "18"),  # the sentence's full stop is not a decimal point
    ("1,234 apples", "1234"),  # thousands separators removed
    ("12,345,678 stars", "12345678"),
    ("the values 1,2,3", "3"),  # commas that are not thousands separators separate numbers
    ("x = -3", "-3"),
    ("about 0.75 of it", "0.75"),
    ("roughly .5", ".5"),  # a bare decimal keeps its point (not '5')
    ("3 then 4", "4"),
    ("no digits", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), LAST_NUMBER)
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_last_number_reads_only_the_tail():
    assert last_number("7 " + "x" * 5000) is None  # a number far from the end is not a final answer
