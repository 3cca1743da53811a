"""T5 (Raffel et al., 2020): a Transformer encoder-decoder with RMS normalisation and relative position biases.

    input_ids -> shared embedding                                    (B, S, C)
              -> encoder: N x [ x + attn(RMS(x)) ; x + ffn(RMS(x)) ] -> RMS        (B, S, C)
    decoder_input_ids -> shared embedding                            (B, T, C)
              -> decoder: M x [ x + causal attn(RMS(x)) ; x + cross attn(RMS(x), encoder) ;
                                x + ffn(RMS(x)) ] -> RMS             (B, T, C)
              -> lm_head                                             (B, T, vocab)

Attention has no biases and no 1/sqrt(d) scaling; instead each stack adds a
learned bias per head and per bucket of the distance between query and key
(buckets exact for short distances, logarithmic up to
``relative_attention_max_distance``; both directions in the encoder, the past
only in the decoder). The table sits in the first layer of each stack, is
read once per forward pass and the bias reused by every layer of the stack.
Cross-attention has no position bias.

Two generations share the layout:

- T5 v1.0 (``feed_forward_proj = "relu"``, ``tie_word_embeddings = true``):
  ReLU feed-forward; the head is the shared embedding, and the decoder's output
  is scaled by ``d_model ** -0.5`` before it;
- T5 v1.1 / Flan-T5 (``"gated-gelu"``, ``tie_word_embeddings = false``):
  ``gelu_tanh(x W_0) * (x W_1)`` feed-forward, a head of its own, no scaling.

transformers 5.x always builds a tied head, and writes ``scale_decoder_outputs``
(False for a v1.1 config) beside ``tie_word_embeddings: true``; such a file
holds ``lm_head.weight`` only when the head differs from the embedding. minipt
reads both spellings: the scaling follows ``scale_decoder_outputs`` when the
file has it, else ``tie_word_embeddings``; the head is tied unless the file
says ``tie_word_embeddings: false`` or holds a ``lm_head.weight`` of its own.

Generation runs the encoder once, computes every layer's cross-attention keys
and values once, and feeds the decoder one token at a time against a
preallocated cache of its self-attention keys and values. ``T5EncoderForDecoding``
and ``T5DecoderStep`` give the same two parts as functions of tensors only (the
cache passed in and out), which ``torch.export`` traces.

Reads and writes the official Hugging Face layout (``shared.weight``,
``encoder.block.0.layer.0.SelfAttention.q.weight``, ...) through the key map at
the bottom of this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Pretrained
from ..checks import check_choice, check_float, check_ids, check_int, check_mask_values, check_on_device
from ..config import Config, count, epsilon, first_stop_id, flag, probability, real, require, text, token_id
from ..errors import ConfigError, InputError
from ..keymap import KeyMap
from ..nn import Dropout, Linear, RMSNorm, activation, attention_bias, get_backend, scaled_dot_product_attention
from ..nn.backend import BackendBlock, ChoosesBackend
from ..nn.fuse import InferenceCopy
from ..nn.layers import ACTIVATIONS
from ..nn.output import ModelOutput
from ..nn.sampling import DEFAULT_TOP_K, GenerateOutput, check_generation, check_return_sequences, generation_loop, with_generation_config
from ..nn.streamer import Streamer, ends_streamer
from ..nn.tap import tap
from ..registry import Reads, register


@dataclass
class T5Config(Config):
    """The fields of a Hugging Face T5 ``config.json`` (unknown fields are ignored), checked when built."""

    vocab_size: int = count(32128)
    d_model: int = count(512)
    d_kv: int = count(64)  # each head's width; heads x d_kv need not equal d_model
    d_ff: int = count(2048)
    num_layers: int = count(6)  # the encoder's
    num_decoder_layers: int | None = count(None, optional=True)  # None: as many as the encoder
    num_heads: int = count(8)
    relative_attention_num_buckets: int = count(32)
    relative_attention_max_distance: int = count(128)  # distances from here on share the last bucket
    dropout_rate: float = probability(0.1)
    layer_norm_epsilon: float = epsilon(1e-6)
    initializer_factor: float = real(1.0)
    feed_forward_proj: str = text("relu")  # "relu" (v1.0), "gated-gelu" (v1.1, Flan-T5), or "[gated-]<activation>"
    tie_word_embeddings: bool = flag(True)  # the official meaning: the head is the shared embedding (and the output is scaled)
    scale_decoder_outputs: bool | None = None  # transformers 5.x's key; None: as tie_word_embeddings
    n_positions: int = count(512)  # decoder places generate preallocates (relative positions set no limit: a longer generation grows them)
    decoder_start_token_id: int | None = token_id(0)  # None: pad_token_id
    pad_token_id: int | None = token_id(0)
    eos_token_id: int | None = token_id(1)
    is_encoder_decoder: bool = flag(True)  # false in what transformers' T5EncoderModel saves; the weights decide what loads

    model_type = "t5"

    def check(self):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = self.tie_word_embeddings
        require(isinstance(self.scale_decoder_outputs, bool), "scale_decoder_outputs", self.scale_decoder_outputs, "true, false or null")
        require(self.dense_act_fn in ACTIVATIONS and self.feed_forward_proj.count("-") <= 1 and self.feed_forward_proj.split("-")[0] in ("gated", self.dense_act_fn),
                "feed_forward_proj", self.feed_forward_proj, f"'<activation>' or 'gated-<activation>', the activation one of {', '.join(ACTIVATIONS)}")
        # the decoder's buckets: half exact, half logarithmic up to max_distance (the encoder's halve both)
        require(self.relative_attention_num_buckets >= 4, "relative_attention_num_buckets", self.relative_attention_num_buckets, "at least 4")
        require(self.relative_attention_max_distance > self.relative_attention_num_buckets // 2, "relative_attention_max_distance",
                self.relative_attention_max_distance, f"more than relative_attention_num_buckets / 2 = {self.relative_attention_num_buckets // 2}")

    # the common names transformers maps onto these fields (its attribute_map), read-only
    hidden_size = property(lambda self: self.d_model)
    num_hidden_layers = property(lambda self: self.num_layers)
    num_attention_heads = property(lambda self: self.num_heads)

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"  # as transformers: the tanh approximation, as in the original mesh-tensorflow code
        return self.feed_forward_proj.split("-")[-1]

    @property
    def start_token(self) -> int | None:
        return self.decoder_start_token_id if self.decoder_start_token_id is not None else self.pad_token_id

    @classmethod
    def prepare(cls, values: dict) -> dict:
        if values.get("is_decoder"):
            raise ConfigError("sets is_decoder: a T5 stack alone as a decoder is not supported")
        return first_stop_id(values)  # a list of stop ids: generation stops on the first


# -- relative positions --------------------------------------------------------------
def relative_position_bucket(relative_position: torch.Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """The bucket of each distance ``key - query``: exact up to ``max_exact``, then logarithmic up to ``max_distance``.

    Bidirectional (the encoder): half the buckets for keys before the query, half after.
    Causal (the decoder): only keys at or before the query, all buckets for them."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # the float32 log as in the reference, truncated towards zero by .long()
    large = max_exact + (torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """A learned bias per bucket and head (``weight`` (buckets, heads)), read as ``(1, heads, T, S)``."""

    def __init__(self, config: T5Config, *, bidirectional: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.relative_attention_num_buckets, config.num_heads))
        self.bidirectional = bidirectional
        self.max_distance = config.relative_attention_max_distance

    def forward(self, query_len: int, key_len: int, past: int = 0) -> torch.Tensor:
        """The bias of ``query_len`` queries (the first at position ``past``) over ``key_len`` keys from position 0."""
        device = self.weight.device
        query = torch.arange(query_len, device=device)[:, None] + past  # (T, 1)
        key = torch.arange(key_len, device=device)[None, :]  # (1, S)
        bucket = relative_position_bucket(key - query, bidirectional=self.bidirectional, num_buckets=self.weight.shape[0], max_distance=self.max_distance)
        return F.embedding(bucket, self.weight).permute(2, 0, 1).unsqueeze(0).contiguous()  # (1, heads, T, S), each row of keys contiguous


