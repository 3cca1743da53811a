"""What the text encoder families (BERT, RoBERTa, DistilBERT, ALBERT) share around minipt.nn.EncoderLayer.

The families differ in their embeddings, their names and their parameter sharing; the
steps here are the same for all of them, so each is written once:

- ``check_token_inputs``: the checks on ``input_ids``, ``attention_mask`` and ``token_type_ids``;
- ``check_token_labels`` / ``check_sequence_labels``: labels of an MLM head / a classifier;
- ``run_layers``: the encoder layers in turn, collecting hidden states and attentions on request;
- ``masked_lm_loss`` and ``classification_loss``: transformers' losses for the heads;
- ``ClassLabels``: a config's ``id2label``/``num_labels`` read and written as transformers does.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_ids
from ..config import require
from ..errors import InputError

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


class ClassLabels:
    """Mixed into a text encoder's ``Config`` (before it): the classifier's labels as transformers keeps them.

    ``id2label`` names classes 0..n-1 and then sets ``num_labels``; a config written back gives
    ``id2label`` and ``label2id`` (or only ``num_labels`` when the labels have no names), and a new
    head (``num_labels`` passed when loading) forgets the names the file had."""

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

    @classmethod
    def from_dict(cls, values: dict, *, source=None, **overrides):
        if "num_labels" in overrides and isinstance(values, dict):
            values = {k: v for k, v in values.items() if k not in ("id2label", "label2id")}  # the new head decides
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
) -> None:
    """Raise an InputError naming the first of a text encoder's inputs that does not fit the model."""
    if token_type_ids is not None and type_vocab_size is None:
        raise InputError(f"token_type_ids given, but {family} has no token types: pass input_ids and attention_mask only")
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
    check_ids("input_ids", input_ids, vocab_size)
    if token_type_ids is not None:
        if token_type_ids.shape != input_ids.shape:
            raise InputError(f"token_type_ids has shape {tuple(token_type_ids.shape)}, input_ids {tuple(input_ids.shape)}")
        check_ids("token_type_ids", token_type_ids, type_vocab_size)
    if attention_mask is not None and not attention_mask.is_floating_point() and attention_mask.shape != input_ids.shape:
        raise InputError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}")


def _shape(labels) -> object:
    return tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__


def check_token_labels(labels, input_ids: torch.Tensor) -> None:
    """An MLM head's ``labels``: the shape of ``input_ids``, -100 where nothing is predicted."""
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape):
        raise InputError(f"labels must have the shape of input_ids {tuple(input_ids.shape)} (-100 where nothing is predicted), got {_shape(labels)}")


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
    return None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def classification_loss(problem_type: str | None, num_labels: int, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """transformers' loss for the problem type (read off num_labels and the labels' dtype when none is named); None without labels."""
    if labels is None:
        return None
    problem = problem_type
    if problem is None:
        problem = "regression" if num_labels == 1 else "single_label_classification" if not labels.is_floating_point() else "multi_label_classification"
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1)) if num_labels == 1 else F.mse_loss(logits, labels)
    if problem == "single_label_classification":
        return F.cross_entropy(logits, labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
