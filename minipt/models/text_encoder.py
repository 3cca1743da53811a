"""What the text encoder families (BERT, RoBERTa, DistilBERT, ALBERT) share around minipt.nn.EncoderLayer.

The families differ in their embeddings, their names and their parameter sharing; the
steps here are the same for all of them, so each is written once:

- ``check_token_inputs``: the checks on ``input_ids``, ``attention_mask`` and ``token_type_ids``;
- ``check_token_labels`` / ``check_sequence_labels``: labels of an MLM head / a classifier;
- ``run_layers``: the encoder layers in turn, collecting hidden states and attentions on request;
- ``masked_lm_loss`` and ``classification_loss``: transformers' losses for the heads;
- ``ClassLabels``: a config's ``id2label``/``num_labels`` read and written as transformers does;
- ``TextEncoder``: BERT's initialisation, and whether a checkpoint holds the pooler;
- ``MaskedLanguageModel`` / ``SequenceClassifier``: a model with a head, written once: the encoder
  under the family's name (``bert``, ``roberta``, ...), a head on it, ``forward`` and ``check_inputs``;
  a family gives the modules, and a classifier how its head reads the encoder's output (``classify``);
- ``embedding_rules`` / ``tied_decoder``: official names the families share (the embedding tables; a masked-LM
  decoder that reuses the token table);
- ``BertHeadOutput``: what every head returns;
- ``layer_points`` / ``compare_encoder``: ``minipt.reference``'s comparison with transformers, point by point.
"""

from __future__ import annotations

import inspect

from dataclasses import dataclass, field
from typing import ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_on_device, check_ids, check_mask_values, tracing
from ..checkpoint import Checkpoint
from ..config import require
from ..errors import ConfigError, InputError
from ..keymap import KeyMap
from ..nn.init import init_normal_
from ..nn.output import ModelOutput
from ..registry import Reads
from .classifier import HasClassifier

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


class ClassLabels:
    """Mixed into a text encoder's ``Config`` (before it): the classifier's labels as transformers keeps them.

    ``id2label`` names classes 0..n-1 and then sets ``num_labels``; a config written back gives
    ``id2label`` and ``label2id`` (or only ``num_labels`` when the labels have no names), and a new
    head (``num_labels`` passed when loading, another number than the file's labels) forgets the names the file
    had; the same number keeps them, as transformers does."""

    def check_labels(self) -> None:
        if self.id2label is None:
            return
        require(isinstance(self.id2label, dict) and len(self.id2label) > 0, "id2label", self.id2label, "a non-empty object of label names by class index")
        try:
            labels = {int(k): v for k, v in self.id2label.items()}
        except (TypeError, ValueError):
            labels = None
        require(labels is not None and sorted(labels) == list(range(len(labels))), "id2label", self.id2label, "keys 0..num_labels-1")
        self.id2label, self.num_labels = labels, len(labels)

    @property
    def label2id(self) -> dict[str, int]:
        """Class index by label name, as transformers' config gives it (``LABEL_i`` where the labels have no names)."""
        names = self.id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
        return {label: i for i, label in names.items()}

    @classmethod
    def from_dict(cls, values: dict, *, source=None, **overrides):
        if "label2id" in overrides:  # transformers' fine-tuning call passes both maps: the second must invert the first
            label2id = overrides.pop("label2id")
            id2label = overrides.get("id2label")
            try:
                inverse = {label: int(i) for i, label in id2label.items()}
                agrees = {k: int(v) for k, v in label2id.items()} == inverse
            except (AttributeError, TypeError, ValueError):
                agrees = False
            if not agrees:
                raise ConfigError(f"label2id {label2id!r:.120} must be the inverse of id2label {id2label!r:.120}: pass id2label (label2id follows)")
        if "num_labels" in overrides and isinstance(values, dict):
            named = values.get("id2label")
            if not (isinstance(named, dict) and len(named) == overrides["num_labels"]):  # a new head decides; the same keeps its names
                values = {k: v for k, v in values.items() if k not in ("id2label", "label2id")}
        return super().from_dict(values, source=source, **overrides)

    def to_dict(self) -> dict:
        values = super().to_dict()
        if values["id2label"] is None:  # transformers names the labels LABEL_0 ... from num_labels
            del values["id2label"]
            return values
        values["label2id"] = {label: i for i, label in values["id2label"].items()}
        del values["num_labels"]  # implied by id2label
        return values


