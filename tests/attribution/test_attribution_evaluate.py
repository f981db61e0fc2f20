import numpy as np
import pytest

from attribution import (
    completeness_curve,
    components_needed,
    default_ks,
    faithfulness_curve,
    random_ranking,
)

N = 10
IMPORTANT = [2, 5, 7]
OTHERS = [j for j in range(N) if j not in IMPORTANT]


def fraction_important_kept(masks):
    """Normalized output: 1 with everything kept, 0 with the important components ablated."""
    return masks[:, IMPORTANT].mean(axis=1)


KS = np.arange(N + 1)


def test_perfect_ranking_curves_and_components_needed():
    ranking = IMPORTANT + OTHERS
    f = faithfulness_curve(fraction_important_kept, ranking, KS, progress=False)
    c = completeness_curve(fraction_important_kept, ranking, KS, progress=False)
    np.testing.assert_array_equal(f.ks, KS)
    np.testing.assert_allclose(f.values, [0, 1 / 3, 2 / 3] + [1] * 8)
    np.testing.assert_allclose(c.values, [1, 2 / 3, 1 / 3] + [0] * 8)
    assert components_needed(f.ks, f.values, c.values) == 3


def test_worst_ranking_needs_every_component():
    ranking = OTHERS + IMPORTANT[::-1]
    f = faithfulness_curve(fraction_important_kept, ranking, KS, progress=False)
    c = completeness_curve(fraction_important_kept, ranking, KS, progress=False)
    np.testing.assert_allclose(f.values, [0] * 8 + [1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(c.values, [1] * 8 + [2 / 3, 1 / 3, 0])
    assert components_needed(KS, f.values, c.values) == N


def test_curves_call_fn_with_top_k_masks():
    seen = []

    def record(masks):
        seen.append(masks.copy())
        return masks.sum(axis=1)

    ranking = [4, 0, 3, 1, 2]
    f = faithfulness_curve(record, ranking, [0, 2, 5], batch_size=2, progress=False)
    kept = np.concatenate(seen)
    np.testing.assert_array_equal(kept[1], [True, False, False, False, True])  # top-2 = {4, 0}
    np.testing.assert_array_equal(f.values, [0, 2, 5])
    seen.clear()
    c = completeness_curve(record, ranking, [0, 2, 5], progress=False)
    np.testing.assert_array_equal(seen[0][1], [False, True, True, True, False])
    np.testing.assert_array_equal(c.values, [5, 3, 0])


def test_partial_ranking_with_n_components():
    # Only the top 2 of 6 components are ranked; the rest are never kept / ablated as top-k.
    f = faithfulness_curve(lambda m: m.sum(1), [5, 1], [0, 1, 2], n_components=6, progress=False)
    c = completeness_curve(lambda m: m.sum(1), [5, 1], [0, 1, 2], n_components=6, progress=False)
    np.testing.assert_array_equal(f.values, [0, 1, 2])
    np.testing.assert_array_equal(c.values, [6, 5, 4])


def test_random_ranking_is_between_perfect_and_worst():
    ranking = random_ranking(N, seed=0)
    f = faithfulness_curve(fraction_important_kept, ranking, KS, progress=False)
    needed = components_needed(
        KS,
        f.values,
        completeness_curve(fraction_important_kept, ranking, KS, progress=False).values,
    )
    assert 3 <= needed <= N


@pytest.mark.parametrize(
    ("ranking", "ks", "message"),
    [
        ([0, 0, 1], None, "distinct"),
        ([0, 10], None, "distinct component indices in"),
        ([0.5, 1.0], None, "1-D array of component indices"),
        (list(range(N)), [0, 11], r"ks must lie in \[0, 10\]"),
        (list(range(N)), [], "non-empty"),
    ],
)
def test_curve_rejects_bad_ranking_or_ks(ranking, ks, message):
    with pytest.raises(ValueError, match=message):
        faithfulness_curve(fraction_important_kept, ranking, ks, n_components=N, progress=False)


def test_components_needed_thresholds_are_strict_and_none_when_unmet():
    ks = [0, 1, 2, 4]
    assert components_needed(ks, [0.0, 0.8, 0.81, 0.9], [1.0, 0.1, 0.2, 0.19]) == 4
    assert components_needed(ks, [0.0, 0.5, 0.7, 0.8], [1.0, 0.0, 0.0, 0.0]) is None
    assert components_needed(ks, [0.0, 0.5, 0.9, 1.0], [1, 0.5, 0.1, 0.0], f_threshold=0.95) == 4
    # The smallest qualifying k, even when ks are not sorted.
    assert components_needed([8, 2, 4], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]) == 2
    with pytest.raises(ValueError, match="equal length"):
        components_needed([0, 1], [0.0], [1.0, 0.0])


def test_default_ks():
    assert default_ks(5).tolist() == [0, 1, 2, 3, 4, 5]
    for spacing in ("geometric", "linear"):
        ks = default_ks(1024, n_points=40, spacing=spacing)
        assert ks[0] == 0 and ks[-1] == 1024
        assert np.all(np.diff(ks) > 0) and len(ks) <= 40
    geometric, linear = default_ks(1024, 40), default_ks(1024, 40, "linear")
    assert np.sum(geometric <= 32) > np.sum(linear <= 32)  # geometric is dense at small k
    with pytest.raises(ValueError, match="spacing"):
        default_ks(100, 10, spacing="log")
