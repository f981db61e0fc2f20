import json
import os
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
from attribution.store import OUTPUTS_NAME, STATE_NAME, OutputStore, read_state

N_MASKS, N_COMPONENTS, BATCH = 400, 12, 10
N_CHUNKS = N_MASKS // BATCH
# Halves: every sum of them is exact, so outputs do not depend on how masks are batched.
W = np.arange(N_COMPONENTS) - 5.5

# The same deterministic fn in a child process, slowed down so it can be killed mid-run.
CHILD = textwrap.dedent(
    f"""
    import sys, time
    import numpy as np
    from attribution import collect, sample_masks

    def fn(m):
        time.sleep(float(sys.argv[2]))
        return m @ (np.arange({N_COMPONENTS}) - 5.5)

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


def stored_rows(store: Path) -> int:
    """Rows the store claims (0 before its state file exists)."""
    state = read_state(store)
    return 0 if state is None else state["rows"]


def start_child(store: Path, sleep: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(store), str(sleep)])


def wait_for_rows(store: Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while stored_rows(store) < n:
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
    assert stored_rows(tmp_path) == 20
    assert (tmp_path / OUTPUTS_NAME).stat().st_size == 20 * 8


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


def test_store_keeps_two_files_and_reuses_them(tmp_path):
    store = tmp_path / "run"
    first = collect(fn, masks(), batch_size=BATCH, store=store, meta={"x": (1, 2)}, progress=False)
    # Two files however many batches: the outputs and the state with the index of chunks.
    assert sorted(p.name for p in store.iterdir()) == [OUTPUTS_NAME, STATE_NAME]
    np.testing.assert_array_equal(np.fromfile(store / OUTPUTS_NAME), first)
    state = read_state(store)
    assert state["rows"] == N_MASKS and len(state["prefixes"]) == N_CHUNKS
    f = CountingFn()
    # Another batch size reads the same rows: chunking is not part of the configuration.
    again = collect(f, masks(), batch_size=7, store=store, meta={"x": [1, 2]}, progress=False)
    assert f.batches == []  # everything came from the store
    np.testing.assert_array_equal(again, first)


def test_longer_run_extends_and_shorter_run_reads_a_prefix(tmp_path):
    long = sample_masks(N_MASKS + 55, N_COMPONENTS, seed=0)
    assert np.array_equal(long[:N_MASKS], masks())  # same seed: a prefix of one sequence
    collect(fn, masks(), batch_size=BATCH, store=tmp_path, progress=False)
    f = CountingFn()
    y = collect(f, long, batch_size=BATCH, store=tmp_path, progress=False)
    np.testing.assert_array_equal(y, long @ W)
    np.testing.assert_array_equal(np.concatenate(f.batches), long[N_MASKS:])
    assert stored_rows(tmp_path) == N_MASKS + 55
    # 95 masks end inside the stored chunk [90, 100): its 5 rows are recomputed, not written.
    f = CountingFn()
    y = collect(f, long[:95], batch_size=BATCH, store=tmp_path, progress=False)
    np.testing.assert_array_equal(y, long[:95] @ W)
    np.testing.assert_array_equal(np.concatenate(f.batches), long[90:95])
    assert stored_rows(tmp_path) == N_MASKS + 55


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    expected = collect(fn, masks(), batch_size=BATCH, progress=False)
    store = tmp_path / "store"
    proc = start_child(store, sleep=0.03)
    wait_for_rows(store, 5 * BATCH, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = stored_rows(store)
    assert 5 * BATCH <= done < N_MASKS

    f = CountingFn()
    y = collect(f, masks(), batch_size=BATCH, store=store, meta={"sample": 0}, progress=False)
    np.testing.assert_array_equal(y, expected)
    # Exactly the missing rows were recomputed: nothing lost, nothing done twice.
    np.testing.assert_array_equal(np.concatenate(f.batches), masks()[done:])
    assert stored_rows(store) == N_MASKS


def test_resume_after_repeated_kills_at_random_times(tmp_path):
    expected = collect(fn, masks(), batch_size=BATCH, progress=False)
    store = tmp_path / "store"
    rng = random.Random(0)
    for _ in range(3):
        # A short sleep per batch: the kill lands anywhere in the compute/write/rename cycle.
        proc = start_child(store, sleep=0.002)
        wait_for_rows(store, stored_rows(store) + 3 * BATCH, proc)
        time.sleep(rng.uniform(0.0, 0.01))
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert stored_rows(store) < N_MASKS
    y = collect(fn, masks(), batch_size=BATCH, store=store, meta={"sample": 0}, progress=False)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"masks": sample_masks(N_MASKS, N_COMPONENTS, seed=1)}, "outputs of other masks"),
        ({"masks": sample_masks(N_MASKS, N_COMPONENTS + 1, seed=0)}, "different.*n_components"),
        ({"meta": {"sample": 1}}, "different configuration.*meta"),
    ],
    ids=["masks", "n_components", "meta"],
)
def test_store_with_other_configuration_raises_and_writes_nothing(tmp_path, change, match):
    kwargs = {"masks": masks(), "batch_size": BATCH, "meta": {"sample": 0}}
    collect(fn, store=tmp_path, progress=False, **kwargs)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=f"{match}.*new store directory"):
        collect(fn, store=tmp_path, progress=False, **{**kwargs, **change})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_store_rejects_foreign_directory(tmp_path):
    np.save(tmp_path / "chunk-000000.npy", np.zeros(BATCH))  # e.g. a store of the old layout
    with pytest.raises(ValueError, match=f"chunk-000000.npy, ...\\) but no {STATE_NAME}"):
        collect(fn, masks(), batch_size=BATCH, store=tmp_path, progress=False)


def test_store_rejects_damaged_outputs(tmp_path):
    collect(fn, masks(), batch_size=BATCH, store=tmp_path, progress=False)
    os.truncate(tmp_path / OUTPUTS_NAME, 8 * (N_MASKS - 3))
    with pytest.raises(ValueError, match=f"holds {N_MASKS - 3} rows but store.json claims"):
        collect(fn, masks(), batch_size=BATCH, store=tmp_path, progress=False)


def test_mark_complete_is_recorded(tmp_path):
    collect(fn, masks(), batch_size=BATCH, store=tmp_path, meta={"a": 1}, progress=False)
    store = OutputStore.open(tmp_path, N_COMPONENTS, {"a": 1})
    assert store.complete is None
    store.mark_complete(300)
    assert json.loads((tmp_path / STATE_NAME).read_text())["complete"] == 300
    with pytest.raises(ValueError, match="cannot mark 401 rows complete"):
        store.mark_complete(N_MASKS + 1)


def test_store_files_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        collect(fn, masks(), batch_size=BATCH, store=tmp_path / "s", progress=False)
    finally:
        os.umask(old)
    for name in (STATE_NAME, OUTPUTS_NAME):
        assert (tmp_path / "s" / name).stat().st_mode & 0o777 == 0o640


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
