"""Top-k overlap, its chance p-value and the paired task permutation test, against brute force."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from fractions import Fraction

import numpy as np
import pytest

import attribution.overlap as overlap_module
from attribution import (
    chance_overlap_pvalue,
    rank_by,
    task_permutation_test,
    topk_overlap,
    topk_set,
)


# ------------------------------------------------------------------ brute force
def swapped(a: np.ndarray, b: np.ndarray, swap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sides after exchanging the two maps of every sample where ``swap`` is True."""
    where = swap.reshape(-1, *([1] * (a.ndim - 1)))
    return np.where(where, b, a), np.where(where, a, b)


def brute_statistic(a: np.ndarray, b: np.ndarray, k: int, statistic: str) -> float:
    """The test statistic from its definition, with python sets."""
    if statistic == "mean":
        return float(topk_overlap(a.mean(0), b.mean(0), k))
    sets_a = [topk_set(x, k) for x in a]
    sets_b = [topk_set(y, k) for y in b]
    n = len(a)
    pairs = [len(sets_a[i] & sets_b[j]) for i in range(n) for j in range(n) if i != j]
    return sum(pairs) / len(pairs)


def brute_test(a, b, k, n_permutations, seed, statistic):
    """Observed, null and p-value with one permutation at a time from the same stream."""
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n_permutations):
        swap = rng.random(len(a)) < 0.5
        null.append(brute_statistic(*swapped(a, b, swap), k, statistic))
    observed = brute_statistic(a, b, k, statistic)
    null = np.array(null)
    p = (1 + int(np.sum(null <= observed + 1e-12))) / (1 + n_permutations)
    return observed, null, p


def planted(n: int, heads: list[int], noise: float, rng, n_components: int = 96) -> np.ndarray:
    """``[n, n_components]`` maps: 1 on ``heads``, 0 elsewhere, plus Gaussian noise."""
    signal = np.zeros(n_components)
    signal[heads] = 1.0
    return signal + noise * rng.standard_normal((n, n_components))


# ------------------------------------------------------------------ top-k sets
def test_topk_set_breaks_ties_by_index_like_rank_by():
    scores = np.array([[1.0, 3.0, 3.0], [2.0, 3.0, 0.0]])  # three tied at 3
    assert topk_set(scores, 2) == frozenset({1, 2})
    assert topk_set(scores, 3) == frozenset({1, 2, 4})
    assert topk_set(scores, 4) == frozenset(int(i) for i in rank_by(scores)[:4])
    assert topk_set(scores, 4) == frozenset({1, 2, 4, 3})


def test_topk_overlap_known_answers():
    x = np.arange(10.0)  # top 3: 9, 8, 7
    assert topk_overlap(x, x, 3) == 3
    assert topk_overlap(x, -x, 3) == 0  # top 3 of -x: 0, 1, 2
    y = x.copy()
    y[[9, 0]] = y[[0, 9]]  # top 3 of y: 0 (now 9.0), 8, 7
    assert topk_overlap(x, y, 3) == 2
    assert topk_overlap(x, y, 10) == 10


def test_topk_errors_name_the_problem():
    with pytest.raises(ValueError, match=re.escape("got (4,) and (5,)")):
        topk_overlap(np.zeros(4), np.zeros(5), 2)
    with pytest.raises(
        ValueError, match=re.escape("k must be in [1, n_components] = [1, 4], got 5")
    ):
        topk_set(np.zeros(4), 5)
    with pytest.raises(ValueError, match=re.escape("got 0")):
        topk_set(np.zeros(4), 0)
    with pytest.raises(TypeError, match="k must be an integer, got True"):
        topk_set(np.zeros(4), True)
    with pytest.raises(TypeError, match="k must be an integer, got 2.0"):
        topk_set(np.zeros(4), 2.0)


# ------------------------------------------------------------------ chance p-value
@pytest.mark.parametrize(("n", "k"), [(1, 1), (5, 2), (12, 5), (64, 10), (96, 10), (96, 48)])
def test_chance_pvalue_is_the_hypergeometric_tail_from_binomial_coefficients(n, k):
    total = math.comb(n, k)
    for observed in range(k + 1):
        # P(X >= observed): choose j of the k marked and k - j of the n - k others.
        tail = Fraction(
            sum(math.comb(k, j) * math.comb(n - k, k - j) for j in range(observed, k + 1)),
            total,
        )
        assert chance_overlap_pvalue(observed, n, k) == pytest.approx(float(tail), rel=1e-9)
    assert chance_overlap_pvalue(0, n, k) == 1.0


