"""ALBERT (Lan et al., 2020): BERT with factorised embeddings and its layers shared across depth.

    tokens -> embeddings (token + segment + position in embedding_size E, LayerNorm)   (B, T, E)
           -> encoder.mapping_in: Linear E -> H                                     (B, T, H)
           -> num_hidden_layers depth steps; step i runs layer group i // (layers / groups),
              each group inner_group_num post-LN encoder layers
           -> last_hidden_state (B, T, H)  -> pooler: tanh(W h_[CLS])  (B, H)

The groups are held once (``encoder.groups.G.J``, one ``minipt.nn.EncoderLayer``
each) and run at every depth step that uses them: ``named_modules`` lists each
shared layer once, and ``minipt.transfer`` freezes a group at every depth. The
values of each depth step have their own names for ``minipt.probe``,
``encoder.depth.{s}.out`` (s counts layer calls, 0 .. layers x inner_group_num - 1);
inside a shared layer, ``capture(...).history(name)`` holds one value per call.

Reads and writes the official Hugging Face layout (``config.json`` +
``model.safetensors``, names like
``encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight``)
through the key map at the bottom of this file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config, count, epsilon, flag, one_of, probability, real, require, token_id
from ..errors import ConfigError
from ..keymap import KeyMap
from ..nn import Dropout, EncoderLayer, Linear
from ..nn.layers import ACTIVATIONS
from ..nn.tap import tap
from ..registry import register
from .bert import BertConfig, BertEmbeddings, BertModel, BertOutput, BertPooler, MaskedLMHead, _BertPretrained
from .text_encoder import (PROBLEM_TYPES, READS_TOKENS, ClassLabels, MaskedLanguageModel, SequenceClassifier, embedding_fields, embedding_rules, example_token_inputs,
                           fields_under, layer_points, layer_rules, run_layers)

MAX_DEPTH = 1000  # layer steps; the checkpoint holds only the groups, so nothing else bounds num_hidden_layers


@dataclass
class AlbertConfig(ClassLabels, Config):
    """The fields of a Hugging Face ALBERT ``config.json`` (unknown fields are ignored), checked when built.

    The defaults are transformers' (ALBERT-xxlarge's sizes), so a field a file leaves out means the same here."""

    vocab_size: int = count(30000)
    embedding_size: int = count(128)  # the token, position and segment tables' width: mapped to hidden_size by encoder.mapping_in
    hidden_size: int = count(4096)
    num_hidden_layers: int = count(12)  # depth steps; the weights are num_hidden_groups x inner_group_num layers
    num_hidden_groups: int = count(1)  # groups of shared layers, each running num_hidden_layers / num_hidden_groups steps in a row
    inner_group_num: int = count(1)  # layers in a group, run one after the other at each of its steps
    num_attention_heads: int = count(64)
    intermediate_size: int = count(16384)
    hidden_act: str = one_of("gelu_new", ACTIVATIONS)  # the tanh approximation of GELU (ALBERT v2); v1 configs say "gelu"
    hidden_dropout_prob: float = probability(0.0)
    attention_probs_dropout_prob: float = probability(0.0)
    max_position_embeddings: int = count(512)
    type_vocab_size: int = count(2)
    layer_norm_eps: float = epsilon(1e-12)
    initializer_range: float = real(0.02)
    pad_token_id: int | None = token_id(0)
    tie_word_embeddings: bool = flag(True)  # the MLM decoder reuses the token embedding matrix
    # classification heads
    num_labels: int = count(2)
    id2label: dict | None = None
    classifier_dropout_prob: float = probability(0.1)
    problem_type: str | None = one_of(None, PROBLEM_TYPES, optional=True)
    # minipt's own, not written to config.json
    add_pooling_layer: bool = flag(True, minipt_only=True)  # decided by the checkpoint

    model_type = "albert"
    padding_idx = BertConfig.padding_idx  # pad_token_id where the vocabulary holds it, as BERT's
    longest_input = BertConfig.longest_input  # max_position_embeddings

    def check(self):
        BertConfig.check(self)  # heads divide the width; id2label names classes 0..n-1
        require(self.num_hidden_layers <= MAX_DEPTH, "num_hidden_layers", self.num_hidden_layers, f"at most {MAX_DEPTH}")
        # transformers runs group int(i / (L / G)) at layer i, the original TensorFlow code int(i / L * G): the same
        # groups when G divides L, and otherwise a matter of rounding on which the two disagree (L = 18, G = 14: layer 9).
        require(self.num_hidden_layers % self.num_hidden_groups == 0, "num_hidden_groups", self.num_hidden_groups,
                f"a divisor of num_hidden_layers {self.num_hidden_layers} (each group runs the same number of layers in a row)")

    @classmethod
    def prepare(cls, values: dict) -> dict:
        # transformers before v5 read relative positions from this field; v5 ignores it: neither is minipt's absolute table
        if values.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"position_embedding_type = {values['position_embedding_type']!r}: only 'absolute' positions are supported")
        return values

    @property
    def layer_steps(self) -> list[tuple[int, int]]:
        """(group, layer in the group) of each layer call, input first: num_hidden_layers x inner_group_num of them."""
        per_group = self.num_hidden_layers // self.num_hidden_groups
        return [(i // per_group, j) for i in range(self.num_hidden_layers) for j in range(self.inner_group_num)]


class AlbertEmbeddings(BertEmbeddings):
    """BERT's token + segment + learned absolute position embeddings, of width embedding_size, then LayerNorm and dropout."""

    def __init__(self, config: AlbertConfig):
        super().__init__(config, width=config.embedding_size)


