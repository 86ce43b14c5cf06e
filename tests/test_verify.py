"""The verifier (expo.verify): answer equivalence, rewards, hard timeouts, threads, TRL formats.

Most tests go through the process-wide pool exactly as training and evaluation do; the hard-deadline
tests use their own small pool with a judge that ignores signals (standing in for C code that never
returns to the interpreter), since every real pathological input we found is caught by the soft timer.
"""

import os
import pickle
import signal
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expo.errors import ConfigError
from expo.verify import (
    HARD_GRACE_S,
    VerifierPool,
    VerifyError,
    VerifyOptions,
    completion_text,
    extract_answer,
    is_equivalent,
    judge_batch,
    math_reward,
    prepare_gold,
    rewards,
)

EQUIVALENCE = [
    # (completion, gold, equivalent?)
    # fractions, decimals, \dfrac
    (r"so \boxed{0.5}", r"\frac{1}{2}", True),  # a decimal equals its fraction
    (r"\boxed{\dfrac{3}{4}}", r"\frac34", True),  # \dfrac and brace-less \frac34 are both a fraction
    (r"\boxed{-\frac{1}{2}}", "-0.5", True),
    (r"\boxed{\frac{1}{2}}", "1/2", True),  # a gold written as plain a/b
    (r"\boxed{\frac{4}{2}}", "2", True),  # an unsimplified fraction is still the number
    (r"\boxed{0.33}", r"\frac{1}{3}", False),  # a rounded decimal is not the exact fraction
    # roots and pi
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", True),  # simplified surd
    (r"\boxed{\sqrt{2}/2}", r"\frac{1}{\sqrt{2}}", True),  # rationalised denominator
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{1}{2}\sqrt3", True),
    (r"\boxed{2\pi}", r"\pi \cdot 2", True),
    (r"\boxed{3.14}", r"\pi", False),  # an approximation of pi is not pi
    # intervals, tuples, sets
    (r"\boxed{(1, 2]}", "(1,2]", True),  # spacing does not matter
    (r"\boxed{[1, 2]}", "(1,2]", False),  # a closed end is a different interval
    (r"\boxed{[1,\infty)}", r"[1, \infty)", True),
    (r"\boxed{(3, -2)}", "(3,-2)", True),  # an ordered pair
    (r"\boxed{(-2, 3)}", "(3,-2)", False),  # order matters in a pair
    (r"\boxed{\{2, 1\}}", r"\{1, 2\}", True),  # order does not matter in a set
    (r"\boxed{\{1,2,3\}}", r"\{1,2\}", False),  # an extra element
    (r"\boxed{2, -3}", "-3, 2", True),  # a list of solutions in another order
    # percentages, units, text, degrees, dollars
    (r"\boxed{50\%}", "50", True),  # a percentage against its number
    (r"\boxed{0.1}", r"10\%", True),  # ... and against its fraction
    (r"\boxed{5 \mathrm{cm}}", "5", True),  # a unit after the number is ignored
    (r"\boxed{12 \text{ dollars}}", "12", True),  # so is a \text{} unit
    (r"\boxed{\text{(B)}}", "B", True),  # a multiple-choice letter in \text{}
    (r"\boxed{\text{Monday}}", r"\text{monday}", True),  # text answers ignore case
    (r"\boxed{\text{three}}", "3", False),  # a number in words is not the number
    (r"\boxed{30^\circ}", "30", True),  # degrees against a bare number
    (r"\boxed{30}", r"30^{\circ}", True),
    (r"\boxed{\$5.00}", "5", True),  # a dollar amount with cents
    ("The total is $18.", "18", True),  # GSM8K style: a dollar sign, a full stop, no box
    # thousands separators
    (r"\boxed{1,234}", "1234", True),  # a comma every three digits is a separator, not a tuple
    (r"\boxed{1\,234}", "1234", True),  # a thin space too (Math-Verify alone reads 235)
    (r"\boxed{1{,}234,567}", "1234567", True),
    ("#### 1,234", "1234", True),  # GSM8K's own final-answer marker
    ("there were 12,345 people", "12345", True),  # the number fallback keeps thousands
    # which answer is the final one
    (r"\boxed{3} no wait, \boxed{4}", "4", True),  # the last box wins ...
    (r"\boxed{4} no wait, \boxed{3}", "4", False),  # ... even when an earlier one was right
    (r"\boxed{4} and at the end 7", "4", True),  # a box beats a later stray number
    (r"\boxed{4} then \boxed{\frac{1}{2", "4", False),  # the last box is cut off: no final answer
    (r"the answer is $\boxed{\frac{1}{2}}$.", "0.5", True),  # math mode and a full stop around it
    ("The answer is 42", "42", True),  # no box: the last number is the answer
    ("I think 41, or rather 42", "41", False),
    # equations, matrices, expressions, wrong answers
    (r"\boxed{x = 3}", "3", True),  # an assignment against its value
    (r"\boxed{y = 2}", "x=2", False),  # another variable
    (r"\boxed{x^2+1}", "1+x^2", True),  # an expression in another order
    (r"\boxed{x^2}", "x^3", False),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}", True),
    (r"\boxed{7}", "8", False),
    (r"\boxed{\frac{1}{0}}", "1", False),  # division by zero is not an answer
    ("", "1", False),  # an empty completion
    (r"\boxed{5}", r"\boxed{5}", True),  # a gold that kept its box is unwrapped
]


