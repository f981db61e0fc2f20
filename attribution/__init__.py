"""Model-agnostic regression attribution.

Everything here works on a callable ``fn(masks) -> outputs``: ``masks`` is a bool array
``[b, n_components]`` (True = component kept, False = ablated) and ``outputs`` is
``[b]`` (or ``[b, k]``). What a component is (attention head, image token, ...) and how
ablation is done is up to ``fn``.

Typical use::

    masks = sample_masks(10_000, n_components, p_ablate=0.75, seed=0)
    y = collect(fn, masks, batch_size=64, store="runs/sample-0")   # resumable
    result = fit(masks, y)                                         # ElasticNet
    ranking = rank_by(result.coef)
    ks = default_ks(n_components)
    f = faithfulness_curve(fn, ranking, ks)
    c = completeness_curve(fn, ranking, ks)
    k = components_needed(ks, f.values, c.values)

Comparing two maps' top-k components (tasks, models): :func:`topk_overlap`,
:func:`chance_overlap_pvalue` (more shared than chance?) and :func:`task_permutation_test`
(less shared than if the task did not matter?), in :mod:`attribution.overlap`.

Sign convention: a positive coefficient means keeping the component raises the output.
"""

from attribution.collect import collect
from attribution.evaluate import (
    Curve,
    completeness_curve,
    components_needed,
    default_ks,
    faithfulness_curve,
)
from attribution.fit import Aggregate, FitResult, aggregate, fit
from attribution.masks import sample_masks
from attribution.overlap import (
    PermutationTest,
    chance_overlap_pvalue,
    task_permutation_test,
    topk_overlap,
    topk_set,
)
from attribution.plots import plot_curves, plot_heatmap, plot_scatter
from attribution.rankings import random_ranking, rank_by
from attribution.shards import (
    Results,
    load_results,
    merge_shards,
    resolve_shard,
    save_results,
    shard_indices,
)

__all__ = [
    "Aggregate",
    "Curve",
    "FitResult",
    "PermutationTest",
    "Results",
    "aggregate",
    "chance_overlap_pvalue",
    "collect",
    "completeness_curve",
    "components_needed",
    "default_ks",
    "faithfulness_curve",
    "fit",
    "load_results",
    "merge_shards",
    "plot_curves",
    "plot_heatmap",
    "plot_scatter",
    "random_ranking",
    "rank_by",
    "resolve_shard",
    "sample_masks",
    "save_results",
    "shard_indices",
    "task_permutation_test",
    "topk_overlap",
    "topk_set",
]
