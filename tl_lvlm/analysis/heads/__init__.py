"""Head attribution on an LVLM: which attention heads carry the image to the answer.

The package is ``tl_lvlm.analysis.heads``; its driver :func:`head_attribution` is also
``tl_lvlm.head_attribution``.

For each sample (image, question[, label]) the driver (:func:`head_attribution`)

1. picks the target token: ``target`` if given, else the label (exactly one token,
   :func:`answer_token_id`; a label of several words, such as ``"traffic light"``, by its
   first token, :func:`label_tokens`), else the model's greedy answer; a sample whose greedy
   answer differs from its label (the whole name) is excluded (``"wrong_answer"``);
2. builds an :class:`~tl_lvlm.ablation.engine.AblationEngine` (image K/V of ablated heads
   replaced by the baseline of :func:`resolve_baseline`, as seen by text queries) and
   records the target logit with every head kept (clean) and every head ablated; a
   sample with ``clean - all ablated < min_logit_gap`` is excluded (``"small_gap"``),
   since its normalized logit would divide by (almost) nothing;
3. runs ``n_masks`` random masks (each head ablated with probability ``p_ablate``;
   ``"auto"``: in rounds until the fit converges) through :func:`attribution.collect`
   (resumable with ``store_dir``) and normalizes them
   (:class:`~tl_lvlm.ablation.normalization.LogitNormalization`):
   ``y = (logit(mask) - logit(all ablated)) / (logit(clean) - logit(all ablated))``;
4. fits ElasticNet from masks to ``y`` (:func:`attribution.fit`): the coefficients
   are the heads' attributions, with held-out R² and Pearson ρ;
   or, with ``method="gradient"``, averages the gradient of ``y`` with respect to
   continuous image-K/V head gates over far fewer masks (``gradient``);
5. optionally scores the baselines of :mod:`tl_lvlm.analysis.competing` and measures
   faithfulness / completeness curves of every ranking (:mod:`tl_lvlm.analysis.evaluation`),
   each sample ranked by its own scores.

"Logit" above is the run's metric (``metric=``, :mod:`tl_lvlm.ablation.metric`): the target
logit by default, or target minus a ``foil`` token (``"logit_diff"``; a sample whose greedy
answer is its foil is excluded as ``"foil_is_target"``), the target's log-probability, or a
callable on the final-position logits.

Excluded samples are returned with their reason, never silently dropped. The same
masks (drawn from ``seed``) are used for every sample, so a sample's result does not
depend on which other samples run with it: shards of a run merge into exactly the
single-process result.

One idea per module: ``labels`` (words to token ids), ``samples`` (input parsing),
``config`` (checks, config, masks),
``convergence`` (``n_masks="auto"``), ``gradient`` (``method="gradient"``), ``store``
(the store directory), ``rankings`` (per-sample baselines and curves), ``result``
(:class:`HeadAttributionResult` and its files), ``run`` (the driver).
"""

from tl_lvlm.analysis.heads.config import (
    RESULTS_KIND,
    STORE_KEYS,
    HeadAttributionConfig,
    RegressionConfig,
)
from tl_lvlm.analysis.heads.convergence import AUTO_MAX_MASKS
from tl_lvlm.analysis.heads.labels import Answer, answer_token_id, answers_label, label_tokens
from tl_lvlm.analysis.heads.rankings import HEAD_ATTRIBUTION
from tl_lvlm.analysis.heads.result import STATUS, ExcludedSample, HeadAttributionResult
from tl_lvlm.analysis.heads.run import head_attribution
from tl_lvlm.analysis.heads.store import stored_samples

__all__ = [
    "AUTO_MAX_MASKS",
    "HEAD_ATTRIBUTION",
    "RESULTS_KIND",
    "STATUS",
    "STORE_KEYS",
    "Answer",
    "ExcludedSample",
    "HeadAttributionConfig",
    "HeadAttributionResult",
    "RegressionConfig",
    "answer_token_id",
    "answers_label",
    "head_attribution",
    "label_tokens",
    "stored_samples",
]
