"""One prepared command for a GPU machine (``make gpu-check``): correctness and speed on CUDA.

Meant to finish in at most 8 minutes on one H100; writes one JSON file (``--out``,
default ``benchmarks/results/gpu_check.json``) and prints a summary.

1. **Checks** (every registered family's tiny checkpoint, loaded on the device):
   the engine's target logits equal the hook reference's, on the fused and the eager
   attention path, in fp32 (``<= 1e-4``, TF32 off) and in bf16 (within 4 bf16 steps of
   the logits' scale, against the bf16 hook reference); target logits are fp32, and
   in bf16 off the bf16 grid.
2. **Throughput at the LLaVA-1.5-7B shape** with random bf16 weights
   (``benchmarks/full_size.py``'s config; ``--layers`` decoder layers, default all 32;
   a shorter decoder's masks/s is scaled to the full model by the layer count, for
   the engine by the count of layers between the first and the last, which the fused
   path makes cheaper, so that it errs on the slow side): the engine (fused; eager; fused with
   ``compile_layers``), each at ``auto_batch_size``; the naive loop (one hooked forward
   of the whole prompt per mask); achieved FLOP/s on the standard suffix FLOP count
   against the dense bf16 peak (``--peak-flops``) and a bf16 matmul peak measured here.
3. **The paper's study**: 200 samples x 10,000 masks, derived from the measured
   per-sample setup (clean run and prefix) and masks/s.

``--dry-run`` runs every step at a tiny size on the CPU (fp32 checks on two
families, a 7B-structured model shrunk to 2 layers of width 64), to rehearse the
command where no GPU is; ``tests/benchmarks/test_gpu_check.py`` runs it.

Examples::

    python benchmarks/gpu_check.py                 # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import full_size  # noqa: E402  (a sibling script: the 7B config and tokenizer)
from flops import suffix_flops_per_mask  # noqa: E402  (a sibling script)

from tl_lvlm import HookedLVLM  # noqa: E402
from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline  # noqa: E402
from tl_lvlm.ablation.engine import AblationEngine  # noqa: E402
from tl_lvlm.testing import BUILDERS, random_images, save_tiny_family  # noqa: E402
from tl_lvlm.zoo.tiny_llava import build_processor  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "gpu_check.json"
QUESTION = full_size.QUESTION
FULL_LAYERS = full_size.LLAVA_15_7B["text_config"]["num_hidden_layers"]
STUDY_SAMPLES, STUDY_MASKS = 200, 10_000
#: What ``--dry-run`` shrinks the 7B config to (every other key as in LLaVA-1.5-7B).
DRY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 4}  # fmt: skip
DRY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ 1. checks
def hook_reference(model, sample, baseline, masks, target: int) -> torch.Tensor:
    """Target logits of the hook reference, one hooked forward with one row per mask."""
    rows = sample[[0] * len(masks)]
    hooks = image_kv_ablation_hooks(model, rows, baseline, masks.to(model.device))
    with torch.no_grad():
        return model.final_logits(rows, hooks)[:, target].cpu()


def check_family(path: str, device: str, dtype: torch.dtype, n_masks: int) -> dict:
    """Engine (fused and eager) against the hook reference on one family's tiny checkpoint."""
    model = HookedLVLM.from_pretrained(path, device=device, dtype=dtype)
    reference = model.prepare(random_images(3, 28, seed=5), QUESTION)
    baseline = image_kv_baseline(model, reference)
    sample = model.prepare(random_images(1, 28, seed=1), QUESTION)
    g = torch.Generator().manual_seed(0)
    shape = (model.n_layers, model.n_heads)
    masks = torch.cat([torch.ones(1, *shape, dtype=torch.bool),
                       torch.rand(n_masks - 1, *shape, generator=g) > 0.5])  # fmt: skip
    out: dict = {}
    ref = None
    for attention in ("fused", "eager"):
        engine = AblationEngine(model, sample, baseline, attention=attention)
        got = engine.run(masks, batch_size=8, progress=False)
        if ref is None:
            ref = hook_reference(model, sample, baseline, masks, engine.target)
        if dtype == torch.float32:
            tol = 1e-4
        else:  # a few bf16 steps of the logits' scale
            tol = 4 * 2.0**-7 * float(ref.abs().max())
        diff = float((got - ref).abs().max())
        out[attention] = {"max_abs_diff": diff, "tolerance": tol, "ok": diff <= tol}
    spread = float((ref - ref[0]).abs().max())
    out["masks_move_logit"] = spread
    out["target_fp32"] = got.dtype == torch.float32
    if dtype == torch.bfloat16:
        out["off_bf16_grid"] = float((got != got.bfloat16().float()).float().mean())
    out["ok"] = (
        all(out[a]["ok"] for a in ("fused", "eager"))
        and out["target_fp32"]
        and spread > 4 * out["fused"]["tolerance"]
        and out.get("off_bf16_grid", 1.0) > 0.5
    )
    return out


