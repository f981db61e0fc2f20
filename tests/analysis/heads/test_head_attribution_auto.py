"""``n_masks="auto"``: rounds that are prefixes of the fixed run, stopped by the criterion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attribution import fit
from tl_lvlm.analysis.heads import HeadAttributionResult, head_attribution, stored_samples
from tl_lvlm.analysis.heads.convergence import (
    AUTO_MAX_MASKS,
    AUTO_R2_TOL,
    AUTO_TOP_K,
    auto_rounds,
)
from tl_lvlm.cli.report import write_report

pytest_plugins = ["planted_llava"]
pytestmark = pytest.mark.filterwarnings("ignore:the mean baseline is computed over only")

FAST = dict(evaluate=False, progress=False)


@pytest.fixture(scope="module")
def auto(planted_model, planted_samples, tmp_path_factory):
    store = tmp_path_factory.mktemp("auto-store")
    result = head_attribution(
        planted_model, planted_samples, n_masks="auto", store_dir=store, **FAST
    )
    return result, store


def test_rounds_are_multiples_of_one_step_up_to_the_maximum():
    assert auto_rounds(8) == list(range(1000, 10_001, 1000))
    # LLaVA-1.5-7B: 32 x 32 heads need more masks per round.
    assert auto_rounds(1024) == [2100, 4200, 6300, 8400, 10_000]


def test_each_sample_stops_where_the_criterion_first_holds(auto, planted_model):
    result, _ = auto
    rounds = auto_rounds(planted_model.n_layers * planted_model.n_heads)
    masks = result.masks.reshape(AUTO_MAX_MASKS, -1)
    assert len(result.masks) == AUTO_MAX_MASKS
    for i, n_used in enumerate(result.n_masks_used):
        assert n_used in rounds
        y = result.y[i]
        assert np.isfinite(y[:n_used]).all() and np.isnan(y[n_used:]).all()
        stop = rounds.index(n_used)
        # Recomputed here from the normalized logits of the rounds (prefixes of one sequence).
        fits = [fit(masks[:n], y[:n], seed=0) for n in rounds[: stop + 1]]

        def stable(a, b) -> bool:
            k = AUTO_TOP_K if AUTO_TOP_K < len(a.coef) else len(a.coef)
            tops = [set(np.argsort(-f.coef, kind="stable")[:k]) for f in (a, b)]
            return abs(a.r2 - b.r2) <= AUTO_R2_TOL and tops[0] == tops[1]

        assert all(not stable(a, b) for a, b in zip(fits[:-2], fits[1:-1], strict=True))
        assert n_used == AUTO_MAX_MASKS or stable(fits[-2], fits[-1])
        np.testing.assert_array_equal(result.fits[i].coef, fits[-1].coef)


def test_auto_equals_a_fixed_run_of_the_masks_it_used(auto, planted_model, planted_samples):
    result, _ = auto
    n = int(result.n_masks_used[0])
    # The auto run's baseline: the mean over all its samples' images.
    images = [image for image, _ in planted_samples]
    fixed = head_attribution(
        planted_model, planted_samples[:1], n_masks=n, reference=images, **FAST
    )
    np.testing.assert_array_equal(fixed.y[0], result.y[0, :n])
    np.testing.assert_array_equal(fixed.coef[0], result.coef[0])
    assert fixed.r2[0] == result.r2[0]


def test_auto_resumes_saves_and_reports_masks_used(auto, planted_model, planted_samples, tmp_path):
    result, store = auto
    assert stored_samples(store) == len(planted_samples)
    again = head_attribution(
        planted_model, planted_samples, n_masks="auto", store_dir=store, **FAST
    )
    np.testing.assert_array_equal(again.n_masks_used, result.n_masks_used)
    np.testing.assert_array_equal(again.coef, result.coef)
    loaded = HeadAttributionResult.load(result.save(tmp_path / "auto.safetensors"))
    np.testing.assert_array_equal(loaded.n_masks_used, result.n_masks_used)
    np.testing.assert_array_equal(loaded.coef, result.coef)
    for a, b in zip(loaded.fits, result.fits, strict=True):
        assert (a.n_train, a.n_test) == (b.n_train, b.n_test)
        np.testing.assert_array_equal(a.y_test, b.y_test)
    write_report(loaded, tmp_path / "report")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert [s["n_masks_used"] for s in summary["samples"]] == result.n_masks_used.tolist()
    assert summary["config"]["n_masks"] == "auto"
