"""Flash attention in Triton (Dao et al., 2022; Dao, 2023): tiled, online softmax, never a T x S matrix.

Forward, per block of BLOCK_M queries: walk the keys in blocks of BLOCK_N, keep the running row
maximum m, the running sum l of exp(s - m) and the running unnormalised output; rescale both
when m grows. Save the log-sum-exp of each row, lse = m + log(l), for the backward.

Backward, recomputing the probabilities p = exp(s - lse) from it:
    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - delta) with delta = rowsum(dO * O),
    dQ = scale * dS K,   dK = scale * dS^T Q.
One kernel walks queries for each key block (dK, dV), another walks keys for each query block
(dQ): no atomics, deterministic.

Masks: keys past S, keys whose padding-mask entry is False, and with ``CAUSAL`` keys j > i + S - T
(bottom-right alignment). A row that may see no key has l = 0: its output is 0 and its lse is
+inf, so that the backward's exp(s - lse) is 0 there too.

Scores are kept in base 2 (exp2 is cheaper): s2 = s * log2(e).
"""

import torch
import triton
import triton.language as tl

from ._triton_math import dot, exact_dot

LOG2E = 1.4426950408889634


@triton.jit
def _allowed(offs_m, offs_n, keep_n, T, S, CAUSAL: tl.constexpr):
    """(BLOCK_M, BLOCK_N) True where query offs_m may look at key offs_n."""
    allowed = (offs_n[None, :] < S) & keep_n[None, :]
    if CAUSAL:
        allowed = allowed & (offs_n[None, :] <= offs_m[:, None] + (S - T))
    return allowed


@triton.jit
def _load_keep(KEEP, b, stride_keep_b, offs_n, S, HAS_KEEP: tl.constexpr):
    if HAS_KEEP:
        keep = tl.load(KEEP + b * stride_keep_b + offs_n, mask=offs_n < S, other=0) != 0
    else:
        keep = offs_n < S
    return keep


