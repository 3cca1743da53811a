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

from ..checkpoint import Checkpoint, Pretrained
from ..config import count, require, token_id
from ..errors import ConfigError, InputError
from ..keymap import KeyMap
from ..nn import Linear, attention_bias
from ..nn.backend import ChoosesBackend
from ..nn.fuse import InferenceCopy
from ..nn.init import init_normal_
from ..registry import Reads, register
from .bert import ENCODER_FIELDS, BertConfig, BertEmbeddings, BertHeadOutput, BertOutput, BertPooler, MaskedLMHead, _encoder_keymap, encoder_layer
from .classifier import HasClassifier
from .text_encoder import check_sequence_labels, check_token_inputs, check_token_labels, classification_loss, masked_lm_loss, run_layers


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

    def check(self):
        super().check()
        require(self.pad_token_id is not None, "pad_token_id", self.pad_token_id, "a token id: RoBERTa counts positions from it")
        require(self.max_position_embeddings >= self.pad_token_id + 2, "max_position_embeddings", self.max_position_embeddings,
                f"at least pad_token_id + 2 = {self.pad_token_id + 2} (positions start at pad_token_id + 1)")

    @property
    def longest_input(self) -> int:
        """The longest input, in tokens (padding included): positions run pad_token_id + 1 .. max_position_embeddings - 1."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @classmethod
    def prepare(cls, values: dict) -> dict:
        for flag_name in ("is_decoder", "add_cross_attention"):
            if values.get(flag_name):
                raise ConfigError(f"sets {flag_name}: RoBERTa as a decoder (RobertaForCausalLM) is not supported")
        return values


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


UNDER_ROBERTA = {name: "roberta." + where if isinstance(where, str) else ("roberta." + where[0], where[1]) for name, where in ENCODER_FIELDS.items()}


class _RobertaPretrained(Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    config_class = RobertaConfig

    def init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: N(0, initializer_range) weights, zero biases and padding rows, unit LayerNorm."""
        init_normal_(module, self.config.initializer_range)


