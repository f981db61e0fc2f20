"""Throughput of image-K/V head ablation as a user gets it: every method in a fresh process.

Ablated forward passes per second ("masks/s") for one sample in LLaVA-1.5's token
layout (576 image tokens, the LLaVA-1.5 template and question). Each measurement runs
in its own child process (``python ablation_throughput.py --child KIND``), so none
inherits the heap, caches or allocator state of another:

- ``matmul_peak``: the best fp32 (bf16 on CUDA) square-matmul FLOP/s of this machine
  (same threads), the yardstick for the engine's achieved FLOP/s;
- ``head_attribution``: :func:`~tl_lvlm.analysis.heads.head_attribution` end to end
  (baseline, clean runs, prefixes, engine, fits) on ``--sample-seeds`` samples x
  ``--ha-masks`` masks, timed from the call to the result;
- ``engine``: :class:`~tl_lvlm.ablation.engine.AblationEngine` built and ``run`` on
  ``--masks`` masks: the first call (what a script gets) and the best of ``--repeats``;
- ``engine_eager``: the same with ``attention="eager"`` (the pre-fused path);
- ``naive``: one ``run_with_hooks`` forward of the whole prompt per mask;
- ``hooks``: the hook reference, ``--ref-batch-size`` masks per forward, once with the
  default glibc allocator and once with the engine's fixed malloc thresholds
  (:func:`~tl_lvlm.ablation.engine.steady_allocator`), with the minor page faults per
  mask of each, which is what separates the two;
- ``batch_sweep``: the engine's masks/s per batch size (what ``auto_batch_size``'s CPU
  cap is chosen from);
- ``engine_compiled``: the engine with ``compile_layers=True`` (inductor), its first call
  (compilation included) and its best;
- ``profile`` (CPU): where the engine's time in torch ops goes, torch.profiler's self
  time per op grouped into the fused attention kernels, matmuls and other ops (Python
  between the ops, a few percent by ``cProfile``, is left out: the profiler inflates it);
  and the fused attention kernel alone at the engine's prefix shape (one KV head's rows of
  a batch against the prefix), whose FLOP/s bounds the attention share.

The engine's, naive and hook outputs are checked against each other on shared masks.
"Standard" FLOPs per mask count the suffix tokens' forward (projections, MLP,
attention to prefix + suffix, the final position's unembedding), not the ablation's
extra work; "executed" FLOPs what the engine's fused path computes of them (it skips
layer 0's attention and most of the last layer). JSON goes to ``--out`` (default
``benchmarks/results/ablation_throughput.json``).

Shapes:

- ``tiny`` (default): a random tiny LLaVA (``--layers``/``--heads``/``--d-model``,
  CLIP patch 2 on 48 px images, so 24 x 24 = 576 image tokens), saved once and loaded
  by each child with ``from_pretrained``; one torch thread by default (``--threads``).
- ``llava-1.5-7b``: random weights with LLaVA-1.5-7B's shapes, built on ``--device``
  in bf16 by each child (``benchmarks/gpu_check.py`` is the prepared GPU run).

Examples::

    python benchmarks/ablation_throughput.py
    python benchmarks/ablation_throughput.py --device cuda --shape llava-1.5-7b
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from flops import executed_flops_per_mask, suffix_flops_per_mask  # a sibling script

from tl_lvlm import HookedLVLM
from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline
from tl_lvlm.ablation.engine import AblationEngine, steady_allocator
from tl_lvlm.inputs.templates import LLAVA_15_TEMPLATE
from tl_lvlm.testing import (
    IMAGE_TOKEN,
    TinyLlavaConfig,
    build_processor,
    build_tokenizer,
    random_images,
    save_tiny_llava,
)

TEMPLATE = LLAVA_15_TEMPLATE
QUESTION = "What is the main object in this image? Answer in a single word."
RESULTS = Path(__file__).parent / "results" / "ablation_throughput.json"
#: Masks whose outputs the children return for the agreement check.
N_CHECK = 8


@dataclass
class Shape:
    """Decoder and vision-tower shapes of a LLaVA model built with random weights."""

    n_layers: int = 32
    n_heads: int = 32
    d_model: int = 4096
    d_mlp: int = 11008
    vocab_size: int = 32064
    max_position_embeddings: int = 4096
    vision_layers: int = 24
    vision_d_model: int = 1024
    vision_d_mlp: int = 4096
    vision_heads: int = 16
    image_size: int = 336
    patch_size: int = 14


def build_shaped_llava(shape: Shape, device: str, dtype: torch.dtype) -> HookedLVLM:
    """A randomly initialised LLaVA of ``shape``, created directly on ``device`` in ``dtype``."""
    from transformers import AutoProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration as Llava

    tokenizer = build_tokenizer()
    if len(tokenizer) > shape.vocab_size:
        raise ValueError(f"vocab_size must be at least the tokenizer's {len(tokenizer)}")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=shape.vision_d_model,
            intermediate_size=shape.vision_d_mlp,
            num_hidden_layers=shape.vision_layers,
            num_attention_heads=shape.vision_heads,
            image_size=shape.image_size,
            patch_size=shape.patch_size,
            projection_dim=768,
        ),
        text_config=LlamaConfig(
            vocab_size=shape.vocab_size,
            hidden_size=shape.d_model,
            intermediate_size=shape.d_mlp,
            num_hidden_layers=shape.n_layers,
            num_attention_heads=shape.n_heads,
            num_key_value_heads=shape.n_heads,
            max_position_embeddings=shape.max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2 if shape.vision_layers > 1 else -1,
        vision_feature_select_strategy="default",
        architectures=["LlavaForConditionalGeneration"],
    )
    with torch.device(device):
        hf_model = Llava._from_config(config, dtype=dtype, attn_implementation="eager")
    # The bridge's boot re-loads the tokenizer from its ``name_or_path``, so the
    # processor (and the config AutoTokenizer reads) must come from a directory.
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        build_processor(tokenizer, shape.image_size, shape.patch_size).save_pretrained(tmp)
        return HookedLVLM.from_hf(hf_model.eval(), AutoProcessor.from_pretrained(tmp))


def save_tiny(args: argparse.Namespace, directory: str) -> str:
    """A tiny random LLaVA with 576 image tokens, saved as a user's checkpoint would be."""
    cfg = TinyLlavaConfig(
        n_layers=args.layers,
        n_heads=args.heads,
        d_model=args.d_model,
        d_mlp=2 * args.d_model,
        image_size=48,
        patch_size=2,
        seed=args.seed,
    )
    return str(save_tiny_llava(f"{directory}/tiny", cfg))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn, n_masks: int, device: str) -> tuple[object, float, float]:
    """``fn()``'s output, its masks/s and its minor page faults per mask."""
    sync(device)
    f0, t0 = minor_faults(), time.perf_counter()
    out = fn()
    sync(device)
    dt = time.perf_counter() - t0
    return out, n_masks / dt, (minor_faults() - f0) / n_masks


