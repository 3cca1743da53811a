"""Which minipt class loads a checkpoint: every model family's one declaration, collected.

A model file ends with its family's declaration, and that is all it takes to register it:

    FAMILY = register(
        "bert",                                    # model_type, as official config.json files write it
        (BertModel, BertForMaskedLM, ...),         # its classes; the first loads a bare model_type
        tiny=lambda: BertConfig(hidden_size=16, ...),   # a small config: random models for tests and examples
        inputs=lambda cls: ((ids, mask), {}),      # example (args, kwargs) a tiny model of the class runs on
        signature=None,                            # (tensor, what[, class]) for a format with no config.json
        reference=compare,                         # compare(model, path, inputs, rtol) -> minipt.reference.DiffReport
        reads=Reads("token ids (batch x tokens)", "1x128"),   # what summary() and inspect feed it by size
    )

The class names are the architecture names ``config.json`` files carry in ``architectures``.
This module imports none of minipt's models: ``families()`` imports each module of
``minipt.models`` when first asked (so looking a checkpoint up costs one import of each
family, once), and the declarations register themselves.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError
from .files import read_json

CONFIG = "config.json"


@dataclass(frozen=True)
class Reads:
    """What a family's models read, for ``minipt.summary`` to build inputs from a size alone: a size of
    2 dimensions (``"1x128"``) gives token ids, of 4 (``"1x3x224x224"``) images."""

    what: str  # "token ids (batch x tokens)", said when a size does not fit
    default: str | Callable[[Any], str]  # the size used when none is given, or a function of the model giving it
    count: int = 1  # positional inputs of that size (G2P reads letters and as many phonemes)
    # inputs a model also needs beside the sized ones, as keywords: (model, batch) -> {name: tensor} (CLIPModel: its images)
    beside: Callable[[Any, int], dict] | None = None

    def default_size(self, model) -> str:
        return self.default(model) if callable(self.default) else self.default


@dataclass(frozen=True)
class Family:
    model_type: str  # "bert": the model_type of its config.json
    classes: tuple[type, ...]  # the family's models; classes[0] loads a config that names only the model_type
    tiny: Callable[[], Any]  # a small config of the family (random weights, quick to build)
    inputs: Callable[[type], tuple[tuple, dict]]  # example (args, kwargs) for a tiny model of a class
    # (tensor only this config-less format holds, what the file is[, the class that loads it: classes[0] if not named])
    signature: tuple[str, str] | tuple[str, str, type] | None = None
    reference: Callable | None = None  # compare(model, path, inputs, rtol) -> DiffReport (minipt.reference)
    reads: Reads | None = None  # what summary() feeds a model of the family from a size
    architectures: dict[str, type] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "architectures", {cls.__name__: cls for cls in self.classes})

    @property
    def module(self) -> str:
        return self.classes[0].__module__

    def tiny_model(self, cls: type | None = None):
        """A small model of ``cls`` (default: the base class) with random weights, in eval mode."""
        return (cls or self.classes[0])(self.tiny()).eval()


_FAMILIES: dict[str, Family] = {}  # model_type -> Family, in declaration order
_discovered = False


def register(model_type: str, classes: tuple[type, ...], *, tiny: Callable[[], Any], inputs: Callable[[type], tuple[tuple, dict]],
             signature: tuple[str, str] | tuple[str, str, type] | None = None, reference: Callable | None = None, reads: Reads | None = None) -> Family:
    """Declare a model family (called once, at the end of its model file)."""
    family = Family(model_type, tuple(classes), tiny, inputs, signature, reference, reads)
    known = _FAMILIES.get(model_type)
    if known is not None and known.module != family.module:
        raise ConfigError(f"model_type {model_type!r} is declared by both {known.module} and {family.module}")
    _FAMILIES[model_type] = family
    return family


def families() -> list[Family]:
    """Every declared family (importing each module of ``minipt.models`` the first time)."""
    global _discovered
    if not _discovered:
        models = importlib.import_module("minipt.models")
        for info in pkgutil.iter_modules(models.__path__):
            importlib.import_module(f"minipt.models.{info.name}")
        _discovered = True
    return list(_FAMILIES.values())


def family_of(model_or_class) -> Family | None:
    """The family a model (or model class) belongs to, or None."""
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    for family in families():
        if any(issubclass(cls, member) for member in family.classes):
            return family
    return None


def model_class(config: dict) -> type:
    """The minipt class for an official ``config.json``: its architecture if minipt has it, else its family's base model."""
    found = families()
    architectures = config.get("architectures")
    for architecture in architectures if isinstance(architectures, list) else ():
        for family in found:
            if isinstance(architecture, str) and architecture in family.architectures:
                return family.architectures[architecture]
    model_type = config.get("model_type")
    for family in found:
        if model_type == family.model_type:
            return family.classes[0]
    supported = ", ".join(family.model_type for family in found)
    raise ConfigError(f"no minipt model for model_type {model_type!r} (architectures {config.get('architectures')}); supported: {supported}")


def _config_of(path: Path) -> dict | None:
    directory = path if path.is_dir() else path.parent
    if not (directory / CONFIG).is_file():
        return None
    return read_json(directory / CONFIG, what="an object of config fields", error=ConfigError)


def _signature(checkpoint) -> tuple[Family, str, type] | None:
    """The family whose config-less format the checkpoint is, the tensor that says so, and the class that loads it."""
    keys = {key.removeprefix("module.") for key in checkpoint.keys()}
    for family in families():
        if family.signature and family.signature[0] in keys:
            return family, family.signature[0], family.signature[2] if len(family.signature) > 2 else family.classes[0]
    return None


def model_class_for(path: Path, checkpoint) -> type:
    """The minipt class for a checkpoint: from its ``config.json``, or from the tensors it holds."""
    config = _config_of(path)
    if config is not None:
        return model_class(config)
    found = _signature(checkpoint)
    if found is None:
        formats = ", ".join(family.signature[0] for family in families() if family.signature)
        raise ConfigError(f"{path} has no {CONFIG}, and its tensors match none of minipt's config-less formats ({formats})")
    return found[2]


def describe(path: Path, checkpoint) -> str:
    """What a checkpoint looks like and which minipt class loads it, for error messages."""
    try:
        config = _config_of(path)
    except ConfigError:
        return f"its {CONFIG} cannot be read"
    if config is not None:
        try:
            cls = model_class(config)
        except ConfigError:
            return f"its {CONFIG} describes no model minipt has"
        return f"it looks like a {config.get('model_type', cls.__name__)!r} checkpoint: load it with {cls.__module__}.{cls.__name__}"
    found = _signature(checkpoint)
    if found is not None:
        family, key, cls = found
        return f"it looks like {family.signature[1]} (it holds {key}): load it with {cls.__module__}.{cls.__name__}"
    first = ", ".join(list(checkpoint.keys())[:3])
    return f"its tensors ({first}, ...) match none of minipt's formats"
