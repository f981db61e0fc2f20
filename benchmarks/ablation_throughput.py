"""Throughput of image-K/V head ablation: naive loop vs batched hooks vs AblationEngine.

Ablated forward passes per second ("masks/s") for one sample in LLaVA-1.5's token
layout (576 image tokens, the LLaVA-1.5 template and question), measured in one run:

(a) naive: one ``run_with_hooks`` forward of the whole prompt per mask;
(b) hooks batched: the hook reference, ``--ref-batch-size`` masks per forward;
(c) engine: :class:`~tl_lvlm.ablation.engine.AblationEngine` (shared prefix, text suffix only).

It also checks that (a), (b) and (c) agree on the masks they share.

Shapes:

- ``tiny`` (default): a random tiny LLaVA (``--layers``/``--heads``/``--d-model``,
  CLIP patch 2 on 48 px images, so 24 x 24 = 576 image tokens). Runs in well under
  two minutes on a 2-core CPU, one torch thread by default (``--threads``).
- ``llava-1.5-7b``: random weights with LLaVA-1.5-7B's shapes (Llama: 32 layers,
  32 heads, d_model 4096, d_mlp 11008, vocab 32064; CLIP-L/14 at 336 px: 24 layers,
  1024 hidden), built directly on ``--device`` in bf16. The vision tower only runs
  in the prefix (once per sample for the engine), so ``--vision-layers`` may
  shorten it without changing the engine's numbers. The tokenizer is the tiny BPE
  one (token ids < 400 of the 32064-row embedding); throughput does not depend on
  which ids the prompt uses. For this shape the script also reports the fraction
  of peak bf16 FLOP/s (``--peak-flops``, default 989e12: H100/H200 SXM dense) that
  the engine reaches on the suffix, counting the standard forward FLOPs of the
  suffix tokens (projections, MLP, attention to prefix + suffix, the final
  position's unembedding) and not the extra baseline-score work of the ablation.

Examples::

    python benchmarks/ablation_throughput.py --out bench.json
    python benchmarks/ablation_throughput.py --device cuda --shape llava-1.5-7b
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

from tl_lvlm import HookedLVLM
from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline
from tl_lvlm.ablation.engine import AblationEngine
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


def build_tiny(args: argparse.Namespace, dtype: torch.dtype) -> HookedLVLM:
    """A tiny random LLaVA with 576 image tokens, saved and loaded back as a user would."""
    cfg = TinyLlavaConfig(
        n_layers=args.layers,
        n_heads=args.heads,
        d_model=args.d_model,
        d_mlp=2 * args.d_model,
        image_size=48,
        patch_size=2,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = save_tiny_llava(f"{tmp}/tiny", cfg)
        return HookedLVLM.from_pretrained(path, device=args.device, dtype=dtype)


def suffix_flops_per_mask(engine: AblationEngine) -> float:
    """Standard forward FLOPs of the suffix tokens of one mask (see the module docstring)."""
    cfg = engine.model.hf_model.config.text_config
    d, n_heads, d_head = cfg.hidden_size, engine.model.n_heads, engine.model.d_head
    n_kv = engine.model.n_kv_heads
    s, context = engine.suffix_len, engine.prefix_len + engine.suffix_len
    projections = d * d_head * (2 * n_heads + 2 * n_kv) + 3 * d * cfg.intermediate_size
    attention = 2 * n_heads * d_head * context
    return 2.0 * cfg.num_hidden_layers * s * (projections + attention) + 2.0 * d * cfg.vocab_size


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_rate(fns: dict, n_masks: dict, repeats: int, device: str) -> tuple[dict, dict]:
    """Outputs and best masks/s of each method over ``repeats`` interleaved rounds.

    Interleaving and taking the best round keep a busy machine from favouring
    whichever method happened to run while it was quiet.
    """
    outputs, rates = {}, {}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            outputs[name] = fn()
            sync(device)
            rates[name] = max(rates.get(name, 0.0), n_masks[name] / (time.perf_counter() - t0))
    return outputs, rates


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
    add("--naive-masks", type=int, default=6, help="masks per round for (a)")
    add("--ref-masks", type=int, default=16, help="masks per round for (b)")
    add("--ref-batch-size", type=int, default=16)
    add("--masks", type=int, default=512, help="masks per round for the engine")
    add("--batch-size", type=int, default=None, help="engine; default: auto_batch_size()")
    add("--repeats", type=int, default=3, help="interleaved rounds; the best counts")
    add(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads; default 1 on CPU (the tiny model's ops are too small to gain "
        "from more, and one thread stays steady on a busy machine)",
    )
    add("--p-ablate", type=float, default=0.75)
    add(
        "--peak-flops",
        type=float,
        default=989e12,
        help="peak bf16 FLOP/s of the device (H100/H200 SXM dense: 989e12)",
    )
    add("--seed", type=int, default=0)
    add("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(args.seed)
    big = args.shape == "llava-1.5-7b"
    dtype = getattr(torch, args.dtype or ("bfloat16" if big else "float32"))
    t0 = time.perf_counter()
    if big:
        shape = Shape(vision_layers=args.vision_layers or Shape.vision_layers)
        model = build_shaped_llava(shape, args.device, dtype)
    else:
        model = build_tiny(args, dtype)
    build_s = time.perf_counter() - t0

    size = model.image_size
    sample = model.prepare(random_images(1, size, seed=args.seed), QUESTION, template=TEMPLATE)
    reference = model.prepare(
        random_images(4, size, seed=args.seed + 1), QUESTION, template=TEMPLATE
    )
    baseline = image_kv_baseline(model, reference)
    g = torch.Generator().manual_seed(args.seed)
    n_all = max(args.masks, args.ref_masks, args.naive_masks)
    masks = torch.rand(n_all, model.n_layers, model.n_heads, generator=g) >= args.p_ablate

    sync(args.device)
    t0 = time.perf_counter()
    engine = AblationEngine(model, sample, baseline)
    sync(args.device)
    setup_s = time.perf_counter() - t0
    batch_size = args.batch_size or engine.auto_batch_size()

    def hooked(keep: torch.Tensor) -> torch.Tensor:
        rows = sample[[0] * keep.shape[0]]
        hooks = image_kv_ablation_hooks(model, rows, baseline, keep.to(model.device))
        with torch.no_grad():
            return model.run_with_hooks(rows, fwd_hooks=hooks)[:, -1, engine.target].float().cpu()

    b = args.ref_batch_size
    fns = {
        "naive": lambda: torch.cat([hooked(masks[i : i + 1]) for i in range(args.naive_masks)]),
        "hooks_batched": lambda: torch.cat(
            [hooked(masks[i : min(i + b, args.ref_masks)]) for i in range(0, args.ref_masks, b)]
        ),
        "engine": lambda: engine.run(masks[: args.masks], batch_size=batch_size, progress=False),
    }
    n_masks = {"naive": args.naive_masks, "hooks_batched": args.ref_masks, "engine": args.masks}
    hooked(masks[:1])  # warm-up
    engine.run(masks[:batch_size], batch_size=batch_size)
    outputs, rates = best_rate(fns, n_masks, args.repeats, args.device)

    n_check = min(n_masks.values())
    diff = {
        f"engine_vs_{name}": float(
            (outputs["engine"][:n_check] - outputs[name][:n_check]).abs().max()
        )
        for name in ("naive", "hooks_batched")
    }
    result = {
        "shape": args.shape,
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "dtype": str(dtype).removeprefix("torch."),
        "model": {
            "n_layers": model.n_layers,
            "n_heads": model.n_heads,
            "d_model": model.hf_model.config.text_config.hidden_size,
            "n_image": engine.n_image,
            "prefix_len": engine.prefix_len,
            "suffix_len": engine.suffix_len,
            "seq_len": sample.seq_len,
        },
        "build_s": build_s,
        "engine_setup_s": setup_s,
        "engine_batch_size": batch_size,
        "ref_batch_size": args.ref_batch_size,
        "repeats": args.repeats,
        "n_masks": n_masks,
        "masks_per_s": rates,
        "speedup": {
            "engine_vs_naive": rates["engine"] / rates["naive"],
            "engine_vs_hooks_batched": rates["engine"] / rates["hooks_batched"],
            "hooks_batched_vs_naive": rates["hooks_batched"] / rates["naive"],
        },
        "max_abs_diff": diff,
    }
    if big:
        flops = suffix_flops_per_mask(engine)
        result["suffix_flops_per_mask"] = flops
        result["peak_flops"] = args.peak_flops
        result["engine_fraction_of_peak"] = flops * rates["engine"] / args.peak_flops
        result["shape_config"] = asdict(shape)
    report(result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


def report(r: dict) -> None:
    m = r["model"]
    print(
        f"{r['shape']} on {r['device_name']} ({r['dtype']}, {r['torch_threads']} threads, load "
        f"{r['load_average'][0]:.1f}): {m['seq_len']} tokens = prefix {m['prefix_len']} + suffix "
        f"{m['suffix_len']}; {m['n_layers']} layers x {m['n_heads']} heads"
    )
    for name, rate in r["masks_per_s"].items():
        print(f"  {name:14s} {rate:10.1f} masks/s   ({r['n_masks'][name]} masks per round)")
    for name, ratio in r["speedup"].items():
        print(f"  {name:24s} {ratio:8.1f}x")
    print(
        f"  engine batch size {r['engine_batch_size']}; setup (prefix) {r['engine_setup_s']:.2f}s"
    )
    print("  max |diff| " + ", ".join(f"{k} {v:.1e}" for k, v in r["max_abs_diff"].items()))
    if "engine_fraction_of_peak" in r:
        print(
            f"  engine: {r['engine_fraction_of_peak']:.1%} of peak "
            f"({r['suffix_flops_per_mask'] / 1e9:.1f} GFLOP per mask, peak {r['peak_flops']:.3g})"
        )


if __name__ == "__main__":
    main()
