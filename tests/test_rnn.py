"""minipt.nn.RNN / LSTM / GRU against torch.nn.RNN / LSTM / GRU on the same weights.

Random configurations (hypothesis) cover layers, directions, sizes, batch_first,
bias, proj_size, unbatched input, packed batches with unsorted lengths and
initial states, on every backend: "math" (the cells of rnn_cells.py step by
step), "torch" (torch's recurrent kernel on minipt's parameters) and "fused"
(rnn_fused.py: minipt.ops.recurrent's layers: the gate ops, a hand-written backward), the last with
oneDNN's packed matmul forced on ("fused-onednn") and forced off through
MINIPT_ONEDNN=0 ("fused-fallback"). Compared: outputs, final states and the
gradients of the input, the initial states and every parameter.

How close is close enough depends on what is compared (tests/helpers.py):

- "torch" against torch.nn: the same torch._VF kernel on the same weights, so
  1e-5 absolute (ATOL);
- "math" and "fused" against torch.nn, and "fused" against the math cells: two
  computations that round in their own order (by how much depends on the CPU's
  instruction set and thread count), so each float32 result is measured against
  a float64 run of the same function, an error ratio with a floor of a few ulps
  at the gates' magnitude 1 (GATES).
"""

import copy
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence

import minipt.nn
from minipt.nn import rnn_cells, rnn_fused, use_backend
from minipt.nn.rnn_cells import gru_cell, lstm_cell, math_layer, rnn_cell
from minipt.nn.rnn_fused import fused_layer
from helpers import ATOL, assert_error_ratio, max_diff, rel_diff
from minipt.ops import gru_gates_reference, lstm_gates_reference, onednn, recurrent
from minipt.ops.recurrent import _GRULayer, _LSTMLayer, _RNNLayer

BACKENDS = ["math", "torch", "fused", "fused-onednn", "fused-fallback"]  # the last two: matmuls(backend)
KINDS = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]
# The gates work at magnitude 1 whatever the size of the outputs (sigmoid is about 0.5, tanh near +-1 where it
# saturates): the error-ratio floor is counted in ulps at 1.
GATES = dict(scale=1.0)
# Where no float64 run gives the exact values (a float64 run need not draw the same dropout masks), two float32
# results of small stacks are compared relative to the largest |value|: 1e-5 is about 80 float32 ulps there,
# room for the few differently ordered roundings per gate through three layers, while a dropout mask in the
# wrong place or a missing layer changes values by their own size.
RTOL = 1e-5


def build(kind, **config):
    """The torch.nn module and minipt's, holding the same weights (minipt loads torch's state dict)."""
    name = "RNN" if kind.startswith("RNN") else kind
    if name == "RNN":
        config["nonlinearity"] = "tanh" if kind == "RNN_TANH" else "relu"
    reference = getattr(torch.nn, name)(**config)
    ours = getattr(minipt.nn, name)(**config)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def run(module, backend, x, hx, lengths, batch_first):
    """Forward (packing ``x`` when lengths are given); returns the flat outputs and the tensors to differentiate."""
    inputs = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False) if lengths is not None else x
    with use_backend(backend.split("-")[0]):
        output, state = module(inputs, hx)
    if lengths is not None:
        assert isinstance(output, torch.nn.utils.rnn.PackedSequence)
        output = output.data
    return [output] + (list(state) if isinstance(state, tuple) else [state])


def forward_and_grads(module, backend, x, hx, lengths, batch_first, cotangents=None):
    flat = run(module, backend, x, hx, lengths, batch_first)
    if cotangents is None:
        cotangents = [torch.randn_like(t) for t in flat]
    loss = sum((t * c).sum() for t, c in zip(flat, cotangents))
    leaves = [x] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx])
    grads = torch.autograd.grad(loss, leaves + list(module.parameters()))
    return flat, list(grads), cotangents


