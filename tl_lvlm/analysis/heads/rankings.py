"""One sample's rankings (head attribution and the baselines) and their curves."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from jaxtyping import Bool, Float, Int

from attribution import random_ranking, rank_by
from tl_lvlm.analysis.competing import ATTENTION_BASELINES, attention_to_image, single_head_effects
from tl_lvlm.analysis.evaluation import Evaluation, evaluate_rankings
from tl_lvlm.inputs import LVLMInputs

#: Name of head attribution's own ranking in evaluations.
HEAD_ATTRIBUTION = "head_attribution"

NormalizedFn = Callable[[Bool[np.ndarray, "b n_components"]], Float[np.ndarray, " b"]]


def sample_seed(seed: int, sample_id: int) -> int:
    """The seed of one sample's random ranking: independent of which shard runs it."""
    return int(np.random.SeedSequence([seed, sample_id]).generate_state(1)[0])


def evaluate_sample(
    model,
    inputs: LVLMInputs,
    normalized: NormalizedFn,
    coef: Float[np.ndarray, " n_components"],
    baselines: Sequence[str],
    ks: Int[np.ndarray, " n_points"],
    random_seed: int,
    batch_size: int,
) -> tuple[dict[str, Float[np.ndarray, " n_components"]], Evaluation]:
    """One sample's baseline scores, and curves of every ranking ranked by its own scores."""
    scores = baseline_scores(model, inputs, normalized, baselines, batch_size)

    def order(name: str) -> Int[np.ndarray, " n_components"]:
        return random_ranking(len(coef), random_seed) if name == "random" else rank_by(scores[name])

    rankings = {HEAD_ATTRIBUTION: rank_by(coef), **{name: order(name) for name in baselines}}
    curves = evaluate_rankings([normalized], rankings, ks, batch_size=batch_size, progress=False)
    return scores, curves


def baseline_scores(
    model, inputs: LVLMInputs, normalized: NormalizedFn, baselines: Sequence[str], batch_size: int
) -> dict[str, Float[np.ndarray, " n_components"]]:
    """One sample's score of each baseline that has one (``random`` has none), flat over heads."""
    scores = {}
    if any(b in ATTENTION_BASELINES for b in baselines):
        attention = attention_to_image(model, inputs)
        scores.update({b: attention[b][0].double().numpy().ravel() for b in ATTENTION_BASELINES})
    if "single_head" in baselines:
        n_components = model.n_layers * model.n_heads
        scores["single_head"] = single_head_effects(
            normalized, n_components, batch_size=batch_size, progress=False
        )
    return {name: scores[name] for name in baselines if name in scores}
