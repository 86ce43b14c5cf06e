"""Final-answer extraction (expo.answers): boxes, GSM8K's `#### n`, the last-number fallback, and
`final_answer`, which reads an answer without a box as a person would."""

import time

import pytest

from expo.answers import UnbalancedBraces, final_answer, gsm8k_final, last_boxed, last_boxed_span, last_number

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



FINAL_ANSWER = [
    # (text, expected answer, the rule that finds it). A last-number fallback would read the first two
    # as 4 and 3.
    ("The answer is 3/4", "3/4", "statement"),  # a fraction is one value, not its denominator
    ("12 apples (see step 3)", "12", "number"),  # a closing remark in parentheses is not the answer
    # answer statements win over a later bare number
    ("The answer is 42", "42", "statement"),
    ("Answer: -5.", "-5", "statement"),  # negative; the full stop goes
    ("final answer: $\\frac{3}{4}$.", "\\frac{3}{4}", "statement"),  # $-wrapped LaTeX fraction
    ("The answer is $-2.5$.", "-2.5", "statement"),  # negative decimal in math mode
    ("**Final Answer**\n42", "42", "statement"),  # a markdown header, the value on the next line
    ("**Final Answer:** 42", "42", "statement"),  # bold around the colon
    ("the answer is: \n\n$$\\frac{1}{2}$$", "\\frac{1}{2}", "statement"),  # display math
    ("The answer is \\dfrac34.", "\\dfrac34", "statement"),  # brace-less \dfrac
    ("The answer is 2\\sqrt{2}.", "2\\sqrt{2}", "statement"),  # a surd, not the 2 inside it
    ("the answer is 50%.", "50%", "statement"),
    ("the answer is (3, 4).", "(3, 4)", "statement"),  # an ordered pair stays whole
    ("So the answer is 2 + 3 = 5.", "5", "statement"),  # only the right-hand side of a worked sum
    ("answer = 1,234 apples", "1,234", "statement"),  # thousands kept; the unit word ends the value
    ("the answer is 12 (see step 3)", "12", "statement"),  # a statement, then a reference
    ("The answer is 3/4. Check: 0.75 * 4 = 3", "3/4", "statement"),  # the statement beats the later 3
    ("the answer is \\$5", "5", "statement"),  # an escaped dollar sign before an amount
    ("The answer is not 5, it is 6", "6", "number"),  # "not 5" is no value: the statement is skipped
    ("What is the answer if x = 2? It is 9", "9", "number"),  # "answer if" is no statement
    # "= X" at the end of the last line
    ("so x = \\frac{3}{4}", "\\frac{3}{4}", "equation"),  # LaTeX fraction after the last =
    ("= \\sqrt{2}", "\\sqrt{2}", "equation"),  # the last number would be 2
    ("\\[ x = \\sqrt{2} \\]", "\\sqrt{2}", "equation"),  # in display math
    ("Total = 5 + 7 = 12 apples.", "12", "equation"),  # a unit word may follow
    ("x = 5 (approximately)", "5", "equation"),  # a closing remark is dropped first
    # the last number, references skipped
    ("12 apples, see step 3.", "12", "number"),  # "step 3" names a step
    ("x = 3 and y = 4 so it follows from step 2", "4", "number"),  # the = is not the line's end here
    ("she ate 3/4", "3/4", "number"),  # a bare fraction
    ("The total is $18.", "18", "number"),  # a dollar amount: no closing $, so not math mode
    ("It costs $5 and $6 together", "6", "number"),  # two amounts, not the formula "5 and "
    ("I think 41, or rather 42", "42", "number"),
    ("there were 12,345 people", "12345", "number"),
    ("the point (1, 2)", "(1, 2)", "number"),  # a closing group without words is kept ...
    ("it is 2 (or 3 by Eq. 4)", "2", "number"),  # ... one with words is a remark
    # boxes and GSM8K's marker come first, as before
    ("The answer is 7. So \\boxed{8}", "8", "boxed"),
    ("The answer is 7.\n#### 8", "8", "gsm8k"),
    ("no digits at all", None, None),
    ("", None, None),
]


@pytest.mark.parametrize(("text", "expected", "kind"), FINAL_ANSWER)
def test_final_answer(text, expected, kind):
    found = final_answer(text)
    assert (found.content, found.kind) == (expected, kind) if expected is not None else found is None


def test_final_answer_start_points_at_the_answer():
    text = "2+3=5. The answer is 5 (see step 1)."
    found = final_answer(text)
    assert text[found.start :].startswith("5 (see") and found.kind == "statement"
    box = "so \\boxed{5}"
    assert final_answer(box).start == 3  # the box command, as last_boxed_span gives


def test_final_answer_boxed_only_reads_nothing_else():
    assert final_answer("The answer is 42", boxed_only=True) is None
    assert final_answer("so \\boxed{42}", boxed_only=True).content == "42"


def test_final_answer_reads_only_the_tail():
    assert final_answer("The answer is 7 " + "x" * 5000) is None  # far from the end: not a final answer


@pytest.mark.parametrize("text", [
    "the answer is " * 200_000,  # statements everywhere, none with a value
    "answer: " + "(" * 1_000_000,  # unmatched brackets
    "x = " + "1 + " * 500_000,  # a sum running to the end
    "$" * 1_000_000,  # dollar signs only
    "(see step 1) " * 200_000,  # references and remarks only
    "1/" * 1_000_000,
    "= " * 1_000_000,
    "answer is " + " " * 1_000_000 + "5",
])
def test_final_answer_stays_linear_on_hostile_input(text):
    t0 = time.perf_counter()
    final_answer(text)
    assert time.perf_counter() - t0 < 2.0  # milliseconds here; a quadratic scan would take minutes
