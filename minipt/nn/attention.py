"""Multi-head scaled dot-product attention (Vaswani et al., 2017), written out.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + bias) V

``bias`` is an additive mask: 0 where a query may look at a key, a very large
negative number where it may not (padding, the future). ``attention_bias``
builds it once per forward pass from the padding mask a tokenizer returns
and/or a causal flag, and every layer reuses it.

A query row whose every key is masked (a sequence made only of padding) has
no defined softmax; minipt gives it zero probabilities and a zero output, on
every backend, instead of NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..checks import tracing
from ..errors import ConfigError, InputError
from .backend import BackendBlock, get_backend
from .dropout import dropout as apply_dropout
from .layers import Linear
from .tap import tap


def attention_bias(
    attention_mask: torch.Tensor | None,
    query_len: int,
    key_len: int,
    *,
    causal: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """An additive mask broadcastable to ``(B, heads, T, S)``, or None when nothing is masked.

    ``attention_mask`` is either a padding mask ``(B, S)`` of bools or 0/1
    integers or floats (True/1 = a real token, the tokenizer's convention; a
    two-dimensional mask is read so whatever its dtype, as transformers reads
    it), or an additive float mask of 3 or 4 dimensions broadcastable to
    ``(B, heads, T, S)`` (0 = attend, -inf or very negative = masked).
    ``causal`` masks keys after each query, aligned bottom-right so that it
    stays right when keys include a cache.
    """
    lowest = torch.finfo(dtype).min
    bias = None
    if attention_mask is not None:
        if attention_mask.is_floating_point() and attention_mask.dim() != 2:
            shape = tuple(attention_mask.shape)
            if attention_mask.dim() not in (3, 4) or shape[-1] not in (1, key_len) or shape[-2] not in (1, query_len):
                raise InputError(f"an additive attention mask has 3 or 4 dimensions broadcastable to (batch, heads, {query_len}, "
                                 f"{key_len}), got {shape}")
            bias = attention_mask.to(dtype).clamp(min=lowest)  # -inf would make fully masked rows NaN
            while bias.dim() < 4:
                bias = bias.unsqueeze(1)  # (B, S) -> (B, 1, 1, S)
        else:
            if attention_mask.dim() != 2 or attention_mask.shape[-1] != key_len:
                raise InputError(f"padding mask must have shape (batch, {key_len}), got {tuple(attention_mask.shape)}")
            keep = attention_mask.bool()
            if not causal and not tracing() and not keep.is_meta and bool(keep.all()):
                return None  # nothing to mask: lets sdpa use its fastest kernel
            bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, lowest)
            bias = bias[:, None, None, :]  # (B, 1, 1, S)
        device = bias.device
    if causal:
        future = torch.ones(query_len, key_len, dtype=torch.bool, device=device).triu(key_len - query_len + 1)
        causal_bias = torch.zeros(query_len, key_len, dtype=dtype, device=device).masked_fill(future, lowest)
        bias = causal_bias if bias is None else (bias + causal_bias).clamp(min=lowest)  # (B, 1, T, S)
    return bias


def _masks_padding_only(bias: torch.Tensor, keep: torch.Tensor, T: int, S: int, causal: bool) -> bool:
    """Whether ``bias`` is what ``attention_bias`` builds from the padding mask ``keep`` (B, S) (with ``causal``), so
    the op's key mask says all of it: not a user's additive mask (-1e4, a soft bias) of the same shape."""
    if bias.is_meta:  # shapes only (minipt.summary): no values to compare, so the general path
        return False
    built = attention_bias(keep, T, S, causal=causal, dtype=bias.dtype, device=bias.device)
    return bool((bias == 0).all()) if built is None else torch.equal(bias, built.expand_as(bias))


def scaled_dot_product_attention(
    q: torch.Tensor,  # (B, heads, T, D)
    k: torch.Tensor,  # (B, heads, S, D)
    v: torch.Tensor,  # (B, heads, S, D)
    bias: torch.Tensor | None = None,
    *,
    causal: bool = False,
    dropout: float = 0.0,
    backend: str = "torch",
    need_weights: bool = False,
    scale: float | None = None,
    site: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``softmax(q k^T * scale + bias) v``, ``scale`` = 1/sqrt(D) unless given; probabilities too when asked (always on the math path).

    ``causal=True`` says that ``bias`` is ``attention_bias(mask, T, S, causal=True)`` (the future
    masked, aligned bottom-right, and padded keys if a mask was given), or None when nothing needs
    masking beyond the future; a bias of one query row (a padding mask's, (B, 1, 1, S)) gets the
    future's mask added here. On the math path the probabilities pass the tap point ``probs`` of
    ``site`` (the calling module; see ``minipt.nn.tap``), so a capture can read or edit them before
    they weight ``v``.

    ``fused`` runs ``minipt.ops.attention`` (with ``causal``) when the bias only masks padded keys
    ((B, 1, 1, S), as ``attention_bias`` builds it for a padding mask, or causal on top of it) or is
    None; with attention dropout or any other mask it runs ``torch``. With attention dropout on the CPU
    every backend runs the math path (torch's CPU attention with dropout is this math too), its mask from
    ``minipt.nn.dropout``.
    """
    T, S = q.shape[-2], k.shape[-2]
    if causal and bias is not None and T > 1 and bias.dim() >= 2 and bias.shape[-2] == 1:  # padding only: the future too
        bias = (bias + attention_bias(None, T, S, causal=True, dtype=bias.dtype, device=bias.device)).clamp(min=torch.finfo(bias.dtype).min)
    if backend == "fused" and not need_weights and dropout == 0.0:
        if bias is None or (causal and bias.dim() == 2):  # (T, S): the causal mask alone
            return ops.attention(q, k, v, causal=causal, scale=scale), None
        if bias.dim() == 4 and bias.shape[1] == 1 and bias.shape[0] == q.shape[0] and bias.shape[2] == (T if causal else 1) \
                and bias.shape[3] == S and not tracing():
            keep = bias[:, 0, -1, :] > torch.finfo(bias.dtype).min  # (B, S): True = a real key (the last query sees every past key)
            if _masks_padding_only(bias, keep, T, S, causal):
                return ops.attention(q, k, v, keep, causal=causal, scale=scale), None
    if causal and bias is None and T > 1:
        bias = attention_bias(None, T, S, causal=True, dtype=q.dtype, device=q.device)
    attends = None  # (B, 1|heads, T, 1): 0 for query rows that may look at no key; None where every row may look
    if bias is not None:
        attends = bias.amax(-1, keepdim=True) > torch.finfo(bias.dtype).min
        if q.device.type == "cpu" and not tracing() and bool(attends.all()):
            attends = None  # T5's position bias (1, heads, T, S) at every layer: a pass over the output saved
    if backend == "math" or need_weights or (dropout > 0.0 and q.device.type == "cpu"):
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, heads, T, S)
        if bias is not None:
            scores = scores + bias
        attn_probs = scores.softmax(dim=-1)
        if attends is not None:
            attn_probs = attn_probs * attends
        attn_probs = tap(site, "probs", attn_probs)  # (B, heads, T, S)
        out = torch.matmul(apply_dropout(attn_probs, dropout), v)  # (B, heads, T, D)
        return out, attn_probs
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=scale)  # (B, heads, T, D)
    if attends is not None:
        out = out * attends
    return out, None