@pytest.mark.parametrize(("completion", "gold", "expected"), EQUIVALENCE)
def test_is_equivalent(completion, gold, expected):
    assert is_equivalent(completion, gold) is expected


def test_rewards_batch_matches_the_table_in_order():
    # One batch large enough for the parallel path (min_parallel_items) gives the per-pair answers.
    completions = [c for c, _, _ in EQUIVALENCE]
    golds = [g for _, g, _ in EQUIVALENCE]
    assert rewards(completions, golds) == [1.0 if e else 0.0 for _, _, e in EQUIVALENCE]


FALLBACK = [
    # (completion without a box, gold, equivalent?): the fallback reads what a person would
    # (a last-number fallback gets the first four wrong).
    ("The answer is 3/4", "\\frac{3}{4}", True),  # was read as 4
    ("12 apples (see step 3)", "12", True),  # was read as 3
    ("So she has 12 apples, see step 3.", "12", True),  # a reference without parentheses
    ("The final answer is $-\\frac{1}{2}$ (from step 4).", "-0.5", True),  # negative LaTeX fraction
    ("**Final Answer**\n$\\frac{3}{4}$", "0.75", True),  # a header, math mode on the next line
    ("Answer: 2.5 hours", "5/2", True),  # a decimal with a unit
    ("so the area is = 2\\sqrt{2}", "\\sqrt{8}", True),  # "= X" at the end, a surd
    ("The answer is 3/4", "4", False),  # ... and so not the denominator
    ("12 apples (see step 3)", "3", False),  # ... nor the step number
]


@pytest.mark.parametrize(("completion", "gold", "expected"), FALLBACK)
def test_fallback_reads_answer_statements(completion, gold, expected):
    assert is_equivalent(completion, gold) is expected


BOXED_ONLY = [
    # (completion, gold, reward with boxed_only=False, reward with boxed_only=True)
    ("The answer is 42", "42", 1.0, 0.0),  # no box: only the fallback finds 42
    ("#### 42", "42", 1.0, 0.0),  # GSM8K's marker is a fallback too
    (r"\boxed{42}", "42", 1.0, 1.0),  # a box counts either way
]


@pytest.mark.parametrize(("completion", "gold", "fallback", "boxed_only"), BOXED_ONLY)
def test_boxed_only_disables_the_number_fallback(completion, gold, fallback, boxed_only):
    assert rewards([completion], [gold]) == [fallback]
    assert rewards([completion], [gold], VerifyOptions(boxed_only=True)) == [boxed_only]


def test_rewards_none_where_the_gold_cannot_be_parsed():
    completions = [r"\boxed{3}", r"\boxed{3}", r"\boxed{3}", "no answer at all", r"\boxed{3}", r"\boxed{3}"]
    golds = [r"\frac{", "", None, "abc{", r"\boxed{3", "3"]
    # broken LaTeX, empty, missing, unbalanced, a gold box cut off; the last one is fine
    assert rewards(completions, golds) == [None, None, None, None, None, 1.0]


