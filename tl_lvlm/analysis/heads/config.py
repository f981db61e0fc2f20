"""A head attribution run's configuration: one frozen, validated dataclass, and its masks.

:class:`RegressionConfig` is the regression part that head attribution and image-token
attribution share (masks, the ElasticNet fit, the gap filter); :class:`HeadAttributionConfig`
adds what only head attribution has (method, evaluation, the competing rankings). Both
validate themselves in ``__post_init__``, serialise with :func:`dataclasses.asdict`, and are
the one list of settings used by :func:`~tl_lvlm.analysis.heads.head_attribution`, the
store check, the CLI's rerun check and ``tl-lvlm report``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np
from jaxtyping import Bool

from attribution import sample_masks
from attribution.own_checks import checks_own_arguments
from tl_lvlm.ablation import check_scope
from tl_lvlm.ablation.metric import Metric, MetricSpec
from tl_lvlm.analysis.competing import BASELINES
from tl_lvlm.analysis.heads.convergence import AUTO_MAX_MASKS, auto_rounds

RESULTS_KIND = "tl_lvlm.analysis.heads/1"
METHODS = ("regression", "gradient")

#: Field metadata: ``store`` = the collected logits depend on it (every store's run config);
#: ``result`` = False for settings that change how fast a run goes, never what it finds.
_STORE = {"store": True}
_SPEED = {"result": False}


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclass(frozen=True)
@checks_own_arguments
class RegressionConfig:
    """The regression over random ablation masks (the paper's defaults).

    Attributes:
        n_masks: random masks per sample (the paper: 10,000), or ``"auto"`` (head
            attribution only: rounds until the fit converges).
        p_ablate: probability that a component is ablated in a mask, in (0, 1).
        scope: ``"text"`` (ablated image K/V seen by text queries only) or ``"all"``.
        min_logit_gap: samples whose clean - all-ablated target logit is below this are
            left out (the normalization would divide by almost nothing); image-token maps
            of random models may pass a negative one to keep every sample.
        alpha, l1_ratio, holdout: the ElasticNet fit (:func:`attribution.fit`).
        seed: seeds the masks, the holdout and the random ranking.
        batch_size: masks per engine call; None = the engine's ``auto_batch_size``.
        metric: what is attributed of the final-position logits
            (:mod:`tl_lvlm.ablation.metric`): ``"logit"`` (the target's, the paper),
            ``"logit_diff"`` (target minus a foil token), ``"logprob"``, or a callable
            ``[batch, vocab] -> [batch]``. Recorded (stores, results, reruns) by
            :attr:`~tl_lvlm.ablation.metric.Metric.name`; ``min_logit_gap`` is in its units.
    """

    n_masks: int | Literal["auto"] = 10_000
    p_ablate: float = field(default=0.75, metadata=_STORE)
    scope: Literal["text", "all"] = field(default="text", metadata=_STORE)
    min_logit_gap: float = 0.5
    alpha: float = 0.0005
    l1_ratio: float = 0.5
    holdout: float = 0.1
    seed: int = field(default=0, metadata=_STORE)
    batch_size: int | None = field(default=None, metadata=_SPEED)
    metric: MetricSpec = field(default="logit", metadata=_STORE)

    def __post_init__(self) -> None:
        Metric.resolve(self.metric)  # refuses an unknown name or a non-callable, with the fix
        n_masks = self.n_masks
        if not (n_masks == "auto" if isinstance(n_masks, str) else _is_int(n_masks)):
            raise ValueError(f"n_masks must be a positive integer or 'auto', got {n_masks!r}")
        if _is_int(n_masks):
            object.__setattr__(self, "n_masks", int(n_masks))
        if not (isinstance(self.p_ablate, (int, float)) and 0.0 < self.p_ablate < 1.0):
            raise ValueError(
                f"p_ablate must be in (0, 1) (the probability that a head is ablated in a mask; "
                f"the paper uses 0.75), got {self.p_ablate!r}"
            )
        check_scope(self.scope)
        if not isinstance(self.min_logit_gap, (int, float)):
            raise ValueError(f"min_logit_gap must be a number, got {self.min_logit_gap!r}")
        if not (isinstance(self.holdout, (int, float)) and 0.0 <= self.holdout < 1.0):
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")
        if not (isinstance(self.l1_ratio, (int, float)) and 0.0 <= self.l1_ratio <= 1.0):
            raise ValueError(f"l1_ratio must be in [0, 1], got {self.l1_ratio!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.batch_size is not None and not (_is_int(self.batch_size) and self.batch_size > 0):
            raise ValueError(
                f"batch_size must be a positive integer or None (auto), got {self.batch_size!r}"
            )
        for name in ("p_ablate", "min_logit_gap", "alpha", "l1_ratio", "holdout"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "seed", int(self.seed))

    def check_components(self, n_components: int, what: str = "heads") -> None:
        """Refuse too few masks to determine a regression over ``n_components``.

        Raises:
            ValueError: ``n_masks`` below ``n_components + 1``, or a holdout leaving fewer.
        """
        n_masks = self.n_masks
        if n_masks == "auto":
            n_masks = auto_rounds(n_components)[0]  # the fewest masks an auto run fits on
        elif n_masks < n_components + 1:
            raise ValueError(
                f"n_masks must be at least {n_components} {what} + 1 = {n_components + 1} so "
                f"that the regression over {n_components} {what} is determined, or 'auto', got "
                f"{n_masks!r}; the paper uses 10,000"
            )
        if int(round(self.holdout * n_masks)) >= n_masks - n_components:
            raise ValueError(
                f"holdout={self.holdout} of n_masks={n_masks} leaves fewer than "
                f"{n_components + 1} masks to fit on; lower holdout or raise n_masks"
            )

    def fit_kwargs(self) -> dict[str, float | int]:
        """The keyword arguments of :func:`attribution.fit`."""
        return dict(alpha=self.alpha, l1_ratio=self.l1_ratio, holdout=self.holdout, seed=self.seed)

    @classmethod
    def result_keys(cls) -> tuple[str, ...]:
        """The settings a run's results depend on (all but the speed settings)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("result", True))

    @classmethod
    def store_keys(cls) -> tuple[str, ...]:
        """The settings the collected logits depend on."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("store", False))

    def result_settings(self) -> dict[str, Any]:
        """``asdict`` of :meth:`result_keys` in plain JSON types (tuples as lists)."""
        data = asdict(self)
        data["metric"] = self.resolved_metric.name  # a callable by its qualified name
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()
                if k in self.result_keys()}  # fmt: skip

    @property
    def resolved_metric(self) -> Metric:
        """:attr:`metric` as a :class:`~tl_lvlm.ablation.metric.Metric`."""
        return Metric.resolve(self.metric)

    def updated(self, **settings: Any) -> RegressionConfig:
        """A copy with ``settings`` replaced, validated again; unknown names are refused."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(
                f"unknown setting(s) {unknown} for {type(self).__name__}; expected some of "
                f"{sorted(known)}"
            )
        return replace(self, **settings)


@dataclass(frozen=True)
@checks_own_arguments
class HeadAttributionConfig(RegressionConfig):
    """Every setting of a head attribution run (:func:`~tl_lvlm.head_attribution`).

    Attributes (besides :class:`RegressionConfig`'s):
        method: ``"regression"`` (ElasticNet over ``n_masks`` masks, the paper) or
            ``"gradient"`` (mean gradient of ``y`` over ``n_gradient_masks`` gated masks;
            scope ``"text"`` only).
        n_gradient_masks: masks whose gradients ``method="gradient"`` averages.
        evaluate: score the competing rankings and measure faithfulness / completeness.
        compare_with: which rankings of :data:`~tl_lvlm.analysis.competing.BASELINES`
            head attribution is compared against (named ``baselines`` before 0.2).
        ks: numbers of top heads for the curves; None = :func:`attribution.default_ks`.
    """

    method: Literal["regression", "gradient"] = "regression"
    n_gradient_masks: int = 128
    evaluate: bool = True
    compare_with: tuple[str, ...] = BASELINES
    ks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_logit_gap < 0:
            raise ValueError(
                f"min_logit_gap must be >= 0, got {self.min_logit_gap!r}: a sample whose image "
                "lowers the target has no normalized logit"
            )
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        if not (_is_int(self.n_gradient_masks) and self.n_gradient_masks > 0):
            raise ValueError(
                f"n_gradient_masks must be a positive integer (64-256 is typical), got "
                f"{self.n_gradient_masks!r}"
            )
        if self.method == "gradient" and self.scope != "text":
            raise ValueError(
                "method='gradient' differentiates the engine's shared-prefix suffix run, which "
                f"only scope='text' has; got scope={self.scope!r} (use method='regression' for "
                "scope='all')"
            )
        if isinstance(self.compare_with, str):
            raise TypeError(
                f"compare_with must be a sequence of ranking names, got the string "
                f"{self.compare_with!r}; write compare_with=({self.compare_with!r},)"
            )
        compare_with = tuple(self.compare_with)
        unknown = [b for b in compare_with if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown rankings {unknown} in compare_with; choose from {BASELINES}")
        object.__setattr__(self, "compare_with", compare_with)
        if self.ks is not None:
            ks = np.asarray(self.ks)
            if ks.ndim != 1 or ks.size == 0 or not np.issubdtype(ks.dtype, np.integer):
                raise ValueError(
                    f"ks must be a non-empty 1-D sequence of head counts, got {self.ks!r}"
                )
            object.__setattr__(self, "ks", tuple(int(k) for k in ks))

    @classmethod
    def build(
        cls, config: HeadAttributionConfig | None = None, **settings: Any
    ) -> HeadAttributionConfig:
        """``config`` (default: the defaults) with keyword ``settings`` replaced.

        ``baselines=`` (the competing rankings' old name) still works, with a
        ``DeprecationWarning``: "baseline" now only means the image-K/V baseline.
        """
        if "baselines" in settings:
            warnings.warn(
                "head_attribution(baselines=...) is now compare_with=...: 'baseline' means "
                "the image-K/V ablation baseline only",
                DeprecationWarning,
                stacklevel=3,
            )
            settings["compare_with"] = settings.pop("baselines")
        return (config or cls()).updated(**settings)

    def check_model(self, model) -> None:
        """What needs the model: enough masks for its heads, the engine for gradients.

        Raises:
            ValueError: too few masks (:meth:`check_components`); ``ks`` above the head count.
            NotImplementedError: ``method="gradient"`` on a family that refuses the engine.
        """
        n_components = model.n_layers * model.n_heads
        if self.method == "regression":
            self.check_components(n_components)
        if self.ks is not None and not all(0 <= k <= n_components for k in self.ks):
            raise ValueError(f"ks must be head counts in [0, {n_components}], got {list(self.ks)}")
        if self.method == "gradient":
            try:
                model.family.require("engine")
            except NotImplementedError as e:
                raise NotImplementedError(
                    f"method='gradient' needs the ablation engine: {e}; use "
                    "method='regression' with scope='all'"
                ) from e


#: Configuration keys the collected logits depend on (every store's run config). The
#: number of masks is not one: runs of one seed draw prefixes of one mask sequence, so a
#: longer run extends a store and a shorter (or ``"auto"``) one reads a prefix of it.
STORE_KEYS = ("model", "n_layers", "n_heads", "baseline", *HeadAttributionConfig.store_keys())


def n_drawn(config: dict[str, Any]) -> int:
    """Masks the run draws: ``n_masks``, or the most an ``"auto"`` run may use."""
    return AUTO_MAX_MASKS if config["n_masks"] == "auto" else int(config["n_masks"])


def run_masks(config: dict[str, Any]) -> Bool[np.ndarray, "n_masks n_layers n_heads"]:
    """The run's masks, a deterministic function of its configuration."""
    n_layers, n_heads = config["n_layers"], config["n_heads"]
    flat = sample_masks(n_drawn(config), n_layers * n_heads, config["p_ablate"], config["seed"])
    return flat.reshape(-1, n_layers, n_heads)
