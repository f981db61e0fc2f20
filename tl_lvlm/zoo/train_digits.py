"""Train the bundled tiny LLaVA on handwritten digits (CPU, deterministic).

    python -m tl_lvlm.zoo.train_digits --out DIR --threads 2 [--steps N] [--seed S]

The model is a complete ``LlavaForConditionalGeneration`` built by
:func:`tl_lvlm.zoo.tiny_llava.build_tiny_llava` (CLIP vision tower, projector, Llama
decoder), trained from scratch in LLaVA's two stages:

1. **Vision pre-training** (:func:`pretrain_vision`, standing in for CLIP's
   pre-training): the vision tower and projector learn to tell the digit, its ink and
   its background from the mean of the image tokens the decoder will read, through a
   linear read-out that is then thrown away. Trained end to end through the decoder
   only, the tower never starts reading the digit's *shape* once size, position and
   colours vary (docs/tiny-digits-v2-attempts.md: five runs at chance).
2. **Instruction tuning** (:func:`train`): the projector and the decoder learn the four
   questions of :mod:`tl_lvlm.zoo.questions`, the vision tower follows at
   ``tower_lr_ratio`` (0.1) times the learning rate. LLaVA freezes it
   (``tower_lr_ratio=0``); frozen, this tower cannot tell the ink from the background.

Each example is one training digit drawn in a fresh random
:class:`~tl_lvlm.zoo.digits.Appearance` (size, position, colours, resampling filter;
the ``plain`` style only), asked one of the four questions in one of its training
phrasings, inside the LLaVA-1.5 prompt ``USER: <image>\\n{question} ASSISTANT:``. The
loss is cross-entropy on the answer token at the final prompt position plus on
``</s>`` after it. The text tokens can only see the image through the decoder's
attention, so the answer is carried from image to text by attention heads; nothing
bypasses them.

Held out of training entirely: the test digits (fixed 80/20 split), the appearance
styles ``thick``, ``outline`` and ``noisy``, and each task's held-out phrasings.
Everything is seeded and runs with ``torch.use_deterministic_algorithms(True)``: the
same arguments on the same machine and thread count give bit-identical weights.
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
from PIL import Image

from tl_lvlm.zoo import answer_accuracy, evaluate_digits
from tl_lvlm.zoo.digits import (
    digit_arrays,
    load_digit_set,
    render_digit,
    sample_appearance,
)
from tl_lvlm.zoo.questions import ANSWER_WORDS, COLORS, TASKS, answer_token_ids, prompt
from tl_lvlm.zoo.tiny_llava import TinyLlavaConfig, build_tiny_llava

#: Version of the bundled model this script trains (the model card's).
VERSION = 2


def tokenizer_corpus() -> list[str]:
    """Text the BPE merges are learned from: every answer word and every phrasing."""
    words = [" " + " ".join(ANSWER_WORDS)] * 8
    return words + [prompt(q) for t in TASKS.values() for q in t.phrasings]


def default_model_config(seed: int = 0) -> TinyLlavaConfig:
    """Shapes of the bundled model: 12 layers x 8 query heads (4 K/V heads), 36 image tokens."""
    return TinyLlavaConfig(
        n_layers=12,
        n_heads=8,
        n_kv_heads=4,
        d_model=128,
        d_mlp=256,
        image_size=24,
        patch_size=4,
        # Four CLIP layers of which LLaVA reads the third's output: recognising a digit
        # at any size and place needs the patches mixed before the causal decoder.
        vision_layers=4,
        vision_d_model=128,
        vision_heads=4,
        bpe_vocab_size=512,
        max_position_embeddings=256,
        seed=seed,
        init_scale=1.0,
        corpus=tokenizer_corpus(),
    )


def _default_task_weights() -> dict[str, float]:
    # Reading the digit (object, parity) is harder than reading a colour.
    return {"object": 0.45, "ink": 0.14, "background": 0.14, "parity": 0.27}


@dataclass
class TrainConfig:
    steps: int = 2500
    batch_size: int = 32
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    warmup_steps: int = 60
    grad_clip: float = 1.0
    seed: int = 0
    task_weights: dict[str, float] = field(default_factory=_default_task_weights)
    p_full_frame: float = 0.5
    p_grey: float = 0.4
    #: Stage 1 (:func:`pretrain_vision`); ``vision_steps=0`` skips it.
    vision_steps: int = 9000
    vision_batch_size: int = 128
    vision_lr: float = 3e-3
    #: Stage 2 learning rate of the vision tower, as a fraction of ``lr``; 0 freezes it
    #: (LLaVA's recipe), which left ink and background confused (docs/tiny-digits-v2-attempts.md).
    tower_lr_ratio: float = 0.1
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


def _render_epoch(processor, ink: np.ndarray, rng: np.random.Generator, cfg: "TrainConfig"):
    """One fresh random appearance per scan: ``(appearances, pixel_values)``."""
    mix = {"p_full_frame": cfg.p_full_frame, "p_grey": cfg.p_grey}
    appearances = [sample_appearance(rng, "plain", **mix) for _ in range(len(ink))]
    images = [render_digit(a8, a) for a8, a in zip(ink, appearances, strict=True)]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    return appearances, pixels


def _image_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """``[batch, n_image_tokens, d_model]``: what the decoder receives for each image."""
    features = model.model.get_image_features(pixel_values=pixels)
    if not isinstance(features, torch.Tensor):  # transformers returns an output object
        features = features.pooler_output
    return torch.stack(list(features)) if isinstance(features, (list, tuple)) else features


def pretrain_vision(
    model, processor, cfg: "TrainConfig", log: Callable[[str], None] = print
) -> dict:
    """Stage 1: train the vision tower and projector to read digit, ink and background.

    A linear read-out of the mean image token (the decoder's input) classifies the
    digit (10 classes), the ink and the background colour (6 each) of training digits
    in fresh random appearances; loss ``CE(digit) + 0.25 * (CE(ink) + CE(background))``.
    The read-out is discarded; returns the stage's record (losses, wall time, the
    digit accuracy of the read-out on the held-out digits in the ``coloured`` style).
    """
    t0 = time.perf_counter()
    ink, labels, _ = digit_arrays("train")
    colour = {c: i for i, c in enumerate(COLORS)}
    d_model = model.config.text_config.hidden_size
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    head = torch.nn.Linear(d_model, 10 + 2 * len(COLORS))
    with torch.no_grad():
        head.weight.normal_(0.0, d_model**-0.5, generator=gen)
        head.bias.zero_()
    params = [
        *model.model.vision_tower.parameters(),
        *model.model.multi_modal_projector.parameters(),
    ]
    opt = torch.optim.AdamW([*params, *head.parameters()], lr=cfg.vision_lr, weight_decay=0.01)
    warmup = max(1, cfg.vision_steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.vision_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def logits_of(pixels: torch.Tensor) -> torch.Tensor:
        return head(_image_tokens(model, pixels).mean(dim=1))

    losses: list[float] = []
    epoch, pos, order = -1, len(labels), None
    model.train()
    for step in range(cfg.vision_steps):
        if pos + cfg.vision_batch_size > len(labels):
            epoch += 1
            rng = np.random.default_rng([cfg.seed, 104729, epoch])
            appearances, pixels = _render_epoch(processor, ink, rng, cfg)
            targets = torch.tensor(
                [
                    (int(y), colour[a.ink], colour[a.background])
                    for y, a in zip(labels, appearances, strict=True)
                ]
            )
            order, pos = torch.from_numpy(rng.permutation(len(labels))), 0
        sel = order[pos : pos + cfg.vision_batch_size]
        pos += cfg.vision_batch_size
        out = logits_of(pixels[sel])
        t = targets[sel]
        loss = F.cross_entropy(out[:, :10], t[:, 0]) + 0.25 * (
            F.cross_entropy(out[:, 10 : 10 + len(COLORS)], t[:, 1])
            + F.cross_entropy(out[:, 10 + len(COLORS) :], t[:, 2])
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*params, *head.parameters()], cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step == 0:
            log(
                f"vision step {step + 1}/{cfg.vision_steps} loss {np.mean(losses[-100:]):.4f} "
                f"epoch {epoch} {time.perf_counter() - t0:.0f}s"
            )
    model.eval()
    test = load_digit_set("test", "coloured")
    pixels = processor.image_processor(images=test.images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pred = logits_of(pixels)[:, :10].argmax(-1).numpy()
    record = {
        "steps": cfg.vision_steps,
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "final_loss_mean_last100": float(np.mean(losses[-100:])) if losses else None,
        "loss_every_100_steps": [round(x, 5) for x in losses[::100]],
        "test_coloured_digit_readout_accuracy": float(np.mean(pred == test.labels)),
    }
    log(f"vision stage: {record['test_coloured_digit_readout_accuracy']:.3f} read-out accuracy")
    return record


class _EpochStream:
    """Deterministic stream of training batches.

    Each epoch is a fixed permutation of the training split; every image gets a fresh
    random appearance, a task drawn by ``task_weights`` and one of that task's
    training phrasings. Batches are right-padded: causal attention keeps the padding
    invisible to the real tokens, whose positions are those of an unpadded prompt.
    """

    def __init__(self, processor, cfg: TrainConfig):
        self.processor = processor
        self.cfg = cfg
        self.ink, self.labels, self.idx = digit_arrays("train")
        tok = processor.tokenizer
        probe = Image.new("RGB", (cfg.model.image_size,) * 2)
        self.tasks = list(cfg.task_weights)
        weights = np.asarray([cfg.task_weights[t] for t in self.tasks], dtype=np.float64)
        self.p_task = weights / weights.sum()
        #: prompt token ids per (task, phrasing)
        self.prompts = {
            t: [
                processor(images=[probe], text=[prompt(q)], return_tensors="pt")["input_ids"][0]
                for q in TASKS[t].train_phrasings
            ]
            for t in self.tasks
        }
        self.answer_ids = {t: answer_token_ids(tok, TASKS[t].answers) for t in self.tasks}
        self.pad_id = tok.pad_token_id
        self.epoch = -1
        self.pos = 0

    def _new_epoch(self) -> None:
        self.epoch += 1
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 7919, self.epoch])
        n = len(self.labels)
        appearances, self.pixels = _render_epoch(self.processor, self.ink, rng, cfg)
        task_of = rng.choice(len(self.tasks), size=n, p=self.p_task)
        self.items = []
        for i in range(n):
            name = self.tasks[task_of[i]]
            task = TASKS[name]
            k = int(rng.integers(len(task.train_phrasings)))
            word = task.answer(int(self.labels[i]), appearances[i].ink, appearances[i].background)
            self.items.append(
                (self.prompts[name][k], self.answer_ids[name][task.answers.index(word)])
            )
        self.order = rng.permutation(n)
        self.pos = 0

    def next(
        self, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(pixel_values, input_ids, final_prompt_pos, answer_ids)`` of one batch.

        ``input_ids`` is each prompt followed by its answer token, right-padded.
        """
        if self.epoch < 0 or self.pos + batch_size > len(self.order):
            self._new_epoch()
        sel = self.order[self.pos : self.pos + batch_size]
        self.pos += batch_size
        items = [self.items[i] for i in sel]
        width = max(len(p) for p, _ in items) + 1
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        last = torch.empty(len(items), dtype=torch.long)
        answers = torch.empty(len(items), dtype=torch.long)
        for r, (p, a) in enumerate(items):
            ids[r, : len(p)] = p
            ids[r, len(p)] = a
            last[r] = len(p) - 1
            answers[r] = a
        return self.pixels[sel], ids, last, answers


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)


