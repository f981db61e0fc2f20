"""The ActivationCache of a HookedLVLM is right at every position, image positions included.

``hook_embed`` holds what enters the residual stream (the projected image features
at image positions), so TransformerLens's residual tools add up; each is checked
against an independent Hugging Face copy of the checkpoint, on the LLaVA-1.5 tiny
models (MHA and GQA), the bundled tiny-digits model, LLaVA-NeXT and Gemma 3.
"""

from __future__ import annotations

import pytest
import torch
from lvlm_cases import DIGIT_QUESTION

from tl_lvlm.model.embed_hook import hook_embed_at_residual_input
from tl_lvlm.testing import TEST_QUESTIONS


@pytest.fixture(scope="module")
def run(case):
    """The model's cache and the HF copy's hidden states and logits on the same inputs."""
    model, hf, inputs = case
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs)
        ref = hf(input_ids=inputs.input_ids, **inputs.model_kwargs(), output_hidden_states=True)
    return logits, cache, ref


def _real(inputs) -> torch.Tensor:
    """``[batch, pos]`` True at non-padding positions (padding rows carry no meaning)."""
    return inputs.attention_mask.bool()


def test_hook_embed_is_what_enters_the_residual_stream(case, run):
    model, _, inputs = case
    _, cache, ref = run
    real = _real(inputs)
    merged = ref.hidden_states[0]  # HF: the merged inputs_embeds block 0 reads
    assert (cache["hook_embed"] - merged)[real].abs().max() <= 1e-6
    assert torch.equal(cache["hook_embed"], cache["blocks.0.hook_resid_pre"])
    image = inputs.group_mask("image")
    token_embedding = model.W_E[model.image_token_id]
    # Not vacuous: at image positions it is not the <image> token's embedding.
    assert (cache["hook_embed"][image] - token_embedding).abs().max() > 1e-2


def test_hook_embed_holds_the_projected_image_features(digits_model, digit_images):
    # LLaVA-1.5: the projector's output rows are the image positions, in order.
    inputs = digits_model.prepare(digit_images[0][:2], DIGIT_QUESTION)
    _, cache = digits_model.run_with_cache(inputs)
    for row in range(2):
        start, end = inputs.image_span(row)
        assert torch.equal(
            cache["hook_embed"][row, start:end], cache["vision_projector.hook_out"][row]
        )


def test_decompose_resid_sums_to_the_last_resid_post(case, run):
    model, _, inputs = case
    _, cache, _ = run
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[0] == "embed" and len(labels) == 1 + 2 * model.n_layers
    last = cache[f"blocks.{model.n_layers - 1}.hook_resid_post"]
    err = (parts.sum(0) - last).abs().amax(-1)
    assert err[_real(inputs)].max() <= 1e-4
    assert err[inputs.group_mask("image")].max() <= 1e-4


def test_accumulated_resid_matches_hugging_face_hidden_states(case, run):
    model, hf, inputs = case
    _, cache, ref = run
    acc, labels = cache.accumulated_resid(return_labels=True)
    n = model.n_layers
    assert labels == [f"{layer}_pre" for layer in range(n)] + ["final_post"]
    real = _real(inputs)
    for layer in range(n):
        assert (acc[layer] - ref.hidden_states[layer])[real].abs().max() <= 1e-4, layer
    # HF's last hidden state is after the final norm.
    with torch.no_grad():
        normed = hf.model.language_model.norm(acc[n])
    assert (normed - ref.hidden_states[n])[real].abs().max() <= 1e-4


def test_stack_head_results_match_the_output_projection(case, run):
    model, hf, inputs = case
    _, cache, _ = run
    heads, labels = cache.stack_head_results(layer=-1, return_labels=True)
    n, h, d = model.n_layers, model.n_heads, model.d_head
    assert labels[: h + 1] == [f"L0H{i}" for i in range(h)] + ["L1H0"]
    heads = heads.reshape(n, h, *heads.shape[1:])
    real = _real(inputs)
    for layer in range(n):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        w_o = hf.model.language_model.layers[layer].self_attn.o_proj.weight  # [d_model, h*d]
        for head in range(h):
            by_hand = z[:, :, head] @ w_o[:, head * d : (head + 1) * d].T
            assert (heads[layer, head] - by_hand)[real].abs().max() <= 1e-5
        # The heads add up to the output projection (on Gemma 3 a norm follows it
        # before the residual stream, so hook_attn_out differs there).
        o_proj = cache[f"blocks.{layer}.attn.o.hook_out"]
        assert (heads[layer].sum(0) - o_proj)[real].abs().max() <= 1e-4


