"""Image-token attribution of the images that have object masks: object against background."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float

from attribution import FitResult
from tl_lvlm._utils.files import json_safe
from tl_lvlm.analysis.heads.config import RegressionConfig
from tl_lvlm.analysis.image_tokens import (
    IMAGE_TOKEN_DEFAULTS,
    ImageAttribution,
    NoImageEffectError,
    image_token_attribution,
)
from tl_lvlm.families.geometry import PatchGeometry
from tl_lvlm.inputs import LVLMInputs


@dataclass(frozen=True)
class ObjectMap:
    """One image's attribution map and how it divides between object and background: what
    the study keeps of an :class:`~tl_lvlm.analysis.image_tokens.ImageAttribution` (its
    masks and per-mask outputs stay in the store).

    Attributes:
        coef: ``[rows, cols]`` attribution per patch.
        r2, pearson: held-out fit quality.
        object_share: the object patches' share of the positive attribution (NaN when no
            coefficient is positive).
        object_area: the object patches' share of the patches.
        target: token id whose logit is attributed.
        clean_logit, ablated_logit: target logit with every image position kept / ablated.
        geometry: where the map's patches lie on the image.
    """

    coef: Float[np.ndarray, "rows cols"]
    r2: float
    pearson: float
    object_share: float
    object_area: float
    target: int
    clean_logit: float
    ablated_logit: float
    geometry: PatchGeometry | None

    def attribution(self) -> ImageAttribution:
        """As an :class:`~tl_lvlm.analysis.image_tokens.ImageAttribution` for the report's
        :func:`~tl_lvlm.report.from_results.image_map` (no masks, outputs or held-out
        values: zero rows)."""
        flat = self.coef.ravel()
        fit = FitResult(flat, 0.0, self.r2, self.pearson, 0, 0, np.zeros(0), np.zeros(0))
        return ImageAttribution(
            coef=self.coef,
            fit=fit,
            target=self.target,
            clean_logit=self.clean_logit,
            ablated_logit=self.ablated_logit,
            masks=np.zeros((0, flat.size), dtype=bool),
            y=np.zeros(0),
            geometry=self.geometry,
        )

    def to_json(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k not in ("coef", "geometry")}
        data["coef"] = self.coef.tolist()
        data["geometry"] = None if self.geometry is None else asdict(self.geometry)
        return json_safe(data)

    @classmethod
    def from_json(cls, data: dict) -> ObjectMap:
        geometry = data["geometry"]
        if geometry is not None:
            tokens = geometry["tokens"]
            geometry = PatchGeometry(
                **{**geometry, "tokens": None if tokens is None else tuple(tokens)}
            )
        share = data["object_share"]
        return cls(
            coef=np.asarray(data["coef"], dtype=np.float64),
            r2=float(data["r2"]),
            pearson=float(data["pearson"]),
            object_share=float("nan") if share is None else float(share),
            object_area=float(data["object_area"]),
            target=int(data["target"]),
            clean_logit=float(data["clean_logit"]),
            ablated_logit=float(data["ablated_logit"]),
            geometry=geometry,
        )


def object_map(
    model,
    sample: LVLMInputs,
    object_mask: Bool[np.ndarray, "height width"],
    *,
    target: int | None = None,
    foil: int | None = None,
    baseline,
    config: RegressionConfig = IMAGE_TOKEN_DEFAULTS,
    store: str | os.PathLike | None = None,
    progress: bool = False,
) -> ObjectMap | str:
    """Image-token attribution of one prompt and its object mass, or why it is left out.

    Left out (a one-line reason returned): the model answers other than ``target``; the
    image barely moves the target logit (:class:`~tl_lvlm.analysis.image_tokens.
    NoImageEffectError`); the mask covers no patch or every patch.

    Args:
        sample: one prompt (a one-row batch).
        object_mask: the object over the image (True = object).
        target: the expected answer's token id; None = the model's own answer.
        foil: with ``config.metric == "logit_diff"``, the token id subtracted.
        baseline: the resolved image-K/V baseline (:func:`~tl_lvlm.ablation.resolve_baseline`).
        store: resumable store of the raw logits (:func:`attribution.collect`).
    """
    if target is not None:
        with torch.no_grad():
            answer = int(model.final_logits(sample).argmax())
        if answer != target:
            return f"wrong answer: the model answers {model.tokenizer.decode([answer])!r}"
    try:
        result = image_token_attribution(
            model,
            sample,
            config,
            baseline=baseline,
            target=target,
            foil=foil,
            store=None if store is None else Path(store),
            progress=progress,
        )
        mass = result.object_mass(object_mask)
    except (NoImageEffectError, ValueError) as err:
        return str(err)
    return ObjectMap(
        coef=result.coef,
        r2=result.fit.r2,
        pearson=result.fit.pearson,
        object_share=mass.object_share,
        object_area=mass.object_area,
        target=result.target,
        clean_logit=result.clean_logit,
        ablated_logit=result.ablated_logit,
        geometry=result.geometry,
    )


def object_maps(
    model,
    samples: LVLMInputs,
    object_masks: Sequence[Bool[np.ndarray, "height width"]],
    ids: Sequence[int],
    *,
    targets: Sequence[int | None] | None = None,
    baseline,
    config: RegressionConfig = IMAGE_TOKEN_DEFAULTS,
    store_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[int, ObjectMap | str]:
    """:func:`object_map` of the samples ``ids`` (row i of ``samples``, mask i), stored in
    ``store_dir/sample-{i}``."""
    out = {}
    for i in ids:
        store = None if store_dir is None else Path(store_dir) / f"sample-{i}"
        out[i] = object_map(
            model,
            samples[i],
            object_masks[i],
            target=None if targets is None else targets[i],
            baseline=baseline,
            config=config,
            store=store,
            progress=progress,
        )
    return out
