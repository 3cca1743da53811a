"""BERT (Devlin et al., 2019): a stack of post-LayerNorm Transformer encoder layers.

    tokens -> embeddings (token + segment + position, LayerNorm)
           -> N x [ self-attention -> add & LayerNorm -> feed-forward -> add & LayerNorm ]
           -> last_hidden_state (B, T, H)  -> pooler: tanh(W h_[CLS])  (B, H)

Reads and writes the official Hugging Face layout (``config.json`` +
``model.safetensors``, names like ``encoder.layer.0.attention.self.query.weight``)
through the key map at the bottom of this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoint import Pretrained
from ..config import Config, count, epsilon, flag, minipt_only, one_of, probability, real, require, token_id
from ..errors import ConfigError, InputError
from ..keymap import KeyMap
from ..nn import Dropout, LayerNorm, Linear, activation, attention_bias, linear_then_activation
from ..nn.encoder import EncoderLayer
from ..nn.layers import ACTIVATIONS
from ..nn.output import ModelOutput
from ..registry import register
from .text_encoder import (PROBLEM_TYPES, READS_TOKENS, BertHeadOutput, ClassLabels, MaskedLanguageModel, SequenceClassifier, TextEncoder, check_token_inputs,
                           compare_encoder, embedding_fields, embedding_rules, example_token_inputs, fields_under, layer_rules,
                           run_layers)
from ..nn.backend import ChoosesBackend
from ..nn.fuse import InferenceCopy


@dataclass
class BertConfig(ClassLabels, Config):
    """The fields of a Hugging Face BERT ``config.json`` (unknown fields are ignored), checked when built."""

    vocab_size: int = count(30522)
    hidden_size: int = count(768)
    num_hidden_layers: int = count(12)
    num_attention_heads: int = count(12)
    intermediate_size: int = count(3072)  # the feed-forward's inner width, usually 4 x hidden
    hidden_act: str = one_of("gelu", ACTIVATIONS)  # the exact (erf) GELU; "gelu_new" is the tanh approximation
    hidden_dropout_prob: float = probability(0.1)
    attention_probs_dropout_prob: float = probability(0.1)
    max_position_embeddings: int = count(512)  # the longest input, in tokens
    type_vocab_size: int = count(2)  # segments: sentence A / sentence B
    layer_norm_eps: float = epsilon(1e-12)  # BERT's, not torch's 1e-5
    initializer_range: float = real(0.02)
    pad_token_id: int | None = token_id(0)  # the padding token's row gets no gradient; an id outside the vocabulary: none does
    position_embedding_type: str = one_of("absolute", ("absolute",))  # relative positions are not supported
    tie_word_embeddings: bool = flag(True)  # the MLM decoder reuses the token embedding matrix
    # classification heads
    num_labels: int = count(2)
    id2label: dict | None = None
    classifier_dropout: float | None = probability(None, optional=True)  # None: hidden_dropout_prob
    problem_type: str | None = one_of(None, PROBLEM_TYPES, optional=True)
    # minipt's own, not written to config.json
    add_pooling_layer: bool = flag(True, minipt_only=True)  # decided by the checkpoint

    def check(self):
        require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads", self.num_attention_heads, f"a divisor of hidden_size {self.hidden_size}")
        self.check_labels()

    model_type = "bert"
    _as_decoder = "BERT as a decoder"  # what a config with is_decoder or add_cross_attention asks for

    @property
    def longest_input(self) -> int:
        """The longest input, in tokens: one position each (RoBERTa's table holds fewer)."""
        return self.max_position_embeddings

    @property
    def padding_idx(self) -> int | None:
        """The token table's padding row: pad_token_id when the vocabulary holds it, else none.

        transformers saves configs whose pad_token_id lies past a small vocabulary;
        it only decides which row gets no gradient, so such a file still loads."""
        return self.pad_token_id if self.pad_token_id is not None and self.pad_token_id < self.vocab_size else None

    @classmethod
    def prepare(cls, values: dict) -> dict:
        for flag_name in ("is_decoder", "add_cross_attention"):
            if values.get(flag_name):
                raise ConfigError(f"sets {flag_name}: {cls._as_decoder} is not supported")
        return values


# Outputs read as transformers' do: out.last_hidden_state, out["pooler_output"], out[0], out.to_tuple().
# The heads return minipt.models.text_encoder.BertHeadOutput (loss, logits, hidden_states, attentions), as every text encoder's do.
@dataclass
class BertOutput(ModelOutput):
    last_hidden_state: torch.Tensor  # (B, T, H)
    pooler_output: torch.Tensor | None = None  # (B, H); None for a checkpoint saved without the pooler
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + each layer's output: L + 1 x (B, T, H)
    attentions: tuple[torch.Tensor, ...] | None = None  # each layer's attention probabilities: L x (B, heads, T, T)


torch.export.register_dataclass(BertOutput)  # a pytree: torch.export and torch.compile see the tensors inside


class BertEmbeddings(nn.Module):
    """Token + segment + learned absolute position embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig, width: int | None = None):
        """``width``: of the tables (default hidden_size; ALBERT's embedding_size)."""
        super().__init__()
        width = config.hidden_size if width is None else width
        self.token = nn.Embedding(config.vocab_size, width, padding_idx=config.padding_idx)
        self.position = nn.Embedding(config.max_position_embeddings, width)
        self.token_type = nn.Embedding(config.type_vocab_size, width)
        self.norm = LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        hidden = self.token(input_ids) + self.token_type(token_type_ids) + self.position(positions)  # (B, T, H)
        return self.dropout(self.norm(hidden))


def encoder_layer(config: BertConfig) -> EncoderLayer:
    """One encoder layer of BERT's sizes: post-LN, each sub-layer's output added to its input, then normalised."""
    return EncoderLayer(
        config.hidden_size, config.num_attention_heads, config.intermediate_size, act=config.hidden_act, eps=config.layer_norm_eps,
        dropout=config.hidden_dropout_prob, attention_dropout=config.attention_probs_dropout_prob,
    )


class BertPooler(nn.Module):
    """A dense layer with tanh on the first ([CLS]) token: the sentence-level summary."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H)


def encoder_modules(config: BertConfig, embeddings: nn.Module) -> dict[str, nn.Module | None]:
    """BERT's encoder in data-flow order: ``embeddings``, the layers, the pooler (None when the config has none)."""
    layers = nn.ModuleList(encoder_layer(config) for _ in range(config.num_hidden_layers))
    return {"embeddings": embeddings, "layers": layers, "pooler": BertPooler(config) if config.add_pooling_layer else None}


# What a BERT checkpoint's tensors fix in its config (checked before the model is built).
ENCODER_FIELDS = {**embedding_fields("hidden_size"), "intermediate_size": ("layers.0.ffn_up.weight", 0), "num_hidden_layers": "layers."}
UNDER_BERT = fields_under("bert.", ENCODER_FIELDS)  # the same, in a model with a head


class _BertPretrained(TextEncoder, Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    """BERT's initialisation, and the pooler decided by the checkpoint (sentence encoders are often saved without)."""

    config_class = BertConfig


class BertModel(_BertPretrained):
    """The BERT encoder: ``model(input_ids, attention_mask, token_type_ids) -> BertOutput``."""

    _family = "BERT"
    _pooler_key = "pooler.dense.weight"
    checkpoint_fields = ENCODER_FIELDS
    transfer_stages = {"embeddings": "embeddings", "layers.{i}": "layers.{i}", "pooler": "pooler"}  # see minipt.transfer

    def __init__(self, config: BertConfig):
        super().__init__(config, **encoder_modules(config, BertEmbeddings(config)))

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) token ids
        attention_mask: torch.Tensor | None = None,  # (B, T): 1 for tokens, 0 for padding
        token_type_ids: torch.Tensor | None = None,  # (B, T): 0 for sentence A, 1 for sentence B
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BertOutput:
        self.check_inputs(input_ids, attention_mask, token_type_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        T = input_ids.shape[1]
        bias = attention_bias(attention_mask, T, T, dtype=hidden.dtype)  # (B, 1, 1, T) or None
        hidden, all_hidden, all_attn = self.run_encoder(hidden, bias, output_hidden_states, output_attentions)  # (B, T, H)
        pooled = self.pooler(hidden) if self.pooler is not None else None  # (B, H)
        return BertOutput(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_hidden, attentions=all_attn)

    def run_encoder(self, hidden: torch.Tensor, bias: torch.Tensor | None, output_hidden_states: bool, output_attentions: bool):
        """The layers in turn on the embeddings (``run_layers``): (last hidden state, hidden states or None, attention maps or None)."""
        return run_layers(self.layers, hidden, bias, output_hidden_states, output_attentions)

    def check_inputs(self, input_ids, attention_mask=None, token_type_ids=None) -> None:
        """Raise an InputError naming the first argument of ``forward`` that does not fit this model (at most ``config.longest_input`` tokens)."""
        config = self.config
        check_token_inputs(input_ids, attention_mask, token_type_ids, vocab_size=config.vocab_size, max_length=config.longest_input,
                           type_vocab_size=config.type_vocab_size, family=self._family, num_heads=config.num_attention_heads,
                           device=self.embeddings.token.weight.device)

    @classmethod
    def keymap(cls, config: BertConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's, for the encoder and pooler (with or without the bert. prefix)."""
        # Pre-training heads (cls.*) and a fine-tuned classifier in a checkpoint are known and not used by the bare encoder.
        return _encoder_keymap() + KeyMap([], ignore=["cls.{*}", "classifier.{*}"], optional_prefix="bert.")


class MaskedLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> decoder to vocabulary logits (decoder weight tied to the token embedding)."""

    linear_act_pairs = (("dense", "act"),)  # fuse(): the activation as a post-op of dense's matmul

    def __init__(self, config: BertConfig, width: int | None = None):
        """``width``: of the transformed vectors the decoder reads (default hidden_size; ALBERT's embedding_size)."""
        super().__init__()
        width = config.hidden_size if width is None else width
        self.dense = Linear(config.hidden_size, width)
        self.act = activation(config.hidden_act)
        self.norm = LayerNorm(width, eps=config.layer_norm_eps)
        self.decoder = Linear(width, config.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(linear_then_activation(self.dense, self.act, hidden)))  # (B, T, vocab)


class BertForMaskedLM(MaskedLanguageModel, _BertPretrained):
    """BERT with the masked-language-model head: logits over the vocabulary at every position (no pooler, as in
    transformers: the loss never reads it, and DDP refuses a parameter without a gradient)."""

    base_model_prefix = "bert"
    # Tied, the decoder's weight is the token embedding, and its bias is stored once, as cls.predictions.bias.
    official_head = {"dense": "cls.predictions.transform.dense", "norm": "cls.predictions.transform.LayerNorm",
                     "decoder": "cls.predictions.decoder", "bias": "cls.predictions.bias"}
    checkpoint_fields = UNDER_BERT
    # the decoder's weight is the token embedding: it counts in (and freezes with) "embeddings"
    transfer_stages = {"embeddings": "bert.embeddings", "layers.{i}": "bert.layers.{i}", "head": "head"}

    def __init__(self, config: BertConfig):
        super().__init__(config, BertModel(config.replace(add_pooling_layer=False)), MaskedLMHead(config))

    @classmethod
    def keymap(cls, config: BertConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's; the decoder's rows depend on ``config.tie_word_embeddings`` (default: tied)."""
        return cls.masked_lm_keymap(config or BertConfig(), _encoder_keymap(), renames=_ENCODER_WITHOUT_PREFIX + _LEGACY_NAMES,
                                    # pre-training checkpoints (bert-base-uncased): the next-sentence head and the pooler
                                    ignore=["cls.seq_relationship.{*}", "bert.pooler.{*}"])


class BertForSequenceClassification(SequenceClassifier, _BertPretrained):
    """BERT with a linear classifier (or regressor, for num_labels = 1) on the pooled output:

        pooler_output (B, H) -> dropout -> classifier (B, num_labels)

    ``get_classifier()`` and ``reset_classifier(num_labels)`` reach the head as on the image classifiers
    (``minipt.models.classifier``); a reset forgets the old label names (``id2label``).
    """

    base_model_prefix = "bert"
    checkpoint_fields = {**UNDER_BERT, "num_labels": ("classifier.weight", 0)}
    transfer_stages = {"embeddings": "bert.embeddings", "layers.{i}": "bert.layers.{i}", "pooler": "bert.pooler", "head": ("dropout", "classifier")}
    transfer_head = ("classifier", "num_labels")  # the head module and the config field of its size (also minipt.transfer's)

    # The head reads the pooler's output (SequenceClassifier.classify): the pooler is always built, and a file without one
    # (a masked-LM save) loads with init_missing=("bert.pooler", "classifier"), as transformers starts a fresh one.
    def __init__(self, config: BertConfig):
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        super().__init__(config, BertModel(config), dropout=Dropout(dropout), classifier=Linear(config.hidden_size, config.num_labels))

    @classmethod
    def keymap(cls, config: BertConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's; a bare encoder's or a pre-trained model's file loads too, under a new head."""
        return cls.head_keymap(_encoder_keymap(), [("classifier.{p}", "classifier.{p}")], renames=_ENCODER_WITHOUT_PREFIX + _LEGACY_NAMES,
                               ignore=["cls.{*}"])  # the pre-training heads of bert-base-uncased and the like


# -- the official names ------------------------------------------------------------
# Old TensorFlow-converted checkpoints spell LayerNorm's parameters gamma/beta.
_LEGACY_NAMES = [("{*}.LayerNorm.gamma", "{*}.LayerNorm.weight"), ("{*}.LayerNorm.beta", "{*}.LayerNorm.bias")]
# A bare encoder's checkpoint (sentence encoders, BertModel saves) has no bert. prefix;
# a model with a head accepts it, to start from it.
_ENCODER_WITHOUT_PREFIX = [(f"{part}.{{*}}", f"bert.{part}.{{*}}") for part in ("embeddings", "encoder", "pooler")]


# transformers' BertLayer -> minipt.nn.EncoderLayer
_LAYER_PARTS = {"attention.self.query": "attn.q_proj", "attention.self.key": "attn.k_proj", "attention.self.value": "attn.v_proj",
                "attention.output.dense": "attn.out_proj", "attention.output.LayerNorm": "attn_norm",
                "intermediate.dense": "ffn_up", "output.dense": "ffn_down", "output.LayerNorm": "ffn_norm"}


def _encoder_keymap() -> KeyMap:
    """Hugging Face's BertModel names -> minipt's, for the encoder and pooler (the classes' keymap() build on it)."""
    return KeyMap(
        [*embedding_rules(), *layer_rules("encoder.layer.{i}", "layers.{i}", _LAYER_PARTS), ("pooler.dense.{p}", "pooler.dense.{p}")],
        renames=_LEGACY_NAMES,
        ignore=["embeddings.position_ids", "embeddings.token_type_ids"],  # buffers (0, 1, 2, ... and zeros) that older files carry
    )


# -- minipt.reference: where the reference implementation computes the same values ----------
# transformers' BertLayer module computing each value of minipt.nn.EncoderLayer (also RoBERTa's): minipt's point -> its module
REFERENCE_LAYER = {"attn.probs": "attention.self", "attn.heads": "attention.self", "attn.out": "attention.output.dense",
                   "attn_norm.out": "attention.output", "act.out": "intermediate", "ffn_down.out": "output.dense", "out": ""}


def compare_with_reference(model, path, inputs, rtol):
    """transformers' BertModel / BertForMaskedLM / BertForSequenceClassification (eager attention) on the same checkpoint, point by point
    (``minipt.reference.layer_diffs``): the embeddings, inside every layer, the pooler, the head's output."""
    heads = {BertModel: {}, BertForMaskedLM: {"head.out": ("cls", None)}, BertForSequenceClassification: {"classifier.out": ("classifier", None)}}
    return compare_encoder(model, path, inputs, rtol, family="BERT", layers="encoder.layer", layer_names=REFERENCE_LAYER, heads=heads,
                           num_heads=model.config.num_attention_heads)


# -- the family's one declaration (minipt.registry) ------------------------------------------
FAMILY = register(
    "bert",
    (BertModel, BertForMaskedLM, BertForSequenceClassification),
    tiny=lambda: BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=20),
    inputs=example_token_inputs,
    reference=compare_with_reference,
    reads=READS_TOKENS,
)
