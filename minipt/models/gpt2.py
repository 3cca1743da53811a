"""GPT-2 (Radford et al., 2019): a stack of pre-LayerNorm causal Transformer decoder blocks.

    tokens -> token embedding + learned position embedding         (B, T, C)
           -> N x [ x + attn(LN(x)) ; x + mlp(LN(x)) ]               (B, T, C)
           -> final LayerNorm -> lm_head (tied to the token table)  (B, T, vocab)

Every attention layer is causal: a token sees itself and the tokens before
it. Generation runs the prompt once ("prefill"), keeping each layer's keys and
values in a preallocated cache, then feeds one new token per step.

Reads and writes the official Hugging Face layout (``config.json`` +
``model.safetensors``, names like ``h.0.attn.c_attn.weight``, with or without
a ``transformer.`` prefix) through the key map at the bottom of this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Pretrained
from ..checks import check_on_device, check_ids, check_mask_values, tracing
from .text_encoder import check_token_labels
from ..config import Config, count, epsilon, first_stop_id, flag, one_of, probability, real, require, token_id
from ..errors import ConfigError, InputError
from ..keymap import TRANSPOSE, KeyMap
from ..nn import Dropout, LayerNorm, Linear, activation, attention_bias, get_backend, linear_then_activation, scaled_dot_product_attention
from ..nn.layers import ACTIVATIONS
from ..nn.tap import tap
from ..registry import Reads, register
from ..nn.backend import BackendBlock, ChoosesBackend
from ..nn.fuse import InferenceCopy
from ..nn.init import init_normal_
from ..nn.output import ModelOutput
from ..nn.sampling import DEFAULT_TOP_K, GenerateOutput, check_generation, check_return_sequences, generation_loop, with_generation_config
from ..nn.streamer import Streamer, ends_streamer


@dataclass
class GPT2Config(Config):
    """The fields of a Hugging Face GPT-2 ``config.json`` (unknown fields are ignored), checked when built."""

    vocab_size: int = count(50257)  # 256 bytes + 50000 merges + <|endoftext|>
    n_positions: int = count(1024)  # the context: the longest prompt + generation, in tokens
    n_embd: int = count(768)
    n_layer: int = count(12)
    n_head: int = count(12)
    n_inner: int | None = count(None, optional=True)  # the MLP's inner width; None: 4 x n_embd
    activation_function: str = one_of("gelu_new", ACTIVATIONS)  # GELU's tanh approximation, as in the original TensorFlow code
    resid_pdrop: float = probability(0.1)  # dropout on each block's two residual branches
    embd_pdrop: float = probability(0.1)  # dropout on the summed embeddings
    attn_pdrop: float = probability(0.1)  # dropout on the attention probabilities
    layer_norm_epsilon: float = epsilon(1e-5)
    initializer_range: float = real(0.02)
    scale_attn_weights: bool = flag(True)  # scores / sqrt(head_dim); False leaves them unscaled
    scale_attn_by_inverse_layer_idx: bool = flag(False)  # scores further / (layer index + 1) (some GPT-2 descendants)
    reorder_and_upcast_attn: bool = flag(False)  # a mixed-precision trick of the reference; the same math in fp32
    # The special ids do not enter the forward pass: an id outside the vocabulary loads (transformers saves
    # GPT2Config(vocab_size=small) with its default 50256) and is one generate never produces (see generate).
    bos_token_id: int | None = token_id(50256)
    eos_token_id: int | None = token_id(50256)  # generate's default stop id
    pad_token_id: int | None = token_id(None)  # GPT-2 has none; generation pads finished rows with eos
    tie_word_embeddings: bool = flag(True)  # lm_head reuses the token embedding matrix

    model_type = "gpt2"

    def check(self):
        if self.n_inner is None:
            self.n_inner = 4 * self.n_embd
        require(self.n_embd % self.n_head == 0, "n_head", self.n_head, f"a divisor of n_embd {self.n_embd}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    # the common names transformers maps onto these fields (its attribute_map), read-only
    hidden_size = property(lambda self: self.n_embd)
    num_hidden_layers = property(lambda self: self.n_layer)
    num_attention_heads = property(lambda self: self.n_head)
    max_position_embeddings = property(lambda self: self.n_positions)

    def in_vocab(self, token: int | None) -> int | None:
        """``token`` when the vocabulary holds it, else None: a special id past the vocabulary is one no model output can be."""
        return token if token is not None and token < self.vocab_size else None

    @classmethod
    def prepare(cls, values: dict) -> dict:
        if values.get("add_cross_attention"):
            raise ConfigError("sets add_cross_attention: GPT-2 with cross-attention is not supported")
        return first_stop_id(values)  # a list of stop ids: generation stops on the first


# -- the key/value cache ------------------------------------------------------------
class KVCache:
    """Every layer's keys and values, preallocated: ``(layers, B, heads, max_len, head_dim)``.

    ``length`` positions are filled. A forward pass writes the new tokens'
    keys and values after them, and attention reads the filled part; nothing
    is reallocated or concatenated while generating.
    """

    def __init__(self, config: GPT2Config, batch_size: int, max_len: int, *, dtype=torch.float32, device=None):
        if max_len > config.n_positions:
            raise InputError(f"a cache of {max_len} positions is longer than the context ({config.n_positions} positions)")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values ``(B, heads, T, D)`` of one layer; return all so far ``(B, heads, length + T, D)``."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


# -- the blocks -------------------------------------------------------------------
class CausalSelfAttention(BackendBlock, nn.Module):
    """Multi-head causal self-attention; Q, K and V come from one fused projection (GPT-2's ``c_attn``)."""

    taps = {"probs": "math", "heads": None}  # as minipt.nn.MultiHeadAttention's (see minipt.probe)

    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx  # its slot in the cache
        self.num_heads = config.n_head
        self.head_dim = config.head_dim
        self.scale = 1.0 / math.sqrt(self.head_dim) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_idx + 1
        self.dropout = config.attn_pdrop
        self.qkv_proj = Linear(config.n_embd, 3 * config.n_embd)
        self.out_proj = Linear(config.n_embd, config.n_embd)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None, cache: KVCache | None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), ``+ residual`` (B, T, C) where given, added by the output projection."""
        B, T, C = hidden.shape
        q, k, v = self.qkv_proj(hidden).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2) for x in (q, k, v))  # (B, heads, T, D)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, heads, S, D): the cached positions, then these T
        out, _ = scaled_dot_product_attention(
            q, k, v, bias,
            causal=True,  # bias is _causal_bias's: the future masked (and padding), or None for one new token
            dropout=self.dropout if self.training else 0.0,
            backend=get_backend(self.backend),
            scale=self.scale,
            site=self,
        )
        out = tap(self, "heads", out)  # (B, heads, T, D)
        out = out.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.out_proj(out, residual=residual)


class GPT2Block(nn.Module):
    """One decoder block. Pre-LN: each sub-layer normalises its input and adds its output to the residual stream."""

    linear_act_pairs = (("ffn_up", "act"),)  # fuse(): GELU as a post-op of ffn_up's matmul
    residual_in_matmul = False  # fuse() sets it: the residual adds join out_proj's and ffn_down's matmuls

    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.attn_norm = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ffn_norm = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.ffn_up = Linear(config.n_embd, config.n_inner)
        self.act = activation(config.activation_function)
        self.ffn_down = Linear(config.n_inner, config.n_embd)
        self.dropout = Dropout(config.resid_pdrop)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        if self.residual_in_matmul:  # the same sums (a fused copy runs in eval: no dropout between)
            hidden = self.attn(self.attn_norm(hidden), bias, cache, residual=hidden)
            return self.ffn_down(linear_then_activation(self.ffn_up, self.act, self.ffn_norm(hidden)), residual=hidden)
        hidden = hidden + self.dropout(self.attn(self.attn_norm(hidden), bias, cache))  # (B, T, C)
        ffn_out = self.ffn_down(linear_then_activation(self.ffn_up, self.act, self.ffn_norm(hidden)))  # (B, T, 4C) inside, (B, T, C) out
        return hidden + self.dropout(ffn_out)


# Outputs read as transformers' do (minipt.nn.output): out.logits, out["logits"], out[0], out.to_tuple().
@dataclass
class GPT2Output(ModelOutput):
    last_hidden_state: torch.Tensor  # (B, T, C), after the final LayerNorm
    past_key_values: KVCache | None = None  # with use_cache (or a cache passed in): filled up to the new length


@dataclass
class GPT2LMOutput(ModelOutput):
    loss: torch.Tensor | None = None  # next-token cross-entropy, with labels; first, so out[0] is the loss when set
    logits: torch.Tensor = field(kw_only=True)  # (B, T, vocab)
    past_key_values: KVCache | None = None


# Outputs are pytrees, so torch.export and torch.compile see the tensors inside them.
torch.export.register_dataclass(GPT2Output)
torch.export.register_dataclass(GPT2LMOutput)

# What a GPT-2 checkpoint's tensors fix in its config (checked before the model is built).
_STACK_FIELDS = {
    "vocab_size": ("token.weight", 0),
    "n_embd": ("token.weight", 1),
    "n_positions": ("position.weight", 0),
    "n_inner": ("layers.0.ffn_up.weight", 0),
    "n_layer": "layers.",
}


class _GPT2Pretrained(Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    config_class = GPT2Config

    @torch.no_grad()
    def init_weights(self, module: nn.Module) -> None:
        """GPT-2's initialisation: N(0, initializer_range), the residual projections scaled by 1/sqrt(2 n_layer)."""
        std = self.config.initializer_range
        init_normal_(module, std)
        if isinstance(module, GPT2Block):  # each block adds two branches to the residual stream
            residual_std = std / math.sqrt(2 * self.config.n_layer)
            module.attn.out_proj.weight.normal_(0.0, residual_std)
            module.ffn_down.weight.normal_(0.0, residual_std)


