"""Qwen2.5-VL specifics: the processor without torchvision, pixel packing, M-RoPE positions,
the bridge booted without its torchvision check, the recomputed-attention hooks, geometry."""

from __future__ import annotations

import json
import warnings
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
from transformers import Qwen2_5_VLForConditionalGeneration

from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline
from tl_lvlm.families import PatchGeometry
from tl_lvlm.families.processors import torchvision_available
from tl_lvlm.flow import knockout
from tl_lvlm.testing import QWEN_MERGE, QWEN_PATCH, random_images

QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]


@pytest.fixture
def model():
    return family_model("qwen2_5_vl")


def _texts(model, questions):
    return [
        model.template.replace("{question}", q).replace("<image>", model.family.image_prompt)
        for q in questions
    ]


@pytest.mark.skipif(torchvision_available(), reason="the standard processor is used")
def test_processor_without_torchvision_is_its_image_processor_and_tokenizer(model):
    """Its outputs equal the PIL image processor's and the tokenizer's with the pads expanded."""
    processor = model.processor
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert not hasattr(processor, "video_processor")
    images, texts = sized_images((28, 28), (28, 40)), _texts(model, QUESTIONS)
    enc = processor(images=images, text=texts, return_tensors="pt", padding=True)
    pixels = processor.image_processor(images=images, return_tensors="pt")
    assert torch.equal(enc["pixel_values"], pixels["pixel_values"])
    assert enc["image_grid_thw"].tolist() == pixels["image_grid_thw"].tolist()
    expanded = [
        text.replace("<|image_pad|>", "<|image_pad|>" * (int(thw.prod()) // QWEN_MERGE**2))
        for text, thw in zip(texts, pixels["image_grid_thw"], strict=True)
    ]
    tokens = model.tokenizer(expanded, return_tensors="pt", padding=True)
    assert torch.equal(enc["input_ids"], tokens["input_ids"])
    assert torch.equal(enc["attention_mask"], tokens["attention_mask"])
    # Saved as the standard class, so AutoProcessor loads it where torchvision is installed.
    config = json.loads((Path(family_path("qwen2_5_vl")) / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen2_5_VLProcessor"


def test_logits_match_hugging_face_with_its_own_positions(model):
    """Rows with differently sized images (grids 4 x 4 and 4 x 5): HF gets only the processor's
    outputs and computes M-RoPE positions itself; the rows' patches are packed per row."""
    images = sized_images((28, 28), (28, 40), seed=1)
    inputs = model.prepare(images, QUESTIONS)
    assert inputs.extra["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 10]]
    assert inputs.attention_mask[:, 0].tolist() != [1, 1], "the batch should need padding"
    enc = model.processor(
        images=images, text=_texts(model, QUESTIONS), return_tensors="pt", padding=True
    )
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        family_path("qwen2_5_vl"), attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        ref = hf(**enc).logits
        ours = model(inputs)
        row = model(inputs[1])  # one row selected from the packed batch
    assert (ours - ref).abs().max().item() <= 1e-4
    assert (row[0] - ref[1]).abs().max().item() <= 1e-4


def test_suffix_positions_continue_after_the_image_with_the_rope_delta(model):
    """M-RoPE by its definition: text counts up; the image's tokens take (start, start + row,
    start + col); the text after it resumes at start + max(rows, cols), i.e. HF's rope delta."""
    inputs = model.prepare(sized_images((28, 40), (28, 28)), QUESTIONS)
    check_suffix_positions_follow_the_rope_delta(model, inputs)


def test_bridge_is_booted_without_the_torchvision_check_only_while_loading(model):
    from transformer_lens.factories.architecture_adapter_factory import (
        ArchitectureAdapterFactory,
    )
    from transformer_lens.model_bridge.supported_architectures.qwen2_5_vl import (
        Qwen2_5_VLArchitectureAdapter,
    )

    adapter = type(model.bridge.adapter)
    assert issubclass(adapter, Qwen2_5_VLArchitectureAdapter)
    if not torchvision_available():  # the subclass changes nothing but the check
        assert adapter.required_libraries == []
        assert {k for k in vars(adapter) if not k.startswith("__")} == {"required_libraries"}
    registered = ArchitectureAdapterFactory._adapters["Qwen2_5_VLForConditionalGeneration"]
    assert registered is Qwen2_5_VLArchitectureAdapter  # restored after the boot
    fired = set()

    def record(name: str):
        def hook(t, hook) -> None:
            fired.add(name)

        return hook

    names = [f"blocks.1.attn.hook_{n}" for n in ("q", "k", "v", "z", "attn_scores", "pattern")]
    inputs = model.prepare(random_images(1, 28, seed=0), QUESTIONS[0])
    with torch.no_grad():
        hooked = model.run_with_hooks(inputs, fwd_hooks=[(n, record(n)) for n in names])
        logits, cache = model.run_with_cache(inputs, names_filter=names[3])
    assert fired == set(names)
    assert torch.equal(logits, hooked)
    assert cache[names[3]].shape == (1, inputs.seq_len, model.n_heads, model.d_head)


def test_score_edits_are_discarded_so_the_reference_recomputes_attention(model):
    """Why the family brings its own hooks: the bridge keeps Qwen's attention native."""
    inputs = model.prepare(random_images(1, 28, seed=0), QUESTIONS[0])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean = model(inputs)
        edited = model.run_with_hooks(
            inputs, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda t, hook: t * 0)]
        )
    assert torch.equal(edited, clean)


@pytest.mark.parametrize("scope", ["text", "all"])
def test_own_keys_as_baseline_reproduce_the_clean_run(model, scope):
    """Every head ablated with the sample's own K/V changes nothing: the baseline keys are
    rotated to the image tokens' 3-D positions, in the reference and in the engine."""
    check_own_keys_reproduce_the_clean_run(
        model, model.prepare(sized_images((28, 40)), QUESTIONS[1]), scope
    )


def test_patch_geometry_is_the_merged_grid_of_the_resized_image(model):
    sample = model.prepare(sized_images((28, 40)), QUESTIONS[0])
    geometry = model.family.patch_geometry(model.processor, sample)
    # 28 x 40 resized (aspect kept) to multiples of 8: 32 x 40, i.e. 8 x 10 patches of 4.
    side = QWEN_PATCH * QWEN_MERGE
    assert (geometry.rows, geometry.cols) == (32 // side, 40 // side)
    assert geometry.crop == "stretch"
    assert geometry.n_tokens == sample.positions("image", 0).numel()


def test_image_token_attribution_maps_the_merged_grid(model):
    sample = model.prepare(sized_images((28, 40), seed=3), QUESTIONS[1])
    result = greedy_image_attribution(model, sample, n_masks=60)
    assert result.coef.shape == (4, 5)
    assert result.geometry == PatchGeometry(4, 5, "stretch")
    # The grid covers the whole image: an object on its left fifth is the first column.
    mask = np.zeros((28, 40), bool)
    mask[:, :8] = True
    mass = result.object_mass(mask)
    assert (mass.n_object, mass.n_background) == (4, 16)


WINDOW = "Qwen2.5-VL: the recomputed.*sliding attention window"


def test_recomputed_hooks_refuse_a_sliding_window_they_do_not_apply(model, monkeypatch):
    sample = model.prepare(random_images(1, 28, seed=2), QUESTIONS[0])
    baseline = image_kv_baseline(model, sample, "zero")
    keep = torch.zeros(1, model.n_layers, model.n_heads, dtype=torch.bool)
    config = model.family.decoder_config
    monkeypatch.setattr(config, "sliding_window", sample.seq_len - 1)
    # HF applies the window only with use_sliding_window (off on Qwen2.5-VL's checkpoints);
    # the engine and the recomputed hooks read the one refusal list, so both agree.
    monkeypatch.setattr(config, "use_sliding_window", False)
    assert image_kv_ablation_hooks(model, sample, baseline, keep)
    monkeypatch.setattr(config, "use_sliding_window", True)
    with pytest.raises(NotImplementedError, match=WINDOW):
        image_kv_ablation_hooks(model, sample, baseline, keep)
    with pytest.raises(NotImplementedError, match=WINDOW):
        with knockout(model, sample, ("image", "final"), [0]):
            pass


def test_with_torchvision_the_standard_processor_and_adapter_are_used(monkeypatch):
    """Where torchvision is installed, loading takes the standard path: ``AutoProcessor`` on
    the saved files (here it gets as far as needing torchvision for the video processor, so
    the files are complete) and TransformerLens's own adapter, whose check is then met."""
    import tl_lvlm.families.processors as processors
    import tl_lvlm.families.qwen2_5_vl as qwen

    monkeypatch.setattr(processors, "torchvision_available", lambda: True)
    monkeypatch.setattr(qwen, "torchvision_available", lambda: True)
    path = family_path("qwen2_5_vl")
    with pytest.raises(ImportError, match="Qwen2VLVideoProcessor requires the Torchvision"):
        qwen.Qwen2_5_VLFamily.load_processor(path)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    with pytest.raises(
        ImportError, match="Qwen2_5_VLArchitectureAdapter needs the optional torchvision"
    ):
        qwen.Qwen2_5_VLFamily.boot_bridge(path, hf, family_model("qwen2_5_vl").tokenizer)


def test_default_image_size_is_a_square_of_16_by_16_merged_patches(model):
    # Used for the CLI's random images; Qwen2.5-VL's vision config has no image size.
    assert model.image_size == 16 * QWEN_PATCH * QWEN_MERGE
    sample = model.prepare(random_images(1, model.image_size, seed=0), QUESTIONS[0])
    grid = model.family.patch_geometry(model.processor, sample)
    assert grid.rows == grid.cols  # a square image stays square (within max_pixels)


@pytest.mark.parametrize("shapes", [[(28, 40)], [(28, 28), (40, 28)]], ids=["single", "batch"])
def test_greedy_generate_equals_hugging_face(model, shapes):
    """Three new tokens, two of them cached steps, whose position ids the family cuts to the
    new token (HF derives them over the whole attention mask), equal HF's greedy ``generate``
    on the processor's outputs; the batch has two images of different sizes."""
    images = sized_images(*shapes, seed=4)
    questions = QUESTIONS[: len(shapes)]
    enc = model.processor(
        images=images, text=_texts(model, questions), return_tensors="pt", padding=True
    )
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(family_path("qwen2_5_vl")).eval()
    with torch.no_grad():
        ref = hf.generate(**enc, max_new_tokens=3, do_sample=False)
    ours = model.generate(model.prepare(images, questions), max_new_tokens=3, return_type="tokens")
    assert torch.equal(ours, ref[:, enc["input_ids"].shape[1] :])