# --------------------------------------------------------------------------- children
def load_model(args: argparse.Namespace) -> HookedLVLM:
    dtype = getattr(torch, args.dtype)
    if args.shape == "llava-1.5-7b":
        shape = Shape(vision_layers=args.vision_layers or Shape.vision_layers)
        return build_shaped_llava(shape, args.device, dtype)
    return HookedLVLM.from_pretrained(args.checkpoint, device=args.device, dtype=dtype)


def setup(args: argparse.Namespace, model: HookedLVLM):
    """The sample, its mean baseline over 4 reference images, and the random masks."""
    size = model.image_size
    sample = model.prepare(random_images(1, size, seed=args.seed), QUESTION, template=TEMPLATE)
    reference = model.prepare(
        random_images(4, size, seed=args.seed + 1), QUESTION, template=TEMPLATE
    )
    baseline = image_kv_baseline(model, reference)
    g = torch.Generator().manual_seed(args.seed)
    n = max(args.masks, args.ref_masks, args.naive_masks, max(args.sweep))
    masks = torch.rand(n, model.n_layers, model.n_heads, generator=g) >= args.p_ablate
    return sample, baseline, masks


def matmul_peak(args: argparse.Namespace) -> dict:
    """Best square-matmul FLOP/s: fp32 on CPU, bf16 on CUDA (the engine's dtype there)."""
    n = 4096 if args.device.startswith("cuda") else 1024
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    a, b = (torch.randn(n, n, device=args.device, dtype=dtype) for _ in range(2))
    c = torch.empty(n, n, device=args.device, dtype=dtype)
    best, reps = 0.0, 20 if args.device.startswith("cuda") else 5
    for _ in range(args.repeats + 2):
        sync(args.device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=c)
        sync(args.device)
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t0))
    return {"flops": best, "n": n, "dtype": str(dtype).removeprefix("torch.")}


