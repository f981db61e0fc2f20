"""Tiny checkpoints of the non-LLaVA-1.5 families, saved in HF format and loaded back.

Every family's model is loaded through ``HookedLVLM.from_pretrained(path)``, the
path a user takes with a hub name; each checkpoint is built once per test run.

A helper module rather than a ``conftest.py``: test modules import from
``conftest`` by name, and a second one here would shadow ``tests/conftest.py``.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AttentionInterface, AutoConfig
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from tl_lvlm import HookedLVLM
from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.analysis.heads import head_attribution
from tl_lvlm.analysis.image_tokens import image_token_attribution
from tl_lvlm.families import family_of
from tl_lvlm.testing import BUILDERS, random_images, save_tiny_family

#: Families with a tiny builder: every supported family (the contract test checks it).
FAMILIES = tuple(BUILDERS)

# Removed when the interpreter exits.
_ROOT = tempfile.TemporaryDirectory(prefix="tl-lvlm-families-")


@functools.cache
def family_path(family: str) -> str:
    """Directory of ``family``'s tiny checkpoint, written with ``save_pretrained``."""
    return str(save_tiny_family(family, Path(_ROOT.name) / family))


@functools.cache
def family_model(family: str, dtype: torch.dtype = torch.float32) -> HookedLVLM:
    """``family``'s tiny checkpoint loaded with ``HookedLVLM.from_pretrained`` (in ``dtype``)."""
    torch.manual_seed(0)
    return HookedLVLM.from_pretrained(family_path(family), device="cpu", dtype=dtype)


