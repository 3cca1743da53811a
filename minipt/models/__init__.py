"""Models built from minipt's blocks, each in one file that reads like its paper.

``ARCHITECTURES`` maps the architecture names written in official
``config.json`` files to minipt's classes, so tools can pick the class for a
checkpoint (``model_class``); ``MODEL_TYPES`` gives the default per family.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import ConfigError

ARCHITECTURES = {
    "BertModel": "minipt.models.bert:BertModel",
    "BertForMaskedLM": "minipt.models.bert:BertForMaskedLM",
    "BertForSequenceClassification": "minipt.models.bert:BertForSequenceClassification",
    "CharLM": "minipt.models.char_lm:CharLM",
}
MODEL_TYPES = {
    "bert": "minipt.models.bert:BertModel",
}


def _load(target: str) -> type:
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


def model_class(config: dict) -> type:
    """The minipt class for an official ``config.json``: its architecture if minipt has it, else its family's base model."""
    for architecture in config.get("architectures") or ():
        if architecture in ARCHITECTURES:
            return _load(ARCHITECTURES[architecture])
    model_type = config.get("model_type")
    if model_type in MODEL_TYPES:
        return _load(MODEL_TYPES[model_type])
    raise ConfigError(f"no minipt model for model_type {model_type!r} (architectures {config.get('architectures')}); supported: {', '.join(MODEL_TYPES)}")