# -- the decoder's key/value cache --------------------------------------------------------
class T5Cache:
    """The decoder's self-attention keys and values, preallocated ``(layers, B, heads, max_len, d_kv)`` and doubled
    when a longer generation needs more places, each layer's cross-attention keys and values over the encoder's
    output, computed once ``(B, heads, S, d_kv)``, and the decoder's relative position bias between every two of the
    first ``max_len`` places, read once ``(1, heads, max_len, max_len)`` (past them, each step's rows are computed)."""

    def __init__(self, config: T5Config, cross: list[tuple[torch.Tensor, torch.Tensor]], max_len: int, relative_bias: RelativePositionBias):
        k = cross[0][0]
        shape = (config.num_decoder_layers, k.shape[0], config.num_heads, max_len, config.d_kv)
        self.keys = torch.zeros(shape, dtype=k.dtype, device=k.device)
        self.values = torch.zeros(shape, dtype=k.dtype, device=k.device)
        self.cross = [(k.contiguous(), v.contiguous()) for k, v in cross]  # read at every step: copied out of the heads' view once
        self.relative_bias = relative_bias
        self.bias = relative_bias(max_len, max_len)  # depends on key - query only: each step slices its rows
        self.length = 0

    def position_bias(self, new: int) -> torch.Tensor:
        """The bias of the ``new`` places after those cached over all up to them: (1, heads, new, length + new)."""
        end = self.length + new
        if end > self.keys.shape[3]:  # a generation longer than preallocated: twice the places (the cached ones copied once)
            grown = max(end, 2 * self.keys.shape[3])
            more = (0, 0, 0, grown - self.keys.shape[3])  # (d_kv, places) padding of the last two dimensions
            self.keys, self.values = F.pad(self.keys, more), F.pad(self.values, more)
        if end > self.bias.shape[2]:
            return self.relative_bias(new, end, self.length)
        return self.bias[:, :, self.length : end, :end]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values ``(B, heads, T, d_kv)`` of one layer; return all so far ``(B, heads, length + T, d_kv)``."""
        end = self.length + k.shape[2]
        if end > self.keys.shape[3]:
            raise InputError(f"the cache holds {self.keys.shape[3]} positions: {self.length} cached + {k.shape[2]} new tokens do not fit")
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


# -- the blocks -------------------------------------------------------------------------
class T5Attention(BackendBlock, nn.Module):
    """Multi-head attention without biases or 1/sqrt(d) scaling: ``softmax(q k^T + bias) v``, ``bias`` holding the
    relative positions and the mask. Self-attention reads keys from its input; cross-attention is handed them."""

    taps = {"probs": "math", "heads": None}  # as minipt.nn.MultiHeadAttention's (see minipt.probe)

    def __init__(self, config: T5Config, relative_bias: RelativePositionBias | None = None, *, cross: bool = False):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.d_kv
        inner = config.num_heads * config.d_kv
        self.dropout = config.dropout_rate
        self.cross = cross  # keys and values from the encoder's output, computed once, not from the input
        self.q_proj = Linear(config.d_model, inner, bias=False)
        self.k_proj = Linear(config.d_model, inner, bias=False)
        self.v_proj = Linear(config.d_model, inner, bias=False)
        self.out_proj = Linear(inner, config.d_model, bias=False)
        self.qkv_proj: nn.Module | None = None  # self-attention's Q, K and V in one matmul: set by merge_qkv (fuse())
        self.relative_bias = relative_bias  # the stack's table, in its first layer only

    def merge_qkv(self, make_linear) -> None:
        """Self-attention: Q, K and V in one matmul on the concatenated weight, built by ``make_linear(weight, bias)``
        (``fuse()`` packs it). Cross-attention keeps its query projection alone: its keys and values are computed once."""
        if self.cross:
            return
        self.qkv_proj = make_linear(torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]), None)  # (3 inner, C)
        self.q_proj = self.k_proj = self.v_proj = None

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, T, d_kv)

    def keys_values(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, C) -> keys and values, each (B, heads, S, d_kv)."""
        return self.split_heads(self.k_proj(states)), self.split_heads(self.v_proj(states))

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None, keys_values: tuple[torch.Tensor, torch.Tensor] | None = None,
                need_weights: bool = False, *, cache: T5Cache | None = None, index: int = 0, residual: torch.Tensor | None = None,
                states: torch.Tensor | None = None, position: tuple[int, int, int] | None = None):
        """(B, T, C) -> (B, T, C) (``+ residual``, added by the output projection), the probabilities (where asked) and
        the bias attended with. ``keys_values``: given (cross-attention, computed once), else from ``states``
        (cross-attention: the encoder's output (B, S, C)) or ``hidden``, joined to the keys and values before them in
        ``cache`` (decoding: layer ``index``'s). The stack's first self-attention, given ``position`` (T queries, S keys,
        the first query at ``past``), computes the stack's relative position bias (1, heads, T, S) and adds ``bias``
        (the mask) to it, as transformers' does: inside its own call, where a module sharded on its own (FSDP2's
        ``fully_shard``) holds its whole weights."""
        if position is not None:
            position_bias = self.relative_bias(*position)
            bias = position_bias if bias is None else (position_bias + bias).clamp(min=torch.finfo(hidden.dtype).min)
        B, T, _ = hidden.shape
        if self.qkv_proj is not None:  # merged by fuse()
            q, k, v = (self.split_heads(x) for x in self.qkv_proj(hidden).chunk(3, dim=-1))  # 3 x (B, heads, T, d_kv)
        else:
            q = self.split_heads(self.q_proj(hidden))  # (B, heads, T, d_kv)
            k, v = self.keys_values(hidden if states is None else states) if keys_values is None else keys_values
        if cache is not None:
            k, v = cache.update(index, k, v)  # (B, heads, cached + T, d_kv) each
        out, probs = scaled_dot_product_attention(
            q, k, v, bias, dropout=self.dropout if self.training else 0.0, backend=get_backend(self.backend),
            need_weights=need_weights, scale=1.0, site=self,  # T5 folds the scale into its initialisation
        )
        out = tap(self, "heads", out)  # (B, heads, T, d_kv)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, out.shape[1] * out.shape[3]), residual=residual), probs, bias  # (B, T, C)


