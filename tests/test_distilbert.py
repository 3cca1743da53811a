"""minipt's DistilBERT against transformers' on the same weights, its files both ways, and its bad inputs.

Parity: transformers builds random configs (learned and sinusoidal positions, GELU and ReLU) and saves
them; minipt's "torch" backend runs the same kernels as transformers' eager attention (1e-5 absolute
on every hidden state, attention map and logit), its "math" backend writes LayerNorm and GELU out and
is held to an error ratio against a float64 run of the reference (see tests/helpers.py).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from bert_reference import random_batch, randomize, transformers
from transformers.models.distilbert.modeling_distilbert import create_sinusoidal_embeddings
from helpers import ATOL, assert_error_ratio, max_diff
from minipt import registry
from minipt.errors import ConfigError, InputError
from minipt.models.distilbert import DistilBertConfig, DistilBertForMaskedLM, DistilBertForSequenceClassification, DistilBertModel
from minipt.nn import use_backend
from minipt.reference import layer_diffs

CLASSES = (DistilBertModel, DistilBertForMaskedLM, DistilBertForSequenceClassification)
TINY = dict(vocab_size=60, dim=16, n_layers=2, n_heads=2, hidden_dim=24, max_position_embeddings=20)


def hf_config(**overrides):
    values = dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                  seq_classif_dropout=0.0)
    return transformers.DistilBertConfig(**{**values, **overrides})


def reference_model(cls_name: str, config, seed: int = 0):
    """transformers' model with every parameter random (LayerNorm scales near 1); a sinusoidal table stays the fixed one."""
    model = randomize(getattr(transformers, cls_name)(config), seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.add_(1.0)
        if config.sinusoidal_pos_embds:
            table = model.get_position_embeddings().weight
            table.copy_(create_sinusoidal_embeddings(*table.shape, out=torch.empty_like(table)))
    model.set_attn_implementation("eager")
    return model.eval()


def batch_of(config, batch=3, length=11, seed=0):
    """input_ids and attention_mask, rows after the first padded; the first token ([CLS]) is never padding
    (a row of padding only is where minipt and transformers differ on purpose: zero attention, not uniform)."""
    inputs = random_batch(config, batch, length, seed=seed)
    del inputs["token_type_ids"]
    inputs["attention_mask"][:, 0] = 1
    return inputs


def outputs(out) -> list[torch.Tensor]:
    """Every tensor a forward returned with hidden states and attentions asked for."""
    first = [out.logits] if hasattr(out, "logits") else [out.last_hidden_state]
    return [*first, *out.hidden_states, *out.attentions]


# -- parity on random configurations ------------------------------------------------------------
@st.composite
def distilbert_configs(draw):
    heads = draw(st.integers(1, 4))
    return hf_config(
        dim=heads * 2 * draw(st.integers(1, 4)),  # even: the sine/cosine table pairs columns
        n_heads=heads,
        n_layers=draw(st.integers(1, 3)),
        hidden_dim=draw(st.integers(4, 48)),
        activation=draw(st.sampled_from(["gelu", "relu"])),
        sinusoidal_pos_embds=draw(st.booleans()),
        vocab_size=draw(st.integers(5, 200)),
        max_position_embeddings=draw(st.integers(16, 40)),
        num_labels=draw(st.integers(1, 4)),
    )


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=distilbert_configs(), length=st.integers(1, 16), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_random_configs_match_transformers(tmp_path_factory, config, length, batch, seed):
    inputs = batch_of(config, batch, length, seed)
    for cls in (DistilBertForMaskedLM, DistilBertForSequenceClassification):
        path = tmp_path_factory.mktemp(cls.__name__)
        reference = reference_model(cls.__name__, config, seed)
        reference.save_pretrained(path)
        ours = cls.from_pretrained(path)
        with torch.no_grad():
            theirs = reference(**inputs, output_hidden_states=True, output_attentions=True)
            exact = copy.deepcopy(reference).double()(**inputs, output_hidden_states=True, output_attentions=True)
            with use_backend("torch"):
                mine = ours(**inputs, output_hidden_states=True, output_attentions=True)
            with use_backend("math"):
                written_out = ours(**inputs, output_hidden_states=True, output_attentions=True)
        assert len(mine.hidden_states) == config.n_layers + 1 and len(mine.attentions) == config.n_layers
        assert max_diff(outputs(mine), outputs(theirs)) <= ATOL, cls.__name__
        assert_error_ratio(outputs(written_out), outputs(theirs), outputs(exact), what=cls.__name__)
        if cls is DistilBertForMaskedLM:  # greedy fill-in: the same token at every real position; the encoder alone loads from the file
            real = inputs["attention_mask"].bool()
            assert torch.equal(mine.logits.argmax(-1)[real], theirs.logits.argmax(-1)[real])
            with torch.no_grad(), use_backend("torch"):
                mine_bare = DistilBertModel.from_pretrained(path)(**inputs, output_hidden_states=True, output_attentions=True)
                theirs_bare = reference.distilbert(**inputs, output_hidden_states=True, output_attentions=True)
            assert max_diff(outputs(mine_bare), outputs(theirs_bare)) <= ATOL


def test_sinusoidal_table_is_transformers():
    config = hf_config(sinusoidal_pos_embds=True, dim=18, n_heads=3, max_position_embeddings=50)
    ours = DistilBertModel(DistilBertConfig(**{**TINY, "dim": 18, "n_heads": 3, "max_position_embeddings": 50, "sinusoidal_pos_embds": True}))
    theirs = transformers.DistilBertModel(config).embeddings.position_embeddings.weight
    table = ours.embeddings.position.weight.detach()
    torch.testing.assert_close(table, theirs.detach(), rtol=0, atol=1e-7)
    assert table[0, 1] == 1.0 and table[3, 0].item() == pytest.approx(math.sin(3.0)) and table[5, 17].item() == pytest.approx(math.cos(5 / 10000 ** (16 / 18)))
    learned = DistilBertModel(DistilBertConfig(**{**TINY, "dim": 18, "n_heads": 3, "max_position_embeddings": 50}))
    assert not torch.allclose(learned.embeddings.position.weight, theirs, atol=1e-2)


def test_losses_match_transformers(tmp_path):
    config = hf_config(num_labels=3)
    inputs = batch_of(config)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2] = inputs["input_ids"][:, 2]
    reference = reference_model("DistilBertForMaskedLM", config)
    reference.save_pretrained(tmp_path / "mlm")
    with torch.no_grad():
        assert max_diff(DistilBertForMaskedLM.from_pretrained(tmp_path / "mlm")(**inputs, labels=labels).loss, reference(**inputs, labels=labels).loss) <= ATOL
    for problem, labels in (
        ("single_label_classification", torch.tensor([0, 2, 1])),
        ("multi_label_classification", torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])),
        ("regression", torch.randn(3, 3)),
    ):
        reference = reference_model("DistilBertForSequenceClassification", hf_config(num_labels=3, problem_type=problem))
        reference.save_pretrained(tmp_path / problem)
        ours = DistilBertForSequenceClassification.from_pretrained(tmp_path / problem)
        with torch.no_grad():
            assert max_diff(ours(**inputs, labels=labels).loss, reference(**inputs, labels=labels).loss) <= ATOL, problem