def check_token_inputs(
    input_ids,
    attention_mask=None,
    token_type_ids=None,
    *,
    vocab_size: int,
    max_length: int,  # the most tokens a sequence may hold (the position table, less any offset)
    type_vocab_size: int | None,  # None: the family has no token types, and token_type_ids is refused
    family: str,
    num_heads: int | None = None,  # a 4-D additive mask holds 1 or this many heads
    device: torch.device | None = None,  # the model's: the inputs must be there
) -> None:
    """Raise an InputError naming the first of a text encoder's inputs that does not fit the model."""
    if token_type_ids is not None and type_vocab_size is None:
        raise InputError(f"token_type_ids given, but {family} has no token types: pass input_ids and attention_mask only")
    if input_ids is None:
        raise InputError(f"{family} needs input_ids, the token ids (batch, seq_len); got None")
    for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise InputError(f"{name} must be a tensor, got {type(value).__name__} (the tokenizer returns tensors with return_tensors='pt')")
    if input_ids.dim() != 2 or input_ids.is_floating_point():
        raise InputError(f"input_ids must be integer token ids of shape (batch, seq_len), got {input_ids.dtype} {tuple(input_ids.shape)}")
    T = input_ids.shape[1]
    if T == 0:  # an empty batch (B = 0) is fine; a sequence without tokens has no first token to pool
        raise InputError(f"input_ids of shape {tuple(input_ids.shape)} hold sequences of no tokens; each needs at least one")
    if T > max_length:
        raise InputError(f"sequence length {T} exceeds the position table ({max_length} positions); truncate the input")
    check_ids("input_ids", input_ids, vocab_size, device=device)
    check_on_device("attention_mask", attention_mask, device)
    check_on_device("token_type_ids", token_type_ids, device)
    if token_type_ids is not None:
        if token_type_ids.shape != input_ids.shape:
            raise InputError(f"token_type_ids has shape {tuple(token_type_ids.shape)}, input_ids {tuple(input_ids.shape)}")
        check_ids("token_type_ids", token_type_ids, type_vocab_size)
    if attention_mask is not None and (attention_mask.dim() == 2 or not attention_mask.is_floating_point()):  # a padding mask
        if attention_mask.shape != input_ids.shape:
            more = (f"; a {attention_mask.dim()}-D mask must be an additive float mask (0 where attended, a large negative where not), "
                    f"not {attention_mask.dtype}" if attention_mask.dim() != 2 else "")
            raise InputError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}{more}")
        check_mask_values("attention_mask", attention_mask)
    elif attention_mask is not None:  # an additive float mask, broadcast to (batch, heads, T, T)
        B, shape = input_ids.shape[0], tuple(attention_mask.shape)
        wanted = (B, T, T) if attention_mask.dim() == 3 else (B, num_heads or "heads", T, T)
        fits = attention_mask.dim() in (3, 4) and all(n in (1, w) or not isinstance(w, int) for n, w in zip(shape, wanted))
        if not fits:
            raise InputError(f"attention_mask of shape {shape} is neither a padding mask {tuple(input_ids.shape)} nor an additive mask "
                             f"broadcastable to {wanted} (1 where it repeats)")


def _shape(labels) -> object:
    return tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__


def check_token_labels(labels, input_ids: torch.Tensor, vocab_size: int | None = None) -> None:
    """An MLM head's ``labels``: integer token ids (below ``vocab_size`` where given) of the shape of ``input_ids``,
    -100 where nothing is predicted."""
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape):
        raise InputError(f"labels must have the shape of input_ids {tuple(input_ids.shape)} (-100 where nothing is predicted), got {_shape(labels)}")
    if labels is None or tracing():
        return
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"labels must be integer token ids (-100 where nothing is predicted), got {labels.dtype}")
    if vocab_size is not None and labels.numel() and not labels.is_meta:  # a meta tensor has shapes only (minipt.summary)
        bad = labels[(labels != -100) & ((labels < 0) | (labels >= vocab_size))]
        if bad.numel():
            raise InputError(f"labels holds {int(bad[0])}, not a token id in [0, {vocab_size - 1}] nor -100 (nothing predicted)")


