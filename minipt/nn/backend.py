"""Which implementation minipt's building blocks run.

- ``"math"``: every op written out in elementary torch operations, the
  equations as in the papers (attention scores, softmax, LayerNorm's mean and
  variance, GELU's erf). Slow but transparent; attention probabilities can be
  returned.
- ``"sdpa"``: torch's fused kernels for the same math
  (``scaled_dot_product_attention``, ``layer_norm``, ``gelu``). The default.
- ``"fused"``: minipt's Triton kernels (not available yet).

The choice is global (``set_backend``, or ``use_backend`` for a block of
code) or per model (``set_backend(name, module=model)``; a module's own choice
wins over the global one).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from ..errors import ConfigError

BACKENDS = ("math", "sdpa")
_PLANNED = ("fused",)
_global_backend = "sdpa"


def check_backend(name: str | None) -> str | None:
    if name is None or name in BACKENDS:
        return name
    if name in _PLANNED:
        raise ConfigError(f"backend {name!r} is not available yet; choose one of {BACKENDS}")
    raise ConfigError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def get_backend(own: str | None = None) -> str:
    """The backend a module runs: its own choice if it made one, else the global one."""
    return own or _global_backend


def set_backend(name: str | None, module: nn.Module | None = None) -> None:
    """Choose the backend globally, or for every building block inside ``module``
    (``None`` there returns the blocks to the global choice)."""
    global _global_backend
    check_backend(name)
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
    check_backend(name)
    previous, _global_backend = _global_backend, name
    try:
        yield
    finally:
        _global_backend = previous
