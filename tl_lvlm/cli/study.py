"""``tl-lvlm study``: the paper's whole study on one model and one data set, in one command.

    tl-lvlm study --model llava-hf/llava-1.5-7b-hf --images coco/val2017 \\
        --coco-annotations coco/annotations/instances_val2017.json --out out/study \\
        --question "What is the main object in this image? Answer in a single word." \\
        --question "What color is the main object? Answer in a single word."

It runs, over one loaded model:

- head attribution with the baselines and the heads needed, per ``--question``
  (``OUT/heads/<question>/``: an ``attribute`` run directory each);
- the same for the first question under ``--n-seeds - 1`` further mask seeds, without the
  baselines (``OUT/seeds/<question>/seed-<s>/``), for seed stability;
- the paper's text-flow and image-flow sweeps per question, and image flow in every layer at
  once (``OUT/flow/<question>/flow.json``);
- image-token attribution of the first question for every image with an object mask (the
  COCO segmentations of ``--coco-annotations``), object against background
  (``OUT/image_tokens/<question>/``);

and tests every finding of :mod:`tl_lvlm.study.findings` on them (semantics against
appearance with ``--styles``, task specificity with several ``--question``). Labels
(``labels.json``, COCO categories, style classes) are the expected answers to the *first*
question; the other questions attribute the model's own answer.

It writes into ``--out``: ``study.json`` (its settings), ``selection.json`` (with
``--coco-annotations``), ``findings.json``
(``{"findings": [{"finding", "holds", "statistic", "n", "summary", "question"}]}``) and
``report.html``.

**Resume.** A rerun of the same command skips what is finished: head attribution reads its
results (or resumes from ``store/``, like ``attribute``), the flow sweeps and image maps read
their files. A rerun with other settings is refused before anything is written.

**Shards.** ``--shard I --n-shards N`` (or torchrun / SLURM variables) runs shard I's block
of samples of every head attribution and image map; the shard that finds every shard's
results there (the last to finish, or any shard's command rerun) completes the study: it
merges them, runs the flow sweeps and writes the findings and the report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from tl_lvlm.cli.common import (
    CliError,
    add_baseline_options,
    add_global_options,
    add_image_size_option,
    add_images_option,
    add_mask_options,
    add_metric_options,
    add_samples_option,
    add_shard_options,
    check_metric_options,
    positive_int,
    resolve_device,
)
from tl_lvlm.cli.flow import DEFAULT_QUESTION

STUDY_NAME = "study.json"
FINDINGS_NAME = "findings.json"
HTML_NAME = "report.html"


def add_study_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``study`` command to ``subparsers`` (from ``parser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "study",
        help="the paper's whole study in one command: findings.json and report.html",
        description="Head attribution with baselines, layers, semantics against appearance, "
        "token flow, object against background, cross-task overlap and seed stability on one "
        "model and one data set; see README's study section.",
    )
    p.add_argument("--model", required=True, help="hub name, local directory or zoo name")
    add_images_option(p)
    p.add_argument(
        "--question",
        action="append",
        default=None,
        help="question asked about each image; give it several times for cross-task overlap "
        f"(labels answer the first); None = {DEFAULT_QUESTION!r}",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    add_samples_option(p, default=None, what="all images")
    add_mask_options(p)
    add_baseline_options(p)
    add_image_size_option(p)
    add_metric_options(p)
    add_shard_options(p)
    p.add_argument(
        "--n-seeds",
        type=positive_int,
        default=3,
        help="mask seeds of the seed-stability check (--seed, --seed + 1, ...); 1 skips it",
    )
    p.add_argument(
        "--window",
        type=positive_int,
        default=None,
        help="layers per knockout window of the flow sweeps; None = n_layers // 8",
    )
    p.add_argument(
        "--image-masks",
        type=positive_int,
        default=None,
        help="masks per image-token attribution; None = --n-masks (10000 with auto)",
    )
    p.add_argument(
        "--n-permutations",
        type=positive_int,
        default=2000,
        help="permutations of the semantic and cross-task tests",
    )
    add_global_options(p, top_level=False)
    p.set_defaults(func=study_command)
    return p


def question_slug(question: str) -> str:
    """A directory name for ``question``: its words, and a hash that keeps it unique."""
    words = re.sub(r"[^a-z0-9]+", "-", question.lower()).strip("-")[:48].rstrip("-")
    return f"{words or 'question'}-{hashlib.sha1(question.encode()).hexdigest()[:6]}"


def check_questions(questions: list[str] | None) -> list[str]:
    """The ``--question`` values (default the paper's), each non-empty and given once."""
    questions = questions or [DEFAULT_QUESTION]
    for q in questions:
        if not q.strip():
            raise CliError("--question '' is empty; ask a question about the images")
    twice = sorted({q for q in questions if questions.count(q) > 1})
    if twice:
        raise CliError(f"--question {twice[0]!r} is given more than once; ask each question once")
    return questions


def study_command(args: argparse.Namespace) -> int:
    """Run ``tl-lvlm study`` (see the module doc); returns the exit status."""
    from tl_lvlm.cli.attribute import AttributionRun
    from tl_lvlm.cli.sources import check_sources, load_sources

    # Everything that can be checked without the model, first.
    questions = check_questions(args.question)
    sources = check_sources(args)
    check_metric_options(args)
    out: Path = args.out
    if (out / "samples.json").exists():
        raise CliError(
            f"--out {out} holds a tl-lvlm attribute run, not a study; choose a new --out"
        )

    from attribution import resolve_shard

    shard, n_shards = resolve_shard(args.shard, args.n_shards)
    device = resolve_device(args.device)
    slugs = [question_slug(q) for q in questions]
    runs = [
        AttributionRun.from_args(args, out / "heads" / slug, q, sources.images_id, n_shards, device)
        for q, slug in zip(questions, slugs, strict=True)
    ]
    seeds = [args.seed + i for i in range(args.n_seeds)]
    seed_runs = [
        AttributionRun.from_args(
            args,
            out / "seeds" / slugs[0] / f"seed-{s}",
            questions[0],
            sources.images_id,
            n_shards,
            device,
            seed=s,
            evaluate=False,
        )
        for s in seeds[1:]
    ]
    image_masks = args.image_masks or (10_000 if args.n_masks == "auto" else args.n_masks)
    settings = {
        "images": sources.images_id,
        "questions": questions,
        "n_seeds": args.n_seeds,
        "window": args.window,
        "image_masks": image_masks,
        "n_permutations": args.n_permutations,
        **runs[0].settings,
    }
    _check_study(out, settings)
    for run in runs + seed_runs:
        run.check()

    model, images, reference = load_sources(args, device, sources)
    unlabelled = replace(images, labels=None)
    # Labels answer the first question; every other run attributes the model's own answer.
    datasets = [images] + [unlabelled] * (len(runs) - 1)
    # What needs the model, checked before anything is written.
    for run, data in zip(runs + seed_runs, datasets + [images] * len(seed_runs), strict=True):
        run.check_samples(data)
        run.config.check_model(model)
    from tl_lvlm.analysis.heads import label_tokens
    from tl_lvlm.inputs.images import to_rgb_images
    from tl_lvlm.study.image_maps import IMAGE_TOKEN_DEFAULTS

    samples = model.prepare(images.images, questions[0], image_size=args.image_size)
    if reference is not None and args.image_size is not None:
        reference = to_rgb_images(reference, args.image_size)
    # A label of several words is attributed through its first token (as in attribute).
    targets = [
        None if label is None else label_tokens(model, label)[0]
        for label in (images.labels or [None] * len(images))
    ]

    coco = getattr(sources.images, "coco", None)
    masks = {} if coco is None else {i: coco.masks[n] for i, n in enumerate(images.names)}
    map_config = IMAGE_TOKEN_DEFAULTS.updated(
        n_masks=image_masks,
        p_ablate=args.p_ablate,
        scope=args.scope,
        seed=args.seed,
        metric=args.metric,
    )
    if masks:
        n_image = max(samples.positions("image", i).numel() for i in masks)
        map_config.check_components(n_image, "image positions (--image-masks)")

    from tl_lvlm._utils.files import write_json
    from tl_lvlm.cli.image_sources import write_selection

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / STUDY_NAME, {"settings": settings})
    write_selection(out, sources.images)
    done: set[Path] = set()
    try:
        for run, data in zip(runs + seed_runs, datasets + [images] * len(seed_runs), strict=True):
            if run.finished(data, shard, n_shards):
                continue
            done.add(run.out)
            run.run(
                model,
                data,
                reference,
                baseline=args.baseline,
                shard=shard,
                n_shards=n_shards,
                quiet=args.quiet,
                source=sources.images,
            )
    except KeyboardInterrupt:
        return 130

    maps_dir = out / "image_tokens" / slugs[0]
    from attribution import shard_indices

    mine = [i for i in shard_indices(len(images), shard, n_shards) if i in masks]
    map_args = (model, samples, targets, masks, maps_dir, images.names, map_config, args)
    if n_shards > 1:
        _object_maps(*map_args, reference, mine)
        missing = [
            str(run.out) for run in runs + seed_runs
            if not all(run.results_file(i, n_shards).exists() for i in range(n_shards))
        ]  # fmt: skip
        if missing:
            print(
                f"shard {shard} of {n_shards} done; the study completes when every shard is: "
                f"the last to finish writes {FINDINGS_NAME} and {HTML_NAME} (or rerun any "
                f"shard's command then); waiting for {len(missing)} run directories, e.g. "
                f"{missing[0]}",
                file=sys.stderr,
            )
            return 0
    # Every shard's maps are read from their files; any still missing are computed here.
    object_maps = _object_maps(*map_args, reference, sorted(masks))
    return _complete(
        args, model, images, questions, slugs, runs, seed_runs, seeds, done, samples, targets,
        masks, object_maps, sources,
    )  # fmt: skip


