"""InternVL specifics: the processor without torchvision, tiles (plus the thumbnail) packed per
row, the adapter registered only during the boot, <img>/</img> in the groups, generate against
HF, cache tooling, gradient head attribution, and the pixel-shuffle geometry of the maps."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_families import family_model, family_path, greedy_image_attribution, sized_images
from transformers import InternVLForConditionalGeneration

from tl_lvlm import HookedLVLM
from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.analysis.heads import head_attribution
from tl_lvlm.families import InternVLFamily, PatchGeometry
from tl_lvlm.families.processors import torchvision_available
from tl_lvlm.testing import INTERNVL_PATCH, INTERNVL_TILE, build_tiny_internvl, random_images

QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]
#: Image tokens along a tile's side: 8 x 8 patches, pixel-shuffled 2 x 2 into one token.
G = INTERNVL_TILE // INTERNVL_PATCH // 2
# Worked by hand from HF's canvas rule (the grid whose cols / rows ratio is closest to the
# image's width / height, among 1 to 4 tiles; on a tie, the later, larger grid while the
# image's area exceeds half the grid's): 60 x 64 ties 1 x 1 with 2 x 2 (both ratio 1) and
# 3840 > 0.5 * 4 * 32 * 32, so 2 x 2. Image (height, width) -> (tile rows, cols).
TILE_GRIDS = {(28, 28): (1, 1), (28, 56): (1, 2), (56, 28): (2, 1), (60, 64): (2, 2)}


@pytest.fixture
def model():
    return family_model("internvl")


@functools.cache
def _hf_model(name: str):
    """An independent copy of the tiny checkpoint ``name`` (the bridge edits its own in place)."""
    return InternVLForConditionalGeneration.from_pretrained(
        family_path(name), attn_implementation="eager"
    ).eval()


@pytest.fixture
def hf():
    return _hf_model("internvl")


@pytest.fixture(params=["internvl", "internvl3_5"])
def variant(request):
    """``(model, hf)`` of InternVL-3 (Qwen2 decoder) and InternVL-3.5 (Qwen3: q/k norms, tied
    unembedding)."""
    return family_model(request.param), _hf_model(request.param)


def _texts(model, questions):
    return [
        model.template.replace("{question}", q).replace("<image>", model.family.image_prompt)
        for q in questions
    ]


def _n_tiles(rows: int, cols: int) -> int:
    return rows * cols + (rows * cols > 1)  # the thumbnail, when there are several tiles


@pytest.mark.skipif(torchvision_available(), reason="the standard processor is used")
def test_processor_without_torchvision_is_its_image_processor_and_tokenizer(model):
    """Its outputs equal the PIL image processor's (tiles + thumbnail) and the tokenizer's with
    each image expanded to <img>, 16 context tokens per tile, </img>."""
    processor = model.processor
    assert type(processor.image_processor).__name__ == "GotOcr2ImageProcessorPil"
    assert not hasattr(processor, "video_processor")
    assert processor.image_seq_length == G * G  # processor_config.json's settings kept
    images, texts = sized_images((28, 56), (28, 28)), _texts(model, QUESTIONS)
    enc = processor(images=images, text=texts, return_tensors="pt", padding=True)
    pixels = processor.image_processor(images=images, crop_to_patches=True, return_tensors="pt")
    assert pixels["num_patches"].tolist() == [3, 1]
    assert torch.equal(enc["pixel_values"], pixels["pixel_values"])
    expanded = [
        t.replace("<IMG_CONTEXT>", "<img>" + "<IMG_CONTEXT>" * (n * G * G) + "</img>")
        for t, n in zip(texts, (3, 1), strict=True)
    ]
    tokens = model.tokenizer(expanded, return_tensors="pt", padding=True)
    assert torch.equal(enc["input_ids"], tokens["input_ids"])
    config = json.loads((Path(family_path("internvl")) / "processor_config.json").read_text())
    assert config["processor_class"] == "InternVLProcessor"


def test_tile_grids_and_the_image_group(model):
    """Each image's tiles: the grid HF's processor picks, plus the thumbnail when there are
    several; the image group is exactly the context tokens, between <img> and </img>."""
    shapes = list(TILE_GRIDS)
    inputs = model.prepare(sized_images(*shapes), QUESTIONS[1])
    assert inputs.extra["tile_grid"].tolist() == [list(g) for g in TILE_GRIDS.values()]
    n_tiles = [_n_tiles(*g) for g in TILE_GRIDS.values()]
    assert inputs.pixel_values.shape == (4, max(n_tiles), 3, INTERNVL_TILE, INTERNVL_TILE)
    for row, n in enumerate(n_tiles):
        image = inputs.positions("image", row)
        assert image.numel() == n * G * G
        ids = inputs.input_ids[row]
        assert bool((ids[image] == model.image_token_id).all())
        assert int((ids == model.image_token_id).sum()) == image.numel()
        decode = model.tokenizer.decode
        assert decode(ids[inputs.positions("prefix", row)]).endswith("<img>")
        assert decode(ids[inputs.positions("question", row)]) == "</img>\n" + QUESTIONS[1]
        assert torch.equal(
            inputs.pixel_values[row, n:], torch.zeros_like(inputs.pixel_values[row, n:])
        )


@pytest.mark.skipif(torchvision_available(), reason="the standard processor is used")
def test_files_laid_out_as_the_public_checkpoints_load_without_torchvision(tmp_path):
    """OpenGVLab/InternVL3-*-hf ship the image processor's settings (the torchvision "Fast"
    class, ``crop_to_patches: false``) in preprocessor_config.json and only the processor's
    own in processor_config.json; the PIL backend is loaded and the images still tiled."""
    path = tmp_path / "internvl"
    shutil.copytree(family_path("internvl"), path)
    pre = json.loads((path / "preprocessor_config.json").read_text())
    pre.update(
        image_processor_type="GotOcr2ImageProcessorFast",
        crop_to_patches=False,
        processor_class="InternVLProcessor",
    )
    (path / "preprocessor_config.json").write_text(json.dumps(pre))
    (path / "processor_config.json").write_text(
        json.dumps({"image_seq_length": G * G, "processor_class": "InternVLProcessor"})
    )
    model = HookedLVLM.from_pretrained(path, device="cpu")
    assert type(model.processor.image_processor).__name__ == "GotOcr2ImageProcessorPil"
    assert model.processor.image_seq_length == G * G
    inputs = model.prepare(sized_images((28, 56)), QUESTIONS[0])
    assert inputs.extra["tile_grid"].tolist() == [[1, 2]]
    with torch.no_grad():
        assert torch.equal(model(inputs), family_model("internvl")(inputs))


def test_tiling_follows_the_processor_not_the_image_processors_own_setting(model, monkeypatch):
    """The public checkpoints' image processor says ``crop_to_patches: false``; the processor
    tiles anyway (its default), and so does the grid."""
    monkeypatch.setattr(model.processor.image_processor, "crop_to_patches", False)
    inputs = model.prepare(sized_images((28, 56)), QUESTIONS[0])
    assert inputs.extra["tile_grid"].tolist() == [[1, 2]]
    assert inputs.positions("image", 0).numel() == 3 * G * G


def test_a_tiling_that_does_not_add_up_is_refused(model, monkeypatch):
    """A processor that tiles otherwise than the canvas rule is refused, never mis-mapped."""
    monkeypatch.setattr(type(model.family), "tile_grid", classmethod(lambda cls, *a: (2, 1)))
    with pytest.raises(ValueError, match=r"tile grids \[\[2, 1\]\] give \[3\] tiles"):
        model.prepare(sized_images((28, 28)), QUESTIONS[0])


def test_logits_match_hugging_face_on_its_own_processor_outputs(model, hf):
    """Rows with 3 and 1 tiles: HF gets the processor's outputs (every tile of the batch in one
    tensor); ours packs them per row. Padding positions are left out (neither attends there)."""
    images = sized_images((28, 56), (28, 28), seed=1)
    inputs = model.prepare(images, QUESTIONS)
    enc = model.processor(
        images=images, text=_texts(model, QUESTIONS), return_tensors="pt", padding=True
    )
    assert torch.equal(enc["input_ids"], inputs.input_ids)
    with torch.no_grad():
        ref = hf(**enc).logits
        ours = model(inputs)
        row = model(inputs[1])  # one row selected from the packed batch
    real = inputs.attention_mask.bool()
    assert (ours - ref)[real].abs().max().item() <= 1e-4
    assert (row[0] - ref[1])[real[1]].abs().max().item() <= 1e-4


@pytest.mark.parametrize("scope", ["text", "all"])
def test_engine_equals_hook_reference_on_tiles_and_thumbnail(model, scope):
    """A 1 x 2 tiling (48 image tokens, the thumbnail's included), mean baseline over images of
    the same tiling: the engine's target logits equal one hooked forward per mask."""
    reference = model.prepare(sized_images((28, 56), (30, 60), (28, 50), seed=5), QUESTIONS[0])
    baseline = image_kv_baseline(model, reference)
    sample = model.prepare(sized_images((28, 56), seed=6), QUESTIONS[0])
    assert baseline.n_image == sample.positions("image", 0).numel() == 3 * G * G
    engine = AblationEngine(model, sample, baseline, scope=scope)
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(12, model.n_layers, model.n_heads, generator=g) > 0.5
    masks[0] = False  # all ablated
    got = engine.run(masks, batch_size=4)
    rows = sample[[0] * len(masks)]
    hooks = image_kv_ablation_hooks(model, rows, baseline, masks, scope=scope)
    with torch.no_grad():
        ref = model.final_logits(rows, hooks)[:, engine.target]
    assert (got - ref).abs().max() <= 1e-4
    assert (ref - engine.clean_logit).abs().max() > 1e-3  # the masks do something


def test_adapter_is_llavas_with_the_vision_tower_opaque_and_registered_only_for_the_boot(model):
    from transformer_lens.factories import architecture_adapter_factory as factory
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
    from transformer_lens.model_bridge.supported_architectures.llava import (
        LlavaArchitectureAdapter,
    )

    adapter = model.bridge.adapter
    assert isinstance(adapter, LlavaArchitectureAdapter)
    assert type(adapter.component_mapping["vision_encoder"]) is GeneralizedComponent
    # Nothing of tl-lvlm is left in TransformerLens after the boot.
    assert "InternVLForConditionalGeneration" not in factory.SUPPORTED_ARCHITECTURES
    assert "InternVLForConditionalGeneration" not in factory.ArchitectureAdapterFactory._adapters
    fired = set()

    def record(name: str):
        def hook(t, hook) -> None:
            fired.add(name)

        return hook

    names = [f"blocks.1.attn.hook_{n}" for n in ("q", "k", "v", "z", "attn_scores", "pattern")]
    inputs = model.prepare(sized_images((28, 56)), QUESTIONS[0])
    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=[(n, record(n)) for n in names])
    assert fired == set(names)


