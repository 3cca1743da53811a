"""minipt's RoBERTa against transformers' on the same weights, the official format both ways, and RoBERTa's own errors.

minipt's default ``torch`` backend asked for attention maps runs the attention written out, as
transformers' eager attention does, with the same torch kernels elsewhere: 1e-5 absolute on every
output (tests/helpers.py). Checkpoints are random models that transformers builds and saves (no
RoBERTa weights can be installed here, ../shared/DATA.md); ``randomize`` makes every parameter
random, LayerNorm and biases too, so no mapping error hides behind a zero or a one.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from bert_reference import randomize, transformers
from helpers import ATOL, max_diff
from minipt.errors import ConfigError, InputError, KeyMismatchError
from minipt.models.roberta import RobertaConfig, RobertaForMaskedLM, RobertaForSequenceClassification, RobertaModel
from minipt.reference import layer_diffs
from minipt.registry import model_class, model_class_for

PAD, BOS, EOS = 1, 0, 2
CLASSES = {"RobertaModel": RobertaModel, "RobertaForMaskedLM": RobertaForMaskedLM, "RobertaForSequenceClassification": RobertaForSequenceClassification}


def hf_config(**overrides):
    """A small transformers RobertaConfig laid out as the official ones: 2 positions more than tokens, one segment."""
    values = dict(
        vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=24, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return transformers.RobertaConfig(**values)


def saved(tmp_path, cls_name, config, seed=0):
    """transformers' ``cls_name`` (eager attention) with random weights, saved at ``tmp_path``; returns it in eval mode."""
    reference = randomize(getattr(transformers, cls_name)._from_config(config, attn_implementation="eager"), seed).eval()
    reference.save_pretrained(tmp_path)
    return reference


