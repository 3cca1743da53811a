"""minipt.ops.onednn: the probe, the packed linear against F.linear / addmm, the fallback and its switch.

The recurrent layers' parity tests run through both sides too (tests/test_rnn.py, backends
"fused-onednn" and "fused-fallback").
"""

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_error_ratio
from minipt.ops import onednn

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture
def fresh_probe(monkeypatch):
    """A probe that has not run yet, whatever earlier tests did, packing from the first row."""
    monkeypatch.setattr(onednn, "_probed", {})
    monkeypatch.setattr(onednn, "MIN_ROWS", 0)
    monkeypatch.delenv(onednn.ENV_SWITCH, raising=False)


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
    # oneDNN's blocked matmul and torch's sum the products in other orders: each is held to torch's own
    # float32 error against float64 (tests/helpers.py), whichever kernels this CPU runs
    expected = F.linear(x.double(), weight.double(), bias.double())
    added = other.double() + F.linear(x.double(), weight.double())
    assert_error_ratio(onednn.linear_packed(x, packed, bias), F.linear(x, weight, bias), expected, what="linear with bias")
    assert_error_ratio(onednn.linear_packed(x, packed), F.linear(x, weight), expected - bias.double(), what="linear")
    assert_error_ratio(onednn.linear_add(x, packed, other), torch.addmm(other, x, weight.t()), added, what="linear_add")


@needs_onednn
def test_probe_runs_once_and_lazily(fresh_probe, monkeypatch):
    assert onednn._probed == {}
    calls = []
    real = onednn._probe_failure
    monkeypatch.setattr(onednn, "_probe_failure", lambda dtype: calls.append(1) or real(dtype))
    assert onednn.available() and onednn.available()
    assert calls == [1] and onednn._probed == {torch.float32: None}  # no failure found


def test_env_switch_turns_it_off_without_probing(fresh_probe, monkeypatch):
    monkeypatch.setenv(onednn.ENV_SWITCH, "0")
    assert not onednn.available()
    assert onednn._probed == {}
    assert onednn.pack(torch.randn(4, 3), 2, 2).packed is None


def _raise(*args, **kwargs):
    raise RuntimeError("no such kernel")


class _Zeros:
    """An op with the overloads of mkldnn._linear_pointwise that answers zeros of the right shape."""

    @staticmethod
    def default(rows, packed, bias, *args):
        return rows.new_zeros(rows.shape[0], 4)  # the probe's weight has 4 outputs

    @staticmethod
    def binary(rows, residual, packed, bias, *args):
        return torch.zeros_like(residual)

    def __call__(self, rows, packed, bias, *args):
        return self.default(rows, packed, bias)


_zeros = _Zeros()


@pytest.mark.parametrize(
    "breakage, reason",
    [
        (lambda mp: mp.setattr(torch.backends.mkldnn, "is_available", lambda: False), "built without oneDNN"),
        (lambda mp: mp.setattr(torch.ops.mkldnn, "_reorder_linear_weight", _raise), "RuntimeError: no such kernel"),  # an op that fails
        (lambda mp: mp.setattr(torch.ops.mkldnn, "_linear_pointwise", _zeros), "differs from plain torch"),  # a wrong answer
    ],
    ids=["not-built", "op-fails", "wrong-answer"],
)
def test_probe_failure_selects_the_fallback(fresh_probe, monkeypatch, breakage, reason):
    breakage(monkeypatch)
    assert not onednn.available() and reason in onednn.unavailable_because()
    weight, x = torch.randn(5, 3), torch.randn(2, 3)
    packed = onednn.pack(weight, 2, 2)
    assert packed.packed is None
    assert torch.equal(onednn.linear_packed(x, packed), F.linear(x, weight))


def test_no_packing_off_cpu_float32_or_below_min_rows(monkeypatch):
    monkeypatch.delenv(onednn.ENV_SWITCH, raising=False)
    assert onednn.pack(torch.randn(4, 3, dtype=torch.float64), 2, 1000).packed is None
    assert onednn.pack(torch.randn(4, 3), 2, onednn.MIN_ROWS - 1).packed is None
