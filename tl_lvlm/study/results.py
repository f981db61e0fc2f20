"""Everything one study computed, and the findings it supports.

:class:`StudyResults` holds the analyses of :mod:`tl_lvlm.study` on one model and one data
set (per question: head attribution and the flow sweeps; for the first question: the
object maps and the runs under other mask seeds); :meth:`StudyResults.findings` tests every
finding of :mod:`tl_lvlm.study.findings` on them, one row per question where a finding is
about one question, and a row with ``holds`` None and the reason where the data cannot test
it (no styles, no object masks, one question).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import combinations

import numpy as np

from tl_lvlm.analysis.heads import HeadAttributionResult
from tl_lvlm.flow import FlowSweep
from tl_lvlm.report.data import Finding
from tl_lvlm.study import findings as f
from tl_lvlm.study.image_maps import ObjectMap


@dataclass
class QuestionResults:
    """One question's analyses.

    Attributes:
        question: the question asked about every image.
        heads: head attribution with the baselines (evaluated), all samples.
        flows: :func:`~tl_lvlm.study.flows.paper_sweeps` of all samples.
    """

    question: str
    heads: HeadAttributionResult
    flows: dict[str, FlowSweep]


@dataclass
class StudyResults:
    """One study's analyses (see the module doc).

    Attributes:
        model: the checkpoint.
        names: sample names, indexed by sample id.
        questions: per question, in the order asked (the first is the labelled one).
        classes: each sample's class (``--styles``: the class folder), or None.
        styles: each sample's style, or None without style sets.
        object_maps: sample id -> the first question's object map, or why it was left out;
            empty without object masks.
        seeds: mask seed -> the first question's head attribution under it (the study's own
            seed included).
        n_permutations: permutations of the semantic and task tests.
        seed: seed of those permutations.
    """

    model: str
    names: list[str]
    questions: list[QuestionResults]
    classes: list[str | None] | None = None
    styles: list[str] | None = None
    object_maps: dict[int, ObjectMap | str] = field(default_factory=dict)
    seeds: dict[int, HeadAttributionResult] = field(default_factory=dict)
    n_permutations: int = 2000
    seed: int = 0

    def findings(self) -> list[Finding]:
        """Every finding, tested (see the module doc)."""
        rows: list[Finding] = []
        for q in self.questions:
            rows += [replace(row, question=q.question) for row in self._per_question(q)]
        rows.append(self._object_background())
        rows += self._task_specific()
        rows.append(self._seed_stability())
        return rows

    def _per_question(self, q: QuestionResults) -> list[Finding]:
        heads = q.heads
        n = len(heads.fits)
        n_total = heads.n_layers * heads.n_heads
        if not n:
            reason = f"no sample was kept ({len(heads.excluded)} excluded)"
            rows = [f.regression_explains([], [])]
            rows += [f.not_tested(name, reason) for name in (f.FEWER_HEADS, f.MID_TO_LATE)]
        else:
            rows = [f.regression_explains(heads.r2, heads.pearson)]
            if heads.evaluation is None:
                rows.append(f.not_tested(f.FEWER_HEADS, "not evaluated", n))
            else:
                rows.append(f.fewer_heads(heads.heads_needed(), n_total, n))
            rows.append(f.mid_to_late_layers(heads.mean, heads.coef))
        rows.append(self._semantics(heads))
        rows.append(f.text_before_image(q.flows["text_flow"], q.flows["image_flow"]))
        rows.append(f.only_role_final_read_image(q.flows["image_flow_all_layers"]))
        return rows

    def _semantics(self, heads: HeadAttributionResult) -> Finding:
        if self.styles is None or self.classes is None:
            return f.not_tested(f.SEMANTICS, "no style sets (--styles) to compare")
        if not heads.fits:
            return f.not_tested(f.SEMANTICS, "no sample was kept")
        ids = heads.sample_ids
        return f.semantics_over_appearance(
            heads.coef,
            [self.classes[i] for i in ids],
            [self.styles[i] for i in ids],
            n_permutations=self.n_permutations,
            seed=self.seed,
        )

    def _object_background(self) -> Finding:
        if not self.object_maps:
            return f.not_tested(
                f.OBJECT_BACKGROUND, "no object masks (COCO segmentations: --coco-annotations)"
            )
        maps = [m for m in self.object_maps.values() if isinstance(m, ObjectMap)]
        if not maps:
            first = next(iter(self.object_maps.values()))
            return f.not_tested(f.OBJECT_BACKGROUND, f"every image was left out, e.g.: {first}")
        finding = f.object_and_background(
            [m.object_share for m in maps], [m.object_area for m in maps]
        )
        return replace(finding, question=self.questions[0].question)

    def _task_specific(self) -> list[Finding]:
        if len(self.questions) < 2:
            return [f.not_tested(f.TASK_SPECIFIC, "one question asked; pass several --question")]
        rows = []
        for a, b in combinations(self.questions, 2):
            common = np.intersect1d(a.heads.sample_ids, b.heads.sample_ids)
            # sample_ids are ascending (samples run in order), so searchsorted finds the rows.
            coef_a = a.heads.coef[np.searchsorted(a.heads.sample_ids, common)]
            coef_b = b.heads.coef[np.searchsorted(b.heads.sample_ids, common)]
            rows.append(
                f.task_specific(
                    coef_a,
                    coef_b,
                    tasks=(a.question, b.question),
                    n_permutations=self.n_permutations,
                    seed=self.seed,
                )
            )
        return rows

    def _seed_stability(self) -> Finding:
        kept = {s: r for s, r in self.seeds.items() if r.fits}
        if len(kept) < 2:
            return f.not_tested(f.SEED_STABLE, f"{len(kept)} seed(s) kept a sample; need 2")
        n = min(len(r.fits) for r in kept.values())
        finding = f.seed_stability({s: r.mean for s, r in kept.items()}, n)
        return replace(finding, question=self.questions[0].question)
