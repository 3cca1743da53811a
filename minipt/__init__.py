"""minipt: minimal, readable Transformer, CNN and RNN models in pure PyTorch.

    >>> from minipt.models.bert import BertModel
    >>> model = BertModel.from_pretrained("all-MiniLM-L6-v2")

Submodules are imported when first used, so ``import minipt`` stays cheap.
"""

from importlib import import_module

from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    InputError,
    KeyMismatchError,
    MiniptError,
    SaveError,
    StageError,
    TrainingError,
)

__version__ = "0.1.0"

_LAZY = {
    "Tokenizer": "minipt.tokenizer",
    "SentenceEncoder": "minipt.models.sentence",
}


_SUBMODULES = ("checkpoint", "hub", "keymap", "models", "nn", "ops", "probe", "reference", "registry", "summary", "train", "transfer")


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return import_module(f"minipt.{name}")
    raise AttributeError(f"module 'minipt' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "InputError",
    "KeyMismatchError",
    "MiniptError",
    "SaveError",
    "StageError",
    "TrainingError",
    "SentenceEncoder",
    "Tokenizer",
]