def test_chance_pvalue_matches_random_subsets():
    rng = np.random.default_rng(0)
    n, k = 20, 6
    shared = [len(set(rng.permutation(n)[:k]) & set(rng.permutation(n)[:k])) for _ in range(20_000)]
    for observed in (2, 3, 4):
        expected = chance_overlap_pvalue(observed, n, k)
        assert np.mean(np.array(shared) >= observed) == pytest.approx(expected, abs=0.01)


def test_chance_pvalue_errors_name_the_problem():
    with pytest.raises(ValueError, match=re.escape("overlap must be in [0, k] = [0, 3], got 4")):
        chance_overlap_pvalue(4, 10, 3)
    with pytest.raises(ValueError, match=re.escape("k must be in [1, n_components] = [1, 10]")):
        chance_overlap_pvalue(1, 10, 11)
    with pytest.raises(ValueError, match="n_components must be at least 1, got 0"):
        chance_overlap_pvalue(0, 0, 1)
    with pytest.raises(TypeError, match="overlap must be an integer, got 1.5"):
        chance_overlap_pvalue(1.5, 10, 3)


# ------------------------------------------------------------------ permutation test
@pytest.mark.parametrize("statistic", ["mean", "pairs"])
def test_permutation_test_equals_a_loop_over_the_same_swap_stream(statistic):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((7, 3, 4))
    b = rng.standard_normal((7, 3, 4)) + 0.5 * a  # correlated tasks
    result = task_permutation_test(a, b, 3, n_permutations=300, seed=5, statistic=statistic)
    observed, null, p = brute_test(a, b, 3, 300, 5, statistic)
    assert result.observed == pytest.approx(observed, abs=1e-12)
    np.testing.assert_allclose(result.null, null, rtol=0, atol=1e-12)
    assert result.p_value == p
    assert (result.k, result.n_permutations, result.n_samples) == (3, 300, 7)
    assert result.statistic == statistic


@pytest.mark.parametrize("statistic", ["mean", "pairs"])
def test_permutation_blocks_do_not_change_the_result(statistic, monkeypatch):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((9, 30)), rng.standard_normal((9, 30))
    whole = task_permutation_test(a, b, 5, n_permutations=1000, seed=3, statistic=statistic)
    # Blocks of 3 permutations: 333 full blocks and a last one of 1.
    monkeypatch.setattr(overlap_module, "_BLOCK_ELEMENTS", 3 * 30)
    blocks = task_permutation_test(a, b, 5, n_permutations=1000, seed=3, statistic=statistic)
    np.testing.assert_array_equal(whole.null, blocks.null)
    assert whole.p_value == blocks.p_value


@pytest.mark.parametrize("statistic", ["mean", "pairs"])
def test_permutation_null_converges_to_the_exhaustive_swap_distribution(statistic):
    # Six samples: all 2**6 swap patterns give the exact randomization distribution.
    rng = np.random.default_rng(4)
    n, k = 6, 4
    a = planted(n, [0, 1, 2, 3], 1.0, rng, n_components=12)
    b = planted(n, [2, 3, 4, 5], 1.0, rng, n_components=12)
    patterns = [np.array(s, dtype=bool) for s in itertools.product([False, True], repeat=n)]
    exact = np.array([brute_statistic(*swapped(a, b, s), k, statistic) for s in patterns])
    observed = brute_statistic(a, b, k, statistic)
    exact_p = float(np.mean(exact <= observed + 1e-12))
    assert 0.1 < exact_p < 0.9  # an informative case, not a p-value pinned at an end

    result = task_permutation_test(a, b, k, n_permutations=20_000, seed=0, statistic=statistic)
    assert result.observed == pytest.approx(observed, abs=1e-12)
    assert result.p_value == pytest.approx(exact_p, abs=0.015)
    values, counts = np.unique(np.round(exact, 9), return_counts=True)
    drawn = np.round(result.null, 9)
    assert set(np.unique(drawn)) <= set(values)
    for value, count in zip(values, counts, strict=True):
        assert np.mean(drawn == value) == pytest.approx(count / len(patterns), abs=0.015)


