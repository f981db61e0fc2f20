"""One head attribution run directory, as ``tl-lvlm attribute`` writes it (and ``study`` reuses).

:class:`AttributionRun` is one ``--out`` of ``attribute``: its settings are checked against
the directory before the model loads (:meth:`~AttributionRun.check`), and
:meth:`~AttributionRun.run` then records the samples (``samples.json``), resumes from
``store/``, runs this shard's samples and writes the results (and, unsharded, ``summary.json``
and the figures). ``tl-lvlm study`` runs several of them (one per question, and the extra
mask seeds) over one loaded model.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_lvlm.cli.common import resolve_dtype, source_id
from tl_lvlm.cli.run_dir import (
    RESULTS_NAME,
    RunRecord,
    check_rerun,
    check_settings,
    shard_file_name,
    write_record,
)


def attribution_config(args: argparse.Namespace, **overrides: Any):
    """The :class:`~tl_lvlm.analysis.heads.HeadAttributionConfig` of the mask options."""
    from tl_lvlm.analysis.heads import HeadAttributionConfig

    settings = dict(
        n_masks=args.n_masks,
        p_ablate=args.p_ablate,
        scope=args.scope,
        min_logit_gap=args.min_logit_gap,
        seed=args.seed,
        evaluate=not getattr(args, "no_evaluate", False),
        batch_size=None if args.batch_size == "auto" else args.batch_size,
        metric=args.metric,
    )
    return HeadAttributionConfig(**{**settings, **overrides})


@dataclass
class AttributionRun:
    """One run directory of head attribution.

    Attributes:
        out: the directory.
        question: the question asked about every image.
        config: the run's :class:`~tl_lvlm.analysis.heads.HeadAttributionConfig`.
        settings: what its results depend on (``samples.json``'s settings).
        images_id: the image source as the run records it.
        foil: ``--foil`` (with ``--metric logit_diff``).
        image_size: ``--image-size``: every image resized to it.
    """

    out: Path
    question: str
    config: Any
    settings: dict[str, Any]
    images_id: str
    foil: str | None = None
    image_size: tuple[int, int] | None = None

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        out: Path,
        question: str,
        images_id: str,
        n_shards: int,
        device: str,
        **overrides: Any,
    ) -> AttributionRun:
        """The run of the command line's options in ``out`` (``overrides``: config fields)."""
        config = attribution_config(args, **overrides)
        settings = {
            "model": source_id(args.model),
            "dtype": str(resolve_dtype(args.dtype, device)).removeprefix("torch."),
            "baseline": args.baseline,
            "reference_images": None
            if args.reference_images is None
            else source_id(args.reference_images),
            "n_shards": n_shards,
            "foil": args.foil,
            **config.result_settings(),
            # Recorded when given, so that the runs of before --image-size existed still resume.
            **({} if args.image_size is None else {"image_size": list(args.image_size)}),
        }
        return cls(Path(out), question, config, settings, images_id, args.foil, args.image_size)

    def check(self) -> None:
        """Refuse other settings than the run in :attr:`out` has, before the model loads."""
        check_settings(self.out, self.settings, self.question, self.images_id)

    def results_file(self, shard: int, n_shards: int) -> Path:
        return self.out / (RESULTS_NAME if n_shards == 1 else shard_file_name(shard, n_shards))

    def check_samples(self, images) -> str:
        """``"new"``, ``"resume"`` or ``"extend"`` for the samples ``images`` in :attr:`out`;
        writes nothing.

        Raises:
            CliError: the directory holds a run of other settings or samples.
        """
        return check_rerun(self.out, self.record(images))

    def record(self, images) -> RunRecord:
        return RunRecord(self.images_id, self.question, images.names, images.labels, self.settings)

    def finished(self, images, shard: int, n_shards: int) -> bool:
        """This shard's results of exactly these samples are in :attr:`out` already."""
        return (
            self.check_samples(images) == "resume" and self.results_file(shard, n_shards).exists()
        )

    def run(
        self,
        model,
        images,
        reference,
        *,
        baseline: str,
        shard: int,
        n_shards: int,
        quiet: bool,
        store: bool = True,
        source=None,
    ):
        """Run this shard's samples into :attr:`out`; returns the shard's result.

        ``source``: the listed ``--images`` (its COCO selection goes to ``selection.json``).

        Raises:
            CliError: the directory holds a run of other settings or samples.
            KeyboardInterrupt: after saying how far the run got (the rerun resumes).
        """
        from attribution import shard_indices
        from tl_lvlm.analysis.heads import head_attribution, stored_samples
        from tl_lvlm.cli.image_sources import write_selection

        state = self.check_samples(images)
        # From here on the run directory is written.
        self.out.mkdir(parents=True, exist_ok=True)
        write_record(self.out, self.record(images))
        if source is not None:
            write_selection(self.out, source)
        store_dir = self.out / "store" if store else None
        ids = shard_indices(len(images), shard, n_shards)
        n_total = len(ids)
        if state != "new" and store_dir is not None:
            # The same count as the interrupt message's: this shard's samples stored in full.
            what = "extending" if state == "extend" else "resuming"
            print(
                f"{what} the run in {self.out}: {stored_samples(store_dir, ids)} of {n_total} "
                "samples already collected",
                file=sys.stderr,
            )
        progress = {"done": 0}

        def on_sample_done(n_done: int, total: int) -> None:
            progress["done"] = n_done

        try:
            result = head_attribution(
                model,
                [(image, self.question) for image in images.images],
                self.config,
                labels=images.labels,
                foil=self.foil,
                baseline=baseline,
                reference=reference,
                image_size=self.image_size,
                store_dir=store_dir,
                shard=shard,
                n_shards=n_shards,
                progress=not quiet,
                on_sample_done=on_sample_done,
            )
        except KeyboardInterrupt:
            if store_dir is not None:
                # Counted as the resumed run counts them: a sample done but excluded (wrong
                # answer, small gap) has no stored logits and is checked again on resume.
                done, then = stored_samples(store_dir, ids), "rerun the same command to resume"
            else:
                done, then = progress["done"], "--no-store kept nothing: a rerun starts again"
            print(f"interrupted: {done} of {n_total} samples collected; {then}", file=sys.stderr)
            raise
        result.save(self.results_file(shard, n_shards))
        return result