def test_a_moe_text_model_is_refused_by_name():
    hf_model, processor = build_tiny_internvl()
    hf_model.config.text_config.model_type = "qwen2_moe"
    with pytest.raises(NotImplementedError, match="InternVL with a 'qwen2_moe' text model"):
        InternVLFamily.boot_bridge("tiny", hf_model, processor.tokenizer)


def _hf_generate(hf, inputs, n: int) -> torch.Tensor:
    kwargs = inputs.model_kwargs()
    del kwargs["position_ids"]  # HF's generate counts positions from the mask itself
    out = hf.generate(input_ids=inputs.input_ids, **kwargs, max_new_tokens=n, do_sample=False)
    return out[:, inputs.seq_len :]


@pytest.mark.parametrize(
    "shapes", [[(28, 56)], [(28, 56), (56, 28)], [(28, 28), (28, 56)]], ids=["one", "two", "mixed"]
)
def test_generate_equals_hugging_face_greedy(variant, shapes):
    """Greedy continuations: one tiled image; two images of different tilings (same number of
    tiles); 1 and 3 tiles (different prompt lengths, so left padding)."""
    model, hf = variant
    questions = QUESTIONS[: len(shapes)]
    inputs = model.prepare(sized_images(*shapes, seed=2), questions)
    ours = model.generate(inputs, max_new_tokens=3, return_type="tokens", stop_at_eos=False)
    assert ours.shape == (len(shapes), 3)
    assert torch.equal(ours, _hf_generate(hf, inputs, 3))


