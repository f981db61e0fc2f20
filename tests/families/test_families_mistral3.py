"""Mistral 3 specifics: rows of ``[IMG]`` tokens separated by ``[IMG_BREAK]``, exactly the
``[IMG]`` positions ablated, variable resolution in one batch, the processor without
torchvision, generate, the cache's logit attributions, gradient head attribution, and the
row-grid map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_families import (
    check_exactly_the_image_tokens_are_ablated,
    check_generate_matches_hf,
    check_gradient_head_attribution_runs,
    check_logit_attrs_add_up,
    family_model,
    family_path,
    greedy_image_attribution,
    hf_copy,
    processor_outputs,
    sized_images,
)

from tl_lvlm.families import PatchGeometry
from tl_lvlm.families.processors import torchvision_available
from tl_lvlm.testing import MISTRAL3_MERGE, MISTRAL3_PATCH

QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]
#: Image shape -> its rows x columns of image tokens: scaled down to a longest edge of 32
#: (aspect kept) and up to whole 8-pixel blocks.
ROW_GRIDS = {(28, 28): (4, 4), (16, 40): (2, 4)}


@pytest.fixture
def model():
    return family_model("mistral3")


def test_image_group_is_the_img_tokens_in_rows_separated_by_breaks(model):
    """Each row of ``[IMG]`` tokens ends in ``[IMG_BREAK]``, the last in ``[IMG_END]``; the
    image group is the ``[IMG]`` tokens, the breaks are in no group, ``[IMG_END]`` opens the
    question group."""
    inputs = model.prepare(sized_images(*ROW_GRIDS), QUESTIONS)
    tok = model.tokenizer
    for row, (rows, cols) in enumerate(ROW_GRIDS.values()):
        ids = inputs.input_ids[row]
        image = inputs.positions("image", row)
        assert torch.equal(image, (ids == model.image_token_id).nonzero().flatten())
        start, end = inputs.image_span(row)
        assert tok.decode(ids[start : end + 1]) == "[IMG_BREAK]".join(["[IMG]" * cols] * rows) + (
            "[IMG_END]"
        )
        breaks = sorted(set(range(start, end)) - set(image.tolist()))
        assert len(breaks) == rows - 1
        assert tok.decode(ids[breaks]) == "[IMG_BREAK]" * (rows - 1)
        grouped = torch.cat([inputs.positions(g, row) for g in ("prefix", "question", "role")])
        assert not set(breaks) & set(grouped.tolist())
        assert int(inputs.positions("question", row)[0]) == end
        assert tok.decode(ids[end]) == "[IMG_END]"


def test_logits_match_hugging_face_on_two_image_sizes(model):
    """A 4 x 4 and a 2 x 4 image in one batch: pixel_values padded to the larger image,
    ``image_sizes`` per row; logits equal HF's on the processor's own outputs, also for a
    row selected from the batch."""
    images = sized_images(*ROW_GRIDS, seed=1)
    inputs = model.prepare(images, QUESTIONS)
    block = MISTRAL3_PATCH * MISTRAL3_MERGE
    assert inputs.extra["image_sizes"].tolist() == [
        [r * block, c * block] for r, c in ROW_GRIDS.values()
    ]
    assert inputs.pixel_values.shape == (2, 3, 4 * block, 4 * block)
    enc = processor_outputs(model, images, QUESTIONS)
    assert torch.equal(enc["input_ids"], inputs.input_ids)
    with torch.no_grad():
        ref = hf_copy("mistral3", attn_implementation="eager")(**enc).logits
        ours = model(inputs)
        row = model(inputs[1])
    assert (ours - ref).abs().max().item() <= 1e-4
    assert (row[0] - ref[1]).abs().max().item() <= 1e-4


@pytest.mark.skipif(torchvision_available(), reason="the standard processor is imported")
def test_processor_is_transformers_pixtral_processor_without_torchvision(model):
    """The real class (``transformers.PixtralProcessor`` is a placeholder without
    torchvision), saved under its own name so ``AutoProcessor`` loads it with torchvision;
    the torchvision module's name is not left behind."""
    import sys

    processor = model.processor
    assert type(processor).__module__ == "transformers.models.pixtral.processing_pixtral"
    assert type(processor).__name__ == "PixtralProcessor"
    assert type(processor.image_processor).__name__ == "PixtralImageProcessorPil"
    assert "transformers.models.pixtral.image_processing_pixtral" not in sys.modules
    config = json.loads((Path(family_path("mistral3")) / "processor_config.json").read_text())
    assert config["processor_class"] == "PixtralProcessor"


