"""Qwen3-VL and Qwen3-VL-MoE specifics: DeepStack as a hook point in the residual
decomposition, interleaved M-RoPE positions, q/k-normed keys in the ablation, greedy
generation against HF's, cache tooling, gradient attribution, geometry, the processor and
adapter without torchvision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_families import (
    check_own_keys_reproduce_the_clean_run,
    check_suffix_positions_follow_the_rope_delta,
    family_model,
    family_path,
    greedy_image_attribution,
    sized_images,
)
from transformers import AutoConfig

from tl_lvlm.ablation import image_kv_baseline, key_hook
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.analysis.heads import head_attribution
from tl_lvlm.families import PatchGeometry, Qwen3VLFamily, Qwen3VLMoeFamily, family_of
from tl_lvlm.families.processors import torchvision_available
from tl_lvlm.testing import QWEN3_DEEPSTACK, QWEN_MERGE, QWEN_PATCH, random_images

QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]
FAMILIES = ["qwen3_vl", "qwen3_vl_moe"]


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def model(family):
    return family_model(family)


def _hf(family: str):
    """An independent copy of the checkpoint (the bridge wraps the loaded one in place)."""
    cls = family_of(AutoConfig.from_pretrained(family_path(family))).model_class()
    return cls.from_pretrained(family_path(family), attn_implementation="eager").eval()


def _enc(model, images, questions):
    """The processor's own outputs for the prompts (what a user hands HF)."""
    texts = [
        model.template.replace("{question}", q).replace("<image>", model.family.image_prompt)
        for q in questions
    ]
    return model.processor(images=images, text=texts, return_tensors="pt", padding=True)


def test_families_are_the_qwen2_5_vl_family_with_deepstack_and_normed_keys():
    assert issubclass(Qwen3VLMoeFamily, Qwen3VLFamily)
    assert Qwen3VLFamily.attention_edits == Qwen3VLMoeFamily.attention_edits == "recompute"


def test_moe_checkpoint_has_sparse_experts_in_every_layer():
    """The MoE builder is a real MoE: routed experts replace each dense MLP."""
    hf = _hf("qwen3_vl_moe")
    for layer in hf.model.language_model.layers:
        assert type(layer.mlp).__name__ == "Qwen3VLMoeTextSparseMoeBlock"
        assert layer.mlp.experts.num_experts == 4


# --------------------------------------------------------------------- DeepStack
def test_deepstack_hook_points_hold_the_injected_vision_features(model, family):
    inputs = model.prepare(sized_images((28, 28), (28, 40), seed=2), QUESTIONS)
    names = [f"blocks.{layer}.hook_deepstack" for layer in range(len(QWEN3_DEEPSTACK))]
    mergers = [f"vision_encoder.deepstack_mergers.{i}.hook_out" for i in range(2)]
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=names + mergers)
    image = inputs.group_mask("image")
    for name, merger in zip(names, mergers, strict=True):
        injected = cache[name]
        assert injected.shape == (2, inputs.seq_len, model.cfg.d_model)
        # The merger's output rows, scattered over the image positions in order.
        assert torch.equal(injected[image], cache[merger])
        assert bool((injected[~image] == 0).all())
        assert injected[image].abs().max() > 1e-2
    assert "blocks.2.hook_deepstack" not in model.hook_dict  # only the first two layers


def test_deepstack_hook_edit_is_what_the_next_layer_reads(model, family):
    """Zeroing the hook points equals HF with DeepStack's add left out (``_deepstack_process``
    returning its input), and differs from the clean run."""
    inputs = model.prepare(random_images(2, 28, seed=0), QUESTIONS)
    hf = _hf(family)
    decoder = hf.model.language_model
    decoder._deepstack_process = lambda hidden, mask, embeds: hidden
    with torch.no_grad():
        ref = hf(input_ids=inputs.input_ids, **inputs.model_kwargs()).logits
        clean = model(inputs)
        zeroed = model.run_with_hooks(
            inputs,
            fwd_hooks=[(lambda name: name.endswith("hook_deepstack"), lambda t, hook: t * 0)],
        )
    assert (zeroed - ref).abs().max() <= 1e-4
    assert (zeroed - clean).abs().max() > 1e-3


