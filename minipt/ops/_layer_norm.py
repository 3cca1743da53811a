"""LayerNorm (Ba et al., 2016) over the last dimension as torch ops, with and without a residual
added first:

    minipt::layer_norm(x, weight, bias, eps)               = LN(x)             pre-LN blocks
    minipt::add_layer_norm(x, residual, weight, bias, eps) = LN(x + residual)  post-LN blocks (BERT)

In the second the sum is never written to memory, and the backward rebuilds it from x and
residual. Both share one backward op, ``minipt::layer_norm_backward``, which recomputes the
row statistics instead of saving them.

- everywhere but CUDA: the references below (float32 at least);
- CUDA: ``_layer_norm_triton`` (rows up to 16384 long; longer rows run the reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ._layout import contiguous, empty_like


def layer_norm_reference(x, residual, weight, bias, eps):
    compute = torch.promote_types(x.dtype, torch.float32)
    s = x.to(compute) if residual is None else x.to(compute) + residual.to(compute)
    return F.layer_norm(s, weight.shape, weight.to(compute), bias.to(compute), eps).to(x.dtype)


def layer_norm_backward_reference(grad, x, residual, weight, eps):
    """(grad of x (= of residual), grad of weight, grad of bias), written out."""
    compute = torch.promote_types(x.dtype, torch.float32)
    s = x.to(compute) if residual is None else x.to(compute) + residual.to(compute)
    mean = s.mean(-1, keepdim=True)
    rstd = torch.rsqrt((s - mean).pow(2).mean(-1, keepdim=True) + eps)
    x_hat = (s - mean) * rstd
    dy = grad.to(compute)
    dx_hat = dy * weight.to(compute)
    grad_s = rstd * (dx_hat - dx_hat.mean(-1, keepdim=True) - x_hat * (dx_hat * x_hat).mean(-1, keepdim=True))
    N = x.shape[-1]
    grad_w = (dy * x_hat).reshape(-1, N).sum(0)
    grad_b = dy.reshape(-1, N).sum(0)
    return grad_s.to(x.dtype), grad_w.to(weight.dtype), grad_b.to(weight.dtype)


def _triton_or_reference(x, function_name, reference, *args):
    N = x.shape[-1]
    if x.dtype == torch.float64 or N > 16384:  # float32 kernels; rows must fit in registers
        return reference(*args)
    from . import _layer_norm_triton

    return getattr(_layer_norm_triton, function_name)(*args)


# ---- minipt::layer_norm ---------------------------------------------------------------------------


@torch.library.custom_op("minipt::layer_norm", mutates_args=())
def layer_norm_op(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    return contiguous(layer_norm_reference(x, None, weight, bias, eps))


@layer_norm_op.register_kernel("cuda")
def layer_norm_triton(x, weight, bias, eps):
    """Launches the Triton forward; runs on CPU tensors too under TRITON_INTERPRET=1."""
    return contiguous(_triton_or_reference(x, "forward", layer_norm_reference, x, None, weight, bias, eps))


@layer_norm_op.register_fake
def _(x, weight, bias, eps):
    return empty_like(x)


# ---- minipt::add_layer_norm -----------------------------------------------------------------------


@torch.library.custom_op("minipt::add_layer_norm", mutates_args=())
def add_layer_norm_op(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    return contiguous(layer_norm_reference(x, residual, weight, bias, eps))


@add_layer_norm_op.register_kernel("cuda")
def add_layer_norm_triton(x, residual, weight, bias, eps):
    """Launches the Triton forward; runs on CPU tensors too under TRITON_INTERPRET=1."""
    return contiguous(_triton_or_reference(x, "forward", layer_norm_reference, x, residual, weight, bias, eps))


@add_layer_norm_op.register_fake
def _(x, residual, weight, bias, eps):
    return empty_like(x)


# ---- the shared backward --------------------------------------------------------------------------


@torch.library.custom_op("minipt::layer_norm_backward", mutates_args=())
def layer_norm_backward_op(
    grad: Tensor, x: Tensor, residual: Tensor | None, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    return contiguous(layer_norm_backward_reference(grad, x, residual, weight, eps))


@layer_norm_backward_op.register_kernel("cuda")
def layer_norm_backward_triton(grad, x, residual, weight, eps):
    """Launches the Triton backward; runs on CPU tensors too under TRITON_INTERPRET=1."""
    return contiguous(_triton_or_reference(x, "backward", layer_norm_backward_reference, grad, x, residual, weight, eps))


@layer_norm_backward_op.register_fake
def _(grad, x, residual, weight, eps):
    return empty_like(x), empty_like(weight), empty_like(weight)


def _setup_layer_norm(ctx, inputs, output):
    x, weight, bias, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _backward_layer_norm(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_x, grad_w, grad_b = layer_norm_backward_op(grad, x, None, weight, ctx.eps)
    return grad_x, grad_w, grad_b, None


def _setup_add_layer_norm(ctx, inputs, output):
    x, residual, weight, bias, eps = inputs
    ctx.save_for_backward(x, residual, weight)
    ctx.eps = eps


def _backward_add_layer_norm(ctx, grad):
    x, residual, weight = ctx.saved_tensors
    grad_s, grad_w, grad_b = layer_norm_backward_op(grad, x, residual, weight, ctx.eps)
    return grad_s, grad_s, grad_w, grad_b, None  # the sum's gradient reaches x and residual alike


layer_norm_op.register_autograd(_backward_layer_norm, setup_context=_setup_layer_norm)
add_layer_norm_op.register_autograd(_backward_add_layer_norm, setup_context=_setup_add_layer_norm)


# ---- the Python API -------------------------------------------------------------------------------


def _check(x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None = None) -> None:
    N = x.shape[-1] if x.dim() else None
    if weight.shape != (N,) or bias.shape != (N,):
        raise InputError(f"weight and bias must have shape ({N},), the last dim of x {tuple(x.shape)}; "
                         f"got {tuple(weight.shape)} and {tuple(bias.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise InputError(f"residual {tuple(residual.shape)} must have the shape of x {tuple(x.shape)}")
    tensors = (x, weight, bias) if residual is None else (x, residual, weight, bias)
    if len({t.dtype for t in tensors}) != 1 or not x.is_floating_point():
        raise InputError(f"x, residual, weight and bias must share one floating dtype; got "
                         f"{', '.join(str(t.dtype) for t in tensors)}")


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dim of x (..., N) with weight and bias (N,)."""
    _check(x, weight, bias)
    return layer_norm_op(x, weight, bias, float(eps))


def add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """``layer_norm(x + residual)`` without writing the sum: the post-LN residual step."""
    _check(x, weight, bias, residual)
    return add_layer_norm_op(x, residual, weight, bias, float(eps))
