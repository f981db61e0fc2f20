"""Same seed, same everything; shards merge into the single run; stores resume it."""

from __future__ import annotations

import numpy as np
import pytest

from tl_lvlm.head_attribution import HeadAttributionResult, head_attribution

pytest_plugins = ["planted_llava"]

SETTINGS = dict(n_masks=60, progress=False)


def assert_same(a: HeadAttributionResult, b: HeadAttributionResult) -> None:
    np.testing.assert_array_equal(a.sample_ids, b.sample_ids)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.coef, b.coef)
    np.testing.assert_array_equal(a.r2, b.r2)
    assert a.excluded == b.excluded
    assert a.config == b.config
    assert a.scores.keys() == b.scores.keys()
    for name in a.scores:
        np.testing.assert_array_equal(a.scores[name], b.scores[name])
    for kind in ("faithfulness", "completeness"):
        for name, values in getattr(a.evaluation, kind).items():
            np.testing.assert_array_equal(values, getattr(b.evaluation, kind)[name])


@pytest.fixture(scope="module")
def samples(planted_samples):
    # Samples 2 and 3 get a label the model does not answer: exclusions take part, and
    # the second of two shards keeps no sample at all.
    (a, _), (b, _), (c, q), (d, _) = planted_samples
    return [(a, q), (b, q), (c, q, 7), (d, q, 7)]


@pytest.fixture(scope="module")
def single(planted_model, samples):
    return head_attribution(planted_model, samples, **SETTINGS)


def test_same_seed_same_masks_outputs_and_coefficients(planted_model, samples, single):
    assert [e.sample_id for e in single.excluded] == [2, 3]
    assert_same(single, head_attribution(planted_model, samples, **SETTINGS))
    other = head_attribution(planted_model, samples, seed=1, **SETTINGS)
    assert not np.array_equal(other.masks, single.masks)
    assert not np.array_equal(other.coef, single.coef)


def test_two_shards_merge_into_the_single_run(planted_model, samples, single, tmp_path):
    paths = []
    for shard in range(2):
        part = head_attribution(planted_model, samples, shard=shard, n_shards=2, **SETTINGS)
        ids = sorted([*part.sample_ids, *(e.sample_id for e in part.excluded)])
        assert ids == [[0, 1], [2, 3]][shard]
        assert len(part.fits) == [2, 0][shard]
        paths.append(part.save(tmp_path / f"shard-{shard}.safetensors"))
    merged = HeadAttributionResult.merge(paths)
    assert_same(merged, single)
    # The merged file holds what the single run saves.
    assert_same(merged, HeadAttributionResult.load(single.save(tmp_path / "single.safetensors")))
    assert merged.heads_needed() == single.heads_needed()


def test_store_resumes_to_the_same_result(planted_model, samples, single, tmp_path):
    first = head_attribution(planted_model, samples, store_dir=tmp_path, **SETTINGS)
    stores = sorted(p.name for p in tmp_path.iterdir())
    # One store per kept sample; wrongly answered ones never run their masks.
    assert stores == ["sample-000000", "sample-000001"]
    assert_same(first, single)
    chunk = tmp_path / "sample-000001" / "chunk-000000.npy"
    stored = np.load(chunk)
    # A rerun loads the stored logits instead of recomputing them: poison one to see it.
    np.save(chunk, stored + 1.0)
    resumed = head_attribution(planted_model, samples, store_dir=tmp_path, **SETTINGS)
    row = 1
    gap = resumed.clean_logit[row] - resumed.ablated_logit[row]
    np.testing.assert_allclose(resumed.y[row] - single.y[row], 1.0 / gap)
    # Another seed draws other masks: the store refuses to mix them.
    with pytest.raises(ValueError, match="different configuration"):
        head_attribution(planted_model, samples, store_dir=tmp_path, seed=1, **SETTINGS)
