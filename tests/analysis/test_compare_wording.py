"""What `compare` says when its two tests disagree, with one run per side as with several."""

import pandas as pd

from bertnli.analysis.compare import describe
from bertnli.analysis.stats import MCNEMAR, RUNS_X_EXAMPLES


def row(ci_low, ci_high, p, seeds=1, delta=None):
    delta = (ci_low + ci_high) / 2 if delta is None else delta
    return pd.Series(
        {
            "split": "test",
            "acc_a": 0.70,
            "acc_b": 0.70 - delta,
            "delta": delta,
            "ci_low": ci_low,
            "ci_high": ci_high,
            "p_value": p,
            "test": MCNEMAR if seeds == 1 else RUNS_X_EXAMPLES,
            "n_examples": 300,
            "seeds_a": seeds,
            "seeds_b": seeds,
            "a_only": 10,
            "b_only": 21,
        }
    )


def test_one_run_per_side_says_when_the_interval_and_p_disagree():
    """Seen by a user: CI [-15.33, -0.33] pp with McNemar p = 0.058 printed "B is better" with no caution."""
    line = describe(row(-0.1533, -0.0033, 0.058, delta=-0.0783), "82a7ca81", "5d0e91ab")
    assert "is better" not in line
    assert "the interval excludes 0 but the McNemar exact p = 0.058 is not below 0.05" in line
    line = describe(row(-0.01, 0.05, 0.03))
    assert "the interval includes 0 but the McNemar exact p = 0.03 is below 0.05" in line and "detectable" not in line


def test_agreeing_tests_give_a_plain_verdict_that_names_both():
    assert describe(row(0.01, 0.05, 0.001)).endswith(
        "A is better: the interval excludes 0 and the McNemar exact p < 0.05"
    )
    assert describe(row(-0.02, 0.03, 0.6)).endswith(
        "no detectable difference: the interval includes 0 and the McNemar exact p >= 0.05"
    )


def test_several_runs_a_side_name_the_permutation_test_and_say_when_it_disagrees_with_the_interval():
    line = describe(row(0.01, 0.05, 0.2, seeds=3))
    assert "is better" not in line and "discordant" not in line
    assert "the interval excludes 0 but the runs x examples p = 0.2 is not below 0.05" in line
    assert "more runs per cell" in line


def test_a_p_below_the_resolution_reads_as_a_bound_not_as_zero():
    assert "McNemar exact p = < 1e-4" not in describe(row(0.01, 0.05, 1e-9))
    assert "McNemar exact p < 1e-4" in describe(row(0.01, 0.05, 1e-9))