@triton.jit
def _key_end(pid_m, T, S, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """One past the last key a query block may see (<= 0 when it sees none)."""
    end_n = S
    if CAUSAL:
        end_n = tl.minimum(S, (pid_m + 1) * BLOCK_M + S - T)
    return end_n


@triton.jit
def attention_forward_kernel(
    Q, K, V, KEEP, OUT, LSE,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_keep_b,
    H, T, S, D, qk_scale,
    HAS_KEEP: tl.constexpr, CAUSAL: tl.constexpr, EXACT_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < D

    q = tl.load(
        Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
        mask=(offs_m[:, None] < T) & in_d[None, :], other=0.0,
    )  # (BLOCK_M, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row maximum of s2
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(s2 - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # running sum of exp2(s2 - m_i) v

    end_n = _key_end(pid_m, T, S, BLOCK_M, CAUSAL)
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_n = offs_n < S
        k_t = tl.load(
            K + b * stride_kb + h * stride_kh + offs_n[None, :] * stride_ks + offs_d[:, None] * stride_kd,
            mask=in_n[None, :] & in_d[:, None], other=0.0,
        )  # (BLOCK_D, BLOCK_N): keys as columns
        s = dot(q, k_t, EXACT_DOT) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
        keep_n = _load_keep(KEEP, b, stride_keep_b, offs_n, S, HAS_KEEP)
        s = tl.where(_allowed(offs_m, offs_n, keep_n, T, S, CAUSAL), s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key seen yet: avoid -inf - -inf
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)  # rescales what was summed under the old maximum
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd,
            mask=in_n[:, None] & in_d[None, :], other=0.0,
        )  # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, EXACT_DOT)
        m_i = m_new

    attends = l_i > 0.0
    l_safe = tl.where(attends, l_i, 1.0)
    out = tl.where(attends[:, None], acc / l_safe[:, None], 0.0)
    lse = tl.where(attends, (m_i + tl.log2(l_safe)) / 1.4426950408889634, float("inf"))
    in_m = offs_m < T
    tl.store(
        OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od,
        out.to(OUT.dtype.element_ty), mask=in_m[:, None] & in_d[None, :],
    )
    tl.store(LSE + pid_bh * T + offs_m, lse, mask=in_m)


@triton.jit
def attention_backward_dkdv_kernel(
    Q, K, V, KEEP, DO, LSE, DELTA, DK, DV,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_dob, stride_doh, stride_dot, stride_dod,
    stride_keep_b,
    H, T, S, D, qk_scale, scale,
    HAS_KEEP: tl.constexpr, CAUSAL: tl.constexpr, EXACT_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    in_n = offs_n < S
    in_d = offs_d < D
    nd_mask = in_n[:, None] & in_d[None, :]
    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd,
                mask=nd_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd,
                mask=nd_mask, other=0.0)
    keep_n = _load_keep(KEEP, b, stride_keep_b, offs_n, S, HAS_KEEP)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    start_m = 0
    if CAUSAL:  # the first query that may see this block's first key
        start_m = tl.maximum(pid_n * BLOCK_N - (S - T), 0) // BLOCK_M * BLOCK_M
    for start in range(start_m, T, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        in_m = offs_m < T
        md_mask = in_m[:, None] & in_d[None, :]
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                    mask=md_mask, other=0.0)  # (BLOCK_M, BLOCK_D)
        do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
                     mask=md_mask, other=0.0)
        lse2 = tl.load(LSE + pid_bh * T + offs_m, mask=in_m, other=float("inf")) * 1.4426950408889634
        delta = tl.load(DELTA + pid_bh * T + offs_m, mask=in_m, other=0.0)

        s = dot(q, tl.trans(k), EXACT_DOT) * qk_scale  # (BLOCK_M, BLOCK_N)
        allowed = _allowed(offs_m, offs_n, keep_n, T, S, CAUSAL)
        p = tl.where(allowed, tl.exp2(s - lse2[:, None]), 0.0)
        dv += dot(tl.trans(p.to(do.dtype)), do, EXACT_DOT)
        dp = dot(do, tl.trans(v), EXACT_DOT)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dk += dot(tl.trans(ds.to(q.dtype)), q, EXACT_DOT)

    dk = dk * scale
    tl.store(DK + pid_bh * S * D + offs_n[:, None] * D + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=nd_mask)
    tl.store(DV + pid_bh * S * D + offs_n[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=nd_mask)


# A deliberate parallel of attention_backward_dkdv_kernel: the same signature, tile loads and recomputed
# probabilities, one program per query tile walking the key tiles (the other walks query tiles per key
# tile). Two kernels keep every gradient written by one program, with no atomic adds; a change to the
# probabilities or the mask goes into both (test_ops_kernels.py checks each gradient).
@triton.jit
def attention_backward_dq_kernel(
    Q, K, V, KEEP, DO, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_dob, stride_doh, stride_dot, stride_dod,
    stride_keep_b,
    H, T, S, D, qk_scale, scale,
    HAS_KEEP: tl.constexpr, CAUSAL: tl.constexpr, EXACT_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_m = offs_m < T
    in_d = offs_d < D
    md_mask = in_m[:, None] & in_d[None, :]
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                mask=md_mask, other=0.0)  # (BLOCK_M, BLOCK_D)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
                 mask=md_mask, other=0.0)
    lse2 = tl.load(LSE + pid_bh * T + offs_m, mask=in_m, other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + pid_bh * T + offs_m, mask=in_m, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    end_n = _key_end(pid_m, T, S, BLOCK_M, CAUSAL)
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_n = offs_n < S
        dn_mask = in_d[:, None] & in_n[None, :]
        k_t = tl.load(K + b * stride_kb + h * stride_kh + offs_n[None, :] * stride_ks + offs_d[:, None] * stride_kd,
                      mask=dn_mask, other=0.0)  # (BLOCK_D, BLOCK_N)
        v_t = tl.load(V + b * stride_vb + h * stride_vh + offs_n[None, :] * stride_vs + offs_d[:, None] * stride_vd,
                      mask=dn_mask, other=0.0)
        s = dot(q, k_t, EXACT_DOT) * qk_scale  # (BLOCK_M, BLOCK_N)
        keep_n = _load_keep(KEEP, b, stride_keep_b, offs_n, S, HAS_KEEP)
        p = tl.where(_allowed(offs_m, offs_n, keep_n, T, S, CAUSAL), tl.exp2(s - lse2[:, None]), 0.0)
        dp = dot(do, v_t, EXACT_DOT)
        ds = p * (dp - delta[:, None])
        dq += dot(ds.to(k_t.dtype), tl.trans(k_t), EXACT_DOT)

    dq = dq * scale
    tl.store(DQ + pid_bh * T * D + offs_m[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=md_mask)


def _block_sizes(q: torch.Tensor, T: int, S: int, D: int) -> dict:
    block_d = max(16, triton.next_power_of_2(D))  # tl.dot needs 16 or more
    if not q.is_cuda:  # the interpreter: each program costs the same whatever its size, so few large ones
        return dict(BLOCK_M=min(64, max(16, triton.next_power_of_2(T))),
                    BLOCK_N=min(64, max(16, triton.next_power_of_2(S))), BLOCK_D=block_d)
    if block_d <= 64:
        return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=block_d, num_warps=4, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d, num_warps=4, num_stages=2)


def _backward_block_sizes(q: torch.Tensor, D: int) -> dict:
    block_d = max(16, triton.next_power_of_2(D))
    if not q.is_cuda:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_D=block_d)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d, num_warps=4, num_stages=2)


