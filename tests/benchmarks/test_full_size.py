"""benchmarks/full_size.py: its checkpoint is written like ``save_pretrained`` and loads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import LlavaForConditionalGeneration

from tl_lvlm import HookedLVLM
from tl_lvlm.testing import TEST_QUESTIONS, build_tiny_llava, build_tokenizer, random_images

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "full_size.py"


@pytest.fixture(scope="module")
def full_size():
    spec = importlib.util.spec_from_file_location("full_size", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tensors(directory: Path) -> dict[str, dict[str, tuple[tuple[int, ...], torch.dtype]]]:
    """``{file: {name: (shape, dtype)}}`` of every safetensors file, and each file's metadata."""
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            out[file.name] = {
                "metadata": f.metadata(),
                **{name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype())
                   for name in f.keys()},
            }  # fmt: skip
    return out


def test_random_checkpoint_matches_save_pretrained(full_size, tmp_path):
    """Same files, tensor names, shapes, dtypes, index and config as ``save_pretrained``."""
    config = build_tiny_llava()[0].config
    # What save_pretrained writes for a model created in bf16 from the config.
    model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    shard = 100_000  # bytes: several shards for the tiny model
    model.save_pretrained(tmp_path / "hf", max_shard_size=shard)
    full_size.RandomCheckpoint(config, max_shard_size=shard).save_pretrained(tmp_path / "ours")
    hf, ours = _tensors(tmp_path / "hf"), _tensors(tmp_path / "ours")
    assert len(hf) > 2
    assert ours == hf
    for name in ("model.safetensors.index.json", "config.json", "generation_config.json"):
        assert json.loads((tmp_path / "ours" / name).read_text()) == json.loads(
            (tmp_path / "hf" / name).read_text()
        ), name


def test_random_tensors(full_size):
    checkpoint = full_size.RandomCheckpoint(None, seed=3)
    like = torch.empty(512, 256, dtype=torch.bfloat16, device="meta")
    w = checkpoint.random_tensor("a.weight", like)
    assert w.dtype == torch.bfloat16 and w.shape == (512, 256)
    assert abs(float(w.float().std()) - 256**-0.5) < 0.05 * 256**-0.5
    assert torch.equal(w, checkpoint.random_tensor("a.weight", like))
    assert not torch.equal(w, checkpoint.random_tensor("b.weight", like))
    norm = torch.empty(64, dtype=torch.bfloat16, device="meta")
    assert torch.equal(checkpoint.random_tensor("x.norm.weight", norm), torch.ones(64).bfloat16())
    assert torch.equal(checkpoint.random_tensor("x.q_proj.bias", norm), torch.zeros(64).bfloat16())


def test_vicuna_sized_tokenizer(full_size):
    tokenizer = full_size.vicuna_sized_tokenizer()
    tiny = build_tokenizer()
    assert len(tokenizer) == 32_002
    ids = tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<image>", "<pad>"])
    assert ids == [0, 1, 2, 32_000, 32_001]
    assert (tokenizer.image_token_id, tokenizer.pad_token_id) == (32_000, 32_001)
    text = f"USER: <image>\n{TEST_QUESTIONS[0]} ASSISTANT:"
    new, old = tokenizer(text)["input_ids"], tiny(text)["input_ids"]
    assert new[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(new) == tiny.convert_ids_to_tokens(old)
    assert max(set(new) - {32_000}) < len(tiny)  # learned tokens, never fillers


def test_config_is_llava_15_7b(full_size):
    config = full_size.llava_15_7b_config(3)
    text, vision = config.text_config, config.vision_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads) == (3, 4096, 32)
    assert (text.intermediate_size, text.vocab_size, text.num_key_value_heads) == (11008, 32064, 32)
    assert (vision.image_size, vision.patch_size, vision.hidden_size) == (336, 14, 1024)
    assert (vision.num_hidden_layers, config.image_token_id, config.image_seq_length) == (
        24,
        32_000,
        576,
    )


def test_written_checkpoint_loads_with_576_image_tokens(full_size, tmp_path, monkeypatch):
    """A narrow variant of the rehearsal's checkpoint, end to end through from_pretrained."""
    spec = json.loads(json.dumps(full_size.LLAVA_15_7B))
    spec["text_config"].update(
        hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4
    )
    spec["vision_config"].update(
        hidden_size=32, intermediate_size=48, num_attention_heads=2, num_hidden_layers=2
    )
    monkeypatch.setattr(full_size, "LLAVA_15_7B", spec)
    path = full_size.write_checkpoint(tmp_path / "ckpt", 1, max_shard_size="1MB")
    assert len(list(path.glob("model-*.safetensors"))) > 1
    model = HookedLVLM.from_pretrained(path, dtype=torch.bfloat16, device="cpu")
    n_params = sum(p.numel() for p in model.hf_model.parameters())
    assert full_size.weight_bytes(path) == 2 * n_params
    assert model.hf_model.dtype == torch.bfloat16 and model.n_layers == 1
    inputs = model.prepare(random_images(1, 336), TEST_QUESTIONS[0])
    assert int((inputs.image >= 0).sum()) == 576
    logits = model(inputs)
    assert logits.shape[-1] == 32_064 and torch.isfinite(logits).all()