def _check_study(out: Path, settings: dict[str, Any]) -> None:
    """Refuse a study in ``out`` with other settings (before the model loads)."""
    path = out / STUDY_NAME
    if not path.exists():
        return
    try:
        before = json.loads(path.read_text())["settings"]
    except (ValueError, KeyError, TypeError) as err:
        raise CliError(f"{path} is not a tl-lvlm study record ({err}); use a new --out") from None
    keys = list(dict.fromkeys([*before, *settings]))
    diffs = [
        f"{k} {before.get(k)!r} -> {settings.get(k)!r}"
        for k in keys
        if before.get(k) != settings.get(k)
    ]
    if diffs:
        raise CliError(
            f"--out {out} holds a study with other settings ({'; '.join(diffs)}); nothing was "
            "changed: rerun with the old settings to resume it, or choose a new --out"
        )


def _object_maps(model, samples, targets, masks, directory, names, config, args, reference, ids):
    """The object maps of samples ``ids`` (read where their file exists, else computed and
    written): sample id -> :class:`~tl_lvlm.study.image_maps.ObjectMap` or the reason it
    was left out."""
    from tl_lvlm._utils.files import write_json
    from tl_lvlm.study.image_maps import ObjectMap, object_map

    found, todo = {}, []
    for i in ids:
        path = directory / f"sample-{i}.json"
        entry = json.loads(path.read_text()) if path.exists() else None
        if entry is None or entry["name"] != names[i]:
            todo.append(i)
        elif "excluded" in entry:
            found[i] = entry["excluded"]
        else:
            found[i] = ObjectMap.from_json(entry["map"])
    if not todo:
        return found
    from tl_lvlm.ablation import resolve_baseline
    from tl_lvlm.analysis.heads import answer_token_id

    baseline = resolve_baseline(model, args.baseline, reference, samples)
    foil = None if args.foil is None else answer_token_id(model, args.foil)
    directory.mkdir(parents=True, exist_ok=True)
    for i in todo:
        result = object_map(
            model,
            samples[i],
            masks[i],
            target=targets[i],
            foil=foil,
            baseline=baseline,
            config=config,
            store=directory / "store" / f"sample-{i}",
            progress=not args.quiet,
        )
        entry = {"name": names[i]}
        if isinstance(result, str):
            entry["excluded"] = result
        else:
            entry["map"] = result.to_json()
        write_json(directory / f"sample-{i}.json", entry)
        found[i] = result
    return found