def test_logit_attrs_of_the_decomposed_residual_add_up_to_the_final_logit(variant):
    model, hf = variant
    inputs = model.prepare(sized_images((28, 56), (28, 28), seed=3), QUESTIONS)
    with torch.no_grad():
        ref = hf(input_ids=inputs.input_ids, **inputs.model_kwargs()).logits[:, -1]
        _, cache = model.run_with_cache(inputs)
    answer = ref.argmax(-1)
    rows = torch.arange(inputs.batch_size)
    parts = cache.decompose_resid(pos_slice=-1)  # [1 + 2 * n_layers, batch, d_model]
    assert parts.shape == (1 + 2 * model.n_layers, 2, model.cfg.d_model)
    attrs = cache.logit_attrs(parts, tokens=answer, pos_slice=-1)
    assert (attrs.sum(0) - ref[rows, answer]).abs().max() <= 1e-4


def test_gradient_head_attribution_runs(model):
    samples = [(image, QUESTIONS[0]) for image in random_images(3, 28, seed=4)]
    result = head_attribution(
        model, samples, method="gradient", n_gradient_masks=8, min_logit_gap=0.0, progress=False
    )
    kept = list(result.sample_ids)
    assert kept, f"every sample was excluded: {result.excluded}"
    assert result.coef.shape == (len(kept), model.n_layers, model.n_heads)
    assert np.isfinite(result.coef).all() and np.abs(result.coef).max() > 0


