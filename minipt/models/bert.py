"""BERT (Devlin et al., 2019): a stack of post-LayerNorm Transformer encoder layers.

    tokens -> embeddings (token + segment + position, LayerNorm)
           -> N x [ self-attention -> add & LayerNorm -> feed-forward -> add & LayerNorm ]
           -> last_hidden_state (B, T, H)  -> pooler: tanh(W h_[CLS])  (B, H)

Reads and writes the official Hugging Face layout (``config.json`` +
``model.safetensors``, names like ``encoder.layer.0.attention.self.query.weight``)
through the key map at the bottom of this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..checkpoint import Checkpoint, Pretrained
from ..config import Config, count, epsilon, flag, minipt_only, one_of, probability, real, require, token_id
from ..errors import ConfigError, InputError
from ..keymap import KeyMap
from ..nn import LayerNorm, Linear, activation, attention_bias, linear_then_activation
from ..nn.encoder import EncoderLayer
from ..nn.layers import ACTIVATIONS
from ..nn.output import ModelOutput
from ..registry import Reads, register
from .classifier import HasClassifier
from .text_encoder import (PROBLEM_TYPES, ClassLabels, check_sequence_labels, check_token_inputs, check_token_labels, classification_loss,
                           masked_lm_loss, run_layers)
from ..nn.backend import ChoosesBackend
from ..nn.fuse import InferenceCopy
from ..nn.init import init_normal_



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
                raise ConfigError(f"sets {flag_name}: BERT as a decoder is not supported")
        return values


# Outputs read as transformers' do: out.logits, out["logits"], out[0] (the loss when labels were given), out.to_tuple().
@dataclass
class BertOutput(ModelOutput):
    last_hidden_state: torch.Tensor  # (B, T, H)
    pooler_output: torch.Tensor | None = None  # (B, H); None for a checkpoint saved without the pooler
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + each layer's output: L + 1 x (B, T, H)
    attentions: tuple[torch.Tensor, ...] | None = None  # each layer's attention probabilities: L x (B, heads, T, T)


@dataclass
class BertHeadOutput(ModelOutput):
    loss: torch.Tensor | None = None  # first, as in transformers: out[0] is the loss when there is one
    logits: torch.Tensor = field(kw_only=True)  # (B, T, vocab) for masked LM, (B, num_labels) for classification
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# Outputs are pytrees, so torch.export and torch.compile see the tensors inside them.
torch.export.register_dataclass(BertOutput)
torch.export.register_dataclass(BertHeadOutput)


class BertEmbeddings(nn.Module):
    """Token + segment + learned absolute position embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.padding_idx)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

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


# What a BERT checkpoint's tensors fix in its config (checked before the model is built).
ENCODER_FIELDS = {
    "vocab_size": ("embeddings.token.weight", 0),
    "hidden_size": ("embeddings.token.weight", 1),
    "max_position_embeddings": ("embeddings.position.weight", 0),
    "type_vocab_size": ("embeddings.token_type.weight", 0),
    "intermediate_size": ("layers.0.ffn_up.weight", 0),
    "num_hidden_layers": "layers.",
}
UNDER_BERT = {name: "bert." + where if isinstance(where, str) else ("bert." + where[0], where[1]) for name, where in ENCODER_FIELDS.items()}


