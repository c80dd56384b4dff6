"""stats: against exact computations, brute force and simulation."""

import itertools
import math

import numpy as np
import pytest

from bertnli.analysis.stats import (
    MCNEMAR,
    RUNS_X_EXAMPLES,
    bootstrap_delta,
    bootstrap_deltas,
    bootstrap_p,
    compare_correct,
    discordant,
    evp_with_replacement,
    evp_without_replacement,
    holm,
    kendall_tau,
    mcnemar_exact,
    mean_ci,
    overtaking,
    p_floor_note,
    run_permutation_p,
    smallest_run_p,
    spearman_rho,
)


def test_identical_predictions_give_zero_delta_and_p_one():
    rng = np.random.default_rng(0)
    correct = rng.random(500) < 0.7
    c = compare_correct(correct, correct.copy(), n_boot=2000)
    assert c.delta == 0 and c.ci_low == 0 and c.ci_high == 0
    assert c.p_value == 1.0 and (c.a_only, c.b_only) == (0, 0)
    groups = compare_correct(np.stack([correct] * 3), np.stack([correct] * 3), n_boot=500)
    assert groups.delta == 0 and groups.p_value == 1.0


def test_planted_difference_is_covered_by_the_ci_in_at_least_93_of_100_draws():
    """A flips right->wrong with probability 0.08, B with 0.05 (known flips): true delta = +0.03."""
    rng = np.random.default_rng(1)
    n, p_a_only, p_b_only, covered = 1000, 0.08, 0.05, 0
    truth = p_a_only - p_b_only
    for draw in range(100):
        u = rng.random(n)
        both = u < 0.65
        a = both | ((u >= 0.65) & (u < 0.65 + p_a_only))
        b = both | ((u >= 0.65 + p_a_only) & (u < 0.65 + p_a_only + p_b_only))
        _, lo, hi = bootstrap_delta(a, b, n_boot=2000, seed=draw)
        covered += lo <= truth <= hi
    assert covered >= 93, covered


def test_bootstrap_over_seeds_is_wider_than_over_examples_alone():
    rng = np.random.default_rng(2)
    base = rng.random(800) < 0.7
    a = np.stack([base ^ (rng.random(800) < s) for s in (0.02, 0.1, 0.2)])  # seeds that disagree a lot
    b = np.stack([base] * 3)
    _, lo_seeds, hi_seeds = bootstrap_delta(a, b, n_boot=3000)
    _, lo_one, hi_one = bootstrap_delta(a[:1], b[:1], n_boot=3000)
    assert hi_seeds - lo_seeds > hi_one - lo_one