def check_sequence_labels(labels, input_ids: torch.Tensor) -> None:
    """A classifier's ``labels``: one entry (a class id, or targets) per sequence."""
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.dim() == 0 or labels.shape[0] != input_ids.shape[0]):
        raise InputError(f"labels must hold one entry per sequence ({input_ids.shape[0]} for input_ids {tuple(input_ids.shape)}), got {_shape(labels)}")


def run_layers(layers: Iterable[nn.Module], hidden: torch.Tensor, bias: torch.Tensor | None, output_hidden_states: bool, output_attentions: bool):
    """``hidden`` (B, T, H) through each layer in turn -> (last hidden, every hidden state or None, every attention map or None).

    The hidden states are the input and each layer's output; a layer listed twice (ALBERT's sharing) counts each time it runs."""
    all_hidden, all_attn = [hidden], []
    for layer in layers:
        hidden, attn_probs = layer(hidden, bias, need_weights=output_attentions)
        all_hidden.append(hidden)
        all_attn.append(attn_probs)
    return hidden, tuple(all_hidden) if output_hidden_states else None, tuple(all_attn) if output_attentions else None


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """Cross-entropy over the vocabulary at the positions whose label is not -100; None without labels."""
    return None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten().long(), ignore_index=-100)


def classification_loss(problem_type: str | None, num_labels: int, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """transformers' loss for the problem type (read off num_labels and the labels' dtype when none is named); None without labels."""
    if labels is None:
        return None
    problem = problem_type
    if problem is None:
        problem = "regression" if num_labels == 1 else "single_label_classification" if not labels.is_floating_point() else "multi_label_classification"
    _check_labels_for(problem, num_labels, logits, labels)
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1)) if num_labels == 1 else F.mse_loss(logits, labels)
    if problem == "single_label_classification":
        return F.cross_entropy(logits, labels.view(-1).long())  # int32 class ids (from numpy) as int64, which cross_entropy takes
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def _check_labels_for(problem: str, num_labels: int, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """``InputError`` for labels the loss of ``problem`` cannot take: naming the shape or the class id, not torch's
    IndexError from inside cross-entropy (a device assert on a GPU)."""
    B = logits.shape[0]
    if problem == "single_label_classification":
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or labels.numel() != B:
            raise InputError(f"labels for single-label classification must be {B} integer class ids, one per sequence; got {labels.dtype} {tuple(labels.shape)}")
        if not tracing() and labels.numel() and not labels.is_meta:  # a meta tensor has shapes only (minipt.summary)
            outside = labels[((labels < 0) | (labels >= num_labels)) & (labels != -100)]
            if outside.numel():
                more = f"; reset_classifier({int(labels.max()) + 1}) for more classes" if int(outside[0]) >= num_labels else ""
                raise InputError(f"labels hold {int(outside[0])}, outside the head's {num_labels} classes (0..{num_labels - 1}; -100 is skipped){more}")
    elif problem == "regression":
        if labels.numel() != B * num_labels:
            raise InputError(f"labels for regression must hold {num_labels} target(s) per sequence, ({B}, {num_labels}); got {tuple(labels.shape)}")
    elif labels.shape != logits.shape:
        raise InputError(f"labels for multi-label classification must have the logits' shape {tuple(logits.shape)} (0/1 per class); got {tuple(labels.shape)}")


# Outputs read as transformers' do: out.logits, out["logits"], out[0] (the loss when labels were given), out.to_tuple().
@dataclass
class BertHeadOutput(ModelOutput):
    loss: torch.Tensor | None = None  # first, as in transformers: out[0] is the loss when there is one
    logits: torch.Tensor = field(kw_only=True)  # (B, T, vocab) for masked LM, (B, num_labels) for classification
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


torch.export.register_dataclass(BertHeadOutput)  # a pytree: torch.export and torch.compile see the tensors inside


class TextEncoder:
    """Mixed into a family's pretrained base class (before ``Pretrained``): how a model is built from its modules,
    BERT's initialisation, and the pooler read off the checkpoint.

    A class whose encoder may or may not have a pooler names the pooler's weight in ``_pooler_key`` (minipt's
    name, ``"bert.pooler.dense.weight"`` under a head); loading then sets ``config.add_pooling_layer`` to
    whether the file holds it (sentence encoders are often saved without). None: the class decides alone."""

    _pooler_key: ClassVar[str | None] = None

    def __init__(self, config, **modules: nn.Module | None):
        """``modules``: the model's modules by attribute name, in data-flow order (their order in the state dict);
        None holds the place of one the config leaves out (a pooler)."""
        super().__init__()
        self.config = config
        for name, module in modules.items():
            setattr(self, name, module)
        self.apply(self.init_weights)
        self.set_backend(config.backend)

    def init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: N(0, initializer_range) weights, zero biases and padding rows, unit LayerNorm."""
        init_normal_(module, self.config.initializer_range)

    @classmethod
    def adapt_config(cls, config, checkpoint: Checkpoint):
        if cls._pooler_key is None:
            return config
        keymap = cls.keymap(config)
        pooler = keymap.to_official(cls._pooler_key)[0]
        config.add_pooling_layer = any(keymap.canonical(k) == pooler for k in checkpoint.keys())
        return config


class _EncoderWithHead:
    """A family's encoder under ``base_model_prefix`` (the attribute, and the prefix of the official names:
    ``bert``, ``roberta``, ``distilbert``, ``albert``), then the modules of a head."""

    base_model_prefix: ClassVar[str]

    @property
    def base_model(self) -> nn.Module:
        """The encoder (``model.bert``, ``model.roberta``, ...)."""
        return getattr(self, self.base_model_prefix)

    @classmethod
    def head_keymap(cls, encoder: KeyMap, rules: list, **names) -> KeyMap:
        """The family's encoder names (``encoder``, a bare model's key map) under ``base_model_prefix``, then the
        head's ``rules``; ``names``: the rest of the head's ``KeyMap`` (renames, ignore, tied, written_twice)."""
        prefix = cls.base_model_prefix + "."
        return encoder.prefixed(prefix, prefix) + KeyMap(rules, **names)


class MaskedLanguageModel(_EncoderWithHead):
    """Mixed into a family's masked-LM class (first): logits over the vocabulary at every position.

    The head (attribute ``head_name``) ends in a ``decoder`` Linear whose weight is the encoder's token
    table when ``config.tie_word_embeddings`` (the official files then store it once, see ``tied_decoder``)."""

    head_name: ClassVar[str] = "head"
    # The head's official names: "dense", "norm", "decoder" (modules), and "bias" where the files keep the
    # decoder's bias under a name of its own (see tied_decoder).
    official_head: ClassVar[dict[str, str]]

    def __init__(self, config, encoder: nn.Module, head: nn.Module):
        super().__init__(config, **{self.base_model_prefix: encoder, self.head_name: head})
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            getattr(self, self.head_name).decoder.weight = self.base_model.embeddings.token.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, output_hidden_states=False, output_attentions=False):
        """``labels`` (B, T): the token to predict at masked positions, -100 elsewhere."""
        self.check_inputs(input_ids, attention_mask, token_type_ids, labels)
        out = self.base_model(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
        logits = getattr(self, self.head_name)(out.last_hidden_state)  # (B, T, vocab)
        return BertHeadOutput(loss=masked_lm_loss(logits, labels), logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)

    def check_inputs(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> None:
        """The encoder's checks (its ``check_inputs``), and ``labels`` shaped like ``input_ids``."""
        self.base_model.check_inputs(input_ids, attention_mask, token_type_ids)
        check_token_labels(labels, input_ids, self.config.vocab_size)

    @classmethod
    def masked_lm_keymap(cls, config, encoder: KeyMap, *, renames=(), ignore=()) -> KeyMap:
        """``head_keymap`` with the head's official names (``official_head``); the decoder's rows depend on
        ``config.tie_word_embeddings``."""
        head, names = cls.head_name, cls.official_head
        decoder, tied, twice = tied_decoder(config.tie_word_embeddings, names["decoder"], head, cls.base_model_prefix + ".", bias=names.get("bias"))
        rules = [(names["dense"] + ".{p}", head + ".dense.{p}"), (names["norm"] + ".{p}", head + ".norm.{p}"), *decoder]
        return cls.head_keymap(encoder, rules, renames=renames, ignore=ignore, tied=tied, written_twice=twice)