def roberta_batch(config, batch=3, length=11, seed=0):
    """<s> then random tokens; every row but the first ends in padding (pad_token_id, attention_mask 0) of a different length."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, config.vocab_size, (batch, length), generator=generator)
    input_ids[:, 0] = BOS
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        real = max(1, length - row * max(1, length // (2 * batch)))
        input_ids[row, real:], attention_mask[row, real:] = PAD, 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def run(model, batch, **kwargs):
    with torch.no_grad():
        return model(**batch, output_hidden_states=True, output_attentions=True, **kwargs)


def encoder_outputs(out) -> list[torch.Tensor]:
    return [out.last_hidden_state, *out.hidden_states, *out.attentions]


# -- parity on random configurations, built and saved by transformers --------------------------
@st.composite
def roberta_configs(draw):
    heads = draw(st.integers(1, 4))
    return hf_config(
        hidden_size=heads * draw(st.integers(2, 8)),
        num_attention_heads=heads,
        num_hidden_layers=draw(st.integers(1, 3)),
        intermediate_size=draw(st.integers(4, 48)),
        hidden_act=draw(st.sampled_from(["gelu", "gelu_new", "relu", "silu"])),
        vocab_size=draw(st.integers(8, 200)),
        max_position_embeddings=draw(st.integers(5, 40)),
        type_vocab_size=draw(st.integers(1, 3)),
        layer_norm_eps=draw(st.sampled_from([1e-12, 1e-5])),
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=roberta_configs(), length=st.integers(1, 38), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_random_configs_match_at_every_layer_and_head(tmp_path_factory, config, length, batch, seed):
    """Hidden states of every layer, attention maps, pooled output, MLM logits and greedy fill-in, classification logits:
    at every position, padding included (both sides compute the padded rows the same way)."""
    length = min(length, config.max_position_embeddings - PAD - 1)  # the most tokens RoBERTa's positions allow
    inputs = roberta_batch(config, batch, length, seed)
    inputs["token_type_ids"] = torch.randint(0, config.type_vocab_size, inputs["input_ids"].shape, generator=torch.Generator().manual_seed(seed))
    mask_id = config.vocab_size - 1  # stands for <mask>: row 0 (never padded) masked at every other token and the last
    inputs["input_ids"][0, 1::2] = mask_id
    inputs["input_ids"][0, -1] = mask_id
    masked = inputs["input_ids"] == mask_id

    base, mlm, classifier = (tmp_path_factory.mktemp(name) for name in ("roberta", "roberta_mlm", "roberta_cls"))
    theirs = run(saved(base, "RobertaModel", config, seed), inputs)
    ours = run(RobertaModel.from_pretrained(base), inputs)
    assert max_diff(encoder_outputs(ours) + [ours.pooler_output], encoder_outputs(theirs) + [theirs.pooler_output]) <= ATOL

    theirs = run(saved(mlm, "RobertaForMaskedLM", config, seed), inputs)
    ours = run(RobertaForMaskedLM.from_pretrained(mlm), inputs)
    assert max_diff([ours.logits, *ours.hidden_states, *ours.attentions], [theirs.logits, *theirs.hidden_states, *theirs.attentions]) <= ATOL
    assert masked.any() and torch.equal(ours.logits.argmax(-1)[masked], theirs.logits.argmax(-1)[masked])  # greedy fill-in

    config.num_labels = 3
    theirs = run(saved(classifier, "RobertaForSequenceClassification", config, seed), inputs)
    ours = run(RobertaForSequenceClassification.from_pretrained(classifier), inputs)
    assert ours.logits.shape == (batch, 3) and max_diff(ours.logits, theirs.logits) <= ATOL


def test_padding_takes_no_position(tmp_path):
    """The longest input fills the position table from pad_token_id + 1 to its end; a padded row's tokens keep
    their positions wherever the padding is (transformers counts positions over the tokens that are not padding)."""
    config = hf_config()
    theirs = saved(tmp_path, "RobertaModel", config)
    ours = RobertaModel.from_pretrained(tmp_path)
    inputs = roberta_batch(config, batch=2, length=config.max_position_embeddings - PAD - 1)
    assert max_diff(encoder_outputs(run(ours, inputs)), encoder_outputs(run(theirs, inputs))) <= ATOL
    right = roberta_batch(config, batch=2, length=8)
    left = {name: value.roll(2, dims=1) for name, value in right.items()}  # row 1's two pads moved to the front
    assert torch.equal(left["attention_mask"][1, :3], torch.tensor([0, 0, 1]))
    with torch.no_grad():
        right_out, left_out = ours(**right).last_hidden_state, ours(**left).last_hidden_state
    real = right["attention_mask"][1].bool()
    assert torch.allclose(right_out[1][real], left_out[1][left["attention_mask"][1].bool()], atol=ATOL)


# -- heads: losses and the decoder's bias ------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_masked_lm_head_and_its_loss(tmp_path, tied):
    config = hf_config(tie_word_embeddings=tied, hidden_act="relu")  # the head's GELU stays exact whatever hidden_act says
    reference = saved(tmp_path, "RobertaForMaskedLM", config)
    ours = RobertaForMaskedLM.from_pretrained(tmp_path)
    assert (ours.lm_head.decoder.weight is ours.roberta.embeddings.token.weight) == tied
    assert ours.roberta.pooler is None
    inputs = roberta_batch(config)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 3] = inputs["input_ids"][:, 3]
    with torch.no_grad():
        a, b = ours(**inputs, labels=labels), reference(**inputs, labels=labels)
    assert max_diff(a.logits, b.logits) <= ATOL and abs(a.loss.item() - b.loss.item()) <= ATOL
    if tied:  # one bias, which transformers writes as lm_head.bias
        assert torch.equal(ours.lm_head.decoder.bias, reference.lm_head.bias.detach())


@pytest.mark.parametrize("num_labels,problem", [(3, None), (1, None), (4, "multi_label_classification")])
def test_sequence_classification_head_and_its_loss(tmp_path, num_labels, problem):
    config = hf_config(num_labels=num_labels, problem_type=problem)
    reference = saved(tmp_path, "RobertaForSequenceClassification", config)
    ours = RobertaForSequenceClassification.from_pretrained(tmp_path)
    assert ours.num_classes == num_labels and ours.get_classifier() is ours.classifier
    inputs = roberta_batch(config)
    if problem == "multi_label_classification":
        labels = torch.randint(0, 2, (3, num_labels)).float()
    elif num_labels == 1:
        labels = torch.randn(3)
    else:
        labels = torch.randint(0, num_labels, (3,))
    with torch.no_grad():
        a, b = ours(**inputs, labels=labels), reference(**inputs, labels=labels)
    assert max_diff(a.logits, b.logits) <= ATOL and abs(a.loss.item() - b.loss.item()) <= ATOL


def test_training_step_gradients_match(tmp_path):
    """Every gradient, the position table's padding row (no gradient on either side) included."""
    config = hf_config(num_labels=3)
    reference = saved(tmp_path, "RobertaForSequenceClassification", config)
    ours = RobertaForSequenceClassification.from_pretrained(tmp_path).train()
    reference.train()  # dropout probabilities are 0 here, so train mode is deterministic
    inputs, labels = roberta_batch(config), torch.tensor([0, 2, 1])
    ours(**inputs, labels=labels).loss.backward()
    reference(**inputs, labels=labels).loss.backward()
    keymap, theirs = RobertaForSequenceClassification.keymap(ours.config), dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        assert max_diff(param.grad, theirs[keymap.to_official(name)[0]].grad) <= ATOL, name
    assert len(list(ours.parameters())) == len(theirs)
    assert not ours.roberta.embeddings.position.weight.grad[PAD].any()


