"""Results of the analyses as report data (:mod:`tl_lvlm.report.data`).

One converter per result type, each taking the :class:`~tl_lvlm.report.data.FigureContext`
its figures are to carry (:func:`head_context` builds it for a head attribution run):

- :func:`head_report`: a :class:`~tl_lvlm.analysis.heads.HeadAttributionResult` ->
  :class:`HeadMap`, :class:`Curves` (None when not evaluated), :class:`FitQuality`;
- :func:`flow_report`: a :class:`~tl_lvlm.flow.FlowSweep` -> :class:`FlowCurves`;
- :func:`image_map`: an :class:`~tl_lvlm.analysis.image_tokens.ImageAttribution` and its
  image -> :class:`ImageMap`, the image cut (or padded) to the region the map covers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike
from PIL import Image

from attribution import rank_by
from tl_lvlm.analysis.heads import HeadAttributionResult
from tl_lvlm.analysis.heads.rankings import HEAD_ATTRIBUTION
from tl_lvlm.analysis.image_tokens import ImageAttribution
from tl_lvlm.families.geometry import PatchGeometry
from tl_lvlm.flow import FlowSweep
from tl_lvlm.report.data import Curves, FigureContext, FitQuality, FlowCurves, HeadMap, ImageMap


def run_settings(config: dict, reference: str | None = None) -> str:
    """One line of a head attribution run's settings, from its ``config``.

    E.g. ``"800 masks, p_ablate 0.75, mean baseline over digits, seed 0"``; the scope and
    method are named only where they are not the paper's (``"text"``, regression).

    Args:
        reference: what the mean baseline was taken over (e.g. ``--reference-images``).
    """
    # A baseline id is "kind:hash" (tl_lvlm.ablation.resolve_baseline_with_id): the hash
    # identifies the reference images for the store, it means nothing to a reader.
    baseline = f"{str(config.get('baseline', '?')).split(':')[0]} baseline"
    if reference is not None and baseline.startswith("mean"):
        baseline += f" over {reference}"
    parts = [
        f"{config.get('n_masks', '?')} masks",
        f"p_ablate {config.get('p_ablate', '?')}",
        baseline,
        f"seed {config.get('seed', '?')}",
    ]
    if config.get("scope", "text") != "text":
        parts.append(f"scope {config['scope']}")
    if config.get("method", "regression") != "regression":
        parts.append(f"method {config['method']}")
    return ", ".join(parts)


def head_context(
    result: HeadAttributionResult,
    question: str,
    *,
    model: str | None = None,
    reference: str | None = None,
) -> FigureContext:
    """The context of ``result``'s figures: its model, ``question``, settings
    (:func:`run_settings`) and the heads needed by its own ranking (None when it was not
    evaluated or no sample was kept).

    Args:
        model: the model's name as the user gave it (default: the results' config, where
            a zoo name is resolved to its path).
        reference: what the mean baseline was taken over.
    """
    needed = None
    if result.evaluation is not None and result.fits:
        needed = result.heads_needed().get(HEAD_ATTRIBUTION)
    return FigureContext(
        model=model or str(result.config.get("model", "")),
        question=question,
        settings=run_settings(result.config, reference),
        heads_needed=needed,
    )


def head_report(
    result: HeadAttributionResult,
    context: FigureContext,
    names: Sequence[str] | None = None,
) -> tuple[HeadMap, Curves | None, FitQuality]:
    """The heatmap, curves and fit quality of one question's head attribution.

    Args:
        result: a result with at least one kept sample.
        context: printed on the figures (:func:`head_context`).
        names: name of every input sample, indexed by sample id (e.g. image files);
            default ``"sample {id}"``.

    Returns:
        ``(HeadMap, Curves, FitQuality)``; ``Curves`` is None for a result computed with
        ``evaluate=False``.

    Raises:
        ValueError: no sample was kept, or ``names`` does not cover the sample ids.
    """
    if not result.fits:
        raise ValueError(
            f"no sample was kept ({len(result.excluded)} excluded: see .excluded), so there "
            "is no head attribution to report"
        )
    ids = [int(i) for i in result.sample_ids]
    if names is not None and ids and max(ids) >= len(names):
        raise ValueError(
            f"names has {len(names)} entries but the result has sample id {max(ids)}; pass "
            "one name per input sample, indexed by sample id"
        )
    sample_names = [f"sample {i}" if names is None else str(names[i]) for i in ids]
    coef = result.coef
    mean = result.mean
    heads = HeadMap(
        context=context,
        mean=mean,
        std=coef.std(axis=0),
        rank=head_ranks(mean),
        per_sample=coef,
        sample_names=sample_names,
    )
    fits = FitQuality(
        context=context, r2=result.r2, pearson=result.pearson, sample_names=sample_names
    )
    curves = None
    if result.evaluation is not None:
        ev = result.evaluation
        curves = Curves(
            context=context,
            ks=ev.ks.astype(np.float64),
            faithfulness=ev.mean_faithfulness(),
            completeness=ev.mean_completeness(),
            heads_needed=ev.heads_needed(),
        )
    return heads, curves, fits


def head_ranks(
    mean: Float[np.ndarray, "n_layers n_heads"],
) -> Float[np.ndarray, "n_layers n_heads"]:
    """``rank[l, h]``: 1 for the head of largest ``mean``, ties in index order (as
    :func:`attribution.rank_by` and ``HeadAttributionResult.top_heads`` rank them)."""
    order = rank_by(mean)
    rank = np.empty(order.size, dtype=np.float64)
    rank[order] = np.arange(1, order.size + 1)
    return rank.reshape(np.shape(mean))


def flow_report(sweep: FlowSweep, context: FigureContext, title: str) -> FlowCurves:
    """The curves of a knockout sweep, one per edge set, over windows labelled by their
    layers (``"3"`` for a window of one layer, ``"0-3"`` for four).

    Raises:
        ValueError: every sample of the sweep was excluded.
    """
    windows = [str(s) if sweep.window == 1 else f"{s}-{s + sweep.window - 1}" for s in sweep.starts]
    return FlowCurves(context=context, title=title, windows=windows, curves=sweep.curves())


def image_map(
    attribution: ImageAttribution,
    image: Image.Image | ArrayLike,
    context: FigureContext,
    *,
    name: str,
    object_mask: ArrayLike | None = None,
) -> ImageMap:
    """One image's attribution map and the part of the image it covers.

    The image is cut to the map's extent (``attribution.geometry``; None = the central
    square, as CLIP crops), padded with white where a tiled grid reaches past it, so that a
    renderer stretching the map over the returned image puts every patch where it was.

    Args:
        attribution: the image's attribution.
        image: the image it was computed for (PIL, or ``[height, width(, 3)]`` uint8).
        context: printed on the figure.
        name: the image's name (e.g. its file).
        object_mask: ``[height, width]`` object mask; gives ``object_share``.
    """
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    pil = pil.convert("RGB")
    geometry = attribution.geometry
    share = None
    if object_mask is not None:
        share = attribution.object_mass(object_mask).object_share
    if geometry is None:
        geometry = PatchGeometry(attribution.coef.shape[0], attribution.coef.shape[1], "center")
    top, left, bottom, right = geometry.map_extent(pil.height, pil.width)
    box = (round(left), round(top), round(right), round(bottom))
    canvas = Image.new("RGB", (box[2] - box[0], box[3] - box[1]), "white")
    canvas.paste(pil, (-box[0], -box[1]))
    return ImageMap(
        context=context,
        name=name,
        image=np.asarray(canvas, dtype=np.uint8),
        attribution=np.asarray(attribution.coef, dtype=np.float64),
        object_share=share,
    )