class T5FeedForward(nn.Module):
    """``wo(act(wi x))`` (v1.0), or gated ``wo(act(wi_0 x) * wi_1 x)`` (v1.1); no biases."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.gated = config.is_gated_act
        if self.gated:
            self.wi_0 = Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = Linear(config.d_model, config.d_ff, bias=False)
        self.act = activation(config.dense_act_fn)
        self.linear_act_pairs = (("wi_0" if self.gated else "wi", "act"),)  # fuse(): the activation as a post-op of its matmul
        self.dropout = Dropout(config.dropout_rate)
        self.wo = Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        inner = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))  # (B, T, d_ff)
        if inner.dtype != self.wo.weight.dtype:  # wo kept in float32 beside float16 (T5's keep_in_float32): its sums overflow
            inner = inner.to(self.wo.weight.dtype)
        return self.wo(self.dropout(inner), residual=residual)  # (B, T, C) (+ residual)


class T5Block(nn.Module):
    """One pre-norm layer: self-attention, cross-attention (decoder only), feed-forward, each added to its input."""

    residual_in_matmul = False  # fuse() sets it: each residual add joins the matmul before it (out_proj, wo)

    def __init__(self, config: T5Config, *, decoder: bool, first: bool):
        super().__init__()
        relative_bias = RelativePositionBias(config, bidirectional=not decoder) if first else None
        self.attn_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.attn = T5Attention(config, relative_bias)
        if decoder:
            self.cross_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
            self.cross_attn = T5Attention(config, cross=True)
        self.residual_adds = 3 if decoder else 2  # one per sub-layer
        self.ffn_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.ffn = T5FeedForward(config)
        self.dropout = Dropout(config.dropout_rate)

    def forward(self, hidden, bias, *, position: tuple[int, int, int] | None = None, cross_states=None, cross_keys_values=None,
                cross_bias=None, cache: T5Cache | None = None, index: int = 0, need_weights: bool = False):
        """(B, T, C) -> (B, T, C), the self-attention's and the cross-attention's probabilities (where asked), and the
        self-attention's bias, for the layers after it.

        The stack's first layer, given ``position``, has its self-attention compute the stack's relative position bias
        (``T5Attention``); a decoder layer given ``cross_states`` (the encoder's output) has its cross-attention compute
        its keys and values, else reads ``cross_keys_values`` (computed once, decoding): each inside the call of the
        module that holds the weights, as a module sharded on its own (FSDP2's ``fully_shard``) needs."""
        cross = cross_keys_values is not None or cross_states is not None
        cross_probs = None
        if self.residual_in_matmul:  # the same sums (a fused copy runs in eval: no dropout between)
            hidden, probs, bias = self.attn(self.attn_norm(hidden), bias, None, need_weights, cache=cache, index=index, residual=hidden,
                                            position=position)
            hidden = _finite(hidden)
            if cross:
                hidden, cross_probs, _ = self.cross_attn(self.cross_norm(hidden), cross_bias, cross_keys_values, need_weights, residual=hidden,
                                                         states=cross_states)
                hidden = _finite(hidden)
            return _finite(self.ffn(self.ffn_norm(hidden), residual=hidden)), probs, cross_probs, bias
        attn_out, probs, bias = self.attn(self.attn_norm(hidden), bias, None, need_weights, cache=cache, index=index, position=position)
        hidden = _finite(hidden + self.dropout(attn_out))
        if cross:
            cross_out, cross_probs, _ = self.cross_attn(self.cross_norm(hidden), cross_bias, cross_keys_values, need_weights, states=cross_states)
            hidden = _finite(hidden + self.dropout(cross_out))
        hidden = _finite(hidden + self.dropout(self.ffn(self.ffn_norm(hidden))))
        return hidden, probs, cross_probs, bias


def _finite(hidden: torch.Tensor) -> torch.Tensor:
    """float16 sums past its range clamped back inside it, as transformers' T5 does after each sub-layer; other dtypes as they are."""
    if hidden.dtype != torch.float16:
        return hidden
    limit = torch.finfo(torch.float16).max
    bound = torch.where(torch.isinf(hidden).any(), limit - 1000, limit)
    return hidden.clamp(-bound, bound)


@dataclass
class StackOutput(ModelOutput):
    last_hidden_state: torch.Tensor  # (B, T, C), after the final norm
    hidden_states: tuple[torch.Tensor, ...] | None = None  # the embeddings + each layer's output (the last one normed): L + 1 x (B, T, C)
    attentions: tuple[torch.Tensor, ...] | None = None  # L x (B, heads, T, S)
    cross_attentions: tuple[torch.Tensor, ...] | None = None  # the decoder's: L x (B, heads, T, S_encoder)


class T5Stack(nn.Module):
    """The encoder or the decoder: the blocks and the final norm (the embedding is the model's, shared)."""

    def __init__(self, config: T5Config, *, decoder: bool):
        super().__init__()
        self.decoder = decoder
        depth = config.num_decoder_layers if decoder else config.num_layers
        self.input_dropout = Dropout(config.dropout_rate)  # two modules, one rate: each is held with its own stage when frozen
        self.layers = nn.ModuleList(T5Block(config, decoder=decoder, first=i == 0) for i in range(depth))
        self.final_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.output_dropout = Dropout(config.dropout_rate)

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        old = self._modules.pop("dropout", None)  # pickled when one module dropped before the layers and after the norm
        if old is not None:
            self._modules = {"input_dropout": old, **self._modules, "output_dropout": Dropout(old.p).train(old.training)}

    def cross_keys_values(self, encoder_hidden: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's cross-attention keys and values over the encoder's output: (B, heads, S, d_kv) each."""
        return [layer.cross_attn.keys_values(encoder_hidden) for layer in self.layers]

    def forward(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, *, encoder_hidden: torch.Tensor | None = None,
                encoder_mask: torch.Tensor | None = None, cache: T5Cache | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> StackOutput:
        """``embeds`` (B, T, C); ``attention_mask`` (B, [cached +] T) 0 on padding; the decoder reads ``encoder_hidden`` (B, S, C)."""
        B, T, _ = embeds.shape
        past = cache.length if cache is not None else 0
        S = past + T
        hidden = self.input_dropout(embeds)
        # the padding (and, in the decoder, the future), to which the relative position bias is added once for the stack:
        # by the first layer (1, heads, T, S), or read off the cache
        bias = attention_bias(attention_mask, T, S, causal=self.decoder and T > 1, dtype=hidden.dtype, device=hidden.device)
        position = (T, S, past)
        if cache is not None:
            bias = cache.position_bias(T) if bias is None else (cache.position_bias(T) + bias).clamp(min=torch.finfo(hidden.dtype).min)
            position = None
        cross, cross_bias = None, None
        if self.decoder:
            cross = cache.cross if cache is not None else None  # else each layer's from encoder_hidden, in its own call
            S_enc = encoder_hidden.shape[1] if cross is None else cross[0][0].shape[2]
            cross_bias = attention_bias(encoder_mask, T, S_enc, dtype=hidden.dtype, device=hidden.device)  # (B, 1, 1, S_enc)
        all_hidden, all_attn, all_cross = [hidden], [], []
        for i, layer in enumerate(self.layers):
            hidden, probs, cross_probs, bias = layer(
                hidden, bias, position=position if i == 0 else None, cross_keys_values=None if cross is None else cross[i],
                cross_states=encoder_hidden if self.decoder and cross is None else None, cross_bias=cross_bias, cache=cache, index=i,
                need_weights=output_attentions)
            all_hidden.append(hidden)
            all_attn.append(probs)
            all_cross.append(cross_probs)
        if cache is not None:
            cache.length += T
        hidden = self.output_dropout(self.final_norm(hidden))
        all_hidden[-1] = hidden  # as transformers: the last entry is the normed output
        return StackOutput(hidden, tuple(all_hidden) if output_hidden_states else None, tuple(all_attn) if output_attentions else None,
                           tuple(all_cross) if output_attentions and self.decoder else None)


# -- outputs ------------------------------------------------------------------------------
@dataclass
class T5EncoderOutput(ModelOutput):
    last_hidden_state: torch.Tensor  # (B, S, C)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class T5Output(ModelOutput):
    """What transformers' Seq2SeqModelOutput / Seq2SeqLMOutput hold (``logits`` and ``loss`` from the LM only)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, T, vocab)
    last_hidden_state: torch.Tensor | None = None  # the decoder's (B, T, C), from T5Model
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None


torch.export.register_dataclass(StackOutput)
torch.export.register_dataclass(T5EncoderOutput)
torch.export.register_dataclass(T5Output)


# -- the models ---------------------------------------------------------------------------
def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _check_ids_and_mask(name: str, ids, mask, vocab_size: int, mask_name: str, device: torch.device | None = None) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.shape[1] == 0:
        raise InputError(f"{name} must be integer token ids of shape (batch, seq_len), got {_shape(ids) if not isinstance(ids, torch.Tensor) else f'{ids.dtype} {tuple(ids.shape)}'}")
    check_ids(name, ids, vocab_size, device=device)
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != ids.shape):
        raise InputError(f"{mask_name} must have the shape of {name} {tuple(ids.shape)}, got {_shape(mask)}")
    if mask is not None:
        check_on_device(mask_name, mask, device)
        check_mask_values(mask_name, mask)


class _T5Pretrained(Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    config_class = T5Config
    keep_in_float32 = ("wo",)  # loaded in float16, the feed-forward's output projection stays float32 (as transformers keeps it)

    @classmethod
    def check_config(cls, config: T5Config, checkpoint) -> None:
        """The fields against the tensors (``checkpoint_fields``), and heads x d_kv against the first query projection's
        rows: d_kv is in no tensor's shape alone, and a product past int64 could not even build the model."""
        super().check_config(config, checkpoint)
        key = "encoder.block.0.layer.0.SelfAttention.q.weight"
        if key in checkpoint.keys() and checkpoint.shape(key)[0] != config.num_heads * config.d_kv:
            raise ConfigError(f"the config of {cls.__name__} does not match the checkpoint {checkpoint.path}: num_heads = {config.num_heads} "
                              f"x d_kv = {config.d_kv} make {config.num_heads * config.d_kv} rows, but {key} has shape {checkpoint.shape(key)}")

    @torch.no_grad()
    def init_weights(self, module: nn.Module) -> None:
        """T5's initialisation (mesh-tensorflow's, as transformers): each projection's std from its fan-in; the scale
        1/sqrt(d_kv) that attention leaves out sits in the query projection's."""
        c, factor = self.config, self.config.initializer_factor
        if isinstance(module, RMSNorm):
            module.weight.fill_(factor)
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, factor)
        elif isinstance(module, RelativePositionBias):
            module.weight.normal_(0.0, factor * c.d_model**-0.5)
        elif isinstance(module, T5Attention):
            module.q_proj.weight.normal_(0.0, factor * (c.d_model * c.d_kv) ** -0.5)
            module.k_proj.weight.normal_(0.0, factor * c.d_model**-0.5)
            module.v_proj.weight.normal_(0.0, factor * c.d_model**-0.5)
            module.out_proj.weight.normal_(0.0, factor * (c.num_heads * c.d_kv) ** -0.5)
        elif isinstance(module, T5FeedForward):
            for name in ("wi", "wi_0", "wi_1"):
                if hasattr(module, name):
                    getattr(module, name).weight.normal_(0.0, factor * c.d_model**-0.5)
            module.wo.weight.normal_(0.0, factor * c.d_ff**-0.5)

    def encode(self, input_ids, attention_mask=None, output_hidden_states=False, output_attentions=False) -> StackOutput:
        return self.encoder(self.shared(input_ids), attention_mask, output_hidden_states=output_hidden_states, output_attentions=output_attentions)


_ENCODER_FIELDS = {
    "vocab_size": ("shared.weight", 0),
    "d_model": ("shared.weight", 1),
    "d_ff": ("encoder.layers.0.ffn.wo.weight", 1),
    "num_layers": "encoder.layers.",
    "relative_attention_num_buckets": ("encoder.layers.0.attn.relative_bias.weight", 0),
    "num_heads": ("encoder.layers.0.attn.relative_bias.weight", 1),
}
_FIELDS = {**_ENCODER_FIELDS, "num_decoder_layers": "decoder.layers.",
           "relative_attention_num_buckets": ("decoder.layers.0.attn.relative_bias.weight", 0)}


class T5EncoderModel(_T5Pretrained):
    """The T5 encoder alone (sentence encoders, the text towers of image generators): ``model(input_ids, attention_mask)``."""

    checkpoint_fields = _ENCODER_FIELDS
    transfer_stages = {"shared": ("shared", "encoder.input_dropout"), "encoder.layers.{i}": "encoder.layers.{i}",
                       "encoder.final_norm": ("encoder.final_norm", "encoder.output_dropout")}  # see minipt.transfer: T5Model's

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, decoder=False)
        self.apply(self.init_weights)
        self.set_backend(config.backend)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, output_attentions=False) -> T5EncoderOutput:
        self.check_inputs(input_ids, attention_mask)
        out = self.encode(input_ids, attention_mask, output_hidden_states, output_attentions)
        return T5EncoderOutput(out.last_hidden_state, out.hidden_states, out.attentions)

    def check_inputs(self, input_ids, attention_mask=None) -> None:
        """InputError naming the first argument of ``forward`` that does not fit: ids outside the vocabulary, a mask of another shape."""
        _check_ids_and_mask("input_ids", input_ids, attention_mask, self.config.vocab_size, "attention_mask", device=self.shared.weight.device)

    @classmethod
    def keymap(cls, config: T5Config | None = None) -> KeyMap:
        # a full model's file holds a decoder and maybe a head, unused here
        return _encoder_keymap() + KeyMap([], ignore=["decoder.{*}", "lm_head.weight"])


