"""What a report shows, as plain data: numbers and images, no model, no torch.

The study (:mod:`tl_lvlm.study`) and ``tl-lvlm report`` fill a :class:`ReportData`; the
renderers draw it. Every figure carries a :class:`FigureContext` so that a figure cut out of
the report still says which model, question, settings and heads needed it shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float, UInt8

from attribution.own_checks import checks_own_arguments


@dataclass(frozen=True)
class FigureContext:
    """Printed on every figure.

    Args:
        model: checkpoint name or path.
        question: the question asked (one task).
        settings: one line of the run's settings, e.g. ``"800 masks, p_ablate 0.75, mean
            baseline (360 images), seed 0"``.
        heads_needed: heads needed by head attribution (None when not computed).
    """

    model: str
    question: str
    settings: str
    heads_needed: int | None = None

    def caption(self) -> str:
        needed = "" if self.heads_needed is None else f" · heads needed {self.heads_needed}"
        return f"{self.model} · {self.question!r} · {self.settings}{needed}"


@dataclass(frozen=True)
class Finding:
    """One of the paper's findings tested on this run (a row of ``findings.json``).

    Args:
        finding: the finding, in README's wording.
        holds: True / False, or None when it could not be tested (see ``statistic``).
        statistic: the numbers behind the verdict (JSON-serialisable).
        n: samples (or pairs) it rests on.
        summary: one sentence of the evidence, in README's holds / does-not-hold wording.
        question: the question it was tested on; None for a finding over several (or none).
    """

    finding: str
    holds: bool | None
    statistic: dict[str, Any]
    n: int
    summary: str = ""
    question: str | None = None


@dataclass(frozen=True)
@checks_own_arguments
class HeadMap:
    """Head attribution of one question: the interactive heatmap.

    ``per_sample[i]`` is sample ``sample_names[i]``'s coefficients; ``mean`` / ``std`` are
    over samples; ``rank[l, h]`` is 1 for the head of largest mean.
    """

    context: FigureContext
    mean: Float[np.ndarray, "n_layers n_heads"]
    std: Float[np.ndarray, "n_layers n_heads"]
    rank: Float[np.ndarray, "n_layers n_heads"]
    per_sample: Float[np.ndarray, "n_samples n_layers n_heads"]
    sample_names: list[str]

    def __post_init__(self) -> None:
        shapes = {name: np.shape(getattr(self, name)) for name in ("mean", "std", "rank")}
        if len(set(shapes.values())) != 1 or len(shapes["mean"]) != 2:
            raise ValueError(
                f"mean, std and rank must be one [n_layers, n_heads] shape, got {shapes}"
            )
        samples = np.shape(self.per_sample)
        if samples[1:] != shapes["mean"] or samples[0] != len(self.sample_names):
            raise ValueError(
                f"per_sample has shape {samples}; expected [n_samples={len(self.sample_names)} "
                f"(one per sample name), *{shapes['mean']}]"
            )


@dataclass(frozen=True)
class Curves:
    """Faithfulness and completeness of each ranking, averaged over samples.

    ``faithfulness[name][i]`` is the normalised logit with only the top ``ks[i]`` heads of
    ranking ``name`` kept; ``completeness[name][i]`` with them ablated.
    """

    context: FigureContext
    ks: Float[np.ndarray, " n_k"]
    faithfulness: dict[str, Float[np.ndarray, " n_k"]]
    completeness: dict[str, Float[np.ndarray, " n_k"]]
    heads_needed: dict[str, int | None]


@dataclass(frozen=True)
class FitQuality:
    """Held-out R² and Pearson ρ of the regression, per sample."""

    context: FigureContext
    r2: Float[np.ndarray, " n_samples"]
    pearson: Float[np.ndarray, " n_samples"]
    sample_names: list[str]


@dataclass(frozen=True)
class FlowCurves:
    """An attention-knockout sweep: the logit relative to the clean run, per layer window.

    ``curves[edge_set][i]`` is the mean over samples when ``edge_set`` is knocked out in
    window ``windows[i]`` (a label such as ``"0-5"``).
    """

    context: FigureContext
    title: str
    windows: list[str]
    curves: dict[str, Float[np.ndarray, " n_windows"]]


@dataclass(frozen=True)
class ImageMap:
    """Image-token attribution of one image, drawn over it.

    ``attribution`` is on the patch grid; the renderer stretches it over ``image``.
    ``object_share`` is the object's share of the positive attribution, when a mask exists.
    """

    context: FigureContext
    name: str
    image: UInt8[np.ndarray, "height width 3"]
    attribution: Float[np.ndarray, "rows cols"]
    object_share: float | None = None


@dataclass
class ReportData:
    """Everything ``report.html`` shows, in order: notes, findings, then per question the
    heads, curves and fit quality, then flow curves, then image maps.

    ``notes`` are lines shown under the title, e.g. which samples were excluded and why.
    """

    title: str
    findings: list[Finding] = field(default_factory=list)
    heads: list[HeadMap] = field(default_factory=list)
    curves: list[Curves] = field(default_factory=list)
    fits: list[FitQuality] = field(default_factory=list)
    flows: list[FlowCurves] = field(default_factory=list)
    image_maps: list[ImageMap] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