def test_rewards_none_for_bad_gold_even_without_an_answer():
    # "cannot judge" is about the gold: a completion with no answer against a broken gold is None, not 0
    assert rewards(["no answer"], [r"\frac{"], VerifyOptions(boxed_only=True)) == [None]


def test_numeric_gold_values_are_accepted():
    import numpy as np

    golds = [5, 0.5, np.int64(7), True]  # a bool is not a number here: None
    assert rewards([r"\boxed{5}", r"\boxed{0.5}", r"\boxed{7}", r"\boxed{1}"], golds) == [1.0, 1.0, 1.0, None]


def test_mismatched_lengths_raise():
    with pytest.raises(VerifyError, match="2 completions but 1 gold"):
        rewards(["a", "b"], ["1"])


@pytest.mark.parametrize("field,value", [("timeout_s", 0.0), ("timeout_s", 601.0), ("max_chars", 0),
                                         ("max_answer_chars", -1), ("min_parallel_items", 0)])
def test_options_reject_bad_values(field, value):
    with pytest.raises(ConfigError, match=f"VerifyOptions.{field}"):
        VerifyOptions(**{field: value})


def test_extraction_caps_lengths():
    opts = VerifyOptions(max_chars=100, max_answer_chars=10)
    assert extract_answer(r"\boxed{7}" + "x" * 100, opts) is None  # the box lies before the searched tail
    assert extract_answer(r"\boxed{" + "1" * 11 + "}", opts) is None  # too long an answer is not parsed
    assert extract_answer(r"\boxed{$1,234$.}", opts) == "1,234"  # $ and the full stop go
    assert prepare_gold("x" * 11, opts) is None


# ---------------------------------------------------------------------------------------------------
# Time limits

PATHOLOGICAL = [
    r"\boxed{9^{9^{9^{9^{9}}}}}",  # a tower of powers
    r"\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",  # thousands of nested braces
    r"\boxed{(10^{10^{8}})!}",  # a factorial of a huge number
    "step " * 200_000 + r"\boxed{2^{2^{2^{2^{2^{2}}}}}}",  # a megabyte of text, then a tower
    r"\boxed{" + r"\frac{1}{" * 400 + "2" + "}" * 400 + "}",  # fractions nested 400 deep
]


def test_pathological_items_finish_within_their_timeout():
    opts = VerifyOptions(timeout_s=1.0)
    completions = PATHOLOGICAL + [r"\boxed{2}", r"\boxed{3}"]
    t0 = time.monotonic()
    outcomes = judge_batch(completions, ["1"] * len(PATHOLOGICAL) + ["2", "3"], opts)
    elapsed = time.monotonic() - t0
    assert [o.reward for o in outcomes] == [0.0] * len(PATHOLOGICAL) + [1.0, 1.0]
    assert max(o.seconds for o in outcomes) <= opts.timeout_s + 1.0
    # Never a stall: at worst every item runs its full time one after another (plus pool start-up).
    assert elapsed <= len(completions) * (opts.timeout_s + 1.0) + 10.0


def stalling_judge(answer, gold):
    """A judge that stands in for C code no signal can interrupt (SIGALRM blocked), or a crash."""
    if answer == "stall":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(600)
    if answer == "crash":
        os._exit(3)
    return 1.0 if answer == gold else 0.0


@pytest.fixture(scope="module")
def stall_pool():
    with VerifierPool(2, judge_fn=stalling_judge) as pool:
        yield pool


def test_hard_deadline_kills_a_stuck_worker_and_the_batch_goes_on(stall_pool):
    tasks = [(str(i), str(i) if i % 3 else "x") for i in range(60)]
    tasks[5], tasks[40] = ("stall", "1"), ("crash", "2")
    t0 = time.monotonic()
    outcomes = stall_pool.run(tasks, timeout_s=1.0)
    elapsed = time.monotonic() - t0
    stuck, crashed = outcomes[5], outcomes[40]
    assert stuck.reward == 0.0 and stuck.timed_out
    assert 1.0 <= stuck.seconds <= 1.0 + 1.0  # killed at timeout + HARD_GRACE_S, well within + 1 s
    assert crashed.reward == 0.0 and not crashed.timed_out  # a crash is not a timeout
    others = [o.reward for i, o in enumerate(outcomes) if i not in (5, 40)]
    assert others == [1.0 if i % 3 else 0.0 for i in range(60) if i not in (5, 40)]
    assert elapsed < 1.0 + HARD_GRACE_S + 10.0  # one stall, not one per re-queued item
    # The replacement workers serve the next batch.
    assert [o.reward for o in stall_pool.run([("7", "7"), ("8", "9")], timeout_s=1.0)] == [1.0, 0.0]