class T5Model(_T5Pretrained):
    """The encoder-decoder without a head: ``model(input_ids, attention_mask, decoder_input_ids, ...) -> T5Output``
    (``last_hidden_state``: the decoder's)."""

    checkpoint_fields = _FIELDS

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, decoder=False)
        self.decoder = T5Stack(config, decoder=True)
        self.build_head()
        self.apply(self.init_weights)
        self.tie_weights()
        self.set_backend(config.backend)

    def build_head(self) -> None:
        """The bare model has none."""

    def tie_weights(self) -> None:
        """The bare model has nothing to tie."""

    @property
    def transfer_stages(self) -> dict:
        """See minipt.transfer: the shared embedding, each layer of each stack, the final norms (and an untied head).
        Each stack's dropout on the embedding goes with the embedding, and the one after its final norm with that norm:
        a frozen stage holds them in evaluation, as BERT's embeddings stage holds its dropout."""
        return {"shared": ("shared", "encoder.input_dropout", "decoder.input_dropout"), "encoder.layers.{i}": "encoder.layers.{i}",
                "encoder.final_norm": ("encoder.final_norm", "encoder.output_dropout"), "decoder.layers.{i}": "decoder.layers.{i}",
                "decoder.final_norm": ("decoder.final_norm", "decoder.output_dropout")}

    @classmethod
    def adapt_config(cls, config: T5Config, checkpoint) -> T5Config:
        """A file without decoder tensors is an encoder's; one holding its own ``lm_head.weight`` (not a copy of the
        shared embedding) has an untied head."""
        keys = checkpoint.keys()
        if not any(k.startswith("decoder.") for k in keys):
            raise ConfigError(f"{checkpoint.path} holds a T5 encoder only (no decoder.* tensors): load it with T5EncoderModel, not {cls.__name__}")
        if "lm_head.weight" in keys and config.tie_word_embeddings:  # transformers 5.x writes tie_word_embeddings true even then
            if "shared.weight" in keys and torch.equal(checkpoint.get("lm_head.weight"), checkpoint.get("shared.weight")):
                return config  # the tied head written out (an old pytorch_model.bin): tied, as transformers ties it
            config = config.replace(tie_word_embeddings=False, scale_decoder_outputs=config.scale_decoder_outputs)
        return config

    def decode(self, decoder_input_ids, decoder_attention_mask, encoder_hidden, attention_mask, cache=None, output_hidden_states=False,
               output_attentions=False) -> StackOutput:
        return self.decoder(self.shared(decoder_input_ids), decoder_attention_mask, encoder_hidden=encoder_hidden, encoder_mask=attention_mask,
                            cache=cache, output_hidden_states=output_hidden_states, output_attentions=output_attentions)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None, labels=None,
                output_hidden_states=False, output_attentions=False) -> T5Output:
        """``input_ids`` (B, S) and ``decoder_input_ids`` (B, T). Without them, the LM's ``labels`` shifted right after the start
        token; without either, the start token alone (B, 1): one decoding step, whose logits choose the first token."""
        self.check_inputs(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels)
        if decoder_input_ids is None:
            decoder_input_ids = self.shift_right(labels) if labels is not None else self.start_ids(input_ids)
        encoded = self.encode(input_ids, attention_mask, output_hidden_states, output_attentions)
        decoded = self.decode(decoder_input_ids, decoder_attention_mask, encoded.last_hidden_state, attention_mask,
                              output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        return T5Output(**self.head(decoded.last_hidden_state, labels), decoder_hidden_states=decoded.hidden_states, decoder_attentions=decoded.attentions,
                        cross_attentions=decoded.cross_attentions, encoder_last_hidden_state=encoded.last_hidden_state,
                        encoder_hidden_states=encoded.hidden_states, encoder_attentions=encoded.attentions)

    def head(self, decoder_hidden: torch.Tensor, labels) -> dict:
        return {"last_hidden_state": decoder_hidden}

    def start_ids(self, input_ids: torch.Tensor, start: int | None = None) -> torch.Tensor:
        """The decoder's first input, one row per row of ``input_ids``: (B, 1) of ``start`` (default: the config's start token)."""
        start = self.config.start_token if start is None else check_int("decoder_start_token_id", start, low=0, high=self.config.vocab_size - 1, noun="a token id")
        if start is None:
            raise InputError("the config has neither decoder_start_token_id nor pad_token_id: pass decoder_input_ids (or decoder_start_token_id)")
        return torch.full((input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device)

    def check_decoder_prompt(self, decoder_input_ids, start_ids: torch.Tensor) -> torch.Tensor:
        """``decoder_input_ids`` (B, T), checked to be one integer row per input, each beginning with the start token."""
        B = start_ids.shape[0]
        if not isinstance(decoder_input_ids, torch.Tensor) or decoder_input_ids.dim() != 2 or decoder_input_ids.is_floating_point() \
                or decoder_input_ids.shape[0] != B or decoder_input_ids.shape[1] == 0:
            raise InputError(f"decoder_input_ids must be integer ids of shape ({B}, prompt_len), one row per input, got {_shape(decoder_input_ids)}")
        check_ids("decoder_input_ids", decoder_input_ids, self.config.vocab_size, device=self.shared.weight.device)
        if B == 0:
            return decoder_input_ids.to(start_ids.device)
        start = int(start_ids[0, 0])
        missing = (decoder_input_ids[:, 0] != start).nonzero().flatten().tolist()
        if missing:  # the decoder was trained on sequences that open with it; without it the first logits are off
            raise InputError(f"decoder_input_ids must begin with the decoder start token {start}; row {missing[0]} begins with "
                             f"{int(decoder_input_ids[missing[0], 0])}")
        return decoder_input_ids.to(start_ids.device)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """The decoder's inputs for ``labels``: the start token, then the labels but the last (-100 read as padding)."""
        shifted = torch.cat([self.start_ids(labels), labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id or 0)

    def check_inputs(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None, labels=None) -> None:
        """InputError naming the first argument of ``forward`` that does not fit this model."""
        config = self.config
        _check_ids_and_mask("input_ids", input_ids, attention_mask, config.vocab_size, "attention_mask", device=self.shared.weight.device)
        if labels is not None:
            if not self.has_head:
                raise InputError("labels are for T5ForConditionalGeneration; T5Model has no head to take a loss from")
            if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.is_floating_point() or labels.shape[0] != input_ids.shape[0]:
                raise InputError(f"labels must be integer ids (batch {input_ids.shape[0]}, target_len) (-100 where no loss is taken), got {_shape(labels)}")
            check_ids("labels", labels.masked_fill(labels == -100, 0), config.vocab_size, device=self.shared.weight.device)
        if decoder_input_ids is not None:
            _check_ids_and_mask("decoder_input_ids", decoder_input_ids, decoder_attention_mask, config.vocab_size, "decoder_attention_mask", device=self.shared.weight.device)
            if decoder_input_ids.shape[0] != input_ids.shape[0]:
                raise InputError(f"decoder_input_ids has {decoder_input_ids.shape[0]} rows, input_ids {input_ids.shape[0]}")
            if labels is not None and labels.shape != decoder_input_ids.shape:
                raise InputError(f"labels {tuple(labels.shape)} must have the shape of decoder_input_ids {tuple(decoder_input_ids.shape)}")
        elif decoder_attention_mask is not None:
            length = labels.shape[1] if labels is not None else 1
            if not isinstance(decoder_attention_mask, torch.Tensor) or decoder_attention_mask.shape != (input_ids.shape[0], length):
                raise InputError(f"decoder_attention_mask must have the shape of the decoder's inputs {(input_ids.shape[0], length)}, got {_shape(decoder_attention_mask)}")
            check_on_device("decoder_attention_mask", decoder_attention_mask, self.shared.weight.device)

    has_head = False

    @classmethod
    def keymap(cls, config: T5Config | None = None) -> KeyMap:
        return _encoder_keymap() + _decoder_keymap() + KeyMap([], ignore=["lm_head.weight"])


class _ConfigDefault:
    """generate's ``eos_token_id`` when none is passed: the config's, as transformers' generation_config."""

    def __repr__(self) -> str:
        return "config.eos_token_id"


_CONFIG_EOS = _ConfigDefault()


class T5ForConditionalGeneration(T5Model):
    """T5 with its language-model head: ``model(input_ids, attention_mask, decoder_input_ids | labels) -> T5Output``
    (``logits`` (B, T, vocab), ``loss`` with labels), and ``generate``."""

    has_head = True

    def build_head(self) -> None:
        self.lm_head = Linear(self.config.d_model, self.config.vocab_size, bias=False)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight

    @property
    def transfer_stages(self) -> dict:
        """A tied head is the shared embedding, so it has no stage of its own."""
        stages = super().transfer_stages
        return stages if self.config.tie_word_embeddings else {**stages, "lm_head": "lm_head"}

    def logits(self, decoder_hidden: torch.Tensor) -> torch.Tensor:
        if self.config.scale_decoder_outputs:  # v1.0: the tied head reads the output scaled by d_model ** -0.5
            decoder_hidden = decoder_hidden * self.config.d_model**-0.5
        return self.lm_head(decoder_hidden)  # (B, T, vocab)

    def head(self, decoder_hidden: torch.Tensor, labels) -> dict:
        logits = self.logits(decoder_hidden)
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten().long(), ignore_index=-100)
        return {"loss": loss, "logits": logits}

    def decoding_logits(self):
        """``logits`` for the decoding loops, (N, C) -> (N, vocab), one row per sequence. The head's weight (vocab, C) is
        the largest matrix read at every step; transposed once per generate to (C, vocab), it is multiplied by a few rows
        about twice as fast by the CPU's matmul as in nn.Linear's layout (bench/t5.py). A fuse()d head keeps its own kernel."""
        head = self.lm_head
        if type(head) is not Linear or head.weight.device.type != "cpu" or get_backend(head.backend) == "fused":
            return self.logits
        weight_t = head.weight.detach().t().contiguous()  # (C, vocab)
        scale = self.config.d_model**-0.5 if self.config.scale_decoder_outputs else None
        return lambda hidden: (hidden if scale is None else hidden * scale) @ weight_t

    def start_cache(self, encoder_hidden: torch.Tensor, max_len: int) -> T5Cache:
        """An empty decoder cache for up to ``max_len`` tokens, with the cross-attention keys and values over ``encoder_hidden``."""
        return T5Cache(self.config, self.decoder.cross_keys_values(encoder_hidden), max_len, self.decoder.layers[0].attn.relative_bias)

    @with_generation_config  # generation_config.json's defaults, as transformers takes them
    @ends_streamer
    @torch.no_grad()  # not inference_mode: what it returns may enter a computation with gradients
    def generate(
        self,
        input_ids: torch.Tensor,  # (B, S) the encoder's inputs, padded (on either side) to one length
        *,
        attention_mask: torch.Tensor | None = None,  # (B, S): 0 on padding
        max_new_tokens: int | None = None,  # tokens after the start token; or max_length, which counts it (neither: 20 new)
        max_length: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = DEFAULT_TOP_K,  # when sampling: the k most likely tokens, transformers' default 50 (0 or None: all)
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        eos_token_id: int | None = _CONFIG_EOS,  # a row stops at this token; None: no row stops early
        pad_token_id: int | None = None,  # what fills a stopped row (None: the config's)
        decoder_start_token_id: int | None = None,  # None: the config's (else pad_token_id)
        decoder_input_ids: torch.Tensor | None = None,  # (B, T) the decoder's prompt, the start token first; None: the start token alone
        seed: int | None = None,
        generator: torch.Generator | None = None,
        streamer: Streamer | None = None,
        output_logits: bool = False,
        return_dict_in_generate: bool = False,
        num_return_sequences: int = 1,  # sequences per prompt: samples (do_sample), or the best hypotheses of beam search
        num_beams: int = 1,  # > 1: beam search (``beam_search``), deterministic
        length_penalty: float = 1.0,  # beam search: a finished hypothesis scores sum(log p) / generated_length ** length_penalty
        early_stopping: bool | str = False,  # beam search: True, False or "never", as transformers defines them
    ) -> torch.Tensor | GenerateOutput:
        """The decoder's sequences, the start token (or the prompt ``decoder_input_ids`` (B, T)) first, ``(B, T + new)``, as transformers' ``generate``.

        The encoder runs once; each decoder layer's cross-attention keys and values are computed
        once; then the decoder takes one token per step against a preallocated cache. Greedy unless
        ``do_sample`` (``minipt.nn.sampling.choose_next_token``). A row that produced ``eos_token_id``
        is padded from then on; generation ends once every row has.
        """
        config = self.config
        self.check_inputs(input_ids, attention_mask)
        if eos_token_id is _CONFIG_EOS:
            eos_token_id = config.eos_token_id if config.eos_token_id is not None and config.eos_token_id < config.vocab_size else None
        if pad_token_id is None and config.pad_token_id is not None and config.pad_token_id < config.vocab_size:
            pad_token_id = config.pad_token_id
        start_ids = self.start_ids(input_ids, decoder_start_token_id)  # (B, 1)
        if decoder_input_ids is not None:
            start_ids = self.check_decoder_prompt(decoder_input_ids, start_ids)  # (B, T)
        new, generator = check_generation(
            start_ids, vocab_size=config.vocab_size, max_new_tokens=max_new_tokens, max_length=max_length,  # no context: relative positions
            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
            eos_token_id=eos_token_id, pad_token_id=pad_token_id, seed=seed, generator=generator, streamer=streamer,
            output_logits=output_logits, return_dict_in_generate=return_dict_in_generate,
        )
        if check_int("num_beams", num_beams, low=1) > config.vocab_size:  # each beam must be able to differ from the others
            raise InputError(f"num_beams must be at most the vocabulary's {config.vocab_size} tokens, got {num_beams}")
        n = check_return_sequences(num_return_sequences, do_sample, num_beams)
        check_float("length_penalty", length_penalty)  # beam search's, checked whatever num_beams is, as every argument
        check_choice("early_stopping", early_stopping, (True, False, "never"))
        if num_beams > 1:
            for name, value, plain in (("do_sample", do_sample, False), ("repetition_penalty", repetition_penalty, 1.0), ("streamer", streamer, None),
                                       ("output_logits", output_logits, False), ("return_dict_in_generate", return_dict_in_generate, False)):
                if value != plain:
                    raise InputError(f"beam search (num_beams={num_beams}) takes no {name} (got {value!r}); minipt's beam search is the deterministic one")
            return self.beam_search(input_ids, attention_mask, start_ids, new, num_beams, length_penalty, early_stopping, eos_token_id, pad_token_id, n)
        if n > 1:  # each input n times, side by side: (B n, S) and the decoder's prompts (B n, T)
            input_ids, start_ids = input_ids.repeat_interleave(n, dim=0), start_ids.repeat_interleave(n, dim=0)
            attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(n, dim=0)
        encoder_hidden = self.encode(input_ids, attention_mask).last_hidden_state  # (B, S, C), once
        cache = self.start_cache(encoder_hidden, min(start_ids.shape[1] + new, max(config.n_positions, start_ids.shape[1] + 1)))
        logits = self.decoding_logits()

        def next_logits(tokens: torch.Tensor) -> torch.Tensor:  # the decoder's prompt (B, T), then each chosen token (B, 1)
            out = self.decode(tokens, None, encoder_hidden, attention_mask, cache)
            return logits(out.last_hidden_state[:, -1]).float()  # (B, vocab)

        return generation_loop(
            next_logits, start_ids, new, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            generator=generator, streamer=streamer, output_logits=output_logits, return_dict_in_generate=return_dict_in_generate,
        )

    def beam_search(self, input_ids, attention_mask, start_ids, new: int, K: int, length_penalty: float, early_stopping, eos_token_id, pad_token_id,
                    num_return_sequences: int = 1):
        """transformers' beam search (``generation.utils._beam_search``), step for step: each step keeps the best
        ``keep`` = max(2, 1 + number of eos ids) x K continuations of the K running beams, continues the K best that did not
        stop, and merges those of the K best that stopped (eos, or the length limit) into the K finished hypotheses,
        scored sum(log p) / generated_length ** length_penalty. Returns the best finished hypothesis of each row (B, P + n),
        after the decoder's prompt ``start_ids`` (B, P); with ``num_return_sequences`` n, the n best of each row, (B n, P + n')."""
        (B, P), L = start_ids.shape, start_ids.shape[1] + new  # L: the longest sequence, the prompt included
        if B == 0:  # an empty batch: no hypotheses to search, every row as long as the longest generation
            return start_ids.new_zeros(0, L)
        keep = max(2, 1 + (eos_token_id is not None)) * K
        top_k_mask = torch.arange(keep, device=input_ids.device) < K  # (keep,): only the K best may finish
        fill = (pad_token_id or eos_token_id) if eos_token_id is not None else -1  # transformers' filling of unused places
        encoder_hidden = self.encode(input_ids, attention_mask).last_hidden_state.repeat_interleave(K, dim=0)  # (B K, S, C), once
        mask = None if attention_mask is None else attention_mask.repeat_interleave(K, dim=0)
        cache = self.start_cache(encoder_hidden, min(L, max(self.config.n_positions, P + 1)))
        logits = self.decoding_logits()
        running = torch.full((B, K, L), fill, dtype=torch.long, device=input_ids.device)
        running[:, :, :P] = start_ids[:, None]
        running_scores = torch.full((B, K), -1e9, device=input_ids.device)
        running_scores[:, 0] = 0.0  # the K beams start equal: only the first one is expanded
        finished_seqs, finished_scores = running.clone(), torch.full((B, K), -1e9, device=input_ids.device)
        finished_lengths = torch.zeros(B, K, dtype=torch.long, device=input_ids.device)  # the last token's place, 0: none yet
        is_finished = torch.zeros(B, K, dtype=torch.bool, device=input_ids.device)
        can_improve = torch.ones(B, 1, dtype=torch.bool, device=input_ids.device)
        gather = lambda x, index: x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:]))  # noqa: E731
        length = P  # the place of the next token
        tokens = running[:, :, :P].reshape(B * K, P)
        while True:
            hidden = self.decode(tokens, None, encoder_hidden, mask, cache).last_hidden_state[:, -1]  # (B K, C)
            log_probs = logits(hidden).float().log_softmax(-1).view(B, K, self.config.vocab_size) + running_scores[:, :, None]  # (B, K, V)
            V = log_probs.shape[-1]
            top_scores, top_index = log_probs.view(B, K * V).topk(keep)  # (B, keep)
            from_beam, token = top_index // V, top_index % V
            candidates = gather(running, from_beam)  # (B, keep, L)
            candidates[:, :, length] = token
            stops = (token == eos_token_id) if eos_token_id is not None else torch.zeros_like(token, dtype=torch.bool)
            stops = stops | (length + 1 >= L)  # (B, keep)
            # the K best continuations that did not stop run on
            open_scores = top_scores + stops.float() * -1e9
            chosen = open_scores.topk(K)[1]  # (B, K)
            running, running_scores = gather(candidates, chosen), gather(open_scores, chosen)
            reorder = (gather(from_beam, chosen) + torch.arange(B, device=chosen.device)[:, None] * K).flatten()  # (B K,)
            # those of the K best that stopped compete with the finished hypotheses
            just_finished = stops & top_k_mask
            scores = top_scores / ((length + 1 - P) ** length_penalty)  # the tokens generated with this one
            scores = scores + (is_finished.all(-1, keepdim=True) & (early_stopping is True)).float() * -1e9
            scores = scores + (~can_improve).float() * -1e9 + (~just_finished).float() * -1e9
            merged = torch.cat([finished_scores, scores], dim=1).topk(K)[1]  # (B, K)
            finished_seqs = gather(torch.cat([finished_seqs, candidates], dim=1), merged)
            finished_scores = gather(torch.cat([finished_scores, scores], dim=1), merged)
            finished_lengths = gather(torch.cat([finished_lengths, torch.full_like(token, length)], dim=1), merged)
            is_finished = gather(torch.cat([is_finished, just_finished], dim=1), merged)
            cache.keys, cache.values = cache.keys[:, reorder], cache.values[:, reorder]
            length += 1
            # can a running beam still beat the worst finished hypothesis? (transformers' heuristic)
            best_length = (L - P) if early_stopping == "never" and length_penalty > 0.0 else (length - P)
            best_running = running_scores[:, :1] / (best_length**length_penalty)
            worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True)[0], -1.0e9)
            can_improve = can_improve & (best_running > worst_finished).any(-1, keepdim=True)
            if not (bool(can_improve.any()) and not (bool(is_finished.all()) and early_stopping is True) and not bool(stops.all())):
                break
            tokens = running[:, :, length - 1].reshape(B * K, 1)
        n = num_return_sequences  # the hypotheses are kept best first
        return finished_seqs[:, :n, : 1 + int(finished_lengths[:, :n].max())].flatten(0, 1)  # (B n, 1 + longest of them)

    @classmethod
    def keymap(cls, config: T5Config | None = None) -> KeyMap:
        if (config or T5Config()).tie_word_embeddings:
            head, tied = [], [("lm_head.weight", "shared.weight")]
        else:
            head, tied = [("lm_head.weight", "lm_head.weight")], []
        return _encoder_keymap() + _decoder_keymap() + KeyMap(head, tied=tied)


