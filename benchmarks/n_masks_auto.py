"""``n_masks="auto"`` against the full 10,000-mask run, per sample, on the bundled model.

For each of ``--n-samples`` held-out digits (the first test image of each digit 0, 1, ...)
it runs head attribution twice on ``tl-lvlm/tiny-digits`` with one baseline (the mean
image K/V of 128 training digits), each run in its own store (so the auto run's time is
its own):

- ``n_masks=10_000`` (the paper's count);
- ``n_masks="auto"`` (rounds of masks until the fit converges; see
  ``tl_lvlm.analysis.heads.convergence``).

It reports per sample: masks used, held-out R², heads needed (smallest k with
faithfulness > 0.8 and completeness < 0.2 on that sample's own curves, ranked by its
own attribution), top-10 overlap and the correlation of the two runs' coefficients, and
the wall time of each run. Results go to ``--out`` (JSON) and stdout (a Markdown table).

    python benchmarks/n_masks_auto.py   # ~120,000 masks + evaluation; 26 min on a busy 2-core box
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from attribution import components_needed, rank_by
from tl_lvlm import HookedLVLM, head_attribution
from tl_lvlm.analysis.heads import HEAD_ATTRIBUTION
from tl_lvlm.zoo import DIGITS_QUESTION, digit_token_ids
from tl_lvlm.zoo.digits import load_digit_images

MODEL = "tl-lvlm/tiny-digits"


def per_sample_heads_needed(result) -> list[int | None]:
    ev = result.evaluation
    f, c = ev.faithfulness[HEAD_ATTRIBUTION], ev.completeness[HEAD_ATTRIBUTION]
    return [components_needed(ev.ks, f[i], c[i]) for i in range(len(f))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "n_masks_auto.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = HookedLVLM.from_pretrained(MODEL, device="cpu")
    images, labels = load_digit_images(split="test", style="original", seed=args.seed)
    first = [int(np.flatnonzero(labels == d)[0]) for d in range(args.n_samples)]
    # Labels as token ids (`` zero`` .. `` nine``), decoded for the table.
    label_ids = [digit_token_ids(model.tokenizer)[labels[i]] for i in first]
    samples = [(images[i], DIGITS_QUESTION, t) for i, t in zip(first, label_ids, strict=True)]
    reference = load_digit_images(split="train", style="original", seed=args.seed)[0][:128]
    settings = dict(reference=reference, seed=args.seed, batch_size=32, progress=False)

    runs, seconds = {}, {}
    for name, n_masks in (("full", 10_000), ("auto", "auto")):
        with tempfile.TemporaryDirectory() as store:
            start = time.perf_counter()
            runs[name] = head_attribution(
                model, samples, n_masks=n_masks, store_dir=store, **settings
            )
            seconds[name] = time.perf_counter() - start
    full, auto = runs["full"], runs["auto"]
    assert np.array_equal(full.sample_ids, auto.sample_ids)

    needed = {name: per_sample_heads_needed(r) for name, r in runs.items()}
    rows = []
    for i, sample_id in enumerate(full.sample_ids):
        top_full = set(rank_by(full.coef[i])[:10].tolist())
        top_auto = set(rank_by(auto.coef[i])[:10].tolist())
        rows.append(
            {
                "sample": int(sample_id),
                "label": model.tokenizer.decode([label_ids[sample_id]]).strip(),
                "n_masks_used": int(auto.n_masks_used[i]),
                "r2_full": float(full.r2[i]),
                "r2_auto": float(auto.r2[i]),
                "heads_needed_full": needed["full"][i],
                "heads_needed_auto": needed["auto"][i],
                "top10_overlap": len(top_full & top_auto),
                "coef_pearson": float(
                    np.corrcoef(full.coef[i].ravel(), auto.coef[i].ravel())[0, 1]
                ),
            }
        )
    report = {
        "model": MODEL,
        "threads": args.threads,
        "n_excluded": len(full.excluded),
        "seconds": seconds,
        "masks_total": {"full": 10_000 * len(rows), "auto": int(auto.n_masks_used.sum())},
        "heads_needed_mean_curves": {"full": full.heads_needed()[HEAD_ATTRIBUTION],
                                     "auto": auto.heads_needed()[HEAD_ATTRIBUTION]},
        "samples": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print("| sample | label | masks used (auto) | R² full / auto | heads needed full / auto "
          "| top-10 overlap | coef ρ |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sample']} | {r['label']} | {r['n_masks_used']:,} | "
            f"{r['r2_full']:.3f} / {r['r2_auto']:.3f} | "
            f"{r['heads_needed_full']} / {r['heads_needed_auto']} | "
            f"{r['top10_overlap']}/10 | {r['coef_pearson']:.3f} |"
        )
    print(
        f"masks: {report['masks_total']['auto']:,} auto vs {report['masks_total']['full']:,}; "
        f"time: {seconds['auto']:.0f} s vs {seconds['full']:.0f} s; heads needed (mean "
        f"curves): {report['heads_needed_mean_curves']}; excluded: {len(full.excluded)}"
    )


if __name__ == "__main__":
    main()
