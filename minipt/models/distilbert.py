"""DistilBERT (Sanh et al., 2019): BERT distilled to half the layers, without token types or pooler.

    tokens -> embeddings (token + position, LayerNorm)
           -> N x [ self-attention -> add & LayerNorm -> feed-forward -> add & LayerNorm ]
           -> last_hidden_state (B, T, dim)
    masked LM:      vocab_transform -> activation -> LayerNorm -> vocab_projector (tied to the token table)
    classification: h_[CLS] -> pre_classifier -> ReLU -> dropout -> classifier   (B, num_labels)

The layers are BERT's (``minipt.nn.EncoderLayer``, post-LN, LayerNorm eps 1e-12
fixed); the config names them differently (``dim``, ``n_layers``, ``n_heads``,
``hidden_dim``, ``activation``). With ``sinusoidal_pos_embds`` the position table
starts as the fixed sine/cosine table of Vaswani et al. (2017); as in transformers 5 it
is an ordinary parameter, stored in the checkpoint, and loads from there.

Reads and writes the official Hugging Face layout (names like
``distilbert.transformer.layer.0.attention.q_lin.weight``) through the key map
at the bottom of this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..checkpoint import Pretrained
from ..config import Config, count, flag, one_of, probability, real, require, token_id
from ..errors import InputError
from ..keymap import KeyMap
from ..nn import Dropout, LayerNorm, Linear, activation, attention_bias, linear_then_activation
from ..nn.backend import ChoosesBackend
from ..nn.encoder import EncoderLayer
from ..nn.fuse import InferenceCopy
from ..nn.layers import ACTIVATIONS
from ..nn.output import ModelOutput
from ..registry import register
from .bert import MaskedLMHead
from .text_encoder import (PROBLEM_TYPES, READS_TOKENS, ClassLabels, MaskedLanguageModel, SequenceClassifier, TextEncoder, check_token_inputs, compare_encoder,
                           embedding_fields, embedding_rules, example_token_inputs, fields_under, layer_rules, run_layers)


@dataclass
class DistilBertConfig(ClassLabels, Config):
    """The fields of a Hugging Face DistilBERT ``config.json`` (unknown fields are ignored), checked when built."""

    vocab_size: int = count(30522)
    max_position_embeddings: int = count(512)  # the longest input, in tokens
    sinusoidal_pos_embds: bool = flag(False)  # the position table starts as the sine/cosine one (then loads from the file)
    n_layers: int = count(6)
    n_heads: int = count(12)
    dim: int = count(768)
    hidden_dim: int = count(3072)  # the feed-forward's inner width
    dropout: float = probability(0.1)
    attention_dropout: float = probability(0.1)
    activation: str = one_of("gelu", ACTIVATIONS)  # of the feed-forward and the MLM head; "gelu" is the exact (erf) one
    initializer_range: float = real(0.02)
    qa_dropout: float = probability(0.1)  # question answering head (not in minipt); kept so the file reads back the same
    seq_classif_dropout: float = probability(0.2)  # before the classifier
    pad_token_id: int | None = token_id(0)  # the padding token's row gets no gradient; an id outside the vocabulary: none does
    # transformers 5 ties the MLM decoder by this field; older files also carry tie_weights_, which transformers ignores
    tie_word_embeddings: bool = flag(True)
    # classification heads
    num_labels: int = count(2)
    id2label: dict | None = None
    problem_type: str | None = one_of(None, PROBLEM_TYPES, optional=True)

    model_type = "distilbert"
    layer_norm_eps: ClassVar[float] = 1e-12  # fixed in DistilBERT (not a config field)

    def check(self):
        require(self.dim % self.n_heads == 0, "n_heads", self.n_heads, f"a divisor of dim {self.dim}")
        self.check_labels()

    # BERT's names for the same values (transformers' attribute_map), read by the pieces shared with BERT (MaskedLMHead)
    @property
    def hidden_size(self) -> int:
        return self.dim

    @property
    def hidden_act(self) -> str:
        return self.activation

    num_hidden_layers = property(lambda self: self.n_layers)
    num_attention_heads = property(lambda self: self.n_heads)

    @property
    def longest_input(self) -> int:
        """The longest input, in tokens: one position each (as BertConfig's)."""
        return self.max_position_embeddings
    @property
    def padding_idx(self) -> int | None:
        """The token table's padding row: pad_token_id when the vocabulary holds it, else none."""
        return self.pad_token_id if self.pad_token_id is not None and self.pad_token_id < self.vocab_size else None


@dataclass
class DistilBertOutput(ModelOutput):
    last_hidden_state: torch.Tensor  # (B, T, dim)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + each layer's output: L + 1 x (B, T, dim)
    attentions: tuple[torch.Tensor, ...] | None = None  # each layer's attention probabilities: L x (B, heads, T, T)


torch.export.register_dataclass(DistilBertOutput)  # a pytree: torch.export and torch.compile see the tensors


def sinusoidal_positions(num_positions: int, dim: int) -> torch.Tensor:
    """The fixed position table (Vaswani et al., 2017, section 3.5), (num_positions, dim) float32:
    column 2i holds sin(pos / 10000^(2i/dim)), column 2i+1 cos of the same angle; computed in float64."""
    positions = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    pairs = torch.arange(dim, dtype=torch.float64).div(2, rounding_mode="floor")  # i for columns 2i and 2i + 1
    angles = positions / torch.pow(10000.0, 2 * pairs / dim)  # (P, dim)
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angles), torch.cos(angles))
    return table.float()