class SequenceClassifier(HasClassifier, _EncoderWithHead):
    """Mixed into a family's sequence classifier (first): one row of logits (or regression targets) per sequence.

    The head reads the pooler's output (``reads_pooler``: BERT's ``dropout`` and ``classifier``), or the family's
    ``classify(out)`` says how it reads the encoder's output (the first token's hidden state). ``get_classifier()``
    and ``reset_classifier(num_labels)`` reach the last Linear (``transfer_head``), as on every minipt classifier
    (``minipt.models.classifier``); a reset forgets the old label names (``id2label``)."""

    reads_pooler: ClassVar[bool] = True

    def __init__(self, config, encoder: nn.Module, **head: nn.Module):
        """``head``: the head's modules by attribute name, in data-flow order."""
        if self.reads_pooler and encoder.pooler is None:
            raise ConfigError("sequence classification needs the pooler, and the checkpoint has none")
        super().__init__(config, **{self.base_model_prefix: encoder}, **head)

    def classify(self, out) -> torch.Tensor:
        """The encoder's output -> logits (B, num_labels): pooler_output (B, H) -> dropout -> classifier."""
        return self.classifier(self.dropout(out.pooler_output))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, output_hidden_states=False, output_attentions=False):
        """``labels``: class ids (B,), or targets (B,) / (B, num_labels) for regression and multi-label problems."""
        self.check_inputs(input_ids, attention_mask, token_type_ids, labels)
        out = self.base_model(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
        logits = self.classify(out)  # (B, num_labels)
        loss = classification_loss(self.config.problem_type, self.config.num_labels, logits, labels)
        return BertHeadOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)

    def check_inputs(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> None:
        """The encoder's checks (its ``check_inputs``), and one label entry per sequence."""
        self.base_model.check_inputs(input_ids, attention_mask, token_type_ids)
        check_sequence_labels(labels, input_ids)


def classify_texts(texts, *, model, tokenizer=None, top: int = 5) -> list[list[tuple[str, float]]]:
    """The ``top`` labels of each text as (label, probability), most probable first, from the sequence classifier
    of any text encoder family: a folder, catalogued name or hub repo id with its tokenizer saved beside it, or a
    loaded classifier and its ``tokenizer``. Labels are the config's ``id2label`` (``LABEL_i`` where it has none);
    scores as transformers' pipeline gives them: a softmax over the classes, a sigmoid per label for a multi-label
    head (``problem_type``) or a one-output head, the output itself for a regression head. Texts are cut at the
    model's longest input where the tokenizer names no limit; inputs the model does not take (token types a BERT
    tokenizer makes for DistilBERT) are left out."""
    from ..checks import check_int, check_str
    from ..hub import resolve
    from ..registry import model_class_for
    from ..tokenizer import Tokenizer

    top = check_int("top", top, low=1)
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, (list, tuple)) or not texts:
        raise InputError(f"texts must be a string or a non-empty list of strings, got {type(texts).__name__ if texts else texts!r}")
    texts = [check_str(f"texts[{i}]", text, empty=True) for i, text in enumerate(texts)]  # "" is a text, as the pipeline reads it
    if not isinstance(model, SequenceClassifier):
        path = resolve(model)
        with Checkpoint(path) as checkpoint:  # names and shapes only
            cls = model_class_for(path, checkpoint)
            if not issubclass(cls, SequenceClassifier):  # a config without "architectures": the file's head says
                from ..registry import family_of

                heads = [c for c in getattr(family_of(cls), "classes", ()) if issubclass(c, SequenceClassifier)]
                if heads and any(key.split(".")[0] in ("classifier", "pre_classifier") for key in checkpoint.keys()):
                    cls = heads[0]
        if not issubclass(cls, SequenceClassifier):
            raise ConfigError(f"{path} holds a {cls.__name__} checkpoint; classifying texts needs a sequence classifier "
                              "(BertForSequenceClassification, RobertaForSequenceClassification, ...)")
        model, tokenizer = cls.from_pretrained(path), tokenizer or Tokenizer.from_pretrained(path)
    elif tokenizer is None:
        raise InputError("classify_texts with a loaded model needs its tokenizer (tokenizer=...)")
    labels = model.config.id2label or {i: f"LABEL_{i}" for i in range(model.config.num_labels)}
    with torch.inference_mode():
        logits = model.eval()(**model_inputs(model, tokenizer, texts)).logits.float()  # (B, num_labels)
    kind = model.config.problem_type
    if kind == "regression":
        probabilities = logits
    elif kind == "multi_label_classification" or logits.shape[-1] == 1:
        probabilities = logits.sigmoid()
    else:
        probabilities = logits.softmax(-1)
    best = probabilities.topk(min(top, logits.shape[-1]), dim=-1)
    return [[(labels[int(i)], float(p)) for p, i in zip(row_p, row_i)] for row_p, row_i in zip(best.values, best.indices)]


