"""Image-token attribution: which image patches carry the answer.

The regression of head attribution with image positions as the components: each
random mask ablates a subset of image positions (probability ``p_ablate``, 0.75),
replacing their keys and values by the baseline in *every* head as seen by the text
queries, and ElasticNet maps masks to the normalized target logit

    y = (logit(mask) - logit(all ablated)) / (logit(clean) - logit(all ablated)).

A coefficient is a patch's attribution (positive: keeping the patch raises the
answer's logit). The model's family says how its image tokens lie on the image
(:class:`~tl_lvlm.families.PatchGeometry`: LLaVA-1.5 lays them out row by row over
the CLIP patch grid of the centre crop; LLaVA-NeXT's base image and tiles make one map
on the tile grid), so the ``n_image`` coefficients become a ``[rows, cols]`` map; families
without a geometry refuse, naming the reason.

:func:`object_mass` compares the attribution on an object's patches with the
background's (the paper: image information sits in object *and* background
tokens), and :func:`plot_image_attribution` overlays the map on the image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float
from numpy.typing import ArrayLike
from PIL import Image

from attribution import FitResult, collect, fit, sample_masks
from attribution.own_checks import checks_own_arguments
from tl_lvlm._utils.fingerprint import tensor_sha256
from tl_lvlm.ablation import ImageKVBaseline
from tl_lvlm.ablation.baseline import REFERENCE_HINT, resolve_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.ablation.metric import Metric
from tl_lvlm.ablation.normalization import LogitNormalization
from tl_lvlm.analysis.heads.config import RegressionConfig
from tl_lvlm.analysis.heads.labels import Answer, answer_token_id, answers_label
from tl_lvlm.analysis.heads.samples import Samples, per_sample
from tl_lvlm.families.geometry import PatchGeometry
from tl_lvlm.inputs import LVLMInputs
from tl_lvlm.model import HookedLVLM

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


class NoImageEffectError(ValueError):
    """Ablating the whole image barely moves the target logit: nothing to attribute."""


@dataclass
class ImageAttribution:
    """Attribution of one sample's target logit to its image patches.

    Attributes:
        coef: ``[rows, cols]`` attribution per patch of the family's patch grid.
        fit: the ElasticNet fit (flat ``coef`` over image positions, held-out R², ρ).
        target: token id whose logit is attributed.
        clean_logit: target logit (the metric) with every image position kept.
        ablated_logit: target logit (the metric) with every image position ablated.
        masks: bool ``[n_masks, n_image]`` (True = position kept).
        y: ``[n_masks]`` normalized target logit (metric) of every mask.
        geometry: where the map's patches lie on the image (None: a square map over
            the image's central square).
        metric: the metric's name (:attr:`~tl_lvlm.ablation.metric.Metric.name`).
        foil: the ``"logit_diff"`` foil token id, or None.
    """

    coef: Float[np.ndarray, "rows cols"]
    fit: FitResult
    target: int
    clean_logit: float
    ablated_logit: float
    masks: Bool[np.ndarray, "n_masks n_image"]
    y: Float[np.ndarray, " n_masks"]
    geometry: PatchGeometry | None = field(default=None)
    metric: str = "logit"
    foil: int | None = None

    @property
    def grid(self) -> int:
        return int(self.coef.shape[0])

    def object_mass(self, object_mask: ArrayLike) -> ObjectMass:
        """:func:`object_mass` of this map, the object mask placed by its patch geometry."""
        return object_mass(self.coef, object_mask, self.geometry)


#: image_token_attribution's defaults: the paper's regression, with a lower gap filter
#: (all image positions at once move the logit less than all heads do).
IMAGE_TOKEN_DEFAULTS = RegressionConfig(min_logit_gap=0.1)


@checks_own_arguments
def image_token_attribution(
    model: HookedLVLM,
    samples: LVLMInputs | Sequence[tuple] | Any,
    config: RegressionConfig | None = None,
    *,
    baseline: ImageKVBaseline | Literal["mean", "zero"] = "mean",
    reference: Sequence | LVLMInputs | None = None,
    target: Answer | None = None,
    labels: Sequence[Answer | None] | None = None,
    foil: Answer | Sequence[Answer] | None = None,
    store: str | os.PathLike | None = None,
    progress: bool = True,
    question: str | None = None,
    image_column: str = "image",
    label_column: str | None = "label",
    image_size: int | tuple[int, int] | None = None,
    **settings: Any,
) -> ImageAttribution | list[ImageAttribution]:
    """Attribute each sample's target logit to its image positions.

    Takes the sample forms :func:`~tl_lvlm.head_attribution` takes. One prompt (a
    single-row :class:`~tl_lvlm.LVLMInputs`, e.g. ``inputs[i]``) gives one
    :class:`ImageAttribution`; ``[(image, question[, label]), ...]``, a ``datasets.Dataset``
    (with ``question=``) or a batch of several rows gives a list, one per sample, over one
    baseline. The regression's
    settings are a :class:`~tl_lvlm.analysis.heads.RegressionConfig` (``config``,
    default :data:`IMAGE_TOKEN_DEFAULTS`), any field of which may be given as a keyword
    (``n_masks=``, ``p_ablate=``, ``min_logit_gap=``, ``seed=``, ``batch_size=``, ``metric=``,
    ...). ``metric=`` (:mod:`tl_lvlm.ablation.metric`) says what is attributed: the target
    logit (default), ``"logit_diff"`` against ``foil``, ``"logprob"`` or a callable.

    Args:
        model: the model.
        samples: one prompt, or samples as for head attribution.
        config: the regression settings (``n_masks`` at least ``n_image + 1``; no
            ``"auto"``).
        baseline: an :class:`~tl_lvlm.ablation.ImageKVBaseline`, ``"mean"`` (image K/V
            averaged over ``reference``) or ``"zero"``.
        reference: images (or inputs prepared with the samples' template) for
            ``"mean"``; default: several samples' own images; one sample alone is no
            reference, its own mean is itself (:func:`~tl_lvlm.ablation.resolve_baseline`
            refuses it).
        target: token id or one-token word to attribute; default the label, else the
            clean greedy answer.
        labels: expected answer per sample (or in the tuples, or a dataset's label column;
            several words are attributed through the first token and checked whole, see
            :func:`~tl_lvlm.analysis.heads.label_tokens`); a sample answered otherwise is
            refused, naming it.
        foil: with ``metric="logit_diff"``, the token whose logit is subtracted: one for
            every sample or one per sample (id or one-token word, as ``target``).
        store: resumable :func:`attribution.collect` store for the raw target logits
            (``store/sample-{i}`` per sample for several samples).
        progress: show a progress bar.
        question, image_column, label_column, image_size: as for
            :func:`~tl_lvlm.head_attribution` (a dataset's question and columns; one image
            size for samples and reference images).

    Returns:
        :class:`ImageAttribution` with a ``[rows, cols]`` map (a list of them for several
        samples).

    Raises:
        NoImageEffectError: ``clean - all ablated < min_logit_gap``.
        ValueError: a ``"mean"`` baseline without reference; too few masks; a labelled
            sample the model answers otherwise.
        NotImplementedError: the family has no patch geometry for its image tokens.
    """
    model.family.require("image_attribution")
    cfg = (config or IMAGE_TOKEN_DEFAULTS).updated(**settings)
    if cfg.n_masks == "auto":
        raise ValueError("image_token_attribution takes a fixed n_masks, not 'auto'")
    metric = cfg.resolved_metric
    one_prompt = isinstance(samples, LVLMInputs) and samples.batch_size == 1
    if one_prompt and labels is None and question is None and image_size is None:
        target_id = None if target is None else answer_token_id(model, target, samples.template)
        foil_id = _foil_id(model, metric, foil, target_id, samples.template)
        baseline = resolve_baseline(model, baseline, reference, samples)
        return _attribute_one(model, samples, baseline, target_id, foil_id, cfg, store, progress)
    prepared = Samples.parse(
        model, samples, labels, question=question, image_column=image_column,
        label_column=label_column, image_size=image_size,
    )  # fmt: skip
    foils = per_sample(foil, len(prepared), "foil")
    mean_over_samples = isinstance(baseline, str) and baseline == "mean" and reference is None
    kv = resolve_baseline(
        model,
        baseline,
        prepared.reference(reference),
        prepared.all_images() if mean_over_samples else prepared.inputs(0),
    )
    results = []
    for i, whole in enumerate(prepared.label_tokens()):
        inputs = prepared.inputs(i)
        label = prepared.labels[i]
        if target is not None:
            target_id = answer_token_id(model, target, prepared.template)
        else:
            target_id = None if whole is None else whole[0]
        if whole is not None and target is None and not answers_label(model, inputs, whole):
            written = model.generate(inputs, max_new_tokens=len(whole))[0]
            raise ValueError(
                f"sample {i} is labelled {label!r} but the model answers {written!r}: "
                "attribute its own answer (no label) or leave it out"
            )
        try:
            foil_id = _foil_id(model, metric, foils[i], target_id, prepared.template)
        except ValueError as e:
            raise ValueError(f"sample {i}: {e}") from None
        sample_store = None if store is None else os.path.join(store, f"sample-{i}")
        results.append(
            _attribute_one(model, inputs, kv, target_id, foil_id, cfg, sample_store, progress)
        )
    return results


def _foil_id(
    model: HookedLVLM, metric: Metric, foil: Answer | None, target: int | None, template: str
) -> int | None:
    """``foil`` as a token id, checked against the metric and the given target."""
    foil_id = None if foil is None else answer_token_id(model, foil, template)
    metric.check_foil(foil_id, target)
    return foil_id


def _attribute_one(
    model: HookedLVLM,
    sample: LVLMInputs,
    baseline: ImageKVBaseline,
    target: int | None,
    foil: int | None,
    cfg: RegressionConfig,
    store: str | os.PathLike | None,
    progress: bool,
) -> ImageAttribution:
    """One prompt's attribution map under a resolved baseline (see the public function)."""
    geometry = model.family.patch_geometry(model.processor, sample)
    baseline = baseline.for_inputs(model, sample)
    engine = AblationEngine(
        model, sample, baseline, target=target, metric=cfg.resolved_metric, foil=foil,
        scope=cfg.scope,
    )  # fmt: skip
    n_layers, n_heads, n_image = model.n_layers, model.n_heads, engine.n_image
    cfg.check_components(n_image, "image positions")
    batch_size = cfg.batch_size or engine.auto_batch_size()

    def logits(keep: Bool[np.ndarray, "b n_image"]) -> Float[np.ndarray, " b"]:
        # One position mask applies to every head of every layer (a free expand).
        per_head = torch.from_numpy(keep)[:, None, None].expand(-1, n_layers, n_heads, -1)
        return engine.run(per_head, batch_size, progress=False).double().numpy()

    norm = LogitNormalization.measure(engine.clean_value, logits, n_image)
    min_logit_gap = cfg.min_logit_gap
    if norm.too_small(min_logit_gap):
        raise NoImageEffectError(
            f"ablating every image position moves the {engine.metric.description} by only "
            f"{norm.gap:.4g} "
            f"(clean {norm.clean:.4g}, ablated {norm.ablated:.4g}) < min_logit_gap="
            f"{min_logit_gap}: the answer does not depend on the image here under this "
            f"baseline, so there is nothing to attribute; with a mean over few images, "
            f"{REFERENCE_HINT}, or try baseline='zero' or a lower min_logit_gap"
        )
    masks = sample_masks(cfg.n_masks, n_image, cfg.p_ablate, cfg.seed)
    meta = {
        "kind": "tl_lvlm.image_token_attribution/1",
        "inputs_sha256": tensor_sha256(sample.input_ids, sample.pixel_values),
        "target": engine.target,
        "metric": engine.metric.name,
        "foil": engine.foil,
        "baseline_sha256": tensor_sha256(baseline.k, baseline.v),
    }
    raw = collect(
        logits,
        masks,
        batch_size=batch_size,
        store=store,
        meta=meta,
        progress=progress,
        desc="image-token attribution",
    )
    y = norm(raw)
    result = fit(masks, y, **cfg.fit_kwargs())
    return ImageAttribution(
        coef=geometry.to_map(result.coef),
        fit=result,
        target=engine.target,
        clean_logit=norm.clean,
        ablated_logit=norm.ablated,
        masks=masks,
        y=y,
        geometry=geometry,
        metric=engine.metric.name,
        foil=engine.foil,
    )


# ------------------------------------------------------------- object vs background
@dataclass
class ObjectMass:
    """How an attribution map divides between an object's patches and the background.

    Attributes:
        object_share: sum of the positive coefficients on object patches divided by
            the sum of all positive coefficients (NaN when no coefficient is positive).
        object_area: fraction of patches that are object patches: the share a map
            spread evenly over the patches would give.
        mean_object: mean coefficient per object patch.
        mean_background: mean coefficient per background patch.
        n_object: number of object patches.
        n_background: number of background patches.
    """

    object_share: float
    object_area: float
    mean_object: float
    mean_background: float
    n_object: int
    n_background: int


def patch_mask(object_mask: ArrayLike, grid: int | PatchGeometry) -> Bool[np.ndarray, "rows cols"]:
    """Object mask of the image (``[height, width]``) -> which patches are object patches.

    ``grid``: the map's :class:`~tl_lvlm.families.PatchGeometry` (the family's crop or
    resize), or the side of a square grid over the central square, as CLIP's
    processor crops the image. A patch is an object patch when at least half of its
    area is object.
    """
    if not isinstance(grid, PatchGeometry):
        grid = PatchGeometry(grid, grid, "center")
    return grid.patch_mask(object_mask)


def object_mass(
    coef: Float[np.ndarray, "rows cols"],
    object_mask: ArrayLike,
    geometry: PatchGeometry | None = None,
) -> ObjectMass:
    """Attribution on object vs background patches (see :class:`ObjectMass`).

    Args:
        coef: ``[rows, cols]`` attribution map.
        object_mask: ``[height, width]`` binary mask of the object over the image the
            map was computed for (nonzero = object).
        geometry: where the map lies on the image (``ImageAttribution.geometry``);
            None = a square map over the image's central square.
    """
    coef = np.asarray(coef, dtype=np.float64)
    geometry = _geometry(coef, geometry)
    on_object = geometry.patch_mask(object_mask)
    n_object = int(on_object.sum())
    if n_object in (0, on_object.size):
        where = "no" if n_object == 0 else "every"
        raise ValueError(
            f"the object mask covers {where} patch of the {coef.shape[0]}x{coef.shape[1]} grid "
            "(a patch counts as object when half of it is), so object and background cannot "
            "be compared"
        )
    positive = np.clip(coef, 0, None)
    total = positive.sum()
    return ObjectMass(
        object_share=float(positive[on_object].sum() / total) if total > 0 else float("nan"),
        object_area=n_object / on_object.size,
        mean_object=float(coef[on_object].mean()),
        mean_background=float(coef[~on_object].mean()),
        n_object=n_object,
        n_background=int(on_object.size - n_object),
    )


def _geometry(
    coef: Float[np.ndarray, "rows cols"], geometry: PatchGeometry | None
) -> PatchGeometry:
    """``geometry`` checked against the map; None = a square map over the central square."""
    if geometry is None:
        if coef.ndim != 2 or coef.shape[0] != coef.shape[1]:
            raise ValueError(f"coef must be a square [grid, grid] map, got shape {coef.shape}")
        return PatchGeometry(coef.shape[0], coef.shape[0], "center")
    if coef.shape != geometry.shape:
        raise ValueError(f"coef has shape {coef.shape} but the patch grid is {geometry.shape}")
    return geometry


def plot_image_attribution(
    coef: Float[np.ndarray, "rows cols"],
    image: Image.Image | np.ndarray,
    path: str | os.PathLike | None = None,
    *,
    object_mask: ArrayLike | None = None,
    geometry: PatchGeometry | None = None,
    title: str = "Image-token attribution",
    caption: str | None = None,
    alpha: float = 0.6,
    ax: Axes | None = None,
) -> Figure:
    """Overlay a ``[rows, cols]`` attribution map on the image region it covers, in gray.

    ``image`` is a PIL image or a ``[height, width(, 3)]`` uint8 array; ``geometry``
    (``ImageAttribution.geometry``) places the map, None = a square map over the
    image's central square.

    Diverging colors centered at 0 (red: keeping the patch raises the answer's logit);
    with ``object_mask`` the object's patches are outlined. ``caption`` (e.g. model,
    question and settings) is written above the figure
    (:func:`attribution.plots.add_caption`).
    """
    from attribution.plots import add_caption, new_figure, save_figure

    coef = np.asarray(coef, dtype=np.float64)
    # Grayscale underneath, so that the image's colors do not read as attribution.
    pixels = np.asarray(Image.fromarray(np.asarray(image)).convert("L"))
    geometry = _geometry(coef, geometry)
    top, left, height, width = geometry.region(*pixels.shape[:2])
    # The map's grid in the image's pixels; a tiled grid may reach past the shown region.
    y0, x0, y1, x1 = geometry.map_extent(*pixels.shape[:2])
    fig, ax = new_figure(ax, figsize=(4.5, 4))
    shown = (left, left + width, top + height, top)
    ax.imshow(pixels[top : top + height, left : left + width], cmap="gray", extent=shown)
    vmax = float(np.abs(coef).max()) or 1.0
    overlay = ax.imshow(
        coef,
        cmap="RdBu_r",
        vmin=-vmax,
        vmax=vmax,
        alpha=alpha,
        extent=(x0, x1, y1, y0),
        interpolation="nearest",
    )
    ax.set(xlim=shown[:2], ylim=shown[2:])
    if object_mask is not None:
        # Upsampled with repeats, so that the outline follows the patch edges.
        fine = np.kron(geometry.patch_mask(object_mask), np.ones((16, 16)))
        ys = y0 + (np.arange(fine.shape[0]) + 0.5) * (y1 - y0) / fine.shape[0]
        xs = x0 + (np.arange(fine.shape[1]) + 0.5) * (x1 - x0) / fine.shape[1]
        ax.contour(xs, ys, fine, levels=[0.5], colors="k", linewidths=1.5)
    fig.colorbar(overlay, ax=ax, label="coefficient")
    ax.set(title=title, xticks=[], yticks=[])
    add_caption(fig, caption)
    return save_figure(fig, path)
