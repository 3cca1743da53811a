"""LayerNorm in Triton, with an optional residual added first (post-LN blocks), one row per
tile row, the whole row in registers.

    s = x (+ residual),  x_hat = (s - mean(s)) * rstd,  rstd = 1 / sqrt(var(s) + eps),  y = x_hat w + b

The backward recomputes mean and rstd from s instead of saving them (it reads s anyway):
    dx_hat = dy w,   ds = rstd (dx_hat - mean(dx_hat) - x_hat mean(dx_hat x_hat))
    dw = sum over rows of dy x_hat,   db = sum over rows of dy
Each program walks a contiguous range of rows and keeps its partial dw, db; the launcher adds
the programs' partial sums. ds is also the residual's gradient.
"""

import torch
import triton
import triton.language as tl

from ._layer_norm import MAX_ROW


@triton.jit
def _load_sum(X, RES, offs_m, offs_n, mask, stride_xm, stride_rm, HAS_RESIDUAL: tl.constexpr):
    s = tl.load(X + offs_m[:, None] * stride_xm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        s += tl.load(RES + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    return s


@triton.jit
def _normalise(s, mask, N, eps):
    mean = tl.sum(s, 1) / N
    centred = tl.where(mask, s - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / N + eps)  # biased variance
    return centred * rstd[:, None], rstd  # x_hat (BLOCK_M, BLOCK_N), 0 outside the row; rstd (BLOCK_M,)


@triton.jit
def layer_norm_forward_kernel(
    X, RES, W, B, OUT, M, N, stride_xm, stride_rm, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    x_hat, rstd = _normalise(_load_sum(X, RES, offs_m, offs_n, mask, stride_xm, stride_rm, HAS_RESIDUAL), mask, N, eps)
    w = tl.load(W + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
    b = tl.load(B + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
    y = x_hat * w[None, :] + b[None, :]
    tl.store(OUT + offs_m[:, None] * N + offs_n[None, :], y.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def layer_norm_backward_kernel(
    GRAD, X, RES, W, GRAD_X, GRAD_W_PARTIAL, GRAD_B_PARTIAL, M, N, rows_per_program,
    stride_gm, stride_xm, stride_rm, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_n = tl.arange(0, BLOCK_N)
    in_n = offs_n < N
    w = tl.load(W + offs_n, mask=in_n, other=0.0).to(tl.float32)
    grad_w = tl.zeros([BLOCK_N], tl.float32)
    grad_b = tl.zeros([BLOCK_N], tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for start in range(row_start, row_end, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask = (offs_m[:, None] < row_end) & in_n[None, :]
        x_hat, rstd = _normalise(_load_sum(X, RES, offs_m, offs_n, mask, stride_xm, stride_rm, HAS_RESIDUAL), mask, N, eps)
        dy = tl.load(GRAD + offs_m[:, None] * stride_gm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        grad_w += tl.sum(dy * x_hat, 0)
        grad_b += tl.sum(dy, 0)
        dx_hat = dy * w[None, :]
        c1 = tl.sum(dx_hat * x_hat, 1) / N
        c2 = tl.sum(dx_hat, 1) / N
        grad_s = (dx_hat - c2[:, None] - x_hat * c1[:, None]) * rstd[:, None]
        tl.store(GRAD_X + offs_m[:, None] * N + offs_n[None, :], grad_s.to(GRAD_X.dtype.element_ty), mask=mask)
    tl.store(GRAD_W_PARTIAL + pid * N + offs_n, grad_w, mask=in_n)
    tl.store(GRAD_B_PARTIAL + pid * N + offs_n, grad_b, mask=in_n)


def _blocks(x: torch.Tensor, M: int, N: int) -> dict:
    if N > MAX_ROW:  # the op's launchers run the reference for such rows
        raise ValueError(f"LayerNorm rows of {N} > {MAX_ROW} do not fit in registers")
    block_n = triton.next_power_of_2(N)
    if not x.is_cuda:  # the interpreter: few large programs
        return dict(BLOCK_M=min(64, triton.next_power_of_2(M)), BLOCK_N=block_n)
    return dict(BLOCK_M=max(1, min(16, 4096 // block_n)), BLOCK_N=block_n, num_warps=4 if block_n <= 2048 else 8)


def _rows(t: torch.Tensor, N: int) -> torch.Tensor:
    """(M, N) with unit stride along a row, a view where possible."""
    t2 = t.reshape(-1, N)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def forward(x, residual, weight, bias, eps):
    N = x.shape[-1]
    x2 = _rows(x, N)
    res2 = _rows(residual, N) if residual is not None else x2
    M = x2.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    blocks = _blocks(x, M, N)
    layer_norm_forward_kernel[(triton.cdiv(M, blocks["BLOCK_M"]),)](
        x2, res2, weight, bias, out, M, N, x2.stride(0), res2.stride(0), eps,
        HAS_RESIDUAL=residual is not None, **blocks)
    return out.view(x.shape)


def forward_no_residual(x, weight, bias, eps):
    """LN(x), with the arguments of minipt::layer_norm."""
    return forward(x, None, weight, bias, eps)


def backward(grad, x, residual, weight, eps):
    N = x.shape[-1]
    x2, grad2 = _rows(x, N), _rows(grad, N)
    res2 = _rows(residual, N) if residual is not None else x2
    M = x2.shape[0]
    blocks = _blocks(x, M, N)
    if x.is_cuda:  # a few programs per multiprocessor, each walking a range of rows
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        programs = min(triton.cdiv(M, blocks["BLOCK_M"]), 4 * sms)
    else:
        programs = 1 if M <= 4 * blocks["BLOCK_M"] else 2
    rows_per_program = triton.cdiv(triton.cdiv(M, programs), blocks["BLOCK_M"]) * blocks["BLOCK_M"]
    programs = triton.cdiv(M, rows_per_program)
    grad_x = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grad_w = torch.empty((programs, N), dtype=torch.float32, device=x.device)  # partial sums per program
    grad_b = torch.empty((programs, N), dtype=torch.float32, device=x.device)
    layer_norm_backward_kernel[(programs,)](
        grad2, x2, res2, weight, grad_x, grad_w, grad_b, M, N, rows_per_program,
        grad2.stride(0), x2.stride(0), res2.stride(0), eps,
        HAS_RESIDUAL=residual is not None, **blocks)
    return grad_x.view(x.shape), grad_w.sum(0).to(weight.dtype), grad_b.sum(0).to(weight.dtype)
