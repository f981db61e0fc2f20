"""Shared pieces of the example scripts: arguments, model loading, digit samples, outputs.

Every script reproduces one of the paper's analyses on the bundled ``tl-lvlm/tiny-digits``
model (any LLaVA checkpoint answering the digits question works through ``--model``) and
writes PNG figures and one JSON of numbers into ``--out``. Everything random (which
digits are drawn, the ``shifted`` / ``noisy`` renderings, the ablation masks) is seeded
by ``--seed``, so two runs with the same arguments write the same numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from matplotlib.figure import Figure
from PIL import Image

from tl_lvlm import HookedLVLM, answer_token_id
from tl_lvlm.zoo import resolve
from tl_lvlm.zoo.digits import Appearance, digit_arrays, load_digit_images, load_digit_set
from tl_lvlm.zoo.questions import TASKS

EXAMPLES_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "tl-lvlm/tiny-digits"
#: Rendering of the samples: random size, position and colours, the training distribution.
DEFAULT_STYLE = "coloured"
#: Figures are for reading in a README, not for print: small files.
FIGURE_DPI = 100


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every example shares.

    ``--out`` defaults to ``examples/results/<name>``; scripts add their own options.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="zoo name, hub name or local checkpoint"
    )
    parser.add_argument(
        "--out", type=Path, default=EXAMPLES_DIR / "results" / name, help="output directory"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds samples, renderings, masks")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads. One is fastest for this tiny model: its matrices are too "
        "small to split, and on a shared machine extra threads spin-wait against other jobs "
        "(measured: ~1,100 masks/s with one thread, 5-30 with two beside another job)",
    )
    parser.add_argument(
        "--n-reference",
        type=int,
        default=128,
        help="training images per style whose mean image K/V is the ablation baseline",
    )
    return parser


def load_model(args: argparse.Namespace) -> tuple[HookedLVLM, dict[str, Any]]:
    """Set the thread count, create ``args.out``, load ``args.model``.

    Returns the model and its :func:`checkpoint_info`, read right after loading so that it
    describes the weights the run uses even if the checkpoint on disk is replaced later.
    """
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model = HookedLVLM.from_pretrained(args.model)
    return model, checkpoint_info(args)


def checkpoint_info(args: argparse.Namespace) -> dict[str, Any]:
    """What identifies the run's model and software, for the JSON of results.

    The weights' SHA-256 pins the exact checkpoint (intermediate and final checkpoints of
    the bundled model share its name).
    """
    path = Path(resolve(args.model))
    weights = path / "model.safetensors"
    info: dict[str, Any] = {"model": args.model, "path": str(path)}
    if weights.is_file():
        info["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    training = path / "training.json"
    if training.is_file():
        meta = json.loads(training.read_text())
        info["training_steps"] = meta.get("steps")
        info["training_test_accuracy"] = meta.get("test_accuracy")
    info["environment"] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    return info


@dataclass
class DigitSamples:
    """Held-out digits in one style, asked one task's question.

    Attributes:
        images: 24x24 RGB images.
        labels: ``[n]`` digits 0..9.
        positions: ``[n]`` positions in the split (the same digit scans in every style).
        style: the rendering style.
        appearances: how each digit is drawn (size, position, ink, background).
        task: the question asked (a name of :data:`tl_lvlm.zoo.questions.TASKS`).
    """

    images: list[Image.Image]
    labels: np.ndarray
    positions: np.ndarray
    style: str
    appearances: list[Appearance]
    task: str = "object"

    def __len__(self) -> int:
        return len(self.images)

    @property
    def question(self) -> str:
        """The task's canonical question."""
        return TASKS[self.task].question

    @property
    def words(self) -> list[str]:
        """The expected answer of each sample (``"seven"``, ``"red"``, ``"odd"``)."""
        answer = TASKS[self.task].answer
        return [
            answer(int(d), a.ink, a.background)
            for d, a in zip(self.labels, self.appearances, strict=True)
        ]

    def asking(self, task: str) -> DigitSamples:
        """The same images asked another task's question."""
        return replace(self, task=task)

    def attribution_samples(self) -> list[tuple[Image.Image, str, str]]:
        """``(image, question, label)`` tuples for :func:`tl_lvlm.analysis.heads`."""
        return [(im, self.question, w) for im, w in zip(self.images, self.words, strict=True)]

    def target_ids(self, model: HookedLVLM) -> list[int]:
        """Token id of each sample's expected answer (`` seven``)."""
        return [answer_token_id(model, w) for w in self.words]


def choose_positions(n_per_digit: int, seed: int, split: str = "test") -> np.ndarray:
    """``n_per_digit`` random positions of each digit in ``split``, ordered by digit.

    Drawn with ``seed`` from the split's labels only, so every style gets the same scans.
    """
    _, labels, _ = digit_arrays(split)
    rng = np.random.default_rng(seed)
    chosen = []
    for digit in range(10):
        where = np.flatnonzero(labels == digit)
        if len(where) < n_per_digit:
            raise ValueError(f"the {split} split has only {len(where)} images of digit {digit}")
        chosen.append(np.sort(rng.choice(where, n_per_digit, replace=False)))
    return np.concatenate(chosen)


def digit_samples(
    positions: np.ndarray,
    style: str = DEFAULT_STYLE,
    seed: int = 0,
    split: str = "test",
    task: str = "object",
) -> DigitSamples:
    """The digits at ``positions`` of ``split`` rendered in ``style``, asked ``task``."""
    d = load_digit_set(split=split, style=style, seed=seed)
    return DigitSamples(
        [d.images[i] for i in positions],
        d.labels[positions],
        positions,
        style,
        [d.appearances[i] for i in positions],
        task,
    )


def reference_images(styles: Sequence[str], n_per_style: int, seed: int) -> list[Image.Image]:
    """Training images whose mean image K/V is the ablation baseline.

    The first ``n_per_style`` training scans in each style: one baseline shared by all
    samples (and styles), so that differences between attributions never come from
    different baselines. Training images keep the held-out samples out of the baseline.
    """
    images = []
    for style in styles:
        images += load_digit_images(split="train", style=style, seed=seed)[0][:n_per_style]
    return images


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at :data:`FIGURE_DPI`."""
    fig.savefig(path, dpi=FIGURE_DPI)
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented strict JSON (numpy values converted, NaN as null)."""
    path.write_text(json.dumps(_plain(data), indent=2, allow_nan=False) + "\n")
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic, Path)):
        value = value.item() if isinstance(value, np.generic) else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def stats(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean, median, min, max and std of ``values`` (JSON-ready)."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "std": float(v.std()),
        "n": int(v.size),
    }


class Stopwatch:
    """Wall-clock seconds since creation, for the runtime written into the results."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 1)