def float64_run(module, backend, x, hx, lengths, batch_first, cotangents):
    """The same forward and gradients in float64 (a copy of ``module``): the exact values float32 runs are measured against."""
    module = copy.deepcopy(module).double()
    as_leaf = lambda t: t.detach().double().requires_grad_()  # noqa: E731
    x = as_leaf(x)
    hx = None if hx is None else tuple(map(as_leaf, hx)) if isinstance(hx, tuple) else as_leaf(hx)
    flat, grads, _ = forward_and_grads(module, backend, x, hx, lengths, batch_first, [c.double() for c in cotangents])
    return flat, grads


def flat_outputs(out):
    """The output (the packed data for a packed batch) and the final states of an RNN call, as a list."""
    output, state = out
    output = output.data if isinstance(output, torch.nn.utils.rnn.PackedSequence) else output
    return [output] + (list(state) if isinstance(state, tuple) else [state])


def assert_matches_torch_nn(backend, got, expected, exact, what):
    """minipt on ``backend`` (``got``) against torch.nn (``expected``): within 1e-5 where both run torch's kernel
    ("torch"), else at most RATIO times torch.nn's own float32 error against float64 (``exact``)."""
    if backend == "torch":
        assert max_diff(got, expected) <= ATOL, f"{what} differ from torch.nn's (the same kernel)"
    else:
        assert_error_ratio(got, expected, exact, what=what, **GATES)


@st.composite
def configs(draw):
    kind = draw(st.sampled_from(KINDS))
    hidden = draw(st.integers(1, 7))
    config = dict(
        input_size=draw(st.integers(1, 6)),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
    )
    if kind == "LSTM" and hidden > 1 and draw(st.booleans()):
        config["proj_size"] = draw(st.integers(1, hidden - 1))
    layout = draw(st.sampled_from(["batched", "packed", "unbatched"]))
    batch = draw(st.integers(1, 4))
    steps = draw(st.integers(1, 6))
    lengths = None
    if layout == "packed":  # unsorted lengths, at least one full-length sequence
        lengths = draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
        lengths[draw(st.integers(0, batch - 1))] = steps
    with_state = draw(st.booleans())
    backend = draw(st.sampled_from(BACKENDS))
    return kind, config, layout, batch, steps, lengths, with_state, backend


@contextmanager
def matmuls(backend):
    """``fused-onednn``: oneDNN's prepacked matmul even for tiny batches (by default it applies from
    ``onednn.MIN_ROWS`` steps x batch, on CPU in float32); ``fused-fallback``: the same with
    ``MINIPT_ONEDNN=0``, so the plain torch fallback runs; otherwise the defaults."""
    saved_rows, saved_env = onednn.MIN_ROWS, os.environ.get(onednn.ENV_SWITCH)
    if backend in ("fused-onednn", "fused-fallback"):
        onednn.MIN_ROWS = 0
    if backend == "fused-fallback":
        os.environ[onednn.ENV_SWITCH] = "0"
    try:
        yield
    finally:
        onednn.MIN_ROWS = saved_rows
        if saved_env is None:
            os.environ.pop(onednn.ENV_SWITCH, None)
        else:
            os.environ[onednn.ENV_SWITCH] = saved_env


def make_inputs(kind, config, layout, batch, steps, with_state):
    features = config["input_size"]
    if layout == "unbatched":
        x = torch.randn(steps, features)
    elif config["batch_first"]:
        x = torch.randn(batch, steps, features)
    else:
        x = torch.randn(steps, batch, features)
    x.requires_grad_(True)
    hx = None
    if with_state:
        layers = config["num_layers"] * (2 if config["bidirectional"] else 1)
        lead = (layers,) if layout == "unbatched" else (layers, batch)
        out_size = config.get("proj_size") or config["hidden_size"]
        h0 = torch.randn(*lead, out_size, requires_grad=True)
        hx = (h0, torch.randn(*lead, config["hidden_size"], requires_grad=True)) if kind == "LSTM" else h0
    return x, hx