def test_decompose_resid_adds_up_at_image_positions(model):
    """DeepStack's injections are components, so the decomposition is exact at image positions
    (it would be off by them otherwise), and the next block reads the block's resid_post."""
    inputs = model.prepare(sized_images((28, 28), (28, 40), seed=1), QUESTIONS)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
    n = model.n_layers
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels == [
        "embed",
        "0_attn_out",
        "0_mlp_out",
        "0_deepstack",
        "1_attn_out",
        "1_mlp_out",
        "1_deepstack",
        "2_attn_out",
        "2_mlp_out",
    ]
    last = cache[f"blocks.{n - 1}.hook_resid_post"]
    image, real = inputs.group_mask("image"), inputs.attention_mask.bool()
    err = (parts.sum(0) - last).abs().amax(-1)
    assert err[image].max() <= 1e-4
    assert err[real].max() <= 1e-4
    without = [i for i, label in enumerate(labels) if not label.endswith("deepstack")]
    missing = (parts[without].sum(0) - last).abs().amax(-1)
    assert missing[image].min() > 1e-2, "the test needs DeepStack to matter at every image token"
    for layer in range(n - 1):
        assert torch.equal(
            cache[f"blocks.{layer}.hook_resid_post"], cache[f"blocks.{layer + 1}.hook_resid_pre"]
        )
    # Up to a layer: the injections of the blocks before it, adding up to its resid_pre.
    parts, labels = cache.decompose_resid(layer=1, return_labels=True)
    assert labels == ["embed", "0_attn_out", "0_mlp_out", "0_deepstack"]
    assert (parts.sum(0) - cache["blocks.1.hook_resid_pre"])[real].abs().max() <= 1e-4
    # Other modes list TransformerLens's components only.
    assert cache.decompose_resid(mode="attn", return_labels=True)[1] == [
        "embed",
        "0_attn_out",
        "1_attn_out",
        "2_attn_out",
    ]


def test_logit_attrs_add_up_to_the_final_logit(model, family):
    inputs = model.prepare(sized_images((28, 28), (28, 40), seed=1), QUESTIONS)
    hf = _hf(family)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
        final = hf(**_enc(model, sized_images((28, 28), (28, 40), seed=1), QUESTIONS)).logits[:, -1]
    answer = final.argmax(-1)
    rows = torch.arange(2)
    parts = cache.decompose_resid(pos_slice=-1)  # [n_parts, batch, d_model]
    attrs = cache.logit_attrs(parts, tokens=answer, pos_slice=-1)
    assert torch.allclose(attrs.sum(0), final[rows, answer], atol=1e-4)
    assert (final[rows, answer].abs() > 1e-2).all()


# ------------------------------------------------------------------ generation
@pytest.mark.parametrize("shapes", [[(28, 40)], [(28, 28), (40, 28)]], ids=["single", "batch"])
def test_greedy_generate_equals_hugging_face(model, family, shapes):
    """Three new tokens (two of them cached steps) equal HF's greedy ``generate`` on the
    processor's outputs; the batch has two images of different sizes (grids 4 x 4, 5 x 4)."""
    images = sized_images(*shapes, seed=4)
    questions = QUESTIONS[: len(shapes)]
    inputs = model.prepare(images, questions)
    enc = _enc(model, images, questions)
    with torch.no_grad():
        ref = _hf(family).generate(**enc, max_new_tokens=3, do_sample=False)
    ours = model.generate(inputs, max_new_tokens=3, return_type="tokens")
    assert torch.equal(ours, ref[:, enc["input_ids"].shape[1] :])


