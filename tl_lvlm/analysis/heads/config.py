"""A head attribution run's configuration: checks, the config dict, and its masks."""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Bool

from attribution import sample_masks
from tl_lvlm.ablation import check_scope
from tl_lvlm.analysis.competing import BASELINES
from tl_lvlm.analysis.heads.convergence import AUTO_MAX_MASKS, auto_rounds

RESULTS_KIND = "tl_lvlm.analysis.heads/1"
#: Configuration keys the collected logits depend on (every store's run config). The
#: number of masks is not one: runs of one seed draw prefixes of one mask sequence, so a
#: longer run extends a store and a shorter (or ``"auto"``) one reads a prefix of it.
STORE_KEYS = ("model", "n_layers", "n_heads", "p_ablate", "baseline", "scope", "seed")


def check_args(
    n_masks, n_components, p_ablate, holdout, min_logit_gap, batch_size, baselines, scope
) -> None:
    if not (0.0 < p_ablate < 1.0):
        raise ValueError(
            f"p_ablate must be in (0, 1) (the probability that a head is ablated in a mask; "
            f"the paper uses 0.75), got {p_ablate!r}"
        )
    if isinstance(n_masks, str) and n_masks == "auto":
        n_masks = auto_rounds(n_components)[0]  # the fewest masks an auto run fits on
    elif not isinstance(n_masks, (int, np.integer)) or n_masks < n_components + 1:
        raise ValueError(
            f"n_masks must be at least n_layers * n_heads + 1 = {n_components + 1} so that the "
            f"regression over {n_components} heads is determined, or 'auto', got {n_masks!r}; "
            "the paper uses 10,000"
        )
    if int(round(holdout * n_masks)) >= n_masks - n_components:
        raise ValueError(
            f"holdout={holdout} of n_masks={n_masks} leaves fewer than {n_components + 1} masks "
            "to fit on; lower holdout or raise n_masks"
        )
    if not min_logit_gap >= 0:
        raise ValueError(f"min_logit_gap must be >= 0, got {min_logit_gap!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(
            f"batch_size must be a positive integer or None (auto), got {batch_size!r}"
        )
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {BASELINES}")
    check_scope(scope)


METHODS = ("regression", "gradient")


def check_method(model, method, n_gradient_masks, scope, store_dir) -> None:
    """Refuse an unknown method, and what ``method="gradient"`` cannot do, before any run."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if method != "gradient":
        return
    if not isinstance(n_gradient_masks, (int, np.integer)) or n_gradient_masks < 1:
        raise ValueError(
            f"n_gradient_masks must be a positive integer (64-256 is typical), got "
            f"{n_gradient_masks!r}"
        )
    if scope != "text":
        raise ValueError(
            "method='gradient' differentiates the engine's shared-prefix suffix run, which only "
            f"scope='text' has; got scope={scope!r} (use method='regression' for scope='all')"
        )
    if store_dir is not None:
        raise ValueError(
            "store_dir keeps the regression's per-mask logits; method='gradient' stores "
            "nothing to resume (pass store_dir=None)"
        )
    try:
        model.family.require("engine")
    except NotImplementedError as e:
        raise NotImplementedError(
            f"method='gradient' needs the ablation engine: {e}; use method='regression' with "
            "scope='all'"
        ) from e


def n_masks_config(n_masks: int | str) -> int | str:
    return n_masks if isinstance(n_masks, str) else int(n_masks)


def n_drawn(config: dict[str, Any]) -> int:
    """Masks the run draws: ``n_masks``, or the most an ``"auto"`` run may use."""
    return AUTO_MAX_MASKS if config["n_masks"] == "auto" else int(config["n_masks"])


def run_masks(config: dict[str, Any]) -> Bool[np.ndarray, "n_masks n_layers n_heads"]:
    """The run's masks, a deterministic function of its configuration."""
    n_layers, n_heads = config["n_layers"], config["n_heads"]
    flat = sample_masks(n_drawn(config), n_layers * n_heads, config["p_ablate"], config["seed"])
    return flat.reshape(-1, n_layers, n_heads)
