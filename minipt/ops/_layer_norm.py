"""LayerNorm (Ba et al., 2016) over the last dimension as torch ops, with and without a residual
added first:

    minipt::layer_norm(x, weight, bias, eps)               = LN(x)             pre-LN blocks
    minipt::add_layer_norm(x, residual, weight, bias, eps) = LN(x + residual)  post-LN blocks (BERT)

In the second the sum is never written to memory, and the backward rebuilds it from x and
residual. Both share one backward op, ``minipt::layer_norm_backward``, which recomputes the
row statistics instead of saving them.

- everywhere but CUDA: the references below (float32 at least); on the CPU, the backward in
  float32 is aten's one-pass ``native_layer_norm_backward`` (``layer_norm_backward_cpu``);
- CUDA: ``_layer_norm_triton`` (rows up to ``MAX_ROW`` long; longer rows run the reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ._layout import empty_like
from ._register import register_op


MAX_ROW = 16384  # the longest row the Triton kernels take: a whole row is held in registers


def layer_norm_reference(x: Tensor, residual: Tensor | None, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    compute = torch.promote_types(x.dtype, torch.float32)
    s = x.to(compute) if residual is None else x.to(compute) + residual.to(compute)
    return F.layer_norm(s, weight.shape, weight.to(compute), bias.to(compute), eps).to(x.dtype)


def layer_norm_backward_reference(
    grad: Tensor, x: Tensor, residual: Tensor | None, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
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


def layer_norm_backward_cpu(
    grad: Tensor, x: Tensor, residual: Tensor | None, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's gradients from aten's fused CPU kernels: the row statistics recomputed by
    ``native_layer_norm``, the three gradients in one pass by ``native_layer_norm_backward``."""
    if not x.dtype == grad.dtype == weight.dtype == torch.float32:
        return layer_norm_backward_reference(grad, x, residual, weight, eps)
    s = x if residual is None else x + residual
    shape = [x.shape[-1]]
    _, mean, rstd = torch.ops.aten.native_layer_norm(s, shape, None, None, eps)
    return torch.ops.aten.native_layer_norm_backward(grad, s, shape, mean, rstd, weight, weight, [True, True, True])


def _plain_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    return layer_norm_reference(x, None, weight, bias, eps)


def _kernel_takes(x, *args) -> bool:
    """float32 kernels, a whole row in registers; ``x`` is the first argument of every op here (``grad``,
    of x's shape and dtype, for the backward)."""
    return x.dtype != torch.float64 and x.shape[-1] <= MAX_ROW


layer_norm_backward_op, layer_norm_backward_triton = register_op(
    "layer_norm_backward", layer_norm_backward_reference, kernel="_layer_norm_triton.backward", kernel_takes=_kernel_takes,
    aten=layer_norm_backward_cpu,
    fake=lambda grad, x, residual, weight, eps: (empty_like(x), empty_like(weight), empty_like(weight)),
)


def _layer_norm_grads(grads, inputs, outputs):
    x, weight, bias, eps = inputs
    return (*layer_norm_backward_op(grads[0], x, None, weight, eps), None)


def _add_layer_norm_grads(grads, inputs, outputs):
    x, residual, weight, bias, eps = inputs
    grad_s, grad_w, grad_b = layer_norm_backward_op(grads[0], x, residual, weight, eps)
    return grad_s, grad_s, grad_w, grad_b, None  # the sum's gradient reaches x and residual alike


layer_norm_op, layer_norm_triton = register_op(
    "layer_norm", _plain_layer_norm, kernel="_layer_norm_triton.forward_no_residual", kernel_takes=_kernel_takes,
    fake=lambda x, weight, bias, eps: empty_like(x), backward=_layer_norm_grads,
)
add_layer_norm_op, add_layer_norm_triton = register_op(
    "add_layer_norm", layer_norm_reference, kernel="_layer_norm_triton.forward", kernel_takes=_kernel_takes,
    fake=lambda x, residual, weight, bias, eps: empty_like(x), backward=_add_layer_norm_grads,
)


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
