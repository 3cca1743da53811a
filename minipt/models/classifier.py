"""The classifier head, reached the same way on every minipt classifier (timm's names).

    model.get_classifier()        # the head module: ResNet's head, EfficientNet's and BERT's classifier
    model.reset_classifier(7)     # a fresh head for 7 classes; the config follows (num_classes / num_labels)
    model.reset_classifier(0)     # image classifiers: no head, forward returns the pooled features
    model.num_classes             # the head's size, read from the config

A class declares which module is its head and which config field sizes it,
``transfer_head = ("classifier", "num_labels")`` (``minipt.transfer`` reads
the same declaration), and ``headless = True`` where a head of 0 classes means
"no head" (timm's convention for the image classifiers). The config is updated
through its own checks, so ``save_pretrained`` writes what the model now is and
``from_pretrained`` builds it back.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import transfer
from ..errors import InputError, TrainingError
from ..nn import Linear


class HasClassifier:
    """Mixed into a model class that declares ``transfer_head``: ``get_classifier``, ``reset_classifier``, ``num_classes``."""

    transfer_head: tuple[str, str]
    headless = False  # True: reset_classifier(0) removes the head (nn.Identity), as timm does

    @property
    def num_classes(self) -> int:
        """The number of classes the head predicts (0: no head, the output is the pooled features)."""
        return int(getattr(self.config, self.transfer_head[1]))

    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        """The head module (its attribute name with ``name_only=True``, as timm)."""
        path = self.transfer_head[0]
        return path if name_only else self.get_submodule(path)

    def reset_classifier(self, num_classes: int, **config_fields) -> None:
        """Replace the head by a freshly initialised one for ``num_classes`` classes, and say so in the config
        (with ``config_fields`` such as ``id2label``, checked by the config as ``transfer.reset_classifier`` does)."""
        path, field = self.transfer_head
        lowest = 0 if self.headless else 1
        if isinstance(num_classes, np.integer):
            num_classes = int(num_classes)  # a count from numpy (np.unique(labels).size) is a count
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < lowest:
            what = "an integer >= 0 (0: no head, as timm)" if self.headless else "a positive integer"
            raise TrainingError(f"{type(self).__name__}.reset_classifier takes {field} as {what}, got {num_classes!r}")
        if transfer.is_quantized(self):
            raise TrainingError(f"{type(self).__name__} is quantised (int8 weights, packed for inference); reset_classifier needs the float model")
        if num_classes == 0:
            if config_fields.get("id2label"):
                raise TrainingError(f"{type(self).__name__}.reset_classifier to 0 classes (no head) got id2label; give no names")
            config = self.config.replace(**{**config_fields, field: 0})  # checked before the head goes
            setattr(self, path, nn.Identity())
            self.config = config
            return
        if isinstance(self.get_classifier(), nn.Identity):  # no head yet: one of the right input width, to be replaced
            anchor = next(self.parameters())
            width = getattr(self, "head_hidden_size", self.num_features)  # what the head reads (timm's name): VGG's hidden layer
            placeholder = Linear(width, 1, device=anchor.device, dtype=anchor.dtype)
            placeholder.backend = self.config.backend
            setattr(self, path, placeholder)
        transfer.reset_classifier(self, num_classes, **config_fields)

    def check_features(self, features: torch.Tensor) -> None:
        """The input of ``forward_head``: an unpooled feature map (B, num_features, H, W), as ``forward_features`` gives."""
        owner = f"{type(self).__name__}.forward_head"
        if not isinstance(features, torch.Tensor) or features.dim() != 4 or features.shape[1] != self.num_features:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise InputError(f"{owner} expects the feature map of forward_features, (batch, {self.num_features}, height, width); got {shape}")
        if features.shape[2] == 0 or features.shape[3] == 0:
            raise InputError(f"{owner} got a feature map of shape {tuple(features.shape)}: nothing to pool")
        if not features.is_floating_point():
            raise InputError(f"{owner} expects floating-point features, got {features.dtype}")
