"""``AblationEngine.auto_batch_size``: its per-mask estimate against the measured peak memory.

The batch size is ``budget // _bytes_per_mask()``, so it fits when the peak memory a
batch allocates is at most ``batch * _bytes_per_mask()``. The peak is measured from
torch's allocation events: on CPU with ``torch.profiler`` (``profile_memory=True``
records every allocation and free; the running sum's maximum is the peak), on CUDA
with the allocator's peak statistics. The model has LLaVA-1.5's 576 image tokens and
grouped-query attention, so the attention terms have their real proportions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from tl_lvlm import HookedLVLM
from tl_lvlm.ablation import image_kv_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.testing import TEST_QUESTIONS, TinyLlavaConfig, random_images, save_tiny_llava

#: 24 x 24 = 576 image tokens; 8 query heads on 4 KV heads.
CONFIG = TinyLlavaConfig(
    n_layers=2, n_heads=8, n_kv_heads=4, d_model=128, d_mlp=256, image_size=48, patch_size=2
)
BATCH = 8
#: An estimate looser than this would leave most of the memory budget unused.
MAX_SLACK = 10.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return str(save_tiny_llava(tmp_path_factory.mktemp("batch") / "llava576", CONFIG))


@pytest.fixture(scope="module")
def load(checkpoint):
    """``load(device, dtype) -> HookedLVLM``, each loaded once."""
    models: dict[tuple[str, torch.dtype], HookedLVLM] = {}

    def get(device: str, dtype: torch.dtype) -> HookedLVLM:
        if (device, dtype) not in models:
            models[device, dtype] = HookedLVLM.from_pretrained(
                checkpoint, device=device, dtype=dtype
            )
        return models[device, dtype]

    return get


def _engine(model: HookedLVLM, scope: str) -> AblationEngine:
    size = model.image_size
    sample = model.prepare(random_images(1, size, seed=0), TEST_QUESTIONS[0])
    reference = model.prepare(random_images(3, size, seed=1), TEST_QUESTIONS[0])
    return AblationEngine(model, sample, image_kv_baseline(model, reference), scope=scope)


def _masks(engine: AblationEngine, n: int, per_position: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (n, engine.model.n_layers, engine.model.n_heads)
    return torch.rand(*shape, *((engine.n_image,) if per_position else ()), generator=g) > 0.5


def cpu_peak_bytes(fn) -> int:
    """Peak bytes torch allocates on the CPU while ``fn()`` runs, above what it held before."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type().name == "CPU"
    )
    assert events, "the profiler recorded no allocations"
    return int(np.cumsum([n for _, n in events]).max())


def _check_estimate(engine: AblationEngine, peak: int, batch: int, per_position: bool) -> None:
    estimate = engine._bytes_per_mask(eager=per_position)
    assert peak <= batch * estimate, (
        f"a batch of {batch} masks allocated {peak} bytes at its peak, more than "
        f"{batch} x the estimate of {estimate} bytes per mask"
    )
    assert batch * estimate <= MAX_SLACK * peak, (
        f"estimate {estimate} bytes per mask is over {MAX_SLACK}x the measured "
        f"{peak / batch:.0f} bytes per mask"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("scope", "per_position"),
    [("text", False), ("text", True), ("all", False)],
    ids=["text-heads", "text-positions", "all-heads"],
)
def test_estimate_bounds_measured_cpu_peak(load, dtype, scope, per_position):
    engine = _engine(load("cpu", dtype), scope)
    masks = _masks(engine, BATCH, per_position)
    peak = cpu_peak_bytes(lambda: engine.run(masks, batch_size=BATCH, progress=False))
    _check_estimate(engine, peak, BATCH, per_position)


def test_auto_batch_fits_its_budget(load, monkeypatch):
    """With RAM reported as 4 x 5 masks' worth, the chosen batch (5) fits in a quarter of it."""
    import psutil

    engine = _engine(load("cpu", torch.float32), "text")
    estimate = engine._bytes_per_mask(eager=False)
    available = 4 * 5 * estimate + 3
    monkeypatch.setattr(
        psutil, "virtual_memory", lambda: type("Mem", (), {"available": available})()
    )
    batch = engine.auto_batch_size()
    assert batch == 5
    masks = _masks(engine, batch, per_position=False)
    peak = cpu_peak_bytes(lambda: engine.run(masks, progress=False))
    assert peak <= available // 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("scope", ["text", "all"])
def test_estimate_bounds_measured_cuda_peak(load, scope):
    engine = _engine(load("cuda", torch.bfloat16), scope)
    masks = _masks(engine, BATCH, per_position=False)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    engine.run(masks, batch_size=BATCH, progress=False)
    torch.cuda.synchronize()
    _check_estimate(engine, torch.cuda.max_memory_allocated() - before, BATCH, False)
