"""HookedLVLM against Hugging Face, hooks, token groups and input validation."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from tl_lvlm import HookedLVLM
from tl_lvlm.inputs.templates import CHATML_TEMPLATE, LLAVA_15_TEMPLATE, VICUNA_SYSTEM_TEMPLATE
from tl_lvlm.testing import TEST_QUESTIONS as QUESTIONS


@pytest.mark.parametrize("kind", ["mha", "gqa"])
def test_logits_match_hugging_face(tiny_paths, images, kind):
    model = HookedLVLM.from_pretrained(tiny_paths[kind], device="cpu")
    hf = LlavaForConditionalGeneration.from_pretrained(
        tiny_paths[kind], attn_implementation="eager"
    ).eval()
    inputs = model.prepare(images, QUESTIONS)
    assert inputs.attention_mask[:, 0].tolist() != [1, 1], "the batch should need padding"
    with torch.no_grad():
        ours = model(inputs)
        ref = hf(input_ids=inputs.input_ids, **inputs.model_kwargs()).logits
    assert ours.shape == ref.shape == (2, inputs.seq_len, len(model.tokenizer))
    assert (ours - ref).abs().max().item() <= 1e-4


def test_padded_row_equals_its_unpadded_run(tiny_gqa, images):
    batch = tiny_gqa.prepare(images, QUESTIONS)
    alone = tiny_gqa.prepare(images[1], QUESTIONS[1])
    with torch.no_grad():
        b, a = tiny_gqa(batch), tiny_gqa(alone)
    n = alone.seq_len
    assert torch.allclose(b[1, -n:], a[0], atol=1e-5)


def test_run_with_cache_shapes(tiny_model, images):
    m = tiny_model
    inputs = m.prepare(images, QUESTIONS)
    logits, cache = m.run_with_cache(inputs)
    b, p = inputs.input_ids.shape
    assert logits.shape == (b, p, len(m.tokenizer))
    for layer in range(m.n_layers):
        assert cache[f"blocks.{layer}.attn.hook_pattern"].shape == (b, m.n_heads, p, p)
        assert cache[f"blocks.{layer}.attn.hook_attn_scores"].shape == (b, m.n_heads, p, p)
        assert cache[f"blocks.{layer}.attn.hook_k"].shape == (b, p, m.n_kv_heads, m.d_head)
        assert cache[f"blocks.{layer}.attn.hook_v"].shape == (b, p, m.n_kv_heads, m.d_head)
        assert cache[f"blocks.{layer}.attn.hook_z"].shape == (b, p, m.n_heads, m.d_head)
        assert cache[f"blocks.{layer}.hook_resid_post"].shape == (b, p, m.cfg.d_model)
    # Attention rows sum to one over the non-padded keys.
    pattern = cache["blocks.0.attn.hook_pattern"][0, :, -1]
    assert torch.allclose(pattern.sum(-1), torch.ones(m.n_heads), atol=1e-5)


def test_editing_hook_v_at_image_positions_is_causal(tiny_model, images):
    m = tiny_model
    inputs = m.prepare(images[:1], QUESTIONS[0])
    start, end = inputs.image_span(0)

    def scramble_head_0(v, hook):
        v = v.clone()
        v[:, start:end, 0] = 10 * torch.randn_like(v[:, start:end, 0])
        return v

    with torch.no_grad():
        clean = m(inputs)
        edited = m.run_with_hooks(inputs, fwd_hooks=[("blocks.0.attn.hook_v", scramble_head_0)])
    assert torch.equal(edited[0, :start], clean[0, :start]), "positions before the image moved"
    assert (edited[0, -1] - clean[0, -1]).abs().max() > 1e-3, "final logits did not move"


@pytest.mark.parametrize(
    "template, expected",
    [
        (
            LLAVA_15_TEMPLATE,
            {"prefix": "<s>USER: ", "role": " ASSISTANT", "final": ":"},
        ),
        (
            VICUNA_SYSTEM_TEMPLATE,
            {
                "prefix": "<s>A chat between a curious human and an artificial intelligence "
                "assistant. USER: ",
                "role": " ASSISTANT",
                "final": ":",
            },
        ),
        (
            CHATML_TEMPLATE,
            {
                "prefix": "<s><|im_start|>user\n",
                "role": "<|im_end|>\n<|im_start|>assistant",
                "final": "\n",
            },
        ),
    ],
)
def test_token_groups_decode_to_template_parts(tiny_mha, images, template, expected):
    inputs = tiny_mha.prepare(images, QUESTIONS, template=template)
    n_image = tiny_mha.hf_model.config.vision_config.image_size // 7
    for row, question in enumerate(QUESTIONS):

        def text(group, row=row):
            return tiny_mha.tokenizer.decode(inputs.input_ids[row, inputs.positions(group, row)])

        assert text("prefix") == expected["prefix"]
        assert text("image") == "<image>" * n_image**2
        assert text("question") == "\n" + question
        assert text("role") == expected["role"]
        assert text("final") == expected["final"]
        # Groups tile the unpadded row exactly once, in prompt order.
        everything = torch.cat([inputs.positions(g, row) for g in inputs_groups()])
        n_real = int(inputs.attention_mask[row].sum())
        assert everything.tolist() == list(range(inputs.seq_len - n_real, inputs.seq_len))


def inputs_groups():
    from tl_lvlm import GROUPS

    return GROUPS


def test_group_mask_and_final_position(tiny_mha, images):
    inputs = tiny_mha.prepare(images, QUESTIONS)
    assert (inputs.final[:, 0] == inputs.seq_len - 1).all()
    mask = inputs.group_mask("question")
    for row in range(2):
        assert mask[row].nonzero().flatten().tolist() == inputs.positions("question", row).tolist()
    with pytest.raises(ValueError, match="unknown token group 'answer'"):
        inputs.group("answer")


def test_answer_is_greedy_final_token(tiny_mha, images):
    inputs = tiny_mha.prepare(images, QUESTIONS)
    ids, strings = tiny_mha.answer(inputs)
    with torch.no_grad():
        expected = tiny_mha(inputs)[:, -1].argmax(-1)
    assert ids.tolist() == expected.tolist()
    assert strings == [tiny_mha.tokenizer.decode([int(i)]) for i in expected]


def test_from_hf_matches_from_pretrained(tiny_paths, images):
    from transformers import AutoProcessor

    hf = LlavaForConditionalGeneration.from_pretrained(tiny_paths["mha"])
    model = HookedLVLM.from_hf(hf, AutoProcessor.from_pretrained(tiny_paths["mha"]))
    ref = HookedLVLM.from_pretrained(tiny_paths["mha"], device="cpu")
    inputs = ref.prepare(images, QUESTIONS)
    with torch.no_grad():
        assert torch.allclose(model(inputs), ref(inputs), atol=1e-6)


def test_pixel_values_tensor_input(tiny_mha, images):
    from_pil = tiny_mha.prepare(images, QUESTIONS)
    from_tensor = tiny_mha.prepare(from_pil.pixel_values, QUESTIONS)
    assert torch.equal(from_tensor.input_ids, from_pil.input_ids)
    with torch.no_grad():
        assert torch.equal(tiny_mha(from_tensor), tiny_mha(from_pil))


# ----------------------------------------------------------------- bad input
def test_template_without_image_placeholder(tiny_mha, images):
    with pytest.raises(ValueError, match="exactly one '<image>' placeholder"):
        tiny_mha.prepare(images, QUESTIONS, template="USER: {question} ASSISTANT:")


def test_template_without_question_placeholder(tiny_mha, images):
    with pytest.raises(ValueError, match=r"exactly one '\{question\}'"):
        tiny_mha.prepare(images, QUESTIONS, template="USER: <image>\n ASSISTANT:")


def test_more_images_than_placeholders(tiny_mha):
    from tl_lvlm.testing import random_images

    with pytest.raises(ValueError, match="3 images for 2 prompts"):
        tiny_mha.prepare(random_images(3, 28), QUESTIONS)


def test_wrong_pixel_size(tiny_mha):
    with pytest.raises(ValueError, match=r"pixel_values must be \[batch, 3, 28, 28\]"):
        tiny_mha.prepare(torch.zeros(2, 3, 32, 32), QUESTIONS)


def test_question_longer_than_context(tiny_mha, images):
    with pytest.raises(ValueError, match="model's context is 2048"):
        tiny_mha.prepare(images[:1], "word " * 2500)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": 16,
                "num_attention_heads": 2,
                "num_hidden_layers": 1,
                "intermediate_size": 32,
                "vocab_size": 10,
            }
        )
    )
    with pytest.raises(ValueError, match="unsupported architecture 'LlamaForCausalLM'"):
        HookedLVLM.from_pretrained(tmp_path)


def test_from_hf_with_a_model_built_in_memory(images):
    from tl_lvlm.testing import TinyLlavaConfig, build_tiny_llava

    hf, processor = build_tiny_llava(TinyLlavaConfig(seed=3))
    reference = LlavaForConditionalGeneration(hf.config).eval()
    reference.load_state_dict(hf.state_dict())
    model = HookedLVLM.from_hf(hf, processor)
    inputs = model.prepare(images, QUESTIONS)
    with torch.no_grad():
        ref = reference(input_ids=inputs.input_ids, **inputs.model_kwargs()).logits
        assert (model(inputs) - ref).abs().max().item() <= 1e-4
