"""``method="gradient"`` against the regression, per sample, on the bundled model.

For each of ``--n-samples`` held-out digits (the first test image of each digit 0, 1, ...,
drawn in ``--style``, default ``coloured``) it runs head attribution on
``tl-lvlm/tiny-digits`` with one baseline (the mean image K/V of 128 training digits in
the same style) and the same masks' seed, by:

- the regression on 10,000 masks (the paper's count; the reference);
- the regression on as many masks as ``gradient-128`` uses passes (257), to tell the
  gradient's gain from that of simply running fewer masks;
- ``method="gradient"`` with 64 and 128 masks (a forward and a backward pass each);
- an exploratory variant that ``head_attribution`` does not offer, ``gradient-128-uniform``:
  the same mean gradient at 128 gate vectors drawn uniformly in [0, 1]^heads instead of 0/1
  masks (through ``AblationEngine.gate_gradients``, evaluated by the same curves).

It reports per sample and method: suffix passes used (``result.passes_used``: masks x
passes per mask + the all-ablated run), heads needed (smallest k with faithfulness > 0.8
and completeness < 0.2 on that sample's own curves, ranked by its own coefficients), and,
against the 10,000-mask regression, the Pearson correlation of the coefficients and the
overlap of the top-10 heads; and each method's wall time. Results go to ``--out`` (JSON, and
a figure beside it with the same name and ``.png``) and stdout (a Markdown table).

    python benchmarks/gradient_attribution.py   # ~65,000 passes + curves, one thread
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from attribution import components_needed, default_ks, rank_by
from tl_lvlm import HookedLVLM, head_attribution
from tl_lvlm.ablation import resolve_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.analysis.evaluation import Evaluation, evaluate_rankings
from tl_lvlm.analysis.heads import HEAD_ATTRIBUTION
from tl_lvlm.zoo import DIGITS_QUESTION, digit_token_ids, resolve
from tl_lvlm.zoo.digits import STYLES, load_digit_images

MODEL = "tl-lvlm/tiny-digits"
REFERENCE = "regression-10000"
METHODS = {
    REFERENCE: dict(method="regression", n_masks=10_000),
    "regression-257": dict(method="regression", n_masks=257),
    "gradient-64": dict(method="gradient", n_gradient_masks=64),
    "gradient-128": dict(method="gradient", n_gradient_masks=128),
}


def per_sample_heads_needed(result) -> list[int | None]:
    ev = result.evaluation
    f, c = ev.faithfulness[HEAD_ATTRIBUTION], ev.completeness[HEAD_ATTRIBUTION]
    return [components_needed(ev.ks, f[i], c[i]) for i in range(len(f))]


class _UniformGradient:
    """What ``runs[name]`` offers the report, for the uniform-gate variant."""

    def __init__(self, model, samples, reference, ref_result, n_gates: int, seed: int):
        n_layers, n_heads = model.n_layers, model.n_heads
        n = n_layers * n_heads
        ks = default_ks(n)
        inputs = model.prepare([s[0] for s in samples], DIGITS_QUESTION)
        baseline = resolve_baseline(model, "mean", reference, inputs[:1])
        gates = torch.rand(
            n_gates, n_layers, n_heads, generator=torch.Generator().manual_seed(seed)
        )
        coefs, curves = [], []
        for i, sample_id in enumerate(ref_result.sample_ids):
            engine = AblationEngine(
                model, inputs[int(sample_id)], baseline, target=int(ref_result.targets[i])
            )
            norm = engine.normalization
            # The driver's baseline and normalization, or the comparison would be unfair.
            assert abs(norm.ablated - ref_result.ablated_logit[i]) < 1e-4
            coef = engine.gate_gradients(gates, 32, normalization=norm)[1].reshape(n_gates, n)
            coefs.append(coef.mean(0).double().numpy())

            def normalized(masks, engine=engine, norm=norm):
                keep = torch.from_numpy(np.ascontiguousarray(masks)).reshape(-1, n_layers, n_heads)
                return norm(engine.run(keep, 32, progress=False).double().numpy())

            ranking = {HEAD_ATTRIBUTION: rank_by(coefs[-1])}
            curves.append(
                evaluate_rankings([normalized], ranking, ks, batch_size=32, progress=False)
            )
        self.coef = np.stack(coefs)
        self.sample_ids = ref_result.sample_ids
        self.passes_used = np.full(len(coefs), 2 * n_gates + 1)
        self.evaluation = Evaluation.concatenate(curves, ks, [HEAD_ATTRIBUTION])

    def heads_needed(self) -> dict[str, int | None]:
        return self.evaluation.heads_needed()


def plot(runs: dict, needed: dict, path: Path) -> None:
    """Gradient vs regression coefficients (every head of every sample), and heads needed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_coef, ax_need = fig.subplots(1, 2)
    ref = runs[REFERENCE].coef.ravel()
    for name in ("regression-257", "gradient-128"):
        ax_coef.scatter(ref, runs[name].coef.ravel(), s=6, alpha=0.5, label=name)
    ax_coef.set(
        xlabel=f"{REFERENCE} coefficient",
        ylabel="coefficient",
        title="Each head of each sample against the 10,000-mask regression",
    )
    ax_coef.legend(fontsize=8)
    x = np.arange(len(needed[REFERENCE]))
    names = list(runs)
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        values = [np.nan if v is None else v for v in needed[name]]
        ax_need.bar(x + (j - (len(names) - 1) / 2) * width, values, width, label=name)
    ax_need.set(xlabel="sample", ylabel="heads needed", title="Heads needed per sample")
    ax_need.set_xticks(x)
    ax_need.legend(fontsize=7)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-samples", type=int, default=6)
    parser.add_argument(
        "--style", default="coloured", choices=STYLES, help="rendering of samples and baseline"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "gradient_attribution.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = HookedLVLM.from_pretrained(MODEL, device="cpu")
    weights = (Path(resolve(MODEL)) / "model.safetensors").read_bytes()
    images, labels = load_digit_images(split="test", style=args.style, seed=args.seed)
    first = [int(np.flatnonzero(labels == d)[0]) for d in range(args.n_samples)]
    label_ids = [digit_token_ids(model.tokenizer)[labels[i]] for i in first]
    samples = [(images[i], DIGITS_QUESTION, t) for i, t in zip(first, label_ids, strict=True)]
    reference = load_digit_images(split="train", style=args.style, seed=args.seed)[0][:128]
    settings = dict(reference=reference, seed=args.seed, batch_size=32, baselines=())

    runs, seconds = {}, {}
    for name, kwargs in METHODS.items():
        start = time.perf_counter()
        runs[name] = head_attribution(model, samples, progress=False, **settings, **kwargs)
        seconds[name] = time.perf_counter() - start
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    ref = runs[REFERENCE]
    start = time.perf_counter()
    runs["gradient-128-uniform"] = _UniformGradient(
        model, samples, reference, ref, n_gates=128, seed=args.seed
    )
    seconds["gradient-128-uniform"] = time.perf_counter() - start
    for r in runs.values():
        assert np.array_equal(r.sample_ids, ref.sample_ids)

    needed = {name: per_sample_heads_needed(r) for name, r in runs.items()}
    rows = []
    for i, sample_id in enumerate(ref.sample_ids):
        top_ref = set(rank_by(ref.coef[i])[:10].tolist())
        row = {"sample": int(sample_id), "label": model.tokenizer.decode([label_ids[sample_id]])}
        for name, r in runs.items():
            row[name] = {
                "passes": int(r.passes_used[i]),
                "heads_needed": needed[name][i],
                "coef_pearson": float(np.corrcoef(ref.coef[i].ravel(), r.coef[i].ravel())[0, 1]),
                "top10_overlap": len(top_ref & set(rank_by(r.coef[i])[:10].tolist())),
                "r2": float(r.r2[i]) if hasattr(r, "r2") else None,
            }
        rows.append(row)

    def within_one(name: str) -> int:
        return sum(
            a is not None and b is not None and abs(a - b) <= 1
            for a, b in zip(needed[REFERENCE], needed[name], strict=True)
        )

    summary = {
        name: {
            "passes_per_sample": int(r.passes_used[0]) if len(r.passes_used) else None,
            "pass_fraction": float(r.passes_used.sum() / ref.passes_used.sum()),
            "seconds": seconds[name],
            "heads_needed_mean_curves": r.heads_needed()[HEAD_ATTRIBUTION],
            "samples_heads_needed_within_1": within_one(name),
            "median_coef_pearson": float(np.median([row[name]["coef_pearson"] for row in rows])),
            "mean_top10_overlap": float(np.mean([row[name]["top10_overlap"] for row in rows])),
        }
        for name, r in runs.items()
    }
    report = {
        "model": MODEL,
        "model_sha256": hashlib.sha256(weights).hexdigest(),
        "threads": args.threads,
        "style": args.style,
        "n_samples": len(rows),
        "n_excluded": len(ref.excluded),
        "summary": summary,
        "samples": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, needed, args.out.with_suffix(".png"))

    print("| method | passes / sample | of 10,000-mask passes | median coef ρ | mean top-10 "
          "overlap | heads needed (mean curves) | samples within ±1 | time |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(
            f"| {name} | {s['passes_per_sample']:,} | {s['pass_fraction']:.3f} | "
            f"{s['median_coef_pearson']:.3f} | {s['mean_top10_overlap']:.1f}/10 | "
            f"{s['heads_needed_mean_curves']} | {s['samples_heads_needed_within_1']}/{len(rows)} "
            f"| {s['seconds']:.0f} s |"
        )
    print("\nper sample heads needed:", {name: needed[name] for name in runs})


if __name__ == "__main__":
    main()
