"""minipt's ALBERT against transformers' on the same weights, and what sharing layers across depth means in minipt.

Tolerance: minipt's ``torch`` backend runs torch's kernels as transformers does; asked for attention
maps, attention runs written out as transformers' eager attention does: max abs difference <= 1e-5
(tests/helpers.py). No ALBERT weights are available offline (../shared/DATA.md): transformers builds
every checkpoint here with random weights, under the official names and shapes.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bert_reference import randomize, transformers
from helpers import ATOL, max_diff
from minipt import registry, transfer
from minipt.errors import ConfigError, InputError, KeyMismatchError
from minipt.models.albert import AlbertConfig, AlbertForMaskedLM, AlbertForSequenceClassification, AlbertModel
from minipt.models.bert import BertModel
from minipt.nn import EncoderLayer, use_backend
from minipt.probe import capture
from minipt.reference import layer_diffs

CLASSES = {cls.__name__: cls for cls in (AlbertModel, AlbertForMaskedLM, AlbertForSequenceClassification)}


def hf_config(**overrides):
    values = dict(
        vocab_size=99, embedding_size=8, hidden_size=32, num_hidden_layers=4, num_hidden_groups=2, inner_group_num=1,
        num_attention_heads=4, intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu_new",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0, num_labels=3, attn_implementation="eager",
    )
    values.update(overrides)
    return transformers.AlbertConfig(**values)


def reference_model(cls_name: str, config, seed: int = 0):
    """transformers' model with every parameter random (scales near 1, the rest near 0), eager attention, eval mode."""
    torch.manual_seed(seed)
    model = randomize(getattr(transformers, cls_name)(config), seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("full_layer_layer_norm.weight"):  # randomize centres only names ending in LayerNorm.weight on 1
                param.add_(1.0)
    return model.eval()


def saved(cls_name: str, config, path, seed: int = 0):
    model = reference_model(cls_name, config, seed)
    model.save_pretrained(path)
    return model


def batch_of(config, batch=3, length=9, pad=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    if pad:
        for row in range(1, batch):  # every row but the first ends in padding of another length
            attention_mask[row, max(1, length - 2 * row) :] = 0
    token_type_ids = torch.zeros(batch, length, dtype=torch.long)
    token_type_ids[:, length // 2 :] = config.type_vocab_size - 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def outputs(out, attentions=True) -> dict:
    """Every tensor a model call returns, by name."""
    named = {f"hidden_states[{i}]": h for i, h in enumerate(out.hidden_states)}
    if attentions:
        named.update({f"attentions[{i}]": a for i, a in enumerate(out.attentions)})
    for field in ("last_hidden_state", "pooler_output", "logits"):
        if getattr(out, field, None) is not None:
            named[field] = getattr(out, field)
    return named


def assert_same_outputs(ours, theirs, batch):
    with torch.no_grad(), use_backend("torch"):
        got = outputs(ours(**batch, output_hidden_states=True, output_attentions=True))
        expected = outputs(theirs(**batch, output_hidden_states=True, output_attentions=True))
    assert got.keys() == expected.keys()
    for name in expected:
        assert max_diff(got[name], expected[name]) <= ATOL, name
    return got, expected


# -- parity on random configurations, built and saved by transformers ------------------------------
@st.composite
def albert_configs(draw):
    heads = draw(st.integers(1, 4))
    groups = draw(st.integers(1, 3))
    return hf_config(
        embedding_size=draw(st.integers(2, 24)),
        hidden_size=heads * draw(st.integers(2, 8)),
        num_attention_heads=heads,
        num_hidden_groups=groups,
        num_hidden_layers=groups * draw(st.integers(1, 3)),
        inner_group_num=draw(st.integers(1, 2)),
        intermediate_size=draw(st.integers(4, 40)),
        hidden_act=draw(st.sampled_from(["gelu_new", "gelu", "relu"])),
        vocab_size=draw(st.integers(5, 120)),
        type_vocab_size=draw(st.integers(1, 3)),
        layer_norm_eps=draw(st.sampled_from([1e-12, 1e-5])),
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=albert_configs(), cls_name=st.sampled_from(sorted(CLASSES)), length=st.integers(1, 12), pad=st.booleans(), seed=st.integers(0, 2**16))
def test_random_configs_match_transformers(tmp_path_factory, config, cls_name, length, pad, seed):
    """Every hidden state (one per layer call), every attention map, the pooled output and the logits."""
    path = tmp_path_factory.mktemp("albert")
    reference = saved(cls_name, config, path, seed)
    ours = CLASSES[cls_name].from_pretrained(path)
    batch = batch_of(config, 3, length, pad=pad, seed=seed)
    got, _ = assert_same_outputs(ours, reference, batch)
    calls = config.num_hidden_layers * config.inner_group_num
    assert len([n for n in got if n.startswith("hidden_states")]) == calls + 1
    assert len([n for n in got if n.startswith("attentions")]) == calls
    if cls_name == "AlbertForMaskedLM":  # greedy fill-in: the same token at every position
        with torch.no_grad():
            assert torch.equal(ours(**batch).logits.argmax(-1), reference(**batch).logits.argmax(-1))


def test_groups_run_as_transformers_runs_them(tmp_path):
    """6 layers over 3 groups of 2 layers each: 12 layer calls, group g at layers 2g and 2g + 1."""
    config = hf_config(num_hidden_layers=6, num_hidden_groups=3, inner_group_num=2)
    reference = saved("AlbertModel", config, tmp_path)
    ours = AlbertModel.from_pretrained(tmp_path)
    assert ours.config.layer_steps == [(g, j) for g in range(3) for _ in range(2) for j in range(2)]
    assert_same_outputs(ours, reference, batch_of(config))


def test_masked_lm_fill_in_and_loss(tmp_path):
    config = hf_config()
    reference = saved("AlbertForMaskedLM", config, tmp_path)
    ours = AlbertForMaskedLM.from_pretrained(tmp_path)
    batch = batch_of(config, pad=False)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 3] = batch["input_ids"][:, 3]
    masked = {**batch, "input_ids": batch["input_ids"].clone()}
    masked["input_ids"][:, 3] = 4  # some token standing in for [MASK]
    with torch.no_grad():
        a, b = ours(**masked, labels=labels), reference(**masked, labels=labels)
    assert torch.equal(a.logits[:, 3].argmax(-1), b.logits[:, 3].argmax(-1))
    assert abs(a.loss.item() - b.loss.item()) <= ATOL


@pytest.mark.parametrize("problem_type, labels", [
    (None, torch.tensor([0, 2, 1])),
    ("multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])),
    ("regression", torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, 1.0], [3.0, 0.5, 0.0]])),
])
def test_classification_losses(tmp_path, problem_type, labels):
    config = hf_config(problem_type=problem_type)
    reference = saved("AlbertForSequenceClassification", config, tmp_path)
    ours = AlbertForSequenceClassification.from_pretrained(tmp_path)
    batch = batch_of(config)
    with torch.no_grad():
        a, b = ours(**batch, labels=labels), reference(**batch, labels=labels)
    assert max_diff(a.logits, b.logits) <= ATOL and abs(a.loss.item() - b.loss.item()) <= ATOL


