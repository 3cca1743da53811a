"""One LSTM step's gate math (Hochreiter & Schmidhuber, 1997) after the matrix multiplies, as one
torch op, ``minipt::lstm_gates``:

    gates = x W_ih^T + b_ih + h W_hh^T + b_hh        (B, 4H), torch.nn's order i, f, g, o
    i, f, o = sigmoid(gates_i, gates_f, gates_o),  g = tanh(gates_g)
    c' = f c + i g,   h' = o tanh(c')                 -> (h', c'), each (B, H)

Fusing it leaves one read of the gates and c and one write of h' and c' per step, instead of
a dozen elementwise kernels.

- everywhere but CUDA: ``lstm_gates_reference`` (float32 at least);
- CUDA: ``_lstm_gates_triton``. The backward, ``minipt::lstm_gates_backward``, is split the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ._layout import empty_like
from ._register import register_op


def lstm_gates_reference(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM's gate equations, written once: the ``"math"`` cells (minipt.nn.rnn_cells) and the
    fast path run this; the backward below and the Triton kernels must follow it (tested)."""
    compute = torch.promote_types(gates.dtype, torch.float32)
    i, f, g, o = gates.to(compute).chunk(4, dim=1)  # each (B, H)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)  # input, forget gates; cell candidate; output gate
    c_new = f * c.to(compute) + i * g
    h_new = o * torch.tanh(c_new)
    return h_new.to(c.dtype), c_new.to(c.dtype)


def lstm_gates_backward_reference(grad_h: Tensor, grad_c: Tensor, gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    compute = torch.promote_types(gates.dtype, torch.float32)
    i, f, g, o = gates.to(compute).chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = c.to(compute)
    tanh_c = torch.tanh(f * c + i * g)
    grad_h = grad_h.to(compute)
    grad_c = grad_c.to(compute) + grad_h * o * (1 - tanh_c * tanh_c)  # c' reaches h' through tanh
    grad_gates = torch.cat([
        grad_c * g * i * (1 - i),
        grad_c * c * f * (1 - f),
        grad_c * i * (1 - g * g),
        grad_h * tanh_c * o * (1 - o),
    ], dim=1)  # (B, 4H)
    return grad_gates.to(gates.dtype), (grad_c * f).to(gates.dtype)


lstm_gates_backward_op, lstm_gates_backward_triton = register_op(
    "lstm_gates_backward", lstm_gates_backward_reference, kernel="_lstm_gates_triton.backward",
    fake=lambda grad_h, grad_c, gates, c: (empty_like(gates), empty_like(c)),
)
lstm_gates_op, lstm_gates_triton = register_op(
    "lstm_gates", lstm_gates_reference, kernel="_lstm_gates_triton.forward",
    fake=lambda gates, c: (empty_like(c), empty_like(c)),
    backward=lambda grads, inputs, outputs: lstm_gates_backward_op(*grads, *inputs),  # (grad_h, grad_c, gates, c)
)


def lstm_gates(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """(h', c') of one LSTM step from the pre-activation gates (B, 4H) and the cell state c (B, H)."""
    if c.dim() != 2 or gates.dim() != 2 or gates.shape != (c.shape[0], 4 * c.shape[1]):
        raise InputError(f"gates must have shape (batch, 4 * hidden) for c (batch, hidden); "
                         f"got gates {tuple(gates.shape)} and c {tuple(c.shape)}")
    if gates.dtype != c.dtype or not c.is_floating_point():
        raise InputError(f"gates and c must share one floating dtype; got {gates.dtype} and {c.dtype}")
    return lstm_gates_op(gates, c)