class DistilBertEmbeddings(nn.Module):
    """Token + absolute position embeddings (no segments), then LayerNorm and dropout."""

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.dim, padding_idx=config.padding_idx)
        self.position = nn.Embedding(config.max_position_embeddings, config.dim)
        self.norm = LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        return self.dropout(self.norm(self.token(input_ids) + self.position(positions)))  # (B, T, dim)


def encoder_layer(config: DistilBertConfig) -> EncoderLayer:
    """One encoder layer of DistilBERT's sizes (BERT's post-LN layer under other config names); dropout on the
    feed-forward branch's output only, as DistilBERT's TransformerBlock drops."""
    return EncoderLayer(
        config.dim, config.n_heads, config.hidden_dim, act=config.activation, eps=config.layer_norm_eps,
        dropout=0.0, ffn_dropout=config.dropout, attention_dropout=config.attention_dropout,  # as transformers: no dropout on the attention's output
    )


# What a DistilBERT checkpoint's tensors fix in its config (checked before the model is built).
ENCODER_FIELDS = {**embedding_fields("dim", token_types=False), "hidden_dim": ("layers.0.ffn_up.weight", 0), "n_layers": "layers."}
UNDER_DISTILBERT = fields_under("distilbert.", ENCODER_FIELDS)  # the same, in a model with a head


