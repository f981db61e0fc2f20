"""Full-size rehearsal: LLaVA-1.5-7B's exact shapes, random bf16 weights, from disk to attribution.

1. Writes a random-weight checkpoint with llava-hf/llava-1.5-7b-hf's config (CLIP
   ViT-L/14 at 336 px, 576 image tokens; Vicuna-7B: 32 layers, d_model 4096, 32 heads,
   d_mlp 11008) as bf16 sharded safetensors, in the layout ``save_pretrained(...,
   max_shard_size=...)`` writes (same keys, shard plan and index), one shard at a time:
   the weights are never all in memory, and never in fp32 (:class:`RandomCheckpoint`).
   ``--layers N`` keeps every width and cuts the decoder to N layers.
2. In a child process, loads it with ``HookedLVLM.from_pretrained(path,
   dtype=torch.bfloat16)`` and runs head attribution on 2 random images with the
   fewest masks the fit accepts (``--n-masks``), without the evaluation curves and the
   logit store. ``--via cli`` runs ``tl-lvlm attribute`` (needs its ``--dtype``);
   ``--via api`` runs the same steps through :func:`~tl_lvlm.analysis.heads`;
   ``auto`` picks ``cli`` when the installed CLI has ``--dtype``. The fit needs at
   least ``n_layers * n_heads + 1`` masks after its 10% holdout (1,139 per sample at
   32 layers); ``--via engine`` runs the same per-sample steps without the fit, so any
   ``--n-masks`` can be timed.
3. Reports the child's peak RSS (``ru_maxrss``) over the checkpoint's weight bytes
   (goal <= 1.3), the load time, and seconds per mask apart from the per-sample clean
   run and prefix, as JSON (``--out``) and a short table.

Vocabulary: Vicuna's 32,000 tokens, then ``<image>`` = 32000 and ``<pad>`` = 32001
as llava-hf adds them, and an embedding of 32,064 rows (llava-hf pads it to a multiple
of 64). The tokenizer is the tiny kit's byte-level BPE
(:func:`tl_lvlm.zoo.tiny_llava.build_tokenizer`) with its vocabulary padded to 32,000 by
filler tokens no merge produces (:func:`vicuna_sized_tokenizer`): prompts tokenize as
on the tiny models, the ids and sizes are Vicuna's. The processor is a real
``LlavaProcessor`` with a ``CLIPImageProcessor`` at 336 px.

Random weights: matrices ~ N(0, 1 / fan_in), norm weights 1, biases 0, seeded per
tensor name (the values do not depend on the shard plan).

The child's time is split by timers around ``HookedLVLM.from_pretrained`` (load),
``AblationEngine.__init__`` (per sample: clean run and shared prefix) and
``AblationEngine.run`` (the masks); the rest (baseline K/V, fits, writing results) is
``other_s``. The timers wrap the methods; tl-lvlm's code runs unchanged.

Examples::

    python benchmarks/full_size.py --layers 2 --out full_size-L2.json
    nice -n 10 python benchmarks/full_size.py --out full_size-L32.json   # 14 GB on disk
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from tl_lvlm.inputs.templates import IMAGE_PLACEHOLDER
from tl_lvlm.zoo.tiny_llava import build_processor, build_tokenizer, save_atomic

#: llava-hf/llava-1.5-7b-hf, key by key (the rest are the Llama / CLIP config defaults).
LLAVA_15_7B = {
    "image_token_index": 32000,
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "image_seq_length": 576,
    "tie_word_embeddings": False,
    "text_config": {
        "vocab_size": 32064,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 32001,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 336,
        "patch_size": 14,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
}
VICUNA_VOCAB = 32_000
PAD_TOKEN = "<pad>"
QUESTION = "What is the main object in this image? Answer in a single word."
N_SAMPLES = 2
HOLDOUT = 0.1  # head_attribution's default, which the CLI uses


# ------------------------------------------------------------------ checkpoint
def vicuna_sized_tokenizer():
    """The tiny kit's BPE tokenizer with Vicuna's ids: 32,000 tokens, then ``<image>``, ``<pad>``.

    ``<unk>``, ``<s>``, ``</s>`` keep ids 0-2 and the learned tokens follow; filler
    tokens (``<filler_i>``, in the BPE vocabulary but produced by no merge, so text
    never tokenizes into them) fill the ids up to 31,999; ``<image>`` is 32000 and
    ``<pad>`` 32001 as in llava-hf's tokenizer.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tiny = build_tokenizer()
    spec = json.loads(tiny.backend_tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    tail = [IMAGE_PLACEHOLDER, PAD_TOKEN]
    kept = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1]) if t not in tail]
    fillers = [f"<filler_{i}>" for i in range(VICUNA_VOCAB - len(kept))]
    new_ids = {t: i for i, t in enumerate(kept + fillers + tail)}
    spec["model"]["vocab"] = new_ids
    for added in spec["added_tokens"]:
        added["id"] = new_ids[added["content"]]
    for special in spec["post_processor"]["special_tokens"].values():
        special["ids"] = [new_ids[t] for t in special["tokens"]]
    kwargs = {k: v for k, v in tiny.init_kwargs.items() if k != "backend"}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **kwargs)


