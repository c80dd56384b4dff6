"""Statistics for comparing settings: paired bootstrap, McNemar, permutation of runs, Holm, expected validation
performance.

Pure functions on arrays, no I/O. A gap of 0.4 pp between two settings means nothing until a
paired test says how often sampling noise (examples) and training noise (seeds) make such a gap
(Dror et al. 2018; Reimers & Gurevych 2017). `scipy.stats` does the tests it has.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class Comparison:
    """A minus B on the same examples: accuracies, the paired difference and its evidence."""

    acc_a: float
    acc_b: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float  # from `test`: one rule for every comparison (`compare_correct`)
    test: str
    n_examples: int
    seeds_a: int
    seeds_b: int
    a_only: int  # discordant pairs: A right, B wrong (pooled over seed pairs)
    b_only: int


# ---------------------------------------------------------------- McNemar and the bootstrap


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar: under H0 each discordant pair goes either way with probability 1/2.

    Only the discordant pairs carry information about a difference; with none, p = 1.
    """
    n = int(a_only) + int(b_only)
    if n == 0:
        return 1.0
    return float(sps.binomtest(int(a_only), n, 0.5, alternative="two-sided").pvalue)


def _correct_matrix(correct) -> np.ndarray:
    """(seeds, examples) bools; one run's 1-D correctness becomes one row."""
    c = np.asarray(correct, dtype=bool)
    if c.ndim == 1:
        c = c[None, :]
    if c.ndim != 2 or c.shape[0] == 0:
        raise ValueError("correctness must be (examples,) or (seeds, examples)")
    return c


def bootstrap_deltas(correct_a, correct_b, n_boot: int = 10_000, seed: int = 0, chunk: int = 500) -> np.ndarray:
    """mean accuracy(A) - mean accuracy(B) on `n_boot` resamples of the examples (paired: the same resampled
    examples for both sides) and, where a side has several runs, of its runs too.

    Resampling runs as well as examples is what makes the interval cover training noise, not only
    the luck of which test pairs were drawn.
    """
    a, b = _correct_matrix(correct_a), _correct_matrix(correct_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"A has {a.shape[1]} examples, B {b.shape[1]}: a paired comparison needs the same examples")
    n = a.shape[1]
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_boot)
    af, bf = a.astype(np.float64), b.astype(np.float64)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(k, n))
        # per bootstrap draw: the runs drawn for each side, weighted by how often each was drawn
        wa = _seed_weights(rng, a.shape[0], k)
        wb = _seed_weights(rng, b.shape[0], k)
        acc_a = np.einsum("ks,ks->k", wa, _resampled_means(af, idx))
        acc_b = np.einsum("ks,ks->k", wb, _resampled_means(bf, idx))
        deltas[start : start + k] = acc_a - acc_b
    return deltas


