"""Which implementation minipt's building blocks run.

- ``"math"``: every op written out in elementary torch operations, the
  equations as in the papers (attention scores, softmax, LayerNorm's mean and
  variance, GELU's erf). Slow but transparent; attention probabilities can be
  returned.
- ``"torch"``: torch's built-in kernels for the same math
  (``scaled_dot_product_attention``, ``layer_norm``, ``gelu``). The default.
  ``"sdpa"``, its former name, is still accepted (with a DeprecationWarning).
- ``"fused"``: minipt's own ops (``minipt.ops``): Triton kernels on CUDA, their
  plain-torch references elsewhere; LayerNorm adds a post-LN residual in the same
  op and a Linear followed by GELU adds its bias inside the GELU
  (``linear_then_activation``). What the ops cannot express (attention dropout
  or an arbitrary additive mask) runs on ``"torch"``.

The choice is global (``set_backend``, or ``use_backend`` for a block of
code) or per model (``set_backend(name, module=model)``; a module's own choice
wins over the global one).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

from torch import nn

from ..errors import ConfigError

BACKENDS = ("math", "torch", "fused")
_DEPRECATED = {"sdpa": "torch"}
_global_backend = "torch"


def check_backend(name: str | None) -> str | None:
    """The backend's name (a deprecated alias replaced by its new name), or ConfigError."""
    if name in _DEPRECATED:
        warnings.warn(f"backend {name!r} is now called {_DEPRECATED[name]!r}", DeprecationWarning, stacklevel=3)
        return _DEPRECATED[name]
    if name is None or name in BACKENDS:
        return name
    raise ConfigError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def get_backend(own: str | None = None) -> str:
    """The backend a module runs: its own choice if it made one, else the global one."""
    return own or _global_backend


def set_backend(name: str | None, module: nn.Module | None = None) -> None:
    """Choose the backend globally, or for every building block inside ``module``
    (``None`` there returns the blocks to the global choice)."""
    global _global_backend
    name = check_backend(name)
    if module is None:
        if name is None:
            raise ConfigError("the global backend needs a name")
        _global_backend = name
        return
    for block in module.modules():
        if hasattr(block, "backend"):
            block.backend = name


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run a block of code with another global backend."""
    global _global_backend
    name = check_backend(name)
    previous, _global_backend = _global_backend, name
    try:
        yield
    finally:
        _global_backend = previous