def child_head_attribution(args: argparse.Namespace) -> dict:
    from tl_lvlm.analysis.heads import head_attribution

    t0 = time.perf_counter()
    model = load_model(args)
    load_s = time.perf_counter() - t0
    # Random weights: whether ablating lowers the greedy logit is a coin toss per image;
    # the default seeds' images have positive gaps on the default tiny model.
    images = [random_images(1, model.image_size, seed=seed)[0] for seed in args.sample_seeds]
    reference = random_images(4, model.image_size, seed=args.seed + 1)  # as the engine child
    f0, t0 = minor_faults(), time.perf_counter()
    result = head_attribution(
        model,
        [(image, QUESTION) for image in images],
        reference=reference,
        n_masks=args.ha_masks,
        p_ablate=args.p_ablate,
        min_logit_gap=0.0,  # random weights: keep every sample whose gap is positive
        evaluate=False,
        progress=False,
        seed=args.seed,
    )
    wall = time.perf_counter() - t0
    n = len(result.sample_ids) * args.ha_masks  # an excluded sample runs no masks
    if not n:
        raise RuntimeError(f"head_attribution excluded every sample: {result.excluded}")
    return {
        "load_s": load_s,
        "wall_s": wall,
        "n_masks": n,
        "n_kept": len(result.sample_ids),
        "masks_per_s": n / wall,
        "faults_per_mask": (minor_faults() - f0) / n,
    }


def child_engine(args: argparse.Namespace, attention: str, compile_layers: bool = False) -> dict:
    model = load_model(args)
    sample, baseline, masks = setup(args, model)
    masks = masks[: args.masks]
    sync(args.device)
    t0 = time.perf_counter()
    engine = AblationEngine(
        model, sample, baseline, attention=attention, compile_layers=compile_layers
    )
    sync(args.device)
    setup_s = time.perf_counter() - t0
    batch = args.batch_size or engine.auto_batch_size()

    def run():
        return engine.run(masks, batch_size=batch, progress=False)

    out, first, first_faults = timed(run, len(masks), args.device)
    rates, faults = [first], [first_faults]
    for _ in range(args.repeats - 1):
        rates.append(timed(run, len(masks), args.device)[1])
    return {
        "engine_setup_s": setup_s,
        "batch_size": batch,
        "n_masks": len(masks),
        "masks_per_s_first_call": first,
        "masks_per_s": max(rates),
        "faults_per_mask_first_call": faults[0],
        "suffix_flops_per_mask": suffix_flops_per_mask(engine),
        "executed_flops_per_mask": executed_flops_per_mask(engine),
        "target": engine.target,
        "model": {
            "n_layers": model.n_layers,
            "n_heads": model.n_heads,
            "d_model": model.hf_model.config.text_config.hidden_size,
            "n_image": engine.n_image,
            "prefix_len": engine.prefix_len,
            "suffix_len": engine.suffix_len,
            "seq_len": sample.seq_len,
        },
        "check": out[:N_CHECK].tolist(),
    }


