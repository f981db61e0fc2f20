"""The training script: the loss goes down, runs are bit-for-bit reproducible, and
(slow) a full retrain reproduces the committed checkpoint's accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tl_lvlm.zoo import resolve
from tl_lvlm.zoo.train_digits import (
    TrainConfig,
    config_from_record,
    default_model_config,
    save,
    train,
)


def _quick_config(**kw) -> TrainConfig:
    return TrainConfig(steps=20, batch_size=16, warmup_steps=3, eval_every=0, **kw)


@pytest.fixture(scope="module")
def two_runs():
    a = train(_quick_config(), log=None, evaluate=False)
    b = train(_quick_config(), log=None, evaluate=False)
    return a, b


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
    (ma, _, _), _ = two_runs
    mc, _, _ = train(
        _quick_config(seed=1, model=default_model_config(seed=1)), log=None, evaluate=False
    )
    w = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(ma.state_dict()[w], mc.state_dict()[w])


def test_save_roundtrip(two_runs, tmp_path):
    (model, processor, info), _ = two_runs
    cfg = _quick_config()
    out = save(model, processor, info, cfg, tmp_path / "ckpt")
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 20 and record["config"]["train_styles"] == list(cfg.train_styles)
    assert config_from_record(record) == cfg
    loaded = LlavaForConditionalGeneration.from_pretrained(out)
    assert loaded.config.image_seq_length == cfg.model.n_image_tokens == 64
    AutoProcessor.from_pretrained(out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with pytest.raises(FileExistsError):
        save(model, processor, info, cfg, out)
    save(model, processor, info, cfg, out, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.slow
def test_full_retrain_reproduces_committed_accuracy():
    record = json.loads((Path(resolve("tl-lvlm/tiny-digits")) / "training.json").read_text())
    cfg = config_from_record(record)
    assert cfg.steps == record["steps"]
    threads = torch.get_num_threads()
    torch.set_num_threads(record["environment"]["torch_threads"])
    try:
        _, _, info = train(cfg, log=None)
    finally:
        torch.set_num_threads(threads)
    for style, acc in record["test_accuracy"].items():
        assert abs(info["test_accuracy"][style] - acc) <= 0.01, style
