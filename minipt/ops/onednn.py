"""A linear layer whose weight is prepacked for oneDNN, with a plain-torch fallback: the one module
that touches torch's private oneDNN ops (``torch.ops.mkldnn._reorder_linear_weight`` and
``torch.ops.mkldnn._linear_pointwise``).

The recurrent layers' fused path multiplies the same weight W_hh by a small (batch, H) matrix at
every time step. oneDNN's matmul with the weight reordered once into its blocked layout is faster
there than ``torch.addmm`` on CPU (it is what torch.nn's own CPU kernels use). The ops are
private and may change or vanish in any torch release, so:

- ``available()`` probes them once, lazily (on first use, never at import): they exist, run, and
  give ``F.linear``'s answer on a tiny input. Any failure, or ``MINIPT_ONEDNN=0`` in the
  environment, selects the fallback;
- ``pack`` returns a ``PackedWeight`` that holds the plain weight always and the oneDNN copy only
  where it applies (CPU, float32, the probe passed, enough rows to pay for the packing, and not
  while torch.compile or torch.export traces: the ops have no shape-only implementation, and a
  probe run on traced tensors would judge nothing, so a traced graph holds the fallback);
- ``linear`` / ``linear_add`` compute ``x W^T + bias`` / ``other + x W^T`` with whichever is
  there, ``torch.addmm`` / ``F.linear`` otherwise: the same results to float32 rounding.

Neither op has a derivative: callers use them inside an autograd.Function or without grad.
The weight is packed per call and never cached, so an in-place update of a parameter cannot leave
a stale copy behind. Tests: tests/test_onednn.py, and tests/test_rnn.py runs the recurrent
parity tests with the oneDNN path forced on and forced off.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import tracing

ENV_SWITCH = "MINIPT_ONEDNN"  # "0" turns the oneDNN path off (the fallback runs)
MIN_ROWS = 64  # rows multiplied in all (steps x batch) below which packing costs more than it saves
_probed: dict = {}  # "ok": the probe's verdict, once it ran


def _probe() -> bool:
    """The ops exist, run, and agree with F.linear on a tiny input (with a bias and with an added tensor)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        weight = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (out 2, in 3)
        x, bias, other = torch.tensor([[1.0, -1.0, 2.0]]), torch.tensor([0.5, -0.5]), torch.tensor([[10.0, 20.0]])
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        with_bias = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        added = torch.ops.mkldnn._linear_pointwise(x, other, packed, None, "add")
        expected = F.linear(x, weight, bias)  # [[5.5, 10.5]]
        return bool(torch.equal(with_bias, expected) and torch.equal(added, other + F.linear(x, weight)))
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        return False


def available() -> bool:
    """Whether oneDNN's packed linear is used (probed once; ``MINIPT_ONEDNN=0`` says no)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    if "ok" not in _probed:
        _probed["ok"] = _probe()
    return _probed["ok"]


class PackedWeight(NamedTuple):
    weight: Tensor  # (out, in), as nn.Linear stores it
    packed: Optional[Tensor]  # the same weight in oneDNN's layout, or None: the fallback runs


def pack(weight: Tensor, batch: int, rows: int) -> PackedWeight:
    """``weight`` (out, in) ready for products with (``batch``, in) matrices, ``rows`` rows in all."""
    use = weight.device.type == "cpu" and weight.dtype == torch.float32 and rows >= MIN_ROWS and not tracing() and available()
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), batch) if use else None
    return PackedWeight(weight, packed)


def linear(x: Tensor, weight: PackedWeight, bias: Optional[Tensor] = None) -> Tensor:
    """``x W^T + bias``: (B, in) -> (B, out)."""
    if weight.packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, weight.packed, bias, "none", [], "")
    return F.linear(x, weight.weight, bias)


def linear_add(x: Tensor, weight: PackedWeight, other: Tensor) -> Tensor:
    """``other + x W^T``: (B, in) -> (B, out), the sum taken inside the matrix multiply."""
    if weight.packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, other, weight.packed, None, "add")
    return torch.addmm(other, x, weight.weight.t())
