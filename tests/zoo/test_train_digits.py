"""The training script: the batches are what they claim, each stage trains what it should,
the loss goes down, runs are bit-for-bit reproducible, and (slow) a full retrain
reproduces the committed checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tl_lvlm import HookedLVLM
from tl_lvlm.zoo import resolve
from tl_lvlm.zoo.evaluate_digits import evaluate
from tl_lvlm.zoo.questions import TASKS, answer_token_ids
from tl_lvlm.zoo.tiny_llava import build_tiny_llava
from tl_lvlm.zoo.train_digits import (
    TrainConfig,
    _EpochStream,
    _set_determinism,
    config_from_record,
    default_model_config,
    pretrain_vision,
    save,
    train,
)


def _quick_config(**kw) -> TrainConfig:
    kw = {"vision_steps": 6, "vision_batch_size": 16, **kw}
    return TrainConfig(steps=20, batch_size=8, warmup_steps=3, eval_every=0, **kw)


@pytest.fixture(scope="module")
def two_runs():
    a = train(_quick_config(), log=None, evaluate=False)
    b = train(_quick_config(), log=None, evaluate=False)
    return a, b


def test_batches_are_prompt_then_answer():
    cfg = _quick_config()
    _, processor = build_tiny_llava(cfg.model)
    tok = processor.tokenizer
    stream = _EpochStream(processor, cfg)
    pixels, ids, last, answers = stream.next(64)
    assert pixels.shape == (64, 3, 24, 24) and ids.shape[0] == 64
    end = tok.convert_tokens_to_ids(tok.tokenize(" ASSISTANT:"))[-1]
    answer_sets = {name: set(answer_token_ids(tok, t.answers)) for name, t in TASKS.items()}
    seen_tasks = set()
    for r in range(64):
        assert ids[r, last[r]] == end  # the final prompt token
        assert ids[r, last[r] + 1] == answers[r]  # then the answer
        assert (ids[r, last[r] + 2 :] == tok.pad_token_id).all()  # right padding only
        assert ids[r, 0] == tok.bos_token_id
        text = tok.decode(ids[r, : last[r] + 1])
        (task,) = [n for n, t in TASKS.items() if any(q in text for q in t.train_phrasings)]
        assert int(answers[r]) in answer_sets[task]
        seen_tasks.add(task)
        assert not any(q in text for t in TASKS.values() for q in t.held_out_phrasings)
    assert seen_tasks == set(TASKS)


def test_vision_stage_trains_the_tower_and_projector_only():
    cfg = _quick_config()
    _set_determinism(cfg.seed)
    model, processor = build_tiny_llava(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = pretrain_vision(model, processor, cfg, log=lambda _: None)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed  # something learned
    assert all(
        k.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for k in changed
    )
    assert any(k.startswith("model.multi_modal_projector.") for k in changed)
    assert record["steps"] == cfg.vision_steps
    assert 0.0 <= record["test_coloured_digit_readout_accuracy"] <= 1.0


@pytest.fixture(scope="module")
def after_vision_stage() -> dict[str, torch.Tensor]:
    """The state of the quick config's model after the vision stage alone."""
    cfg = _quick_config()
    _set_determinism(cfg.seed)
    alone, processor = build_tiny_llava(cfg.model)
    pretrain_vision(alone, processor, cfg, log=lambda _: None)
    return alone.state_dict()


def test_tower_lr_ratio_zero_keeps_the_vision_tower_frozen(after_vision_stage):
    """With ``tower_lr_ratio=0`` (LLaVA's recipe; the default is 0.1) the tower after 20
    instruction steps is the tower after the vision stage alone."""
    model, _, _ = train(_quick_config(tower_lr_ratio=0.0), log=None, evaluate=False)
    a, b = model.state_dict(), after_vision_stage
    tower = [k for k in a if k.startswith("model.vision_tower.")]
    assert tower and all(torch.equal(a[k], b[k]) for k in tower)
    w = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[w], b[w])  # while the decoder trained


