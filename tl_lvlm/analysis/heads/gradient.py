"""``method="gradient"``: attributions as mean gate gradients instead of a regression.

Each head's image-K/V ablation is relaxed to a gate ``g`` in [0, 1]
(:meth:`~tl_lvlm.ablation.engine.AblationEngine.gate_gradients`: the head sees
``g * clean + (1 - g) * baseline`` keys and values at the image positions). A head's
attribution is ``dy/dg`` averaged over random binary masks drawn as the regression's
masks are (the first ``n_gradient_masks`` of its sequence), one forward and one
backward pass of the suffix per mask, where the regression needs one forward pass per
mask but thousands of masks. For a ``y`` that is linear in the masks both give the
same coefficients; interactions between heads make them differ.

There is no fit, so no held-out R² or ρ. The result's ``r2`` / ``pearson`` are those of
the gradients' linear model ``y ≈ masks @ coef + intercept`` on the masks' own
forward values, with only the intercept fitted (the mean residual): how much of ``y``
the first-order picture explains, not a held-out score.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from attribution import FitResult
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.ablation.normalization import LogitNormalization

#: Passes per mask of each method (a backward pass counted as one pass).
PASSES_PER_MASK = {"regression": 1, "gradient": 2}


def gradient_attribution(
    engine: AblationEngine,
    norm: LogitNormalization,
    masks: Bool[np.ndarray, "n_masks n_components"],
    batch_size: int,
    *,
    progress: bool,
    desc: str,
) -> tuple[Float[np.ndarray, " n_masks"], FitResult]:
    """One sample's normalized logits of ``masks`` and the mean-gradient "fit" of them."""
    n_layers, n_heads = engine.model.n_layers, engine.model.n_heads
    gates = torch.from_numpy(np.ascontiguousarray(masks)).reshape(-1, n_layers, n_heads)
    ys, grads = [], []
    with tqdm(total=len(gates), desc=desc, unit="mask", disable=not progress) as bar:
        for start in range(0, len(gates), batch_size):
            y, grad = engine.gate_gradients(
                gates[start : start + batch_size], batch_size, normalization=norm, progress=False
            )
            ys.append(y)
            grads.append(grad)
            bar.update(len(y))
    y = torch.cat(ys).double().numpy()
    coef = torch.cat(grads).double().reshape(len(y), -1).mean(0).numpy()
    linear = masks.astype(np.float64) @ coef
    intercept = float(np.mean(y - linear))
    pred = linear + intercept
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    constant = len(y) < 2 or np.ptp(y) == 0 or np.ptp(pred) == 0
    pearson = float("nan") if constant else float(np.corrcoef(y, pred)[0, 1])
    empty = np.empty(0)
    return y, FitResult(coef, intercept, r2, pearson, len(y), 0, empty, empty)
