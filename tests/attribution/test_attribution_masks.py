import numpy as np
import pytest

from attribution import random_ranking, rank_by, sample_masks


def test_sample_masks_shape_dtype_and_ablation_rate():
    masks = sample_masks(4000, 50, p_ablate=0.75, seed=0)
    assert masks.shape == (4000, 50)
    assert masks.dtype == np.bool_
    # True = kept, so the kept fraction is 1 - p_ablate.
    assert abs(masks.mean() - 0.25) < 0.01
    assert abs(sample_masks(4000, 50, p_ablate=0.1).mean() - 0.9) < 0.01


def test_sample_masks_reproducible():
    a = sample_masks(100, 20, seed=3)
    assert np.array_equal(a, sample_masks(100, 20, seed=3))
    assert not np.array_equal(a, sample_masks(100, 20, seed=4))


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_sample_masks_rejects_p_outside_open_interval(p):
    with pytest.raises(ValueError, match=r"p_ablate must be in \(0, 1\), got"):
        sample_masks(10, 5, p_ablate=p)


@pytest.mark.parametrize(("n_masks", "n_components"), [(0, 5), (10, 0), (-1, 5), (10, 2.0)])
def test_sample_masks_rejects_bad_sizes(n_masks, n_components):
    with pytest.raises(ValueError, match="positive integer"):
        sample_masks(n_masks, n_components)


def test_rank_by_descending_with_stable_ties():
    assert rank_by([1.0, 3.0, 3.0, 2.0]).tolist() == [1, 2, 3, 0]
    assert rank_by([0.0, -1.0, 0.0]).tolist() == [0, 2, 1]
    many_ties = np.tile([1.0, 2.0, 1.0, 3.0], 50)  # long enough for unstable sorts to reorder
    ranking = rank_by(many_ties)
    assert ranking[:50].tolist() == list(range(3, 200, 4))
    assert ranking[50:100].tolist() == list(range(1, 200, 4))
    assert ranking[100:].tolist() == sorted(list(range(0, 200, 4)) + list(range(2, 200, 4)))


def test_rank_by_flattens_layer_head_matrix_in_c_order():
    scores = np.array([[0.1, 0.9], [0.5, 0.0]])  # [layers, heads]
    assert rank_by(scores).tolist() == [1, 2, 0, 3]  # flat index = layer * n_heads + head


def test_rank_by_unsigned_scores_do_not_wrap():
    assert rank_by(np.array([0, 200, 7], dtype=np.uint8)).tolist() == [1, 2, 0]


def test_rank_by_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        rank_by([1.0, float("nan")])


def test_random_ranking_is_a_reproducible_permutation():
    r = random_ranking(30, seed=1)
    assert sorted(r.tolist()) == list(range(30))
    assert np.array_equal(r, random_ranking(30, seed=1))
    assert not np.array_equal(r, random_ranking(30, seed=2))