def train(
    cfg: TrainConfig | None = None,
    log: Callable[[str], None] | None = print,
    evaluate: bool = True,
):
    """Train a tiny LLaVA on digits; returns ``(model, processor, info)``.

    ``info`` holds the losses, the wall time and (if ``evaluate``) the held-out
    accuracy on the main-object question every ``eval_every`` steps; the full
    evaluation is :mod:`tl_lvlm.zoo.evaluate_digits`. The model is returned in eval mode.
    """
    cfg = cfg or TrainConfig()
    log = log or (lambda _msg: None)
    unknown = set(cfg.task_weights) - set(TASKS)
    if unknown:
        raise ValueError(
            f"unknown tasks {sorted(unknown)} in task_weights; choose from {tuple(TASKS)}"
        )
    if cfg.tower_lr_ratio < 0:
        raise ValueError(f"tower_lr_ratio must be >= 0, got {cfg.tower_lr_ratio}")
    _set_determinism(cfg.seed)
    t0 = time.perf_counter()
    model, processor = build_tiny_llava(cfg.model)
    tok = processor.tokenizer
    stream = _EpochStream(processor, cfg)
    n_image = int((stream.prompts["object"][0] == model.config.image_token_id).sum())
    if n_image != cfg.model.n_image_tokens:
        raise RuntimeError(
            f"prompt has {n_image} image tokens, expected {cfg.model.n_image_tokens}"
        )
    eos = tok.eos_token_id
    vision_record = pretrain_vision(model, processor, cfg, log) if cfg.vision_steps else None
    if cfg.tower_lr_ratio == 0:
        model.model.vision_tower.requires_grad_(False)
    groups = []
    for in_tower, lr in ((False, cfg.lr), (True, cfg.lr * cfg.tower_lr_ratio)):
        named = [
            (n, p)
            for n, p in model.named_parameters()
            if p.requires_grad and n.startswith("model.vision_tower.") == in_tower
        ]
        for decays in (True, False):
            params = [p for n, p in named if (p.ndim >= 2 and "embed" not in n) == decays]
            if params:
                wd = cfg.weight_decay if decays else 0.0
                groups.append({"params": params, "lr": lr, "weight_decay": wd})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))

    losses: list[float] = []
    step_times: list[float] = []
    evals: list[dict] = []
    load_start = _loadavg()
    model.train()
    for step in range(cfg.steps):
        t_step = time.perf_counter()
        pixels, input_ids, last, answer = stream.next(cfg.batch_size)
        rows = torch.arange(len(answer))
        # Only the final prompt position (-> answer) and, with eos_loss, the answer
        # position (-> </s>) reach the unembedding.
        hidden = model.model(input_ids=input_ids, pixel_values=pixels).last_hidden_state
        logits = model.lm_head(hidden[rows, last])
        loss = F.cross_entropy(logits, answer)
        if cfg.eos_loss:
            logits_eos = model.lm_head(hidden[rows, last + 1])
            loss = loss + F.cross_entropy(logits_eos, torch.full_like(answer, eos))
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
            record = {"step": step + 1, "elapsed_s": round(time.perf_counter() - t0, 1)}
            digits = load_digit_set("test", "coloured")
            ids = np.asarray(answer_token_ids(tok, TASKS["object"].answers))
            record["test_coloured_object"] = answer_accuracy(
                model, processor, digits.images, [TASKS["object"].question], ids[digits.labels]
            )
            evals.append(record)
            log(f"  {record}")
            model.train()
    train_time = time.perf_counter() - t0
    model.eval()
    info = {
        "version": VERSION,
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
        "vision_stage": vision_record,
        "n_image_tokens": n_image,
        "prompt": prompt(TASKS["object"].question),
        "prompt_length": int(stream.prompts["object"][0].numel()),
    }
    return model, processor, info