# -- the official format, both ways ----------------------------------------------------------
@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_save_pretrained_loads_strictly_in_transformers(tmp_path, cls_name):
    config = hf_config()
    original = saved(cls_name, config, tmp_path / "official")
    CLASSES[cls_name].from_pretrained(tmp_path / "official").save_pretrained(tmp_path / "minipt")
    reloaded, info = getattr(transformers, cls_name).from_pretrained(str(tmp_path / "minipt"), output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    expected = original.state_dict()
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert_same_outputs(CLASSES[cls_name].from_pretrained(tmp_path / "minipt"), reloaded.eval(), batch_of(config))


@pytest.mark.parametrize("saved_as, loaded_as", [
    ("AlbertModel", "AlbertForSequenceClassification"),  # a bare encoder (no albert. prefix) under a new head
    ("AlbertModel", "AlbertForMaskedLM"),
    ("AlbertForMaskedLM", "AlbertModel"),  # albert. prefix, no pooler: the bare model has none either
    ("AlbertForSequenceClassification", "AlbertModel"),
    ("AlbertForPreTraining", "AlbertForSequenceClassification"),  # masked-LM and sentence-order heads ignored
])
def test_other_classes_checkpoints_load_the_encoder(tmp_path, saved_as, loaded_as):
    config = hf_config()
    reference = saved(saved_as, config, tmp_path)
    new_head = {"AlbertForSequenceClassification": ("classifier",), "AlbertForMaskedLM": ("head",)}.get(loaded_as, ())
    ours = CLASSES[loaded_as].from_pretrained(tmp_path, init_missing=new_head)
    encoder = ours if loaded_as == "AlbertModel" else ours.albert
    assert (encoder.pooler is None) == ("AlbertForMaskedLM" in (saved_as, loaded_as))  # transformers' masked-LM model has none
    batch = batch_of(config)
    with torch.no_grad():
        expected = (reference if saved_as == "AlbertModel" else reference.albert)(**batch).last_hidden_state
        assert max_diff(encoder(**batch).last_hidden_state, expected) <= ATOL


def test_an_older_file_with_legacy_names_and_repeated_tensors(tmp_path):
    """pytorch_model.bin as older transformers wrote it: the tied decoder repeated, position_ids, gamma/beta names."""
    config = hf_config()
    reference = reference_model("AlbertForMaskedLM", config)
    state = dict(reference.state_dict())
    assert "predictions.decoder.weight" in state and "predictions.decoder.bias" in state  # the tied copies
    state["albert.embeddings.position_ids"] = torch.arange(config.max_position_embeddings)[None]
    for key in [k for k in state if "LayerNorm" in k or "layer_norm" in k]:
        state[key.replace(".weight", ".gamma").replace(".bias", ".beta")] = state.pop(key)
    torch.save(state, tmp_path / "pytorch_model.bin")
    config.save_pretrained(tmp_path)
    ours = AlbertForMaskedLM.from_pretrained(tmp_path)
    assert ours.head.decoder.weight is ours.albert.embeddings.token.weight
    assert_same_outputs(ours, reference, batch_of(config))


def test_an_untied_decoder(tmp_path):
    """tie_word_embeddings=false: the decoder keeps its own weight and bias; transformers' predictions.bias is unused."""
    config = hf_config(tie_word_embeddings=False)
    reference = saved("AlbertForMaskedLM", config, tmp_path / "official")
    ours = AlbertForMaskedLM.from_pretrained(tmp_path / "official")
    assert ours.head.decoder.weight is not ours.albert.embeddings.token.weight
    assert_same_outputs(ours, reference, batch_of(config))
    ours.save_pretrained(tmp_path / "minipt")
    reloaded, info = transformers.AlbertForMaskedLM.from_pretrained(str(tmp_path / "minipt"), output_loading_info=True, attn_implementation="eager")
    # transformers loads strictly: minipt writes the decoder's own bias, and a copy as the unused predictions.bias it expects
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert_same_outputs(ours, reloaded.eval(), batch_of(config))
    with torch.no_grad():  # the unused bias of a fine-tuned file differs from the decoder's: minipt reads the decoder's
        reference.predictions.bias.fill_(5.0)
    reference.save_pretrained(tmp_path / "trained")
    assert_same_outputs(AlbertForMaskedLM.from_pretrained(tmp_path / "trained"), reference, batch_of(config))


def test_the_generic_entry_point_picks_the_class():
    assert registry.model_class({"model_type": "albert"}) is AlbertModel
    for cls in CLASSES.values():
        assert registry.model_class({"model_type": "albert", "architectures": [cls.__name__]}) is cls


# -- one module per shared layer, run at every depth ----------------------------------------------
def tiny(cls=AlbertModel, **fields):
    family = registry.family_of(cls)
    return cls(family.tiny().replace(**fields)).eval(), family.inputs(cls)


def test_a_shared_layer_is_one_module_run_at_every_depth():
    model, (args, kwargs) = tiny(num_hidden_layers=6, num_hidden_groups=2, inner_group_num=2, backend="math")  # math: attention maps written out
    layers = {name: m for name, m in model.named_modules() if isinstance(m, EncoderLayer)}
    assert sorted(layers) == ["encoder.groups.0.0", "encoder.groups.0.1", "encoder.groups.1.0", "encoder.groups.1.1"]
    calls = []
    for name, layer in layers.items():
        layer.register_forward_hook(lambda module, inputs, output, name=name: calls.append(name))
    with torch.no_grad(), capture(model, "encoder.groups.0.1.attn.probs", "encoder.depth.*.out") as seen:
        out = model(*args, **kwargs, output_hidden_states=True, output_attentions=True)
    assert calls == ["encoder.groups.0.0", "encoder.groups.0.1"] * 3 + ["encoder.groups.1.0", "encoder.groups.1.1"] * 3
    probs = seen.history("encoder.groups.0.1.attn.probs")  # one value per call of the shared layer
    assert len(probs) == 3 and all(torch.equal(p, out.attentions[s]) for p, s in zip(probs, (1, 3, 5)))
    assert len(out.hidden_states) == 13 and len(out.attentions) == 12
    for step in range(12):
        assert torch.equal(seen[f"encoder.depth.{step}.out"], out.hidden_states[step + 1])


def test_an_edit_at_one_depth_flows_on():
    model, (args, kwargs) = tiny()
    with torch.no_grad():
        clean = model(*args, **kwargs, output_hidden_states=True)
        with capture(model, edit={"encoder.depth.1.out": torch.zeros_like}):
            edited = model(*args, **kwargs, output_hidden_states=True)
    assert torch.equal(edited.hidden_states[1], clean.hidden_states[1]) and torch.equal(edited.hidden_states[2], torch.zeros_like(clean.hidden_states[2]))
    assert not torch.equal(edited.last_hidden_state, clean.last_hidden_state)


def test_freezing_a_group_freezes_it_at_every_depth():
    model, (args, kwargs) = tiny(AlbertForSequenceClassification)
    assert transfer.stages(model) == ["embeddings", "groups.0", "groups.1", "pooler", "head"]
    rows = {row.stage: row for row in transfer.stage_table(model)}
    assert rows["groups.0"].trainable == sum(p.numel() for p in model.albert.encoder.groups[0].parameters())
    assert rows["embeddings"].trainable == sum(p.numel() for p in [*model.albert.embeddings.parameters(), *model.albert.encoder.mapping_in.parameters()])
    transfer.freeze(model, "groups.0")
    model.train()
    model(*args, **kwargs).logits.sum().backward()
    assert all(p.grad is None for p in model.albert.encoder.groups[0].parameters())  # used at depths 0 and 1, trained at neither
    assert all(p.grad is not None for p in model.albert.encoder.groups[1].parameters())
    assert not model.albert.encoder.groups[0].training and model.albert.encoder.groups[1].training


def test_the_masked_lm_decoder_is_the_token_embedding():
    model, _ = tiny(AlbertForMaskedLM)
    assert model.head.decoder.weight is model.albert.embeddings.token.weight
    assert model.albert.pooler is None and "pooler" not in transfer.stages(model)
    assert model.head.decoder.weight.shape == (50, 8)  # vocabulary x embedding_size


# -- the per-layer diff --------------------------------------------------------------------------
def test_layer_diffs_names_each_layer_call(tmp_path):
    config = hf_config(num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2)
    saved("AlbertForSequenceClassification", config, tmp_path)
    model = AlbertForSequenceClassification.from_pretrained(tmp_path)
    batch = batch_of(config)
    report = layer_diffs(model, tmp_path, batch)
    assert report.first_divergence is None, str(report)
    names = [row.name for row in report.rows]
    depth = [name for name in names if ".depth." in name]
    assert depth == [f"albert.encoder.depth.{s}.out" for s in range(8)]
    # a shared layer's inside is compared at its last call: groups.0.1 runs at steps 1 and 3
    assert names.index("albert.encoder.depth.2.out") < names.index("albert.encoder.groups.0.1.attn.probs") < names.index("albert.encoder.depth.3.out")
    assert names[:2] == ["albert.embeddings.out", "albert.encoder.mapping_in.out"] and names[-2:] == ["albert.pooler.out", "classifier.out"]
    row = report.rows[names.index("albert.encoder.depth.7.out")]
    assert row.reference == "albert.encoder.albert_layer_groups.1.albert_layers.1 at call 2 (hidden_states[8])"

    planted = copy.deepcopy(model)
    planted.albert.encoder.groups[1][0].attn_norm.eps = 1e-1  # group 1 first runs at step 4 (layer 2, inner 0)
    report = layer_diffs(planted, tmp_path, batch)
    assert report.first_divergence.name == "albert.encoder.depth.4.out", str(report)
    assert "first divergence (transformers: albert.encoder.albert_layer_groups.1.albert_layers.0 at call 1" in str(report)


# -- bad input ------------------------------------------------------------------------------------
def test_groups_that_do_not_divide_the_layers_are_refused(tmp_path):
    """transformers accepts 5 layers over 2 groups and runs group int(i / (5 / 2)) at layer i; the original
    TensorFlow code computes int(i / L * G), and the two disagree on such configs (18 layers, 14 groups:
    layer 9 runs group 6 in one, 7 in the other). minipt refuses them rather than pick a rounding."""
    with pytest.raises(ConfigError, match=r"num_hidden_groups = 2: expected a divisor of num_hidden_layers 5"):
        AlbertConfig(num_hidden_layers=5, num_hidden_groups=2)
    with pytest.raises(ConfigError, match=r"num_hidden_groups = 4: expected a divisor of num_hidden_layers 2"):
        AlbertConfig(num_hidden_layers=2, num_hidden_groups=4)  # groups that no layer would run
    saved("AlbertModel", hf_config(num_hidden_layers=5, num_hidden_groups=2), tmp_path)  # transformers builds it
    with pytest.raises(ConfigError, match=r"config.json: num_hidden_groups = 2: expected a divisor of num_hidden_layers 5"):
        AlbertModel.from_pretrained(tmp_path)


OTHER_ENCODERS = {  # model_type -> a small transformers model of that family
    "bert": lambda: transformers.BertModel(transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24)),
    "roberta": lambda: transformers.RobertaModel(transformers.RobertaConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24)),
    "distilbert": lambda: transformers.DistilBertModel(transformers.DistilBertConfig(vocab_size=60, dim=16, n_layers=2, n_heads=2, hidden_dim=24)),
}