# ----------------------------------------------------------- interleaved M-RoPE
def test_suffix_positions_continue_after_the_image_with_the_rope_delta(model):
    """Image tokens take (start, start + row, start + col); the text after the image resumes
    at start + max(rows, cols), i.e. HF's rope delta, which the engine's suffix run cuts."""
    inputs = model.prepare(sized_images((28, 40), (28, 28)), QUESTIONS)
    check_suffix_positions_follow_the_rope_delta(model, inputs)


def test_rotations_interleave_the_three_position_axes(model):
    """RoPE frequency j turns with the height id when j = 1 mod 3, the width id when
    j = 2 mod 3 (within ``3 * mrope_section``), else the temporal id, by the definition
    of interleaved M-RoPE; checked at the image tokens, where the three ids differ."""
    sample = model.prepare(sized_images((28, 40)), QUESTIONS[1])
    positions = model.family.position_ids(sample)  # [3, 1, pos]
    cos, sin = model.family.rotations(torch.zeros(()), positions)[0]
    rope = model.family.decoder_config.rope_parameters
    d_head = model.d_head
    inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, d_head, 2).float() / d_head))
    section = rope["mrope_section"]
    axis = torch.zeros(d_head // 2, dtype=torch.long)
    for a in (1, 2):
        axis[a : 3 * section[a] : 3] = a
    assert set(axis.tolist()) == {0, 1, 2}
    angle = positions[axis, 0].T.float() * inv_freq  # [pos, d_head / 2]
    angle = torch.cat([angle, angle], -1)
    assert torch.allclose(cos[0], angle.cos(), atol=1e-6)
    assert torch.allclose(sin[0], angle.sin(), atol=1e-6)
    # Not Qwen2.5-VL's blocks of axes: the image rows differ from the block layout.
    blocks = torch.repeat_interleave(torch.arange(3), torch.tensor(section))
    assert not torch.equal(axis, blocks)


# --------------------------------------------------------------------- q/k norms
def test_baseline_keys_are_taken_after_the_k_norm(model):
    """The ablation replaces what RoPE rotates: the keys after k_norm, not the projections."""
    assert key_hook(model, 0) == ("blocks.0.attn.k_norm.hook_out", 1)
    assert model.family.query_hook(0) == ("blocks.0.attn.q_norm.hook_out", 1)
    sample = model.prepare(random_images(1, 28, seed=2), QUESTIONS[1])
    names = ["blocks.1.attn.k_norm.hook_out", "blocks.1.attn.hook_k"]
    with torch.no_grad():
        _, cache = model.run_with_cache(sample, names_filter=names)
    baseline = image_kv_baseline(model, sample)
    image = sample.positions("image", 0)
    normed = cache[names[0]][0, image].transpose(0, 1)  # [n_kv, n_image, d_head]
    assert torch.allclose(baseline.k[1], normed, atol=1e-6)
    raw = cache[names[1]][0, image].transpose(0, 1)
    assert (baseline.k[1] - raw).abs().max() > 1e-2  # the norm does something


@pytest.mark.parametrize("scope", ["text", "all"])
def test_own_keys_as_baseline_reproduce_the_clean_run(model, scope):
    """Every head ablated with the sample's own normed K/V changes nothing: baseline keys are
    rotated to the image tokens' 3-D positions, in the reference and in the engine."""
    check_own_keys_reproduce_the_clean_run(
        model, model.prepare(sized_images((28, 40)), QUESTIONS[1]), scope
    )


def test_engine_prefix_includes_deepstack(model):
    """The engine runs its prefix with the bridge's wrappers taken out; DeepStack's hooks sit
    on the HF layers, so the prefix's image keys of the later layers are the clean run's."""
    sample = model.prepare(random_images(1, 28, seed=1), QUESTIONS[0])
    engine = AblationEngine(model, sample, image_kv_baseline(model, sample, "zero"))
    name = "blocks.2.attn.hook_v"
    with torch.no_grad():
        _, cache = model.run_with_cache(sample, names_filter=name)
    image = engine.prefix.image
    v_clean = engine.prefix.v[2, :, image, : model.d_head]  # [n_kv, n_image, d_head]
    assert torch.allclose(v_clean, cache[name][0, image].transpose(0, 1), atol=1e-5)


# ------------------------------------------------------------------ attribution
def test_gradient_head_attribution_runs(model):
    samples = [(image, QUESTIONS[0]) for image in random_images(3, 28, seed=4)]
    result = head_attribution(
        model, samples, method="gradient", n_gradient_masks=8, min_logit_gap=0.0, progress=False
    )
    kept = list(result.sample_ids)
    assert kept, f"every sample was excluded: {result.excluded}"
    assert result.coef.shape == (len(kept), model.n_layers, model.n_heads)
    assert np.isfinite(np.asarray(result.coef)).all()
    assert np.abs(np.asarray(result.coef)).max() > 0


def test_image_token_attribution_maps_the_merged_grid(model):
    sample = model.prepare(sized_images((28, 40), seed=3), QUESTIONS[1])
    geometry = model.family.patch_geometry(model.processor, sample)
    side = QWEN_PATCH * QWEN_MERGE  # 28 x 40 resized to 32 x 40: 4 x 5 merged patches
    assert geometry == PatchGeometry(32 // side, 40 // side, "stretch")
    result = greedy_image_attribution(model, sample, n_masks=60)
    assert result.coef.shape == (4, 5)
    assert result.geometry == geometry
    mask = np.zeros((28, 40), bool)
    mask[:, :8] = True  # the image's left fifth: the first column of tokens
    mass = result.object_mass(mask)
    assert (mass.n_object, mass.n_background) == (4, 16)


# ------------------------------------------------------- loading without torchvision
def test_processor_is_saved_as_the_standard_class(model, family):
    config = json.loads((Path(family_path(family)) / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen3VLProcessor"
    if not torchvision_available():
        assert type(model.processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
        assert not hasattr(model.processor, "video_processor")


def test_bridge_uses_the_family_adapter_without_the_torchvision_check(model, family):
    from transformer_lens.factories.architecture_adapter_factory import (
        ArchitectureAdapterFactory,
    )

    architecture = model.family.architecture
    registered = ArchitectureAdapterFactory._adapters[architecture]
    assert (
        registered.__name__
        == {
            "qwen3_vl": "Qwen3VLArchitectureAdapter",
            "qwen3_vl_moe": "Qwen3VLMoeArchitectureAdapter",
        }[family]
    )  # restored after the boot
    adapter = type(model.bridge.adapter)
    assert issubclass(adapter, registered)
    if not torchvision_available():
        assert adapter.required_libraries == []
        assert {k for k in vars(adapter) if not k.startswith("__")} == {"required_libraries"}


def test_with_torchvision_the_standard_processor_and_adapter_are_used(family, monkeypatch):
    """Where torchvision is installed, loading takes the standard path: ``AutoProcessor`` on
    the saved files (here it gets as far as needing torchvision for the video processor) and
    TransformerLens's own adapter, whose torchvision check is then met."""
    import tl_lvlm.families.processors as processors
    import tl_lvlm.families.qwen2_5_vl as qwen

    monkeypatch.setattr(processors, "torchvision_available", lambda: True)
    monkeypatch.setattr(qwen, "torchvision_available", lambda: True)
    path = family_path(family)
    cls = family_of(AutoConfig.from_pretrained(path))
    with pytest.raises(ImportError, match="VideoProcessor requires the Torchvision"):
        cls.load_processor(path)
    with pytest.raises(ImportError, match="ArchitectureAdapter needs the optional torchvision"):
        cls.boot_bridge(path, _hf(family), family_model(family).tokenizer)