def test_duplicate_pairs_are_judged_once(stall_pool):
    # Four rollouts with the same stuck answer cost one deadline, not four (pairs are de-duplicated).
    t0 = time.monotonic()
    outcomes = judge_batch([r"\boxed{stall}"] * 4, ["1"] * 4, VerifyOptions(timeout_s=1.0), pool=stall_pool)
    assert [o.reward for o in outcomes] == [0.0] * 4
    assert time.monotonic() - t0 < 2 * (1.0 + HARD_GRACE_S) + 2.0


def test_closed_pool_refuses_work():
    pool = VerifierPool(1)
    pool.close()
    with pytest.raises(VerifyError, match="closed"):
        pool.run([("1", "1")], 1.0)


# ---------------------------------------------------------------------------------------------------
# Threads and TRL


def test_rewards_from_many_threads():
    def work(k):
        golds = [str(k * 100 + i) for i in range(40)]
        completions = [rf"\boxed{{{g}}}" if i % 2 else r"\boxed{-1}" for i, g in enumerate(golds)]
        return rewards(completions, golds)

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(work, range(8)))
    assert all(r == [0.0, 1.0] * 20 for r in results)


def test_is_equivalent_from_a_plain_thread():
    # Math-Verify's own signal.alarm timeouts fail outside the main thread; ours run in workers.
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", is_equivalent(r"\boxed{\frac{2}{4}}", "0.5")))
    t.start()
    t.join(60)
    assert out == {"r": True}


TRL_COMPLETIONS = [
    # (completion as TRL passes it, its text)
    (r"\boxed{1}", r"\boxed{1}"),  # standard format: a string
    ([{"role": "assistant", "content": r"\boxed{1}"}], r"\boxed{1}"),  # conversational format
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "a"),  # last turn
    ([{"role": "assistant", "content": [{"type": "text", "text": "x "}, {"type": "text", "text": "y"}]}],
     "x y"),  # content as a list of text parts
    ({"role": "assistant", "content": "z"}, "z"),  # one bare message
    ([], ""),  # nothing generated
]


@pytest.mark.parametrize(("completion", "text"), TRL_COMPLETIONS)
def test_completion_text(completion, text):
    assert completion_text(completion) == text


def test_completion_text_rejects_other_types():
    with pytest.raises(VerifyError, match="int"):
        completion_text(42)


def test_math_reward_takes_trl_columns():
    completions = [[{"role": "assistant", "content": r"\boxed{\frac{1}{2}}"}],
                   [{"role": "assistant", "content": r"\boxed{2}"}],
                   [{"role": "assistant", "content": r"\boxed{2}"}]]
    got = math_reward(completions, answer=["0.5", "3", r"\frac{"], prompts=["a", "b", "c"], level=[1, 2, 3])
    assert got == [1.0, 0.0, None]


def test_reward_function_pickles():
    assert pickle.loads(pickle.dumps(math_reward)) is math_reward


# ---------------------------------------------------------------------------------------------------
# Property tests: whatever the text, a reward in {0, 1} within the time limit, never a crash

LATEX_PIECES = [r"\frac", r"\sqrt", r"\boxed", r"\fbox", "{", "}", r"\{", r"\}", "^", "_", "(", ")", "[", "]",
                "$", r"\\", r"\left(", r"\right)", r"\begin{pmatrix}", r"\end{pmatrix}", "&", r"\pi",
                r"\infty",
                "9", "1", "0", ",", ".", "-", "+", "=", "x", r"\text{", "%", r"\%", r"\circ", " ", "\n", "é",
                "\u2212", "\u200b", "\x00", "\ud7ff", "😀"]