# -- files both ways ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("fields", [{}, {"sinusoidal_pos_embds": True, "activation": "relu", "tie_word_embeddings": False}], ids=["learned", "sinusoidal-untied"])
def test_minipt_save_loads_strictly_in_transformers(cls, fields, tmp_path):
    torch.manual_seed(0)
    model = cls(DistilBertConfig(**TINY, **fields, num_labels=3)).eval()
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    prefix = "" if cls is DistilBertModel else "distilbert."
    assert f"{prefix}embeddings.position_embeddings.weight" in keys  # the table is stored, sinusoidal or not
    if cls is DistilBertForMaskedLM:  # a tied decoder weight is the token table: written once
        assert ("vocab_projector.weight" in keys) == (not fields.get("tie_word_embeddings", True))
    reference, info = getattr(transformers, cls.__name__).from_pretrained(tmp_path, attn_implementation="eager", output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    inputs = batch_of(reference.config, batch=2, length=7)
    with torch.no_grad():
        assert max_diff(outputs(model(**inputs, output_hidden_states=True, output_attentions=True)),
                        outputs(reference.eval()(**inputs, output_hidden_states=True, output_attentions=True))) <= ATOL


def test_transformers_saves_load_with_and_without_the_prefix(tmp_path):
    config = hf_config(num_labels=3)
    inputs = batch_of(config)
    mlm = reference_model("DistilBertForMaskedLM", config)
    mlm.save_pretrained(tmp_path / "mlm")
    mlm.distilbert.save_pretrained(tmp_path / "bare")  # no distilbert. prefix
    classifier = reference_model("DistilBertForSequenceClassification", config)
    classifier.save_pretrained(tmp_path / "classifier")
    with torch.no_grad():
        encoder = mlm.distilbert(**inputs).last_hidden_state
        for path in ("mlm", "bare"):
            assert max_diff(DistilBertModel.from_pretrained(tmp_path / path)(**inputs).last_hidden_state, encoder) <= ATOL, path
        assert max_diff(DistilBertForMaskedLM.from_pretrained(tmp_path / "mlm")(**inputs).logits, mlm(**inputs).logits) <= ATOL
        assert max_diff(DistilBertForSequenceClassification.from_pretrained(tmp_path / "classifier")(**inputs).logits, classifier(**inputs).logits) <= ATOL
        for path in ("bare", "mlm"):  # a new head on the bare encoder, or on distilbert-base-uncased's masked-LM file (its head ignored)
            fresh_head = DistilBertForSequenceClassification.from_pretrained(tmp_path / path, init_missing=("pre_classifier", "classifier"))
            assert max_diff(fresh_head.distilbert(**inputs).last_hidden_state, encoder) <= ATOL and fresh_head.num_classes == 3, path


def test_hub_style_files_load(tmp_path):
    """distilbert-base-uncased's layout: pytorch_model.bin holding the tied vocab_projector.weight and
    a config.json with tie_weights_ and no tie_word_embeddings."""
    config = hf_config()
    reference = reference_model("DistilBertForMaskedLM", config)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    assert "vocab_projector.weight" in reference.state_dict()
    written = {k: v for k, v in config.to_dict().items() if k != "tie_word_embeddings"}
    (tmp_path / "config.json").write_text(json.dumps({**written, "architectures": ["DistilBertForMaskedLM"], "tie_weights_": True}))
    ours = registry.model_class(json.loads((tmp_path / "config.json").read_text())).from_pretrained(tmp_path)
    assert type(ours) is DistilBertForMaskedLM and ours.head.decoder.weight is ours.distilbert.embeddings.token.weight
    inputs = batch_of(config)
    with torch.no_grad():
        assert max_diff(ours(**inputs).logits, reference(**inputs).logits) <= ATOL


def test_registry_picks_the_classes():
    for cls in CLASSES:
        assert registry.model_class({"architectures": [cls.__name__], "model_type": "distilbert"}) is cls
    assert registry.model_class({"model_type": "distilbert"}) is DistilBertModel


# -- the per-layer diff ---------------------------------------------------------------------------
def test_layer_diffs_name_the_planted_change(tmp_path):
    config = hf_config(n_layers=3)
    reference_model("DistilBertForSequenceClassification", config).save_pretrained(tmp_path)
    model = DistilBertForSequenceClassification.from_pretrained(tmp_path)
    inputs = batch_of(config)
    report = layer_diffs(model, tmp_path, inputs)
    assert report.first_divergence is None, str(report)
    names = [row.name for row in report.rows]
    assert names[0] == "distilbert.embeddings.out" and names[-2:] == ["pre_classifier.out", "classifier.out"] and len(names) == 1 + 3 * 7 + 2
    eps = copy.deepcopy(model)
    eps.distilbert.layers[1].attn_norm.eps = 1e-2
    assert layer_diffs(eps, tmp_path, inputs).first_divergence.name == "distilbert.layers.1.attn_norm.out"
    relu = copy.deepcopy(model)
    relu.distilbert.layers[2].act = nn.ReLU()  # the config says gelu
    assert layer_diffs(relu, tmp_path, inputs).first_divergence.name == "distilbert.layers.2.act.out"


def test_diff_on_texts_with_a_tokenizer_beside(tmp_path, capsys):
    """minipt's tokenizer gives a DistilBERT folder its model's inputs (no token_type_ids): model(**batch), the default diff
    on the demo sentences and ``minipt diff`` all run on them."""
    from bert_reference import minilm_path
    from minipt import Tokenizer, cli

    torch.manual_seed(0)
    model = DistilBertModel(DistilBertConfig(**{**TINY, "vocab_size": 30522, "max_position_embeddings": 64})).eval()
    model.save_pretrained(tmp_path)
    Tokenizer.from_pretrained(minilm_path()).save_pretrained(tmp_path)
    batch = Tokenizer.from_pretrained(tmp_path)(["a first sentence", "and a second, longer one"])
    assert sorted(batch) == ["attention_mask", "input_ids"] and (batch["attention_mask"] == 0).any()
    assert model(**batch).last_hidden_state.shape == (*batch["input_ids"].shape, 16)
    report = layer_diffs(model, tmp_path)
    assert report.first_divergence is None and "texts" in report.input, str(report)
    assert cli.main(["diff", str(tmp_path)]) == 0
    assert "minipt DistilBertModel against transformers DistilBertModel" in capsys.readouterr().out


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_token_type_ids_are_refused(cls):
    model = cls(DistilBertConfig(**TINY)).eval()
    ids = torch.randint(0, 60, (2, 5))
    for call in (model, model.check_inputs):
        with pytest.raises(InputError, match="token_type_ids given, but DistilBERT has no token types"):
            call(ids, token_type_ids=torch.zeros_like(ids))


def test_a_sequence_longer_than_the_position_table():
    model = DistilBertForMaskedLM(DistilBertConfig(**TINY)).eval()
    with pytest.raises(InputError, match=r"sequence length 21 exceeds the position table \(20 positions\)"):
        model(torch.zeros(1, 21, dtype=torch.long))
    assert model(torch.zeros(1, 20, dtype=torch.long)).logits.shape == (1, 20, 60)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_ids_and_labels_are_checked(cls):
    model = cls(DistilBertConfig(**TINY)).eval()
    with pytest.raises(InputError, match=r"input_ids holds 60, outside the table of 60 entries"):
        model(torch.tensor([[1, 60]]))
    with pytest.raises(InputError, match=r"attention_mask has shape \(1, 3\), input_ids \(1, 2\)"):
        model(torch.tensor([[1, 2]]), torch.ones(1, 3, dtype=torch.long))
    if cls is not DistilBertModel:
        with pytest.raises(InputError, match="labels must"):
            model(torch.tensor([[1, 2]]), labels=torch.tensor([1, 2, 3]))


def other_family(kind: str, path):
    """A tiny checkpoint of another encoder family, built and saved by transformers."""
    sizes = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, max_position_embeddings=24)
    config = getattr(transformers, f"{kind}Config")(**sizes, **({"embedding_size": 8} if kind == "Albert" else {}))
    getattr(transformers, f"{kind}ForMaskedLM")(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("kind, model_type", [("Bert", "bert"), ("Roberta", "roberta"), ("Albert", "albert")])
def test_checkpoints_of_other_encoder_families_are_refused(kind, model_type, tmp_path):
    path = other_family(kind, tmp_path)
    for cls in CLASSES:
        with pytest.raises(ConfigError, match=rf"describes a '{model_type}' model, not 'distilbert'"):
            cls.from_pretrained(path)


def test_a_config_that_contradicts_the_tensors(tmp_path):
    directory = DistilBertModel(DistilBertConfig(**TINY)).save_pretrained(tmp_path)
    written = json.loads((directory / "config.json").read_text())
    for field, value, message in (
        ("dim", 32, r"dim = 32, but embeddings.word_embeddings.weight has shape \(60, 16\)"),
        ("n_layers", 3, r"n_layers = 3, but the checkpoint holds 2 \(such as transformer.layer.0"),
        ("hidden_dim", 25, r"hidden_dim = 25, but transformer.layer.0.ffn.lin1.weight has shape \(24, 16\)"),
        ("n_heads", 3, r"n_heads = 3: expected a divisor of dim 16"),
        ("activation", "mish", r"activation = 'mish': expected one of"),
    ):
        (directory / "config.json").write_text(json.dumps({**written, field: value}))
        with pytest.raises(ConfigError, match=message):
            DistilBertModel.from_pretrained(directory)