def _keep(key_padding_mask, q):
    if key_padding_mask is None:
        return q, 0, False  # any pointer: never read
    keep = key_padding_mask.contiguous().view(torch.uint8)
    return keep, keep.stride(0), True


def forward(q, k, v, key_padding_mask, causal, scale):
    B, H, T, D = q.shape
    S = k.shape[2]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    keep, stride_keep_b, has_keep = _keep(key_padding_mask, q)
    blocks = _block_sizes(q, T, S, D)
    grid = (triton.cdiv(T, blocks["BLOCK_M"]), B * H)
    attention_forward_kernel[grid](
        q, k, v, keep, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), stride_keep_b,
        H, T, S, D, scale * LOG2E,
        HAS_KEEP=has_keep, CAUSAL=causal, EXACT_DOT=exact_dot(q), **blocks,
    )
    return out, lse


def backward(grad_out, q, k, v, key_padding_mask, out, lse, causal, scale):
    B, H, T, D = q.shape
    S = k.shape[2]
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()  # (B, H, T): rowsum(dO * O)
    lse = lse.float().contiguous()
    grad_q = torch.empty_like(q, memory_format=torch.contiguous_format)
    grad_k = torch.empty_like(k, memory_format=torch.contiguous_format)
    grad_v = torch.empty_like(v, memory_format=torch.contiguous_format)
    keep, stride_keep_b, has_keep = _keep(key_padding_mask, q)
    blocks = _backward_block_sizes(q, D)
    common = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), stride_keep_b, H, T, S, D, scale * LOG2E, scale)
    flags = dict(HAS_KEEP=has_keep, CAUSAL=causal, EXACT_DOT=exact_dot(q), **blocks)
    attention_backward_dkdv_kernel[(triton.cdiv(S, blocks["BLOCK_N"]), B * H)](
        q, k, v, keep, grad_out, lse, delta, grad_k, grad_v, *common, **flags)
    attention_backward_dq_kernel[(triton.cdiv(T, blocks["BLOCK_M"]), B * H)](
        q, k, v, keep, grad_out, lse, delta, grad_q, *common, **flags)
    return grad_q, grad_k, grad_v
