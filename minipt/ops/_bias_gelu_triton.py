"""Bias add + GELU in Triton: one read of x, one write of the output; the backward also sums the
bias gradient per block of rows (the launcher adds the blocks' partial sums).

    y = x + bias
    exact:  gelu(y) = y Phi(y),  gelu'(y) = Phi(y) + y phi(y)
    tanh:   gelu(y) = y (1 + tanh(u)) / 2,  u = sqrt(2/pi) (y + 0.044715 y^3)
            gelu'(y) = (1 + tanh(u)) / 2 + y (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 y^2) / 2
"""

import torch
import triton
import triton.language as tl

from ._triton_math import tanh


@triton.jit
def _gelu_and_grad(y, TANH: tl.constexpr, WANT_GRAD: tl.constexpr):
    if TANH:
        k = 0.7978845608028654  # sqrt(2/pi)
        t = tanh(k * (y + 0.044715 * y * y * y))
        value = 0.5 * y * (1.0 + t)
        grad = 0.5 * (1.0 + t) + 0.5 * y * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * y * y)
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(y * 0.7071067811865476))  # Phi(y)
        value = y * cdf
        grad = cdf + y * tl.exp(-0.5 * y * y) * 0.3989422804014327  # + y phi(y)
    if WANT_GRAD:
        return grad
    return value


@triton.jit
def bias_gelu_forward_kernel(
    X, BIAS, OUT, M, N, stride_xm, stride_xn,
    TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    x = tl.load(X + offs_m[:, None] * stride_xm + offs_n[None, :] * stride_xn, mask=mask, other=0.0)
    bias = tl.load(BIAS + offs_n, mask=offs_n < N, other=0.0)
    y = x.to(tl.float32) + bias.to(tl.float32)[None, :]
    out = _gelu_and_grad(y, TANH, False)
    tl.store(OUT + offs_m[:, None] * N + offs_n[None, :], out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def bias_gelu_backward_kernel(
    GRAD, X, BIAS, GRAD_X, GRAD_BIAS_PARTIAL, M, N,
    stride_gm, stride_gn, stride_xm, stride_xn,
    TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    grad = tl.load(GRAD + offs_m[:, None] * stride_gm + offs_n[None, :] * stride_gn, mask=mask, other=0.0)
    x = tl.load(X + offs_m[:, None] * stride_xm + offs_n[None, :] * stride_xn, mask=mask, other=0.0)
    bias = tl.load(BIAS + offs_n, mask=offs_n < N, other=0.0)
    y = x.to(tl.float32) + bias.to(tl.float32)[None, :]
    grad_x = grad.to(tl.float32) * _gelu_and_grad(y, TANH, True)  # 0 on masked-out elements
    tl.store(GRAD_X + offs_m[:, None] * N + offs_n[None, :], grad_x.to(GRAD_X.dtype.element_ty), mask=mask)
    tl.store(GRAD_BIAS_PARTIAL + pid_m * N + offs_n, tl.sum(grad_x, 0), mask=offs_n < N)


def _blocks(x: torch.Tensor, M: int, N: int) -> dict:
    if not x.is_cuda:  # the interpreter: few large programs
        return dict(BLOCK_M=min(64, triton.next_power_of_2(M)), BLOCK_N=min(512, triton.next_power_of_2(N)))
    block_n = min(256, triton.next_power_of_2(N))
    return dict(BLOCK_M=max(1, 4096 // block_n), BLOCK_N=block_n, num_warps=4)


def forward(x, bias, approximate):
    N = x.shape[-1]
    x2 = x.reshape(-1, N)  # (M, N), a view where possible
    M = x2.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    blocks = _blocks(x, M, N)
    grid = (triton.cdiv(M, blocks["BLOCK_M"]), triton.cdiv(N, blocks["BLOCK_N"]))
    bias_gelu_forward_kernel[grid](x2, bias, out, M, N, *x2.stride(), TANH=approximate == "tanh", **blocks)
    return out.view(x.shape)


def backward(grad, x, bias, approximate):
    N = x.shape[-1]
    x2, grad2 = x.reshape(-1, N), grad.reshape(-1, N)
    M = x2.shape[0]
    grad_x = torch.empty((M, N), dtype=x.dtype, device=x.device)
    blocks = _blocks(x, M, N)
    grid = (triton.cdiv(M, blocks["BLOCK_M"]), triton.cdiv(N, blocks["BLOCK_N"]))
    partial = torch.empty((grid[0], N), dtype=torch.float32, device=x.device)  # per block of rows
    bias_gelu_backward_kernel[grid](
        grad2, x2, bias, grad_x, partial, M, N, *grad2.stride(), *x2.stride(),
        TANH=approximate == "tanh", **blocks)
    return grad_x.view(x.shape), partial.sum(0).to(bias.dtype)