class GPT2Model(_GPT2Pretrained):
    """The GPT-2 decoder stack: ``model(input_ids, attention_mask, past_key_values, use_cache) -> GPT2Output``."""

    checkpoint_fields = _STACK_FIELDS
    transfer_stages = {"embeddings": ("token", "position", "dropout"), "layers.{i}": "layers.{i}", "final_norm": "final_norm"}  # see minipt.transfer

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.n_embd)
        self.position = nn.Embedding(config.n_positions, config.n_embd)
        self.dropout = Dropout(config.embd_pdrop)
        self.layers = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.final_norm = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.apply(self.init_weights)
        self.set_backend(config.backend)

    def allocate_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` tokens (default: the whole context)."""
        weight = self.token.weight
        return KVCache(self.config, batch_size, max_len or self.config.n_positions, dtype=weight.dtype, device=weight.device)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) token ids: the new tokens only, when a cache holds the earlier ones
        attention_mask: torch.Tensor | None = None,  # (B, cached + T): 1 for tokens, 0 for (left) padding
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,  # (B, T); default: counted from the attention mask
    ) -> GPT2Output:
        self.check_inputs(input_ids, attention_mask, past_key_values, use_cache, position_ids)
        cache = past_key_values
        if cache is None and use_cache:
            cache = self.allocate_cache(input_ids.shape[0])
        past = cache.length if cache is not None else 0
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = _positions(attention_mask, past, T, input_ids.device)  # (B|1, T)
        hidden = self.dropout(self.token(input_ids) + self.position(position_ids))  # (B, T, C)
        bias = _causal_bias(attention_mask, T, past + T, hidden.dtype, hidden.device)  # (B|1, 1, T, S) or None
        for layer in self.layers:
            hidden = layer(hidden, bias, cache)
        if cache is not None:
            cache.length += T
        return GPT2Output(self.final_norm(hidden), cache if (use_cache or past_key_values is not None) else None)

    def check_inputs(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, position_ids=None) -> None:
        """``InputError`` naming the first of forward's arguments that does not fit this model (traces under torch.compile)."""
        config, cache = self.config, past_key_values
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            found = f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise InputError(f"input_ids must be integer token ids of shape (batch, seq_len), got {found}")
        if cache is not None and not isinstance(cache, KVCache):
            raise InputError(f"past_key_values must be a minipt KVCache (model.allocate_cache), not {type(cache).__name__}")
        B, T = input_ids.shape
        if T == 0:  # an empty batch (B = 0) is fine; a step of no tokens has no next-token logits to give
            raise InputError(f"input_ids of shape {tuple(input_ids.shape)} hold sequences of no tokens; each needs at least one")
        past = cache.length if cache is not None else 0
        if past + T > config.n_positions:
            raise InputError(f"{past} cached + {T} new tokens exceed the context of {config.n_positions} positions; shorten the input")
        if cache is not None:
            expected = (config.n_layer, config.n_head, config.head_dim)
            found = (cache.keys.shape[0], cache.keys.shape[2], cache.keys.shape[4])
            if found != expected:
                raise InputError(f"the cache holds (layers, heads, head_dim) {found}, this model has {expected}")
            if cache.batch_size != B:
                raise InputError(f"the cache was allocated for batch size {cache.batch_size}, input_ids has {B} sequences")
            if past + T > cache.max_len:
                raise InputError(f"the cache holds {cache.max_len} positions: {past} cached + {T} new tokens do not fit")
        check_ids("input_ids", input_ids, config.vocab_size, device=self.token.weight.device)
        if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != (B, past + T)):
            raise InputError(f"attention_mask must cover the cached and the new tokens, shape ({B}, {past + T}); got {_shape(attention_mask)}")
        if attention_mask is not None:
            check_on_device("attention_mask", attention_mask, self.token.weight.device)
            check_mask_values("attention_mask", attention_mask)  # positions are counted from it
        if position_ids is not None:
            if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or position_ids.shape[-1] != T or position_ids.shape[0] not in (1, B):
                raise InputError(f"position_ids must have shape ({B}, {T}), got {_shape(position_ids)}")
            check_ids("position_ids", position_ids, config.n_positions, device=self.token.weight.device)

    @classmethod
    def keymap(cls, config: GPT2Config | None = None) -> KeyMap:
        # A GPT2LMHeadModel file holds the stack under transformer.; its head is not used here.
        return _stack_keymap() + KeyMap([], ignore=["lm_head.weight"], optional_prefix="transformer.")


def _check_labels(labels, input_ids: torch.Tensor, vocab_size: int) -> None:
    if isinstance(labels, torch.Tensor):
        check_on_device("labels", labels, input_ids.device)
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape or labels.is_floating_point()
                               or labels.is_complex() or labels.dtype == torch.bool):
        found = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise InputError(f"labels must be integer ids shaped as input_ids {tuple(input_ids.shape)} (-100 where no loss is taken), got {found}")
    check_token_labels(labels, input_ids, vocab_size)  # each a token id or -100


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _positions(attention_mask: torch.Tensor | None, past: int, T: int, device) -> torch.Tensor:
    """Each new token's position: how many real tokens precede it, so left-padded rows start at 0."""
    if attention_mask is None:
        return torch.arange(past, past + T, device=device)[None]  # (1, T)
    positions = attention_mask.long().cumsum(-1) - 1  # (B, S): padding before the first token gets -1
    return positions[:, past:].clamp(min=0)  # (B, T)


def _causal_bias(attention_mask, T: int, S: int, dtype, device) -> torch.Tensor | None:
    if T == 1 and (attention_mask is None or (not tracing() and not attention_mask.is_meta and bool(attention_mask.all()))):
        return None  # one new token sees every cached one: nothing to mask
    # the causal part is aligned bottom-right: the T new queries are the last T of the S keys
    return attention_bias(attention_mask, T, S, causal=True, dtype=dtype, device=device)


# -- the language model and generation ---------------------------------------------
class _ConfigEos:
    """generate's ``eos_token_id`` when none is passed: the config's, as transformers' generation_config."""

    def __repr__(self) -> str:
        return "config.eos_token_id"


_CONFIG_EOS = _ConfigEos()


class GPT2LMHeadModel(_GPT2Pretrained):
    """GPT-2 with its language-model head: next-token logits at every position, and ``generate``."""

    checkpoint_fields = {name: "transformer." + where if isinstance(where, str) else ("transformer." + where[0], where[1]) for name, where in _STACK_FIELDS.items()}

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self.init_weights)
        self.tie_weights()
        self.set_backend(config.backend)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.token.weight

    @property
    def transfer_stages(self) -> dict:
        """See minipt.transfer; a tied lm_head is the token embedding, so it has no stage of its own."""
        stages = {"embeddings": ("transformer.token", "transformer.position", "transformer.dropout"), "layers.{i}": "transformer.layers.{i}", "final_norm": "transformer.final_norm"}
        return stages if self.config.tie_word_embeddings else {**stages, "head": "lm_head"}

    def allocate_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        return self.transformer.allocate_cache(batch_size, max_len)

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, position_ids=None, labels=None) -> GPT2LMOutput:
        """``labels`` (B, T): the input ids themselves (shifted here), -100 where no loss is taken."""
        out = self.transformer(input_ids, attention_mask, past_key_values, use_cache, position_ids)  # checks all but labels
        _check_labels(labels, input_ids, self.config.vocab_size)
        logits = self.lm_head(out.last_hidden_state)  # (B, T, vocab)
        loss = None
        if labels is not None:  # position t predicts token t + 1
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().long(), ignore_index=-100)
        return GPT2LMOutput(loss, logits=logits, past_key_values=out.past_key_values)

    def check_inputs(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, position_ids=None, labels=None) -> None:
        """``GPT2Model.check_inputs``, and ``labels``: integer ids shaped as ``input_ids``."""
        self.transformer.check_inputs(input_ids, attention_mask, past_key_values, use_cache, position_ids)
        _check_labels(labels, input_ids, self.config.vocab_size)

    @with_generation_config  # generation_config.json's defaults, as transformers takes them
    @ends_streamer
    @torch.no_grad()  # not inference_mode: what it returns may enter a computation with gradients
    def generate(
        self,
        input_ids: torch.Tensor,  # (B, T) prompts, left-padded to one length
        *,
        max_new_tokens: int | None = None,  # tokens to add; or max_length, which counts the prompt too (neither: 20 new)
        max_length: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = DEFAULT_TOP_K,  # when sampling: the k most likely tokens, transformers' default 50 (0 or None: all)
        top_p: float | None = None,
        repetition_penalty: float = 1.0,  # > 1 makes tokens already in the row less likely (1.0 = off)
        attention_mask: torch.Tensor | None = None,  # (B, T): 0 on the left padding; None: where pad_token_id (not eos) stands
        eos_token_id: int | None = _CONFIG_EOS,  # a row stops at this token; None: no row stops early
        pad_token_id: int | None = None,  # what fills a stopped row (None: the config's, else eos)
        seed: int | None = None,
        generator: torch.Generator | None = None,
        streamer: Streamer | None = None,  # put(prompt), put(each new (B,) token batch), end(): minipt.nn.streamer
        output_logits: bool = False,
        return_dict_in_generate: bool = False,
        num_return_sequences: int = 1,  # samples per prompt (do_sample): rows i n .. i n + n - 1 are prompt i's
    ) -> torch.Tensor | GenerateOutput:
        """Prompts followed by the generated tokens, ``(B, T + new)``, as transformers' ``generate``.

        Greedy unless ``do_sample`` (``minipt.nn.sampling.choose_next_token``;
        ``seed`` or ``generator`` make sampling reproducible). The prompt runs
        once into a preallocated key/value cache, then each step feeds the new
        token alone. A row that produced ``eos_token_id`` is padded from then on;
        generation ends early once every row has. Without ``eos_token_id`` a row
        stops at ``config.eos_token_id``, as in transformers; a config id past the
        vocabulary (transformers' default 50256 on a smaller vocabulary) is one the
        model never produces, so no row stops, and ``pad_token_id`` falls back to
        the config's only when the vocabulary holds it. ``repetition_penalty`` follows
        transformers: it counts every id of the row so far, prompt and generated,
        except the left padding. Without ``attention_mask``, a ``pad_token_id`` other
        than eos standing in the prompts marks their padding, as in transformers.
        With ``return_dict_in_generate`` a
        ``GenerateOutput`` comes back: ``sequences``, and with ``output_logits``
        the logits each new token was chosen from.
        """
        config = self.config
        if eos_token_id is _CONFIG_EOS:
            eos_token_id = config.in_vocab(config.eos_token_id)
        if pad_token_id is None:
            pad_token_id = config.in_vocab(config.pad_token_id)  # still None: stopped rows are padded with eos
        new, generator = check_generation(
            input_ids, vocab_size=config.vocab_size, context=config.n_positions, max_new_tokens=max_new_tokens, max_length=max_length,
            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
            eos_token_id=eos_token_id, pad_token_id=pad_token_id, seed=seed, generator=generator, streamer=streamer,
            output_logits=output_logits, return_dict_in_generate=return_dict_in_generate,
        )
        n = check_return_sequences(num_return_sequences, do_sample)
        if attention_mask is None and pad_token_id is not None and pad_token_id != eos_token_id and bool((input_ids == pad_token_id).any()):
            attention_mask = (input_ids != pad_token_id).long()  # as transformers: the padding read off a pad id that is not eos
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
                raise InputError(f"attention_mask has shape {_shape(attention_mask)}, input_ids {tuple(input_ids.shape)}")
            check_mask_values("attention_mask", attention_mask)
            if not bool(attention_mask[:, -1].bool().all()):
                raise InputError("the prompts must be left-padded: every row's last token must be real (attention_mask 1)")
        if n > 1:  # each prompt n times, side by side: (B n, T)
            input_ids = input_ids.repeat_interleave(n, dim=0)
            attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(n, dim=0)
        B, T = input_ids.shape
        cache = self.allocate_cache(B, T + new)
        # the padding mask of the whole run: the prompt's, then 1 for every generated token
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = torch.ones(B, T + new, dtype=torch.long, device=input_ids.device)
            mask[:, :T] = attention_mask

        def next_logits(tokens: torch.Tensor) -> torch.Tensor:  # the prompt (B, T), then one token (B, 1)
            end = cache.length + tokens.shape[1]
            out = self.transformer(tokens, None if mask is None else mask[:, :end], cache)  # mask: cached + new
            return self.lm_head(out.last_hidden_state[:, -1]).float()  # (B, vocab): only the last position's

        return generation_loop(
            next_logits, input_ids, new, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, attention_mask=mask[:, :T] if mask is not None else None,
            eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            generator=generator, streamer=streamer, output_logits=output_logits, return_dict_in_generate=return_dict_in_generate,
        )

    @classmethod
    def keymap(cls, config: GPT2Config | None = None) -> KeyMap:
        if (config or GPT2Config()).tie_word_embeddings:
            head, tied = [], [("lm_head.weight", "transformer.wte.weight")]
        else:
            head, tied = [("lm_head.weight", "lm_head.weight")], []
        return _stack_keymap().prefixed("transformer.", "transformer.") + KeyMap(head, renames=_STACK_WITHOUT_PREFIX, tied=tied)


# -- the official names ------------------------------------------------------------
# The official GPT-2 files (and GPT2Model saves) have no transformer. prefix; a model
# with the head accepts them.
_STACK_WITHOUT_PREFIX = [(f"{part}.{{*}}", f"transformer.{part}.{{*}}") for part in ("wte", "wpe", "h", "ln_f")]


def _stack_keymap() -> KeyMap:
    """Hugging Face's GPT2Model names -> minipt's. The projections are Conv1D, stored (in, out): transposed."""
    return KeyMap(
        [
            ("wte.{p}", "token.{p}"),
            ("wpe.{p}", "position.{p}"),
            ("h.{i}.ln_1.{p}", "layers.{i}.attn_norm.{p}"),
            ("h.{i}.attn.c_attn.weight", "layers.{i}.attn.qkv_proj.weight", TRANSPOSE),
            ("h.{i}.attn.c_attn.bias", "layers.{i}.attn.qkv_proj.bias"),
            ("h.{i}.attn.c_proj.weight", "layers.{i}.attn.out_proj.weight", TRANSPOSE),
            ("h.{i}.attn.c_proj.bias", "layers.{i}.attn.out_proj.bias"),
            ("h.{i}.ln_2.{p}", "layers.{i}.ffn_norm.{p}"),
            ("h.{i}.mlp.c_fc.weight", "layers.{i}.ffn_up.weight", TRANSPOSE),
            ("h.{i}.mlp.c_fc.bias", "layers.{i}.ffn_up.bias"),
            ("h.{i}.mlp.c_proj.weight", "layers.{i}.ffn_down.weight", TRANSPOSE),
            ("h.{i}.mlp.c_proj.bias", "layers.{i}.ffn_down.bias"),
            ("ln_f.{p}", "final_norm.{p}"),
        ],
        # older files carry the causal mask as buffers: attn.bias (1, 1, n_ctx, n_ctx) and attn.masked_bias (a scalar)
        ignore=["h.{i}.attn.bias", "h.{i}.attn.masked_bias"],
    )


# -- minipt.reference: where the reference implementation computes the same values ----------
def compare_with_reference(model, path, inputs, rtol):
    """transformers' GPT2Model / GPT2LMHeadModel (eager attention) on the same checkpoint, point by point (``minipt.reference.layer_diffs``)."""
    from ..demo import tokenizer_beside
    from ..reference import batch_input_ids, heads, import_reference, report, texts, transformers_reference

    transformers = import_reference("transformers", "GPT-2")
    config = model.config
    if isinstance(inputs, Mapping):  # a tokenised batch: its ids, when no row is padded
        mask = inputs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and not bool(mask.bool().all()):
            raise InputError("GPT-2 compares on rows without padding (transformers' forward does not count positions from the mask); pass texts or unpadded ids")
        inputs = batch_input_ids(inputs)
    if isinstance(inputs, torch.Tensor):
        ids, label = inputs, f"token ids of shape {tuple(inputs.shape)}"
    elif inputs is None and tokenizer_beside(path) is None:
        ids = torch.randint(config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        label = "random token ids (2, 16), seed 0 (no tokenizer beside the checkpoint)"
    else:
        tokenizer = tokenizer_beside(path)
        if tokenizer is None:
            raise InputError(f"{path} holds no tokenizer; pass token ids (B, T)")
        rows = [tokenizer(t, padding=False, truncation=False)["input_ids"][0] for t in texts(inputs)]
        shortest = min(len(r) for r in rows)
        ids = torch.stack([r[:shortest] for r in rows])  # cut to one length: no padding to tell apart
        label = f"{len(rows)} texts cut to their shortest, {shortest} tokens"
    lm = isinstance(model, GPT2LMHeadModel)
    cls = transformers.GPT2LMHeadModel if lm else transformers.GPT2Model
    reference = transformers_reference(cls, path)
    p = "transformer." if lm else ""
    points = {f"{p}token.out": (f"{p}wte", None), f"{p}position.out": (f"{p}wpe", None)}
    for i in range(config.n_layer):
        a, b = f"{p}layers.{i}.", f"{p}h.{i}."
        points.update({
            a + "attn_norm.out": (b + "ln_1", None),
            a + "attn.probs": (b + "attn", lambda out: out[1]),
            a + "attn.heads": (b + "attn.c_proj:input", heads(config.n_head)),
            a + "attn.out": (b + "attn", None),
            a + "ffn_norm.out": (b + "ln_2", None),
            a + "act.out": (b + "mlp.act", None),
            a + "ffn_down.out": (b + "mlp", None),
            a + "out": (b.rstrip("."), None),
        })
    points[f"{p}final_norm.out"] = (f"{p}ln_f", None)
    if lm:
        points["lm_head.out"] = ("lm_head", None)
    return report(model, f"transformers {cls.__name__}", label, rtol, points, lambda: model(ids), reference, lambda: reference(input_ids=ids))


# -- the family's one declaration (minipt.registry) ------------------------------------------
def _example_inputs(cls):
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    return (ids, torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])), {}  # the first row left-padded


FAMILY = register(
    "gpt2",
    (GPT2Model, GPT2LMHeadModel),
    tiny=lambda: GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0),
    inputs=_example_inputs,
    reference=compare_with_reference,
    reads=Reads("token ids (batch x tokens)", lambda model: f"1x{min(128, model.config.n_positions)}"),
)
