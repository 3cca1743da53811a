"""torch.compile(fullgraph=True) and torch.export.export work for every model, on every backend.

Input validation must not break the graph: shape checks trace as they are,
value checks are skipped while tracing (``minipt.checks``). Each model class
found in minipt.models (tests/test_protocol.py) needs example inputs here.
"""

import warnings

import pytest
import torch
from torch.utils._pytree import tree_leaves

import minipt.nn
from test_protocol import TINY, _ids, _images, model_classes

# class name -> example (args, kwargs); padded batches where the model takes a mask
INPUTS = {
    "BertModel": lambda: ((_ids(2, 5), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])), {}),
    "BertForMaskedLM": lambda: ((_ids(2, 5),), {}),
    "BertForSequenceClassification": lambda: ((_ids(2, 5), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])), {}),
    "ResNet": lambda: ((_images(2, 3, 32, 32),), {}),
    "EfficientNet": lambda: ((_images(2, 3, 32, 32),), {}),
    "CRNN": lambda: ((_images(2, 1, 64, 32),), {}),
    "G2P": lambda: ((_ids(2, 3, high=5), _ids(2, 2, high=6)), {}),
    "CharLM": lambda: ((_ids(2, 5, high=256),), {}),
    "GPT2Model": lambda: ((_ids(2, 5), torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])), {}),
    "GPT2LMHeadModel": lambda: ((_ids(2, 5),), {}),
}
PIPELINES = {"SentenceEncoder"}  # tokenizer + model: its model part (BertModel) is covered
BACKENDS = ("math", "torch", "fused")
HAS_BACKENDS = {"BertModel", "BertForMaskedLM", "BertForSequenceClassification", "CRNN", "G2P", "CharLM", "GPT2Model", "GPT2LMHeadModel"}


def test_every_model_has_example_inputs():
    assert set(INPUTS) == set(model_classes()) - PIPELINES


def _cases():
    for name in sorted(INPUTS):
        for backend in BACKENDS if name in HAS_BACKENDS else ("torch",):
            yield name, backend


def _model(name, backend):
    model = TINY[name][0]().eval()
    minipt.nn.set_backend(backend, module=model)
    return model


def _assert_same(actual, expected):
    actual, expected = tree_leaves(actual), tree_leaves(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):  # the same ops traced: equal up to fusion's reassociation
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, backend", list(_cases()))
def test_export(name, backend):
    model = _model(name, backend)
    args, kwargs = INPUTS[name]()
    with torch.no_grad():
        expected = model(*args, **kwargs)
        exported = torch.export.export(model, args, kwargs)
        _assert_same(exported.module()(*args, **kwargs), expected)


@pytest.mark.parametrize("name, backend", list(_cases()))
def test_compile_fullgraph(name, backend):
    """One graph (a break raises with fullgraph=True); aot_eager traces forward and backward without codegen."""
    torch._dynamo.reset()
    model = _model(name, backend)
    args, kwargs = INPUTS[name]()
    expected = model(*args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        actual = compiled(*args, **kwargs)
    _assert_same(actual, expected)
    sum(leaf.float().sum() for leaf in tree_leaves(actual)).backward()  # the backward graph traces too
