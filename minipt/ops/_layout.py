"""The memory layout every minipt op returns: contiguous, whatever its inputs' strides.

Each op's fake (shape-only) implementation promises this layout to
torch.compile and torch.export, and each real implementation keeps the
promise, so a traced graph may view the outputs as contiguous.
"""

from __future__ import annotations

import torch


def contiguous(outputs):
    """A tensor, or a tuple of tensors (None kept), made contiguous."""
    if isinstance(outputs, tuple):
        return tuple(None if t is None else t.contiguous() for t in outputs)
    return outputs.contiguous()


def empty_like(t: torch.Tensor, **kwargs) -> torch.Tensor:
    """An output promised by a fake implementation: the shape and dtype of ``t``, contiguous."""
    return torch.empty_like(t, memory_format=torch.contiguous_format, **kwargs)