def model_inputs(model: nn.Module, tokenizer, texts: list[str], **options) -> dict:
    """``tokenizer(texts)`` as ``model`` takes it: cut at its longest input where the tokenizer names no limit, and
    without the inputs its forward has no argument for (token types from a BERT tokenizer beside DistilBERT)."""
    if getattr(tokenizer, "model_max_length", None) is None and "max_length" not in options:
        options["max_length"] = model.config.longest_input
    from ..transfer import unwrapped

    encoded = tokenizer(texts, **options)
    model = unwrapped(model)  # a compiled or DDP-wrapped model's forward takes (*args, **kwargs)
    if getattr(model.config, "type_vocab_size", None) is None:  # a family without token types (DistilBERT) refuses them
        encoded.pop("token_type_ids", None)
    parameters = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return encoded
    return {name: value for name, value in encoded.items() if name in parameters}


# minipt.summary / minipt inspect: 128 tokens, or as many as the position table holds (a tiny config's may hold fewer)
READS_TOKENS = Reads("token ids (batch x tokens)", lambda model: f"1x{min(128, model.config.longest_input)}")


def example_token_inputs(cls) -> tuple[tuple, dict]:
    """A registered family's example inputs (``minipt.registry``): token ids below 50, two rows, the second padded."""
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    return (ids, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])), {}


