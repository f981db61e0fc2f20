"""What the ablation analyses measure of the final-position logits: the metric.

Head attribution, image-token attribution and flow sweeps reduce the fp32 logits at the
final position of each run to one number per run, the *metric*; their normalizations
(clean against all ablated, the gap filter, faithfulness and completeness) use that same
number. ``metric=`` takes

- ``"logit"`` (default): the target token's logit;
- ``"logit_diff"``: the target's logit minus a ``foil`` token's (one foil per sample), the
  contrast "this answer rather than that one";
- ``"logprob"``: the target's log-probability, ``logit - logsumexp(logits)`` over the whole
  vocabulary, so that raising every logit together does not count;
- a callable ``fn(logits) -> values`` on the fp32 final-position logits, ``[batch, vocab]``
  to ``[batch]`` (a torch function of them; differentiable for ``method="gradient"``).

``"logit"`` and ``"logit_diff"`` need only one or two rows of the unembedding
(:meth:`Metric.vocab`); ``"logprob"`` and callables need every logit, computed per batch
on the model's device and reduced there, so only ``[batch]`` values reach the host.

A callable cannot be written to a store or results file; runs record it by its qualified
name (:attr:`Metric.name`, e.g. ``"mypackage.metrics.top2_margin"``), so that a store
written with another metric is refused. Changing the code of a function under the same
name is not detected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

#: The metrics named by a string.
METRICS = ("logit", "logit_diff", "logprob")

MetricFn = Callable[[Float[Tensor, "batch vocab"]], Float[Tensor, " batch"]]
#: What ``metric=`` takes.
MetricSpec = Literal["logit", "logit_diff", "logprob"] | MetricFn


def _qualified_name(fn: Callable) -> str:
    """``module.qualname`` of a function or class, else of a callable object's class."""
    named = fn if hasattr(fn, "__qualname__") else type(fn)
    module = getattr(named, "__module__", None)
    return f"{module}.{named.__qualname__}" if module else named.__qualname__


@dataclass(frozen=True)
class Metric:
    """A resolved ``metric=`` argument (:meth:`resolve`).

    Attributes:
        name: ``"logit"``, ``"logit_diff"``, ``"logprob"``, or a callable's qualified name.
        fn: the callable, or None for a named metric.
    """

    name: str
    fn: MetricFn | None = field(default=None, compare=False)

    @classmethod
    def resolve(cls, metric: MetricSpec | Metric) -> Metric:
        """The metric of a ``metric=`` argument.

        Raises:
            ValueError: an unknown metric name.
            TypeError: neither a name nor a callable.
        """
        if isinstance(metric, Metric):
            return metric
        if isinstance(metric, str):
            if metric not in METRICS:
                raise ValueError(
                    f"unknown metric {metric!r}; choose from {METRICS} or pass a callable "
                    "fn(logits [batch, vocab]) -> [batch]"
                )
            return cls(metric)
        if callable(metric):
            return cls(_qualified_name(metric), metric)
        raise TypeError(
            f"metric must be one of {METRICS} or a callable fn(logits [batch, vocab]) -> "
            f"[batch], got {type(metric).__name__}"
        )

    @property
    def needs_foil(self) -> bool:
        """True for ``"logit_diff"``: each sample needs a foil token."""
        return self.name == "logit_diff"

    @property
    def description(self) -> str:
        """What the metric is, for figure labels and messages."""
        return {
            "logit": "target logit",
            "logit_diff": "target logit - foil logit",
            "logprob": "target log-probability",
        }.get(self.name, f"{self.name}(logits)")

    def check_foil(
        self, foil: int | np.integer | None, target: int | np.integer | None = None
    ) -> None:
        """Refuse a missing foil for ``"logit_diff"``, a foil for another metric, or a
        foil equal to the target (the difference would be 0 for every run).

        Raises:
            ValueError: naming what is wrong and the fix.
        """
        if self.needs_foil and foil is None:
            raise ValueError(
                "metric='logit_diff' needs a foil token (foil=: a token id or one-token word, "
                "or one per sample) whose logit is subtracted from the target's"
            )
        if not self.needs_foil and foil is not None:
            raise ValueError(
                f"foil={foil!r} is only used by metric='logit_diff', but the metric is "
                f"{self.name!r}; pass metric='logit_diff' or no foil"
            )
        if foil is not None and target is not None and int(foil) == int(target):
            raise ValueError(
                f"the foil is the target token {target}: metric='logit_diff' would be 0 for "
                "every run; choose another foil (or give target=)"
            )

    def vocab(self, target: int, foil: int | None = None) -> list[int] | None:
        """The token ids whose logits the metric reads (None = the whole vocabulary)."""
        if self.name == "logit":
            return [target]
        if self.name == "logit_diff":
            return [target, foil]
        return None

    def reduce(
        self,
        logits: Float[Tensor, "batch n_vocab"],
        target: int,
        foil: int | None = None,
    ) -> Float[Tensor, " batch"]:
        """The metric of each row, from the logits of :meth:`vocab`'s ids (all when None)."""
        if self.name == "logit":
            return logits[:, 0]
        if self.name == "logit_diff":
            return logits[:, 0] - logits[:, 1]
        return self.of_logits(logits, target, foil)

    def of_logits(
        self,
        logits: Float[Tensor, "batch vocab"],
        target: int | Int[Tensor, " batch"],
        foil: int | Int[Tensor, " batch"] | None = None,
    ) -> Float[Tensor, " batch"]:
        """The metric of each row of full-vocabulary logits; ``target`` / ``foil`` one token
        for every row or one per row.

        Raises:
            TypeError, ValueError: a callable that does not return one float per row.
        """
        if self.name == "logit":
            return _pick(logits, target)
        if self.name == "logit_diff":
            return _pick(logits, target) - _pick(logits, foil)
        if self.name == "logprob":
            return _pick(logits, target) - torch.logsumexp(logits, -1)
        values = self.fn(logits)
        if not isinstance(values, Tensor) or not values.is_floating_point():
            got = values.dtype if isinstance(values, Tensor) else type(values).__name__
            raise TypeError(
                f"metric {self.name} must return a float tensor of one value per row of its "
                f"[batch, vocab] logits, got {got}"
            )
        if tuple(values.shape) != (logits.shape[0],):
            raise ValueError(
                f"metric {self.name} must map logits [batch, vocab] = {list(logits.shape)} to "
                f"[batch] = [{logits.shape[0]}], got shape {list(values.shape)}"
            )
        return values.float()


def _pick(
    logits: Float[Tensor, "batch vocab"], token: int | Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    """Each row's logit of ``token`` (one id for every row, or one per row)."""
    ids = torch.as_tensor(token, device=logits.device).reshape(-1, 1)
    return logits.gather(-1, ids.expand(logits.shape[0], 1))[:, 0]
