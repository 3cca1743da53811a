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
    "GPT2Model": "minipt.models.gpt2:GPT2Model",
    "GPT2LMHeadModel": "minipt.models.gpt2:GPT2LMHeadModel",
}
MODEL_TYPES = {
    "bert": "minipt.models.bert:BertModel",
    "gpt2": "minipt.models.gpt2:GPT2Model",
}


# Official formats without a config.json, told apart by a tensor only they hold.
SIGNATURES = {
    "layer1.0.conv1.weight": "minipt.models.resnet:ResNet",
    "_conv_stem.weight": "minipt.models.efficientnet:EfficientNet",
    "FeatureExtraction.ConvNet.0.weight": "minipt.models.crnn:CRNN",
    "enc_emb": "minipt.models.g2p:G2P",
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


def model_class_for(path, checkpoint) -> type:
    """The minipt class for a checkpoint: from its ``config.json``, or from the tensors it holds."""
    from ..checkpoint import CONFIG, read_config

    directory = path if path.is_dir() else path.parent
    if (directory / CONFIG).is_file():
        return model_class(read_config(directory))
    keys = {key.removeprefix("module.") for key in checkpoint.keys()}
    for key, target in SIGNATURES.items():
        if key in keys:
            return _load(target)
    raise ConfigError(f"{path} has no {CONFIG}, and its tensors match none of minipt's config-less formats ({', '.join(SIGNATURES)})")