def llava_15_7b_config(n_layers: int = 32, *, text: dict | None = None, vision: dict | None = None):
    """LLaVA-1.5-7B's ``LlavaConfig`` with ``n_layers`` decoder layers (every width as in 7B).

    ``text`` / ``vision``: keys of the text / vision config to change (a shrunk
    rehearsal, e.g. ``benchmarks/gpu_check.py --dry-run``).
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    spec = json.loads(json.dumps(LLAVA_15_7B))
    spec["text_config"]["num_hidden_layers"] = n_layers
    spec["text_config"].update(text or {})
    spec["vision_config"].update(vision or {})
    return LlavaConfig(
        text_config=LlamaConfig(**spec.pop("text_config")),
        vision_config=CLIPVisionConfig(**spec.pop("vision_config")),
        architectures=["LlavaForConditionalGeneration"],
        dtype="bfloat16",
        **spec,
    )


class RandomCheckpoint:
    """Random bf16 weights for a ``LlavaConfig``, written like ``save_pretrained`` would.

    The model is built on the meta device (no memory) to get the state dict's names
    and shapes; the names are converted to the on-disk format and split into shards
    with the functions ``save_pretrained`` calls, and each shard's tensors are drawn
    only when that shard is written. Duck-types ``save_pretrained(directory)`` so that
    :func:`tl_lvlm.zoo.tiny_llava.save_atomic` writes it with the processor, atomically.
    """

    def __init__(self, config, *, max_shard_size: str | int = "2GB", seed: int = 0):
        self.config = config
        self.max_shard_size = max_shard_size
        self.seed = seed

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from huggingface_hub import split_torch_state_dict_into_shards
        from transformers import LlavaForConditionalGeneration
        from transformers.core_model_loading import revert_weight_conversion
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
        from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

        directory = Path(directory)
        with torch.device("meta"):
            model = LlavaForConditionalGeneration._from_config(self.config, dtype=torch.bfloat16)
        state = remove_tied_weights_from_state_dict(model.state_dict(), model)
        state = revert_weight_conversion(model, state)
        split = split_torch_state_dict_into_shards(
            state,
            filename_pattern=SAFE_WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors"),
            max_shard_size=self.max_shard_size,
        )
        model.config.save_pretrained(directory)
        model.generation_config.save_pretrained(directory)
        for file, names in tqdm(split.filename_to_tensors.items(), desc="writing shards"):
            shard = {name: self.random_tensor(name, state[name]) for name in names}
            save_file(shard, directory / file, metadata={"format": "pt"})
            del shard
        if split.is_sharded:
            index = {
                "metadata": {"total_parameters": model.num_parameters(), **split.metadata},
                "weight_map": split.tensor_to_filename,
            }
            text = json.dumps(index, indent=2, sort_keys=True) + "\n"
            (directory / SAFE_WEIGHTS_INDEX_NAME).write_text(text)

    def random_tensor(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Norm weights 1, biases 0, other tensors ~ N(0, 1 / fan_in); seeded by ``name``."""
        if name.endswith(".bias"):
            return torch.zeros(like.shape, dtype=like.dtype)
        if like.ndim == 1 and "norm" in name:
            return torch.ones(like.shape, dtype=like.dtype)
        g = torch.Generator().manual_seed(self.seed * 2**32 + zlib.crc32(name.encode()))
        fan_in = max(1, like[0].numel()) if like.ndim > 1 else like.numel()
        return torch.randn(like.shape, generator=g, dtype=like.dtype).mul_(fan_in**-0.5)