def _complete(
    args,
    model,
    images,
    questions,
    slugs,
    runs,
    seed_runs,
    seeds,
    done,
    samples,
    targets,
    masks,
    object_maps,
    sources,
) -> int:
    """Merge the head attributions, sweep, test the findings, write the report."""
    from tl_lvlm._utils.files import json_safe, write_json
    from tl_lvlm.cli.report import load_run, write_report
    from tl_lvlm.report.html import write_html
    from tl_lvlm.study.report import study_report
    from tl_lvlm.study.results import QuestionResults, StudyResults

    out: Path = args.out
    results = {}
    for run in runs + seed_runs:
        # Read back also when just computed: a resumed study then tests the same numbers.
        results[run.out] = load_run(run.out)[0]
        # The seeds' directories keep only their results: the study reports them.
        if run in runs and (run.out in done or not (run.out / "summary.json").exists()):
            write_report(
                results[run.out],
                run.out,
                tokenizer=model.tokenizer,
                names=images.names,
                question=run.question,
            )
    per_question = []
    for i, (question, slug, run) in enumerate(zip(questions, slugs, runs, strict=True)):
        flows = _flows(
            model,
            images,
            question,
            samples if i == 0 else model.prepare(images.images, question),
            targets if i == 0 else None,
            out / "flow" / slug,
            args,
        )
        per_question.append(QuestionResults(question, results[run.out], flows))
    study = StudyResults(
        model=str(args.model),
        names=images.names,
        questions=per_question,
        classes=images.labels if getattr(sources.images, "styles", None) else None,
        styles=_styles(sources.images, images.names),
        object_maps=object_maps,
        seeds={
            seeds[0]: results[runs[0].out],
            **{s: results[r.out] for s, r in zip(seeds[1:], seed_runs, strict=True)},
        },
        n_permutations=args.n_permutations,
        seed=args.seed,
    )
    findings = study.findings()
    rows = [
        {
            "finding": row.finding,
            "holds": row.holds,
            "statistic": row.statistic,
            "n": row.n,
            "summary": row.summary,
            "question": row.question,
        }
        for row in findings
    ]
    write_json(out / FINDINGS_NAME, json_safe({"findings": rows}))
    data = study_report(study, findings, images.images, masks)
    html = write_html(data, out / HTML_NAME)
    for row in findings:
        verdict = {True: "holds", False: "does not hold", None: "not tested"}[row.holds]
        asked = "" if row.question is None else f" [{row.question}]"
        print(f"{verdict:>13}  {row.finding}{asked}")
    print(f"{FINDINGS_NAME} and {HTML_NAME} in {out}; the report: {html}")
    return 0


