"""The GRU's gate math for one step in Triton, as torch.nn.GRU computes it:

    r = sigmoid(gi_r + gh_r),  z = sigmoid(gi_z + gh_z),  n = tanh(gi_n + r gh_n)
    h' = (1 - z) n + z h                           gi, gh (B, 3H) in the order r, z, n

The reset gate scales gh_n = W_hn h + b_hn, the hidden projection with its bias. Backward:
    dn = dh' (1 - z) (1 - n^2),   dz = dh' (h - n) z (1 - z),   dr = dn gh_n r (1 - r)
    dgi = (dr, dz, dn),   dgh = (dr, dz, dn r),   dh = dh' z
"""

import torch
import triton
import triton.language as tl

from ._triton_math import gate_launch, rows, tanh


@triton.jit
def _gates(GI, GH, HID, offs_b, offs_h, mask, H, stride_ib, stride_hb, stride_b):
    gi = GI + offs_b[:, None] * stride_ib + offs_h[None, :]
    gh = GH + offs_b[:, None] * stride_hb + offs_h[None, :]
    r = tl.sigmoid(tl.load(gi, mask=mask, other=0.0).to(tl.float32) + tl.load(gh, mask=mask, other=0.0).to(tl.float32))
    z = tl.sigmoid(tl.load(gi + H, mask=mask, other=0.0).to(tl.float32)
                   + tl.load(gh + H, mask=mask, other=0.0).to(tl.float32))
    gh_n = tl.load(gh + 2 * H, mask=mask, other=0.0).to(tl.float32)
    n = tanh(tl.load(gi + 2 * H, mask=mask, other=0.0).to(tl.float32) + r * gh_n)
    h = tl.load(HID + offs_b[:, None] * stride_b + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    return r, z, n, gh_n, h


@triton.jit
def gru_gates_forward_kernel(
    GI, GH, HID, H_OUT, B, H, stride_ib, stride_hb, stride_b,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    r, z, n, gh_n, h = _gates(GI, GH, HID, offs_b, offs_h, mask, H, stride_ib, stride_hb, stride_b)
    h_new = (1.0 - z) * n + z * h
    tl.store(H_OUT + offs_b[:, None] * H + offs_h[None, :], h_new.to(H_OUT.dtype.element_ty), mask=mask)


@triton.jit
def gru_gates_backward_kernel(
    GRAD, GI, GH, HID, GRAD_GI, GRAD_GH, GRAD_H, B, H, stride_db, stride_ib, stride_hb, stride_b,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    r, z, n, gh_n, h = _gates(GI, GH, HID, offs_b, offs_h, mask, H, stride_ib, stride_hb, stride_b)
    dh_new = tl.load(GRAD + offs_b[:, None] * stride_db + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    dn = dh_new * (1.0 - z) * (1.0 - n * n)
    dz = dh_new * (h - n) * z * (1.0 - z)
    dr = dn * gh_n * r * (1.0 - r)
    ty = GRAD_GI.dtype.element_ty
    gi = GRAD_GI + offs_b[:, None] * (3 * H) + offs_h[None, :]
    gh = GRAD_GH + offs_b[:, None] * (3 * H) + offs_h[None, :]
    tl.store(gi, dr.to(ty), mask=mask)
    tl.store(gi + H, dz.to(ty), mask=mask)
    tl.store(gi + 2 * H, dn.to(ty), mask=mask)
    tl.store(gh, dr.to(ty), mask=mask)
    tl.store(gh + H, dz.to(ty), mask=mask)
    tl.store(gh + 2 * H, (dn * r).to(ty), mask=mask)
    tl.store(GRAD_H + offs_b[:, None] * H + offs_h[None, :], (dh_new * z).to(GRAD_H.dtype.element_ty), mask=mask)


def forward(gi, gh, h):
    gi, gh, h = rows(gi), rows(gh), rows(h)
    B, H = h.shape
    h_new = torch.empty((B, H), dtype=h.dtype, device=h.device)
    grid, blocks = gate_launch(h, B, H)
    gru_gates_forward_kernel[grid](gi, gh, h, h_new, B, H, gi.stride(0), gh.stride(0), h.stride(0), **blocks)
    return h_new


def backward(grad, gi, gh, h):
    grad, gi, gh, h = (rows(t) for t in (grad, gi, gh, h))
    B, H = h.shape
    grad_gi = torch.empty((B, 3 * H), dtype=gi.dtype, device=gi.device)
    grad_gh = torch.empty((B, 3 * H), dtype=gh.dtype, device=gh.device)
    grad_h = torch.empty((B, H), dtype=h.dtype, device=h.device)
    grid, blocks = gate_launch(h, B, H)
    gru_gates_backward_kernel[grid](
        grad, gi, gh, h, grad_gi, grad_gh, grad_h, B, H,
        grad.stride(0), gi.stride(0), gh.stride(0), h.stride(0), **blocks)
    return grad_gi, grad_gh, grad_h
