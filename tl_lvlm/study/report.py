"""A study's results as the report's data (:class:`~tl_lvlm.report.data.ReportData`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
from jaxtyping import Bool
from PIL import Image

from tl_lvlm.report.data import FigureContext, Finding, ReportData
from tl_lvlm.report.from_results import flow_report, head_context, head_report, image_map
from tl_lvlm.study.image_maps import ObjectMap
from tl_lvlm.study.results import StudyResults

#: Titles of the flow figures, by sweep.
FLOW_TITLES = {
    "text_flow": "Text flow: question tokens blocked from their readers",
    "image_flow": "Image flow: the image blocked from all but one kind of reader",
    "image_flow_all_layers": "Image flow, every layer at once",
}


def study_report(
    results: StudyResults,
    findings: Sequence[Finding],
    images: Sequence[Image.Image],
    object_masks: Mapping[int, Bool[np.ndarray, "height width"]],
) -> ReportData:
    """The report of ``results``: ``findings`` (:meth:`StudyResults.findings`), per question
    the head heatmap, curves, fit quality and flow curves, and the first question's image
    maps over ``images`` (indexed by sample id) with their ``object_masks``; the samples
    left out are listed as notes."""
    data = ReportData(title=f"Study: {results.model}", findings=list(findings))
    first_context = None
    for q in results.questions:
        context = head_context(q.heads, q.question)
        first_context = first_context or context
        data.notes += [
            f"{q.question!r}: excluded {results.names[e.sample_id]} ({e.reason})"
            for e in q.heads.excluded
        ]
        if q.heads.fits:
            heads, curves, fits = head_report(q.heads, context, results.names)
            data.heads.append(heads)
            data.fits.append(fits)
            if curves is not None:
                data.curves.append(curves)
        for name, sweep in q.flows.items():
            if not len(sweep.kept):
                data.notes.append(f"{q.question!r}: {name}: every sample was excluded")
                continue
            flow_context = replace(
                context,
                settings=f"{sweep.window}-layer windows, {len(sweep.kept)} samples, "
                "logit(knocked) / logit(clean)",
            )
            data.flows.append(flow_report(sweep, flow_context, FLOW_TITLES.get(name, name)))
    for i, entry in results.object_maps.items():
        if not isinstance(entry, ObjectMap):
            data.notes.append(f"image-token map of {results.names[i]}: left out ({entry})")
            continue
        context = FigureContext(
            model=first_context.model,
            question=first_context.question,
            settings=f"image-token attribution, held-out R² {entry.r2:.2f}",
            heads_needed=first_context.heads_needed,
        )
        data.image_maps.append(
            image_map(
                entry.attribution(),
                images[i],
                context,
                name=results.names[i],
                object_mask=object_masks[i],
            )
        )
    return data
