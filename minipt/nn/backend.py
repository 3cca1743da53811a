"""Which implementation minipt's building blocks run.

- ``"math"``: every op written out in elementary torch operations, the
  equations as in the papers (attention scores, softmax, LayerNorm's mean and
  variance, GELU's erf, the recurrent cells step by step). Slow but
  transparent; attention probabilities and per-step states can be read.
- ``"torch"``: torch's built-in kernels for the same math
  (``scaled_dot_product_attention``, ``layer_norm``, ``gelu``, torch.nn's
  recurrent kernels). The default. ``"sdpa"``, its former name, is still
  accepted (with a DeprecationWarning).
- ``"fused"``: minipt's own ops (``minipt.ops``): Triton kernels on CUDA, their
  plain-torch references or oneDNN elsewhere; LayerNorm adds a post-LN
  residual in the same op and a Linear followed by GELU adds its bias inside
  the GELU (``linear_then_activation``). What the ops cannot express (attention
  dropout or an arbitrary additive mask) runs on ``"torch"``.

A block whose computation follows the backend derives from ``BackendBlock``;
that is how the choice finds it. The choice is global (``set_backend(name)``,
or ``with use_backend(name):`` for a block of code) or per model
(``model.set_backend(name)``, ``backend=`` in any model's config, or
``with use_backend(name, module=model):``); a block's own choice wins over the
global one.
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


class BackendBlock:
    """A building block that runs on the backend chosen for it (``backend``; None: the global choice).
    Mixed into an ``nn.Module``: ``class LayerNorm(BackendBlock, nn.Module)``."""

    backend: str | None = None


def check_backend(name: str | None) -> str | None:
    """The backend's name (a deprecated alias replaced by its new name), or ConfigError."""
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"backend must be a name ({', '.join(map(repr, BACKENDS))}) or None, got {type(name).__name__} {name!r}")
    if name in _DEPRECATED:
        warnings.warn(f"backend {name!r} is now called {_DEPRECATED[name]!r}", DeprecationWarning, stacklevel=3)
        return _DEPRECATED[name]
    if name is None or name in BACKENDS:
        return name
    raise ConfigError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def get_backend(own: str | None = None) -> str:
    """The backend a block runs: its own choice if it made one, else the global one."""
    return own or _global_backend


def blocks(module: nn.Module) -> list[BackendBlock]:
    """The blocks inside ``module`` (itself included) whose computation follows the backend."""
    return [block for block in module.modules() if isinstance(block, BackendBlock)]


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
    for block in blocks(module):
        block.backend = name


@contextmanager
def use_backend(name: str, module: nn.Module | None = None) -> Iterator[None]:
    """Run a block of code with another backend: the global one, or that of every block inside
    ``module``; the previous choice is restored afterwards, also on an error."""
    global _global_backend
    name = check_backend(name)
    if module is None:
        if name is None:
            raise ConfigError("the global backend needs a name")
        previous, _global_backend = _global_backend, name
        try:
            yield
        finally:
            _global_backend = previous
        return
    saved = [(block, block.backend) for block in blocks(module)]
    set_backend(name, module)
    try:
        yield
    finally:
        for block, backend in saved:
            block.backend = backend


class ChoosesBackend:
    """For models: ``model.set_backend(name)`` and ``with model.use_backend(name):``, over every block inside."""

    def set_backend(self, name: str | None) -> None:
        """Run this model's blocks on ``"math"``, ``"torch"`` or ``"fused"`` (None: the global choice)."""
        set_backend(name, module=self)

    def use_backend(self, name: str):
        """A context in which this model's blocks run ``name``; their choices are restored after."""
        return use_backend(name, module=self)