class _BertPretrained(Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    config_class = BertConfig

    def init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: N(0, initializer_range) weights, zero biases and padding row, unit LayerNorm."""
        init_normal_(module, self.config.initializer_range)

    @classmethod
    def adapt_config(cls, config: BertConfig, checkpoint: Checkpoint) -> BertConfig:
        # Sentence encoders are often saved without the pooler: then the model has none.
        keymap = cls.keymap(config)
        pooler = keymap.to_official(cls._pooler_key)[0]
        config.add_pooling_layer = any(keymap.canonical(k) == pooler for k in checkpoint.keys())
        return config


class BertModel(_BertPretrained):
    """The BERT encoder: ``model(input_ids, attention_mask, token_type_ids) -> BertOutput``."""

    _pooler_key = "pooler.dense.weight"
    checkpoint_fields = ENCODER_FIELDS
    transfer_stages = {"embeddings": "embeddings", "layers.{i}": "layers.{i}", "pooler": "pooler"}  # see minipt.transfer

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(encoder_layer(config) for _ in range(config.num_hidden_layers))
        self.pooler = BertPooler(config) if config.add_pooling_layer else None
        self.apply(self.init_weights)
        self.set_backend(config.backend)

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
        hidden, all_hidden, all_attn = run_layers(self.layers, hidden, bias, output_hidden_states, output_attentions)
        pooled = self.pooler(hidden) if self.pooler is not None else None  # (B, H)
        return BertOutput(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_hidden, attentions=all_attn)

    def check_inputs(self, input_ids, attention_mask=None, token_type_ids=None) -> None:
        """Raise an InputError naming the first argument of ``forward`` that does not fit this model."""
        config = self.config
        check_token_inputs(input_ids, attention_mask, token_type_ids, vocab_size=config.vocab_size, max_length=config.max_position_embeddings,
                           type_vocab_size=config.type_vocab_size, family="BERT")

    @classmethod
    def keymap(cls, config: BertConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's, for the encoder and pooler (with or without the bert. prefix)."""
        # Pre-training heads (cls.*) in a checkpoint are known and not used by the bare encoder.
        return _encoder_keymap() + KeyMap([], ignore=["cls.{*}"], optional_prefix="bert.")


class MaskedLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> decoder to vocabulary logits (decoder weight tied to the token embedding)."""

    linear_act_pairs = (("dense", "act"),)  # fuse(): the activation as a post-op of dense's matmul

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(linear_then_activation(self.dense, self.act, hidden)))  # (B, T, vocab)


class BertForMaskedLM(_BertPretrained):
    """BERT with the masked-language-model head: logits over the vocabulary at every position."""

    _pooler_key = "bert.pooler.dense.weight"
    checkpoint_fields = UNDER_BERT
    # the decoder's weight is the token embedding: it counts in (and freezes with) "embeddings"
    transfer_stages = {"embeddings": "bert.embeddings", "layers.{i}": "bert.layers.{i}", "pooler": "bert.pooler", "head": "head"}

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.head = MaskedLMHead(config)
        self.apply(self.init_weights)
        self.tie_weights()
        self.set_backend(config.backend)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.head.decoder.weight = self.bert.embeddings.token.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, output_hidden_states=False, output_attentions=False):
        """``labels`` (B, T): the token to predict at masked positions, -100 elsewhere."""
        self.check_inputs(input_ids, attention_mask, token_type_ids, labels)
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
        logits = self.head(out.last_hidden_state)  # (B, T, vocab)
        return BertHeadOutput(loss=masked_lm_loss(logits, labels), logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)

    def check_inputs(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> None:
        """The encoder's checks (``BertModel.check_inputs``), and ``labels`` shaped like ``input_ids``."""
        self.bert.check_inputs(input_ids, attention_mask, token_type_ids)
        check_token_labels(labels, input_ids)

    @classmethod
    def keymap(cls, config: BertConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's; the decoder's rows depend on ``config.tie_word_embeddings`` (default: tied)."""
        config = config or BertConfig()
        head = [
            ("cls.predictions.transform.dense.{p}", "head.dense.{p}"),
            ("cls.predictions.transform.LayerNorm.{p}", "head.norm.{p}"),
        ]
        if config.tie_word_embeddings:
            # The decoder's weight is the token embedding, and its bias is stored once, as cls.predictions.bias.
            head.append(("cls.predictions.bias", "head.decoder.bias"))
            tied = [
                ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
                ("cls.predictions.decoder.bias", "cls.predictions.bias"),
            ]
        else:  # an untied decoder keeps its own weight and bias; cls.predictions.bias then goes unused
            head.append(("cls.predictions.decoder.{p}", "head.decoder.{p}"))
            tied = [("cls.predictions.bias", "cls.predictions.decoder.bias")]
        return _encoder_keymap().prefixed("bert.", "bert.") + KeyMap(
            head,
            renames=_ENCODER_WITHOUT_PREFIX + _LEGACY_NAMES,
            ignore=["cls.seq_relationship.{*}"],  # the next-sentence head of pre-training checkpoints
            tied=tied,
        )


class BertForSequenceClassification(HasClassifier, _BertPretrained):
    """BERT with a linear classifier (or regressor, for num_labels = 1) on the pooled output.

    ``get_classifier()`` and ``reset_classifier(num_labels)`` reach the head as on the image classifiers
    (``minipt.models.classifier``); a reset forgets the old label names (``id2label``).
    """

    _pooler_key = "bert.pooler.dense.weight"
    checkpoint_fields = {**UNDER_BERT, "num_labels": ("classifier.weight", 0)}
    transfer_stages = {"embeddings": "bert.embeddings", "layers.{i}": "bert.layers.{i}", "pooler": "bert.pooler", "head": "classifier"}
    transfer_head = ("classifier", "num_labels")  # the head module and the config field of its size (also minipt.transfer's)

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        if self.bert.pooler is None:
            raise ConfigError("sequence classification needs the pooler, and the checkpoint has none")
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = Linear(config.hidden_size, config.num_labels)
        self.apply(self.init_weights)
        self.set_backend(config.backend)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, output_hidden_states=False, output_attentions=False):
        """``labels``: class ids (B,), or targets (B,) / (B, num_labels) for regression and multi-label problems."""
        self.check_inputs(input_ids, attention_mask, token_type_ids, labels)
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
        logits = self.classifier(self.dropout(out.pooler_output))  # (B, num_labels)
        return BertHeadOutput(loss=self._loss(logits, labels), logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)

    def check_inputs(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> None:
        """The encoder's checks (``BertModel.check_inputs``), and one label entry per sequence."""
        self.bert.check_inputs(input_ids, attention_mask, token_type_ids)
        check_sequence_labels(labels, input_ids)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        return classification_loss(self.config.problem_type, self.config.num_labels, logits, labels)

    @classmethod
    def keymap(cls, config: BertConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's; a bare encoder's file (no bert. prefix) loads too, under a new head."""
        return _encoder_keymap().prefixed("bert.", "bert.") + KeyMap(
            [("classifier.{p}", "classifier.{p}")],
            renames=_ENCODER_WITHOUT_PREFIX + _LEGACY_NAMES,
        )


# -- the official names ------------------------------------------------------------
# Old TensorFlow-converted checkpoints spell LayerNorm's parameters gamma/beta.
_LEGACY_NAMES = [("{*}.LayerNorm.gamma", "{*}.LayerNorm.weight"), ("{*}.LayerNorm.beta", "{*}.LayerNorm.bias")]
# A bare encoder's checkpoint (sentence encoders, BertModel saves) has no bert. prefix;
# a model with a head accepts it, to start from it.
_ENCODER_WITHOUT_PREFIX = [(f"{part}.{{*}}", f"bert.{part}.{{*}}") for part in ("embeddings", "encoder", "pooler")]


def _encoder_keymap() -> KeyMap:
    """Hugging Face's BertModel names -> minipt's, for the encoder and pooler (the classes' keymap() build on it)."""
    return KeyMap(
        [
            ("embeddings.word_embeddings.{p}", "embeddings.token.{p}"),
            ("embeddings.position_embeddings.{p}", "embeddings.position.{p}"),
            ("embeddings.token_type_embeddings.{p}", "embeddings.token_type.{p}"),
            ("embeddings.LayerNorm.{p}", "embeddings.norm.{p}"),
            ("encoder.layer.{i}.attention.self.query.{p}", "layers.{i}.attn.q_proj.{p}"),
            ("encoder.layer.{i}.attention.self.key.{p}", "layers.{i}.attn.k_proj.{p}"),
            ("encoder.layer.{i}.attention.self.value.{p}", "layers.{i}.attn.v_proj.{p}"),
            ("encoder.layer.{i}.attention.output.dense.{p}", "layers.{i}.attn.out_proj.{p}"),
            ("encoder.layer.{i}.attention.output.LayerNorm.{p}", "layers.{i}.attn_norm.{p}"),
            ("encoder.layer.{i}.intermediate.dense.{p}", "layers.{i}.ffn_up.{p}"),
            ("encoder.layer.{i}.output.dense.{p}", "layers.{i}.ffn_down.{p}"),
            ("encoder.layer.{i}.output.LayerNorm.{p}", "layers.{i}.ffn_norm.{p}"),
            ("pooler.dense.{p}", "pooler.dense.{p}"),
        ],
        renames=_LEGACY_NAMES,
        ignore=["embeddings.position_ids"],  # a buffer (0, 1, 2, ...) that older files carry
    )


# -- minipt.reference: where the reference implementation computes the same values ----------
def compare_with_reference(model, path, inputs, rtol):
    """transformers' BertModel / BertForMaskedLM / BertForSequenceClassification (eager attention) on the same checkpoint, point by point (``minipt.reference.layer_diffs``)."""
    from ..reference import heads, import_reference, report, token_batch

    transformers = import_reference("transformers", "BERT")
    batch, label = token_batch(inputs, path)
    if isinstance(model, BertForMaskedLM):
        cls, ours, theirs, head = transformers.BertForMaskedLM, "bert.", "bert.", {"head.out": ("cls", None)}
    elif isinstance(model, BertForSequenceClassification):
        cls, ours, theirs, head = transformers.BertForSequenceClassification, "bert.", "bert.", {"classifier.out": ("classifier", None)}
    else:
        cls, ours, theirs, head = transformers.BertModel, "", "", {}
    encoder = model.bert if ours else model
    kwargs = {"add_pooling_layer": encoder.pooler is not None} if cls is transformers.BertModel else {}
    reference = cls.from_pretrained(str(path), attn_implementation="eager", **kwargs).eval()
    config = encoder.config
    points = {f"{ours}embeddings.out": (f"{theirs}embeddings", None)}
    for i in range(config.num_hidden_layers):
        a, b = f"{ours}layers.{i}.", f"{theirs}encoder.layer.{i}."
        points.update({
            a + "attn.probs": (b + "attention.self", lambda out: out[1]),
            a + "attn.heads": (b + "attention.self", heads(config.num_attention_heads)),
            a + "attn.out": (b + "attention.output.dense", None),
            a + "attn_norm.out": (b + "attention.output", None),
            a + "act.out": (b + "intermediate", None),
            a + "ffn_down.out": (b + "output.dense", None),
            a + "out": (b.rstrip("."), None),
        })
    if encoder.pooler is not None and cls is not transformers.BertForMaskedLM:  # transformers' MLM model has no pooler
        points[f"{ours}pooler.out"] = (f"{theirs}pooler", None)
    points.update(head)
    return report(model, f"transformers {cls.__name__}", label, rtol, points, lambda: model(**batch), reference, lambda: reference(**batch))


# -- the family's one declaration (minipt.registry) ------------------------------------------
def _example_inputs(cls):
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    return (ids, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])), {}  # the second row padded


FAMILY = register(
    "bert",
    (BertModel, BertForMaskedLM, BertForSequenceClassification),
    tiny=lambda: BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=20),
    inputs=_example_inputs,
    reference=compare_with_reference,
    reads=Reads("token ids (batch x tokens)", "1x128"),
)