def sized_images(*shapes: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    """Random RGB images of the given ``(height, width)`` shapes (deterministic)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def greedy_image_attribution(model: HookedLVLM, sample, *, n_masks: int):
    """Image-token attribution of the greedy answer with the zero baseline, no gap filter
    (random tiny models have small gaps; these tests check maps and geometry, not fits)."""
    with torch.no_grad():
        target = int(model.final_logits(sample).argmax())
    return image_token_attribution(
        model, sample, baseline="zero", target=target, n_masks=n_masks,
        min_logit_gap=-1e9, progress=False,
    )  # fmt: skip


# -- Checks shared by the families' own tests (generate, cache, gradient attribution, which
# positions are ablated), each against an independent HF copy where there is one.


def hf_copy(family: str, **kwargs):
    """An independently loaded HF model of ``family``'s tiny checkpoint."""
    cls = family_of(AutoConfig.from_pretrained(family_path(family))).model_class()
    return cls.from_pretrained(family_path(family), **kwargs).eval()


def processor_outputs(model: HookedLVLM, images, questions: list[str]):
    """The processor's own outputs for the rendered prompts (what a HF user passes), one
    image per prompt (in a list of its own where the processor takes one per prompt)."""
    if model.family.nested_images:
        images = [[image] for image in images]
    texts = [
        model.template.replace("{question}", q).replace("<image>", model.family.image_prompt)
        for q in questions
    ]
    return model.processor(images=images, text=texts, return_tensors="pt", padding=True)


def check_generate_matches_hf(model: HookedLVLM, family: str, images, questions) -> None:
    """Greedy ``generate`` (3 tokens) = the HF copy's ``generate(do_sample=False)`` new tokens."""
    inputs = model.prepare(images, questions)
    ours = model.generate(inputs, max_new_tokens=3, return_type="tokens")
    enc = processor_outputs(model, images, questions)
    assert torch.equal(enc["input_ids"], inputs.input_ids)
    with torch.no_grad():
        ref = hf_copy(family).generate(**enc, max_new_tokens=3, do_sample=False)
    assert torch.equal(ours, ref[:, enc["input_ids"].shape[1] :])


def check_logit_attrs_add_up(model: HookedLVLM, inputs) -> None:
    """``cache.logit_attrs(cache.decompose_resid(pos_slice=-1))`` sums to the final logit."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs)
    final = logits[:, -1]
    answer = final.argmax(-1)
    parts = cache.decompose_resid(pos_slice=-1)
    attrs = cache.logit_attrs(parts, tokens=answer, pos_slice=-1)
    assert attrs.shape[0] == 1 + 2 * model.n_layers
    rows = torch.arange(inputs.batch_size)
    assert torch.allclose(attrs.sum(0), final[rows, answer], atol=1e-4)


def check_gradient_head_attribution_runs(model: HookedLVLM, question: str) -> None:
    samples = [(image, question) for image in random_images(3, 28, seed=4)]
    result = head_attribution(
        model, samples, method="gradient", n_gradient_masks=8, min_logit_gap=0.0, progress=False
    )
    assert len(result.sample_ids), f"every sample was excluded: {result.excluded}"
    assert result.coef.shape == (len(result.sample_ids), model.n_layers, model.n_heads)
    assert np.isfinite(result.coef).all() and np.abs(result.coef).max() > 0


# Positions whose keys and values _zeroed_eager zeroes in every layer, for every query.
_ZEROED: list[torch.Tensor] = []


def _zeroed_eager(module, query, key, value, attention_mask, **kwargs):
    """The module's own eager attention with the keys and values at ``_ZEROED[0]`` zeroed."""
    if _ZEROED:
        key, value = key.clone(), value.clone()
        key[:, :, _ZEROED[0]] = 0
        value[:, :, _ZEROED[0]] = 0
    eager = sys.modules[type(module).__module__].eager_attention_forward
    return eager(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("families_zeroed_eager", _zeroed_eager)
AttentionMaskInterface.register("families_zeroed_eager", eager_mask)


def check_exactly_the_image_tokens_are_ablated(
    model: HookedLVLM, family: str, image, question: str
) -> None:
    """Every head ablated with the zero baseline in scope "all" (hook reference and engine)
    equals HF attention with the keys and values zeroed at exactly the image-token positions
    (zero keys rotate to zero), and differs from also zeroing the markers between them."""
    sample = model.prepare(image, question)
    baseline = image_kv_baseline(model, sample, "zero")
    keep = torch.zeros(1, model.n_layers, model.n_heads, dtype=torch.bool)
    hooks = image_kv_ablation_hooks(model, sample, baseline, keep, scope="all")
    engine = AblationEngine(model, sample, baseline, scope="all")
    with torch.no_grad():
        ours = model.final_logits(sample, hooks)[0]
    assert torch.allclose(engine.run(keep)[0], ours[engine.target], atol=1e-5)
    hf = hf_copy(family, attn_implementation={"text_config": "families_zeroed_eager", "": "eager"})
    enc = processor_outputs(model, [image], [question])
    image_tokens = sample.positions("image", 0)
    assert torch.equal(image_tokens, (sample.input_ids[0] == model.image_token_id).nonzero()[:, 0])
    start, end = sample.image_span(0)
    assert end - start > image_tokens.numel(), "no markers between the image tokens"
    results = []
    for positions in (image_tokens, torch.arange(start, end)):
        _ZEROED[:] = [positions]
        try:
            with torch.no_grad():
                results.append(hf(**enc).logits[0, -1])
        finally:
            _ZEROED.clear()
    assert (ours - results[0]).abs().max() <= 1e-4
    assert (ours - results[1]).abs().max() > 1e-3


def check_own_keys_reproduce_the_clean_run(model: HookedLVLM, sample, scope: str) -> None:
    """Every head ablated with ``sample``'s own image K/V changes nothing, in the hook
    reference and in the engine: the baseline keys are taken where the family's RoPE takes
    them (after any k-norm) and rotated as its layers rotate keys. Not vacuous: the zero
    baseline moves the engine's logit."""
    baseline = image_kv_baseline(model, sample)
    keep = torch.zeros(1, model.n_layers, model.n_heads, dtype=torch.bool)
    with torch.no_grad():
        clean = model(sample)
        ablated = model.run_with_hooks(
            sample, fwd_hooks=image_kv_ablation_hooks(model, sample, baseline, keep, scope=scope)
        )
    assert (ablated - clean).abs().max() <= 1e-4
    engine = AblationEngine(model, sample, baseline, scope=scope)
    assert abs(float(engine.run(keep)[0]) - engine.clean_logit) <= 1e-4
    zero = AblationEngine(model, sample, image_kv_baseline(model, sample, "zero"), scope=scope)
    assert abs(float(zero.run(keep)[0]) - zero.clean_logit) > 1e-3


def check_suffix_positions_follow_the_rope_delta(model: HookedLVLM, inputs) -> None:
    """M-RoPE by its definition (Qwen2.5-VL, Qwen3-VL): text counts up; the image's tokens
    take (start, start + row, start + col); the text after it resumes at start + max(rows,
    cols), i.e. HF's rope delta, which the engine's suffix run cuts (``inputs``: two rows,
    the second left-padded)."""
    positions = model.family.position_ids(inputs)
    for r in range(2):
        pad = inputs.padding(r)
        start, end = (s - pad for s in inputs.image_span(r))
        n = inputs.seq_len - pad
        _, h, w = (
            int(x) // m for x, m in zip(inputs.extra["image_grid_thw"][r], (1, 2, 2), strict=True)
        )
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        image = torch.stack([torch.zeros(h * w, dtype=torch.long), rows.flatten(), cols.flatten()])
        after = torch.arange(n - end) + start + max(h, w)
        expected = torch.cat(
            [torch.arange(start).expand(3, -1), image + start, after.expand(3, -1)], dim=1
        )
        assert torch.equal(positions[:, r, pad:], expected)
    # The engine's suffix run: the sample's ids cut after the image = arange + rope delta.
    sample = inputs[0]
    _, delta = model.hf_model.model.get_rope_index(
        sample.input_ids,
        mm_token_type_ids=sample.extra["mm_token_type_ids"],
        image_grid_thw=sample.extra["image_grid_thw"],
        attention_mask=sample.attention_mask,
    )
    pad, (_, end) = sample.padding(0), sample.image_span(0)
    suffix = model.family.position_ids(sample)[:, 0, end:]
    assert torch.equal(
        suffix, (torch.arange(end - pad, sample.seq_len - pad) + delta[0]).expand(3, -1)
    )
