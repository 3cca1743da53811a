"""RoBERTa (Liu et al., 2019): BERT's encoder, pre-trained longer and on masked tokens alone, whose positions skip padding.

    tokens -> embeddings (token + segment + position, LayerNorm); positions count from pad_token_id + 1
              over the tokens that are not padding, and padding sits at position pad_token_id (fairseq's rule)
           -> N x [ self-attention -> add & LayerNorm -> feed-forward -> add & LayerNorm ]   (BERT's layer)
           -> last_hidden_state (B, T, H)  -> pooler: tanh(W h_<s>)  (B, H), RobertaModel only

The official files name every tensor as BERT's do (``roberta.encoder.layer.0.attention.self.query.weight``),
so the encoder's key map is BERT's under ``roberta.``; the heads are RoBERTa's own: ``lm_head`` (masked
LM, its decoder tied to the token embedding) and ``classifier.dense``/``classifier.out_proj`` (on ``<s>``).
Because positions start at pad_token_id + 1, a table of ``max_position_embeddings`` = 514 holds 512 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoint import Pretrained
from ..config import count, require, token_id
from ..keymap import KeyMap
from ..nn import Dropout, Linear
from ..nn.backend import ChoosesBackend
from ..nn.fuse import InferenceCopy
from ..registry import register
from .bert import (ENCODER_FIELDS, REFERENCE_LAYER, BertConfig, BertEmbeddings, BertModel, BertOutput, MaskedLMHead, _encoder_keymap,
                   encoder_modules)
from .text_encoder import READS_TOKENS, MaskedLanguageModel, SequenceClassifier, TextEncoder, compare_encoder, fields_under


@dataclass
class RobertaConfig(BertConfig):
    """The fields of a Hugging Face RoBERTa ``config.json``: BERT's, with transformers' RoBERTa defaults.

    The official files set vocab_size 50265, max_position_embeddings 514, type_vocab_size 1 and
    layer_norm_eps 1e-5; a field a file leaves out takes transformers' default, as here.
    """

    vocab_size: int = count(50265)
    pad_token_id: int | None = token_id(1)  # also the position of padding: real tokens start at pad_token_id + 1
    bos_token_id: int | None = token_id(0)  # <s>, first in every sequence: the classifier reads its hidden state
    eos_token_id: int | None = token_id(2)  # </s>

    model_type = "roberta"
    _as_decoder = "RoBERTa as a decoder (RobertaForCausalLM)"  # refused, as BERT's

    def check(self):
        super().check()
        require(self.pad_token_id is not None, "pad_token_id", self.pad_token_id, "a token id: RoBERTa counts positions from it")
        require(self.max_position_embeddings >= self.pad_token_id + 2, "max_position_embeddings", self.max_position_embeddings,
                f"at least pad_token_id + 2 = {self.pad_token_id + 2} (positions start at pad_token_id + 1)")

    @property
    def longest_input(self) -> int:
        """The longest input, in tokens (padding included): positions run pad_token_id + 1 .. max_position_embeddings - 1."""
        return self.max_position_embeddings - self.pad_token_id - 1


def position_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """(B, T) -> (B, T): padding_idx + 1, + 2, ... along the tokens that are not padding; padding_idx at padding.

    transformers' ``create_position_ids_from_input_ids`` (fairseq's ``make_positions``): a row padded on
    the left still starts its tokens at padding_idx + 1."""
    real = input_ids.ne(padding_idx).int()
    return (torch.cumsum(real, dim=1) * real).long() + padding_idx


class RobertaEmbeddings(BertEmbeddings):
    """BERT's embeddings with RoBERTa's positions; the position table's padding row (padding's position) gets no gradient."""

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = position_ids(input_ids, self.padding_idx)  # (B, T)
        hidden = self.token(input_ids) + self.token_type(token_type_ids) + self.position(positions)  # (B, T, H)
        return self.dropout(self.norm(hidden))


UNDER_ROBERTA = fields_under("roberta.", ENCODER_FIELDS)  # the same, in a model with a head


class _RobertaPretrained(TextEncoder, Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    """BERT's initialisation; only the bare encoder has a pooler (whether the checkpoint holds it decides)."""

    config_class = RobertaConfig


