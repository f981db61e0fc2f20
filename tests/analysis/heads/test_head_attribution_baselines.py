"""Baseline scores and the evaluation of rankings, against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_lvlm.analysis.competing import attention_to_image, single_head_effects
from tl_lvlm.analysis.evaluation import evaluate_rankings
from tl_lvlm.testing import random_images


def test_attention_to_image_matches_the_cached_patterns(tiny_model):
    # Questions of different lengths, so that one row is left-padded.
    inputs = tiny_model.prepare(random_images(2, 28), ["What is shown here in the image?", "Hm?"])
    scores = attention_to_image(tiny_model, inputs)
    _, cache = tiny_model.run_with_cache(inputs)
    for row in range(2):
        image = inputs.positions("image", row)
        text = torch.cat([inputs.positions(g, row) for g in ("question", "role", "final")])
        for layer in range(tiny_model.n_layers):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][row]  # [head, q, k]
            on_image = pattern[:, :, image].sum(-1)  # [head, q]
            torch.testing.assert_close(scores["attention_final"][row, layer], on_image[:, -1])
            torch.testing.assert_close(
                scores["attention_text"][row, layer], on_image[:, text].mean(-1)
            )


def test_single_head_effects_of_an_additive_function():
    weights = np.array([0.5, -0.2, 0.0, 1.0])

    def fn(masks):
        return masks @ weights + masks[:, 0] * masks[:, 3]  # one interaction

    effects = single_head_effects(fn, 4, batch_size=2, progress=False)
    np.testing.assert_allclose(effects, [1.5, -0.2, 0.0, 2.0])


def test_evaluate_rankings_per_sample_and_shared():
    weights = [np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])]
    fns = [lambda m, w=w: m @ w for w in weights]
    ev = evaluate_rankings(
        fns, {"own": [[0, 1, 2], [2, 1, 0]], "shared": [0, 1, 2]}, [0, 1, 3], progress=False
    )
    np.testing.assert_array_equal(ev.faithfulness["own"], [[0, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(ev.faithfulness["shared"], [[0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(ev.completeness["shared"], [[1, 0, 0], [1, 1, 0]])
    assert ev.heads_needed() == {"own": 1, "shared": 3}
    with pytest.raises(ValueError, match="one order per sample"):
        evaluate_rankings(fns, {"bad": [[0, 1, 2]]}, [0, 1], progress=False)