def _check_attention_inputs(hidden, bias, dim: int, num_heads: int) -> None:
    """An InputError naming what self-attention cannot take: input that is not (B, T, dim), a bias that is no
    additive float mask broadcastable to (B, heads, T, T) (a padding mask goes through attention_bias first).
    (Written for speed: it runs at every layer.)"""
    fits = isinstance(hidden, torch.Tensor) and hidden.dim() == 3 and hidden.shape[2] == dim
    if fits and bias is not None:
        B, T = hidden.shape[0], hidden.shape[1]
        fits = isinstance(bias, torch.Tensor) and bias.is_floating_point() and 2 <= bias.dim() <= 4 and all(
            n == 1 or n == w for n, w in zip(reversed(bias.shape), (T, T, num_heads, B)))
    if fits:
        return
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[-1] != dim:
        got = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise InputError(f"self-attention of width {dim} takes hidden states (batch, seq_len, {dim}), got {got}")
    B, T = hidden.shape[:2]
    if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
        got = bias.dtype if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise InputError(f"the attention bias is an additive float mask (0 where attended, a large negative where not), got {got}: "
                         f"attention_bias(mask, T, T) builds it from a padding mask")
    raise InputError(f"the attention bias of shape {tuple(bias.shape)} does not broadcast to (batch, heads, queries, keys) {(B, num_heads, T, T)} "
                     f"from 2 to 4 dimensions")