@settings(max_examples=100, deadline=None)
@given(configs())
def test_matches_torch_nn(case):
    kind, config, layout, batch, steps, lengths, with_state, backend = case
    reference, ours = build(kind, **config)
    x, hx = make_inputs(kind, config, layout, batch, steps, with_state)
    lengths = torch.tensor(lengths) if lengths is not None else None
    expected, expected_grads, cotangents = forward_and_grads(reference, backend, x, hx, lengths, config["batch_first"])
    with matmuls(backend):
        got, got_grads, _ = forward_and_grads(ours, backend, x, hx, lengths, config["batch_first"], cotangents)
    exact, exact_grads = float64_run(reference, backend, x, hx, lengths, config["batch_first"], cotangents)
    assert_matches_torch_nn(backend, got, expected, exact, "outputs and final states")
    assert_matches_torch_nn(backend, got_grads, expected_grads, exact_grads, "gradients (input, initial states, parameters)")


def fused_and_math_cells(case):
    """The fused path's outputs and states, and gradients, beside the math cells' in float32 and in float64.

    The float64 run is the math cells' too: rnn_cells.py is the specification, so the fused path is held to
    the distance from *its* exact values at which the cells' own float32 run lands (RATIO times that, tests/
    helpers.py). An edit of a cell moves the float64 values with it, and the fused path is then far off."""
    kind, config, layout, batch, steps, lengths, with_state, backend = case
    backend = backend if backend.startswith("fused") else "fused"
    _, ours = build(kind, **config)
    x, hx = make_inputs(kind, config, layout, batch, steps, with_state)
    lengths = torch.tensor(lengths) if lengths is not None else None
    cells, cells_grads, cotangents = forward_and_grads(ours, "math", x, hx, lengths, config["batch_first"])
    with matmuls(backend):
        fused, fused_grads, _ = forward_and_grads(ours, backend, x, hx, lengths, config["batch_first"], cotangents)
    exact, exact_grads = float64_run(ours, "math", x, hx, lengths, config["batch_first"], cotangents)
    return (fused, cells, exact), (fused_grads, cells_grads, exact_grads)


@settings(max_examples=40, deadline=None)
@given(configs())
def test_fused_path_equals_math_cells(case):
    """The fast path (one matmul for all inputs, a hand-written backward) against the math cells."""
    outputs, grads = fused_and_math_cells(case)
    assert_error_ratio(*outputs, what="fused path against the math cells: outputs and final states", **GATES)
    assert_error_ratio(*grads, what="fused path against the math cells: gradients", **GATES)


def _scaled(bias, first=0):
    """``bias`` with its entries from ``first`` on scaled by 1 + 1e-4: a slip too small for 1e-5 absolute to see."""
    return torch.cat([bias[:first], bias[first:] * (1 + 1e-4)])