def write_checkpoint(
    path: str | os.PathLike, n_layers: int = 32, *, max_shard_size: str | int = "2GB", seed: int = 0
) -> Path:
    """Write a random LLaVA-1.5-7B-shaped checkpoint (``n_layers`` layers) and its processor."""
    tokenizer = vicuna_sized_tokenizer()
    config = llava_15_7b_config(n_layers)
    vision = config.vision_config
    processor = build_processor(tokenizer, vision.image_size, vision.patch_size)
    checkpoint = RandomCheckpoint(config, max_shard_size=max_shard_size, seed=seed)
    return save_atomic(path, checkpoint, processor)


def weight_bytes(path: str | os.PathLike) -> int:
    """Bytes of tensor data in a safetensors checkpoint directory (headers excluded)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for name in f.keys():
                s = f.get_slice(name)
                n = 1
                for d in s.get_shape():
                    n *= d
                total += n * {"BF16": 2, "F16": 2, "F32": 4}[s.get_dtype()]
    return total


def min_masks(n_components: int, holdout: float = HOLDOUT) -> int:
    """The fewest masks head attribution accepts: ``n_components + 1`` left after the holdout."""
    n = n_components + 1
    while int(round(holdout * n)) >= n - n_components:
        n += 1
    return n


# --------------------------------------------------------------------- child
def _status_bytes() -> dict[str, int]:
    """``VmRSS``/``RssAnon``/``RssFile``/``VmHWM`` of this process, in bytes (Linux)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


