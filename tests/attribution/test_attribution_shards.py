import os

import numpy as np
import pytest
import safetensors.numpy

from attribution import (
    collect,
    fit,
    load_results,
    merge_shards,
    resolve_shard,
    sample_masks,
    save_results,
    shard_indices,
)

SHARD_ENV = [
    "RANK",
    "WORLD_SIZE",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
]


@pytest.fixture
def env(monkeypatch):
    for name in SHARD_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_resolve_shard_defaults_and_arguments(env):
    assert resolve_shard() == (0, 1)
    assert resolve_shard(2, 3) == (2, 3)
    env.setenv("RANK", "1")
    env.setenv("WORLD_SIZE", "4")
    assert resolve_shard(0, 2) == (0, 2)  # explicit arguments win over the environment


def test_resolve_shard_torchrun(env):
    env.setenv("RANK", "3")
    env.setenv("WORLD_SIZE", "4")
    env.setenv("SLURM_ARRAY_TASK_ID", "0")  # torchrun's variables take precedence
    env.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert resolve_shard() == (3, 4)


def test_resolve_shard_slurm_array(env):
    env.setenv("SLURM_ARRAY_TASK_COUNT", "4")  # --array=0-3
    env.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert resolve_shard() == (2, 4)
    env.setenv("SLURM_ARRAY_TASK_MIN", "3")  # --array=3-6
    env.setenv("SLURM_ARRAY_TASK_ID", "5")
    assert resolve_shard() == (2, 4)
    env.setenv("SLURM_ARRAY_TASK_MIN", "1")  # --array=1-7:2
    env.setenv("SLURM_ARRAY_TASK_STEP", "2")
    env.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert resolve_shard() == (3, 4)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"RANK": "4", "WORLD_SIZE": "4"}, "invalid shard 4 of 4"),
        ({"RANK": "x", "WORLD_SIZE": "4"}, "RANK='x' is not an integer"),
        ({"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT is not"),
        ({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3"}, "contiguous"),
    ],
)
def test_resolve_shard_rejects_bad_environment(env, variables, message):
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        resolve_shard()


def test_resolve_shard_rejects_half_arguments(env):
    with pytest.raises(ValueError, match="both shard and n_shards"):
        resolve_shard(shard=1)
    with pytest.raises(ValueError, match="invalid shard 2 of 2"):
        resolve_shard(2, 2)


@pytest.mark.parametrize(("n_items", "n_shards"), [(10, 3), (3, 5), (0, 2), (7, 1)])
def test_shard_indices_partition_into_balanced_blocks(env, n_items, n_shards):
    blocks = [shard_indices(n_items, i, n_shards) for i in range(n_shards)]
    assert sum(blocks, []) == list(range(n_items))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_shard_indices_reads_environment(env):
    env.setenv("RANK", "1")
    env.setenv("WORLD_SIZE", "3")
    assert shard_indices(10) == [4, 5, 6]


N_SAMPLES, N_COMPONENTS = 5, 8
META = {"p_ablate": 0.75, "n_masks": 100}


def run_shard(path, shard, n_shards):
    """The per-sample pipeline: a different planted function per sample."""
    samples = shard_indices(N_SAMPLES, shard, n_shards)
    masks = sample_masks(100, N_COMPONENTS, seed=0)
    coefs, r2s = [], []
    for s in samples:
        w = np.random.default_rng(s).normal(size=N_COMPONENTS)
        y = collect(lambda m, w=w: m @ w, masks, batch_size=32, progress=False)
        result = fit(masks, y)
        coefs.append(result.coef)
        r2s.append(result.r2)
    coef = np.array(coefs).reshape(len(samples), N_COMPONENTS)
    save_results(path, samples, {"coef": coef, "r2": np.array(r2s)}, META)
    return path


def test_merge_of_two_shards_equals_single_run(env, tmp_path):
    single = load_results(run_shard(tmp_path / "all.safetensors", 0, 1))
    (tmp_path / "shards").mkdir()
    # File names sort in the opposite order of the shards: merge must sort by sample id.
    run_shard(tmp_path / "shards" / "a.safetensors", 1, 2)
    run_shard(tmp_path / "shards" / "b.safetensors", 0, 2)
    merged = merge_shards([tmp_path / "shards"])
    np.testing.assert_array_equal(merged.sample, np.arange(N_SAMPLES))
    assert merged.arrays.keys() == single.arrays.keys() == {"coef", "r2"}
    for name in single.arrays:
        np.testing.assert_array_equal(merged.arrays[name], single.arrays[name])
    assert merged.meta == single.meta == META


def test_save_load_round_trip(tmp_path):
    arrays = {"coef": np.arange(6.0).reshape(3, 2), "correct": np.array([True, False, True])}
    path = save_results(tmp_path / "r.safetensors", [7, 3, 5], arrays, {"model": "tiny"})
    loaded = load_results(path)
    np.testing.assert_array_equal(loaded.sample, [7, 3, 5])
    for name, value in arrays.items():
        np.testing.assert_array_equal(loaded.arrays[name], value)
        assert loaded.arrays[name].dtype == value.dtype
    assert loaded.meta == {"model": "tiny"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_empty_shard_round_trips_and_merges(tmp_path):
    save_results(tmp_path / "a.safetensors", [], {"coef": np.zeros((0, 2))})
    save_results(tmp_path / "b.safetensors", [1], {"coef": np.ones((1, 2))})
    merged = merge_shards([tmp_path])
    np.testing.assert_array_equal(merged.sample, [1])
    np.testing.assert_array_equal(merged.arrays["coef"], np.ones((1, 2)))


@pytest.mark.parametrize(
    ("sample", "arrays", "message"),
    [
        ([1, 1], {"coef": np.zeros((2, 2))}, "distinct"),
        ([0, 1], {"coef": np.zeros((3, 2))}, "expected 2 rows"),
        ([0, 1], {"sample": np.zeros(2)}, "reserved"),
        ([0.5, 1], {}, "integer ids"),
    ],
)
def test_save_results_rejects_bad_input(tmp_path, sample, arrays, message):
    with pytest.raises(ValueError, match=message):
        save_results(tmp_path / "r.safetensors", sample, arrays)


def test_merge_rejects_overlapping_samples(tmp_path):
    a = save_results(tmp_path / "a.safetensors", [0, 1, 2], {"coef": np.zeros((3, 2))})
    b = save_results(tmp_path / "b.safetensors", [2, 3], {"coef": np.zeros((2, 2))})
    with pytest.raises(
        ValueError, match=r"1 sample ids appear in more than one shard \(first: \[2\]\)"
    ):
        merge_shards([a, b])
    with pytest.raises(ValueError, match="more than one shard"):
        merge_shards([a, a])


@pytest.mark.parametrize(
    ("other_arrays", "other_meta", "message"),
    [
        (
            {"coef": np.zeros((1, 2))},
            {"seed": 1},
            r"different configurations \(meta differs in \['seed'\]\)",
        ),
        ({"weights": np.zeros((1, 2))}, {"seed": 0}, "has arrays"),
        ({"coef": np.zeros((1, 3))}, {"seed": 0}, "rows of shape"),
        ({"coef": np.zeros((1, 2), np.float32)}, {"seed": 0}, "float32"),
    ],
    ids=["meta", "names", "shape", "dtype"],
)
def test_merge_rejects_inconsistent_shards(tmp_path, other_arrays, other_meta, message):
    a = save_results(tmp_path / "a.safetensors", [0], {"coef": np.zeros((1, 2))}, {"seed": 0})
    b = save_results(tmp_path / "b.safetensors", [1], other_arrays, other_meta)
    with pytest.raises(ValueError, match=message):
        merge_shards([a, b])


def test_merge_rejects_empty_input(tmp_path):
    with pytest.raises(ValueError, match=r"no \*\.safetensors results files"):
        merge_shards([tmp_path])
    with pytest.raises(ValueError, match="at least one"):
        merge_shards([])


def test_load_rejects_other_safetensors_files(tmp_path):
    safetensors.numpy.save_file({"sample": np.zeros(1)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="not an attribution results file"):
        load_results(tmp_path / "x.safetensors")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_results_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = save_results(tmp_path / "r.safetensors", [0], {"x": np.zeros(1)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