def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p at 1/2 from first principles: sum of outcomes no more likely than k."""
    probs = [math.comb(n, i) / 2**n for i in range(n + 1)]
    return min(1.0, sum(p for p in probs if p <= probs[k] * (1 + 1e-7)))


@pytest.mark.parametrize("a_only,b_only", [(0, 0), (1, 0), (0, 5), (3, 7), (10, 2), (6, 6), (15, 4), (0, 12)])
def test_mcnemar_equals_exact_binomial(a_only, b_only):
    expected = 1.0 if a_only + b_only == 0 else _binom_two_sided(a_only, a_only + b_only)
    assert mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_on_a_small_table_of_predictions():
    a = np.array([1, 1, 1, 1, 1, 0, 0, 1, 1, 1], bool)
    b = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1], bool)
    assert discordant(a, b) == (4, 1)
    assert compare_correct(a, b, n_boot=200).p_value == pytest.approx(_binom_two_sided(4, 5))  # 0.375


def test_holm_is_monotone_and_never_below_raw():
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.random(rng.integers(1, 12)) ** 3
        adj = holm(p)
        assert np.all(adj >= p - 1e-15) and np.all(adj <= 1)
        order = np.argsort(p)
        assert np.all(np.diff(adj[order]) >= -1e-15)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_mean_ci_is_student_t():
    m, lo, hi = mean_ci([0.70, 0.72, 0.74])
    assert m == pytest.approx(0.72) and (hi - m) == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    assert math.isnan(mean_ci([0.7])[1])


# ---------------------------------------------------------------- expected validation performance


def _brute_with_replacement(v, n):
    """Average max over every multiset of n draws, weighted by how many ordered draws give it."""
    big_n, total = len(v), 0.0
    for combo in itertools.combinations_with_replacement(range(big_n), n):
        ways = math.factorial(n)
        for c in set(combo):
            ways //= math.factorial(combo.count(c))
        total += ways * max(v[i] for i in combo)
    return total / big_n**n


def _brute_without_replacement(v, n):
    subsets = list(itertools.combinations(v, n))
    return sum(max(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("big_n", [1, 2, 3, 5, 8])
def test_evp_matches_brute_force_over_all_subsets(big_n):
    rng = np.random.default_rng(big_n)
    v = list(np.round(rng.random(big_n), 2))  # rounding makes ties, which the formulas must handle
    with_r, without_r = evp_with_replacement(v), evp_without_replacement(v)
    for n in range(1, big_n + 1):
        assert with_r[n - 1] == pytest.approx(_brute_with_replacement(v, n), rel=1e-12)
        assert without_r[n - 1] == pytest.approx(_brute_without_replacement(v, n), rel=1e-12)


def test_evp_endpoints_and_monotone():
    rng = np.random.default_rng(4)
    for big_n in (1, 4, 30, 400):
        v = rng.random(big_n)
        w, wo = evp_with_replacement(v, 2 * big_n), evp_without_replacement(v)
        assert w[0] == pytest.approx(v.mean()) and wo[0] == pytest.approx(v.mean())
        assert wo[-1] == pytest.approx(v.max()) and len(wo) == big_n
        assert np.all(np.diff(w) >= -1e-12) and np.all(np.diff(wo) >= -1e-12)
        assert np.all(w[:big_n] <= wo + 1e-12)  # with replacement repeats trials, so it rises more slowly


def test_overtaking_finds_the_first_budget_where_the_laggard_leads():
    assert overtaking([0.7, 0.75, 0.8, 0.82], [0.72, 0.74, 0.76, 0.78]) == 1
    assert overtaking([0.7, 0.71], [0.72, 0.74]) is None
    assert overtaking([0.7, 0.8], [0.7, 0.75]) is None


def test_rank_correlations():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(kendall_tau([1], [1]))


def test_rank_agreement_has_cis_that_shrink_with_more_configurations():
    from bertnli.analysis.stats import rank_agreement

    rng = np.random.default_rng(0)
    final = rng.random(30)
    cheap = final + rng.normal(0, 0.05, 30)
    a = rank_agreement(cheap, final, n_boot=500)  # 500 resamples (not the default 2,000): scipy per resample
    assert 0.7 < a.tau <= 1 and a.tau_low <= a.tau <= a.tau_high and a.rho_low <= a.rho <= a.rho_high
    few = rank_agreement(cheap[:5], final[:5], n_boot=500)
    assert few.tau_high - few.tau_low > a.tau_high - a.tau_low  # five configurations say less than thirty
    assert rank_agreement(-final, final, n_boot=50).tau == pytest.approx(-1)
    assert np.isnan(rank_agreement([0.5, 0.6], [0.6, 0.5]).tau_low)  # two points: no interval


# ---------------------------------------------------------------- the p of a comparison of cells


def _runs(rng, abilities, difficulty):
    """Per-example correctness of runs with these abilities (logits) on examples of this difficulty."""
    logits = np.asarray(abilities)[:, None] - difficulty[None, :]
    return rng.random(logits.shape) < 1 / (1 + np.exp(-logits))


def _cell_pair(rng, n_a, n_b, spread, effect=0.0, n=1500):
    """Two cells of runs on the same examples; each run is a configuration whose ability is drawn with
    `spread` (logit sd) around the cell's, the second cell shifted by `effect`."""
    difficulty = rng.normal(-1.2, 1.5, n)
    a = _runs(rng, rng.normal(effect, spread, n_a), difficulty)
    b = _runs(rng, rng.normal(0.0, spread, n_b), difficulty)
    return a, b