latex_soup = st.lists(st.sampled_from(LATEX_PIECES), max_size=60).map("".join)
any_text = st.one_of(
    st.text(max_size=200),  # arbitrary unicode, controls included
    latex_soup,  # malformed LaTeX built from its own pieces
    latex_soup.map(lambda s: r"\boxed{" + s + "}"),  # ... inside a box, so it reaches the parser
    st.builds(lambda s, n: s * n, st.text(string.printable, min_size=1, max_size=8), st.integers(0, 200_000)),
)
PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(completion=any_text)
def test_any_completion_gets_zero_or_one_in_time(completion):
    opts = VerifyOptions(timeout_s=1.0)
    (outcome,) = judge_batch([completion], ["1"], opts)
    assert outcome.reward in (0.0, 1.0)
    assert outcome.seconds <= opts.timeout_s + 1.0


@PROPERTY
@given(gold=any_text)
def test_any_gold_gets_none_zero_or_one(gold):
    (reward,) = rewards([r"\boxed{1}"], [gold], VerifyOptions(timeout_s=1.0))
    assert reward in (None, 0.0, 1.0)


@settings(max_examples=200, deadline=None)
@given(completion=any_text)
def test_extraction_never_raises(completion):
    answer = extract_answer(completion)  # in-process: pure string work, no worker needed
    assert answer is None or 0 < len(answer) <= VerifyOptions().max_answer_chars


def test_soft_timer_stops_real_pathological_input_without_killing_the_worker():
    with VerifierPool(1) as pool:
        pool.start()
        pid = pool._slots[0].process.pid
        (outcome,) = judge_batch([PATHOLOGICAL[0]], ["1"], VerifyOptions(timeout_s=2.0), pool=pool)
        assert outcome.reward == 0.0 and outcome.timed_out
        assert pool._slots[0].process.pid == pid  # the SIGALRM timer ended it; no kill, no respawn


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"workers": 0}, "workers"),  # a pool needs a worker
    ({"start_method": "nope"}, "start_method"),  # not a multiprocessing start method
])
def test_pool_rejects_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        VerifierPool(**kwargs)


def _rewards_in_child(queue):
    queue.put(rewards([r"\boxed{2}", r"\boxed{3}"], ["2", "2"]))


def test_forked_child_gets_its_own_pool_and_leaves_the_parents_alone():
    import multiprocessing as mp

    assert rewards([r"\boxed{1}"], ["1"]) == [1.0]  # the parent's pool (and forkserver) is running
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_rewards_in_child, args=(queue,))
    child.start()
    assert queue.get(timeout=120) == [1.0, 0.0]
    child.join(30)
    assert rewards([r"\boxed{1}"], ["1"]) == [1.0]  # the parent's workers still serve


# ---------------------------------------------------------------------------------------------------
# From any script: workers never import the caller's main module

_SCRIPT = ("from expo.verify import is_equivalent, rewards\n"
           "print(is_equivalent(r'\\boxed{0.5}', r'\\frac{1}{2}'), is_equivalent('7', '8'))\n"
           "print(sum(rewards([str(i) for i in range(40)], ['3'] * 40)))\n")  # 40 pairs: the parallel path


def test_the_verifier_works_from_any_kind_of_script(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"  # a plain script: no `if __name__ == "__main__":` guard
    script.write_text(_SCRIPT)
    runs = {
        "python -c": ([sys.executable, "-c", _SCRIPT], None),
        "python - < script": ([sys.executable, "-"], _SCRIPT),  # read from stdin: its "file" is <stdin>
        "script without a main guard": ([sys.executable, str(script)], None),
    }
    started = time.monotonic()
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    procs = {name: subprocess.Popen(cmd, text=True, cwd=tmp_path, **pipes) for name, (cmd, _) in runs.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(runs[name][1] or "", timeout=180)
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"
        assert out.split("\n")[:2] == ["True False", "1.0"], f"{name}: {out!r}"
    assert time.monotonic() - started < 120  # three fresh interpreters, each starting its own workers


def test_a_judge_from_the_main_script_still_names_the_guard():
    from expo.verify_pool import _needs_main

    def local(answer, gold):
        return 1.0

    local.__module__ = "__main__"
    assert _needs_main(local) and not _needs_main(stalling_judge)