def test_logit_attrs_add_up_to_the_logit_difference(case, run):
    model, _, inputs = case
    _, cache, ref = run
    final = ref.logits[:, -1]
    top2 = final.topk(2).indices
    answer, other = top2[:, 0], top2[:, 1]
    rows = torch.arange(inputs.batch_size)
    # logit_attrs applies the final norm's scale itself.
    parts = cache.decompose_resid(pos_slice=-1)  # [n_parts, batch, d_model]
    attrs = cache.logit_attrs(parts, tokens=answer, incorrect_tokens=other, pos_slice=-1)
    expected = final[rows, answer] - final[rows, other]
    assert (expected.abs() > 1e-3).all(), "a vacuous logit difference"
    assert torch.allclose(attrs.sum(0), expected, atol=1e-4)
    # One token: the attributions add up to its logit (no unembedding bias).
    single = cache.logit_attrs(parts, tokens=answer, pos_slice=-1)
    assert torch.allclose(single.sum(0), final[rows, answer], atol=1e-4)


def test_editing_hook_embed_at_image_positions_acts_as_the_other_image(digits_model, digit_images):
    m = digits_model
    a = m.prepare(digit_images[0][1], DIGIT_QUESTION)
    b = m.prepare(digit_images[0][7], DIGIT_QUESTION)
    assert torch.equal(a.input_ids, b.input_ids)
    _, cache_b = m.run_with_cache(b)
    image = a.group_mask("image")

    def swap_image(embed, hook):
        embed = embed.clone()
        embed[image] = cache_b["hook_embed"][image]
        return embed

    with torch.no_grad():
        logits_a, logits_b = m(a), m(b)
        swapped = m.run_with_hooks(a, fwd_hooks=[("hook_embed", swap_image)])
    assert (logits_a[0, -1] - logits_b[0, -1]).abs().max() > 1.0
    assert torch.allclose(swapped, logits_b, atol=1e-5)
    assert m.tokenizer.decode(swapped[0, -1].argmax()) == " seven"


def test_an_edit_of_hook_embed_is_applied_once(tiny_model, images):
    m = tiny_model
    inputs = m.prepare(images, TEST_QUESTIONS)
    delta = torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def add(x, hook):
        return x + delta

    with torch.no_grad():
        clean = m(inputs)
        via_embed = m.run_with_hooks(inputs, fwd_hooks=[("hook_embed", add)])
        via_resid = m.run_with_hooks(inputs, fwd_hooks=[("blocks.0.hook_resid_pre", add)])
    assert (via_embed - clean).abs().max() > 1e-2
    assert torch.allclose(via_embed, via_resid, atol=1e-5)


def test_names_filter_and_bound_model_cache_hook_embed(tiny_mha, images):
    inputs = tiny_mha.prepare(images, TEST_QUESTIONS)
    _, full = tiny_mha.run_with_cache(inputs)
    _, only = tiny_mha.run_with_cache(inputs, names_filter="hook_embed")
    _, bound = tiny_mha.bind(inputs).run_with_cache(inputs.input_ids)
    assert torch.equal(only["hook_embed"], full["blocks.0.hook_resid_pre"])
    assert torch.equal(bound["hook_embed"], full["blocks.0.hook_resid_pre"])


def test_the_embed_hook_point_is_restored_after_a_run(tiny_mha, images):
    hook_point = tiny_mha.bridge.embed.hook_out
    with pytest.raises(RuntimeError, match="called without inputs_embeds"):
        with hook_embed_at_residual_input(tiny_mha):
            tiny_mha.family.decoder(input_ids=torch.tensor([[1, 2]]))
    assert tiny_mha.bridge.embed.hook_out is hook_point
    assert tiny_mha.bridge.hook_dict["hook_embed"] is hook_point


def test_backward_hooks_on_hook_embed_see_the_image_features_gradient(digits_model, digit_images):
    # Attribution patching reads gradients at hook_embed; at image positions they are
    # the gradients of the projected image features.
    m = digits_model
    inputs = m.prepare(digit_images[0][4], DIGIT_QUESTION)
    grads = {}

    def save(grad, hook):
        grads[hook.name] = grad

    names = ("hook_embed", "vision_projector.hook_out")
    logits = m.run_with_hooks(inputs, bwd_hooks=[(n, save) for n in names], reset_hooks_end=False)
    logits[0, -1].max().backward()
    m.reset_hooks()
    start, end = inputs.image_span(0)
    assert grads["embed.hook_out"][0, start:end].abs().sum() > 1e-3
    assert torch.allclose(
        grads["embed.hook_out"][0, start:end], grads["vision_projector.hook_out"][0], atol=1e-6
    )
