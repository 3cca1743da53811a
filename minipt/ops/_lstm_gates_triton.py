"""The LSTM's gate math for one step in Triton, one (rows x hidden units) tile per program.

    i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)     a = gates (B, 4H)
    c' = f c + i g,   h' = o tanh(c')

Backward, from dh' and dc' (recomputing the gates):
    dc_total = dc' + dh' o (1 - tanh(c')^2)
    da_i = dc_total g i (1 - i),   da_f = dc_total c f (1 - f),   da_g = dc_total i (1 - g^2),
    da_o = dh' tanh(c') o (1 - o),   dc = dc_total f
"""

import torch
import triton
import triton.language as tl

from ._triton_math import gate_launch, rows, tanh


@triton.jit
def _load_gates(GATES, offs_b, offs_h, mask, H, stride_gb, stride_cb, C):
    row = GATES + offs_b[:, None] * stride_gb + offs_h[None, :]
    i = tl.sigmoid(tl.load(row, mask=mask, other=0.0).to(tl.float32))
    f = tl.sigmoid(tl.load(row + H, mask=mask, other=0.0).to(tl.float32))
    g = tanh(tl.load(row + 2 * H, mask=mask, other=0.0).to(tl.float32))
    o = tl.sigmoid(tl.load(row + 3 * H, mask=mask, other=0.0).to(tl.float32))
    c = tl.load(C + offs_b[:, None] * stride_cb + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    return i, f, g, o, c


@triton.jit
def lstm_gates_forward_kernel(
    GATES, C, H_OUT, C_OUT, B, H, stride_gb, stride_cb,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    i, f, g, o, c = _load_gates(GATES, offs_b, offs_h, mask, H, stride_gb, stride_cb, C)
    c_new = f * c + i * g
    h_new = o * tanh(c_new)
    out = offs_b[:, None] * H + offs_h[None, :]
    tl.store(H_OUT + out, h_new.to(H_OUT.dtype.element_ty), mask=mask)
    tl.store(C_OUT + out, c_new.to(C_OUT.dtype.element_ty), mask=mask)


@triton.jit
def lstm_gates_backward_kernel(
    GRAD_H, GRAD_C, GATES, C, GRAD_GATES, GRAD_C_PREV, B, H,
    stride_dhb, stride_dcb, stride_gb, stride_cb,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    i, f, g, o, c = _load_gates(GATES, offs_b, offs_h, mask, H, stride_gb, stride_cb, C)
    tanh_c = tanh(f * c + i * g)
    dh = tl.load(GRAD_H + offs_b[:, None] * stride_dhb + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    dc = tl.load(GRAD_C + offs_b[:, None] * stride_dcb + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    row = GRAD_GATES + offs_b[:, None] * (4 * H) + offs_h[None, :]
    ty = GRAD_GATES.dtype.element_ty
    tl.store(row, (dc * g * i * (1.0 - i)).to(ty), mask=mask)
    tl.store(row + H, (dc * c * f * (1.0 - f)).to(ty), mask=mask)
    tl.store(row + 2 * H, (dc * i * (1.0 - g * g)).to(ty), mask=mask)
    tl.store(row + 3 * H, (dh * tanh_c * o * (1.0 - o)).to(ty), mask=mask)
    tl.store(GRAD_C_PREV + offs_b[:, None] * H + offs_h[None, :], (dc * f).to(GRAD_C_PREV.dtype.element_ty), mask=mask)


def forward(gates, c):
    gates, c = rows(gates), rows(c)
    B, H = c.shape
    h_new = torch.empty((B, H), dtype=c.dtype, device=c.device)
    c_new = torch.empty((B, H), dtype=c.dtype, device=c.device)
    grid, blocks = gate_launch(c, B, H)
    lstm_gates_forward_kernel[grid](gates, c, h_new, c_new, B, H, gates.stride(0), c.stride(0), **blocks)
    return h_new, c_new


def backward(grad_h, grad_c, gates, c):
    grad_h, grad_c, gates, c = (rows(t) for t in (grad_h, grad_c, gates, c))
    B, H = c.shape
    grad_gates = torch.empty((B, 4 * H), dtype=gates.dtype, device=gates.device)
    grad_c_prev = torch.empty((B, H), dtype=c.dtype, device=c.device)
    grid, blocks = gate_launch(c, B, H)
    lstm_gates_backward_kernel[grid](
        grad_h, grad_c, gates, c, grad_gates, grad_c_prev, B, H,
        grad_h.stride(0), grad_c.stride(0), gates.stride(0), c.stride(0), **blocks)
    return grad_gates, grad_c_prev