class _PeakSampler(threading.Thread):
    """Samples this process's RSS; keeps the anonymous / file-backed split at the peak."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, {"VmRSS": 0}, threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            now = _status_bytes()
            if now["VmRSS"] > self.peak["VmRSS"]:
                self.peak = now

    def stop(self) -> dict[str, int]:
        self._done.set()
        self.join()
        return self.peak


def _install_timers(record: dict) -> None:
    """Time HookedLVLM.from_pretrained, AblationEngine.__init__ and AblationEngine.run."""
    from tl_lvlm.ablation.engine import AblationEngine
    from tl_lvlm.model import HookedLVLM

    def timed(fn, key: str, count=None):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            record[key] = record.get(key, 0.0) + time.perf_counter() - t0
            record[f"cpu_{key}"] = record.get(f"cpu_{key}", 0.0) + time.process_time() - c0
            if count is not None:
                record[f"{key}_masks"] = record.get(f"{key}_masks", 0) + count(*args, **kwargs)
            # Memory after each call: which phase set the peak (VmHWM), anonymous vs mapped.
            record.setdefault("phases", []).append({"after": key, **_status_bytes()})
            return out

        return wrapper

    load = HookedLVLM.from_pretrained.__func__
    HookedLVLM.from_pretrained = classmethod(timed(load, "load_s"))
    AblationEngine.__init__ = timed(AblationEngine.__init__, "prefix_s")
    AblationEngine.run = timed(
        AblationEngine.run, "masks_s", lambda self, masks, *a, **k: len(masks)
    )


def _child(report_path: str, spec: dict) -> None:
    """Load and attribute as ``spec`` says, timed; write the measurements to ``report_path``."""
    record: dict = {"rss_start": _status_bytes()}
    sampler = _PeakSampler()
    sampler.start()
    _install_timers(record)
    t0, c0 = time.perf_counter(), time.process_time()
    if spec["via"] == "cli":
        from tl_lvlm.cli import main

        status = main(spec["cli_argv"])
        if status:
            raise SystemExit(f"tl-lvlm attribute exited with {status}")
    else:
        _run_in_process(spec, record)
    record["total_s"] = time.perf_counter() - t0
    record["cpu_total_s"] = time.process_time() - c0
    record["rss_peak_sampled"] = sampler.stop()
    record["ru_maxrss_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record["torch_threads"] = torch.get_num_threads()
    Path(report_path).write_text(json.dumps(record))


def _run_in_process(spec: dict, record: dict) -> None:
    """``--via api``: :func:`head_attribution` as ``tl-lvlm attribute`` calls it;
    ``--via engine``: its per-sample steps (mean baseline over the samples' images, an
    :class:`AblationEngine` per sample, ``engine.run`` on the run's masks) without the fit,
    so that fewer masks than the fit needs can be timed."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    from attribution import sample_masks
    from tl_lvlm.ablation import image_kv_baseline
    from tl_lvlm.ablation.engine import AblationEngine
    from tl_lvlm.analysis.heads import head_attribution
    from tl_lvlm.cli.image_sources import load_image_set
    from tl_lvlm.model import HookedLVLM

    model = HookedLVLM.from_pretrained(spec["model"], dtype=torch.bfloat16, device="cpu")
    images = load_image_set(
        "random", n=spec["n_samples"], image_size=model.image_size, seed=spec["seed"]
    )
    if spec["via"] == "api":
        result = head_attribution(
            model,
            [(image, spec["question"]) for image in images.images],
            labels=images.labels,
            n_masks=spec["n_masks"],
            min_logit_gap=0.0,
            seed=spec["seed"],
            batch_size=spec["batch_size"],
            evaluate=False,
        )
        Path(spec["out"]).mkdir(parents=True, exist_ok=True)
        result.save(Path(spec["out"]) / "results.safetensors")
        record["n_kept"] = int(len(result.sample_ids))
        return
    inputs = model.prepare(images.images, spec["question"])
    baseline = image_kv_baseline(model, inputs)
    n_components = model.n_layers * model.n_heads
    masks = sample_masks(spec["n_masks"], n_components, seed=spec["seed"])
    masks = torch.from_numpy(masks).reshape(-1, model.n_layers, model.n_heads)
    for i in range(inputs.batch_size):
        engine = AblationEngine(model, inputs[i], baseline)
        engine.run(masks, batch_size=spec["batch_size"], progress=True)
    record["n_kept"] = inputs.batch_size


# -------------------------------------------------------------------- parent
def wait_for_memory(need: int, minutes: float) -> int:
    """Wait (up to ``minutes``) until ``need`` bytes of RAM are available; return what is.

    The machine may be shared: the child is started only when the checkpoint fits.
    """
    import psutil

    deadline = time.monotonic() + 60 * minutes
    while (available := psutil.virtual_memory().available) < need:
        if time.monotonic() >= deadline:
            raise SystemExit(
                f"only {available / 2**30:.1f} GiB of RAM available, the run needs about "
                f"{need / 2**30:.1f} GiB; retry later or pass --wait-memory MINUTES"
            )
        print(f"waiting for {need / 2**30:.1f} GiB of RAM ({available / 2**30:.1f} available)")
        time.sleep(60)
    return available


def cli_has_dtype() -> bool:
    """Whether the installed ``tl-lvlm attribute`` takes ``--dtype``."""
    from tl_lvlm.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "--dtype" in sub.choices["attribute"]._option_string_actions


def cli_argv(spec: dict) -> list[str]:
    """``tl-lvlm`` arguments for the rehearsal's attribute run."""
    return [
        *(["--threads", str(spec["threads"])] if spec["threads"] else []),
        "attribute", "--model", spec["model"], "--images", "random",
        "--n-samples", str(spec["n_samples"]), "--n-masks", str(spec["n_masks"]),
        "--question", spec["question"], "--seed", str(spec["seed"]),
        "--batch-size", str(spec["batch_size"]), "--out", spec["out"],
        "--dtype", "bfloat16", "--device", "cpu",
        "--min-logit-gap", "0", "--no-evaluate", "--no-store", "--quiet",
    ]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--layers", type=int, default=32, help="decoder layers (every width stays 7B's)")
    add("--n-masks", type=int, default=None, help="per sample; default: the fewest the fit takes")
    add(
        "--batch-size",
        type=int,
        default=64,
        help="masks per call: engine.run's batch (engine), head_attribution's (api, cli)",
    )
    add(
        "--via",
        choices=("auto", "cli", "api", "engine"),
        default="auto",
        help="cli: tl-lvlm attribute; api: head_attribution; engine: its steps without the fit "
        "(any mask count); auto: cli when it has --dtype, else api",
    )
    add("--threads", type=int, default=None, help="torch threads in the child (default: torch's)")
    add("--checkpoint", type=Path, default=None, help="where to write it (default: under /tmp)")
    add("--keep-checkpoint", action="store_true", help="keep it (and reuse it if it exists)")
    add("--max-shard-size", default="2GB")
    add("--seed", type=int, default=0)
    add(
        "--wait-memory",
        type=float,
        default=0.0,
        help="minutes to wait for 1.35 x the weight bytes of available RAM before loading",
    )
    add("--out", type=Path, default=None, help="write the results as JSON here")
    add("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child is not None:
        _child(args.child, json.loads(sys.stdin.read()))
        return None
    via = args.via
    if via == "auto":
        via = "cli" if cli_has_dtype() else "api"
    elif via == "cli" and not cli_has_dtype():
        raise SystemExit("--via cli needs tl-lvlm attribute --dtype, which this install lacks")
    n_components = args.layers * LLAVA_15_7B["text_config"]["num_attention_heads"]
    n_masks = args.n_masks or min_masks(n_components)
    if via != "engine" and n_masks < min_masks(n_components):
        raise SystemExit(
            f"--via {via} fits {n_components} heads, which takes at least "
            f"{min_masks(n_components)} masks per sample; use more or --via engine"
        )
    work = Path(tempfile.mkdtemp(prefix="tl-lvlm-full-size-"))
    checkpoint = args.checkpoint or Path("/tmp") / f"tl-lvlm-llava-1.5-7b-L{args.layers}"
    try:
        t0 = time.perf_counter()
        written = not (args.keep_checkpoint and (checkpoint / "config.json").is_file())
        if written:
            write_checkpoint(
                checkpoint, args.layers, max_shard_size=args.max_shard_size, seed=args.seed
            )
        write_s = time.perf_counter() - t0
        n_bytes = weight_bytes(checkpoint)
        available = wait_for_memory(int(1.35 * n_bytes), args.wait_memory)
        spec = {
            "via": via,
            "model": str(checkpoint),
            "n_samples": N_SAMPLES,
            "n_masks": n_masks,
            "question": QUESTION,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "out": str(work / "run"),
        }
        spec["cli_argv"] = cli_argv(spec)
        report = work / "child.json"
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(report)]
        t0 = time.perf_counter()
        subprocess.run(cmd, input=json.dumps(spec), text=True, check=True)
        child_wall_s = time.perf_counter() - t0
        child = json.loads(report.read_text())
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep_checkpoint:
            shutil.rmtree(checkpoint, ignore_errors=True)
    result = summarize(args, via, n_masks, n_bytes, peak, write_s, written, child_wall_s, child)
    result["ram_available_before_load_bytes"] = available
    print_table(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def summarize(args, via, n_masks, n_bytes, peak, write_s, written, child_wall_s, child) -> dict:
    masks = child.get("masks_s_masks", 0)
    gib = 2**30
    return {
        "benchmark": "full_size",
        "via": via,
        "model": {
            "config": "llava-hf/llava-1.5-7b-hf",
            "n_layers": args.layers,
            "d_model": LLAVA_15_7B["text_config"]["hidden_size"],
            "n_heads": LLAVA_15_7B["text_config"]["num_attention_heads"],
            "d_mlp": LLAVA_15_7B["text_config"]["intermediate_size"],
            "vocab_size": LLAVA_15_7B["text_config"]["vocab_size"],
            "dtype": "bfloat16",
        },
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": child["torch_threads"],
            "load_average": os.getloadavg(),
        },
        "weight_bytes": n_bytes,
        "peak_rss_bytes": peak,
        "peak_rss_over_weights": peak / n_bytes,
        "rss_before_load_bytes": child["rss_start"]["VmRSS"],
        "rss_after_load_bytes": next(p for p in child["phases"] if p["after"] == "load_s")["VmRSS"],
        "peak_rss_split_bytes": child["rss_peak_sampled"],
        "checkpoint_written": written,
        "write_s": write_s,
        "load_s": child["load_s"],
        "prefix_s_per_sample": child.get("prefix_s", 0.0) / N_SAMPLES,
        "masks_run": masks,
        "masks_s": child.get("masks_s", 0.0),
        "seconds_per_mask": child.get("masks_s", 0.0) / masks if masks else None,
        "other_s": child["total_s"]
        - child["load_s"]
        - child.get("prefix_s", 0.0)
        - child.get("masks_s", 0.0),
        # CPU seconds of all threads: less sensitive than wall time to a busy machine.
        "cpu_load_s": child["cpu_load_s"],
        "cpu_prefix_s_per_sample": child.get("cpu_prefix_s", 0.0) / N_SAMPLES,
        "cpu_seconds_per_mask": child.get("cpu_masks_s", 0.0) / masks if masks else None,
        "cpu_total_s": child["cpu_total_s"],
        "child_wall_s": child_wall_s,
        "memory_by_phase": child["phases"],
        "n_samples": N_SAMPLES,
        "samples_kept": child.get("n_kept"),  # None with --via cli (see its summary.json)
        "n_masks_per_sample": n_masks,
        "batch_size": args.batch_size,
        "goal_peak_rss_over_weights": 1.3,
        "weight_gib": n_bytes / gib,
    }


def print_table(r: dict) -> None:
    gib = 2**30
    rows = [
        ("via", r["via"]),
        ("layers", f"{r['model']['n_layers']} (widths of LLaVA-1.5-7B, bf16)"),
        ("weights", f"{r['weight_bytes'] / gib:.2f} GiB"),
        ("peak RSS", f"{r['peak_rss_bytes'] / gib:.2f} GiB"),
        ("peak RSS / weights", f"{r['peak_rss_over_weights']:.3f} (goal <= 1.3)"),
        ("RSS before load", f"{r['rss_before_load_bytes'] / gib:.2f} GiB"),
        ("write", f"{r['write_s']:.1f} s" + ("" if r["checkpoint_written"] else " (reused)")),
        ("load", f"{r['load_s']:.1f} s (CPU {r['cpu_load_s']:.1f} s)"),
        (
            "clean run + prefix",
            f"{r['prefix_s_per_sample']:.1f} s per sample "
            f"(CPU {r['cpu_prefix_s_per_sample']:.1f} s)",
        ),
        (
            "masks",
            f"{r['masks_run']} in {r['masks_s']:.1f} s = {r['seconds_per_mask'] or 0:.3f} s/mask "
            f"(CPU {r['cpu_seconds_per_mask'] or 0:.3f} s/mask)",
        ),
        ("other", f"{r['other_s']:.1f} s (baseline K/V, fits, writing)"),
        ("load average", " ".join(f"{x:.1f}" for x in r["machine"]["load_average"])),
        ("threads", f"{r['machine']['torch_threads']} of {r['machine']['cpu_count']} cores"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