def encoder_layer(config: AlbertConfig) -> EncoderLayer:
    """One encoder layer of ALBERT's sizes: BERT's post-LN layer, dropout on the attention branch's output only
    (transformers' AlbertLayer holds a dropout for its feed-forward output that it never applies)."""
    return EncoderLayer(
        config.hidden_size, config.num_attention_heads, config.intermediate_size, act=config.hidden_act, eps=config.layer_norm_eps,
        dropout=config.hidden_dropout_prob, ffn_dropout=0.0, attention_dropout=config.attention_probs_dropout_prob,
    )


class AlbertEncoder(nn.Module):
    """``mapping_in`` (E -> H), then every layer step on the shared groups: ``groups[G][J]`` runs at each step of ``layer_steps``."""

    def __init__(self, config: AlbertConfig):
        super().__init__()
        self.mapping_in = Linear(config.embedding_size, config.hidden_size)
        self.groups = nn.ModuleList(nn.ModuleList(encoder_layer(config) for _ in range(config.inner_group_num)) for _ in range(config.num_hidden_groups))
        self.steps = tuple(config.layer_steps)
        self._step_names = tuple(f"depth.{step}.out" for step in range(len(self.steps)))
        self.taps = dict.fromkeys(self._step_names)  # minipt.probe: the hidden state after each step, on every backend

    def forward(self, embedded: torch.Tensor, bias: torch.Tensor | None, output_hidden_states: bool = False, output_attentions: bool = False):
        """(B, T, E) -> (the last hidden state (B, T, H), the hidden states or None, the attention maps or None), as ``run_layers``
        gives them: the hidden states are mapping_in's output and then each layer call's."""
        steps = [functools.partial(self.layer_step, step) for step in range(len(self.steps))]
        return run_layers(steps, self.mapping_in(embedded), bias, output_hidden_states, output_attentions)

    def layer_step(self, step: int, hidden: torch.Tensor, bias: torch.Tensor | None, need_weights: bool = False):
        """Layer call ``step``: the shared layer it runs on (B, T, H), its output passed through the step's probe point."""
        group, inner = self.steps[step]
        hidden, attn_probs = self.groups[group][inner](hidden, bias, need_weights)
        return tap(self, self._step_names[step], hidden), attn_probs