#: torch.profiler op names by group (``profile``); the rest are "other ops".
OP_GROUPS = {
    "attention kernels": ("scaled_dot_product", "flash_attention", "efficient_attention"),
    "matmul": ("aten::mm", "aten::bmm", "aten::addmm"),
}


def child_profile(args: argparse.Namespace) -> dict:
    from torch.profiler import ProfilerActivity, profile

    model = load_model(args)
    sample, baseline, masks = setup(args, model)
    engine = AblationEngine(model, sample, baseline)
    batch = args.batch_size or engine.auto_batch_size()
    keep = masks[: 4 * batch]
    engine.run(keep, batch_size=batch, progress=False)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.run(keep, batch_size=batch, progress=False)
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    groups = dict.fromkeys([*OP_GROUPS, "other ops"], 0.0)
    for name, us in ops.items():
        group = next((g for g, keys in OP_GROUPS.items() if any(k in name for k in keys)), None)
        groups[group or "other ops"] += us
    total_us = sum(ops.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:12]

    d, prefix = model.d_head, engine.prefix_len
    rows = batch * engine.suffix_len * (model.n_heads // model.n_kv_heads)
    kernel = {
        d_head: attention_kernel(rows, prefix, d_head, model.dtype) for d_head in (d, 64, 128)
    }
    return {
        "batch_size": batch,
        "n_masks": len(keep),
        "op_time_share": {g: us / total_us for g, us in groups.items()},
        "top_ops_share": {name: us / total_us for name, us in top},
        "attention_kernel": kernel[d],
        "attention_kernel_by_d_head": kernel,
    }


def attention_kernel(rows: int, keys: int, d_head: int, dtype: torch.dtype) -> dict:
    """The engine's fused attention kernel alone: ``rows`` queries against ``keys`` keys."""
    from tl_lvlm.ablation.engine import _attention_with_lse

    q, k, v = (torch.randn(1, 1, n, d_head, dtype=dtype) for n in (rows, keys, keys))
    scale = d_head**-0.5
    scores = torch.empty(rows, keys, dtype=dtype)
    out = torch.empty(rows, d_head, dtype=dtype)

    def best_s(fn) -> float:
        fn()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(10):
                fn()
            best = min(best, (time.perf_counter() - t0) / 10)
        return best

    kernel = best_s(lambda: _attention_with_lse(q, k, v, scale, causal=False))
    # The kernel's two products alone, as plain matmuls: Q K^T, then P V.
    products = best_s(lambda: torch.mm(q[0, 0], k[0, 0].T, out=scores)) + best_s(
        lambda: torch.mm(scores, v[0, 0], out=out)
    )
    n_scores = rows * keys
    return {
        "rows": rows,
        "keys": keys,
        "d_head": d_head,
        "flops": 4 * n_scores * d_head / kernel,
        "ns_per_score": kernel * 1e9 / n_scores,
        "products_ns_per_score": products * 1e9 / n_scores,
    }


def child_batch_sweep(args: argparse.Namespace) -> dict:
    model = load_model(args)
    sample, baseline, masks = setup(args, model)
    engine = AblationEngine(model, sample, baseline)
    rates = {}
    for batch in args.sweep:
        keep = masks[: max(batch, min(args.masks, 4 * batch))]
        run = functools.partial(engine.run, keep, batch_size=batch, progress=False)
        run()
        rates[batch] = max(timed(run, len(keep), args.device)[1] for _ in range(2))
    return {"masks_per_s": rates, "auto_batch_size": engine.auto_batch_size()}


def hooked_logits(model, sample, baseline, keep: torch.Tensor, target: int) -> torch.Tensor:
    """Target logits of the hook reference, one forward of ``keep.shape[0]`` rows."""
    rows = sample[[0] * keep.shape[0]]
    hooks = image_kv_ablation_hooks(model, rows, baseline, keep.to(model.device))
    with torch.no_grad():
        return model.final_logits(rows, hooks)[:, target].cpu()


def child_hooks(args: argparse.Namespace, naive: bool) -> dict:
    allocator = False if naive else args.steady_allocator and steady_allocator()
    model = load_model(args)
    sample, baseline, masks = setup(args, model)
    n, b = (args.naive_masks, 1) if naive else (args.ref_masks, args.ref_batch_size)
    target = args.target
    hooked_logits(model, sample, baseline, masks[:b], target)  # warm-up

    def run():
        return torch.cat(
            [
                hooked_logits(model, sample, baseline, masks[i : min(i + b, n)], target)
                for i in range(0, n, b)
            ]
        )

    out, rate, faults = timed(run, n, args.device)
    rates = [rate] + [timed(run, n, args.device)[1] for _ in range(args.repeats - 1)]
    return {
        "batch_size": b,
        "n_masks": n,
        "steady_allocator": allocator,
        "masks_per_s": max(rates),
        "faults_per_mask": faults,
        "check": out[:N_CHECK].tolist(),
    }


def child(args: argparse.Namespace) -> dict:
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(args.seed)
    kind = args.child
    if kind == "matmul_peak":
        return matmul_peak(args)
    if kind == "head_attribution":
        return child_head_attribution(args)
    if kind in ("engine", "engine_eager", "engine_compiled"):
        attention = "eager" if kind == "engine_eager" else "fused"
        return child_engine(args, attention, compile_layers=kind == "engine_compiled")
    if kind == "profile":
        return child_profile(args)
    if kind == "batch_sweep":
        return child_batch_sweep(args)
    if kind in ("naive", "hooks", "hooks_steady"):
        args.steady_allocator = kind == "hooks_steady"
        return child_hooks(args, naive=kind == "naive")
    raise ValueError(f"unknown child {kind!r}")


# --------------------------------------------------------------------------- parent
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--device", default="cpu")
    add("--shape", choices=("tiny", "llava-1.5-7b"), default="tiny")
    add(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="default: float32 for tiny, bfloat16 for llava-1.5-7b",
    )
    add("--layers", type=int, default=4, help="tiny: decoder layers")
    add("--heads", type=int, default=8, help="tiny: attention heads")
    add("--d-model", type=int, default=128, help="tiny: residual width")
    add(
        "--vision-layers",
        type=int,
        default=None,
        help="llava-1.5-7b: CLIP layers (default 24, the real tower)",
    )
    add("--naive-masks", type=int, default=12, help="masks for the naive loop")
    add("--ref-masks", type=int, default=32, help="masks for the batched hook reference")
    add("--ref-batch-size", type=int, default=16)
    add("--masks", type=int, default=2048, help="masks per engine call")
    add("--batch-size", type=int, default=None, help="engine; default: auto_batch_size()")
    add(
        "--sweep",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[16, 32, 64, 128, 256, 512],
        help="batch sizes of the batch sweep (comma-separated)",
    )
    add(
        "--sample-seeds",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[4, 5],
        help="head_attribution: one sample per image seed (comma-separated)",
    )
    add("--ha-masks", type=int, default=1024, help="head_attribution: masks per sample")
    add("--repeats", type=int, default=3, help="calls per child; the best counts (and the first)")
    add(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads; default 1 on CPU (steady on a busy machine)",
    )
    add("--p-ablate", type=float, default=0.75)
    add("--seed", type=int, default=0)
    add("--out", default=str(RESULTS), help="write the results as JSON here")
    add("--child", default=None, help=argparse.SUPPRESS)
    add("--checkpoint", default=None, help=argparse.SUPPRESS)
    add("--target", type=int, default=None, help=argparse.SUPPRESS)
    add("--report", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.shape == "llava-1.5-7b" else "float32")
    return args


def run_child(kind: str, argv: list[str], extra: list[str] = ()) -> dict:
    """Run ``kind`` in a fresh interpreter (same arguments) and return its JSON report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, __file__, *argv, *extra, "--child", kind, "--report", str(report)]
        path = [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        subprocess.run(cmd, check=True, env=env)
        return json.loads(report.read_text())


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        Path(args.report).write_text(json.dumps(child(args)))
        return {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        extra = [] if args.shape != "tiny" else ["--checkpoint", save_tiny(args, tmp)]
        r = {"matmul_peak": run_child("matmul_peak", argv, extra)}
        r["engine"] = run_child("engine", argv, extra)
        extra += ["--target", str(r["engine"]["target"])]
        kinds = ["engine_eager", "naive", "hooks", "hooks_steady", "head_attribution"]
        kinds += ["batch_sweep", "engine_compiled"] + (["profile"] if args.device == "cpu" else [])
        for kind in kinds:
            r[kind] = run_child(kind, argv, extra)
    result = summarize(args, r)
    result["benchmark_wall_s"] = time.perf_counter() - t_start
    report(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


def summarize(args: argparse.Namespace, r: dict) -> dict:
    eng, naive = r["engine"], r["naive"]
    flops, peak = eng["suffix_flops_per_mask"], r["matmul_peak"]["flops"]
    check = torch.tensor(eng["check"])
    diff = {}
    for name in ("engine_eager", "engine_compiled", "naive", "hooks"):
        other = torch.tensor(r[name]["check"])
        diff[f"engine_vs_{name}"] = float((check[: len(other)] - other).abs().max())
    return {
        "shape": args.shape,
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": args.threads or (1 if args.device == "cpu" else torch.get_num_threads()),
        "load_average": os.getloadavg(),
        "dtype": args.dtype,
        "model": eng["model"],
        "masks_per_s": {
            "head_attribution": r["head_attribution"]["masks_per_s"],
            "engine_first_call": eng["masks_per_s_first_call"],
            "engine": eng["masks_per_s"],
            "engine_eager": r["engine_eager"]["masks_per_s"],
            "engine_compiled_first_call": r["engine_compiled"]["masks_per_s_first_call"],
            "engine_compiled": r["engine_compiled"]["masks_per_s"],
            "naive": naive["masks_per_s"],
            "hooks_batched": r["hooks"]["masks_per_s"],
            "hooks_batched_steady_allocator": r["hooks_steady"]["masks_per_s"],
        },
        "speedup_vs_naive": {
            "head_attribution": r["head_attribution"]["masks_per_s"] / naive["masks_per_s"],
            "engine_first_call": eng["masks_per_s_first_call"] / naive["masks_per_s"],
            "engine": eng["masks_per_s"] / naive["masks_per_s"],
            "engine_eager": r["engine_eager"]["masks_per_s"] / naive["masks_per_s"],
            "engine_compiled": r["engine_compiled"]["masks_per_s"] / naive["masks_per_s"],
            "hooks_batched": r["hooks"]["masks_per_s"] / naive["masks_per_s"],
        },
        "faults_per_mask": {
            "engine_first_call": eng["faults_per_mask_first_call"],
            "engine_eager_first_call": r["engine_eager"]["faults_per_mask_first_call"],
            "head_attribution": r["head_attribution"]["faults_per_mask"],
            "hooks_batched": r["hooks"]["faults_per_mask"],
            "hooks_batched_steady_allocator": r["hooks_steady"]["faults_per_mask"],
        },
        "standard_flops_per_mask": flops,
        "matmul_peak": r["matmul_peak"],
        "engine_flops": flops * eng["masks_per_s"],
        "engine_fraction_of_matmul_peak": flops * eng["masks_per_s"] / peak,
        "engine_first_call_fraction_of_matmul_peak": flops * eng["masks_per_s_first_call"] / peak,
        "engine_compiled_fraction_of_matmul_peak": (
            flops * r["engine_compiled"]["masks_per_s"] / peak
        ),
        "executed_flops_per_mask": eng["executed_flops_per_mask"],
        "engine_executed_fraction_of_matmul_peak": (
            eng["executed_flops_per_mask"] * eng["masks_per_s"] / peak
        ),
        "batch_sweep": r["batch_sweep"],
        "profile": _profile_summary(r.get("profile"), peak),
        "max_abs_diff": diff,
        "children": r,
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "report", "checkpoint")},
    }


def _profile_summary(profile: dict | None, peak: float) -> dict | None:
    """The profile child's shares, and its attention kernel's FLOP/s as a fraction of ``peak``."""
    if profile is None:
        return None
    by_d_head = {d: k["flops"] / peak for d, k in profile["attention_kernel_by_d_head"].items()}
    return {
        **profile,
        "attention_kernel_fraction_of_matmul_peak": profile["attention_kernel"]["flops"] / peak,
        "attention_kernel_fraction_of_matmul_peak_by_d_head": by_d_head,
    }


def report(r: dict) -> None:
    m = r["model"]
    print(
        f"{r['shape']} on {r['device_name']} ({r['dtype']}, {r['torch_threads']} threads, load "
        f"{r['load_average'][0]:.1f}): {m['seq_len']} tokens = prefix {m['prefix_len']} + suffix "
        f"{m['suffix_len']}; {m['n_layers']} layers x {m['n_heads']} heads; each in a fresh process"
    )
    for name, rate in r["masks_per_s"].items():
        ratio = r["speedup_vs_naive"].get(name)
        vs = f"{ratio:8.1f}x naive" if ratio else ""
        print(f"  {name:32s} {rate:10.1f} masks/s {vs}")
    print(
        "  minor page faults per mask: "
        + ", ".join(f"{k} {v:.1f}" for k, v in r["faults_per_mask"].items())
    )
    peak = r["matmul_peak"]
    print(
        f"  engine {r['engine_flops'] / 1e9:.1f} GFLOP/s = "
        f"{r['engine_fraction_of_matmul_peak']:.1%}"
        f" of the measured {peak['dtype']} matmul peak {peak['flops'] / 1e9:.1f} GFLOP/s "
        f"({r['standard_flops_per_mask'] / 1e6:.1f} MFLOP per mask); it executes "
        f"{r['executed_flops_per_mask'] / 1e6:.1f} MFLOP per mask, "
        f"{r['engine_executed_fraction_of_matmul_peak']:.1%} of the peak"
    )
    if r["profile"]:
        shares, kernel = r["profile"]["op_time_share"], r["profile"]["attention_kernel"]
        print("  engine op time: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
        print(
            f"  fused attention kernel alone ({kernel['rows']} rows x {kernel['keys']} keys, "
            f"d_head {kernel['d_head']}): {kernel['flops'] / 1e9:.1f} GFLOP/s = "
            f"{r['profile']['attention_kernel_fraction_of_matmul_peak']:.1%} of the matmul peak, "
            f"{kernel['ns_per_score']:.2f} ns per score (its two products as matmuls "
            f"{kernel['products_ns_per_score']:.2f} ns); at d_head "
            + ", ".join(
                f"{d}: {f:.0%}"
                for d, f in r["profile"][
                    "attention_kernel_fraction_of_matmul_peak_by_d_head"
                ].items()
            )
        )
    sweep = r["batch_sweep"]
    print(
        "  batch sweep: "
        + ", ".join(f"{b}: {v:.0f}" for b, v in sweep["masks_per_s"].items())
        + f"; auto_batch_size {sweep['auto_batch_size']}"
    )
    print("  max |diff| " + ", ".join(f"{k} {v:.1e}" for k, v in r["max_abs_diff"].items()))


if __name__ == "__main__":
    main()