class RobertaModel(_RobertaPretrained):
    """The RoBERTa encoder: ``model(input_ids, attention_mask, token_type_ids) -> BertOutput``, BERT's on RoBERTa's embeddings."""

    _family = "RoBERTa"
    _pooler_key = "pooler.dense.weight"  # transformers saves its RoBERTa heads without the pooler
    checkpoint_fields = ENCODER_FIELDS
    transfer_stages = {"embeddings": "embeddings", "layers.{i}": "layers.{i}", "pooler": "pooler"}  # see minipt.transfer

    def __init__(self, config: RobertaConfig):
        super().__init__(config, **encoder_modules(config, RobertaEmbeddings(config)))

    # BERT's: embeddings -> layers -> pooler. The input_ids decide the positions (pad_token_id marks padding);
    # token_type_ids are all 0 for the official type_vocab_size 1.
    forward = BertModel.forward
    run_encoder = BertModel.run_encoder

    # BERT's checks. A sequence may hold config.longest_input tokens (max_position_embeddings - pad_token_id - 1: 512 of 514).
    # Its padding takes no position, so transformers also runs longer padded rows whose tokens fit; minipt refuses
    # them, as the check reads the shape alone (and so holds while torch.export traces).
    check_inputs = BertModel.check_inputs

    @classmethod
    def keymap(cls, config: RobertaConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's, for the encoder and pooler (with or without the roberta. prefix)."""
        # The masked-LM head of pre-training checkpoints (roberta-base's lm_head.*) and a fine-tuned classifier are known and not used here.
        return _encoder_keymap() + KeyMap([], ignore=["lm_head.{*}", "classifier.{*}"], optional_prefix="roberta.")


class RobertaForMaskedLM(MaskedLanguageModel, _RobertaPretrained):
    """RoBERTa with the masked-language-model head: logits over the vocabulary at every position (no pooler)."""

    base_model_prefix = "roberta"
    head_name = "lm_head"
    # Tied, transformers ties lm_head.decoder.weight to the token embedding and lm_head.decoder.bias to lm_head.bias,
    # and writes the bias once, as lm_head.bias; older files repeat both under the decoder's names.
    official_head = {"dense": "lm_head.dense", "norm": "lm_head.layer_norm", "decoder": "lm_head.decoder", "bias": "lm_head.bias"}
    checkpoint_fields = UNDER_ROBERTA
    # the decoder's weight is the token embedding: it counts in (and freezes with) "embeddings"
    transfer_stages = {"embeddings": "roberta.embeddings", "layers.{i}": "roberta.layers.{i}", "head": "lm_head"}

    def __init__(self, config: RobertaConfig):
        # RoBERTa's head applies the exact GELU whatever hidden_act says
        super().__init__(config, RobertaModel(config.replace(add_pooling_layer=False)), MaskedLMHead(config.replace(hidden_act="gelu")))

    @classmethod
    def keymap(cls, config: RobertaConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's; the decoder depends on ``config.tie_word_embeddings`` (default: tied)."""
        return cls.masked_lm_keymap(config or RobertaConfig(), _encoder_keymap(), renames=_ENCODER_WITHOUT_PREFIX,
                                    ignore=["roberta.pooler.{*}"])  # pre-training checkpoints (roberta-base) carry a pooler the head does not use


class RobertaForSequenceClassification(SequenceClassifier, _RobertaPretrained):
    """RoBERTa with its classification head (or regression head, for num_labels = 1) on the first token, <s>:

        h_<s> (B, H) -> dropout -> pre_classifier (dense) -> tanh -> dropout -> classifier (B, num_labels)

    transformers' ``classifier.dense`` is ``pre_classifier`` here and its ``classifier.out_proj`` is
    ``classifier``: ``get_classifier()`` and ``reset_classifier(num_labels)`` reach the last Linear, as
    on every minipt classifier (``minipt.models.classifier``); a reset forgets the old label names.
    A new head on a pre-trained encoder: ``init_missing=("pre_classifier", "classifier")``.
    """

    base_model_prefix = "roberta"
    reads_pooler = False  # RobertaModel under a head has none: classify reads <s>
    checkpoint_fields = {**UNDER_ROBERTA, "num_labels": ("classifier.weight", 0)}
    transfer_stages = {"embeddings": "roberta.embeddings", "layers.{i}": "roberta.layers.{i}", "head": ("dropout", "pre_classifier", "classifier")}
    transfer_head = ("classifier", "num_labels")  # the head module and the config field of its size (also minipt.transfer's)

    def __init__(self, config: RobertaConfig):
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        super().__init__(config, RobertaModel(config.replace(add_pooling_layer=False)), dropout=Dropout(dropout),
                         pre_classifier=Linear(config.hidden_size, config.hidden_size), classifier=Linear(config.hidden_size, config.num_labels))

    def classify(self, out: BertOutput) -> torch.Tensor:
        first = out.last_hidden_state[:, 0]  # <s>: (B, H)
        return self.classifier(self.dropout(torch.tanh(self.pre_classifier(self.dropout(first)))))  # (B, num_labels)

    @classmethod
    def keymap(cls, config: RobertaConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's; a bare encoder's file (no roberta. prefix) or a pre-training one loads too, under a new head."""
        return cls.head_keymap(_encoder_keymap(), [("classifier.dense.{p}", "pre_classifier.{p}"), ("classifier.out_proj.{p}", "classifier.{p}")],
                               renames=_ENCODER_WITHOUT_PREFIX, ignore=["roberta.pooler.{*}", "lm_head.{*}"])  # what roberta-base holds besides the encoder


# -- the official names: BERT's encoder names (minipt.models.bert), under roberta. ---------------
# A bare encoder's checkpoint (a RobertaModel save) has no roberta. prefix; a model with a head accepts it, to start from it.
_ENCODER_WITHOUT_PREFIX = [(f"{part}.{{*}}", f"roberta.{part}.{{*}}") for part in ("embeddings", "encoder", "pooler")]


# -- minipt.reference: where the reference implementation computes the same values ----------
def compare_with_reference(model, path, inputs, rtol):
    """transformers' RobertaModel / RobertaForMaskedLM / RobertaForSequenceClassification (eager attention) on the same checkpoint, point by point."""
    heads = {
        RobertaModel: {},
        RobertaForMaskedLM: {"lm_head.out": ("lm_head", None)},
        RobertaForSequenceClassification: {"pre_classifier.out": ("classifier.dense", None), "classifier.out": ("classifier.out_proj", None)},
    }
    return compare_encoder(model, path, inputs, rtol, family="RoBERTa", layers="encoder.layer", layer_names=REFERENCE_LAYER, heads=heads,
                           num_heads=model.config.num_attention_heads)


# -- the family's one declaration (minipt.registry) ------------------------------------------
def _example_token_inputs(cls):
    ids = torch.randint(3, 50, (2, 5), generator=torch.Generator().manual_seed(1))  # 0-2: <s>, <pad>, </s>
    ids[1, 3:] = 1  # the second row padded with pad_token_id, which also keeps its positions
    return (ids, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])), {}


FAMILY = register(
    "roberta",
    (RobertaModel, RobertaForMaskedLM, RobertaForSequenceClassification),
    tiny=lambda: RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=24, type_vocab_size=1, layer_norm_eps=1e-5),
    inputs=_example_token_inputs,
    reference=compare_with_reference,
    reads=READS_TOKENS,
)