EDITED_CELLS = {  # each cell with one bias scaled by 1 + 1e-4: an edit of the equations in rnn_cells.py
    "LSTM": ("lstm_cell", lambda x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr=None: lstm_cell(x, h, c, w_ih, w_hh, b_ih, _scaled(b_hh), w_hr)),
    "GRU": ("gru_cell", lambda x, h, w_ih, w_hh, b_ih, b_hh: gru_cell(x, h, w_ih, w_hh, b_ih, _scaled(b_hh, 2 * h.shape[1]))),  # b_hn
    "RNN_TANH": ("rnn_cell", lambda x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh": rnn_cell(x, h, w_ih, w_hh, _scaled(b_ih), b_hh, nonlinearity)),
}


@pytest.mark.parametrize("kind", EDITED_CELLS)
def test_an_edited_cell_is_caught(kind, monkeypatch):
    """Edit an equation in rnn_cells.py without minipt.ops and the comparison above fails, in the
    outputs and in the gradients: the two paths cannot drift apart silently."""
    config = dict(input_size=3, hidden_size=4, num_layers=1, bias=True, batch_first=False, bidirectional=False)
    case = (kind, config, "batched", 2, 3, None, False, "fused")
    torch.manual_seed(0)
    outputs, grads = fused_and_math_cells(case)
    assert_error_ratio(*outputs, **GATES), assert_error_ratio(*grads, **GATES)  # unedited, the same case passes
    monkeypatch.setattr(rnn_cells, *EDITED_CELLS[kind])
    torch.manual_seed(0)
    outputs, grads = fused_and_math_cells(case)
    with pytest.raises(AssertionError, match="error"):
        assert_error_ratio(*outputs, **GATES)
    with pytest.raises(AssertionError, match="error"):
        assert_error_ratio(*grads, **GATES)


def _forget_bias_lstm(gates, c):
    """The LSTM gate equations with a forget-gate bias of 1 added (an edit people make)."""
    H = c.shape[1]
    return lstm_gates_reference(gates + torch.cat([torch.zeros(H), torch.ones(H), torch.zeros(2 * H)]).to(gates.dtype), c)


def _update_bias_gru(gi, gh, h):
    """The GRU gate equations with a bias of 1 added to the update gate."""
    H = h.shape[1]
    return gru_gates_reference(gi + torch.cat([torch.zeros(H), torch.ones(H), torch.zeros(H)]).to(gi.dtype), gh, h)


EDITED_GATE_MATH = {"LSTM": ("lstm_gates_reference", _forget_bias_lstm), "GRU": ("gru_gates_reference", _update_bias_gru)}


@pytest.mark.parametrize("kind", EDITED_GATE_MATH)
def test_an_edit_of_the_gate_equations_reaches_both_paths(kind, monkeypatch):
    """The gate equations are written once (the ops' reference, which the math cells and the fast
    path both call): an edit there changes both paths' outputs alike, and the fast path's hand-written
    backward, not edited with it, is caught by the gradient comparison."""
    config = dict(input_size=3, hidden_size=4, num_layers=1, bias=True, batch_first=False, bidirectional=False)
    case = (kind, config, "batched", 2, 3, None, False, "fused")
    name, edited = EDITED_GATE_MATH[kind]
    torch.manual_seed(0)
    (unedited, *_), _ = fused_and_math_cells(case)
    for module in (rnn_cells, recurrent):  # where each path looks the reference up: the cells, the fast path
        monkeypatch.setattr(module, name, edited)
    torch.manual_seed(0)
    outputs, grads = fused_and_math_cells(case)
    assert_error_ratio(*outputs, what="both paths run the edited equations", **GATES)
    assert max_diff(outputs[0], unedited) > 1e-2, "the edit changed nothing"
    with pytest.raises(AssertionError, match="error"):
        assert_error_ratio(*grads, **GATES)


@pytest.mark.parametrize("matmul", ["fused", "fused-onednn", "fused-fallback"])
@pytest.mark.parametrize("kind", KINDS)
def test_inference_without_grad_matches_torch(kind, matmul):
    """The no-grad fused loop (gate math in place, nothing kept for backward)."""
    reference, ours = build(kind, input_size=5, hidden_size=8, num_layers=2, bidirectional=True)
    reference64 = copy.deepcopy(reference).double()
    x = torch.randn(7, 3, 5)
    lengths = torch.tensor([4, 7, 2])
    with torch.no_grad(), matmuls(matmul), use_backend("fused"):
        for packed in (False, True):
            inputs, inputs64 = (pack_padded_sequence(t, lengths, enforce_sorted=False) if packed else t for t in (x, x.double()))
            expected, got, exact = flat_outputs(reference(inputs)), flat_outputs(ours(inputs)), flat_outputs(reference64(inputs64))
            assert_error_ratio(got, expected, exact, what="packed" if packed else "padded", **GATES)
    if matmul == "fused-onednn" and torch.backends.mkldnn.is_available():
        assert onednn.available()  # the prepacked oneDNN matmul really ran


@pytest.mark.parametrize("backend", ["math", "torch", "fused"])
def test_packed_output_keeps_the_packing(backend):
    reference, ours = build("LSTM", input_size=3, hidden_size=4)
    sequences = [torch.randn(n, 3) for n in (2, 5, 3)]
    for packed in (pack_sequence(sequences, enforce_sorted=False), pack_sequence(sorted(sequences, key=len, reverse=True))):
        expected, _ = reference(packed)
        with use_backend(backend):
            got, _ = ours(packed)
        exact, _ = copy.deepcopy(reference).double()(torch.nn.utils.rnn.PackedSequence(packed.data.double(), *packed[1:]))
        assert torch.equal(got.batch_sizes, expected.batch_sizes)
        for a, b in ((got.sorted_indices, expected.sorted_indices), (got.unsorted_indices, expected.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
        assert_matches_torch_nn(backend, got.data, expected.data, exact.data, "packed outputs")


# -- gradcheck in float64 -------------------------------------------------------------------------
def _weights(gates, in_size, hidden, out_size=None, proj=False, bias=True):
    out_size = out_size or hidden
    w = lambda *shape: (torch.randn(*shape, dtype=torch.float64) * 0.5).requires_grad_()  # noqa: E731
    return (
        w(gates * hidden, in_size),
        w(gates * hidden, out_size),
        w(gates * hidden) if bias else None,
        w(gates * hidden) if bias else None,
        w(out_size, hidden) if proj else None,
    )


def test_gradcheck_reference_cells():
    x, h, c = (torch.randn(2, n, dtype=torch.float64, requires_grad=True) for n in (3, 4, 4))
    w_ih, w_hh, b_ih, b_hh, _ = _weights(4, 3, 4)
    assert torch.autograd.gradcheck(lambda *a: lstm_cell(*a), (x, h, c, w_ih, w_hh, b_ih, b_hh))
    h_p = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    w_ih, w_hh, b_ih, b_hh, w_hr = _weights(4, 3, 4, out_size=2, proj=True)
    assert torch.autograd.gradcheck(lambda *a: lstm_cell(*a), (x, h_p, c, w_ih, w_hh, b_ih, b_hh, w_hr))
    w_ih, w_hh, b_ih, b_hh, _ = _weights(3, 3, 4)
    assert torch.autograd.gradcheck(gru_cell, (x, h, w_ih, w_hh, b_ih, b_hh))
    w_ih, w_hh, b_ih, b_hh, _ = _weights(1, 3, 4)
    assert torch.autograd.gradcheck(rnn_cell, (x, h, w_ih, w_hh, b_ih, b_hh))
    assert torch.autograd.gradcheck(lambda *a: rnn_cell(*a, "relu"), (x, h, w_ih, w_hh, b_ih, b_hh))


CASES = [  # (mode, proj, bias, masked, reverse)
    ("LSTM", False, True, False, False),
    ("LSTM", True, True, True, True),
    ("LSTM", True, False, False, True),
    ("LSTM", False, True, True, False),
    ("GRU", False, True, False, False),
    ("GRU", False, True, True, True),
    ("GRU", False, False, True, False),
    ("RNN_TANH", False, True, True, True),
    ("RNN_TANH", False, False, False, False),
    ("RNN_RELU", False, True, True, False),
]


@pytest.mark.parametrize("mode, proj, bias, masked, reverse", CASES)
@pytest.mark.parametrize("layer_fn", [fused_layer, math_layer], ids=["fused", "math"])
def test_gradcheck_layer(layer_fn, mode, proj, bias, masked, reverse):
    """The hand-written backward through time (fused) and autograd through the cells (math), in float64."""
    T, B, I, H = 4, 3, 3, 4
    P = 2 if proj else H
    weights = _weights({"LSTM": 4, "GRU": 3}.get(mode, 1), I, H, out_size=P, proj=proj, bias=bias)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, P, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    mask = (torch.arange(T)[:, None] < torch.tensor([4, 2, 1])[None, :]).unsqueeze(2) if masked else None
    if mode == "RNN_RELU":  # keep pre-activations away from relu's kink, where finite differences fail
        with torch.no_grad():
            weights[0].abs_(), weights[1].abs_(), x.abs_(), h0.abs_()
    tensors = [t for t in (x, h0, c0) + weights if t is not None] if mode == "LSTM" else [t for t in (x, h0) + weights if t is not None]

    def fn(*args):
        it = iter(args)
        x_, h_ = next(it), next(it)
        state = (h_, next(it)) if mode == "LSTM" else (h_,)
        ws = tuple(next(it) if w is not None else None for w in weights)
        out, final = layer_fn(mode, x_, state, ws, mask, reverse)
        return (out,) + tuple(final)

    assert torch.autograd.gradcheck(fn, tuple(tensors))


def test_fused_layer_uses_the_hand_written_backward():
    """Training on the fused path goes through the autograd Functions, not autograd over the loop."""
    _, ours = build("LSTM", input_size=3, hidden_size=4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    names = set()
    for kind, cls in (("LSTM", _LSTMLayer), ("GRU", _GRULayer), ("RNN_TANH", _RNNLayer)):
        _, ours = build(kind, input_size=3, hidden_size=4)
        with use_backend("fused"):
            output, _ = ours(x)
        names.add(output.grad_fn.name())
        assert cls.__name__ in output.grad_fn.name()
    assert len(names) == 3


# -- construction, parameters, loading ---------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_parameter_names_and_seeded_initialisation_match_torch(kind):
    config = dict(input_size=5, hidden_size=6, num_layers=2, bidirectional=True)
    if kind == "LSTM":
        config["proj_size"] = 3
    name = "RNN" if kind.startswith("RNN") else kind
    if name == "RNN":
        config["nonlinearity"] = "tanh" if kind == "RNN_TANH" else "relu"
    torch.manual_seed(7)
    reference = getattr(torch.nn, name)(**config)
    torch.manual_seed(7)
    ours = getattr(minipt.nn, name)(**config)
    expected, got = reference.state_dict(), ours.state_dict()
    assert list(got) == list(expected)  # same names, same order
    for key in expected:
        assert torch.equal(got[key], expected[key]), key  # same uniform(-1/sqrt(H), 1/sqrt(H)) draws
        assert got[key].abs().max() <= 1 / 6**0.5
    assert [[p.shape for p in group] for group in ours.all_weights] == [[p.shape for p in group] for group in reference.all_weights]


def test_attributes_match_torch():
    reference, ours = build("LSTM", input_size=5, hidden_size=6, num_layers=2, batch_first=True, proj_size=2, dropout=0.25)
    for attribute in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size", "mode"):
        assert getattr(ours, attribute) == getattr(reference, attribute), attribute
    ours.flatten_parameters()  # a no-op, kept for code written for torch.nn


def test_dtype_and_device_arguments():
    reference, ours = build("GRU", input_size=3, hidden_size=4, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    assert (ours(x)[0] - reference(x)[0]).abs().max() <= 1e-12  # the default backend, "torch": the same kernel


@pytest.mark.parametrize("backend", ["fused", "torch", "math"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_dropout_between_layers(kind, backend):
    config = dict(input_size=4, hidden_size=6, num_layers=3, dropout=0.5, bidirectional=True)
    reference, ours = build(kind, **config)
    x = torch.randn(5, 3, 4)
    # eval mode: no dropout at all, as torch.nn
    reference.eval(), ours.eval()
    exact = run(copy.deepcopy(reference).double(), backend, x.double(), None, None, False)
    assert_matches_torch_nn(backend, run(ours, backend, x, None, None, False), run(reference, backend, x, None, None, False), exact, "eval")
    # training: the same masks as torch.nn under the same seed (dropout draws the same random numbers)
    reference.train(), ours.train()
    torch.manual_seed(3)
    expected = run(reference, backend, x, None, None, False)
    torch.manual_seed(3)
    got = run(ours, backend, x, None, None, False)
    if backend == "torch":  # the same kernel, the same masks
        assert max_diff(expected, got) <= ATOL
    else:  # no float64 run draws the same masks: relative to the values' magnitude (RTOL)
        assert max(rel_diff(a, b) for a, b in zip(got, expected)) <= RTOL
    # ... and it equals single-layer modules chained by hand with F.dropout between them, never after the last
    singles = []
    for layer in range(3):
        single = build(kind, input_size=4 if layer == 0 else 12, hidden_size=6, bidirectional=True)[1]
        single.load_state_dict({k.replace(f"_l{layer}", "_l0"): v for k, v in ours.state_dict().items() if f"_l{layer}" in k})
        singles.append(single)
    torch.manual_seed(3)
    hidden = x
    for layer, single in enumerate(singles):
        hidden, _ = run(single, backend, hidden, None, None, False)[:2]
        if layer < 2:
            hidden = torch.nn.functional.dropout(hidden, 0.5, training=True)
    assert max_diff(hidden, got[0]) <= ATOL  # the same layer code on the same inputs, layer by layer


def test_dropout_on_one_layer_does_nothing():
    with pytest.warns(UserWarning, match="between layers"):
        _, ours = build("GRU", input_size=3, hidden_size=4, dropout=0.5)
    x = torch.randn(5, 2, 3)
    ours.train()
    training_output = ours(x)[0]
    ours.eval()
    assert torch.equal(training_output, ours(x)[0])


def test_import_probes_nothing_and_nothing_is_torchscript():
    """oneDNN is probed on first use, not at import; no recurrent code is compiled with TorchScript."""
    code = "import minipt, minipt.nn, minipt.ops.onednn as o; assert not o._probed; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "ok"
    for module in (rnn_cells, rnn_fused, minipt.nn.rnn, recurrent):
        assert "torch.jit" not in open(module.__file__).read(), module.__name__


@pytest.mark.parametrize("backend", ["math", "torch", "fused"])
def test_generation_step_by_step_equals_whole_sequence(backend):
    """Feeding the state back one step at a time gives the whole-sequence output (no grad).

    The two round differently (one input projection for all steps against one per step), so each is held
    to torch.nn's own float32 error against a float64 run of the whole sequence."""
    reference, ours = build("LSTM", input_size=3, hidden_size=5, num_layers=2)
    x = torch.randn(6, 1, 3)
    with torch.no_grad(), use_backend(backend):
        whole = flat_outputs(ours(x))
        state = None
        steps = []
        for t in range(6):
            out, state = ours(x[t : t + 1], state)
            steps.append(out)
        expected, exact = flat_outputs(reference(x)), flat_outputs(copy.deepcopy(reference).double()(x.double()))
    assert_matches_torch_nn(backend, whole, expected, exact, "whole sequence")
    assert_error_ratio([torch.cat(steps), *state], expected, exact, what="step by step", **GATES)


@pytest.mark.parametrize("backend", ["torch", "math", "fused"])
@pytest.mark.parametrize("kind, bias, edit, name", [
    ("LSTM", True, "prune", "bias_hh_l0"),
    ("RNN", False, "prune", "weight_ih_l0"),  # without biases a reordered list swaps W_ih and W_hh
    ("GRU", True, "prune", "weight_hh_l1"),
    ("LSTM", True, "weight_norm", "weight_hh_l0"),
    ("GRU", False, "orthogonal", "weight_hh_l1"),
])
def test_pruned_and_parametrized_weights_reach_every_backend(backend, kind, bias, edit, name):
    """torch.nn.utils.prune and parametrizations replace a weight under its name (the original moves to
    ``*_orig`` or ``parametrizations.*``): every backend computes with the edited weight, as torch.nn does."""
    from torch.nn.utils import parametrizations, prune

    torch.manual_seed(0)
    reference = getattr(torch.nn, kind)(5, 5, num_layers=2, bias=bias)
    ours = getattr(minipt.nn, kind)(5, 5, num_layers=2, bias=bias)
    ours.load_state_dict(reference.state_dict())
    for module in (reference, ours):
        torch.manual_seed(1)
        if edit == "prune":
            prune.l1_unstructured(module, name, amount=0.5)
        else:
            getattr(parametrizations, edit)(module, name)
    x = torch.randn(4, 3, 5)
    expected = reference(x)[0]
    expected.sum().backward()
    with minipt.nn.use_backend(backend):
        got = ours(x)[0]
    got.sum().backward()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    for (key, a), b in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, msg=key)


def test_a_module_pickled_before_its_weight_names_were_kept_still_runs():
    lstm = minipt.nn.LSTM(3, 4)
    state = lstm.__getstate__()
    del state["_weight_names"]  # what an older minipt pickled
    old = minipt.nn.LSTM.__new__(minipt.nn.LSTM)
    old.__setstate__(state)
    x = torch.randn(2, 1, 3)
    assert torch.equal(old(x)[0], lstm(x)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", ["torch", "math", "fused"])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_under_autocast_as_torch_nn(kind, backend, dtype):
    """Under CPU autocast a reduced-precision input (a Linear's output there) meets float32 weights: no dtype error,
    an output near torch.nn's (rounding: within 2 ulps at the output's magnitude). Where torch.nn.LSTM cannot
    build oneDNN's primitive for the dtype (bfloat16 on an AVX2 CPU, float16 on most), minipt still computes it,
    and the reference is what autocast asks for: torch.nn's module in that dtype on the lowered input."""
    torch.manual_seed(0)
    reference = getattr(torch.nn, kind)(4, 4)
    ours = getattr(minipt.nn, kind)(4, 4)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 2, 4).to(dtype)
    for given in (x, x.float()):  # a Linear's reduced output, or float32 input (autocast lowers LSTM and RNN, not GRU)
        with torch.autocast("cpu", dtype=dtype), use_backend(backend):
            got = ours(given)[0]
            try:
                expected = reference(given)[0]
            except RuntimeError as err:
                assert kind == "LSTM" and "primitive descriptor" in str(err), err
                expected = copy.deepcopy(reference).to(dtype)(given.to(dtype))[0]
        assert got.dtype == expected.dtype == (torch.float32 if kind == "GRU" and given.dtype == torch.float32 else dtype)
        torch.testing.assert_close(got.float(), expected.float(), atol=2 * torch.finfo(dtype).eps, rtol=0)
    deep = getattr(minipt.nn, kind)(4, 4, num_layers=2)
    deep.backend = backend
    with torch.autocast("cpu", dtype=dtype), use_backend(backend):  # training under autocast: the fused path's own backward,
        loss = deep(x.float().requires_grad_())[0].float().square().sum()
    loss.backward()  # outside autocast, as its documentation has it
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in deep.parameters())
    packed = pack_padded_sequence(x.float(), torch.tensor([3, 2]))  # a packed float32 sequence: an LSTM keeps float32, as torch.nn
    with torch.autocast("cpu", dtype=dtype), use_backend(backend):
        got, expected = ours(packed)[0].data, reference(packed)[0].data
    assert got.dtype == expected.dtype == (dtype if kind == "RNN" else torch.float32)
    torch.testing.assert_close(got.float(), expected.float(), atol=4 * torch.finfo(dtype).eps, rtol=0)
    if kind == "LSTM":  # with proj_size torch lowers a packed LSTM after all
        projected, theirs = minipt.nn.LSTM(4, 4, proj_size=2), torch.nn.LSTM(4, 4, proj_size=2)
        theirs.load_state_dict(projected.state_dict())
        with torch.autocast("cpu", dtype=dtype), use_backend(backend):
            assert projected(packed)[0].data.dtype == theirs(packed)[0].data.dtype == dtype
    from minipt.errors import InputError

    with pytest.raises(InputError, match=f"input dtype {dtype} differs"):
        ours(x)  # outside autocast the mismatch is named, as before