def test_tower_lr_ratio_trains_the_tower_at_that_rate(two_runs, after_vision_stage):
    """With a ratio the tower moves in stage 2; its updates scale with the ratio."""
    (default, _, _), _ = two_runs
    assert TrainConfig.tower_lr_ratio == 0.1
    w = "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"
    full, _, _ = train(_quick_config(tower_lr_ratio=1.0), log=None, evaluate=False)
    moved = {
        ratio: (model.state_dict()[w] - after_vision_stage[w]).abs().max().item()
        for ratio, model in ((0.1, default), (1.0, full))
    }
    assert 0 < moved[0.1] < moved[1.0]


def test_negative_tower_lr_ratio_is_refused_before_training(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the vision stage ran before the bad tower_lr_ratio was refused")

    monkeypatch.setattr("tl_lvlm.zoo.train_digits.pretrain_vision", must_not_run)
    with pytest.raises(ValueError, match="tower_lr_ratio must be >= 0, got -1"):
        train(_quick_config(tower_lr_ratio=-1.0), log=None, evaluate=False)


def test_loss_decreases(two_runs):
    (_, _, info), _ = two_runs
    losses = info["losses"]
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3


def test_same_seed_same_weights(two_runs):
    (ma, _, ia), (mb, _, ib) = two_runs
    assert ia["losses"] == ib["losses"]
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_other_seed_other_weights(two_runs):
    (ma, _, ia), _ = two_runs
    mc, _, ic = train(
        _quick_config(seed=1, model=default_model_config(seed=1)), log=None, evaluate=False
    )
    w = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(ma.state_dict()[w], mc.state_dict()[w])
    assert ia["losses"] != ic["losses"]


def test_unknown_task_weight_rejected():
    with pytest.raises(ValueError, match="unknown tasks \\['size'\\]"):
        train(_quick_config(task_weights={"object": 1.0, "size": 1.0}), log=None)


def test_save_roundtrip(two_runs, tmp_path):
    (model, processor, info), _ = two_runs
    cfg = _quick_config()
    out = save(model, processor, info, cfg, tmp_path / "ckpt")
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 20 and record["version"] == 2
    assert record["vision_stage"]["steps"] == cfg.vision_steps
    assert record["config"]["task_weights"] == cfg.task_weights
    assert record["environment"]["torch_threads"] == torch.get_num_threads()
    assert config_from_record(record) == cfg
    loaded = LlavaForConditionalGeneration.from_pretrained(out)
    assert loaded.config.image_seq_length == cfg.model.n_image_tokens == 36
    AutoProcessor.from_pretrained(out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with pytest.raises(FileExistsError):
        save(model, processor, info, cfg, out)
    (out / "README.md").write_text("card")
    save(model, processor, info, cfg, out, overwrite=True)
    assert (out / "README.md").read_text() == "card"  # the model card survives a re-save
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.slow
def test_full_retrain_reproduces_committed_checkpoint(tmp_path):
    ckpt = Path(resolve("tl-lvlm/tiny-digits"))
    record = json.loads((ckpt / "training.json").read_text())
    cfg = config_from_record(record)
    assert cfg.steps == record["steps"]
    threads = torch.get_num_threads()
    torch.set_num_threads(record["environment"]["torch_threads"])
    try:
        model, processor, info = train(cfg, log=None)
    finally:
        torch.set_num_threads(threads)
    assert info["losses"][::50] == pytest.approx(record["loss_every_50_steps"], abs=1e-5)
    out = save(model, processor, info, cfg, tmp_path / "retrained")
    results = evaluate(HookedLVLM.from_pretrained(out, device="cpu"), progress=False)
    for style, acc in record["test_accuracy"].items():
        assert abs(results["test_accuracy"][style] - acc) <= 0.01, style
    for form, acc in record["user_arrays_object_accuracy"].items():
        assert abs(results["user_arrays_object_accuracy"][form] - acc) <= 0.01, form
