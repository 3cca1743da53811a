"""The key map mechanism: patterns read both ways, declared extras, transforms, splits."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from minipt.checkpoint import Checkpoint, load_weights, official_state_dict
from minipt.errors import KeyMismatchError
from minipt.keymap import TRANSPOSE, KeyMap, KeyRow, Rule, Split

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


# -- a Split: one official tensor holding several of minipt's, joined along a dimension ----------------
QKV = ("layers.{i}.attn.q_proj.{p}", "layers.{i}.attn.k_proj.{p}", "layers.{i}.attn.v_proj.{p}")
SPLIT_MAP = KeyMap([("blocks.{i}.in_proj_{p}", QKV, Split(dim=0)), ("blocks.{i}.out_proj.{p}", "layers.{i}.attn.out_proj.{p}")])


class Attention(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (torch.nn.Linear(width, width) for _ in range(4))


class Layers(torch.nn.Module):
    def __init__(self, depth=2):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.ModuleDict({"attn": Attention()}) for _ in range(depth))


def official_file(tmp_path, **shapes):
    """A two-block official checkpoint (in_proj (12, 4) and (12,)); ``shapes`` replaces some tensors' shapes."""
    generator = torch.Generator().manual_seed(0)
    sizes = {f"blocks.{i}.{name}": shape for i in range(2) for name, shape in
             (("in_proj_weight", (12, 4)), ("in_proj_bias", (12,)), ("out_proj.weight", (4, 4)), ("out_proj.bias", (4,)))}
    state = {key: torch.randn(shapes.get(key, shape), generator=generator) for key, shape in sizes.items()}
    save_file(state, tmp_path / "model.safetensors")
    return state


def test_split_both_directions():
    parts = ("layers.3.attn.q_proj.weight", "layers.3.attn.k_proj.weight", "layers.3.attn.v_proj.weight")
    assert SPLIT_MAP.to_minipt("blocks.3.in_proj_weight") == (parts, Split(0))
    assert all(SPLIT_MAP.to_official(part) == ("blocks.3.in_proj_weight", Split(0)) for part in parts)
    assert SPLIT_MAP.minipt_shapes("blocks.3.in_proj_weight", (12, 4)) == dict.fromkeys(parts, (4, 4))
    assert SPLIT_MAP.minipt_shapes("blocks.3.in_proj_weight", (11, 4)) == dict.fromkeys(parts, None)  # does not split evenly
    assert SPLIT_MAP.official_shape(parts[1], (4, 4)) == (12, 4)
    columns, weight = Split(dim=1), torch.arange(24.0).reshape(2, 12)
    assert columns.part_shape((2, 12), 3) == (2, 4) and columns.whole_shape((2, 4), 3) == (2, 12)
    assert torch.equal(columns.parts(weight, 3)[1], weight[:, 4:8]) and torch.equal(columns.join(columns.parts(weight, 3)), weight)
    nested = SPLIT_MAP.prefixed("encoder.", "vit.")
    assert nested.to_minipt("encoder.blocks.0.in_proj_bias")[0] == tuple("vit." + p.format(i=0, p="bias") for p in QKV)
    assert nested.to_official("vit.layers.0.attn.v_proj.bias") == ("encoder.blocks.0.in_proj_bias", Split(0))
    with pytest.raises(ValueError, match="only a Split"):
        Rule("blocks.{i}.in_proj_{p}", QKV)  # several names, nothing says how they join
    with pytest.raises(ValueError, match="only a Split"):
        Rule("blocks.{i}.in_proj_{p}", "layers.{i}.attn.q_proj.{p}", Split(0))
    with pytest.raises(ValueError, match="placeholders differ"):
        Rule("blocks.{i}.in_proj_{p}", (QKV[0], "layers.{j}.attn.k_proj.{p}"), Split(0))
    with pytest.raises(ValueError, match=r"Split\(dim=-1\): dim counts from the first dimension"):
        Split(dim=-1)


