"""The baseline policy, progress callbacks, auto batch size and file modes of a run."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from tl_lvlm.ablation import MIN_MEAN_IMAGES, image_kv_baseline, resolve_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.analysis.heads import head_attribution
from tl_lvlm.analysis.image_tokens import image_token_attribution
from tl_lvlm.cli.report import write_report
from tl_lvlm.testing import random_images

pytest_plugins = ["planted_llava"]

FAST = dict(n_masks=40, evaluate=False, progress=False)
FEW = "the mean baseline is computed over only"


def test_mean_over_reference_images_is_their_image_kv_mean(planted_model, planted_samples):
    inputs = planted_model.prepare([planted_samples[0][0]], planted_samples[0][1])
    images = random_images(MIN_MEAN_IMAGES, 28, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 16 images: no warning
        got = resolve_baseline(planted_model, "mean", images, inputs)
    want = image_kv_baseline(planted_model, planted_model.prepare(images, planted_samples[0][1]))
    torch.testing.assert_close(got.k, want.k, rtol=0, atol=0)
    torch.testing.assert_close(got.v, want.v, rtol=0, atol=0)
    assert got.n_samples == MIN_MEAN_IMAGES


def test_few_reference_images_warn_with_count_and_fix(planted_model, planted_samples):
    inputs = planted_model.prepare([im for im, _ in planted_samples[:3]], planted_samples[0][1])
    with pytest.warns(UserWarning, match=f"{FEW} 3 images .*pass reference images"):
        resolve_baseline(planted_model, "mean", None, inputs)
    with pytest.warns(UserWarning, match="--reference-images"):
        head_attribution(planted_model, planted_samples[:3], **FAST)


def test_a_mean_over_the_one_sample_is_refused(planted_model, planted_samples):
    # Its own mean is the image itself: every ablation would be a no-op.
    for run in (
        lambda: head_attribution(planted_model, planted_samples[:1], **FAST),
        lambda: image_token_attribution(
            planted_model, planted_model.prepare(*planted_samples[0]), n_masks=20
        ),
    ):
        with pytest.raises(ValueError, match="a mean over 1 image is that image itself"):
            run()
    zero = resolve_baseline(planted_model, "zero", None, planted_model.prepare(*planted_samples[0]))
    assert zero.kind == "zero" and not zero.k.any()


def test_prebuilt_baseline_and_reference_together_are_refused(planted_model, planted_samples):
    inputs = planted_model.prepare(*planted_samples[0])
    given = image_kv_baseline(planted_model, inputs, kind="zero")
    assert resolve_baseline(planted_model, given, None, inputs) is given
    with pytest.raises(ValueError, match="pass one of them"):
        head_attribution(planted_model, planted_samples[:2], baseline=given, reference=[1], **FAST)


@pytest.mark.filterwarnings(f"ignore:{FEW}")
def test_head_attribution_uses_the_resolved_baseline(planted_model, planted_samples):
    images = [im for im, _ in planted_samples]
    default = head_attribution(planted_model, planted_samples[:2], reference=images, **FAST)
    inputs = planted_model.prepare(images[:1], planted_samples[0][1])
    resolved = resolve_baseline(planted_model, "mean", images, inputs)
    given = head_attribution(planted_model, planted_samples[:2], baseline=resolved, **FAST)
    np.testing.assert_array_equal(default.y, given.y)


@pytest.mark.filterwarnings(f"ignore:{FEW}")
def test_small_gap_says_what_to_do(planted_model, planted_samples):
    result = head_attribution(planted_model, planted_samples[:2], min_logit_gap=1e6, **FAST)
    text = result.excluded[0].describe()
    for fix in ("pass reference images", "baseline='zero'", "lower min_logit_gap"):
        assert fix in text


@pytest.mark.filterwarnings(f"ignore:{FEW}")
def test_on_sample_done_counts_every_sample_of_the_shard(planted_model, planted_samples):
    calls = []
    samples = [*planted_samples[:3], (planted_samples[3][0], planted_samples[3][1], 7)]
    result = head_attribution(
        planted_model, samples, shard=1, n_shards=2, on_sample_done=lambda *a: calls.append(a),
        **FAST,
    )  # fmt: skip
    assert len(result.fits) + len(result.excluded) == 2  # one kept, one wrong answer
    assert calls == [(1, 2), (2, 2)]


@pytest.mark.filterwarnings(f"ignore:{FEW}")
def test_batch_size_none_is_the_engines_auto_batch_size(
    planted_model, planted_samples, monkeypatch
):
    sizes = []
    run = AblationEngine.run

    def spy(self, masks, batch_size=None, **kwargs):
        sizes.append(batch_size)
        return run(self, masks, batch_size, **kwargs)

    monkeypatch.setattr(AblationEngine, "auto_batch_size", lambda self, max_batch=None: 7)
    monkeypatch.setattr(AblationEngine, "run", spy)
    auto = head_attribution(planted_model, planted_samples[:2], **FAST)
    assert set(sizes) == {7}
    monkeypatch.setattr(AblationEngine, "run", run)
    fixed = head_attribution(planted_model, planted_samples[:2], batch_size=64, **FAST)
    np.testing.assert_allclose(auto.y, fixed.y, atol=1e-5)


@pytest.mark.filterwarnings(f"ignore:{FEW}")
def test_results_report_and_store_files_respect_the_umask(planted_model, planted_samples, tmp_path):
    old = os.umask(0o027)
    try:
        result = head_attribution(planted_model, planted_samples[:2], store_dir=tmp_path / "store",
                                  **FAST)  # fmt: skip
        result.save(tmp_path / "results.safetensors")
        write_report(result, tmp_path / "report")
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 8
    assert {p.stat().st_mode & 0o777 for p in files} == {0o640}
