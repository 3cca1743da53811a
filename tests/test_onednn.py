"""minipt.ops.onednn: the probe, the packed linear against F.linear / addmm, the fallback and its switch.

The recurrent layers' parity tests run through both sides too (tests/test_rnn.py, backends
"fused-onednn" and "fused-fallback").
"""

import pytest
import torch
import torch.nn.functional as F

from minipt.ops import onednn
from minipt.ops._reference_math import tanh

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture
def fresh_probe(monkeypatch):
    """A probe that has not run yet, whatever earlier tests did, packing from the first row."""
    monkeypatch.setattr(onednn, "_probed", {})
    monkeypatch.setattr(onednn, "MIN_ROWS", 0)
    monkeypatch.delenv(onednn.ENV_SWITCH, raising=False)


def assert_close_as_torch(got, torch_float32, expected64):
    """The error against float64 is at most 4x that of torch's own float32 product (plus a floor for exact cases)."""
    error = (got.double() - expected64).abs().max().item()
    torch_error = (torch_float32.double() - expected64).abs().max().item()
    assert error <= 4 * torch_error + 1e-6 * expected64.abs().max().item(), (error, torch_error)


@pytest.mark.parametrize("switch", ["onednn", "fallback"])
@pytest.mark.parametrize("batch, inputs, outputs", [(1, 3, 2), (7, 33, 65), (32, 512, 2048)])
def test_linear_matches_f_linear(fresh_probe, monkeypatch, switch, batch, inputs, outputs):
    if switch == "fallback":
        monkeypatch.setenv(onednn.ENV_SWITCH, "0")
    weight, bias = torch.randn(outputs, inputs), torch.randn(outputs)
    x, other = torch.randn(batch, inputs), torch.randn(batch, outputs)
    packed = onednn.pack(weight, batch, batch)
    if switch == "onednn" and torch.backends.mkldnn.is_available():
        assert packed.packed is not None
    if switch == "fallback":
        assert packed.packed is None and not onednn.available()
    expected = F.linear(x.double(), weight.double(), bias.double())
    added = other.double() + F.linear(x.double(), weight.double())
    assert_close_as_torch(onednn.linear_packed(x, packed, bias), F.linear(x, weight, bias), expected)
    assert_close_as_torch(onednn.linear_packed(x, packed), F.linear(x, weight), expected - bias.double())
    assert_close_as_torch(onednn.linear_add(x, packed, other), torch.addmm(other, x, weight.t()), added)


@needs_onednn
def test_probe_runs_once_and_lazily(fresh_probe, monkeypatch):
    assert onednn._probed == {}
    calls = []
    real = onednn.probe
    monkeypatch.setattr(onednn, "probe", lambda dtype=torch.float32: calls.append(1) or real(dtype))
    assert onednn.available() and onednn.available()
    assert calls == [1] and onednn._probed == {torch.float32: True}


def test_env_switch_turns_it_off_without_probing(fresh_probe, monkeypatch):
    monkeypatch.setenv(onednn.ENV_SWITCH, "0")
    assert not onednn.available()
    assert onednn._probed == {}
    assert onednn.pack(torch.randn(4, 3), 2, 2).packed is None


def _raise(*args, **kwargs):
    raise RuntimeError("no such kernel")


@pytest.mark.parametrize(
    "breakage",
    [
        lambda mp: mp.setattr(torch.backends.mkldnn, "is_available", lambda: False),  # a build without oneDNN
        lambda mp: mp.setattr(torch.ops.mkldnn, "_reorder_linear_weight", _raise),  # an op that fails
        lambda mp: mp.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: torch.zeros(1, 2)),  # a wrong answer
    ],
    ids=["not-built", "op-fails", "wrong-answer"],
)
def test_probe_failure_selects_the_fallback(fresh_probe, monkeypatch, breakage):
    breakage(monkeypatch)
    assert not onednn.available()
    weight, x = torch.randn(5, 3), torch.randn(2, 3)
    packed = onednn.pack(weight, 2, 2)
    assert packed.packed is None
    assert torch.equal(onednn.linear_packed(x, packed), F.linear(x, weight))


def test_no_packing_off_cpu_float32_or_below_min_rows(monkeypatch):
    monkeypatch.delenv(onednn.ENV_SWITCH, raising=False)
    assert onednn.pack(torch.randn(4, 3, dtype=torch.float64), 2, 1000).packed is None
    assert onednn.pack(torch.randn(4, 3), 2, onednn.MIN_ROWS - 1).packed is None


def test_tanh_through_sigmoid():
    """The references' tanh, 2 sigmoid(2x) - 1, equals torch.tanh to float rounding, tails included."""
    x = torch.cat([torch.linspace(-20, 20, 4001), torch.tensor([0.0, 1e-8, -1e-8, 88.0, -88.0, 1e4, -1e4])])
    assert (tanh(x) - torch.tanh(x)).abs().max() <= 1e-6
    x64 = x.double()
    assert (tanh(x64) - torch.tanh(x64)).abs().max() <= 1e-15
    assert torch.autograd.gradcheck(tanh, (torch.randn(7, dtype=torch.float64, requires_grad=True),))
