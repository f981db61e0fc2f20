"""Train the bundled tiny LLaVA on handwritten digits (CPU, deterministic).

    python -m tl_lvlm.zoo.train_digits --out DIR [--steps N] [--seed S]

The model is a complete ``LlavaForConditionalGeneration`` built by
:func:`tl_lvlm.tiny_llava.build_tiny_llava` (CLIP vision tower, projector, Llama
decoder), trained from scratch, every parameter, on the LLaVA-1.5 prompt
``USER: <image>\\nWhat is the main object in this image? Answer in a single word.
ASSISTANT:`` followed by the digit word and ``</s>``. The loss is cross-entropy on
the answer token at the final prompt position plus on ``</s>`` after it. The text
tokens can only see the image through the decoder's attention, so the answer is
carried from image to text by attention heads; nothing bypasses them.

Training images are drawn from :data:`TRAIN_STYLES` (fresh per-epoch seeds for the
random styles); the other styles of :data:`tl_lvlm.zoo.digits.STYLES` are held
out and only evaluated. Everything is seeded and runs with
``torch.use_deterministic_algorithms(True)``: the same arguments on the same
machine and thread count give bit-identical weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tl_lvlm.tiny_llava import DIGIT_WORDS, TinyLlavaConfig, build_tiny_llava
from tl_lvlm.zoo import DIGITS_QUESTION, digit_token_ids, digits_prompt, evaluate_accuracy
from tl_lvlm.zoo.digits import STYLES, digit_arrays, load_digit_images, render_images

#: Styles the bundled model is trained on; the rest of ``STYLES`` is held out.
TRAIN_STYLES = ("original", "inverted", "shifted", "noisy")


def default_model_config(seed: int = 0) -> TinyLlavaConfig:
    """Shapes of the bundled model: 8 layers x 8 query heads (4 K/V heads), 64 image tokens."""
    return TinyLlavaConfig(
        n_layers=8,
        n_heads=8,
        n_kv_heads=4,
        d_model=128,
        d_mlp=256,
        image_size=32,
        patch_size=4,
        vision_layers=1,
        vision_d_model=64,
        vision_heads=4,
        bpe_vocab_size=512,
        max_position_embeddings=256,
        seed=seed,
        init_scale=1.0,
        # Each answer word with its leading space becomes one BPE token.
        corpus=[" " + " ".join(DIGIT_WORDS)] * 4,
    )


@dataclass
class TrainConfig:
    steps: int = 800
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    train_styles: tuple[str, ...] = TRAIN_STYLES
    question: str = DIGITS_QUESTION
    eos_loss: bool = True
    eval_every: int = 200
    model: TinyLlavaConfig = field(default_factory=default_model_config)


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


class _EpochStream:
    """Deterministic stream of (pixel_values, labels) batches.

    Each epoch is a fixed permutation of the training split; every image gets a
    style drawn from ``train_styles`` and, for the random styles, a seed that
    changes per epoch, so shifts and noise are fresh augmentations.
    """

    def __init__(self, processor, cfg: TrainConfig):
        self.processor = processor
        self.cfg = cfg
        self.ink, self.labels, self.idx = digit_arrays("train")
        self.epoch = -1
        self.pos = 0
        self.pixels: torch.Tensor | None = None
        self.order: np.ndarray | None = None

    def _new_epoch(self) -> None:
        self.epoch += 1
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 7919, self.epoch])
        n = len(self.labels)
        styles = rng.integers(0, len(cfg.train_styles), size=n)
        style_seed = cfg.seed * 100_003 + self.epoch + 1
        images = [None] * n
        for s, style in enumerate(cfg.train_styles):
            sel = np.flatnonzero(styles == s)
            rendered = render_images(self.ink[sel], self.idx[sel], style, style_seed)
            for i, im in zip(sel, rendered, strict=True):
                images[i] = im
        self.pixels = self.processor.image_processor(images=images, return_tensors="pt")[
            "pixel_values"
        ]
        self.order = rng.permutation(n)
        self.pos = 0

    def next(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.order is None or self.pos + batch_size > len(self.order):
            self._new_epoch()
        sel = self.order[self.pos : self.pos + batch_size]
        self.pos += batch_size
        return self.pixels[sel], torch.as_tensor(self.labels[sel])


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)


def evaluate_styles(model, processor, split: str = "test", seed: int = 0) -> dict[str, float]:
    """Accuracy of ``model`` on ``split`` in every style of ``STYLES``."""
    out = {}
    for style in STYLES:
        images, labels = load_digit_images(split, style, seed=seed)
        out[style] = evaluate_accuracy(model, processor, images, labels)
    return out


def train(
    cfg: TrainConfig | None = None,
    log: Callable[[str], None] | None = print,
    evaluate: bool = True,
):
    """Train a tiny LLaVA on digits; returns ``(model, processor, info)``.

    ``info`` holds the losses, wall time and (if ``evaluate``) held-out accuracy
    per style. The model is returned in eval mode.
    """
    cfg = cfg or TrainConfig()
    log = log or (lambda _msg: None)
    _set_determinism(cfg.seed)
    t0 = time.perf_counter()
    model, processor = build_tiny_llava(cfg.model)
    # LlavaConfig defaults to LLaVA-1.5's 576; record the real span (metadata only).
    model.config.image_seq_length = cfg.model.n_image_tokens
    tok = processor.tokenizer
    word_ids = torch.tensor(digit_token_ids(tok))

    prompt = digits_prompt(cfg.question)
    probe, _ = load_digit_images("test", "original")
    prompt_ids = processor(images=probe[:1], text=[prompt], return_tensors="pt")["input_ids"][0]
    n_image = int((prompt_ids == model.config.image_token_id).sum())
    if n_image != cfg.model.n_image_tokens:
        raise RuntimeError(
            f"prompt has {n_image} image tokens, expected {cfg.model.n_image_tokens}"
        )
    eos = torch.tensor([tok.eos_token_id])

    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    stream = _EpochStream(processor, cfg)

    losses: list[float] = []
    step_times: list[float] = []
    evals: list[dict] = []
    load_start = _loadavg()
    model.train()
    for step in range(cfg.steps):
        t_step = time.perf_counter()
        pixels, labels = stream.next(cfg.batch_size)
        answer = word_ids[labels]
        b = len(labels)
        # Inputs: the prompt, plus the answer token when </s> is trained too. The
        # logits kept are those of the final prompt position (-> answer) and, with
        # eos_loss, of the answer position (-> </s>).
        if cfg.eos_loss:
            input_ids = torch.cat([prompt_ids.expand(b, -1), answer[:, None]], dim=1)
        else:
            input_ids = prompt_ids.expand(b, -1).contiguous()
        n_keep = 2 if cfg.eos_loss else 1
        logits = model(
            input_ids=input_ids,
            pixel_values=pixels,
            attention_mask=torch.ones_like(input_ids),
            logits_to_keep=n_keep,
        ).logits
        loss = F.cross_entropy(logits[:, 0], answer)
        if cfg.eos_loss:
            loss = loss + F.cross_entropy(logits[:, 1], eos.expand(b))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        step_times.append(time.perf_counter() - t_step)
        if (step + 1) % 50 == 0 or step == 0:
            recent = float(np.mean(losses[-50:]))
            log(
                f"step {step + 1}/{cfg.steps} loss {recent:.4f} lr {sched.get_last_lr()[0]:.2e} "
                f"epoch {stream.epoch} {time.perf_counter() - t0:.0f}s"
            )
        if evaluate and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            images, y = load_digit_images("test", "original")
            acc = evaluate_accuracy(model, processor, images, y)
            evals.append({"step": step + 1, "test_original": acc})
            log(f"  step {step + 1}: held-out accuracy (original) {acc:.4f}")
            model.train()
    train_time = time.perf_counter() - t0
    model.eval()
    info = {
        "steps": cfg.steps,
        "seed": cfg.seed,
        "epochs_seen": round(cfg.steps * cfg.batch_size / len(stream.labels), 2),
        "train_wall_time_s": round(train_time, 1),
        # The wall time depends on what else runs on the machine: the fastest
        # step approximates the uncontended cost, the load averages say how busy
        # the machine was.
        "step_time_s": {
            "min": round(min(step_times), 4) if step_times else None,
            "median": round(float(np.median(step_times)), 4) if step_times else None,
        },
        "load_average_start_end": [load_start, _loadavg()],
        "final_loss_mean_last50": float(np.mean(losses[-50:])) if losses else None,
        "losses": losses,
        "evals": evals,
        "n_image_tokens": n_image,
        "prompt": prompt,
        "prompt_length": int(prompt_ids.numel()),
    }
    if evaluate:
        info["test_accuracy"] = evaluate_styles(model, processor, "test")
        info["train_accuracy_original"] = evaluate_accuracy(
            model, processor, *load_digit_images("train", "original")
        )
        log(f"held-out accuracy per style: {info['test_accuracy']}")
    return model, processor, info


def _config_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["train_styles"] = list(cfg.train_styles)
    d["held_out_styles"] = [s for s in STYLES if s not in cfg.train_styles]
    return d


def config_from_record(record: dict) -> TrainConfig:
    """The :class:`TrainConfig` a ``training.json`` was written with."""
    d = dict(record["config"])
    model = TinyLlavaConfig(**d.pop("model"))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs = {k: v for k, v in d.items() if k in names}
    kwargs["train_styles"] = tuple(kwargs["train_styles"])
    return TrainConfig(**kwargs, model=model)


def save(model, processor, info: dict, cfg: TrainConfig, out: str | os.PathLike, overwrite=False):
    """Write model (safetensors), processor and ``training.json`` atomically to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        record = {
            "model": "tl-lvlm/tiny-digits",
            "data": "sklearn.datasets.load_digits, stratified 80/20 split (random_state=0)",
            "config": _config_dict(cfg),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "environment": {
                "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                "torch_threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "python": platform.python_version(),
            },
            **{k: v for k, v in info.items() if k != "losses"},
            "loss_every_50_steps": [round(x, 5) for x in info["losses"][::50]],
        }
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        # mkdtemp makes a private directory; a checkpoint is meant to be shared.
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        model=default_model_config(args.seed),
    )
    model, processor, info = train(cfg)
    out = save(model, processor, info, cfg, args.out, overwrite=args.overwrite)
    print(f"saved to {out} ({info['train_wall_time_s']}s)")


if __name__ == "__main__":
    main()