def _flows(model, images, question, samples, targets, directory: Path, args):
    """The question's :func:`~tl_lvlm.study.flows.paper_sweeps`, read from
    ``directory/flow.json`` when it holds these samples' sweeps, else run and written."""
    from tl_lvlm._utils.files import json_safe, write_json
    from tl_lvlm.analysis.heads import answer_token_id
    from tl_lvlm.flow import FlowSweep
    from tl_lvlm.study.flows import paper_sweeps

    path = directory / "flow.json"
    key = {
        "question": question, "names": images.names, "window": args.window,
        "metric": args.metric, "foil": args.foil,
    }  # fmt: skip
    if path.exists():
        saved = json.loads(path.read_text())
        if {k: saved.get(k) for k in key} == key:
            return {name: FlowSweep.from_dict(s) for name, s in saved["sweeps"].items()}
    foil = None if args.foil is None else answer_token_id(model, args.foil)
    sweeps = paper_sweeps(
        model, samples, args.window, targets=targets, metric=args.metric, foil=foil,
        progress=not args.quiet,
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    write_json(path, json_safe({**key, "sweeps": {k: s.to_dict() for k, s in sweeps.items()}}))
    return sweeps


def _styles(source, names: list[str]) -> list[str] | None:
    styles = getattr(source, "styles", None)
    return None if styles is None else [styles[name] for name in names]