def _config_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_record(record: dict) -> TrainConfig:
    """The :class:`TrainConfig` a ``training.json`` was written with."""
    d = dict(record["config"])
    model = TinyLlavaConfig(**d.pop("model"))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names}, model=model)


def save(model, processor, info: dict, cfg: TrainConfig, out: str | os.PathLike, overwrite=False):
    """Write model (safetensors), processor and ``training.json`` atomically to ``out``.

    A model card ``README.md`` already in ``out`` is kept.
    """
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
        card = out / "README.md"
        if card.is_file():
            shutil.copy2(card, tmp / "README.md")
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
    p.add_argument(
        "--tower-lr-ratio",
        type=float,
        default=TrainConfig.tower_lr_ratio,
        help="stage-2 learning rate of the vision tower as a fraction of --lr (0: frozen)",
    )
    p.add_argument("--eval-every", type=int, default=TrainConfig.eval_every)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--no-eval", action="store_true", help="skip the final evaluation (evaluate_digits)"
    )
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        tower_lr_ratio=args.tower_lr_ratio,
        eval_every=args.eval_every,
        model=default_model_config(args.seed),
    )
    model, processor, info = train(cfg)
    # Saved before the (long) evaluation, so that a failure there loses no training.
    out = save(model, processor, info, cfg, args.out, overwrite=args.overwrite)
    if not args.no_eval:
        from tl_lvlm import HookedLVLM

        model = HookedLVLM.from_pretrained(out, device="cpu")
        evaluate_digits.update_record(out, evaluate_digits.evaluate(model))
    print(f"saved to {out} ({info['train_wall_time_s']}s)")


if __name__ == "__main__":
    main()