# -- the official format, both ways -------------------------------------------------------------
@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_save_pretrained_loads_strictly_in_transformers(tmp_path, cls_name):
    config = hf_config(num_labels=3)
    original = saved(tmp_path / "official", cls_name, config)
    CLASSES[cls_name].from_pretrained(tmp_path / "official").save_pretrained(tmp_path / "minipt")
    reloaded, info = getattr(transformers, cls_name).from_pretrained(str(tmp_path / "minipt"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    expected = original.state_dict()
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    written = set(load_file(tmp_path / "minipt" / "model.safetensors"))
    assert written == set(load_file(tmp_path / "official" / "model.safetensors"))  # the very tensors transformers writes


def test_untied_decoder_round_trip(tmp_path):
    """Untied, transformers keeps lm_head.bias beside the decoder's own bias and never uses it: minipt reads the decoder's
    (also where the unused one differs) and writes lm_head.bias as its copy, so that transformers loads strictly."""
    config = hf_config(tie_word_embeddings=False)
    original = saved(tmp_path / "official", "RobertaForMaskedLM", config)
    RobertaForMaskedLM.from_pretrained(tmp_path / "official").save_pretrained(tmp_path / "minipt")
    reloaded, info = transformers.RobertaForMaskedLM.from_pretrained(str(tmp_path / "minipt"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    inputs = roberta_batch(config)
    with torch.no_grad():
        assert max_diff(reloaded.eval()(**inputs).logits, original(**inputs).logits) <= ATOL
        original.lm_head.bias.fill_(5.0)  # a fine-tuned file: its unused bias no longer the decoder's
    original.save_pretrained(tmp_path / "trained")
    with torch.no_grad():
        ours = RobertaForMaskedLM.from_pretrained(tmp_path / "trained").eval()
        assert max_diff(ours(inputs["input_ids"], inputs["attention_mask"]).logits, original(**inputs).logits) <= ATOL


def test_checkpoints_with_and_without_the_roberta_prefix(tmp_path):
    """A base model's file (no prefix, with pooler) and a head's (roberta. prefix, no pooler) load into every class that can use them."""
    config = hf_config(num_labels=2)
    inputs = roberta_batch(config)
    base = saved(tmp_path / "base", "RobertaModel", config)
    mlm = saved(tmp_path / "mlm", "RobertaForMaskedLM", config, seed=1)
    assert not any(k.startswith("roberta.") for k in load_file(tmp_path / "base" / "model.safetensors"))
    assert all(k.startswith(("roberta.", "lm_head.")) for k in load_file(tmp_path / "mlm" / "model.safetensors"))

    encoder = RobertaModel.from_pretrained(tmp_path / "base")
    assert encoder.pooler is not None and max_diff(run(encoder, inputs).pooler_output, run(base, inputs).pooler_output) <= ATOL
    encoder = RobertaModel.from_pretrained(tmp_path / "mlm")  # the head's encoder, without a pooler
    assert encoder.pooler is None and max_diff(run(encoder, inputs).last_hidden_state, run(mlm.roberta, inputs).last_hidden_state) <= ATOL

    for source, reference in (("base", base), ("mlm", mlm.roberta)):  # a new classification head on either
        with pytest.raises(KeyMismatchError, match=r"missing \(4\):\n    classifier.dense.weight"):
            RobertaForSequenceClassification.from_pretrained(tmp_path / source)
        model = RobertaForSequenceClassification.from_pretrained(tmp_path / source, init_missing=("pre_classifier", "classifier"), num_labels=5)
        assert model.num_classes == 5 and max_diff(run(model, inputs).hidden_states[-1], run(reference, inputs).last_hidden_state) <= ATOL
    with pytest.raises(KeyMismatchError, match=r"missing \(5\):\n    lm_head"):  # a base model has no MLM head to load
        RobertaForMaskedLM.from_pretrained(tmp_path / "base")


def test_pre_training_checkpoint_as_published(tmp_path):
    """roberta-base's layout, in a pytorch_model.bin: a pooler beside the MLM head, the decoder's weight and bias repeated
    under their own names, and the position_ids buffer; each class takes what it uses."""
    config = hf_config()
    mlm = randomize(transformers.RobertaForMaskedLM(config)).eval()
    pooler = torch.nn.Linear(config.hidden_size, config.hidden_size)
    state = {k: v.clone() for k, v in mlm.state_dict().items()}
    state.update({
        "roberta.pooler.dense.weight": pooler.weight.detach(), "roberta.pooler.dense.bias": pooler.bias.detach(),
        "lm_head.decoder.weight": state["roberta.embeddings.word_embeddings.weight"].clone(), "lm_head.decoder.bias": state["lm_head.bias"].clone(),
        "roberta.embeddings.position_ids": torch.arange(config.max_position_embeddings)[None],
    })
    (tmp_path / "config.json").write_text(config.to_json_string())
    torch.save(state, tmp_path / "pytorch_model.bin")
    inputs = roberta_batch(config)
    with torch.no_grad():
        assert max_diff(RobertaForMaskedLM.from_pretrained(tmp_path)(**inputs).logits, mlm(**inputs).logits) <= ATOL
        pooled = RobertaModel.from_pretrained(tmp_path)(**inputs).pooler_output
        assert max_diff(pooled, torch.tanh(pooler(mlm.roberta(**inputs).last_hidden_state[:, 0]))) <= ATOL
    assert RobertaForSequenceClassification.from_pretrained(tmp_path, init_missing=("pre_classifier", "classifier")).num_classes == 2


def test_registry_finds_each_class(tmp_path):
    assert model_class({"model_type": "roberta"}) is RobertaModel
    for name, cls in CLASSES.items():
        assert model_class({"architectures": [name], "model_type": "roberta"}) is cls
    saved(tmp_path, "RobertaForSequenceClassification", hf_config())
    from minipt.checkpoint import Checkpoint

    assert model_class_for(tmp_path, Checkpoint(tmp_path)) is RobertaForSequenceClassification


# -- the per-layer diff ------------------------------------------------------------------------
def test_layer_diffs_find_a_planted_change(tmp_path):
    config = hf_config(num_hidden_layers=3)
    saved(tmp_path, "RobertaModel", config)
    model = RobertaModel.from_pretrained(tmp_path)
    inputs = roberta_batch(config, batch=2, length=9)
    report = layer_diffs(model, tmp_path, inputs)
    assert report.first_divergence is None, str(report)
    names = [row.name for row in report.rows]
    assert names[0] == "embeddings.out" and names[-1] == "pooler.out" and len(names) == 2 + 3 * 7

    planted = copy.deepcopy(model)
    planted.layers[1].attn_norm.eps = 1e-1
    assert layer_diffs(planted, tmp_path, inputs).first_divergence.name == "layers.1.attn_norm.out"
    bert_positions = copy.deepcopy(model)
    bert_positions.embeddings.padding_idx = -1  # no token is padding: positions 0, 1, 2, ... as BERT counts them
    assert layer_diffs(bert_positions, tmp_path, inputs).first_divergence.name == "embeddings.out"


@pytest.mark.parametrize("cls_name, last", [("RobertaForMaskedLM", "lm_head.out"), ("RobertaForSequenceClassification", "classifier.out")])
def test_layer_diffs_of_the_heads(tmp_path, cls_name, last):
    config = hf_config()
    saved(tmp_path, cls_name, config)
    report = layer_diffs(CLASSES[cls_name].from_pretrained(tmp_path), tmp_path, roberta_batch(config))
    assert report.first_divergence is None, str(report)
    assert report.rows[0].name == "roberta.embeddings.out" and report.rows[-1].name == last


# -- bad input ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    return RobertaModel(RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                      max_position_embeddings=24, type_vocab_size=1)).eval()


def test_positions_beyond_the_table_after_the_offset(tiny_model):
    ids = torch.full((2, 22), 5)
    assert tiny_model(ids).last_hidden_state.shape == (2, 22, 16)  # positions 2 .. 23: the whole table
    for length in (23, 24):  # 24 tokens would fit a table of 24 counted from 0, as BERT counts
        with pytest.raises(InputError, match=rf"sequence length {length} exceeds the position table \(22 positions\); truncate the input"):
            tiny_model(torch.full((2, length), 5))
    padded = torch.cat([ids, torch.full((2, 1), PAD)], dim=1)  # 22 tokens and a pad: the shape alone decides
    with pytest.raises(InputError, match=r"sequence length 23 exceeds"):
        tiny_model(padded, torch.cat([torch.ones(2, 22, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)], dim=1))


@pytest.fixture(scope="module")
def other_encoders(tmp_path_factory):
    """Tiny BERT, DistilBERT and ALBERT base models as transformers saves them, by model_type."""
    sizes = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, max_position_embeddings=24)
    configs = [
        transformers.BertConfig(**sizes),
        transformers.DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=16, max_position_embeddings=24),
        transformers.AlbertConfig(**sizes, embedding_size=8),
    ]
    paths = {}
    for config in configs:
        paths[config.model_type] = tmp_path_factory.mktemp(config.model_type)
        transformers.AutoModel.from_config(config).save_pretrained(paths[config.model_type])
    return paths


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "albert"])
@pytest.mark.parametrize("cls", list(CLASSES.values()), ids=lambda c: c.__name__)
def test_checkpoint_of_another_encoder_family(other_encoders, model_type, cls):
    """BERT's tensors have RoBERTa's very names: only config.json tells the two apart, and it is read first."""
    with pytest.raises(ConfigError, match=rf"config.json: describes a '{model_type}' model, not 'roberta'"):
        cls.from_pretrained(other_encoders[model_type])


