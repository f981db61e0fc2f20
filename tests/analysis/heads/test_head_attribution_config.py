"""``HeadAttributionConfig``: frozen, validated when built, serialised with ``asdict``, and the
one list of settings behind the store keys, the CLI's rerun check and the report."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tl_lvlm import HeadAttributionConfig
from tl_lvlm.analysis.heads import STORE_KEYS, RegressionConfig


def test_defaults_are_the_papers():
    cfg = HeadAttributionConfig()
    assert (cfg.n_masks, cfg.p_ablate, cfg.alpha, cfg.l1_ratio) == (10_000, 0.75, 0.0005, 0.5)
    assert cfg.scope == "text" and cfg.method == "regression"


def test_frozen_and_round_trips_through_asdict_and_json():
    cfg = HeadAttributionConfig(n_masks="auto", compare_with=["random"], ks=[1, 2])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_masks = 5  # type: ignore[misc]
    assert cfg.compare_with == ("random",) and cfg.ks == (1, 2)
    again = HeadAttributionConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"p_ablate": 1.0}, r"p_ablate must be in \(0, 1\)"),
        ({"n_masks": 50.0}, "n_masks must be a positive integer or 'auto'"),
        ({"n_masks": "some"}, "n_masks must be a positive integer or 'auto'"),
        ({"scope": "image"}, "unknown scope 'image'"),
        ({"method": "saliency"}, "unknown method 'saliency'"),
        ({"method": "gradient", "scope": "all"}, "scope='text'"),
        ({"n_gradient_masks": 0}, "n_gradient_masks must be a positive integer"),
        ({"compare_with": ["attention"]}, r"unknown rankings \['attention'\]"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"holdout": 1.0}, r"holdout must be in \[0, 1\)"),
        ({"ks": [[1]]}, "ks must be a non-empty 1-D"),
    ],
)
def test_validated_in_post_init(settings, match):
    with pytest.raises(ValueError, match=match):
        HeadAttributionConfig(**settings)


def test_a_string_compare_with_is_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"compare_with=\('random',\)"):
        HeadAttributionConfig(compare_with="random")


def test_too_few_masks_for_the_heads_name_the_minimum():
    with pytest.raises(ValueError, match=r"at least 96 heads \+ 1 = 97"):
        RegressionConfig(n_masks=96).check_components(96)
    RegressionConfig(n_masks=97, holdout=0.0).check_components(96)


def test_store_and_result_keys_come_from_the_fields():
    assert set(STORE_KEYS) == {
        "model",
        "n_layers",
        "n_heads",
        "baseline",
        "p_ablate",
        "scope",
        "seed",
        "metric",
    }
    assert "batch_size" not in HeadAttributionConfig.result_keys()  # speed, not results
    assert {"n_masks", "compare_with", "method"} <= set(HeadAttributionConfig.result_keys())


def test_build_replaces_fields_of_a_given_config():
    base = HeadAttributionConfig(n_masks=400, seed=3)
    cfg = HeadAttributionConfig.build(base, p_ablate=0.5)
    assert (cfg.n_masks, cfg.seed, cfg.p_ablate) == (400, 3, 0.5)
    assert base.p_ablate == 0.75