def bootstrap_delta(
    correct_a, correct_b, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """The observed delta and its percentile CI over `bootstrap_deltas`."""
    a, b = _correct_matrix(correct_a), _correct_matrix(correct_b)
    lo, hi = percentile_ci(bootstrap_deltas(a, b, n_boot=n_boot, seed=seed), alpha)
    return float(a.mean() - b.mean()), lo, hi


def percentile_ci(deltas: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    lo, hi = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_p(deltas: np.ndarray) -> float:
    """The bootstrap's own two-sided p for delta = 0: twice the smaller share of resamples on either side
    of 0, so p < 0.05 only when the percentile 95 % CI from the same resamples excludes 0."""
    n = len(deltas)
    below, above = (1 + int((deltas <= 0).sum())) / (1 + n), (1 + int((deltas >= 0).sum())) / (1 + n)
    return min(1.0, 2 * min(below, above))


def _seed_weights(rng: np.random.Generator, seeds: int, k: int) -> np.ndarray:
    if seeds == 1:
        return np.ones((k, 1))
    return rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=k) / seeds


def _resampled_means(c: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(k, runs): each run's accuracy on each of the k resampled example sets (how often each example was
    drawn, times the runs' correctness: one matrix product instead of a gather per run)."""
    k, n = idx.shape
    counts = np.bincount((idx + n * np.arange(k)[:, None]).ravel(), minlength=k * n).reshape(k, n)
    return counts.astype(np.float64) @ c.T / n


def discordant(correct_a, correct_b) -> tuple[int, int]:
    """(A right & B wrong, B right & A wrong), pooled over seed pairs.

    Seeds pair up by position when both sides have as many; otherwise every A seed meets every B
    seed and the counts are averaged (rounded), so the pooled table has the size of one pairing.
    """
    a, b = _correct_matrix(correct_a), _correct_matrix(correct_b)
    if a.shape[0] == b.shape[0]:
        return int((a & ~b).sum()), int((b & ~a).sum())
    pairs = a.shape[0] * b.shape[0]
    a_only = sum(int((ra & ~rb).sum()) for ra in a for rb in b)
    b_only = sum(int((rb & ~ra).sum()) for ra in a for rb in b)
    scale = max(a.shape[0], b.shape[0]) / pairs
    return round(a_only * scale), round(b_only * scale)


MCNEMAR = "McNemar exact"
RUNS_X_EXAMPLES = "runs x examples"


def run_permutation_p(correct_a, correct_b, max_draws: int = 20_000, seed: int = 0) -> float:
    """Two-sided p that A's and B's runs come from one distribution of runs: the share of relabellings of
    the runs between the sides whose |delta| reaches the observed one (all of them when there are at most
    `max_draws`, otherwise that many at random, counting the observed labelling).

    Exact whatever the spread between runs, and honest about few runs: the smallest p is 2 / C(2k, k)
    for k runs a side (1/3 for 2, 0.1 for 3, 0.029 for 4, 0.008 for 5) and 1 / (k + 1) for one run
    against k.
    """
    a, b = _correct_matrix(correct_a), _correct_matrix(correct_b)
    acc = np.concatenate([a.mean(axis=1), b.mean(axis=1)])
    n_runs, n_a = len(acc), a.shape[0]
    observed = abs(acc[:n_a].mean() - acc[n_a:].mean())
    if math.comb(n_runs, n_a) <= max_draws:
        labels = np.zeros((math.comb(n_runs, n_a), n_runs), dtype=bool)
        for row, chosen in enumerate(itertools.combinations(range(n_runs), n_a)):
            labels[row, list(chosen)] = True
    else:
        rng = np.random.default_rng(seed)
        labels = np.argsort(rng.random((max_draws, n_runs)), axis=1) < n_a
        labels[0] = np.arange(n_runs) < n_a
    delta = (labels * acc).sum(1) / n_a - (~labels * acc).sum(1) / (n_runs - n_a)
    return float(np.mean(np.abs(delta) >= observed - 1e-12))


def smallest_run_p(runs_a: int, runs_b: int) -> float:
    """The smallest p `run_permutation_p` can give with these runs a side: the extreme labelling alone, or with
    its mirror when the sides are equal."""
    return (2 if runs_a == runs_b else 1) / math.comb(runs_a + runs_b, runs_a)


def p_floor_note(runs_a: int, runs_b: int, test: str) -> str:
    """Where the runs x examples test cannot reach 0.05 at all, however large the difference: a reader who
    sees an interval far from 0 beside a large p learns why."""
    floor = smallest_run_p(runs_a, runs_b) if test == RUNS_X_EXAMPLES else 0.0
    if floor < 0.05:
        return ""
    return (
        f"p cannot go below {floor:.2g} with {runs_a} and {runs_b} runs (the runs' permutation), whatever the "
        "difference; more runs per cell would settle it"
    )


def compare_correct(correct_a, correct_b, n_boot: int = 10_000, seed: int = 0) -> Comparison:
    """The whole paired comparison of two sides' per-example correctness, with one rule for its p.

    One run a side: McNemar, exact for that pairing. Several: the runs x examples test, whose p is the
    larger of the permutation of runs (do the sides differ beyond the spread between their runs?) and
    the bootstrap's own p (does the difference hold over resampled examples?). Rejecting needs both,
    an intersection-union test, so its level is kept; the bootstrap alone rejects 2-3 times too often
    with few runs a side, and McNemar pooled over run pairs counts every example on which two
    configurations disagree as evidence (tests/analysis/test_stats.py measures both).
    """
    a, b = _correct_matrix(correct_a), _correct_matrix(correct_b)
    deltas = bootstrap_deltas(a, b, n_boot=n_boot, seed=seed)
    lo, hi = percentile_ci(deltas)
    a_only, b_only = discordant(a, b)
    if a.shape[0] == b.shape[0] == 1:
        p, test = mcnemar_exact(a_only, b_only), MCNEMAR
    else:
        p, test = max(run_permutation_p(a, b, seed=seed), bootstrap_p(deltas)), RUNS_X_EXAMPLES
    return Comparison(
        float(a.mean()),
        float(b.mean()),
        float(a.mean() - b.mean()),
        lo,
        hi,
        p,
        test,
        a.shape[1],
        a.shape[0],
        b.shape[0],
        a_only,
        b_only,
    )


def p_text(p: float) -> str:
    """p as a reader needs it: a rounded 0.0000 claims a certainty that no test here gives."""
    return "< 1e-4" if p < 1e-4 else f"{p:.3g}"


def p_phrase(p: float) -> str:
    """`p = 0.012` or `p < 1e-4`, for sentences."""
    shown = p_text(p)
    return f"p {shown}" if shown.startswith("<") else f"p = {shown}"


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment: controls the family-wise error over all pairwise tests.

    Sorted ascending, p_(i) is multiplied by (m - i), made monotone by a running max, capped at 1.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out


def mean_ci(values, alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean and Student-t CI over seeds (NaN bounds for a single value: one seed says nothing of spread)."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    half = float(sps.t.ppf(1 - alpha / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


# ---------------------------------------------------------------- expected validation performance


def evp_with_replacement(scores, n_max: int | None = None) -> np.ndarray:
    """Dodge et al. 2019: expected best dev score of n trials drawn with replacement, n = 1..n_max.

    E[max] = sum_i v_(i) [(i/N)^n - ((i-1)/N)^n] over the sorted scores v_(1) <= ... <= v_(N).
    """
    v = np.sort(np.asarray(scores, dtype=np.float64))
    big_n = len(v)
    if big_n == 0:
        raise ValueError("no scores")
    n = np.arange(1, (n_max or big_n) + 1)[:, None]
    i = np.arange(1, big_n + 1)[None, :]
    weights = (i / big_n) ** n - ((i - 1) / big_n) ** n
    return weights @ v


def evp_without_replacement(scores, n_max: int | None = None) -> np.ndarray:
    """Tang et al. 2020: unbiased expected best of n of the N observed trials, drawn without replacement.

    E[max] = sum_i v_(i) C(i-1, n-1) / C(N, n); at n = N it is the observed maximum (n <= N only).
    """
    v = np.sort(np.asarray(scores, dtype=np.float64))
    big_n = len(v)
    if big_n == 0:
        raise ValueError("no scores")
    n_max = min(n_max or big_n, big_n)
    out = np.empty(n_max)
    for n in range(1, n_max + 1):
        # log-space binomials: C(N, n) overflows floats for a few hundred trials
        i = np.arange(n, big_n + 1)
        logw = _log_comb(i - 1, n - 1) - _log_comb(big_n, n)
        out[n - 1] = float(np.exp(logw) @ v[n - 1 :])
    return out


def _log_comb(n, k):
    from scipy.special import gammaln

    n = np.asarray(n, dtype=np.float64)
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def overtaking(curve_a, curve_b) -> int | None:
    """The first budget index (0-based) at which the curve that was behind at index 0 is strictly ahead."""
    a, b = np.asarray(curve_a), np.asarray(curve_b)
    m = min(len(a), len(b))
    if m == 0 or a[0] == b[0]:
        return None
    lead = np.sign(a[0] - b[0])
    ahead = np.nonzero(np.sign(a[:m] - b[:m]) == -lead)[0]
    return int(ahead[0]) if len(ahead) else None


# ---------------------------------------------------------------- rank correlations


def kendall_tau(x, y) -> float:
    """Kendall's tau-b between two score lists (NaN when either is constant or shorter than 2)."""
    if len(x) < 2:
        return math.nan
    return float(sps.kendalltau(x, y).statistic)


def spearman_rho(x, y) -> float:
    if len(x) < 2:
        return math.nan
    return float(sps.spearmanr(x, y).statistic)


@dataclass(frozen=True)
class RankAgreement:
    """How far a cheap ranking (a low rung) agrees with the final one, over the same configurations."""

    n: int
    tau: float
    tau_low: float
    tau_high: float
    rho: float
    rho_low: float
    rho_high: float


def rank_agreement(cheap, final, n_boot: int = 2_000, alpha: float = 0.05, seed: int = 0) -> RankAgreement:
    """Kendall's tau and Spearman's rho, each with a percentile bootstrap CI over configurations (paired resampling).

    Resampled by hand rather than with `scipy.stats.bootstrap`: with a handful of configurations many
    resamples draw one configuration only, whose rank correlation is undefined (NaN), and scipy's
    percentile then returns NaN; here those resamples are skipped. Few configurations give wide
    intervals, and that is the honest answer; fewer than 3 give NaN bounds.
    """
    x, y = np.asarray(cheap, dtype=np.float64), np.asarray(final, dtype=np.float64)
    tau, rho = kendall_tau(x, y), spearman_rho(x, y)
    if len(x) < 3:
        return RankAgreement(len(x), tau, math.nan, math.nan, rho, math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant resamples: scipy warns, the value is NaN and skipped
        taus = np.array([kendall_tau(x[i], y[i]) for i in idx])
        rhos = np.array([spearman_rho(x[i], y[i]) for i in idx])
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    tl, th = np.nanpercentile(taus, q) if np.isfinite(taus).any() else (math.nan, math.nan)
    rl, rh = np.nanpercentile(rhos, q) if np.isfinite(rhos).any() else (math.nan, math.nan)
    return RankAgreement(len(x), tau, float(tl), float(th), rho, float(rl), float(rh))
