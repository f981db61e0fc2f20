"""Measure ``tl-lvlm/tiny-digits`` as a user would: through ``HookedLVLM.prepare``.

    python -m tl_lvlm.zoo.evaluate_digits [--model tl-lvlm/tiny-digits] [--update]

Three measurements, each the fraction of images whose greedy first answer token is
the expected one (:meth:`HookedLVLM.answer`):

``user_arrays_object_accuracy``
    the main-object question on all 1,797 scikit-learn scans passed bare, full frame
    (:func:`~tl_lvlm.zoo.digits.user_arrays`): uint8 or [0, 1] floats, either
    polarity, grey or RGB, each form straight to ``prepare``.
``test_task_accuracy``
    each task of :mod:`tl_lvlm.zoo.questions` on the 360 held-out digits drawn with
    random size, position and colours (style ``coloured``): the canonical question and
    the mean over the held-out phrasings (and each one).
``test_accuracy``
    the main-object question on the held-out digits in every named style
    (:data:`~tl_lvlm.zoo.digits.STYLES`), the held-out appearance styles included.

``--update`` writes the numbers into the checkpoint's ``training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tl_lvlm.zoo import resolve
from tl_lvlm.zoo.digits import STYLES, load_digit_set, user_arrays
from tl_lvlm.zoo.questions import TASKS, answer_token_ids

POLARITIES = ("white-on-black", "black-on-white")


@torch.no_grad()
def accuracy(
    model,
    images: Sequence,
    question: str,
    answer_ids: Sequence[int] | np.ndarray,
    batch_size: int = 64,
) -> float:
    """Fraction of ``images`` whose greedy first answer to ``question`` is ``answer_ids[i]``.

    ``model`` is a :class:`~tl_lvlm.HookedLVLM`; images are anything its ``prepare``
    takes (PIL images, ``HxWx3`` uint8 arrays).
    """
    answer_ids = np.asarray(answer_ids)
    if len(images) != len(answer_ids):
        raise ValueError(f"{len(images)} images but {len(answer_ids)} answers")
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    hits = 0
    for start in range(0, len(images), batch_size):
        batch = list(images[start : start + batch_size])
        ids, _ = model.answer(model.prepare(batch, question))
        hits += int((ids.cpu().numpy() == answer_ids[start : start + batch_size]).sum())
    return hits / len(images)


def _object_ids(model) -> np.ndarray:
    return np.asarray(answer_token_ids(model.tokenizer, TASKS["object"].answers))


def user_array_accuracy(model) -> dict[str, float]:
    """Main-object accuracy on the 1,797 bare scans in every form a user may pass them.

    Keys ``"{dtype}/{polarity}/{channels}"``: ``uint8`` or ``float`` ([0, 1]), either
    polarity, ``grey`` (``8x8``) or ``rgb`` (``8x8x3``), each through ``prepare``.
    """
    ids = _object_ids(model)
    out = {}
    for dtype in ("uint8", "float"):
        for polarity in POLARITIES:
            for channels in ("grey", "rgb"):
                a, labels = user_arrays(dtype, polarity, channels)
                out[f"{dtype}/{polarity}/{channels}"] = accuracy(
                    model, list(a), TASKS["object"].question, ids[labels]
                )
    return out


def task_accuracy(
    model, split: str = "test", style: str = "coloured", seed: int = 0
) -> dict[str, dict]:
    """Per task: accuracy of the canonical question and of the held-out phrasings."""
    digits = load_digit_set(split, style, seed)
    out = {}
    for name, task in TASKS.items():
        ids = answer_token_ids(model.tokenizer, task.answers)
        target = [
            ids[task.answers.index(task.answer(int(d), a.ink, a.background))]
            for d, a in zip(digits.labels, digits.appearances, strict=True)
        ]
        held_out = {q: accuracy(model, digits.images, q, target) for q in task.held_out_phrasings}
        out[name] = {
            "question": accuracy(model, digits.images, task.question, target),
            "held_out_phrasings": float(np.mean(list(held_out.values()))),
            "per_held_out_phrasing": held_out,
        }
    return out


def style_accuracy(model, split: str = "test", seed: int = 0) -> dict[str, float]:
    """Main-object accuracy on ``split`` in every style of :data:`STYLES`."""
    ids = _object_ids(model)
    out = {}
    for style in STYLES:
        digits = load_digit_set(split, style, seed)
        out[style] = accuracy(model, digits.images, TASKS["object"].question, ids[digits.labels])
    return out


def evaluate(model, progress: bool = True) -> dict:
    """Every measurement of the module doc, and the time they took."""
    t0 = time.perf_counter()
    steps = [
        ("user_arrays_object_accuracy", user_array_accuracy),
        ("test_task_accuracy", task_accuracy),
        ("test_accuracy", style_accuracy),
    ]
    out = {}
    for key, fn in tqdm(steps, desc="evaluating", disable=not progress):
        out[key] = fn(model)
    out["eval_wall_time_s"] = round(time.perf_counter() - t0, 1)
    return out


def update_record(checkpoint: str | os.PathLike, results: dict) -> Path:
    """Merge ``results`` into ``checkpoint/training.json`` (written atomically)."""
    path = Path(checkpoint) / "training.json"
    record = json.loads(path.read_text())
    record.update(results)
    fd, tmp = tempfile.mkstemp(prefix=".training.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv: list[str] | None = None) -> None:
    from tl_lvlm import HookedLVLM

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tl-lvlm/tiny-digits", help="zoo name or checkpoint dir")
    p.add_argument("--update", action="store_true", help="write the numbers to training.json")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = HookedLVLM.from_pretrained(args.model, device="cpu")
    results = evaluate(model)
    print(json.dumps(results, indent=2))
    if args.update:
        print(f"updated {update_record(resolve(args.model), results)}")


if __name__ == "__main__":
    main()
