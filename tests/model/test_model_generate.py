"""generate carries the images and equals Hugging Face's own greedy generate; bind and
to_str_tokens take what TransformerLens users pass."""

from __future__ import annotations

import pytest
import torch
from lvlm_cases import DIGIT_QUESTION

from tl_lvlm.testing import TEST_QUESTIONS


def _until_eos(row: torch.Tensor, eos: int) -> list[int]:
    """Token ids up to and including the first end-of-sequence token."""
    ids = row.tolist()
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_greedy_generate_equals_hugging_face(case):
    model, hf, inputs = case
    with torch.no_grad():
        ref = hf.generate(
            input_ids=inputs.input_ids,
            **inputs.model_kwargs(),
            max_new_tokens=16,
            do_sample=False,
        )[:, inputs.seq_len :]
    tokens = model.generate(inputs, max_new_tokens=16, return_type="tokens")
    eos = model.tokenizer.eos_token_id
    assert tokens.shape[0] == 2 and tokens.shape[1] <= 16
    for row in range(2):
        assert _until_eos(tokens[row], eos) == _until_eos(ref[row], eos)
    texts = model.generate(inputs, max_new_tokens=16)
    assert texts == model.tokenizer.batch_decode(ref, skip_special_tokens=True)
    assert model.bind(inputs).generate(max_new_tokens=16) == texts
    bound = model.bind(inputs).generate(inputs.input_ids, max_new_tokens=16, return_type="tokens")
    assert torch.equal(bound, tokens)


def test_the_bundled_model_says_the_digit(digits_model, digit_images):
    images, words = digit_images
    inputs = digits_model.prepare([images[7], images[2]], DIGIT_QUESTION)
    said = [t.strip() for t in digits_model.generate(inputs)]
    assert said[0] == words[7]
    # The greedy first token of a plain forward pass (this "two" is read as "eight").
    assert said == [w.strip() for w in digits_model.answer(inputs)[1]]


def test_hooks_fire_while_generating(digits_model, digit_images):
    # Swapping in another image's features at hook_embed changes what is generated.
    m = digits_model
    one, seven = (m.prepare(digit_images[0][d], DIGIT_QUESTION) for d in (1, 7))
    _, cache = m.run_with_cache(seven)
    image = one.group_mask("image")

    def swap_image(embed, hook):
        if embed.shape[1] != one.seq_len:  # later steps embed one new token
            return embed
        embed = embed.clone()
        embed[image] = cache["hook_embed"][image]
        return embed

    assert m.generate(one, max_new_tokens=4)[0].strip() == "one"
    with m.hooks(fwd_hooks=[("hook_embed", swap_image)]):
        assert m.generate(one, max_new_tokens=4)[0].strip() == "seven"


def test_generate_without_the_image_is_refused(tiny_mha, images):
    inputs = tiny_mha.prepare(images, TEST_QUESTIONS)
    with pytest.raises(TypeError, match="token ids alone would run without the image"):
        tiny_mha.generate(inputs.input_ids)
    with pytest.raises(TypeError, match="generate takes LVLMInputs from model.prepare"):
        tiny_mha.generate("USER: <image>\nWhat is it? ASSISTANT:")
    with pytest.raises(TypeError, match="generate got attention_mask, pixel_values"):
        tiny_mha.generate(inputs, pixel_values=inputs.pixel_values, attention_mask=None)
    with pytest.raises(ValueError, match="return_type must be 'str' or 'tokens'"):
        tiny_mha.generate(inputs, return_type="input")
    with pytest.raises(ValueError, match="only runs the input_ids it was bound to"):
        tiny_mha.bind(inputs).generate(inputs.input_ids[:1])
    # Without the KV cache the bridge would run the later steps without the image.
    with pytest.raises(ValueError, match="generate needs use_past_kv_cache=True"):
        tiny_mha.generate(inputs, use_past_kv_cache=False)


def test_sampling_arguments_reach_the_bridge(tiny_mha, images):
    inputs = tiny_mha.prepare(images, TEST_QUESTIONS)
    greedy = tiny_mha.generate(inputs, max_new_tokens=8, return_type="tokens")
    torch.manual_seed(0)
    sampled = tiny_mha.generate(
        inputs, max_new_tokens=8, return_type="tokens", do_sample=True, temperature=100.0
    )
    torch.manual_seed(0)
    again = tiny_mha.generate(
        inputs, max_new_tokens=8, return_type="tokens", do_sample=True, temperature=100.0
    )
    assert torch.equal(sampled, again) and not torch.equal(sampled, greedy)


def test_to_str_tokens_takes_what_transformer_lens_takes(tiny_mha, images):
    m = tiny_mha
    inputs = m.prepare(images, TEST_QUESTIONS)
    by_hand = [[m.tokenizer.decode([int(t)]) for t in row] for row in inputs.input_ids]
    assert m.to_str_tokens(inputs) == by_hand[0]
    assert m.to_str_tokens(inputs, row=1) == by_hand[1]
    assert by_hand[1].count("<image>") == inputs.positions("image", 1).numel()
    assert m.to_str_tokens(inputs.input_ids[1]) == by_hand[1]
    assert m.to_str_tokens(inputs.input_ids[1:]) == by_hand[1]  # [1, pos]
    assert m.to_str_tokens(inputs.input_ids) == by_hand  # [2, pos]: one list per row
    assert m.to_str_tokens(inputs.input_ids[1].numpy()) == by_hand[1]
    ids = m.tokenizer("What is it?")["input_ids"]
    assert m.to_str_tokens("What is it?") == [m.tokenizer.decode([t]) for t in ids]
    assert m.to_str_tokens("What is it?", prepend_bos=False) == [
        m.tokenizer.decode([t]) for t in ids[1:]
    ]
    assert m.to_str_tokens(["a", "b"]) == [m.to_str_tokens("a"), m.to_str_tokens("b")]
