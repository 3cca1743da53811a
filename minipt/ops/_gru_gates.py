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
from ._layout import contiguous, empty_like
from ._reference_math import tanh


def gru_gates_reference(gi, gh, h):
    """The GRU's gate equations, written once: the ``"math"`` cells (minipt.nn.rnn_cells) and the
    fast path run this; the backward below and the Triton kernels must follow it (tested)."""
    compute = torch.promote_types(h.dtype, torch.float32)
    gi_r, gi_z, gi_n = gi.to(compute).chunk(3, dim=1)  # each (B, H)
    gh_r, gh_z, gh_n = gh.to(compute).chunk(3, dim=1)
    r = torch.sigmoid(gi_r + gh_r)
    z = torch.sigmoid(gi_z + gh_z)
    n = tanh(gi_n + r * gh_n)
    return ((1 - z) * n + z * h.to(compute)).to(h.dtype)


def gru_gates_backward_reference(grad, gi, gh, h):
    compute = torch.promote_types(h.dtype, torch.float32)
    gi_r, gi_z, gi_n = gi.to(compute).chunk(3, dim=1)
    gh_r, gh_z, gh_n = gh.to(compute).chunk(3, dim=1)
    r = torch.sigmoid(gi_r + gh_r)
    z = torch.sigmoid(gi_z + gh_z)
    n = tanh(gi_n + r * gh_n)
    grad = grad.to(compute)
    grad_n = grad * (1 - z) * (1 - n * n)  # through tanh
    grad_z = grad * (h.to(compute) - n) * z * (1 - z)
    grad_r = grad_n * gh_n * r * (1 - r)
    grad_gi = torch.cat([grad_r, grad_z, grad_n], dim=1)  # (B, 3H)
    grad_gh = torch.cat([grad_r, grad_z, grad_n * r], dim=1)
    return grad_gi.to(gi.dtype), grad_gh.to(gh.dtype), (grad * z).to(h.dtype)


@torch.library.custom_op("minipt::gru_gates", mutates_args=())
def gru_gates_op(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    return contiguous(gru_gates_reference(gi, gh, h))


@gru_gates_op.register_kernel("cuda")
def gru_gates_triton(gi, gh, h):
    """Launches the Triton forward; runs on CPU tensors too under TRITON_INTERPRET=1."""
    if h.dtype == torch.float64:  # the kernels compute in float32
        return contiguous(gru_gates_reference(gi, gh, h))
    from . import _gru_gates_triton

    return _gru_gates_triton.forward(gi, gh, h)


@gru_gates_op.register_fake
def _(gi, gh, h):
    return empty_like(h)


@torch.library.custom_op("minipt::gru_gates_backward", mutates_args=())
def gru_gates_backward_op(grad: Tensor, gi: Tensor, gh: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return contiguous(gru_gates_backward_reference(grad, gi, gh, h))


@gru_gates_backward_op.register_kernel("cuda")
def gru_gates_backward_triton(grad, gi, gh, h):
    """Launches the Triton backward; runs on CPU tensors too under TRITON_INTERPRET=1."""
    if h.dtype == torch.float64:
        return contiguous(gru_gates_backward_reference(grad, gi, gh, h))
    from . import _gru_gates_triton

    return _gru_gates_triton.backward(grad, gi, gh, h)


@gru_gates_backward_op.register_fake
def _(grad, gi, gh, h):
    return empty_like(gi), empty_like(gh), empty_like(h)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    gi, gh, h = ctx.saved_tensors
    return gru_gates_backward_op(grad, gi, gh, h)


gru_gates_op.register_autograd(_backward, setup_context=_setup_context)


def gru_gates(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """h' of one GRU step from gi = x W_ih^T + b_ih, gh = h W_hh^T + b_hh (B, 3H) and h (B, H)."""
    if h.dim() != 2 or gi.shape != (h.shape[0], 3 * h.shape[1]) or gh.shape != gi.shape:
        raise InputError(f"gi and gh must have shape (batch, 3 * hidden) for h (batch, hidden); "
                         f"got gi {tuple(gi.shape)}, gh {tuple(gh.shape)}, h {tuple(h.shape)}")
    if not (gi.dtype == gh.dtype == h.dtype) or not h.is_floating_point():
        raise InputError(f"gi, gh and h must share one floating dtype; got {gi.dtype}, {gh.dtype}, {h.dtype}")
    return gru_gates_op(gi, gh, h)
