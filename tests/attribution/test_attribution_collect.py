import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from attribution import collect, sample_masks

N_MASKS, N_COMPONENTS, BATCH = 400, 12, 10
N_CHUNKS = N_MASKS // BATCH
W = np.linspace(-1.0, 1.0, N_COMPONENTS)

# The same deterministic fn in a child process, slowed down so it can be killed mid-run.
CHILD = textwrap.dedent(
    f"""
    import sys, time
    import numpy as np
    from attribution import collect, sample_masks

    def fn(m):
        time.sleep(float(sys.argv[2]))
        return m @ np.linspace(-1.0, 1.0, {N_COMPONENTS})

    masks = sample_masks({N_MASKS}, {N_COMPONENTS}, seed=0)
    collect(fn, masks, batch_size={BATCH}, store=sys.argv[1], meta={{"sample": 0}}, progress=False)
    """
)


def fn(masks):
    return masks @ W


class CountingFn:
    """fn that records the batches it was called with."""

    def __init__(self):
        self.batches = []

    def __call__(self, masks):
        self.batches.append(masks.copy())
        return fn(masks)


def masks():
    return sample_masks(N_MASKS, N_COMPONENTS, seed=0)


def chunk_files(store: Path) -> list[Path]:
    return sorted(store.glob("chunk-*.npy"))


def start_child(store: Path, sleep: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(store), str(sleep)])


def wait_for_chunks(store: Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while len(chunk_files(store)) < n:
        assert proc.poll() is None, "child exited before it was killed"
        assert time.monotonic() < deadline, "child made no progress"
        time.sleep(0.005)


def test_collect_in_memory_batches_in_order():
    f = CountingFn()
    m = masks()
    y = collect(f, m, batch_size=64, progress=False)
    np.testing.assert_array_equal(y, m @ W)
    assert y.dtype == np.float64
    assert [len(b) for b in f.batches] == [64] * 6 + [16]
    np.testing.assert_array_equal(np.concatenate(f.batches), m)


def test_collect_multi_output_and_torch_tensors():
    torch = pytest.importorskip("torch")
    m = masks()

    def torch_fn(batch):
        x = torch.tensor(batch, dtype=torch.float32, requires_grad=True)
        return torch.stack([x.sum(1), -x.sum(1)], dim=1)  # needs .detach() to convert

    y = collect(torch_fn, m, batch_size=50, progress=False)
    assert y.shape == (N_MASKS, 2)
    np.testing.assert_array_equal(y[:, 0], m.sum(1))
    np.testing.assert_array_equal(y[:, 1], -m.sum(1))
    half = collect(lambda b: torch.tensor(b @ W, dtype=torch.bfloat16), m, batch_size=50)
    np.testing.assert_allclose(half, m @ W, rtol=1e-2, atol=1e-2)


def test_collect_rejects_nan_naming_the_batch(tmp_path):
    def bad(batch):
        out = fn(batch)
        if len(out) == BATCH and np.array_equal(batch, masks()[20:30]):
            out[3] = np.nan
        return out

    with pytest.raises(
        ValueError, match=r"NaN/inf for masks \[20, 30\); first bad mask rows: \[23\]"
    ):
        collect(bad, masks(), batch_size=BATCH, store=tmp_path, progress=False)
    # The batches before the bad one are kept, the bad one never reaches the store.
    assert [p.name for p in chunk_files(tmp_path)] == ["chunk-000000.npy", "chunk-000001.npy"]


@pytest.mark.parametrize(
    "bad_fn",
    [lambda b: fn(b)[:-1], lambda b: fn(b)[:, None, None], lambda b: float(fn(b).sum())],
    ids=["short", "3-d", "scalar"],
)
def test_collect_rejects_wrong_output_shape(bad_fn):
    with pytest.raises(ValueError, match=r"fn must return \[10\] or \[10, k\] outputs"):
        collect(bad_fn, masks(), batch_size=BATCH, progress=False)


def test_collect_rejects_shape_changing_between_batches():
    calls = []

    def changing(batch):
        calls.append(1)
        return np.ones((len(batch), len(calls)))

    with pytest.raises(
        ValueError, match=r"returned shape \(10, 2\) for masks \[10, 20\), but \[b, 1\]"
    ):
        collect(changing, masks(), batch_size=BATCH, progress=False)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_collect_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        collect(fn, masks(), batch_size=batch_size, progress=False)


def test_store_writes_config_and_chunks_and_reuses_them(tmp_path):
    store = tmp_path / "run"
    first = collect(fn, masks(), batch_size=BATCH, store=store, meta={"x": (1, 2)}, progress=False)
    assert (store / "config.json").exists()
    assert len(chunk_files(store)) == N_CHUNKS
    f = CountingFn()
    again = collect(f, masks(), batch_size=BATCH, store=store, meta={"x": [1, 2]}, progress=False)
    assert f.batches == []  # everything came from the store
    np.testing.assert_array_equal(again, first)


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    expected = collect(fn, masks(), batch_size=BATCH, progress=False)
    store = tmp_path / "store"
    proc = start_child(store, sleep=0.03)
    wait_for_chunks(store, 5, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = {p.name for p in chunk_files(store)}
    assert 5 <= len(done) < N_CHUNKS

    f = CountingFn()
    y = collect(f, masks(), batch_size=BATCH, store=store, meta={"sample": 0}, progress=False)
    np.testing.assert_array_equal(y, expected)
    # Exactly the missing batches were recomputed: nothing lost, nothing done twice.
    recomputed = np.concatenate(f.batches)
    missing = [i for i in range(N_CHUNKS) if f"chunk-{i:06d}.npy" not in done]
    assert len(f.batches) == len(missing)
    np.testing.assert_array_equal(
        recomputed, np.concatenate([masks()[i * BATCH : (i + 1) * BATCH] for i in missing])
    )
    assert len(chunk_files(store)) == N_CHUNKS


def test_resume_after_repeated_kills_at_random_times(tmp_path):
    expected = collect(fn, masks(), batch_size=BATCH, progress=False)
    store = tmp_path / "store"
    rng = random.Random(0)
    for _ in range(3):
        # A short sleep per batch: the kill lands anywhere in the compute/write/rename cycle.
        proc = start_child(store, sleep=0.002)
        wait_for_chunks(store, len(chunk_files(store)) + 3, proc)
        time.sleep(rng.uniform(0.0, 0.01))
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(chunk_files(store)) < N_CHUNKS
    y = collect(fn, masks(), batch_size=BATCH, store=store, meta={"sample": 0}, progress=False)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"masks": sample_masks(N_MASKS, N_COMPONENTS, seed=1)}, "masks_sha256"),
        ({"masks": sample_masks(N_MASKS + 1, N_COMPONENTS, seed=0)}, "n_masks"),
        ({"batch_size": BATCH + 1}, "batch_size"),
        ({"meta": {"sample": 1}}, "meta"),
    ],
    ids=["masks", "n_masks", "batch_size", "meta"],
)
def test_store_with_other_configuration_raises(tmp_path, change, named):
    kwargs = {"masks": masks(), "batch_size": BATCH, "meta": {"sample": 0}}
    collect(fn, store=tmp_path, progress=False, **kwargs)
    with pytest.raises(ValueError, match=f"different configuration.*{named}.*new store directory"):
        collect(fn, store=tmp_path, progress=False, **{**kwargs, **change})


