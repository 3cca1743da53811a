"""minipt.nn.RNN / LSTM / GRU against torch.nn.RNN / LSTM / GRU on the same weights.

Random configurations (hypothesis) cover layers, directions, sizes, batch_first,
bias, proj_size, unbatched input, packed batches with unsorted lengths and
initial states, on every backend: "math" (the cells of rnn_cells.py step by
step), "torch" (torch's recurrent kernel on minipt's parameters) and "fused"
(rnn_fused.py: minipt.ops' gate math, hand-written backward), the last with
oneDNN's packed matmul forced on ("fused-onednn") and forced off through
MINIPT_ONEDNN=0 ("fused-fallback"). Compared: outputs, final states and the
gradients of the input, the initial states and every parameter, in float32
with max abs difference <= 1e-5 (the same float32 products summed in other
orders differ by about 1e-7 at these sizes).
"""

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
from minipt.nn.rnn_fused import _GRULayer, _LSTMLayer, _RNNLayer, fused_layer
from minipt.ops import onednn

ATOL = 1e-5  # float32, absolute
BACKENDS = ["math", "torch", "fused", "fused-onednn", "fused-fallback"]  # the last two: matmuls(backend)
KINDS = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]


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


def max_diff(a, b):
    assert len(a) == len(b)
    for left, right in zip(a, b):
        assert left.shape == right.shape
    return max((left - right).abs().max().item() for left, right in zip(a, b))


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
    assert max_diff(expected, got) <= ATOL, "outputs or final states differ"
    assert max_diff(expected_grads, got_grads) <= ATOL, "gradients differ"


def fused_against_math_cells(case):
    """Largest differences (outputs and states, gradients) between the fused path and the math cells."""
    kind, config, layout, batch, steps, lengths, with_state, backend = case
    backend = backend if backend.startswith("fused") else "fused"
    _, ours = build(kind, **config)
    x, hx = make_inputs(kind, config, layout, batch, steps, with_state)
    lengths = torch.tensor(lengths) if lengths is not None else None
    cells, cells_grads, cotangents = forward_and_grads(ours, "math", x, hx, lengths, config["batch_first"])
    with matmuls(backend):
        fused, fused_grads, _ = forward_and_grads(ours, backend, x, hx, lengths, config["batch_first"], cotangents)
    return max_diff(cells, fused), max_diff(cells_grads, fused_grads)


@settings(max_examples=40, deadline=None)
@given(configs())
def test_fused_path_equals_math_cells(case):
    """The check that the equations in rnn_cells.py and the fast path (minipt.ops' gate math) agree."""
    outputs, grads = fused_against_math_cells(case)
    assert outputs <= ATOL, "the fused path and the math cells compute different outputs or states"
    assert grads <= ATOL, "the fused path and the math cells compute different gradients"


EDITED_CELLS = {  # each cell with its new state scaled by 1.01: an edit of the equations
    "LSTM": ("lstm_cell", lambda *args: tuple(1.01 * t for t in lstm_cell(*args))),
    "GRU": ("gru_cell", lambda *args: 1.01 * gru_cell(*args)),
    "RNN_TANH": ("rnn_cell", lambda *args: 1.01 * rnn_cell(*args)),
}


@pytest.mark.parametrize("kind", EDITED_CELLS)
def test_an_edited_cell_is_caught(kind, monkeypatch):
    """Edit an equation in rnn_cells.py without minipt.ops and the comparison above fails, in the
    outputs and in the gradients: the two paths cannot drift apart silently."""
    monkeypatch.setattr(rnn_cells, *EDITED_CELLS[kind])
    config = dict(input_size=3, hidden_size=4, num_layers=1, bias=True, batch_first=False, bidirectional=False)
    outputs, grads = fused_against_math_cells((kind, config, "batched", 2, 3, None, False, "fused"))
    assert outputs > 1e-3 and grads > 1e-3


@pytest.mark.parametrize("matmul", ["fused", "fused-onednn", "fused-fallback"])
@pytest.mark.parametrize("kind", KINDS)
def test_inference_without_grad_matches_torch(kind, matmul):
    """The no-grad fused loop (gate math in place, nothing kept for backward)."""
    reference, ours = build(kind, input_size=5, hidden_size=8, num_layers=2, bidirectional=True)
    x = torch.randn(7, 3, 5)
    packed = pack_padded_sequence(x, torch.tensor([4, 7, 2]), enforce_sorted=False)
    with torch.no_grad(), matmuls(matmul):
        for inputs in (x, packed):
            expected, got = reference(inputs), ours(inputs)
            flat = lambda out: [out[0].data if isinstance(out[0], torch.nn.utils.rnn.PackedSequence) else out[0]] + (  # noqa: E731
                list(out[1]) if isinstance(out[1], tuple) else [out[1]]
            )
            assert max_diff(flat(expected), flat(got)) <= ATOL
    if matmul == "fused-onednn" and torch.backends.mkldnn.is_available():
        assert onednn.available()  # the prepacked oneDNN matmul really ran


def test_packed_output_keeps_the_packing():
    reference, ours = build("LSTM", input_size=3, hidden_size=4)
    sequences = [torch.randn(n, 3) for n in (2, 5, 3)]
    for packed in (pack_sequence(sequences, enforce_sorted=False), pack_sequence(sorted(sequences, key=len, reverse=True))):
        expected, _ = reference(packed)
        got, _ = ours(packed)
        assert torch.equal(got.batch_sizes, expected.batch_sizes)
        for a, b in ((got.sorted_indices, expected.sorted_indices), (got.unsorted_indices, expected.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
        assert (got.data - expected.data).abs().max() <= ATOL


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
    assert (ours(x)[0] - reference(x)[0]).abs().max() <= 1e-12


@pytest.mark.parametrize("backend", ["fused", "torch", "math"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
def test_dropout_between_layers(kind, backend):
    config = dict(input_size=4, hidden_size=6, num_layers=3, dropout=0.5, bidirectional=True)
    reference, ours = build(kind, **config)
    x = torch.randn(5, 3, 4)
    # eval mode: no dropout at all, as torch.nn
    reference.eval(), ours.eval()
    assert max_diff(run(reference, backend, x, None, None, False), run(ours, backend, x, None, None, False)) <= ATOL
    # training: the same masks as torch.nn under the same seed (dropout draws the same random numbers)
    reference.train(), ours.train()
    torch.manual_seed(3)
    expected = run(reference, backend, x, None, None, False)
    torch.manual_seed(3)
    got = run(ours, backend, x, None, None, False)
    assert max_diff(expected, got) <= ATOL
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
    assert (hidden - got[0]).abs().max() <= ATOL


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
    for module in (rnn_cells, rnn_fused, minipt.nn.rnn):
        assert "torch.jit" not in open(module.__file__).read(), module.__name__


def test_generation_step_by_step_equals_whole_sequence():
    """Feeding the state back one step at a time gives the whole-sequence output (fused path, no grad)."""
    _, ours = build("LSTM", input_size=3, hidden_size=5, num_layers=2)
    x = torch.randn(6, 1, 3)
    with torch.no_grad(), use_backend("fused"):
        whole, (h, c) = ours(x)
        state = None
        steps = []
        for t in range(6):
            out, state = ours(x[t : t + 1], state)
            steps.append(out)
    assert (torch.cat(steps) - whole).abs().max() <= ATOL
    assert (state[0] - h).abs().max() <= ATOL and (state[1] - c).abs().max() <= ATOL
