"""minipt's BERT against transformers' on the same weights.

Tolerances. The ``torch`` backend runs the same torch kernels as transformers
with its sdpa attention: fp32 max abs difference <= 1e-5 on every output;
asked for attention maps it runs the attention written out, exactly like
transformers' eager attention, and is held to the same 1e-5 against it. The ``math`` backend writes
LayerNorm and GELU out as their equations; torch's fused kernels round
differently (about one ulp per op, e.g. 1.4e-6 on GELU of values near 10),
and on the real 6-layer model with activations up to ~10 that compounds to a
few 1e-5. There the bound is an error ratio against a float64 run of the
reference, as flash-attention's tests do for kernels that round differently:
minipt-math's error may be at most 3x transformers' own fp32 error (plus
4 float32 ulps of the largest value for outputs both get almost exact; see
tests/helpers.py). Op by op the written-out LayerNorm and GELU are as accurate
as torch's kernels (tests/test_attention.py checks that); end to end, two
different rounding sequences through six layers give errors of the same size
but not the same value (ratios seen: 0.5 to 2.1).
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bert_reference import minilm_path, random_batch, randomize, reference_bert, tiny_hf_config, transformers
from helpers import ATOL, assert_error_ratio, max_diff
from minipt import Tokenizer
from minipt.models.bert import BertForMaskedLM, BertForSequenceClassification, BertModel
from minipt.nn import use_backend

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello!",
    "minipt writes attention out by hand, and checks it against the reference.",
    "Ünïcödé, emoji 🙂 and numbers 12345 are tokenized too.",
]


@pytest.fixture(scope="module")
def minilm():
    return BertModel.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def reference():
    return reference_bert(minilm_path())


@pytest.fixture(scope="module")
def reference_sdpa():
    return reference_bert(minilm_path(), attn_implementation="sdpa")


@pytest.fixture(scope="module")
def reference64(reference):
    return copy.deepcopy(reference).double()


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_pretrained(minilm_path())


def _outputs(out, attentions):
    """Every output of a BertModel call, by name."""
    named = {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}
    named.update({f"hidden_states[{i}]": h for i, h in enumerate(out.hidden_states)})
    if attentions:
        named.update({f"attentions[{i}]": a for i, a in enumerate(out.attentions)})
    return named


def _run(model, batch, attentions):
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True, output_attentions=attentions)
    assert len(out.hidden_states) == 7  # embeddings + 6 layers
    if attentions:
        assert len(out.attentions) == 6 and out.attentions[0].shape[1] == 12  # (B, heads, T, T)
    return _outputs(out, attentions)


@pytest.fixture(scope="module")
def parity(minilm, reference, reference_sdpa, reference64):
    def check(batch, backend, attentions=True):
        if backend == "torch":
            with use_backend("torch"):
                ours = _run(minilm, batch, False)
                ours_with_maps = _run(minilm, batch, True) if attentions else {}
            theirs = _run(reference_sdpa, batch, False)
            theirs_eager = _run(reference, batch, True) if attentions else {}
            for name in theirs:
                assert max_diff(ours[name], theirs[name]) <= ATOL, name
            for name in theirs_eager:  # with maps asked for, attention runs written out
                assert max_diff(ours_with_maps[name], theirs_eager[name]) <= ATOL, name
            return
        with use_backend("math"):
            ours = _run(minilm, batch, attentions)
        theirs, theirs64 = _run(reference, batch, attentions), _run(reference64, batch, attentions)
        for name in theirs:
            assert_error_ratio(ours[name], theirs[name], theirs64[name], what=name)

    return check


@pytest.mark.parametrize("backend", ["math", "torch"])
def test_real_weights_padded_batch(parity, tokenizer, backend):
    batch = tokenizer(SENTENCES)
    assert (batch["attention_mask"] == 0).any()  # the batch really has padding
    parity(batch, backend)


@pytest.mark.parametrize("backend", ["math", "torch"])
def test_real_weights_sentence_pairs(parity, tokenizer, backend):
    batch = tokenizer(SENTENCES[:2], SENTENCES[2:])
    assert (batch["token_type_ids"] == 1).any()
    parity(batch, backend)


@pytest.mark.parametrize("backend", ["math", "torch"])
def test_real_weights_up_to_the_position_limit(parity, tokenizer, backend):
    text = " ".join(["transformers"] * 600)
    batch = tokenizer([text, "short"], max_length=512)
    assert batch["input_ids"].shape == (2, 512)
    parity(batch, backend, attentions=False)


def test_sdpa_output_attentions_falls_back_to_math(minilm, tokenizer):
    batch = tokenizer(SENTENCES)
    with torch.no_grad(), use_backend("torch"):
        ours = minilm(**batch, output_attentions=True)
    assert all(a is not None for a in ours.attentions)
    assert torch.allclose(ours.attentions[0].sum(-1), torch.ones(()), atol=1e-5)


def test_per_model_backend_overrides_global(minilm, tokenizer):
    batch = tokenizer(SENTENCES)
    with torch.no_grad():
        with use_backend("math"):
            written_out = minilm(**batch).last_hidden_state
        with use_backend("torch"):
            fused = minilm(**batch).last_hidden_state
        assert not torch.equal(written_out, fused)  # the two backends really run different code
        minilm.set_backend("math")
        try:
            with use_backend("torch"):
                assert all(m.backend == "math" for m in minilm.modules() if hasattr(m, "backend"))
                assert torch.equal(minilm(**batch).last_hidden_state, written_out)
        finally:
            minilm.set_backend(None)
        with use_backend("torch"):
            assert torch.equal(minilm(**batch).last_hidden_state, fused)


# -- random configurations, built and saved by transformers, loaded by minipt -----------
@st.composite
def bert_configs(draw):
    heads = draw(st.integers(1, 4))
    return tiny_hf_config(
        hidden_size=heads * draw(st.integers(2, 8)),
        num_attention_heads=heads,
        num_hidden_layers=draw(st.integers(1, 3)),
        intermediate_size=draw(st.integers(4, 48)),
        hidden_act=draw(st.sampled_from(["gelu", "gelu_new", "relu", "silu"])),
        vocab_size=draw(st.integers(5, 200)),
        max_position_embeddings=draw(st.integers(16, 40)),
        type_vocab_size=draw(st.integers(1, 3)),
        layer_norm_eps=draw(st.sampled_from([1e-12, 1e-5])),
    )


def _all_outputs(out):
    return [out.last_hidden_state, out.pooler_output, *out.hidden_states]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=bert_configs(), length=st.integers(1, 16), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_random_configs(tmp_path_factory, config, length, batch, seed):
    """transformers builds with sdpa attention: minipt's sdpa backend runs the same kernels (1e-5 absolute);
    its math backend writes the equations out and is held to an error ratio against float64."""
    path = tmp_path_factory.mktemp("bert")
    reference = randomize(transformers.BertModel(config), seed).eval()
    reference.save_pretrained(path)
    ours = BertModel.from_pretrained(path)
    inputs = random_batch(config, batch, length, seed=seed)
    inputs["token_type_ids"] %= config.type_vocab_size
    with torch.no_grad():
        expected = _all_outputs(reference(**inputs, output_hidden_states=True))
        with use_backend("torch"):
            assert max_diff(_all_outputs(ours(**inputs, output_hidden_states=True)), expected) <= ATOL
        with use_backend("math"):
            written_out = _all_outputs(ours(**inputs, output_hidden_states=True))
        exact = _all_outputs(copy.deepcopy(reference).double()(**inputs, output_hidden_states=True))
    assert_error_ratio(written_out, expected, exact, what="last_hidden_state, pooler_output, hidden_states")


# -- heads -------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_masked_lm_head(tmp_path, tied):
    config = tiny_hf_config(tie_word_embeddings=tied)
    reference = randomize(transformers.BertForMaskedLM(config)).eval()
    reference.save_pretrained(tmp_path)
    ours = BertForMaskedLM.from_pretrained(tmp_path)
    assert (ours.head.decoder.weight is ours.bert.embeddings.token.weight) == tied
    inputs = random_batch(config)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 3] = inputs["input_ids"][:, 3]
    with torch.no_grad():
        a = ours(**inputs, labels=labels)
        b = reference(**inputs, labels=labels)
    assert max_diff(a.logits, b.logits) <= ATOL
    assert abs(a.loss.item() - b.loss.item()) <= ATOL


@pytest.mark.parametrize("num_labels,problem", [(3, None), (1, None), (4, "multi_label_classification")])
def test_sequence_classification_head(tmp_path, num_labels, problem):
    config = tiny_hf_config(num_labels=num_labels, problem_type=problem)
    reference = randomize(transformers.BertForSequenceClassification(config)).eval()
    reference.save_pretrained(tmp_path)
    ours = BertForSequenceClassification.from_pretrained(tmp_path)
    assert ours.config.num_labels == num_labels
    inputs = random_batch(config)
    if problem == "multi_label_classification":
        labels = torch.randint(0, 2, (3, num_labels)).float()
    elif num_labels == 1:
        labels = torch.randn(3)
    else:
        labels = torch.randint(0, num_labels, (3,))
    with torch.no_grad():
        a = ours(**inputs, labels=labels)
        b = reference(**inputs, labels=labels)
    assert max_diff(a.logits, b.logits) <= ATOL
    assert abs(a.loss.item() - b.loss.item()) <= ATOL


# -- writing the official format back ---------------------------------------------
@pytest.mark.parametrize("cls_name", ["BertModel", "BertForMaskedLM", "BertForSequenceClassification"])
def test_save_pretrained_loads_strictly_in_transformers(tmp_path, cls_name):
    config = tiny_hf_config()
    original = randomize(getattr(transformers, cls_name)(config)).eval()
    original.save_pretrained(tmp_path / "official")
    ours = {"BertModel": BertModel, "BertForMaskedLM": BertForMaskedLM, "BertForSequenceClassification": BertForSequenceClassification}[cls_name]
    ours.from_pretrained(tmp_path / "official").save_pretrained(tmp_path / "minipt")
    reloaded, info = getattr(transformers, cls_name).from_pretrained(str(tmp_path / "minipt"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    expected = original.state_dict()
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_save_pretrained_of_the_real_checkpoint_round_trips(tmp_path, minilm, reference, tokenizer):
    minilm.save_pretrained(tmp_path)
    reloaded, info = transformers.BertModel.from_pretrained(str(tmp_path), output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    batch = tokenizer(SENTENCES)
    with torch.no_grad():
        assert max_diff(reloaded.eval()(**batch).last_hidden_state, reference(**batch).last_hidden_state) == 0.0


# -- training ------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["math", "torch"])
def test_training_step_gradients_match(tmp_path, backend):
    """sdpa: the same kernels as transformers' sdpa attention, 1e-5 absolute; math: an error ratio against
    the gradients of transformers' model in float64."""
    config = tiny_hf_config(num_labels=3)
    reference = randomize(transformers.BertForSequenceClassification(config))
    reference.save_pretrained(tmp_path)
    reference64 = copy.deepcopy(reference).double()
    ours = BertForSequenceClassification.from_pretrained(tmp_path)
    ours.train()
    reference.train(), reference64.train()  # dropout probabilities are 0 in this config, so train mode is deterministic
    inputs = random_batch(config)
    labels = torch.tensor([0, 2, 1])
    with use_backend(backend):
        ours(**inputs, labels=labels).loss.backward()
    reference(**inputs, labels=labels).loss.backward()
    reference64(**inputs, labels=labels).loss.backward()
    keymap = BertForSequenceClassification.keymap(ours.config)
    reference_grads = {k: p.grad for k, p in reference.named_parameters()}
    exact_grads = {k: p.grad for k, p in reference64.named_parameters()}
    # Some gradients are zero in exact arithmetic (a key bias: softmax ignores a shift shared by all keys) and
    # come out as rounding noise of the other gradients' size: the floor is counted at the largest gradient.
    largest = max(g.abs().max().item() for g in exact_grads.values())
    checked = 0
    for key, param in ours.named_parameters():
        official = keymap.to_official(key)[0]
        if backend == "torch":
            assert max_diff(param.grad, reference_grads[official]) <= ATOL, key
        else:
            assert_error_ratio(param.grad, reference_grads[official], exact_grads[official], scale=largest, what=key)
        checked += 1
    assert checked == len(reference_grads)
