import numpy as np
import pytest

from attribution import FitResult, aggregate, collect, fit, rank_by, sample_masks

N_COMPONENTS = 40
# Planted sparse weights: four helpful components of decreasing size and one harmful one.
PLANTED = {3: 0.5, 17: 0.3, 8: 0.15, 31: 0.1, 25: -0.2}


def planted_w() -> np.ndarray:
    w = np.zeros(N_COMPONENTS)
    for j, v in PLANTED.items():
        w[j] = v
    return w


def planted_data(n_masks=2000, noise=0.01, seed=0):
    masks = sample_masks(n_masks, N_COMPONENTS, seed=seed)
    rng = np.random.default_rng(seed + 100)
    y = masks @ planted_w() + 0.2 + noise * rng.standard_normal(n_masks)
    return masks, y


def test_fit_recovers_planted_components_in_order():
    masks, y = planted_data()
    result = fit(masks, y)
    assert rank_by(result.coef)[:4].tolist() == [3, 17, 8, 31]
    assert int(np.argmin(result.coef)) == 25
    np.testing.assert_allclose(result.coef, planted_w(), atol=0.03)
    assert abs(result.intercept - 0.2) < 0.03
    assert result.r2 > 0.9
    assert result.pearson > 0.95
    assert (result.n_train, result.n_test) == (1800, 200)
    assert result.y_test.shape == result.y_pred.shape == (200,)


def test_fit_held_out_metrics_match_predict():
    masks, y = planted_data()
    result = fit(masks, y, holdout=0.25, seed=7)
    # y_test / y_pred are a held-out split: recover its rows and recompute.
    pred_all = result.predict(masks)
    rows = [int(np.flatnonzero(y == t)[0]) for t in result.y_test]
    np.testing.assert_allclose(pred_all[rows], result.y_pred)
    resid = result.y_test - result.y_pred
    r2 = 1 - np.sum(resid**2) / np.sum((result.y_test - result.y_test.mean()) ** 2)
    assert result.r2 == pytest.approx(r2)
    assert result.pearson == pytest.approx(np.corrcoef(result.y_test, result.y_pred)[0, 1])


def test_sign_convention_positive_means_keeping_raises_output():
    masks = sample_masks(500, 5, seed=1)
    # Ablating component 0 lowers the output by 0.5; ablating component 1 raises it by 0.4.
    y = 1.0 - 0.5 * (~masks[:, 0]) + 0.4 * (~masks[:, 1])
    coef = fit(masks, y).coef
    assert coef[0] == pytest.approx(0.5, abs=0.02)
    assert coef[1] == pytest.approx(-0.4, abs=0.02)
    assert np.all(np.abs(coef[2:]) < 0.02)


def test_fit_is_deterministic_and_seed_changes_split():
    masks, y = planted_data(n_masks=500)
    a, b = fit(masks, y, seed=0), fit(masks, y, seed=0)
    assert np.array_equal(a.coef, b.coef) and a.r2 == b.r2
    assert not np.array_equal(a.y_test, fit(masks, y, seed=1).y_test)


def test_pipeline_is_deterministic_end_to_end():
    w = planted_w()

    def run():
        masks = sample_masks(300, N_COMPONENTS, seed=5)
        y = collect(lambda m: m @ w, masks, batch_size=64, progress=False)
        return masks, y, fit(masks, y, seed=5).coef

    for first, second in zip(run(), run(), strict=True):
        assert np.array_equal(first, second)


def test_holdout_zero_fits_on_all_masks_without_metrics():
    masks, y = planted_data(n_masks=300)
    result = fit(masks, y, holdout=0.0)
    assert (result.n_train, result.n_test) == (300, 0)
    assert np.isnan(result.r2) and np.isnan(result.pearson)


def test_fit_rejects_too_few_masks():
    masks = sample_masks(10, 10)
    with pytest.raises(ValueError, match="at least n_components \\+ 1 = 11 masks, got 10"):
        fit(masks, np.zeros(10))


def test_fit_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="100 rows but y has 99"):
        fit(sample_masks(100, 5), np.zeros(99))


def test_fit_rejects_nan_and_inf():
    masks, y = planted_data(n_masks=200)
    y[[7, 9]] = [np.nan, np.inf]
    with pytest.raises(ValueError, match=r"2 NaN/inf values, first at rows \[7, 9\]"):
        fit(masks, y)


@pytest.mark.parametrize("holdout", [1.0, -0.1, 1.5])
def test_fit_rejects_holdout_outside_range(holdout):
    masks, y = planted_data(n_masks=200)
    with pytest.raises(ValueError, match=r"holdout must be in \[0, 1\)"):
        fit(masks, y, holdout=holdout)


def test_fit_rejects_holdout_too_small_for_metrics():
    masks, y = planted_data(n_masks=200)
    with pytest.raises(ValueError, match="at least 2"):
        fit(masks, y, holdout=0.001)


def test_fit_rejects_multi_output_y_and_bad_masks():
    masks, y = planted_data(n_masks=200)
    with pytest.raises(ValueError, match="1-D"):
        fit(masks, np.stack([y, y], axis=1))
    with pytest.raises(ValueError, match="only 0 and 1"):
        fit(masks * 2, y)


def make_result(coef, r2, pearson):
    empty = np.empty(0)
    return FitResult(np.asarray(coef, float), 0.0, r2, pearson, 10, 2, empty, empty)


def test_aggregate_means_and_stds():
    agg = aggregate([make_result([1.0, 0.0], 0.8, 0.9), make_result([3.0, -2.0], 0.6, 0.7)])
    np.testing.assert_allclose(agg.coef, [2.0, -1.0])
    np.testing.assert_allclose(agg.coef_std, [1.0, 1.0])
    assert agg.r2_mean == pytest.approx(0.7) and agg.r2_std == pytest.approx(0.1)
    assert agg.pearson_mean == pytest.approx(0.8) and agg.pearson_std == pytest.approx(0.1)
    assert agg.n_results == 2


def test_aggregate_rejects_empty_and_mixed_sizes():
    with pytest.raises(ValueError, match="at least one"):
        aggregate([])
    with pytest.raises(ValueError, match="different numbers of components"):
        aggregate([make_result([1.0], 0.5, 0.5), make_result([1.0, 2.0], 0.5, 0.5)])