def test_store_rejects_foreign_directory_with_chunks(tmp_path):
    np.save(tmp_path / "chunk-000000.npy", np.zeros(BATCH))
    with pytest.raises(ValueError, match="no config.json"):
        collect(fn, masks(), batch_size=BATCH, store=tmp_path, progress=False)


def test_store_rejects_damaged_chunk(tmp_path):
    collect(fn, masks(), batch_size=BATCH, store=tmp_path, progress=False)
    np.save(tmp_path / "chunk-000003.npy", np.zeros(BATCH - 1))
    with pytest.raises(ValueError, match="chunk-000003.npy has shape"):
        collect(fn, masks(), batch_size=BATCH, store=tmp_path, progress=False)


def test_concurrent_runs_on_one_store_agree(tmp_path):
    expected = collect(fn, masks(), batch_size=BATCH, progress=False)
    procs = [start_child(tmp_path, sleep=0.002) for _ in range(2)]
    assert [p.wait() for p in procs] == [0, 0]
    f = CountingFn()
    y = collect(f, masks(), batch_size=BATCH, store=tmp_path, meta={"sample": 0}, progress=False)
    assert f.batches == []
    np.testing.assert_array_equal(y, expected)


def test_collect_accepts_numpy_integer_batch_size(tmp_path):
    y = collect(fn, masks(), batch_size=np.int64(64), store=tmp_path, progress=False)
    np.testing.assert_array_equal(y, masks() @ W)
