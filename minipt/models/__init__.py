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
    "ResNet": "minipt.models.resnet:ResNet",
    "EfficientNet": "minipt.models.efficientnet:EfficientNet",
    "CRNN": "minipt.models.crnn:CRNN",
    "G2P": "minipt.models.g2p:G2P",
    "GPT2Model": "minipt.models.gpt2:GPT2Model",
    "GPT2LMHeadModel": "minipt.models.gpt2:GPT2LMHeadModel",
}
MODEL_TYPES = {  # model_type in config.json -> the family's base class
    "bert": "minipt.models.bert:BertModel",
    "resnet": "minipt.models.resnet:ResNet",
    "efficientnet-lite": "minipt.models.efficientnet:EfficientNet",
    "crnn": "minipt.models.crnn:CRNN",
    "g2p": "minipt.models.g2p:G2P",
    "char-lm": "minipt.models.char_lm:CharLM",
    "gpt2": "minipt.models.gpt2:GPT2Model",
}


# Official formats without a config.json, told apart by a tensor only they hold:
# signature tensor -> (class, what the file is).
SIGNATURES = {
    "layer1.0.conv1.weight": ("minipt.models.resnet:ResNet", "a torchvision-format ResNet"),
    "_conv_stem.weight": ("minipt.models.efficientnet:EfficientNet", "an official EfficientNet-Lite checkpoint"),
    "FeatureExtraction.ConvNet.0.weight": ("minipt.models.crnn:CRNN", "EasyOCR's text recogniser"),
    "enc_emb": ("minipt.models.g2p:G2P", "g2p-en's grapheme-to-phoneme model"),
}


def _load(target: str) -> type:
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


def model_class(config: dict) -> type:
    """The minipt class for an official ``config.json``: its architecture if minipt has it, else its family's base model."""
    architectures = config.get("architectures")
    for architecture in architectures if isinstance(architectures, list) else ():
        if isinstance(architecture, str) and architecture in ARCHITECTURES:
            return _load(ARCHITECTURES[architecture])
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in MODEL_TYPES:
        return _load(MODEL_TYPES[model_type])
    raise ConfigError(f"no minipt model for model_type {model_type!r} (architectures {config.get('architectures')}); supported: {', '.join(MODEL_TYPES)}")


def model_class_for(path, checkpoint) -> type:
    """The minipt class for a checkpoint: from its ``config.json``, or from the tensors it holds."""
    from ..checkpoint import CONFIG, read_config

    directory = path if path.is_dir() else path.parent
    if (directory / CONFIG).is_file():
        return model_class(read_config(directory))
    keys = {key.removeprefix("module.") for key in checkpoint.keys()}
    for key, (target, _) in SIGNATURES.items():
        if key in keys:
            return _load(target)
    raise ConfigError(f"{path} has no {CONFIG}, and its tensors match none of minipt's config-less formats ({', '.join(SIGNATURES)})")


def describe(path, checkpoint) -> str:
    """What a checkpoint looks like and which minipt class loads it, for error messages."""
    from ..checkpoint import CONFIG, read_config

    directory = path if path.is_dir() else path.parent
    if (directory / CONFIG).is_file():
        try:
            config = read_config(directory)
            found = model_class(config)
        except ConfigError:
            return f"its {CONFIG} describes no model minipt has"
        return f"it looks like a {config.get('model_type', found.__name__)!r} checkpoint: load it with {found.__module__}.{found.__name__}"
    keys = {key.removeprefix("module.") for key in checkpoint.keys()}
    for key, (target, what) in SIGNATURES.items():
        if key in keys:
            module, _, name = target.partition(":")
            return f"it looks like {what} (it holds {key}): load it with {module}.{name}"
    first = ", ".join(list(checkpoint.keys())[:3])
    return f"its tensors ({first}, ...) match none of minipt's formats"