def test_with_no_true_cell_effect_the_p_is_below_0_05_at_most_7_percent_of_the_time():
    """300 simulated cell pairs, 2-6 runs a side, 1,500 examples, runs drawn from one distribution of
    configurations with a 5-10 pp spread in accuracy between runs (as a sweep cell's lr and epochs give).

    Measured on these simulations: the runs x examples p is below 0.05 for 2.7 % of pairs; the bootstrap's
    own p alone for 16 % (few runs a side make its interval too narrow); McNemar pooled over the run
    pairs, the rule before, for 83 %: it counts every example two configurations disagree on.
    """
    rng = np.random.default_rng(7)
    used, boot, pooled, spreads = [], [], [], []
    for i in range(300):
        a, b = _cell_pair(rng, int(rng.integers(2, 7)), int(rng.integers(2, 7)), spread=float(rng.uniform(0.3, 0.6)))
        used.append(compare_correct(a, b, n_boot=500, seed=i).p_value)
        boot.append(bootstrap_p(bootstrap_deltas(a, b, n_boot=500, seed=i)))
        pooled.append(mcnemar_exact(*discordant(a, b)))
        spreads.append(np.concatenate([a.mean(1), b.mean(1)]).std(ddof=1))
    assert 0.05 <= np.median(spreads) <= 0.10, np.median(spreads)  # the realistic spread between runs
    rate = {name: np.mean(np.array(p) < 0.05) for name, p in (("used", used), ("boot", boot), ("pooled", pooled))}
    assert rate["used"] <= 0.07, rate
    assert rate["boot"] > 0.1 and rate["pooled"] > 0.5, rate


def test_a_true_5_pp_cell_effect_between_seeds_of_one_configuration_is_found_in_most_simulations():
    rng = np.random.default_rng(8)
    found, effects = 0, []
    for i in range(100):
        a, b = _cell_pair(rng, 5, 5, spread=0.02, effect=0.35)
        effects.append(a.mean() - b.mean())
        found += compare_correct(a, b, n_boot=500, seed=i).p_value < 0.05
    assert 0.04 <= np.mean(effects) <= 0.06, np.mean(effects)
    assert found >= 80, found


def test_the_test_is_mcnemar_for_one_run_a_side_and_the_permutation_of_runs_otherwise():
    rng = np.random.default_rng(9)
    a, b = _cell_pair(rng, 3, 2, spread=0.3, n=300)
    assert compare_correct(a[:1], b[:1], n_boot=200).test == MCNEMAR
    assert compare_correct(a, b, n_boot=200).test == RUNS_X_EXAMPLES
    assert compare_correct(a[:1], b, n_boot=200).test == RUNS_X_EXAMPLES


def test_three_runs_against_three_cannot_reach_0_05_however_far_apart():
    """C(6, 3) = 20 relabellings, 2 of them as extreme as the truth: p = 0.1 is the honest floor."""
    rng = np.random.default_rng(10)
    a, b = _cell_pair(rng, 3, 3, spread=0.01, effect=2.0, n=500)
    assert run_permutation_p(a, b) == pytest.approx(0.1)
    assert compare_correct(a, b, n_boot=500).p_value == pytest.approx(0.1)


@pytest.mark.parametrize("runs", [(1, 3), (3, 1), (2, 2), (2, 3), (3, 3), (4, 4)])
def test_the_stated_floor_of_the_run_permutation_is_what_it_gives_far_apart(runs):
    rng = np.random.default_rng(13)
    a, b = _cell_pair(rng, *runs, spread=0.01, effect=2.0, n=300)
    assert run_permutation_p(a, b) == pytest.approx(smallest_run_p(*runs))
    note = p_floor_note(*runs, RUNS_X_EXAMPLES)
    assert (f"cannot go below {smallest_run_p(*runs):.2g} with {runs[0]} and {runs[1]} runs" in note) == (
        smallest_run_p(*runs) >= 0.05
    )
    assert p_floor_note(1, 1, MCNEMAR) == ""  # one run a side: McNemar over examples has no such floor


def test_random_relabellings_agree_with_all_of_them():
    rng = np.random.default_rng(11)
    a, b = _cell_pair(rng, 6, 5, spread=0.4, n=300)  # C(11, 6) = 462 labellings: 200 drawn at random
    assert run_permutation_p(a, b, max_draws=200) == pytest.approx(run_permutation_p(a, b), abs=0.03)


def test_with_several_runs_p_below_0_05_means_the_interval_excludes_0():
    rng = np.random.default_rng(12)
    for i in range(40):
        a, b = _cell_pair(rng, 5, 4, spread=float(rng.uniform(0.02, 0.5)), effect=float(rng.uniform(0, 0.5)), n=400)
        c = compare_correct(a, b, n_boot=1000, seed=i)
        assert c.p_value >= 0.05 or c.ci_low > 0 or c.ci_high < 0, c
