"""Same seed, same everything; shards merge into the single run; stores resume it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attribution.store import OUTPUTS_NAME
from tl_lvlm.analysis.heads import HeadAttributionResult, head_attribution, stored_samples

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
    assert stores == ["run.json", "sample-000000", "sample-000001"]
    assert stored_samples(tmp_path) == 2
    assert_same(first, single)
    outputs = tmp_path / "sample-000001" / OUTPUTS_NAME
    stored = np.fromfile(outputs)
    gap = first.clean_logit[1] - first.ablated_logit[1]
    np.testing.assert_allclose(stored, first.y[1] * gap + first.ablated_logit[1], rtol=1e-12)
    # A rerun loads the stored logits instead of recomputing them: poison them to see it.
    (stored + 1.0).tofile(outputs)
    resumed = head_attribution(planted_model, samples, store_dir=tmp_path, **SETTINGS)
    row = 1
    gap = resumed.clean_logit[row] - resumed.ablated_logit[row]
    np.testing.assert_allclose(resumed.y[row] - single.y[row], 1.0 / gap)


def test_store_refuses_another_configuration_before_writing(planted_model, samples, tmp_path):
    head_attribution(planted_model, samples, store_dir=tmp_path, **SETTINGS)
    before = snapshot(tmp_path)
    # Another seed draws other masks: the store refuses to mix them, and changes nothing.
    with pytest.raises(ValueError, match=r"another configuration \(seed: stored 0, now 1\)"):
        head_attribution(planted_model, samples, store_dir=tmp_path, seed=1, **SETTINGS)
    assert snapshot(tmp_path) == before


def test_more_masks_extend_the_store(planted_model, samples, single, tmp_path):
    head_attribution(planted_model, samples, store_dir=tmp_path, **{**SETTINGS, "n_masks": 30})
    longer = head_attribution(planted_model, samples, store_dir=tmp_path, **SETTINGS)
    assert_same(longer, single)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }
