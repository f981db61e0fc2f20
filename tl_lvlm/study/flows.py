"""The paper's token-flow sweeps of one question: windowed, and in every layer at once."""

from __future__ import annotations

from collections.abc import Sequence

from tl_lvlm.ablation.metric import Metric, MetricSpec
from tl_lvlm.flow import PAPER_EDGE_SETS, FlowSweep, flow_sweep
from tl_lvlm.inputs import LVLMInputs

#: The sweeps :func:`paper_sweeps` returns: the two experiments swept with a window, and
#: ``image_flow`` knocked out in every layer at once (the image's whole effect).
SWEEPS = ("text_flow", "image_flow", "image_flow_all_layers")


def paper_sweeps(
    model,
    samples: LVLMInputs,
    window: int | None = None,
    *,
    targets: Sequence[int | None] | None = None,
    metric: MetricSpec | Metric = "logit",
    foil: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, FlowSweep]:
    """:func:`~tl_lvlm.flow.flow_sweep` of :data:`~tl_lvlm.flow.PAPER_EDGE_SETS` (``metric``
    and ``foil`` as there).

    Returns:
        :data:`SWEEPS` -> sweep: ``text_flow`` and ``image_flow`` with ``window`` layers per
        window (default ``n_layers // 8``), ``image_flow_all_layers`` with one window of
        every layer (what :func:`~tl_lvlm.study.findings.only_role_final_read_image` reads).
    """
    kwargs = dict(
        targets=targets, metric=metric, foil=foil, batch_size=batch_size, progress=progress
    )
    return {
        "text_flow": flow_sweep(model, samples, PAPER_EDGE_SETS["text_flow"], window, **kwargs),
        "image_flow": flow_sweep(model, samples, PAPER_EDGE_SETS["image_flow"], window, **kwargs),
        "image_flow_all_layers": flow_sweep(
            model, samples, PAPER_EDGE_SETS["image_flow"], model.n_layers, **kwargs
        ),
    }