def fields_under(prefix: str, fields: dict) -> dict:
    """A bare encoder's ``checkpoint_fields`` (``minipt.checkpoint.Pretrained``) as a model with a head holds them, under ``prefix``."""
    return {name: prefix + where if isinstance(where, str) else (prefix + where[0], where[1]) for name, where in fields.items()}


def embedding_fields(width: str, token_types: bool = True) -> dict:
    """What the embedding tables fix in a config (``checkpoint_fields``), the same in every family under its own
    name for the tables' ``width``: the vocabulary, the positions, the segments (``token_types``)."""
    fields = {"vocab_size": ("embeddings.token.weight", 0), width: ("embeddings.token.weight", 1), "max_position_embeddings": ("embeddings.position.weight", 0)}
    return {**fields, "type_vocab_size": ("embeddings.token_type.weight", 0)} if token_types else fields


def embedding_rules(token_types: bool = True) -> list[tuple[str, str]]:
    """Hugging Face's names of the embedding tables and their LayerNorm -> minipt's, the same in every family
    (``token_types``: whether the family has the segment table)."""
    rules = [("embeddings.word_embeddings.{p}", "embeddings.token.{p}"), ("embeddings.position_embeddings.{p}", "embeddings.position.{p}")]
    if token_types:
        rules.append(("embeddings.token_type_embeddings.{p}", "embeddings.token_type.{p}"))
    return rules + [("embeddings.LayerNorm.{p}", "embeddings.norm.{p}")]


def layer_rules(official: str, ours: str, parts: dict[str, str]) -> list[tuple[str, str]]:
    """Hugging Face's names of an encoder layer's weights -> minipt's: ``parts`` maps the family's module in a layer
    to ``minipt.nn.EncoderLayer``'s (attn.q_proj ... ffn_norm); ``official`` and ``ours`` are a layer's path
    (``"encoder.layer.{i}"`` and ``"layers.{i}"``)."""
    return [(f"{official}.{theirs}.{{p}}", f"{ours}.{mine}.{{p}}") for theirs, mine in parts.items()]


