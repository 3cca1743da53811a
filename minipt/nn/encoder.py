"""The Transformer encoder layer the encoder families share (Vaswani et al., 2017, section 3.1).

    layer = EncoderLayer(768, 12, 3072, act="gelu", eps=1e-12)           # BERT, RoBERTa, DistilBERT, ALBERT
    layer = EncoderLayer(768, 12, 3072, act="gelu", eps=1e-6, norm_first=True)   # ViT, CLIP (its text tower: causal=True)
    hidden, attn_probs = layer(hidden, bias)   # (B, T, C), bias from attention_bias(mask, T, T)

Two residual branches, self-attention then a feed-forward network (``ffn_up``,
the activation, ``ffn_down``). Where each LayerNorm sits is the one
difference between the families:

- post-LN (``norm_first=False``, BERT's): ``x = LN(x + branch(x))``;
- pre-LN (``norm_first=True``, ViT's and CLIP's): ``x = x + branch(LN(x))``.

The families differ in their embeddings, their names (the key maps) and in
parameter sharing (ALBERT reuses one layer across depth), not in this data flow.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import MultiHeadAttention
from .dropout import Dropout
from .layers import LayerNorm, Linear, activation, linear_then_activation

__all__ = ["EncoderLayer"]


class EncoderLayer(nn.Module):
    """Self-attention and a feed-forward network, each a residual branch, LayerNorm after (post-LN) or before (pre-LN)."""

    linear_act_pairs = (("ffn_up", "act"),)  # fuse(): the activation as a post-op of ffn_up's matmul
    # fuse() sets it: each residual add joins its branch's last matmul (out_proj, ffn_down) as a
    # post-op, one pass over the activations fewer; the copy runs in eval, so no dropout sits between
    residual_in_matmul = False

    def __init__(
        self,
        dim: int,
        num_heads: int,
        intermediate_size: int,
        *,
        act: str = "gelu",  # a name minipt.nn.activation knows
        eps: float = 1e-12,  # of both LayerNorms
        dropout: float = 0.0,  # on each branch's output (the feed-forward one's: ffn_dropout where given)
        attention_dropout: float = 0.0,  # on the attention probabilities
        norm_first: bool = False,
        causal: bool = False,  # each position attends only to itself and earlier ones (CLIP's text tower)
        ffn_dropout: float | None = None,  # on the feed-forward branch's output, where it differs (DistilBERT, ALBERT)
    ):
        super().__init__()
        self.norm_first = norm_first
        self.causal = causal
        self.attn = MultiHeadAttention(dim, num_heads, dropout=attention_dropout)
        self.attn_norm = LayerNorm(dim, eps=eps)
        self.ffn_up = Linear(dim, intermediate_size)
        self.act = activation(act)
        self.ffn_down = Linear(intermediate_size, dim)
        self.ffn_norm = LayerNorm(dim, eps=eps)
        self.dropout = Dropout(dropout)  # on the attention branch's output
        self.ffn_dropout = Dropout(dropout if ffn_dropout is None else ffn_dropout)

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        if "ffn_dropout" not in self._modules:  # pickled when one dropout served both branches
            old = self._modules["dropout"]
            self._modules["ffn_dropout"] = Dropout(old.p).train(old.training)

    def feed_forward(self, hidden: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``ffn_down(act(ffn_up(hidden)))`` (``+ residual``): (B, T, C) -> (B, T, intermediate) inside -> (B, T, C)."""
        return self.ffn_down(linear_then_activation(self.ffn_up, self.act, hidden), residual=residual)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None = None, need_weights: bool = False):
        if self.residual_in_matmul:  # the same sums, each residual added by the matmul before it
            if self.norm_first:
                hidden, attn_probs = self.attn(self.attn_norm(hidden), bias, need_weights, residual=hidden, causal=self.causal)
                return self.feed_forward(self.ffn_norm(hidden), residual=hidden), attn_probs
            summed, attn_probs = self.attn(hidden, bias, need_weights, residual=hidden, causal=self.causal)  # hidden + attn_out
            hidden = self.attn_norm(summed)
            return self.ffn_norm(self.feed_forward(hidden, residual=hidden)), attn_probs
        if self.norm_first:
            attn_out, attn_probs = self.attn(self.attn_norm(hidden), bias, need_weights, causal=self.causal)
            hidden = hidden + self.dropout(attn_out)  # (B, T, C)
            hidden = hidden + self.ffn_dropout(self.feed_forward(self.ffn_norm(hidden)))
            return hidden, attn_probs
        attn_out, attn_probs = self.attn(hidden, bias, need_weights, causal=self.causal)
        hidden = self.attn_norm(self.dropout(attn_out), residual=hidden)  # LN(hidden + attn_out): (B, T, C)
        hidden = self.ffn_norm(self.ffn_dropout(self.feed_forward(hidden)), residual=hidden)
        return hidden, attn_probs
