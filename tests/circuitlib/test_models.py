"""Model loading (tiny GPT-2, local folders, bad paths) and which parameters a circuit may mask."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from circuitlib.errors import InputError
from circuitlib.models import load_model, masked_params, module_type, tiny_gpt2


def test_tiny_gpt2_is_deterministic_and_leaves_global_rng_alone(helpers) -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    a = load_model("tiny-gpt2", device="cpu")
    assert torch.equal(torch.rand(3), expected_draw)  # building the model did not consume the global generator
    b = load_model("tiny-gpt2", device="cpu")
    assert helpers.differing(b.model, helpers.clone_state(a.model)) == []
    other, _ = tiny_gpt2(seed=1)
    c_attn = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(other.get_parameter(c_attn), a.model.get_parameter(c_attn))


def test_loaded_model_is_frozen_in_eval_mode_on_the_device(tiny_lm) -> None:
    assert not tiny_lm.model.training
    assert all(not p.requires_grad for p in tiny_lm.model.parameters())
    assert tiny_lm.device == torch.device("cpu")
    assert tiny_lm.model_id == "tiny-gpt2" and tiny_lm.revision is None
    assert tiny_lm.tokenizer.pad_token == tiny_lm.tokenizer.eos_token == "<eos>"
    assert tiny_lm.tokenizer.padding_side == "right"


def test_tiny_tokenizer_round_trips_text_byte_per_token(tiny_lm) -> None:
    tok = tiny_lm.tokenizer
    ids = tok(" a kind of", add_special_tokens=False)["input_ids"]
    assert len(ids) == len(b" a kind of")
    assert tok.decode(ids) == " a kind of"


def test_gpt2_masked_params_are_exactly_the_block_parameters(tiny_lm) -> None:
    params = tiny_lm.params
    named = dict(tiny_lm.model.named_parameters())
    assert [p.name for p in params] == [n for n in named if n.startswith("transformer.h.")]
    assert len(params) == 2 * 12  # two blocks of 12 parameters each
    assert all(tuple(named[p.name].shape) == p.shape for p in params)
    by_name = {p.name: p for p in params}
    outside = ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias")
    for name in outside:
        assert name in named and name not in by_name
    assert not any(p.name.startswith("lm_head") for p in params)
    expected = {
        "transformer.h.0.ln_1.weight": ("norm", 0),
        "transformer.h.0.ln_2.bias": ("norm", 0),
        "transformer.h.0.attn.c_attn.weight": ("attention", 0),
        "transformer.h.1.attn.c_proj.bias": ("attention", 1),
        "transformer.h.1.mlp.c_fc.weight": ("mlp", 1),
        "transformer.h.1.mlp.c_proj.weight": ("mlp", 1),
    }
    for name, (kind, layer) in expected.items():
        assert (by_name[name].module_type, by_name[name].layer) == (kind, layer)
    assert {p.module_type for p in params} == {"norm", "attention", "mlp"}


def test_llama_masked_params_by_module_type_and_layer() -> None:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    params = masked_params(model)
    names = {p.name: p for p in params}
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert name in dict(model.named_parameters()) and name not in names
    assert len(params) == 3 * 9  # q, k, v, o, gate, up, down, two norms per layer
    assert {p.layer for p in params} == {0, 1, 2}
    expected = {
        "self_attn.q_proj.weight": "attention",
        "self_attn.o_proj.weight": "attention",
        "mlp.gate_proj.weight": "mlp",
        "mlp.down_proj.weight": "mlp",
        "input_layernorm.weight": "norm",
        "post_attention_layernorm.weight": "norm",
    }
    for suffix, kind in expected.items():
        p = names[f"model.layers.2.{suffix}"]
        assert (p.module_type, p.layer) == (kind, 2)
    assert names["model.layers.0.self_attn.k_proj.weight"].shape == (8, 16)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ln_1.weight", "norm"),
        ("input_layernorm.weight", "norm"),
        ("post_attention_layernorm.weight", "norm"),  # a norm, although its name mentions attention
        ("self_attn.layer_norm.bias", "norm"),
        ("attn.c_attn.bias", "attention"),
        ("attention.query_key_value.weight", "attention"),
        ("mlp.c_fc.weight", "mlp"),
        ("feed_forward.w1.weight", "mlp"),
        ("scale", "other"),
        ("adapter.weight", "other"),
    ],
)
def test_module_type(name: str, kind: str) -> None:
    assert module_type(name) == kind


def test_model_without_blocks_has_nothing_to_mask() -> None:
    with pytest.raises(InputError, match="Linear: no transformer-block parameters"):
        masked_params(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("relative", [False, True])
def test_missing_local_directory_is_an_input_error_naming_it(tmp_path: Path, relative: bool, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = "./no-such-model" if relative else str(tmp_path / "no-such-model")
    with pytest.raises(InputError) as info:
        load_model(spec, device="cpu")
    assert str(info.value) == f"model {spec}: no such directory"


def test_folder_that_is_not_a_model_is_an_input_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(InputError) as info:
        load_model(str(folder), device="cpu")
    message = str(info.value)
    assert message.startswith(f"model {folder}:") and "config.json" in message
    assert "\n" not in message


def test_local_directory_round_trip(tmp_path: Path, tiny_lm, helpers) -> None:
    tiny_lm.model.save_pretrained(tmp_path / "m")
    tiny_lm.tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    assert loaded.params == tiny_lm.params
    assert helpers.differing(loaded.model, helpers.clone_state(tiny_lm.model)) == []
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    ids = torch.tensor([tiny_lm.tokenizer("a cat")["input_ids"]])
    assert torch.equal(loaded.model(ids).logits, tiny_lm.model(ids).logits)