# What an ALBERT checkpoint's tensors fix in its config (checked before the model is built). The depth,
# num_hidden_layers, is not among them: the file holds each shared layer once.
ENCODER_FIELDS = {
    **embedding_fields("embedding_size"),
    "hidden_size": ("encoder.mapping_in.weight", 0),
    "intermediate_size": ("encoder.groups.0.0.ffn_up.weight", 0),
    "num_hidden_groups": "encoder.groups.",
    "inner_group_num": "encoder.groups.0.",
}
UNDER_ALBERT = fields_under("albert.", ENCODER_FIELDS)  # the same, in a model with a head


class _AlbertPretrained(_BertPretrained):
    """BERT's initialisation (N(0, initializer_range)) and pooler detection, on ALBERT's config."""

    config_class = AlbertConfig


class AlbertModel(_AlbertPretrained):
    """The ALBERT encoder: ``model(input_ids, attention_mask, token_type_ids) -> BertOutput``.

    ``hidden_states`` holds mapping_in's output and then one state per layer call (num_hidden_layers x
    inner_group_num of them), ``attentions`` one map per layer call, as transformers' AlbertModel returns them."""

    _family = "ALBERT"
    _pooler_key = "pooler.dense.weight"
    checkpoint_fields = ENCODER_FIELDS
    # a shared group is one stage: freezing it freezes it at every depth it runs (see minipt.transfer)
    transfer_stages = {"embeddings": ("embeddings", "encoder.mapping_in"), "groups.{i}": "encoder.groups.{i}", "pooler": "pooler"}

    def __init__(self, config: AlbertConfig, add_pooling_layer: bool | None = None):
        """``add_pooling_layer`` (None: ``config.add_pooling_layer``): False for the masked-LM model, which has no pooler."""
        pooled = config.add_pooling_layer if add_pooling_layer is None else add_pooling_layer
        super().__init__(config, embeddings=AlbertEmbeddings(config), encoder=AlbertEncoder(config), pooler=BertPooler(config) if pooled else None)

    # BERT's forward and checks: embeddings (B, T, E) -> the encoder (run_encoder: mapping_in to H, then every layer step) -> pooler
    forward = BertModel.forward
    check_inputs = BertModel.check_inputs

    def run_encoder(self, embedded: torch.Tensor, bias: torch.Tensor | None, output_hidden_states: bool, output_attentions: bool):
        return self.encoder(embedded, bias, output_hidden_states, output_attentions)  # (B, T, E) -> (B, T, H)

    @classmethod
    def keymap(cls, config: AlbertConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's, for the encoder and pooler (with or without the albert. prefix)."""
        # The heads in a checkpoint (pre-training's masked LM and sentence order, a classifier) are known and not used by the bare encoder.
        return _encoder_keymap() + KeyMap([], ignore=[*_PRETRAINING_HEADS, "classifier.{*}"], optional_prefix="albert.")


class AlbertMLMHead(MaskedLMHead):
    """BERT's head in the embedding width: dense (H -> E) -> activation -> LayerNorm -> decoder to vocabulary logits
    (decoder weight tied to the token embedding)."""

    def __init__(self, config: AlbertConfig):
        super().__init__(config, width=config.embedding_size)


class AlbertForMaskedLM(MaskedLanguageModel, _AlbertPretrained):
    """ALBERT with the masked-language-model head: logits over the vocabulary at every position (no pooler, as transformers';
    a checkpoint's albert.pooler is ignored)."""

    base_model_prefix = "albert"
    # Tied, the decoder's weight is the token embedding, and its bias is stored once, as predictions.bias
    # (transformers 5 writes only that; older files repeat both under predictions.decoder).
    official_head = {"dense": "predictions.dense", "norm": "predictions.LayerNorm", "decoder": "predictions.decoder", "bias": "predictions.bias"}
    checkpoint_fields = UNDER_ALBERT
    # the decoder's weight is the token embedding: it counts in (and freezes with) "embeddings"
    transfer_stages = {"embeddings": ("albert.embeddings", "albert.encoder.mapping_in"), "groups.{i}": "albert.encoder.groups.{i}", "head": "head"}

    def __init__(self, config: AlbertConfig):
        super().__init__(config, AlbertModel(config, add_pooling_layer=False), AlbertMLMHead(config))

    @classmethod
    def keymap(cls, config: AlbertConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's; the decoder's rows depend on ``config.tie_word_embeddings`` (default: tied)."""
        return cls.masked_lm_keymap(config or AlbertConfig(), _encoder_keymap(), renames=_ENCODER_WITHOUT_PREFIX + _LEGACY_NAMES,
                                    ignore=["albert.pooler.{*}", "sop_classifier.{*}"])  # transformers' masked-LM model has no pooler


class AlbertForSequenceClassification(SequenceClassifier, _AlbertPretrained):
    """ALBERT with a linear classifier (or regressor, for num_labels = 1) on the pooled output, as BERT's:

        pooler_output (B, H) -> dropout (classifier_dropout_prob) -> classifier (B, num_labels)

    ``get_classifier()`` and ``reset_classifier(num_labels)`` reach the head as on every minipt classifier
    (``minipt.models.classifier``); a reset forgets the old label names (``id2label``).
    """

    base_model_prefix = "albert"
    checkpoint_fields = {**UNDER_ALBERT, "num_labels": ("classifier.weight", 0)}
    transfer_stages = {"embeddings": ("albert.embeddings", "albert.encoder.mapping_in"), "groups.{i}": "albert.encoder.groups.{i}",
                       "pooler": "albert.pooler", "head": ("dropout", "classifier")}
    transfer_head = ("classifier", "num_labels")  # the head module and the config field of its size (also minipt.transfer's)

    # The head reads the pooler's output (SequenceClassifier.classify): the pooler is always built, and a file without one
    # (transformers' masked-LM save) loads with init_missing=("albert.pooler", "classifier").
    def __init__(self, config: AlbertConfig):
        super().__init__(config, AlbertModel(config), dropout=Dropout(config.classifier_dropout_prob), classifier=Linear(config.hidden_size, config.num_labels))

    @classmethod
    def keymap(cls, config: AlbertConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's; a bare encoder's or a pre-trained model's file loads too, under a new head."""
        return cls.head_keymap(_encoder_keymap(), [("classifier.{p}", "classifier.{p}")], renames=_ENCODER_WITHOUT_PREFIX + _LEGACY_NAMES,
                               ignore=_PRETRAINING_HEADS)


# -- the official names ------------------------------------------------------------
# Files converted from TensorFlow may spell the LayerNorms' parameters gamma/beta.
_LEGACY_NAMES = [("{*}.gamma", "{*}.weight"), ("{*}.beta", "{*}.bias")]
# A bare encoder's checkpoint (AlbertModel saves) has no albert. prefix; a model with a head accepts it, to start from it.
_ENCODER_WITHOUT_PREFIX = [(f"{part}.{{*}}", f"albert.{part}.{{*}}") for part in ("embeddings", "encoder", "pooler")]
_PRETRAINING_HEADS = ["predictions.{*}", "sop_classifier.{*}"]  # masked LM and sentence-order prediction
# transformers' AlbertLayer -> minipt.nn.EncoderLayer
_LAYER_PARTS = {"attention.query": "attn.q_proj", "attention.key": "attn.k_proj", "attention.value": "attn.v_proj", "attention.dense": "attn.out_proj",
                "attention.LayerNorm": "attn_norm", "ffn": "ffn_up", "ffn_output": "ffn_down", "full_layer_layer_norm": "ffn_norm"}


def _encoder_keymap() -> KeyMap:
    """Hugging Face's AlbertModel names -> minipt's, for the encoder and pooler (the classes' keymap() build on it)."""
    return KeyMap(
        [
            *embedding_rules(),
            ("encoder.embedding_hidden_mapping_in.{p}", "encoder.mapping_in.{p}"),
            *layer_rules("encoder.albert_layer_groups.{g}.albert_layers.{j}", "encoder.groups.{g}.{j}", _LAYER_PARTS),
            ("pooler.{p}", "pooler.dense.{p}"),
        ],
        renames=_LEGACY_NAMES,
        ignore=["embeddings.position_ids", "embeddings.token_type_ids"],  # buffers (0, 1, 2, ... and zeros) that older files carry
    )


# -- minipt.reference: where the reference implementation computes the same values ----------
# transformers' AlbertLayer module computing each value of minipt.nn.EncoderLayer but its output (hidden_states, below): minipt's point -> its module
REFERENCE_LAYER = {"attn.probs": "attention", "attn.heads": "attention.dense:input", "attn.out": "attention.dense",
                   "attn_norm.out": "attention.LayerNorm", "act.out": "ffn_output:input", "ffn_down.out": "ffn_output"}


def compare_with_reference(model, path, inputs, rtol):
    """transformers' AlbertModel / AlbertForMaskedLM / AlbertForSequenceClassification (eager attention) on the same
    checkpoint, point by point (``minipt.reference.layer_diffs``).

    A shared layer runs at several depths, and a name of minipt's (``encoder.groups.G.J.attn.probs``) or a module
    of transformers' holds the value of its last call. So the points are, in data-flow order: the hidden state
    after every layer call (``encoder.depth.{s}.out`` against transformers' ``hidden_states[s + 1]``), and inside
    each shared layer, at its last call, the attention maps, heads, projections, norms and feed-forward values.
    """
    from ..reference import import_reference, report, token_batch, transformers_reference

    transformers = import_reference("transformers", "ALBERT")
    batch, label = token_batch(inputs, path)
    if isinstance(model, AlbertForMaskedLM):
        cls, ours, theirs, head = transformers.AlbertForMaskedLM, "albert.", "albert.", {"head.out": ("predictions", None)}
    elif isinstance(model, AlbertForSequenceClassification):
        cls, ours, theirs, head = transformers.AlbertForSequenceClassification, "albert.", "albert.", {"classifier.out": ("classifier", None)}
    else:
        cls, ours, theirs, head = transformers.AlbertModel, "", "", {}
    encoder = model.albert if ours else model
    kwargs = {"add_pooling_layer": encoder.pooler is not None} if cls is transformers.AlbertModel else {}
    reference = transformers_reference(cls, path, **kwargs)
    config = encoder.config
    steps = config.layer_steps
    last_call = {layer: step for step, layer in enumerate(steps)}
    points = {
        f"{ours}embeddings.out": (f"{theirs}embeddings", None),
        f"{ours}encoder.mapping_in.out": (f"{theirs}encoder.embedding_hidden_mapping_in", None),
    }
    by_step = {}  # minipt's name of each step's hidden state -> its index in transformers' hidden_states
    for step, (group, inner) in enumerate(steps):
        a, b = f"{ours}encoder.groups.{group}.{inner}.", f"{theirs}encoder.albert_layer_groups.{group}.albert_layers.{inner}."
        if last_call[group, inner] == step:
            points.update(layer_points(a, b, REFERENCE_LAYER, config.num_attention_heads))
        name = f"{ours}encoder.depth.{step}.out"
        points[name] = (f"{b.rstrip('.')} at call {steps[: step + 1].count((group, inner))} (hidden_states[{step + 1}])", None)
        by_step[name] = step + 1
    if encoder.pooler is not None:
        points[f"{ours}pooler.out"] = (f"{theirs}pooler_activation", None)
    points.update(head)
    outputs = {}
    run_reference = lambda: outputs.update(hidden_states=reference(**batch, output_hidden_states=True).hidden_states)  # noqa: E731
    extra = {name: (lambda index=index: outputs["hidden_states"][index]) for name, index in by_step.items()}
    return report(model, f"transformers {cls.__name__}", label, rtol, points, lambda: model(**batch), reference, run_reference, extra)


# -- the family's one declaration (minipt.registry) ------------------------------------------
FAMILY = register(
    "albert",
    (AlbertModel, AlbertForMaskedLM, AlbertForSequenceClassification),
    tiny=lambda: AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=4, num_hidden_groups=2, inner_group_num=1,
                              num_attention_heads=2, intermediate_size=32, max_position_embeddings=20),
    inputs=example_token_inputs,
    reference=compare_with_reference,
    reads=READS_TOKENS,
)