class RobertaModel(_RobertaPretrained):
    """The RoBERTa encoder: ``model(input_ids, attention_mask, token_type_ids) -> BertOutput``."""

    checkpoint_fields = ENCODER_FIELDS
    transfer_stages = {"embeddings": "embeddings", "layers.{i}": "layers.{i}", "pooler": "pooler"}  # see minipt.transfer

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.config = config
        self.embeddings = RobertaEmbeddings(config)
        self.layers = nn.ModuleList(encoder_layer(config) for _ in range(config.num_hidden_layers))
        self.pooler = BertPooler(config) if config.add_pooling_layer else None
        self.apply(self.init_weights)
        self.set_backend(config.backend)

    @classmethod
    def adapt_config(cls, config: RobertaConfig, checkpoint: Checkpoint) -> RobertaConfig:
        # transformers saves its RoBERTa heads without the pooler: then the encoder has none.
        keymap = cls.keymap(config)
        config.add_pooling_layer = any(keymap.canonical(k) == "pooler.dense.weight" for k in checkpoint.keys())
        return config

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) token ids; pad_token_id marks padding (it decides the positions)
        attention_mask: torch.Tensor | None = None,  # (B, T): 1 for tokens, 0 for padding
        token_type_ids: torch.Tensor | None = None,  # (B, T): all 0 for the official type_vocab_size 1
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
        """Raise an InputError naming the first argument of ``forward`` that does not fit this model.

        A sequence may hold ``config.longest_input`` tokens (max_position_embeddings - pad_token_id - 1: 512 of 514).
        Its padding takes no position, so transformers also runs longer padded rows whose tokens fit; minipt
        refuses them, as the check reads the shape alone (and so holds while torch.export traces)."""
        config = self.config
        check_token_inputs(input_ids, attention_mask, token_type_ids, vocab_size=config.vocab_size, max_length=config.longest_input,
                           type_vocab_size=config.type_vocab_size, family="RoBERTa")

    @classmethod
    def keymap(cls, config: RobertaConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's, for the encoder and pooler (with or without the roberta. prefix)."""
        # The masked-LM head of pre-training checkpoints (roberta-base's lm_head.*) is known and not used here.
        return _encoder_keymap() + KeyMap([], ignore=["lm_head.{*}"], optional_prefix="roberta.")


class RobertaForMaskedLM(_RobertaPretrained):
    """RoBERTa with the masked-language-model head: logits over the vocabulary at every position (no pooler)."""

    checkpoint_fields = UNDER_ROBERTA
    # the decoder's weight is the token embedding: it counts in (and freezes with) "embeddings"
    transfer_stages = {"embeddings": "roberta.embeddings", "layers.{i}": "roberta.layers.{i}", "head": "lm_head"}

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config.replace(add_pooling_layer=False))
        self.lm_head = MaskedLMHead(config.replace(hidden_act="gelu"))  # RoBERTa's head applies the exact GELU whatever hidden_act says
        self.apply(self.init_weights)
        self.tie_weights()
        self.set_backend(config.backend)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.decoder.weight = self.roberta.embeddings.token.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, output_hidden_states=False, output_attentions=False):
        """``labels`` (B, T): the token to predict at masked positions, -100 elsewhere."""
        self.check_inputs(input_ids, attention_mask, token_type_ids, labels)
        out = self.roberta(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
        logits = self.lm_head(out.last_hidden_state)  # (B, T, vocab)
        return BertHeadOutput(loss=masked_lm_loss(logits, labels), logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)

    def check_inputs(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> None:
        """The encoder's checks (``RobertaModel.check_inputs``), and ``labels`` shaped like ``input_ids``."""
        self.roberta.check_inputs(input_ids, attention_mask, token_type_ids)
        check_token_labels(labels, input_ids)

    @classmethod
    def keymap(cls, config: RobertaConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's; the decoder depends on ``config.tie_word_embeddings`` (default: tied)."""
        config = config or RobertaConfig()
        head = [("lm_head.dense.{p}", "lm_head.dense.{p}"), ("lm_head.layer_norm.{p}", "lm_head.norm.{p}")]
        if config.tie_word_embeddings:
            # transformers ties lm_head.decoder.weight to the token embedding and lm_head.decoder.bias to lm_head.bias,
            # and writes the bias once, as lm_head.bias; older files repeat both under the decoder's names.
            head.append(("lm_head.bias", "lm_head.decoder.bias"))
            tied = [("lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"), ("lm_head.decoder.bias", "lm_head.bias")]
        else:  # transformers ties nothing then: the decoder has its own weight and bias, and lm_head.bias goes unused
            head.append(("lm_head.decoder.{p}", "lm_head.decoder.{p}"))
            tied = [("lm_head.bias", "lm_head.decoder.bias")]
        return _encoder_keymap().prefixed("roberta.", "roberta.") + KeyMap(
            head,
            renames=_ENCODER_WITHOUT_PREFIX,
            ignore=["roberta.pooler.{*}"],  # pre-training checkpoints (roberta-base) carry a pooler the head does not use
            tied=tied,
        )


class RobertaForSequenceClassification(HasClassifier, _RobertaPretrained):
    """RoBERTa with its classification head (or regression head, for num_labels = 1) on the first token, <s>:

        h_<s> (B, H) -> dropout -> pre_classifier (dense) -> tanh -> dropout -> classifier (B, num_labels)

    transformers' ``classifier.dense`` is ``pre_classifier`` here and its ``classifier.out_proj`` is
    ``classifier``: ``get_classifier()`` and ``reset_classifier(num_labels)`` reach the last Linear, as
    on every minipt classifier (``minipt.models.classifier``); a reset forgets the old label names.
    A new head on a pre-trained encoder: ``init_missing=("pre_classifier", "classifier")``.
    """

    checkpoint_fields = {**UNDER_ROBERTA, "num_labels": ("classifier.weight", 0)}
    transfer_stages = {"embeddings": "roberta.embeddings", "layers.{i}": "roberta.layers.{i}", "head": ("pre_classifier", "classifier")}
    transfer_head = ("classifier", "num_labels")  # the head module and the config field of its size (also minipt.transfer's)

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config.replace(add_pooling_layer=False))
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.pre_classifier = Linear(config.hidden_size, config.hidden_size)
        self.classifier = Linear(config.hidden_size, config.num_labels)
        self.apply(self.init_weights)
        self.set_backend(config.backend)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, output_hidden_states=False, output_attentions=False):
        """``labels``: class ids (B,), or targets (B,) / (B, num_labels) for regression and multi-label problems."""
        self.check_inputs(input_ids, attention_mask, token_type_ids, labels)
        out = self.roberta(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
        first = out.last_hidden_state[:, 0]  # <s>: (B, H)
        logits = self.classifier(self.dropout(torch.tanh(self.pre_classifier(self.dropout(first)))))  # (B, num_labels)
        loss = classification_loss(self.config.problem_type, self.config.num_labels, logits, labels)  # regression, single- or multi-label
        return BertHeadOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)

    def check_inputs(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> None:
        """The encoder's checks (``RobertaModel.check_inputs``), and one label entry per sequence."""
        self.roberta.check_inputs(input_ids, attention_mask, token_type_ids)
        check_sequence_labels(labels, input_ids)

    @classmethod
    def keymap(cls, config: RobertaConfig | None = None) -> KeyMap:
        """Hugging Face's names <-> minipt's; a bare encoder's file (no roberta. prefix) or a pre-training one loads too, under a new head."""
        return _encoder_keymap().prefixed("roberta.", "roberta.") + KeyMap(
            [("classifier.dense.{p}", "pre_classifier.{p}"), ("classifier.out_proj.{p}", "classifier.{p}")],
            renames=_ENCODER_WITHOUT_PREFIX,
            ignore=["roberta.pooler.{*}", "lm_head.{*}"],  # what roberta-base holds besides the encoder
        )


# -- the official names: BERT's encoder names (minipt.models.bert), under roberta. ---------------
# A bare encoder's checkpoint (a RobertaModel save) has no roberta. prefix; a model with a head accepts it, to start from it.
_ENCODER_WITHOUT_PREFIX = [(f"{part}.{{*}}", f"roberta.{part}.{{*}}") for part in ("embeddings", "encoder", "pooler")]


# -- minipt.reference: where the reference implementation computes the same values ----------
def compare_with_reference(model, path, inputs, rtol):
    """transformers' RobertaModel / RobertaForMaskedLM / RobertaForSequenceClassification (eager attention) on the same checkpoint, point by point."""
    from ..reference import heads, import_reference, report, token_batch

    transformers = import_reference("transformers", "RoBERTa")
    batch, label = token_batch(inputs, path)
    encoder = model if isinstance(model, RobertaModel) else model.roberta
    prefix = "" if encoder is model else "roberta."
    if isinstance(model, RobertaForMaskedLM):
        cls, head = transformers.RobertaForMaskedLM, {"lm_head.out": ("lm_head", None)}
    elif isinstance(model, RobertaForSequenceClassification):
        cls, head = transformers.RobertaForSequenceClassification, {"pre_classifier.out": ("classifier.dense", None), "classifier.out": ("classifier.out_proj", None)}
    else:
        cls, head = transformers.RobertaModel, {}
    kwargs = {"add_pooling_layer": encoder.pooler is not None} if cls is transformers.RobertaModel else {}
    reference = cls.from_pretrained(str(path), attn_implementation="eager", **kwargs).eval()
    config = encoder.config
    points = {f"{prefix}embeddings.out": (f"{prefix}embeddings", None)}
    for i in range(config.num_hidden_layers):
        a, b = f"{prefix}layers.{i}.", f"{prefix}encoder.layer.{i}."
        points.update({
            a + "attn.probs": (b + "attention.self", lambda out: out[1]),
            a + "attn.heads": (b + "attention.self", heads(config.num_attention_heads)),
            a + "attn.out": (b + "attention.output.dense", None),
            a + "attn_norm.out": (b + "attention.output", None),
            a + "act.out": (b + "intermediate", None),
            a + "ffn_down.out": (b + "output.dense", None),
            a + "out": (b.rstrip("."), None),
        })
    if encoder.pooler is not None:
        points["pooler.out"] = ("pooler", None)
    points.update(head)
    return report(model, f"transformers {cls.__name__}", label, rtol, points, lambda: model(**batch), reference, lambda: reference(**batch))


# -- the family's one declaration (minipt.registry) ------------------------------------------
def _example_inputs(cls):
    ids = torch.randint(3, 50, (2, 5), generator=torch.Generator().manual_seed(1))  # 0-2: <s>, <pad>, </s>
    ids[1, 3:] = 1  # the second row padded with pad_token_id, which also keeps its positions
    return (ids, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])), {}


FAMILY = register(
    "roberta",
    (RobertaModel, RobertaForMaskedLM, RobertaForSequenceClassification),
    tiny=lambda: RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=24, type_vocab_size=1, layer_norm_eps=1e-5),
    inputs=_example_inputs,
    reference=compare_with_reference,
    reads=Reads("token ids (batch x tokens)", "1x128"),
)