def test_split_table():
    model = list(Layers(depth=1).state_dict())
    assert SPLIT_MAP.table(model)[:3] == [
        KeyRow("blocks.0.in_proj_weight", "layers.0.attn.q_proj.weight", "split 1/3 along dim 0"),
        KeyRow("blocks.0.in_proj_bias", "layers.0.attn.q_proj.bias", "split 1/3 along dim 0"),
        KeyRow("blocks.0.in_proj_weight", "layers.0.attn.k_proj.weight", "split 2/3 along dim 0"),
    ]
    files = ["blocks.0.in_proj_weight", "blocks.1.in_proj_weight", "blocks.0.out_proj.weight", "blocks.0.out_proj.bias"]
    rows = SPLIT_MAP.table(model, files)
    assert rows[:4] == [KeyRow("blocks.0.in_proj_weight", f"layers.0.attn.{part}_proj.weight", f"split {n}/3 along dim 0", files[0])
                        for n, part in ((1, "q"), (2, "k"), (3, "v"))] + [KeyRow("blocks.1.in_proj_weight", "", "", files[1], "unexpected")]
    assert [row for row in rows if row.status == "missing"] == [
        KeyRow("blocks.0.in_proj_bias", f"layers.0.attn.{part}_proj.bias", f"split {n}/3 along dim 0", "", "missing") for n, part in ((1, "q"), (2, "k"), (3, "v"))
    ]


@pytest.mark.parametrize("mmap", [False, True])
def test_split_round_trip(tmp_path, mmap):
    """Loading cuts each in_proj into q, k and v; saving joins them back into the very same tensors."""
    official = official_file(tmp_path)
    with torch.device("meta"):
        model = Layers()
    with Checkpoint(tmp_path, mmap=mmap) as checkpoint:
        load_weights(model, checkpoint, SPLIT_MAP)
    attn = model.layers[1]["attn"]
    for index, part in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
        assert torch.equal(part.weight, official["blocks.1.in_proj_weight"][4 * index : 4 * (index + 1)])
        assert torch.equal(part.bias, official["blocks.1.in_proj_bias"][4 * index : 4 * (index + 1)])
    storages = {part.weight.untyped_storage().data_ptr() for part in (attn.q_proj, attn.k_proj, attn.v_proj)}
    assert len(storages) == (1 if mmap else 3)  # views of the mapped file, or each part its own memory
    saved = official_state_dict(model, SPLIT_MAP)
    assert saved.keys() == official.keys() and all(torch.equal(saved[key], official[key]) for key in official)


def test_split_of_the_wrong_size_is_refused(tmp_path):
    official_file(tmp_path, **{"blocks.0.in_proj_weight": (11, 4), "blocks.1.in_proj_weight": (15, 4)})
    with torch.device("meta"):
        model = Layers()
    with pytest.raises(KeyMismatchError) as caught:
        load_weights(model, Checkpoint(tmp_path), SPLIT_MAP)
    message = str(caught.value)
    assert "wrong shape (2):" in message  # one line per official tensor, not per part
    assert "blocks.0.in_proj_weight: checkpoint has (11, 4), Layers expects (12, 4)" in message
    assert "blocks.1.in_proj_weight: checkpoint has (15, 4), Layers expects (12, 4)" in message


def test_split_missing_and_partial_models(tmp_path):
    official = official_file(tmp_path)
    del official["blocks.1.in_proj_bias"]
    save_file(official, tmp_path / "model.safetensors")
    with torch.device("meta"):
        model = Layers()
    with pytest.raises(KeyMismatchError, match=r"missing \(1\):\n    blocks.1.in_proj_bias \(12,\)"):
        load_weights(model, Checkpoint(tmp_path), SPLIT_MAP)
    del model.layers[0]["attn"].k_proj
    with pytest.raises(KeyMismatchError, match=r"layers.0.attn.q_proj.weight is a part of blocks.0.in_proj_weight, .* Layers has no layers.0.attn.k_proj.weight"):
        official_state_dict(model, SPLIT_MAP)


def test_a_tensor_written_twice():
    """written_twice: a second official name of one tensor, written on save (transformers expects it) and, on load,
    accepted as a repeat that loads nothing; kept through prefixed() and +."""
    km = KeyMap([("head.decoder.bias", "decoder.bias")], written_twice=[("head.bias", "head.decoder.bias")]).prefixed("lm.", "")
    km = km + KeyMap([("other", "other")])
    bias = torch.arange(3.0)
    state = km.official_tensors({"decoder.bias": bias, "other": bias}, "Model")
    assert set(state) == {"lm.head.decoder.bias", "lm.head.bias", "other"} and torch.equal(state["lm.head.bias"], bias)
    assert km.to_minipt("lm.head.bias") is None and km.is_ignored("lm.head.bias")  # read as a repeat, not a second source
