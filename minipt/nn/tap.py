"""Named tap points: values inside a block that are not the output of any module.

Attention probabilities, the output of each head before the output projection
and a recurrent layer's state at every time step are computed inside one
module's ``forward``. The block passes each through ``tap(self, "probs", x)``,
which returns ``x`` unchanged unless a ``minipt.probe.capture`` is open: then
the capture may record the value or replace it. With no capture open a tap is
one check of an empty list, and under torch.compile it traces to nothing.

A block declares its tap points in ``taps``: name -> the one backend that
computes the value (``"math"``), or None where every backend does.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor, nn

# The open captures (minipt.probe), innermost last; empty whenever none is open.
_listeners: list[Callable] = []


def listening() -> bool:
    """Whether a capture is open (a caller that must reorder a value before tapping it checks first)."""
    return bool(_listeners)


def tap(site: Optional[nn.Module], name: str, value: Tensor, step: Optional[tuple[int, int]] = None) -> Tensor:
    """``value``, or what an open capture makes of it. ``site`` is the module the value belongs to;
    ``step`` = (t, T) marks the t-th of T time steps of a recurrent layer."""
    if not _listeners:
        return value
    for listener in reversed(_listeners):  # the innermost capture first: an outer one sees the value its edit made
        value = listener(site, name, value, step)
    return value
