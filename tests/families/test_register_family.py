"""A family registered by a user (a LLaVA-1.5 subclass with another template) runs everywhere.

It is registered with :func:`register_family` for a checkpoint whose config names a
new architecture, saved with ``save_pretrained`` and loaded with
``HookedLVLM.from_pretrained(path)``: ``prepare`` uses its template, the engine
equals the hook reference and head attribution runs. Registering an architecture
twice is refused.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from tl_lvlm import HookedLVLM
from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.analysis.heads import head_attribution
from tl_lvlm.analysis.image_tokens import image_token_attribution
from tl_lvlm.families import (
    Llava15Family,
    LVLMFamily,
    family_of,
    register_family,
    registered_families,
    unregister_family,
)
from tl_lvlm.flow import knockout
from tl_lvlm.testing import build_tiny_llava_15, random_images, save_atomic

QUESTION = "Which number is written here?"


class QALlavaFamily(Llava15Family):
    """LLaVA-1.5 weights under another architecture name, prompted as Q/A."""

    name = "QA LLaVA"
    architecture = "QALlavaForConditionalGeneration"
    template = "Q: <image>\n{question}\nA:"

    @classmethod
    def model_class(cls) -> type:
        return LlavaForConditionalGeneration


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    register_family(QALlavaFamily)
    try:
        path = save_atomic(tmp_path_factory.mktemp("qa") / "ckpt", *build_tiny_llava_15())
        # save_pretrained writes the model class's name; a user's checkpoint names its own.
        config = json.loads((path / "config.json").read_text())
        config["architectures"] = [QALlavaFamily.architecture]
        (path / "config.json").write_text(json.dumps(config))
        yield HookedLVLM.from_pretrained(path, device="cpu")
    finally:
        unregister_family(QALlavaFamily.architecture)


def test_the_registered_family_is_used(model):
    assert type(model.family) is QALlavaFamily
    assert family_of(model.hf_model.config) is QALlavaFamily
    inputs = model.prepare(random_images(1, 28, seed=0), QUESTION)
    assert model.template == QALlavaFamily.template
    decode = model.tokenizer.decode
    assert decode(inputs.input_ids[0, inputs.positions("prefix", 0)]) == "<s>Q: "
    assert decode(inputs.input_ids[0, inputs.positions("question", 0)]) == "\n" + QUESTION
    role_final = torch.cat([inputs.positions("role", 0), inputs.positions("final", 0)])
    assert decode(inputs.input_ids[0, role_final]) == "\nA:"


def test_engine_equals_hook_reference(model):
    baseline = image_kv_baseline(model, model.prepare(random_images(3, 28, seed=5), QUESTION))
    sample = model.prepare(random_images(1, 28, seed=1), QUESTION)
    engine = AblationEngine(model, sample, baseline)
    masks = torch.rand(6, model.n_layers, model.n_heads, generator=torch.Generator().manual_seed(0))
    masks = masks > 0.5
    rows = sample[[0] * len(masks)]
    with torch.no_grad():
        hooks = image_kv_ablation_hooks(model, rows, baseline, masks)
        ref = model.final_logits(rows, hooks)[:, engine.target]
    got = engine.run(masks)
    assert (got - ref).abs().max() <= 1e-4
    assert (ref - engine.clean_logit).abs().max() > 1e-3


def test_head_attribution_runs(model):
    samples = [(image, QUESTION) for image in random_images(3, 28, seed=4)]
    result = head_attribution(model, samples, n_masks=40, min_logit_gap=0.0, progress=False)
    assert len(result.sample_ids) + len(result.excluded) == 3
    assert result.coef.shape[1:] == (model.n_layers, model.n_heads)


def test_a_duplicate_registration_is_refused(model):
    class Again(Llava15Family):
        name = "Again"
        architecture = QALlavaFamily.architecture

    with pytest.raises(
        ValueError,
        match=r"architecture 'QALlavaForConditionalGeneration' is already registered to "
        r".*QALlavaFamily \(QA LLaVA\); a family cannot be registered twice",
    ):
        register_family(Again)
    assert registered_families()[QALlavaFamily.architecture] is QALlavaFamily


def test_a_builtin_architecture_cannot_be_taken_over():
    class Mine(Llava15Family):
        name = "Mine"

    with pytest.raises(ValueError, match="already registered to .*Llava15Family"):
        register_family(Mine)


def test_bad_registrations_are_refused():
    with pytest.raises(TypeError, match="register_family takes an LVLMFamily subclass"):
        register_family(object)

    class Nameless(LVLMFamily):
        pass

    with pytest.raises(ValueError, match="must set the class attributes `name` and"):
        register_family(Nameless)


def test_refused_analyses_are_refused_by_name(model, monkeypatch):
    reasons = {
        "ablation": "no ablation here",
        "engine": "no engine here",
        "knockout": "no knockout here",
        "image_attribution": "no maps here",
    }
    sample = model.prepare(random_images(1, 28, seed=1), QUESTION)
    baseline = image_kv_baseline(model, sample, "zero")
    monkeypatch.setattr(QALlavaFamily, "refused_analyses", reasons)
    with pytest.raises(NotImplementedError, match="QA LLaVA does not support ablation: no abl"):
        image_kv_baseline(model, sample, "zero")
    keep = torch.ones(1, model.n_layers, model.n_heads, dtype=torch.bool)
    with pytest.raises(NotImplementedError, match="QA LLaVA does not support ablation: no abl"):
        image_kv_ablation_hooks(model, sample, baseline, keep)
    with pytest.raises(NotImplementedError, match="QA LLaVA does not support ablation"):
        AblationEngine(model, sample, baseline)
    monkeypatch.setattr(QALlavaFamily, "refused_analyses", {"engine": reasons["engine"]})
    with pytest.raises(NotImplementedError, match="QA LLaVA does not support engine: no engine"):
        AblationEngine(model, sample, baseline)
    AblationEngine(model, sample, baseline, scope="all")  # the hook reference still runs
    monkeypatch.setattr(QALlavaFamily, "refused_analyses", reasons)
    with pytest.raises(NotImplementedError, match="QA LLaVA does not support knockout: no k"):
        knockout(model, sample, ("image", "final"))
    with pytest.raises(NotImplementedError, match="does not support image attribution: no maps"):
        image_token_attribution(model, sample, baseline="zero", n_masks=20, progress=False)
    with pytest.raises(ValueError, match="unknown analysis 'flow'"):
        model.family.supports("flow")