# -- decoding with every state a tensor (torch.export) ---------------------------------------
class T5EncoderForDecoding(nn.Module):
    """What ``generate`` computes once per batch, as a function of tensors: the encoder, then each decoder layer's
    cross-attention keys and values over its output.

        input_ids (B, S), attention_mask (B, S) -> cross_keys, cross_values, each (layers, B, heads, S, d_kv)

    With ``T5DecoderStep``, generation as two graphs that ``torch.export`` traces (the loop and the choice of each
    token stay outside)."""

    def __init__(self, model: T5ForConditionalGeneration):
        super().__init__()
        self.vocab_size = model.config.vocab_size
        self.shared, self.encoder = model.shared, model.encoder  # the model's own modules (no copies)
        self.cross_attn = nn.ModuleList(layer.cross_attn for layer in model.decoder.layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_ids_and_mask("input_ids", input_ids, attention_mask, self.vocab_size, "attention_mask")
        encoded = self.encoder(self.shared(input_ids), attention_mask).last_hidden_state  # (B, S, C)
        keys, values = zip(*(attn.keys_values(encoded) for attn in self.cross_attn))
        return torch.stack(keys), torch.stack(values)  # (layers, B, heads, S, d_kv) each


class _WrittenAt:
    """T5Block's cache interface over fixed-size tensors: each layer's new keys and values written at one place, out of place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, at: torch.Tensor):
        self.keys, self.values, self.at = keys, values, at[:, None]  # at: (max_len,) True at the token's place -> (max_len, 1)
        self.new_keys, self.new_values = [], []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.where(self.at, k, self.keys[layer])  # k (B, heads, 1, d_kv) -> (B, heads, max_len, d_kv)
        values = torch.where(self.at, v, self.values[layer])
        self.new_keys.append(keys)
        self.new_values.append(values)
        return keys, values


class T5DecoderStep(nn.Module):
    """One decoding step, the cache passed in and out as tensors of fixed shapes:

        token (B, 1): the decoder's input at ``position`` (the start token at 0)
        position: a 0-d integer tensor
        self_keys, self_values (layers, B, heads, max_len, d_kv): the decoder's keys and values at the places before
        cross_keys, cross_values (layers, B, heads, S, d_kv): ``T5EncoderForDecoding``'s
        attention_mask (B, S): the encoder's padding
        -> logits (B, vocab), and self_keys, self_values with this token's written at ``position``

    ``T5Cache`` slices the cache to its length, a Python int that a traced graph would fix; here the token attends
    over all ``max_len`` places with those after ``position`` masked out, so that one graph serves every step::

        cross_keys, cross_values = T5EncoderForDecoding(model)(input_ids, attention_mask)
        step = T5DecoderStep(model)
        keys = torch.zeros(layers, B, heads, max_len, d_kv); values = torch.zeros_like(keys)
        token = start ids (B, 1)
        for i in range(max_len):
            logits, keys, values = step(token, torch.tensor(i), keys, values, cross_keys, cross_values, attention_mask)
            token = logits.argmax(-1, keepdim=True)
    """

    def __init__(self, model: T5ForConditionalGeneration):
        super().__init__()
        self.shared, self.decoder, self.lm_head = model.shared, model.decoder, model.lm_head  # the model's own modules
        self.output_scale = model.config.d_model**-0.5 if model.config.scale_decoder_outputs else 1.0  # as model.logits

    def forward(self, token, position, self_keys, self_values, cross_keys, cross_values, attention_mask):
        layers = self.decoder.layers
        hidden = self.shared(token)  # (B, 1, C)
        max_len, S = self_keys.shape[3], cross_keys.shape[3]
        places = torch.arange(max_len, device=token.device)
        bias = layers[0].attn.relative_bias(1, max_len, position)  # (1, heads, 1, max_len), the token at ``position``
        bias = bias.masked_fill(places > position, torch.finfo(bias.dtype).min)  # the places not written yet
        cross_bias = attention_bias(attention_mask, 1, S, dtype=hidden.dtype, device=hidden.device)  # (B, 1, 1, S)
        cache = _WrittenAt(self_keys, self_values, places == position)
        for i, layer in enumerate(layers):
            hidden, _, _, _ = layer(hidden, bias, cross_keys_values=(cross_keys[i], cross_values[i]), cross_bias=cross_bias, cache=cache, index=i)
        logits = self.lm_head(self.decoder.final_norm(hidden)[:, 0] * self.output_scale)  # (B, vocab)
        return logits, torch.stack(cache.new_keys), torch.stack(cache.new_values)


# -- the official names -----------------------------------------------------------------
def _stack_rules(stack: str, parts: dict[str, str]) -> list[tuple[str, str]]:
    """transformers' T5Block sub-layers (``layer.N.<name>``) -> minipt's T5Block attributes, for every block of ``stack``."""
    rules = [(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", f"{stack}.layers.0.attn.relative_bias.weight")]
    for official, ours in parts.items():
        rules.append((f"{stack}.block.{{i}}.layer.{official}.{{p}}", f"{stack}.layers.{{i}}.{ours}.{{p}}"))
    rules.append((f"{stack}.final_layer_norm.weight", f"{stack}.final_norm.weight"))
    return rules


_ATTENTION = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}


def _attention_parts(layer: int, name: str, ours: str, norm: str) -> dict[str, str]:
    return {f"{layer}.{name}.{q}": f"{ours}.{p}" for q, p in _ATTENTION.items()} | {f"{layer}.layer_norm": norm}


def _ffn_parts(layer: int) -> dict[str, str]:
    return {f"{layer}.DenseReluDense.{w}": f"ffn.{w}" for w in ("wi", "wi_0", "wi_1", "wo")} | {f"{layer}.layer_norm": "ffn_norm"}


def _encoder_keymap() -> KeyMap:
    """Hugging Face's names -> minipt's, for the shared embedding and the encoder (the stacks' embed_tokens repeat it)."""
    return KeyMap([("shared.weight", "shared.weight"), *_stack_rules("encoder", _attention_parts(0, "SelfAttention", "attn", "attn_norm") | _ffn_parts(1))],
                  tied=[("encoder.embed_tokens.weight", "shared.weight")])


def _decoder_keymap() -> KeyMap:
    parts = _attention_parts(0, "SelfAttention", "attn", "attn_norm") | _attention_parts(1, "EncDecAttention", "cross_attn", "cross_norm") | _ffn_parts(2)
    # cross-attention has no position bias; older files carry an unused table for it
    return KeyMap(_stack_rules("decoder", parts), tied=[("decoder.embed_tokens.weight", "shared.weight")],
                  ignore=["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"])


# -- minipt.reference: where the reference implementation computes the same values ----------
def _stack_points(stack: str, depth: int, num_heads: int, decoder: bool) -> dict:
    """minipt's points in one stack -> transformers' T5Stack modules computing them (``minipt.reference.report``)."""
    from ..reference import heads

    points = {}
    for i in range(depth):
        a, b = f"{stack}.layers.{i}.", f"{stack}.block.{i}.layer."
        sublayers = [("attn", "attn_norm", "0", "SelfAttention")] + ([("cross_attn", "cross_norm", "1", "EncDecAttention")] if decoder else [])
        for attn, norm, n, name in sublayers:
            points.update({
                a + f"{norm}.out": (b + f"{n}.layer_norm", None),
                a + f"{attn}.probs": (b + f"{n}.{name}", lambda out: out[2]),  # (output, position bias, probabilities)
                a + f"{attn}.heads": (b + f"{n}.{name}.o:input", heads(num_heads)),
                a + f"{attn}.out": (b + f"{n}.{name}", None),
            })
        ffn = "2" if decoder else "1"
        points.update({a + "ffn_norm.out": (b + f"{ffn}.layer_norm", None), a + "ffn.out": (b + f"{ffn}.DenseReluDense", None),
                       a + "out": (f"{stack}.block.{i}", None)})
    points[f"{stack}.final_norm.out"] = (f"{stack}.final_layer_norm", None)
    return points


def compare_with_reference(model, path, inputs, rtol):
    """transformers' T5EncoderModel / T5Model / T5ForConditionalGeneration (eager attention) on the same checkpoint, point
    by point (``minipt.reference.layer_diffs``): inside every encoder layer, then every decoder layer, then the head.

    ``inputs``: token ids (B, S), a tokenised batch (input_ids, attention_mask; decoder_input_ids and
    decoder_attention_mask, or labels, for the decoder), or texts through the tokenizer beside the checkpoint; None:
    random ids (2, 12), seed 0, where it has none. Without decoder inputs (or labels) the decoder reads the inputs' first
    8 tokens, shifted right."""
    from ..demo import tokenizer_beside
    from ..reference import import_reference, report, texts, transformers_reference

    transformers = import_reference("transformers", "T5")
    config = model.config
    if isinstance(inputs, Mapping):  # a dict, transformers' BatchEncoding
        batch, label = inputs, "a tokenised batch"
    elif isinstance(inputs, torch.Tensor):
        batch, label = {"input_ids": inputs}, f"token ids of shape {tuple(inputs.shape)}"
    elif inputs is None and tokenizer_beside(path) is None:
        batch = {"input_ids": torch.randint(config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))}
        label = "random token ids (2, 12), seed 0 (no tokenizer beside the checkpoint)"
    else:
        tokenizer = tokenizer_beside(path)
        if tokenizer is None:
            raise InputError(f"{path} holds no tokenizer; pass token ids (B, S)")
        batch, label = tokenizer(texts(inputs)), "texts"
    ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    if not isinstance(ids, torch.Tensor):
        raise InputError(f"a tokenised batch holds input_ids (a tensor); got the keys {sorted(batch)}")
    known = {"input_ids", "attention_mask"} | (set() if isinstance(model, T5EncoderModel) else {"decoder_input_ids", "decoder_attention_mask", "labels"})
    if set(batch) - known:
        raise InputError(f"{type(model).__name__}'s comparison reads {', '.join(sorted(known))}; the batch also holds "
                         f"{', '.join(sorted(set(batch) - known))}")
    cls = getattr(transformers, type(model).__name__)
    reference = transformers_reference(cls, path)
    points = _stack_points("encoder", config.num_layers, config.num_heads, decoder=False)
    if isinstance(model, T5EncoderModel):
        return report(model, f"transformers {cls.__name__}", label, rtol, points, lambda: model(ids, mask), reference,
                      lambda: reference(input_ids=ids, attention_mask=mask))
    decoder_ids, decoder_mask, labels = batch.get("decoder_input_ids"), batch.get("decoder_attention_mask"), batch.get("labels")
    if decoder_ids is None:  # the labels shifted right, as forward reads them; else the inputs' first tokens
        decoder_ids = model.shift_right(labels if isinstance(labels, torch.Tensor) else ids[:, :8])  # (B, T)
    model.check_inputs(ids, mask, decoder_ids, decoder_mask, None)
    points.update(_stack_points("decoder", config.num_decoder_layers, config.num_heads, decoder=True))
    if isinstance(model, T5ForConditionalGeneration):
        points["lm_head.out"] = ("lm_head", None)
    return report(model, f"transformers {cls.__name__}", label, rtol, points, lambda: model(ids, mask, decoder_ids, decoder_mask), reference,
                  lambda: reference(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask))


# -- the family's one declaration (minipt.registry) ------------------------------------------
def _example_inputs(cls):
    ids = torch.randint(2, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # the first row padded
    if cls is T5EncoderModel:
        return (ids, mask), {}
    return (ids, mask, ids[:, :3]), {}


FAMILY = register(
    "t5",
    (T5ForConditionalGeneration, T5Model, T5EncoderModel),
    tiny=lambda: T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, relative_attention_num_buckets=8,
                          relative_attention_max_distance=16),
    inputs=_example_inputs,
    reference=compare_with_reference,
    reads=Reads("token ids (batch x tokens)", "1x128"),
)
