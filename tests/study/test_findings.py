"""Each finding function on constructed inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from tl_lvlm.flow import PAPER_EDGE_SETS, FlowSweep
from tl_lvlm.study import findings as f
from tl_lvlm.study.flow_timing import flow_timing, image_share
from tl_lvlm.study.layers import layer_distribution
from tl_lvlm.study.similarity import jaccard_matrix, pair_kinds

L, H = 6, 4


def planted(layers_heads, value=1.0, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    mean = noise * rng.standard_normal((L, H))
    for layer, head in layers_heads:
        mean[layer, head] = value
    return mean


def sweep(experiment, curves, clean=None, window=1):
    """A FlowSweep whose normalized curves are ``curves`` (name -> [n_windows]), 3 samples."""
    clean = np.full(3, 10.0) if clean is None else np.asarray(clean, float)
    names = list(PAPER_EDGE_SETS[experiment])
    knocked = {n: np.outer(np.asarray(curves[n], float), clean) for n in names}
    n_windows = len(next(iter(curves.values())))
    return FlowSweep(window, list(range(n_windows)), np.zeros(3, int), clean, knocked, {}, {})


def test_regression_explains_by_the_medians():
    yes = f.regression_explains([0.9, 0.95, 0.1], [0.95, 0.97, 0.2])
    assert yes.holds is True and yes.n == 3 and yes.finding == f.REGRESSION
    assert yes.statistic["median_r2"] == 0.9 and yes.summary.startswith("holds: median R² 0.900")
    no = f.regression_explains([0.9, 0.7, 0.1], [0.95, 0.97, 0.2])
    assert no.holds is False and no.summary.startswith("does not hold")
    empty = f.regression_explains([], [])
    assert empty.holds is None and empty.statistic["reason"] == "no sample was kept"


def test_fewer_heads_than_every_baseline():
    needed = {"head_attribution": 10, "single_head": 20, "random": None}
    assert f.fewer_heads(needed, 24, 5).holds is True
    assert f.fewer_heads({**needed, "single_head": 10}, 24, 5).holds is False
    # Not reached by anyone: ties at n_heads + 1, so not fewer.
    assert f.fewer_heads({"head_attribution": None, "random": None}, 24, 5).holds is False
    assert f.fewer_heads({"head_attribution": 3}, 24, 5).holds is None


def test_layer_distribution_counts_and_mid_to_late():
    late = [(5, h) for h in range(4)] + [(4, h) for h in range(2)] + [(0, h) for h in range(4)]
    mean = planted(late, noise=0.01)
    dist = layer_distribution(mean, np.stack([mean, mean]), k=10)
    assert dist["top_k_count_per_layer"] == [4, 0, 0, 0, 2, 4]
    assert dist["top_k_count_second_half"] == 6
    assert dist["per_sample_top_k_share_second_half_mean"] == pytest.approx(0.6)
    assert f.mid_to_late_layers(mean, k=10).holds is True
    early = planted([(layer, h) for layer in (0, 1) for h in range(4)] + [(5, 0), (5, 1)])
    finding = f.mid_to_late_layers(early, k=10)
    assert finding.holds is False and finding.statistic["top_k_count_second_half"] == 2
    assert finding.summary.startswith("does not hold: 2 of the top-10 heads are in layers 3-5")


def test_pair_kinds_and_jaccard_by_hand():
    kinds = pair_kinds(np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([0, 0, 1]))
    assert np.argwhere(kinds["same class, different style"]).tolist() == [[0, 1]]
    assert np.argwhere(kinds["same item, different style"]).tolist() == [[0, 1]]
    assert np.argwhere(kinds["different class, same style"]).tolist() == [[0, 2]]
    assert np.argwhere(kinds["different class, different style"]).tolist() == [[1, 2]]
    jac = jaccard_matrix(np.array([[3.0, 2, 1, 0], [0, 2, 3, 1]]), k=2)
    assert jac[0, 1] == pytest.approx(1 / 3)  # {0, 1} and {2, 1}


def test_semantics_follows_what_drives_the_maps():
    rng = np.random.default_rng(0)
    classes, styles = np.repeat(np.arange(4), 3), np.tile(np.arange(3), 4)
    class_vec, style_vec = rng.standard_normal((4, 20)), rng.standard_normal((3, 20))
    noise = 0.1 * rng.standard_normal((12, 20))
    by_class = f.semantics_over_appearance(class_vec[classes] + noise, classes, styles, seed=1)
    assert by_class.holds is True and by_class.statistic["p_value"] < 0.01
    by_style = f.semantics_over_appearance(style_vec[styles] + noise, classes, styles, seed=1)
    assert by_style.holds is False and by_style.statistic["difference"] < 0
    one_style = f.semantics_over_appearance(noise, classes, np.zeros(12))
    assert one_style.holds is None and "at least two styles" in one_style.statistic["reason"]


def test_flow_timing_known_answer():
    timing = flow_timing(np.array([0.5, 1.0, 0.75]), [0, 1, 2], window=2)
    # Effects 0.5 and 0.25 at window centres 0.5 and 2.5.
    assert timing["weighted_mean_layer"] == pytest.approx((0.5 * 0.5 + 0.25 * 2.5) / 0.75)
    assert (timing["first_layer_above"], timing["last_layer_above"]) == (0, 2)
    assert flow_timing(np.ones(3), [0, 1, 2], 1)["weighted_mean_layer"] is None


def test_text_before_image():
    flat = [1.0] * 4
    text = sweep(
        "text_flow", {"question -> role, final": [0.2, 1, 1, 1], "question -> question": flat}
    )
    image = sweep("image_flow", {"image read by role, final only": flat,
                                 "image read by question only": [1, 1, 0.3, 1],
                                 "image read by no text": [1, 1, 0.3, 1]})  # fmt: skip
    assert f.text_before_image(text, image).holds is True
    late_text = sweep("text_flow", {"question -> role, final": [1, 1, 1, 0.2],
                                    "question -> question": flat})  # fmt: skip
    assert f.text_before_image(late_text, image).holds is False
    no_question = sweep(
        "text_flow", {"question -> role, final": flat, "question -> question": flat}
    )
    finding = f.text_before_image(no_question, image)
    assert finding.holds is None and "does not need the question" in finding.statistic["reason"]


def test_only_role_final_read_image_from_the_image_share():
    # clean 10, no image 2: question blocked keeps 9.6 -> share 0.95; role/final blocked 2.8
    # -> share 0.1.
    curves = {"image read by role, final only": [0.96], "image read by question only": [0.28],
              "image read by no text": [0.2]}  # fmt: skip
    finding = f.only_role_final_read_image(sweep("image_flow", curves))
    assert finding.holds is True
    assert finding.statistic["image_share_kept_question_blocked"] == pytest.approx(0.95)
    assert finding.statistic["image_share_kept_role_final_blocked"] == pytest.approx(0.1)
    worse = {**curves, "image read by role, final only": [0.5]}
    assert f.only_role_final_read_image(sweep("image_flow", worse)).holds is False
    no_effect = {**curves, "image read by no text": [0.99]}  # gap 0.1 < MIN_IMAGE_GAP
    assert f.only_role_final_read_image(sweep("image_flow", no_effect)).holds is None
    windowed = sweep("image_flow", {k: v * 2 for k, v in curves.items()})
    with pytest.raises(ValueError, match="all layers at once"):
        f.only_role_final_read_image(windowed)
    shares = image_share(sweep("image_flow", curves), np.full(3, 2.0))
    np.testing.assert_allclose(shares["image read by no text"], 0.0, atol=1e-12)


def test_object_and_background():
    finding = f.object_and_background([0.3, 0.36, np.nan], [0.2, 0.22, 0.2])
    assert finding.holds is True and finding.n == 2
    assert finding.statistic["background_share"] == pytest.approx(0.67)
    assert f.object_and_background([0.9, 0.95], [0.2, 0.2]).holds is False
    assert f.object_and_background([0.05, 0.1], [0.2, 0.2]).holds is False
    assert f.object_and_background([], []).holds is None


def test_task_specific_disjoint_against_shared_heads():
    rng = np.random.default_rng(0)
    a = 0.05 * rng.standard_normal((12, L, H))
    b = 0.05 * rng.standard_normal((12, L, H))
    a.reshape(12, -1)[:, :5] += 1
    b.reshape(12, -1)[:, 10:15] += 1
    apart = f.task_specific(a, b, tasks=("x", "y"), k=5, n_permutations=500)
    assert apart.holds is True and apart.statistic["overlap"] == 0
    assert apart.statistic["permutation_p_pairs"] < 0.01
    same = f.task_specific(a, a + 0.05 * rng.standard_normal(a.shape), k=5, n_permutations=500)
    assert same.holds is False and same.statistic["overlap"] == 5
    assert f.task_specific(a[:1], b[:1]).holds is None


def test_seed_stability_overlaps():
    base = planted([(5, h) for h in range(4)] + [(4, h) for h in range(4)] + [(3, 0), (3, 1)])
    moved = planted([(0, h) for h in range(4)] + [(1, h) for h in range(4)] + [(3, 0), (3, 1)])
    stable = f.seed_stability({0: base, 1: base + 0.01, 2: base}, n=6)
    assert stable.holds is True and stable.statistic["mean_overlap"] == 10
    unstable = f.seed_stability({0: base, 1: moved, 2: base}, n=6)
    # Pairs share 2, 10 and 2 heads.
    assert unstable.statistic["mean_overlap"] == pytest.approx(14 / 3)
    assert unstable.holds is False
    assert f.seed_stability({0: base}, n=6).holds is None
