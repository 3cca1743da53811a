"""torch.compile(fullgraph=True) and torch.export.export work for every model, on every backend.

Input validation must not break the graph: shape checks trace as they are,
value checks are skipped while tracing (``minipt.checks``). Each model class
found in minipt.models (tests/test_protocol.py) needs example inputs here.
The recurrent layers (minipt.nn.LSTM, GRU, RNN) are tested on their own too,
with gradients, and with oneDNN's packed matmul in reach of the trace.
"""

import copy
import warnings

import pytest
import torch
from torch.utils._pytree import tree_leaves

import minipt.nn
from helpers import assert_error_ratio
from minipt.ops import onednn
from minipt import registry
from test_protocol import TINY, model_classes

# class name -> example (args, kwargs), as each family declares them (padded batches where the model takes a mask)
INPUTS = {cls.__name__: (lambda f=family, c=cls: f.inputs(c)) for family in registry.families() for cls in family.classes}
PIPELINES = {"SentenceEncoder"}  # tokenizer + model: its model part (BertModel) is covered
BACKENDS = ("math", "torch", "fused")
# Blocks that compute differently on each backend (a Linear differs only in training); a class holding one is
# compiled and exported on every backend, the others (the convolutional networks) on "torch".
PER_BACKEND = (minipt.nn.MultiHeadAttention, minipt.nn.LayerNorm, minipt.nn.GELU, minipt.nn.LSTM, minipt.nn.GRU, minipt.nn.RNN)
HAS_BACKENDS = {name for name in INPUTS if any(isinstance(m, PER_BACKEND) for m in TINY[name][0]().modules())}


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


@pytest.mark.usefixtures("fresh_compiler")
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


# -- the recurrent layers ------------------------------------------------------------------------------
LAYERS = {  # two layers, both directions
    "LSTM": lambda: minipt.nn.LSTM(3, 5, num_layers=2, bidirectional=True),
    "LSTM-proj": lambda: minipt.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, batch_first=True),
    "GRU": lambda: minipt.nn.GRU(3, 5, num_layers=2, bidirectional=True),
    "RNN": lambda: minipt.nn.RNN(3, 5, num_layers=2, bidirectional=True, nonlinearity="relu"),
}


@pytest.fixture
def onednn_unprobed(monkeypatch):
    """oneDNN not probed yet and packing from the first row: in eager mode the fused backend would probe and
    pack W_hh here, so a trace that did either (private ops without a shape-only implementation) shows."""
    monkeypatch.setattr(onednn, "_probed", {})
    monkeypatch.setattr(onednn, "MIN_ROWS", 0)
    monkeypatch.delenv(onednn.ENV_SWITCH, raising=False)


def _layer(kind, backend):
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    layer.backend = backend
    return layer, torch.randn(4, 2, 3)  # (T, B, I); (B, T, I) for batch_first: the same shape here


def _flat(result):
    output, state = result
    return [output, *(state if isinstance(state, tuple) else (state,))]


def _grads(flat, cotangents, layer):
    return list(torch.autograd.grad(sum((t * c).sum() for t, c in zip(flat, cotangents)), list(layer.parameters())))


@pytest.mark.usefixtures("fresh_compiler")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", LAYERS)
def test_rnn_layer_compile_fullgraph(kind, backend, onednn_unprobed):
    """One graph with its backward; outputs and gradients as accurate as eager mode's, measured against float64
    (eager "fused" may run oneDNN's matmul where the graph holds its fallback, and the "torch" LSTM traces
    torch's decomposition of its kernel: the same function, summed in other orders)."""
    torch._dynamo.reset()
    layer, x = _layer(kind, backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        actual = _flat(torch.compile(layer, fullgraph=True, backend="aot_eager")(x))
    assert onednn._probed == {}, "oneDNN was probed while tracing"
    cotangents = [torch.randn_like(t) for t in actual]
    actual_grads = _grads(actual, cotangents, layer)
    expected = _flat(layer(x))
    expected_grads = _grads(expected, cotangents, layer)
    layer64 = copy.deepcopy(layer).double()
    exact = _flat(layer64(x.double()))
    exact_grads = _grads(exact, [c.double() for c in cotangents], layer64)
    assert_error_ratio(actual, expected, exact, scale=1.0, what="outputs and final states")
    assert_error_ratio(actual_grads, expected_grads, exact_grads, scale=1.0, what="parameter gradients")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", LAYERS)
def test_rnn_layer_export(kind, backend, onednn_unprobed):
    layer, x = _layer(kind, backend)
    with torch.no_grad():
        exported = torch.export.export(layer, (x,))
        assert onednn._probed == {}, "oneDNN was probed while tracing"
        actual = _flat(exported.module()(x))
        expected, exact = _flat(layer(x)), _flat(copy.deepcopy(layer).double()(x.double()))
    assert_error_ratio(actual, expected, exact, scale=1.0, what="outputs and final states")
