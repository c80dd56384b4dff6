"""The successive-halving arithmetic: rung fractions, rung sizes, promotion (bertnli.sweep.rungs)."""

import pytest

from bertnli.sweep.rungs import promoted, rung_fractions, rung_sizes


def test_rungs_and_sizes():
    assert rung_fractions(3, 1 / 9) == pytest.approx([1 / 9, 1 / 3, 1])
    assert rung_fractions(3, 0.1) == pytest.approx([1 / 9, 1 / 3, 1])  # rungs are powers of 1/eta at least min_fraction
    assert rung_fractions(2, 0.25) == pytest.approx([0.25, 0.5, 1])
    assert rung_sizes(9, 3, 3) == [9, 3, 1] and rung_sizes(20, 3, 3) == [20, 6, 2] and rung_sizes(2, 3, 3) == [2, 1, 1]


def test_promotion_takes_the_best_and_never_a_diverged_one():
    results = [("a", 0.5, 0), ("b", 0.7, 1), ("c", None, 2), ("d", 0.7, 3), ("e", float("nan"), 4)]
    assert promoted(results, 2) == ["b", "d"]  # ties: the earlier trial first
    assert promoted(results, 9) == ["b", "d", "a"]