@pytest.mark.parametrize("model_type", sorted(OTHER_ENCODERS))
def test_checkpoints_of_the_other_encoder_families_are_refused(tmp_path, model_type):
    OTHER_ENCODERS[model_type]().save_pretrained(tmp_path)
    for cls in CLASSES.values():
        with pytest.raises(ConfigError, match=rf"describes a {model_type!r} model, not 'albert'"):
            cls.from_pretrained(tmp_path)
    # the same tensors under a config that claims ALBERT: refused from the names and shapes, before any module is built
    written = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**written, "model_type": "albert", "architectures": ["AlbertModel"]}))
    with pytest.raises(ConfigError, match=r"does not match the checkpoint .*num_hidden_groups = 1, but the checkpoint holds 0"):
        AlbertModel.from_pretrained(tmp_path)


def test_an_albert_checkpoint_given_to_bert_names_the_class(tmp_path):
    saved("AlbertModel", hf_config(), tmp_path)
    with pytest.raises(ConfigError, match=r"describes a 'albert' model, not 'bert': load it with minipt.models.albert.AlbertModel"):
        BertModel.from_pretrained(tmp_path)


def test_a_config_that_contradicts_the_tensors_is_refused_before_building(tmp_path, monkeypatch):
    saved("AlbertModel", hf_config(num_hidden_groups=2, inner_group_num=2), tmp_path)
    built = []
    monkeypatch.setattr(AlbertModel, "__init__", lambda self, config, add_pooling_layer=None: built.append(config) or torch.nn.Module.__init__(self))
    for field, value, message in (
        ("embedding_size", 16, r"embedding_size = 16, but embeddings.word_embeddings.weight has shape \(99, 8\)"),
        ("hidden_size", 64, r"hidden_size = 64, but encoder.embedding_hidden_mapping_in.weight has shape \(32, 8\)"),
        ("num_hidden_groups", 4, r"num_hidden_groups = 4, but the checkpoint holds 2 \(such as encoder.albert_layer_groups.0"),
        ("inner_group_num", 1, r"inner_group_num = 1, but the checkpoint holds 2"),
        ("intermediate_size", 38, r"intermediate_size = 38, but encoder.albert_layer_groups.0.albert_layers.0.ffn.weight has shape \(37, 32\)"),
    ):
        written = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps({**written, field: value}))
        with pytest.raises(ConfigError, match=message):
            AlbertModel.from_pretrained(tmp_path)
        (tmp_path / "config.json").write_text(json.dumps(written))
    assert built == []