def test_pixel_shuffle_makes_each_token_a_2x2_block_of_patches_row_by_row(model):
    """The within-tile order the geometry assumes, read off HF's own ``pixel_shuffle``: token
    (i, j) of a tile holds patches (2i..2i+1, 2j..2j+1) of its 8 x 8 patch grid."""
    side = 2 * G
    r, c = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    features = torch.stack([r, c], -1).float()[None]  # [1, rows, cols, (row, col)]
    shuffled = model.hf_model.model.pixel_shuffle(features, 0.5).reshape(G * G, 4, 2)
    for token in range(G * G):
        i, j = divmod(token, G)
        held = {tuple(int(v) for v in p) for p in shuffled[token]}
        assert held == {(2 * i + a, 2 * j + b) for a in (0, 1) for b in (0, 1)}


def test_geometry_places_the_tiles_tokens_on_the_resized_image(model):
    """A 32 x 64 image (the 1 x 2 tile canvas, so not resized) painted with one colour per
    token cell: the tile pixels under each image token, as the processor cut them, carry the
    colour of the cell that the geometry gives that token. The thumbnail is left out."""
    cell = INTERNVL_TILE // G  # pixels per token side
    pixels = np.zeros((INTERNVL_TILE, 2 * INTERNVL_TILE, 3), np.uint8)
    for y in range(G):
        for x in range(2 * G):
            pixels[y * cell : (y + 1) * cell, x * cell : (x + 1) * cell] = (40 * y, 20 * x, 0)
    from PIL import Image

    sample = model.prepare(Image.fromarray(pixels), QUESTIONS[0])
    geometry = model.family.patch_geometry(model.processor, sample)
    assert geometry.shape == (G, 2 * G) and geometry.crop == "stretch"
    assert sorted(geometry.tokens) == list(range(2 * G * G))  # the thumbnail's are not drawn
    ip = model.processor.image_processor
    mean, std = np.asarray(ip.image_mean)[:, None, None], np.asarray(ip.image_std)[:, None, None]
    tiles = (sample.pixel_values[0].numpy() * std + mean) * 255  # [3 tiles, 3, 32, 32]
    for index, token in enumerate(geometry.tokens):
        y, x = divmod(index, 2 * G)
        tile, within = divmod(token, G * G)
        i, j = divmod(within, G)
        block = tiles[tile, :2, i * cell : (i + 1) * cell, j * cell : (j + 1) * cell]
        np.testing.assert_allclose(block.mean((1, 2)), (40 * y, 20 * x), atol=1.0)


def test_image_token_map_covers_the_tiles(model):
    """A 1 x 2 tiling: a 4 x 8 map over the whole (stretched) image; the 16 thumbnail tokens
    are ablated with the rest but not drawn."""
    sample = model.prepare(sized_images((28, 56), seed=3), QUESTIONS[1])
    result = greedy_image_attribution(model, sample, n_masks=120)
    assert sample.positions("image", 0).numel() == 3 * G * G
    assert isinstance(result.geometry, PatchGeometry)
    assert result.coef.shape == (G, 2 * G)
    mask = np.zeros((28, 56), bool)
    mask[:, :14] = True  # the left quarter: the first two token columns of the first tile
    mass = result.object_mass(mask)
    assert (mass.n_object, mass.n_background) == (2 * G, 6 * G)


def test_with_torchvision_the_standard_processor_is_used(monkeypatch):
    """Where torchvision is installed, ``AutoProcessor`` loads the saved files (here it gets
    as far as needing torchvision for the video processor, so the files are complete)."""
    import tl_lvlm.families.processors as processors

    monkeypatch.setattr(processors, "torchvision_available", lambda: True)
    with pytest.raises(ValueError, match="requires `torchvision` to be installed"):
        InternVLFamily.load_processor(family_path("internvl"))