def run_checks(args, tmp: str) -> dict:
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 must mean fp32 here
    families = ["llava", "qwen2_5_vl"] if args.dry_run else list(BUILDERS)
    dtypes = [torch.float32] if args.dry_run else [torch.float32, torch.bfloat16]
    results = {}
    for family in families:
        path = str(save_tiny_family(family, Path(tmp) / family))
        for dtype in dtypes:
            name = f"{family}-{str(dtype).removeprefix('torch.')}"
            results[name] = check_family(path, args.device, dtype, args.check_masks)
            print(f"  check {name:28s} {'ok' if results[name]['ok'] else 'FAILED'}", flush=True)
    return results


# --------------------------------------------------------------- 2. throughput
def llava_7b_shaped(args) -> HookedLVLM:
    """LLaVA-1.5-7B's config (``--layers`` layers; shrunk with ``--dry-run``), random weights."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    shrink = {"text": DRY_TEXT, "vision": DRY_VISION} if args.dry_run else {}
    config = full_size.llava_15_7b_config(args.layers, **shrink)
    tokenizer = full_size.vicuna_sized_tokenizer()
    vision = config.vision_config
    dtype = getattr(torch, args.dtype)
    with torch.device(args.device):
        hf_model = LlavaForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation="eager"
        )
    with tempfile.TemporaryDirectory() as tmp:  # the bridge re-reads the processor by path
        config.save_pretrained(tmp)
        build_processor(tokenizer, vision.image_size, vision.patch_size).save_pretrained(tmp)
        return HookedLVLM.from_hf(hf_model.eval(), AutoProcessor.from_pretrained(tmp))


def rate(fn, n: int, device: torch.device, repeats: int) -> float:
    """Best masks/s of ``fn()`` (which runs ``n`` masks) over ``repeats`` calls, after a warm-up."""
    fn()
    best = 0.0
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def bf16_matmul_peak(device: torch.device, n: int) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    return rate(lambda: [a @ b for _ in range(10)], 10, device, 3) * 2 * n**3


def run_throughput(args) -> dict:
    t0 = time.perf_counter()
    model = llava_7b_shaped(args)
    device = model.device
    build_s = time.perf_counter() - t0
    size = model.image_size
    sample = model.prepare(random_images(1, size, seed=0), QUESTION)
    baseline = image_kv_baseline(model, model.prepare(random_images(2, size, seed=1), QUESTION))
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(args.masks, model.n_layers, model.n_heads, generator=g) >= 0.75
    sync(device)
    t0 = time.perf_counter()
    engine = AblationEngine(model, sample, baseline)
    sync(device)
    setup_s = time.perf_counter() - t0
    batch = args.batch_size or engine.auto_batch_size()
    rates, outputs = {}, {}
    variants = {
        "engine": {},
        "engine_eager": {"attention": "eager"},
        "engine_compiled": {"compile_layers": args.compile_backend},
    }
    for name, kwargs in variants.items():
        e = engine if not kwargs else AblationEngine(model, sample, baseline, **kwargs)
        outputs[name] = e.run(masks[: min(8, args.masks)], batch_size=batch, progress=False)
        rates[name] = rate(lambda e=e: e.run(masks, batch_size=batch, progress=False),
                           len(masks), device, args.repeats)  # fmt: skip
        print(f"  {name:16s} {rates[name]:10.1f} masks/s (batch {batch})", flush=True)
    naive_masks = masks[: args.naive_masks]
    naive_out = []

    def naive():
        naive_out[:] = [hook_reference(model, sample, baseline, naive_masks[i : i + 1],
                                       engine.target) for i in range(len(naive_masks))]  # fmt: skip

    rates["naive"] = rate(naive, len(naive_masks), device, 1)
    print(f"  {'naive':16s} {rates['naive']:10.1f} masks/s", flush=True)
    naive_out = torch.cat(naive_out)
    diff = {name: float((out[: len(naive_out)] - naive_out).abs().max())
            for name, out in outputs.items()}  # fmt: skip

    flops = suffix_flops_per_mask(engine, FULL_LAYERS)
    scale = model.n_layers / FULL_LAYERS  # masks/s of the 32-layer model ~ rate * scale
    # The engine's first and last layers cost less than the others (layer 0's attention is
    # one basis for all masks, the last layer's from the final query only), so its rate
    # scales by the count of the layers between: slower than the full model's, not faster.
    middle = model.n_layers - 2
    engine_scale = middle / (FULL_LAYERS - 2) if middle > 0 else scale
    full = {n: r * (scale if n == "naive" else engine_scale) for n, r in rates.items()}
    peak_measured = bf16_matmul_peak(device, 512 if args.dry_run else 8192)
    setup_full_s = setup_s * (1 / scale)  # the prefix scales per layer too (vision tower aside)
    study_s = STUDY_SAMPLES * (setup_full_s + STUDY_MASKS / full["engine"])
    return {
        "n_layers": model.n_layers,
        "n_heads": model.n_heads,
        "d_model": model.hf_model.config.text_config.hidden_size,
        "seq_len": sample.seq_len,
        "prefix_len": engine.prefix_len,
        "suffix_len": engine.suffix_len,
        "build_s": build_s,
        "engine_setup_s": setup_s,
        "batch_size": batch,
        "n_masks": len(masks),
        "masks_per_s": rates,
        "masks_per_s_at_32_layers": full,
        "speedup_vs_naive": {n: r / rates["naive"] for n, r in rates.items() if n != "naive"},
        "compiled_vs_eager_layers": rates["engine_compiled"] / rates["engine"],
        "max_abs_diff_vs_naive": diff,
        "suffix_flops_per_mask": flops,
        "peak_flops": args.peak_flops,
        "fraction_of_peak": flops * full["engine"] / args.peak_flops,
        "bf16_matmul_peak_measured": peak_measured,
        "fraction_of_measured_matmul_peak": flops * full["engine"] / peak_measured,
        "study": {
            "samples": STUDY_SAMPLES,
            "masks": STUDY_MASKS,
            "setup_s_per_sample_at_32_layers": setup_full_s,
            "minutes": study_s / 60,
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--dry-run", action="store_true", help="every step at a tiny size on the CPU")
    add("--device", default=None, help="default: cuda (cpu with --dry-run)")
    add("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="throughput dtype")
    add("--layers", type=int, default=None, help=f"decoder layers (default {FULL_LAYERS}; 2 dry)")
    add("--masks", type=int, default=None, help="masks per engine call (default 4096; 64 dry)")
    add("--naive-masks", type=int, default=None, help="masks of the naive loop (16; 2 dry)")
    add("--batch-size", type=int, default=None, help="engine; default auto_batch_size()")
    add("--repeats", type=int, default=3)
    add("--check-masks", type=int, default=None, help="masks per check (33; 9 dry)")
    add("--compile-backend", default=None, help="compile_layers backend (inductor; eager dry)")
    add("--peak-flops", type=float, default=989e12, help="dense bf16 peak (H100 SXM: 989e12)")
    add("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.device = args.device or ("cpu" if dry else "cuda")
    args.layers = args.layers or (2 if dry else FULL_LAYERS)
    args.masks = args.masks or (64 if dry else 4096)
    args.naive_masks = args.naive_masks or (2 if dry else 16)
    args.check_masks = args.check_masks or (9 if dry else 33)
    args.compile_backend = args.compile_backend or ("eager" if dry else "inductor")
    if dry:
        args.repeats = 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --dry-run")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    t_start = time.perf_counter()
    print("1. engine = hook reference", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        checks = run_checks(args, tmp)
    print("2. throughput at the LLaVA-1.5-7B shape", flush=True)
    throughput = run_throughput(args)
    result = {
        "dry_run": args.dry_run,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "checks": checks,
        "checks_ok": all(c["ok"] for c in checks.values()),
        "throughput": throughput,
        "wall_s": time.perf_counter() - t_start,
        "args": vars(args),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    summary(result)
    return result


def summary(r: dict) -> None:
    t = r["throughput"]
    print(f"\ngpu_check on {r['device_name']} (torch {r['torch']}), {r['wall_s']:.0f} s")
    print(f"  checks: {'all ok' if r['checks_ok'] else 'FAILED'} ({len(r['checks'])} runs)")
    print(f"  {t['n_layers']} layers x {t['n_heads']} heads, d_model {t['d_model']}, "
          f"{t['seq_len']} tokens (suffix {t['suffix_len']}), batch {t['batch_size']}")  # fmt: skip
    for name, value in t["masks_per_s"].items():
        print(f"  {name:16s} {value:10.1f} masks/s, "
              f"{t['masks_per_s_at_32_layers'][name]:10.1f} at 32 layers")  # fmt: skip
    print(f"  engine {t['speedup_vs_naive']['engine']:.1f}x naive; compiled layers "
          f"{t['compiled_vs_eager_layers']:.2f}x uncompiled")  # fmt: skip
    print(
        f"  engine at {t['fraction_of_peak']:.1%} of {t['peak_flops']:.3g} FLOP/s "
        f"({t['fraction_of_measured_matmul_peak']:.1%} of the measured bf16 matmul peak)"
    )
    print(f"  200 x 10,000 study: {t['study']['minutes']:.1f} min")


if __name__ == "__main__":
    sys.exit(0 if main()["checks_ok"] else 1)