@pytest.mark.parametrize("statistic", ["mean", "pairs"])
def test_identical_maps_overlap_fully_and_are_not_specific(statistic):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((10, 8, 12))
    result = task_permutation_test(a, a.copy(), 10, n_permutations=500, statistic=statistic)
    if statistic == "mean":
        assert result.observed == 10
        assert np.all(result.null == 10)
    assert result.p_value == 1.0


@pytest.mark.parametrize("statistic", ["mean", "pairs"])
def test_disjoint_planted_heads_are_task_specific(statistic):
    rng = np.random.default_rng(6)
    a = planted(50, list(range(10)), 1.0, rng)
    b = planted(50, list(range(10, 20)), 1.0, rng)
    result = task_permutation_test(a, b, 10, n_permutations=2000, statistic=statistic)
    assert result.p_value < 0.01
    if statistic == "mean":
        assert result.observed == 0
        # Versus chance, sharing nothing is the least surprising outcome.
        assert chance_overlap_pvalue(int(result.observed), 96, 10) == 1.0


def test_mean_statistic_misses_clean_distinct_tasks_and_pairs_does_not():
    # What the docstring warns: each side keeps ranking its own task's heads first
    # unless exactly half its samples are swapped, so "mean" sees no difference.
    rng = np.random.default_rng(1)
    a = planted(50, list(range(10)), 0.05, rng)
    b = planted(50, list(range(10, 20)), 0.05, rng)
    mean = task_permutation_test(a, b, 10, n_permutations=2000, statistic="mean")
    pairs = task_permutation_test(a, b, 10, n_permutations=2000, statistic="pairs")
    assert mean.observed == 0
    assert mean.p_value > 0.5
    assert pairs.observed == 0
    assert pairs.p_value == 1 / 2001


@pytest.mark.parametrize("statistic", ["mean", "pairs"])
def test_tasks_of_one_distribution_are_not_called_specific(statistic):
    rng = np.random.default_rng(7)
    heads = [3, 17, 25, 40, 41, 60, 77, 80, 90, 95]
    a, b = planted(40, heads, 1.0, rng), planted(40, heads, 1.0, rng)
    assert task_permutation_test(a, b, 10, 2000, statistic=statistic).p_value > 0.05
    # Under the null the test rejects at most about as often as its level.
    p_values = [
        task_permutation_test(
            planted(20, heads, 1.0, rng), planted(20, heads, 1.0, rng), 10, 200, seed=r,
            statistic=statistic,
        ).p_value
        for r in range(100)
    ]  # fmt: skip
    assert np.mean(np.array(p_values) <= 0.05) <= 0.1


def test_permutation_result_is_frozen():
    rng = np.random.default_rng(8)
    result = task_permutation_test(rng.random((3, 5)), rng.random((3, 5)), 2, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.p_value = 0.0
    with pytest.raises(ValueError, match="read-only"):
        result.null[0] = 1.0


def test_permutation_errors_name_the_problem():
    x = np.zeros((4, 6))
    cases = [
        ((np.zeros(6), np.zeros(6), 2), "coef_a must be per-sample maps [n_samples, ..."),
        ((x, np.zeros((4, 5)), 2), "must have the same shape (the same samples in the same "
         "order, the same components), got (4, 6) and (4, 5)"),
        ((x[:1], x[:1], 2), "needs at least 2 paired samples, got 1"),
        ((x, np.full((4, 6), np.nan), 2), "coef_b contains NaN or infinite values"),
        ((x, x, 6), "k must be in [1, n_components) = [1, 6), got 6"),
        ((x, x, 0), "k must be in [1, n_components) = [1, 6), got 0"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            task_permutation_test(*args)
    with pytest.raises(ValueError, match="n_permutations must be at least 1, got 0"):
        task_permutation_test(x, x, 2, n_permutations=0)
    with pytest.raises(TypeError, match="n_permutations must be an integer, got 1000.0"):
        task_permutation_test(x, x, 2, n_permutations=1e3)
    with pytest.raises(ValueError, match=re.escape("unknown statistic 'median'; choose from")):
        task_permutation_test(x, x, 2, statistic="median")