@pytest.mark.parametrize("bad, message", [
    (lambda ids: ids.masked_fill(ids == 7, 50), r"input_ids holds 50, outside the table of 50 entries \(valid: 0..49\)"),
    (lambda ids: ids - 10, r"input_ids holds -\d+, outside the table of 50 entries"),
])
def test_ids_outside_the_vocabulary(tiny_model, bad, message):
    ids = torch.tensor([[0, 7, 8, 2], [0, 9, 2, 1]])
    with pytest.raises(InputError, match=message):
        tiny_model(bad(ids))


def test_token_types_of_a_single_segment_table(tiny_model):
    ids = torch.tensor([[0, 7, 8, 2]])
    with pytest.raises(InputError, match=r"token_type_ids holds 1, outside the table of 1 entries"):
        tiny_model(ids, token_type_ids=torch.tensor([[0, 0, 1, 1]]))


def test_labels_of_the_wrong_shape():
    config = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, max_position_embeddings=24)
    ids = torch.tensor([[0, 7, 8, 2], [0, 9, 2, 1]])
    with pytest.raises(InputError, match=r"labels must have the shape of input_ids \(2, 4\) \(-100 where nothing is predicted\), got \(2,\)"):
        RobertaForMaskedLM(config).check_inputs(ids, labels=torch.tensor([3, 4]))
    with pytest.raises(InputError, match=r"labels must hold one entry per sequence \(2 for input_ids \(2, 4\)\), got \(3,\)"):
        RobertaForSequenceClassification(config).check_inputs(ids, labels=torch.tensor([0, 1, 0]))


