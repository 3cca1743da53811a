"""BERT's outputs read as transformers' do: by attribute, by name, by position and as a tuple.

Each call runs minipt's model and transformers' on the same random weights
(a tiny config built with transformers' own class) and checks that the two
outputs have the same fields, in the same order, set in the same cases: with
labels ``out[0]`` is the loss, without them the logits (or the last hidden
state of the bare encoder).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bert_reference import random_batch, randomize, tiny_hf_config, transformers
from helpers import ATOL, max_diff
from minipt.models.bert import BertForMaskedLM, BertForSequenceClassification, BertHeadOutput, BertModel, BertOutput
from minipt.nn.output import ModelOutput

CLASSES = {"BertModel": BertModel, "BertForMaskedLM": BertForMaskedLM, "BertForSequenceClassification": BertForSequenceClassification}


@pytest.fixture(scope="module", params=list(CLASSES))
def pair(request, tmp_path_factory):
    """(transformers' model, minipt's loaded from its save), both in eval mode on eager attention."""
    config = tiny_hf_config(num_labels=3, attn_implementation="eager")  # eager attention returns attention maps
    reference = randomize(getattr(transformers, request.param)(config)).eval()
    path = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(path)
    return reference, CLASSES[request.param].from_pretrained(path), config


def _labels(model, inputs):
    if isinstance(model, BertForMaskedLM):
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, 2] = inputs["input_ids"][:, 2]
        return labels
    return torch.tensor([0, 2, 1])


def _set_fields(theirs) -> list[str]:
    """transformers' set fields, less the empty cross_attentions tuple it returns for an encoder with
    output_attentions (minipt's BERT is never a decoder, so it declares no cross-attention field)."""
    return [name for name in theirs.keys() if not (name == "cross_attentions" and theirs[name] == ())]


def _assert_same(ours, theirs):
    """Same field names in the same order, and each value (tensor or tuple of tensors) within float32 rounding."""
    names = _set_fields(theirs)
    assert list(ours.keys()) == names
    assert len(ours) == len(names)
    assert len(ours.to_tuple()) == len(names) and theirs.to_tuple()[: len(names)] == tuple(theirs[n] for n in names)
    for a, b in zip(ours.to_tuple(), theirs.to_tuple()):
        assert max_diff(a, b) <= ATOL
    for name in names:
        assert max_diff(ours[name], theirs[name]) <= ATOL, name


@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("extras", [{}, {"output_hidden_states": True}, {"output_hidden_states": True, "output_attentions": True}])
def test_fields_positions_and_tuples_match_transformers(pair, with_labels, extras):
    reference, ours, config = pair
    if with_labels and isinstance(ours, BertModel):
        pytest.skip("the bare encoder takes no labels")
    inputs = random_batch(config)
    if with_labels:
        inputs["labels"] = _labels(ours, inputs)
    with torch.no_grad():
        a, b = ours(**inputs, **extras), reference(**inputs, **extras)
    _assert_same(a, b)
    first = "loss" if with_labels else ("last_hidden_state" if isinstance(ours, BertModel) else "logits")
    assert a[0] is getattr(a, first) and max_diff(a[0], b[0]) <= ATOL
    assert a.to_tuple()[0] is a[0]


def test_encoder_output_by_name(pair):
    reference, ours, config = pair
    if not isinstance(ours, BertModel):
        pytest.skip("the bare encoder's fields")
    inputs = random_batch(config)
    with torch.no_grad():
        a, b = ours(**inputs), reference(**inputs)
    assert max_diff(a["last_hidden_state"], b["last_hidden_state"]) <= ATOL
    assert max_diff(a["pooler_output"], b["pooler_output"]) <= ATOL
    assert "hidden_states" not in a and "hidden_states" not in b
    with pytest.raises(KeyError, match="hidden_states"):
        a["hidden_states"]


def test_output_classes_declare_loss_first():
    assert issubclass(BertOutput, ModelOutput) and issubclass(BertHeadOutput, ModelOutput)
    assert [f.name for f in dataclasses.fields(BertHeadOutput)][:2] == ["loss", "logits"]
    with pytest.raises(TypeError):
        BertHeadOutput()  # logits is required, by keyword
    assert BertHeadOutput(logits=torch.ones(1)).loss is None


def test_outputs_are_pytrees():
    """torch.export sees the tensors inside (the dataclasses are registered when bert.py is imported)."""
    from torch.utils import _pytree as pytree

    loss, logits = torch.tensor(1.0), torch.ones(2, 3)
    leaves, spec = pytree.tree_flatten(BertHeadOutput(loss=loss, logits=logits))
    assert len(leaves) == 2 and all(isinstance(leaf, torch.Tensor) for leaf in leaves)
    rebuilt = pytree.tree_unflatten(leaves, spec)
    assert rebuilt.loss is loss and rebuilt.logits is logits