def tied_decoder(tied: bool, decoder: str, head: str, prefix: str, bias: str | None = None) -> tuple[list, list, list]:
    """The official names of a masked-LM decoder (``decoder``, its module's name in the files) as key-map data:
    (rules for ``head``'s ``decoder``, the ``tied`` pairs, the ``written_twice`` pairs).

    Tied, the decoder's weight is the token table (``{prefix}embeddings.word_embeddings.weight``) and is not
    written; a family whose head keeps the decoder's bias under a name of its own (``bias``: BERT's
    ``cls.predictions.bias``) stores it there, and its files may repeat it under the decoder's name. Untied, the
    decoder has its own weight and bias, which are read; transformers' head then keeps ``bias`` as a parameter of
    its own that it never uses, and expects it in the file: it is written as a copy of the decoder's."""
    if not tied:
        return [(f"{decoder}.{{p}}", f"{head}.decoder.{{p}}")], [], [] if bias is None else [(bias, f"{decoder}.bias")]
    table = [(f"{decoder}.weight", f"{prefix}embeddings.word_embeddings.weight")]
    if bias is None:
        return [(f"{decoder}.bias", f"{head}.decoder.bias")], table, []
    return [(bias, f"{head}.decoder.bias")], table + [(f"{decoder}.bias", bias)], []


# -- minipt.reference: where transformers computes the same values ------------------------------
def layer_points(ours: str, theirs: str, names: dict[str, str], num_heads: int) -> dict:
    """The points inside one encoder layer: minipt's ``{ours}{point}`` -> (transformers' module ``{theirs}{name}``
    (``name:input``: its input), what to read off it). ``names`` is the family's module for each point of
    ``minipt.nn.EncoderLayer`` (attn.probs, attn.heads, attn.out, attn_norm.out, act.out, ffn_down.out, out),
    in data-flow order; "" is the layer itself."""
    from ..reference import heads

    read = {"attn.probs": lambda out: out[1], "attn.heads": heads(num_heads)}  # the attention's (output, probabilities); heads split
    return {ours + point: (theirs + name if name else theirs.rstrip("."), read.get(point)) for point, name in names.items()}


def compare_encoder(model, path, inputs, rtol, *, family: str, layers: str, layer_names: dict[str, str], heads: dict[type, dict], num_heads: int):
    """``minipt.reference.layer_diffs`` for an encoder whose layers run one after the other: transformers' class
    of the same name (eager attention) on the same checkpoint, compared at the embeddings, inside every layer
    (``layer_points``, transformers' layers under ``layers``: ``"encoder.layer"``), at the pooler where the
    reference has one, and at the head's points (``heads``: each minipt class -> its head's points)."""
    from ..reference import import_reference, report, token_batch, transformers_reference

    transformers = import_reference("transformers", family)
    batch, label = token_batch(inputs, path)
    cls, head = next((cls, points) for cls, points in heads.items() if isinstance(model, cls))
    encoder = model.base_model if isinstance(model, _EncoderWithHead) else model
    prefix = "" if encoder is model else model.base_model_prefix + "."
    pooler = getattr(encoder, "pooler", None)
    kwargs = {"add_pooling_layer": pooler is not None} if encoder is model and hasattr(encoder, "pooler") else {}
    reference_class = getattr(transformers, cls.__name__)
    reference = transformers_reference(reference_class, path, **kwargs)
    points = {f"{prefix}embeddings.out": (f"{prefix}embeddings", None)}
    for i in range(len(encoder.layers)):
        points.update(layer_points(f"{prefix}layers.{i}.", f"{prefix}{layers}.{i}.", layer_names, num_heads))
    if pooler is not None and not isinstance(model, MaskedLanguageModel):  # transformers' masked-LM models have no pooler
        points[f"{prefix}pooler.out"] = (f"{prefix}pooler", None)
    points.update(head)
    return report(model, f"transformers {cls.__name__}", label, rtol, points, lambda: model(**batch), reference, lambda: reference(**batch))