@pytest.mark.parametrize("field, value, message", [
    ("pad_token_id", None, r"pad_token_id = None: expected a token id: RoBERTa counts positions from it"),
    ("max_position_embeddings", 2, r"max_position_embeddings = 2: expected at least pad_token_id \+ 2 = 3"),
    ("is_decoder", True, r"sets is_decoder: RoBERTa as a decoder \(RobertaForCausalLM\) is not supported"),
    ("position_embedding_type", "relative_key", r"position_embedding_type = 'relative_key': expected one of 'absolute'"),
])
def test_config_values_roberta_cannot_run(tmp_path, field, value, message):
    directory = tmp_path / "roberta"
    saved(directory, "RobertaModel", hf_config())
    config = json.loads((directory / "config.json").read_text())
    config[field] = value
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        RobertaModel.from_pretrained(directory)


def test_official_config_fields_round_trip():
    """The fields of roberta-base's config.json read back as written; bos/eos ids are kept."""
    official = {
        "architectures": ["RobertaForMaskedLM"], "model_type": "roberta", "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 514, "type_vocab_size": 1,
        "layer_norm_eps": 1e-05, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "initializer_range": 0.02,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "transformers_version": "4.x",
    }
    config = RobertaConfig.from_dict(official)
    assert config.longest_input == 512
    written = config.to_dict()
    assert all(written[k] == v for k, v in official.items() if k not in ("architectures", "transformers_version"))
