"""Input checks the models share, written so that torch.compile and torch.export can trace them.

A check on shapes reads Python ints and traces as it is. A check on values
(is every id inside the embedding table?) must read the tensor, which would
break the graph: it runs in eager mode and is skipped while a graph is traced
(``tracing()``), where an out-of-range id then fails inside the compiled code.
"""

from __future__ import annotations

import torch

from .errors import InputError


def tracing() -> bool:
    """True while torch.compile or torch.export traces the model."""
    compiler = torch.compiler
    return compiler.is_compiling() or (hasattr(compiler, "is_exporting") and compiler.is_exporting())


def check_ids(name: str, ids: torch.Tensor, size: int) -> None:
    """Every id in ``ids`` indexes a table of ``size`` entries, or an ``InputError`` names the first bad value."""
    if ids.numel() == 0 or tracing() or ids.is_meta:  # a meta tensor has shapes only (minipt.summary runs on them)
        return
    low, high = torch.aminmax(ids)
    low, high = int(low), int(high)
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise InputError(f"{name} holds {bad}, outside the table of {size} entries (valid: 0..{size - 1})")
