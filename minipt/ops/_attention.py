"""Scaled dot-product attention as one torch op, ``minipt::attention``.

    out = softmax(q k^T * scale + mask) v          q (B, H, T, D), k and v (B, H, S, D)

The mask hides padded keys (``key_padding_mask`` (B, S), True = a real key) and, with
``causal``, the keys after each query, aligned bottom-right: query i sees keys j <= i + S - T,
which stays right when the keys include a cache of earlier steps. A query that may see no key
gets a zero output (its softmax is undefined; torch's SDPA gives NaN there).

The op returns the output and each row's log-sum-exp ``lse`` (B, H, T), kept for the backward
(+inf for a row that sees no key, so that exp(s - lse) is 0 on it).

- everywhere but CUDA: ``attention_reference`` below, which materialises the (T, S) scores;
- CUDA: the flash-attention kernels in ``_attention_triton``, which never do (or the reference, where
  ``cuda.kernel`` measured it faster and its scores take at most ``SCORES_LIMIT`` bytes).
The backward, ``minipt::attention_backward``, is split the same way.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError
from ._layout import empty_like
from ._register import register_op


def allowed_keys(key_padding_mask: Tensor | None, T: int, S: int, causal: bool, device) -> Tensor | None:
    """(B|1, 1, T|1, S) True where a query may look at a key, or None when every key is allowed."""
    allowed = None
    if key_padding_mask is not None:
        allowed = key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
    if causal:
        future = torch.ones(T, S, dtype=torch.bool, device=device).triu(S - T + 1)  # j > i + S - T
        allowed = ~future if allowed is None else allowed & ~future  # (B|1, 1, T, S)
    return allowed


def _scores(q, k, key_padding_mask, causal, scale):
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, T, S)
    allowed = allowed_keys(key_padding_mask, q.shape[2], k.shape[2], causal, q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores


def attention_reference(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    """Plain torch, in float32 at least; returns (out, lse)."""
    dtype = q.dtype
    compute = torch.promote_types(dtype, torch.float32)
    q, k, v = (t.to(compute) for t in (q, k, v))
    scores = _scores(q, k, key_padding_mask, causal, scale)
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, T); -inf where a row sees no key
    lse = lse.masked_fill(lse == float("-inf"), float("inf"))  # ... made +inf: exp(-inf - inf) = 0, not NaN
    probs = torch.exp(scores - lse[..., None])
    out = torch.matmul(probs, v)  # (B, H, T, D)
    return out.to(dtype), lse


def attention_backward_reference(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
    out: Tensor, lse: Tensor, causal: bool, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv from the probabilities recomputed through ``lse``; plain torch, in float32 at least."""
    dtype = q.dtype
    compute = torch.promote_types(dtype, torch.float32)
    grad_out, q, k, v, out, lse = (t.to(compute) for t in (grad_out, q, k, v, out, lse))
    probs = torch.exp(_scores(q, k, key_padding_mask, causal, scale) - lse[..., None])  # (B, H, T, S)
    grad_v = torch.matmul(probs.transpose(-2, -1), grad_out)  # (B, H, S, D)
    grad_probs = torch.matmul(grad_out, v.transpose(-2, -1))  # (B, H, T, S)
    delta = (grad_out * out).sum(-1, keepdim=True)  # (B, H, T, 1) = rowsum(P * dP)
    grad_scores = probs * (grad_probs - delta)  # the softmax's backward
    grad_q = torch.matmul(grad_scores, k) * scale
    grad_k = torch.matmul(grad_scores.transpose(-2, -1), q) * scale
    return grad_q.to(dtype), grad_k.to(dtype), grad_v.to(dtype)


# ---- the op: reference everywhere, Triton on CUDA ----------------------------------------------
SCORES_LIMIT = 1 << 28  # bytes: on CUDA the reference competes with the flash kernel only where its float32 (T, S) scores fit


def _scores_fit(q: Tensor, k: Tensor) -> bool:
    return q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * 4 <= SCORES_LIMIT




def _fake(q, k, v, key_padding_mask, causal, scale):
    lse = q.new_empty(q.shape[:-1], dtype=torch.promote_types(q.dtype, torch.float32))  # (B, H, T)
    return empty_like(q), lse


def _grads(grads, inputs, outputs):
    q, k, v, key_padding_mask, causal, scale = inputs
    out, lse = outputs
    grad_q, grad_k, grad_v = attention_backward_op(grads[0], q, k, v, key_padding_mask, out, lse, causal, scale)
    return grad_q, grad_k, grad_v, None, None, None


attention_backward_op, attention_backward_triton = register_op(
    "attention_backward", attention_backward_reference, kernel="_attention_triton.backward",
    torch_takes=lambda grad_out, q, k, *rest: _scores_fit(q, k),
    fake=lambda grad_out, q, k, v, key_padding_mask, out, lse, causal, scale: (empty_like(q), empty_like(k), empty_like(v)),
)
attention_op, attention_triton = register_op(
    "attention", attention_reference, kernel="_attention_triton.forward", fake=_fake, torch_takes=lambda q, k, *rest: _scores_fit(q, k),
    backward=_grads, save_outputs=True, non_differentiable=(1,),  # lse is kept for the backward only
)


# ---- the Python API -------------------------------------------------------------------------------


def attention(
    q: Tensor,  # (B, H, T, D)
    k: Tensor,  # (B, H, S, D)
    v: Tensor,  # (B, H, S, D)
    key_padding_mask: Tensor | None = None,  # (B, S) bool, True = a real key
    *,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """``softmax(q k^T * scale + mask) v`` -> (B, H, T, D); ``scale`` defaults to 1/sqrt(D)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InputError(f"q, k, v must be (batch, heads, length, head_dim); got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise InputError(f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} do not match: "
                         "k and v must be (B, H, S, D) for q (B, H, T, D)")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise InputError(f"q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_padding_mask is not None:
        B, S = k.shape[0], k.shape[2]
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (B, S):
            raise InputError(f"key_padding_mask must be a bool tensor of shape (batch, keys) = ({B}, {S}); "
                             f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    out, _ = attention_op(q, k, v, key_padding_mask, causal, float(scale))
    return out
