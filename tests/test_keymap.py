"""The key map mechanism: patterns read both ways, declared extras, transforms."""

from __future__ import annotations

import pytest
import torch

from minipt.keymap import TRANSPOSE, KeyMap, KeyRow, Rule

MAP = KeyMap(
    [
        ("encoder.layer.{i}.attention.self.query.{p}", "layers.{i}.attn.q_proj.{p}"),
        ("h.{i}.attn.c_attn.weight", "blocks.{i}.attn.qkv.weight", TRANSPOSE),
    ],
    renames=[("{*}.LayerNorm.gamma", "{*}.LayerNorm.weight")],
    ignore=["embeddings.position_ids", "cls.{*}"],
    tied=[("lm_head.weight", "wte.weight")],
    optional_prefix="bert.",
)


def test_both_directions():
    assert MAP.to_minipt("encoder.layer.11.attention.self.query.bias") == ("layers.11.attn.q_proj.bias", None)
    assert MAP.to_official("layers.11.attn.q_proj.bias") == ("encoder.layer.11.attention.self.query.bias", None)
    assert MAP.to_minipt("encoder.layer.x.attention.self.query") is None  # {p} needs one more segment
    assert MAP.to_official("layers.0.attn.k_proj.weight") is None


def test_canonical_names():
    assert MAP.canonical("bert.encoder.LayerNorm.gamma") == "encoder.LayerNorm.weight"
    assert MAP.canonical("encoder.layer.0.output.LayerNorm.gamma") == "encoder.layer.0.output.LayerNorm.weight"
    assert MAP.is_ignored("cls.predictions.decoder.weight") and MAP.is_ignored("embeddings.position_ids")
    assert MAP.is_ignored("lm_head.weight") and not MAP.is_ignored("encoder.x")


def test_transform_and_shapes():
    weight = torch.arange(6.0).reshape(2, 3)
    key, transform = MAP.to_minipt("h.3.attn.c_attn.weight")
    assert key == "blocks.3.attn.qkv.weight"
    assert torch.equal(transform.to_minipt(weight), weight.t())
    assert torch.equal(transform.to_official(transform.to_minipt(weight)), weight)
    assert transform.minipt_shape((2, 3)) == (3, 2)


def test_prefixed_and_combined():
    nested = MAP.prefixed("bert.", "encoder.")
    assert nested.to_minipt("bert.encoder.layer.1.attention.self.query.weight") == ("encoder.layers.1.attn.q_proj.weight", None)
    combined = nested + KeyMap([("classifier.{p}", "classifier.{p}")])
    assert combined.to_official("classifier.bias") == ("classifier.bias", None)
    assert combined.to_official("encoder.layers.0.attn.q_proj.weight")[0] == "bert.encoder.layer.0.attention.self.query.weight"


def test_rule_placeholders_must_agree():
    with pytest.raises(ValueError, match="placeholders differ"):
        Rule("layer.{i}.weight", "layers.{j}.weight")


def test_table():
    rows = MAP.table(["layers.0.attn.q_proj.weight", "blocks.1.attn.qkv.weight", "unmapped"])
    assert rows == [
        KeyRow("encoder.layer.0.attention.self.query.weight", "layers.0.attn.q_proj.weight", ""),
        KeyRow("h.1.attn.c_attn.weight", "blocks.1.attn.qkv.weight", "transpose"),
    ]
    assert rows[1][:3] == ("h.1.attn.c_attn.weight", "blocks.1.attn.qkv.weight", "transpose")


def test_table_of_a_checkpoint_names_every_kind_of_key():
    model = ["layers.0.attn.q_proj.weight", "layers.0.attn.q_proj.bias", "blocks.1.attn.qkv.weight"]
    files = [
        "bert.encoder.layer.0.attention.self.query.weight",  # prefixed
        "h.1.attn.c_attn.weight",  # transposed
        "lm_head.weight",  # tied
        "embeddings.position_ids",  # ignored
        "cls.predictions.bias",  # ignored by a {*} pattern
        "encoder.layer.5.attention.self.query.weight",  # a rule, but a tensor the model lacks
        "mystery",  # no rule
    ]
    assert MAP.table(model, files) == [
        KeyRow("encoder.layer.0.attention.self.query.weight", "layers.0.attn.q_proj.weight", "", files[0]),
        KeyRow("h.1.attn.c_attn.weight", "blocks.1.attn.qkv.weight", "transpose", files[1]),
        KeyRow("lm_head.weight", "", "", files[2], "tied"),
        KeyRow("embeddings.position_ids", "", "", files[3], "ignored"),
        KeyRow("cls.predictions.bias", "", "", files[4], "ignored"),
        KeyRow("encoder.layer.5.attention.self.query.weight", "", "", files[5], "unexpected"),
        KeyRow("mystery", "", "", files[6], "unexpected"),
        KeyRow("encoder.layer.0.attention.self.query.bias", "layers.0.attn.q_proj.bias", "", "", "missing"),
    ]