class _DistilBertPretrained(TextEncoder, Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    config_class = DistilBertConfig

    @torch.no_grad()
    def init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation (N(0, initializer_range) weights, zero biases and padding row, unit LayerNorm);
        with ``sinusoidal_pos_embds`` the position table is the sine/cosine one."""
        super().init_weights(module)
        if isinstance(module, DistilBertEmbeddings) and self.config.sinusoidal_pos_embds:
            table = module.position.weight
            table.copy_(sinusoidal_positions(*table.shape))


class DistilBertModel(_DistilBertPretrained):
    """The DistilBERT encoder: ``model(input_ids, attention_mask) -> DistilBertOutput``."""

    checkpoint_fields = ENCODER_FIELDS
    transfer_stages = {"embeddings": "embeddings", "layers.{i}": "layers.{i}"}  # see minipt.transfer

    def __init__(self, config: DistilBertConfig):
        super().__init__(config, embeddings=DistilBertEmbeddings(config), layers=nn.ModuleList(encoder_layer(config) for _ in range(config.n_layers)))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False, output_attentions=False) -> DistilBertOutput:
        """``input_ids`` (B, T) token ids; ``attention_mask`` (B, T): 1 for tokens, 0 for padding; ``token_type_ids``
        refused (DistilBERT has none), taken only to name the mistake."""
        self.check_inputs(input_ids, attention_mask, token_type_ids)
        hidden = self.embeddings(input_ids)  # (B, T, dim)
        T = input_ids.shape[1]
        bias = attention_bias(attention_mask, T, T, dtype=hidden.dtype)  # (B, 1, 1, T) or None
        hidden, all_hidden, all_attn = run_layers(self.layers, hidden, bias, output_hidden_states, output_attentions)
        return DistilBertOutput(last_hidden_state=hidden, hidden_states=all_hidden, attentions=all_attn)

    def check_inputs(self, input_ids, attention_mask=None, token_type_ids=None) -> None:
        """Raise an InputError naming the first argument of ``forward`` that does not fit this model."""
        config = self.config
        check_token_inputs(input_ids, attention_mask, token_type_ids, vocab_size=config.vocab_size, max_length=config.max_position_embeddings,
                           type_vocab_size=None, family="DistilBERT", num_heads=config.n_heads, device=self.embeddings.token.weight.device)

    @classmethod
    def keymap(cls, config: DistilBertConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's, for the encoder (with or without the distilbert. prefix)."""
        # The masked-LM head of pre-training checkpoints (distilbert-base-uncased) is known and not used by the bare encoder.
        return _encoder_keymap() + KeyMap([], ignore=[f"{name}.{{*}}" for name in (*_MLM_HEAD, "pre_classifier", "classifier")], optional_prefix="distilbert.")


class DistilBertForMaskedLM(MaskedLanguageModel, _DistilBertPretrained):
    """DistilBERT with the masked-language-model head: logits over the vocabulary at every position."""

    base_model_prefix = "distilbert"
    # BERT's head under other names; tied, the decoder's weight is the token embedding (files repeat it, or leave it out)
    # and its bias keeps the decoder's name.
    official_head = {"dense": "vocab_transform", "norm": "vocab_layer_norm", "decoder": "vocab_projector"}
    checkpoint_fields = UNDER_DISTILBERT
    # the decoder's weight is the token embedding: it counts in (and freezes with) "embeddings"
    transfer_stages = {"embeddings": "distilbert.embeddings", "layers.{i}": "distilbert.layers.{i}", "head": "head"}

    def __init__(self, config: DistilBertConfig):
        # BERT's head: dense (vocab_transform) -> act -> norm -> decoder (vocab_projector)
        super().__init__(config, DistilBertModel(config), MaskedLMHead(config))

    @classmethod
    def keymap(cls, config: DistilBertConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's; the decoder's weight depends on ``config.tie_word_embeddings`` (default: tied)."""
        return cls.masked_lm_keymap(config or DistilBertConfig(), _encoder_keymap(), renames=_ENCODER_WITHOUT_PREFIX)


class DistilBertForSequenceClassification(SequenceClassifier, _DistilBertPretrained):
    """DistilBERT with a two-layer classifier (or regressor, for num_labels = 1) on the first token's hidden state:

        h_[CLS] (B, dim) -> pre_classifier -> ReLU -> dropout -> classifier (B, num_labels)

    ``get_classifier()`` and ``reset_classifier(num_labels)`` reach the last Linear as on every minipt
    classifier (``minipt.models.classifier``); a reset keeps ``pre_classifier`` and forgets the old label names.
    """

    base_model_prefix = "distilbert"
    reads_pooler = False  # DistilBERT has no pooler: classify reads [CLS]
    checkpoint_fields = {**UNDER_DISTILBERT, "num_labels": ("classifier.weight", 0)}
    transfer_stages = {"embeddings": "distilbert.embeddings", "layers.{i}": "distilbert.layers.{i}", "head": ("dropout", "pre_classifier", "classifier")}
    transfer_head = ("classifier", "num_labels")  # the head module and the config field of its size (also minipt.transfer's)
    linear_act_pairs = (("pre_classifier", "act"),)  # fuse(): ReLU as a post-op of pre_classifier's matmul

    def __init__(self, config: DistilBertConfig):
        super().__init__(
            config, DistilBertModel(config), pre_classifier=Linear(config.dim, config.dim),
            act=activation("relu"),  # ReLU whatever config.activation says, as in transformers
            dropout=Dropout(config.seq_classif_dropout), classifier=Linear(config.dim, config.num_labels),
        )

    def classify(self, out: DistilBertOutput) -> torch.Tensor:
        first = out.last_hidden_state[:, 0]  # (B, dim): the [CLS] token
        return self.classifier(self.dropout(linear_then_activation(self.pre_classifier, self.act, first)))  # (B, num_labels)

    @classmethod
    def keymap(cls, config: DistilBertConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's; a bare encoder's or a pre-trained model's file loads too, under a new head."""
        return cls.head_keymap(_encoder_keymap(), [("pre_classifier.{p}", "pre_classifier.{p}"), ("classifier.{p}", "classifier.{p}")],
                               renames=_ENCODER_WITHOUT_PREFIX, ignore=[f"{name}.{{*}}" for name in _MLM_HEAD])  # distilbert-base-uncased's masked-LM head


# -- the official names ------------------------------------------------------------
_MLM_HEAD = ("vocab_transform", "vocab_layer_norm", "vocab_projector")
# A bare encoder's checkpoint (DistilBertModel saves) has no distilbert. prefix; a model with a head accepts it, to start from it.
_ENCODER_WITHOUT_PREFIX = [(f"{part}.{{*}}", f"distilbert.{part}.{{*}}") for part in ("embeddings", "transformer")]


# transformers' TransformerBlock -> minipt.nn.EncoderLayer
_LAYER_PARTS = {"attention.q_lin": "attn.q_proj", "attention.k_lin": "attn.k_proj", "attention.v_lin": "attn.v_proj", "attention.out_lin": "attn.out_proj",
                "sa_layer_norm": "attn_norm", "ffn.lin1": "ffn_up", "ffn.lin2": "ffn_down", "output_layer_norm": "ffn_norm"}


def _encoder_keymap() -> KeyMap:
    """Hugging Face's DistilBertModel names -> minipt's (the classes' keymap() build on it)."""
    rules = [*embedding_rules(token_types=False), *layer_rules("transformer.layer.{i}", "layers.{i}", _LAYER_PARTS)]
    return KeyMap(rules, ignore=["embeddings.position_ids", "embeddings.token_type_ids"])  # buffers (0, 1, 2, ... and zeros) that older files carry


# -- minipt.reference: where the reference implementation computes the same values ----------
def compare_with_reference(model, path, inputs, rtol):
    """transformers' DistilBertModel / DistilBertForMaskedLM / DistilBertForSequenceClassification (eager attention)
    on the same checkpoint, point by point (``minipt.reference.layer_diffs``): the embeddings, inside every layer
    (in transformers' TransformerBlock), the head's layers."""
    layer = {"attn.probs": "attention", "attn.heads": "attention.out_lin:input", "attn.out": "attention.out_lin", "attn_norm.out": "sa_layer_norm",
             "act.out": "ffn.activation", "ffn_down.out": "ffn.lin2", "out": ""}  # minipt.nn.EncoderLayer's point -> transformers' module
    heads = {
        DistilBertModel: {},
        DistilBertForMaskedLM: {"head.norm.out": ("vocab_layer_norm", None), "head.out": ("vocab_projector", None)},
        DistilBertForSequenceClassification: {"pre_classifier.out": ("pre_classifier", None), "classifier.out": ("classifier", None)},
    }
    return compare_encoder(model, path, inputs, rtol, family="DistilBERT", layers="transformer.layer", layer_names=layer, heads=heads, num_heads=model.config.n_heads)


# -- the family's one declaration (minipt.registry) ------------------------------------------
FAMILY = register(
    "distilbert",
    (DistilBertModel, DistilBertForMaskedLM, DistilBertForSequenceClassification),
    tiny=lambda: DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=20),
    inputs=example_token_inputs,
    reference=compare_with_reference,
    reads=READS_TOKENS,
)
