"""The 1000 ImageNet-1k class names, in the index order of every ImageNet classifier's output.

The names ship as ``imagenet_classes.txt`` next to this file (torchvision's
spelling; ``bench/make_imagenet_classes.py`` regenerates it) and are read on
first use.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..errors import InputError, MiniptError

_NAMES = Path(__file__).resolve().parent / "imagenet_classes.txt"


class ShippedDataError(MiniptError):
    """A data file that ships with minipt is missing or damaged: the installation, not the caller, is at fault."""


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """All 1000 class names; ``imagenet_classes()[281] == "tabby"``."""
    try:
        names = tuple(line for line in _NAMES.read_text(encoding="utf-8").splitlines() if line)
    except (OSError, UnicodeDecodeError) as err:
        raise ShippedDataError(f"{_NAMES} cannot be read ({err}); reinstall minipt or regenerate it with bench/make_imagenet_classes.py") from err
    if len(names) != 1000:
        raise ShippedDataError(f"{_NAMES} holds {len(names)} class names, not 1000; reinstall minipt or regenerate it with bench/make_imagenet_classes.py")
    return names


def top_classes(logits: torch.Tensor, top: int = 5) -> list[list[tuple[str, float]]]:
    """The ``top`` most probable classes of each row of ``logits`` (B, 1000), as (name, probability) pairs."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[-1] != 1000:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(f"top_classes names ImageNet's 1000 classes: it needs logits of shape (batch, 1000), got {shape} (a model with another head has its own labels)")
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= logits.shape[-1]:
        raise InputError(f"top must be an integer from 1 to {logits.shape[-1]} (the number of classes), got {top!r}")
    probs = torch.softmax(logits.float(), dim=-1)  # (B, 1000)
    values, indices = probs.topk(top, dim=-1)  # (B, top)
    names = imagenet_classes()
    return [[(names[i], p) for i, p in zip(row_indices.tolist(), row_values.tolist())] for row_values, row_indices in zip(values, indices)]