def test_exactly_the_image_token_positions_are_ablated(model):
    """Not the ``[IMG_BREAK]`` tokens between the rows."""
    check_exactly_the_image_tokens_are_ablated(
        model, "mistral3", sized_images((28, 28), seed=4)[0], QUESTIONS[0]
    )


@pytest.mark.parametrize("shapes", [[(28, 28)], list(ROW_GRIDS)], ids=["single", "two_sizes"])
def test_generate_matches_hugging_face_generate(model, shapes):
    images = sized_images(*shapes, seed=2)
    check_generate_matches_hf(model, "mistral3", images, QUESTIONS[: len(images)])


def test_logit_attrs_of_decompose_resid_add_up_to_the_final_logit(model):
    check_logit_attrs_add_up(model, model.prepare(sized_images(*ROW_GRIDS, seed=3), QUESTIONS))


def test_gradient_head_attribution_runs(model):
    check_gradient_head_attribution_runs(model, QUESTIONS[0])


def test_patch_merger_orders_the_tokens_row_major(model):
    """The patch merger's token ``i * cols + j`` holds the patches of rows ``2i, 2i + 1`` and
    columns ``2j, 2j + 1``, the order the row grid assumes (read at its merging layer's
    input, where each patch's feature is its (row, column))."""
    merger = model.hf_model.model.multi_modal_projector.patch_merger
    rows, cols = 2 * MISTRAL3_MERGE, 4 * MISTRAL3_MERGE  # patches of a 2 x 4 token image
    d = model.hf_model.config.vision_config.hidden_size
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    features = torch.zeros(rows * cols, d)
    features[:, 0], features[:, 1] = r.flatten().float(), c.flatten().float()
    seen = []
    handle = merger.merging_layer.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        with torch.no_grad():
            merger(features, torch.tensor([[rows * MISTRAL3_PATCH, cols * MISTRAL3_PATCH]]))
    finally:
        handle.remove()
    blocks = seen[0].view(-1, d, MISTRAL3_MERGE**2)  # unfold: channel-major per block
    for token in range(blocks.shape[0]):
        i, j = divmod(token, cols // MISTRAL3_MERGE)
        assert set(blocks[token, 0].tolist()) == {2 * i, 2 * i + 1}
        assert set(blocks[token, 1].tolist()) == {2 * j, 2 * j + 1}


@pytest.mark.parametrize("shape", list(ROW_GRIDS))
def test_image_token_map_is_the_row_grid(model, shape):
    """Rows x columns of ``[IMG]`` tokens over the whole (stretched) image; the breaks are
    not image tokens, so not in the map."""
    sample = model.prepare(sized_images(shape, seed=3), QUESTIONS[1])
    result = greedy_image_attribution(model, sample, n_masks=40)
    assert result.geometry == PatchGeometry(*ROW_GRIDS[shape], "stretch")
    assert result.coef.shape == ROW_GRIDS[shape]


def test_with_torchvision_the_standard_processor_is_used(monkeypatch):
    """Where torchvision is installed, ``AutoProcessor`` loads the saved files (here it gets
    as far as transformers' placeholder for ``PixtralProcessor`` asking for torchvision)."""
    import tl_lvlm.families.mistral3 as mistral3

    monkeypatch.setattr(mistral3, "torchvision_available", lambda: True)
    with pytest.raises(ImportError, match="PixtralProcessor requires the Torchvision"):
        mistral3.Mistral3Family.load_processor(family_path("mistral3"))