class MultiHeadAttention(BackendBlock, nn.Module):
    """Self-attention with ``num_heads`` heads: project to Q, K, V, attend per head, project back."""

    # minipt.probe: the attention probabilities (B, heads, T, S), written out on "math" only,
    # and each head's output (B, heads, T, head_dim) before the output projection, on every backend
    taps = {"probs": "math", "heads": None}

    def __init__(self, dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
            raise ConfigError(f"num_heads must be a positive integer, got {num_heads!r}")
        if dim % num_heads != 0:
            raise ConfigError(f"hidden size {dim} is not a multiple of the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout  # on the attention probabilities, in training only
        self.q_proj = Linear(dim, dim, bias=bias)
        self.k_proj = Linear(dim, dim, bias=bias)
        self.v_proj = Linear(dim, dim, bias=bias)
        self.out_proj = Linear(dim, dim, bias=bias)
        self.qkv_proj: nn.Module | None = None  # Q, K and V in one matmul: set by merge_qkv (fuse())

    def merge_qkv(self, make_linear) -> None:
        """Compute Q, K and V in one matmul on the concatenated (3C, C) weight: ``make_linear(weight, bias)``
        builds the merged layer (``fuse()`` packs it for oneDNN); the three projections are dropped."""
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])  # (3C, C)
        bias = None if self.q_proj.bias is None else torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        self.qkv_proj = make_linear(weight, bias)
        self.q_proj = self.k_proj = self.v_proj = None

    def forward(
        self,
        hidden: torch.Tensor,  # (B, T, C)
        bias: torch.Tensor | None = None,  # from attention_bias(): (B|1, 1, T, T)
        need_weights: bool = False,
        residual: torch.Tensor | None = None,  # (B, T, C), added to the output projection's result
        causal: bool = False,  # each position attends to itself and those before it (added to a padding-only ``bias``)
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        _check_attention_inputs(hidden, bias, self.num_heads * self.head_dim, self.num_heads)
        B, T, C = hidden.shape
        split_heads = lambda x: x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        if self.qkv_proj is not None:  # merged by fuse()
            q, k, v = (split_heads(x) for x in self.qkv_proj(hidden).split(C, dim=-1))  # 3 x (B, heads, T, head_dim)
        else:
            q = split_heads(self.q_proj(hidden))  # (B, heads, T, head_dim)
            k = split_heads(self.k_proj(hidden))
            v = split_heads(self.v_proj(hidden))
        out, attn_probs = scaled_dot_product_attention(
            q, k, v, bias,
            causal=causal,
            dropout=self.dropout if self.training else 0.0,
            backend=get_backend(self.backend),
            need_weights=need_weights,
            site=self,
        )
        out = tap(self, "heads", out)  # (B, heads, T, head_dim)
        out = out.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.out_proj(out, residual=residual), attn_probs
