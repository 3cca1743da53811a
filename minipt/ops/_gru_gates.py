"""One GRU step's gate math (Cho et al., 2014) after the matrix multiplies, exactly as
torch.nn.GRU computes it, as one torch op, ``minipt::gru_gates``:

    gi = x W_ih^T + b_ih,  gh = h W_hh^T + b_hh      (B, 3H) each, in the order r, z, n
    r = sigmoid(gi_r + gh_r),  z = sigmoid(gi_z + gh_z)
    n = tanh(gi_n + r * gh_n)                         the reset gate scales W_hn h + b_hn
    h' = (1 - z) n + z h                              -> (B, H)

- everywhere but CUDA: ``gru_gates_reference`` (float32 at least);
- CUDA: ``_gru_gates_triton``. The backward, ``minipt::gru_gates_backward``, is split the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ._layout import empty_like
from ._register import register_op


def gru_gates_reference(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """The GRU's gate equations, written once: the ``"math"`` cells (minipt.nn.rnn_cells) and the
    fast path run this; the backward below and the Triton kernels must follow it (tested)."""
    compute = torch.promote_types(h.dtype, torch.float32)
    gi_r, gi_z, gi_n = gi.to(compute).chunk(3, dim=1)  # each (B, H)
    gh_r, gh_z, gh_n = gh.to(compute).chunk(3, dim=1)
    r = torch.sigmoid(gi_r + gh_r)
    z = torch.sigmoid(gi_z + gh_z)
    n = torch.tanh(gi_n + r * gh_n)
    return ((1 - z) * n + z * h.to(compute)).to(h.dtype)


def gru_gates_backward_reference(grad: Tensor, gi: Tensor, gh: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    compute = torch.promote_types(h.dtype, torch.float32)
    gi_r, gi_z, gi_n = gi.to(compute).chunk(3, dim=1)
    gh_r, gh_z, gh_n = gh.to(compute).chunk(3, dim=1)
    r = torch.sigmoid(gi_r + gh_r)
    z = torch.sigmoid(gi_z + gh_z)
    n = torch.tanh(gi_n + r * gh_n)
    grad = grad.to(compute)
    grad_n = grad * (1 - z) * (1 - n * n)  # through tanh
    grad_z = grad * (h.to(compute) - n) * z * (1 - z)
    grad_r = grad_n * gh_n * r * (1 - r)
    grad_gi = torch.cat([grad_r, grad_z, grad_n], dim=1)  # (B, 3H)
    grad_gh = torch.cat([grad_r, grad_z, grad_n * r], dim=1)
    return grad_gi.to(gi.dtype), grad_gh.to(gh.dtype), (grad * z).to(h.dtype)


gru_gates_backward_op, gru_gates_backward_triton = register_op(
    "gru_gates_backward", gru_gates_backward_reference, kernel="_gru_gates_triton.backward",
    fake=lambda grad, gi, gh, h: (empty_like(gi), empty_like(gh), empty_like(h)),
)
gru_gates_op, gru_gates_triton = register_op(
    "gru_gates", gru_gates_reference, kernel="_gru_gates_triton.forward",
    fake=lambda gi, gh, h: empty_like(h),
    backward=lambda grads, inputs, outputs: gru_gates_backward_op(*grads, *inputs),  # (grad, gi, gh, h)
)


def gru_gates(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """h' of one GRU step from gi = x W_ih^T + b_ih, gh = h W_hh^T + b_hh (B, 3H) and h (B, H)."""
    if h.dim() != 2 or gi.shape != (h.shape[0], 3 * h.shape[1]) or gh.shape != gi.shape:
        raise InputError(f"gi and gh must have shape (batch, 3 * hidden) for h (batch, hidden); "
                         f"got gi {tuple(gi.shape)}, gh {tuple(gh.shape)}, h {tuple(h.shape)}")
    if not (gi.dtype == gh.dtype == h.dtype) or not h.is_floating_point():
        raise InputError(f"gi, gh and h must share one floating dtype; got {gi.dtype}, {gh.dtype}, {h.dtype}")
    return gru_gates_op(gi, gh, h)