@pytest.mark.parametrize("field, value, message", [
    ("num_hidden_layers", 10**12, r"num_hidden_layers = 1000000000000: expected at most 1000"),  # the file does not bound the depth
    ("position_embedding_type", "relative_key", r"position_embedding_type = 'relative_key': only 'absolute' positions"),
    ("hidden_act", "mish", r"hidden_act = 'mish': expected one of 'gelu'"),
    ("num_attention_heads", 5, r"num_attention_heads = 5: expected a divisor of hidden_size 32"),
])
def test_config_values_are_checked_and_named(tmp_path, field, value, message):
    saved("AlbertModel", hf_config(), tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**written, field: value}))
    with pytest.raises(ConfigError, match=message):
        AlbertModel.from_pretrained(tmp_path)


def test_inputs_are_checked_and_named():
    model, ((ids, mask), _) = tiny(AlbertForSequenceClassification)
    for bad, message in (
        ((ids.masked_fill(ids == ids.max(), 50), mask), r"input_ids holds 50, outside the table of 50 entries \(valid: 0..49\)"),
        ((ids - ids.max() - 1, mask), r"input_ids holds -\d+, outside the table of 50 entries"),
        ((torch.zeros(1, 21, dtype=torch.long),), r"sequence length 21 exceeds the position table \(20 positions\)"),
        ((ids, mask, torch.full_like(ids, 2)), r"token_type_ids holds 2, outside the table of 2 entries"),
        ((ids, mask[:, :3]), r"attention_mask has shape \(2, 3\), input_ids \(2, 5\)"),
    ):
        with pytest.raises(InputError, match=message):
            model(*bad)
    with pytest.raises(InputError, match=r"labels must hold one entry per sequence \(2 for input_ids \(2, 5\)\), got \(3,\)"):
        model(ids, mask, labels=torch.tensor([0, 1, 0]))
    masked_lm, _ = tiny(AlbertForMaskedLM)
    with pytest.raises(InputError, match=r"labels must have the shape of input_ids \(2, 5\) .*got \(2, 4\)"):
        masked_lm(ids, mask, labels=ids[:, :4])


def test_the_classifier_on_a_file_without_a_pooler(tmp_path):
    """transformers' masked-LM model has no pooler; the classifier reads one: it is named missing, with the
    init_missing that starts it afresh (as transformers does, silently)."""
    config = hf_config()
    reference = saved("AlbertForMaskedLM", config, tmp_path)
    with pytest.raises(KeyMismatchError, match=r"(?s)missing \(2\):.*albert\.pooler\.weight.*init_missing=\('classifier', 'albert\.pooler'\)"):
        AlbertForSequenceClassification.from_pretrained(tmp_path, init_missing=("classifier",))
    model = AlbertForSequenceClassification.from_pretrained(tmp_path, init_missing=("classifier", "albert.pooler"))
    batch = batch_of(config)
    with torch.no_grad():
        assert max_diff(model.albert(**batch).last_hidden_state, reference.albert(**batch).last_hidden_state) <= ATOL
        assert model(**batch).logits.shape == (batch["input_ids"].shape[0], config.num_labels)
