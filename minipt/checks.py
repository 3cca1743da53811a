"""Checks on inputs and arguments: the one place that validates what a user passes.

``check_int``, ``check_float``, ``check_bool``, ``check_choice``, ``check_str``, ``check_path``,
``check_tensor``, ``check_dtype`` and ``check_device`` validate public arguments and raise
``InputError`` naming the argument and the value. ``check_ids`` and ``tracing`` serve the models'
input checks, written so that torch.compile and torch.export can trace them.

A check on shapes reads Python ints and traces as it is. A check on values
(is every id inside the embedding table?) must read the tensor, which would
break the graph: it runs in eager mode and is skipped while a graph is traced
(``tracing()``), where an out-of-range id then fails inside the compiled code.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .errors import InputError


def tracing() -> bool:
    """True while torch.compile or torch.export traces the model."""
    compiler = torch.compiler
    return compiler.is_compiling() or (hasattr(compiler, "is_exporting") and compiler.is_exporting())


def autocast_on(device_type: str) -> bool:
    """Whether autocast is on for this device type (the meta device, which minipt.summary runs on, has none)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # "unknown device type for autocast"
        return False


ID_DTYPES = (torch.int64, torch.int32)  # what torch's embedding lookups take


def check_on_device(name: str, value: torch.Tensor | None, device: torch.device | None) -> None:
    """An ``InputError`` unless ``value`` (where given) is on ``device`` (the model's, where given): meta ids into a
    table on the CPU give an output of no data, silently; other devices, torch's errors from deep inside."""
    if value is not None and device is not None and value.device != device:
        raise InputError(f"{name} is a tensor on {value.device}, the model on {device}: move it with .to({str(device)!r})")


def check_ids(name: str, ids: torch.Tensor, size: int, device: torch.device | None = None) -> None:
    """``ids`` are int64 (or int32) and each indexes a table of ``size`` entries (on ``device``, where given), or an
    ``InputError`` names the dtype, the device or the first bad value."""
    if ids.dtype not in ID_DTYPES:
        raise InputError(f"{name} must hold int64 (or int32) ids, got {ids.dtype}: convert them with .long()")
    check_on_device(name, ids, device)
    if ids.numel() == 0 or tracing() or ids.is_meta:  # a meta tensor has shapes only (minipt.summary runs on them)
        return
    low, high = torch.aminmax(ids)
    low, high = int(low), int(high)
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise InputError(f"{name} holds {bad}, outside the table of {size} entries (valid: 0..{size - 1})")


def check_mask_values(name: str, mask: torch.Tensor) -> None:
    """A padding mask holds 0 and 1 (or True and False) only, or an ``InputError`` names the first other value."""
    if mask.dtype == torch.bool or mask.numel() == 0 or tracing() or mask.is_meta:
        return
    other = mask[(mask != 0) & (mask != 1)]
    if other.numel():
        raise InputError(f"{name} must hold 0 and 1 (1 = a real token), found {other[0].item()!r}")


def fused_inside(model: torch.nn.Module) -> str | None:
    """Where a ``fuse()`` copy sits in ``model``, for a message: " (at 'encoder')", "" for the model itself; None without one."""
    name = next((name for name, module in model.named_modules() if getattr(module, "fused", False)), None)
    return None if name is None else (f" (at {name!r})" if name else "")


def is_quantized(model: torch.nn.Module) -> bool:
    """True if any weight is quantised (int8) and cannot be trained: a torchao tensor (``minipt.quantize``)
    or a module of torch.ao's older quantised kernels."""
    return any(type(p).__module__.startswith("torchao.") for p in model.parameters()) or any(
        type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized")) for m in model.modules()
    )


def parameter_device(module: torch.nn.Module) -> torch.device | None:
    """The device of ``module``'s first parameter: where it computes (None without one)."""
    return next((p.device for p in module.parameters()), None)


def floating_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s first floating-point parameter: the dtype it computes in (None without one)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


# -- public arguments: one set of checks, one wording --------------------------
# Each returns the value (normalised: a numpy integer becomes an int) or raises InputError
# naming the argument and the value. A bool is never a number here, a string never a path
# where a number is meant, and a list is never taken for a tensor.
def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _interval(low, high, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    return f"{'<' if high_open else '<='} {high}"


def check_bool(name: str, value: Any) -> bool:
    """``value`` is True or False (numpy's bool too); 0, 1, "yes" and None are refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InputError(f"{name} must be True or False, got {type(value).__name__} {_shown(value)}")


def _integers(low: int | None, high: int | None, noun: str) -> str:
    """What an integer in [low, high] is called in a message: "a positive integer", "a token id in [0, 96]"."""
    if noun == "an integer" and high is None and low in (0, 1):
        return "a positive integer" if low == 1 else "a non-negative integer"
    return noun if low is None and high is None else f"{noun} {_interval(low, high)}"


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None, optional: bool = False,
              noun: str = "an integer") -> int | None:
    """``value`` is an integer (Python's or numpy's, not a bool or a float) in [low, high]; None where ``optional``.
    ``noun`` says what the integer is where that helps ("a token id")."""
    if value is None and optional:
        return None
    or_none = " or None" if optional else ""
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be {_integers(None, None, noun)}{or_none}, got {type(value).__name__} {_shown(value)}")
    value = int(value)
    if low is not None and value < low:  # the bound it broke (a huge upper one would only distract)
        raise InputError(f"{name} must be {_integers(low, None, noun) if high is None or high > 2**31 else _integers(low, high, noun)}{or_none}, got {value}")
    if high is not None and value > high:
        raise InputError(f"{name} must be {_integers(low, high, noun)}{or_none}, got {value}")
    return value


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, optional: bool = False) -> float | None:
    """``value`` is a finite real number (not a bool) in the interval given by low/high (open ends where
    ``low_open``/``high_open``); None where ``optional``. NaN and infinities are refused."""
    if value is None and optional:
        return None
    or_none = " or None" if optional else ""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be a real number{or_none}, got {type(value).__name__} {_shown(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite{or_none}, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise InputError(f"{name} must be {_interval(low, high, low_open, high_open)}{or_none}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable) -> Any:
    """``value`` is one of ``choices`` (compared with ==, but a bool only ever equals a bool: 1 is not True)."""
    choices = list(choices)

    def same(choice) -> bool:
        try:
            return isinstance(choice, (bool, np.bool_)) == isinstance(value, (bool, np.bool_)) and bool(value == choice)
        except Exception:  # a value that cannot be compared (a tensor of several elements)
            return False

    if not any(same(choice) for choice in choices):
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {_shown(value)}")
    return value


def check_str(name: str, value: Any, *, empty: bool = False) -> str:
    """``value`` is a str (non-empty unless ``empty``)."""
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string, got {type(value).__name__} {_shown(value)}")
    if not value and not empty:
        raise InputError(f"{name} must not be empty")
    return value


def check_path(name: str, value: Any) -> Path:
    """``value`` names a file or folder: a str or ``os.PathLike`` (not bytes, not empty), as a ``Path``."""
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{name} must be a path (str or pathlib.Path), got {type(value).__name__} {_shown(value)}")
    try:
        path = Path(value)
    except TypeError as err:  # an os.PathLike whose __fspath__ gives bytes
        raise InputError(f"{name} must be a path (str or pathlib.Path), got {type(value).__name__} {_shown(value)}") from err
    if not str(value) or "\0" in str(path):
        raise InputError(f"{name} must name a file or folder, got {_shown(value)}")
    return path


_KINDS = {
    "integer": lambda dtype: not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool,
    "floating": lambda dtype: dtype.is_floating_point,
    "bool": lambda dtype: dtype == torch.bool,
}


def check_tensor(name: str, value: Any, *, kind: str | None = None, ndim: int | Iterable[int] | None = None) -> torch.Tensor:
    """``value`` is a torch.Tensor (a list or numpy array is refused with the call that converts it),
    of dtype ``kind`` ("integer", "floating", "bool") and with ``ndim`` dimensions (one count or several)."""
    if not isinstance(value, torch.Tensor):
        hint = f"; convert with torch.as_tensor(...)" if isinstance(value, (list, tuple, np.ndarray)) else ""
        raise InputError(f"{name} must be a torch.Tensor, got {type(value).__name__}{hint}")
    if kind is not None and not _KINDS[kind](value.dtype):
        raise InputError(f"{name} must hold {kind} values, got dtype {value.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.dim() not in allowed:
            wanted = " or ".join(map(str, allowed))
            raise InputError(f"{name} must have {wanted} dimensions, got shape {tuple(value.shape)}")
    return value


def check_dtype(dtype: Any, name: str = "dtype") -> torch.dtype | None:
    """A floating-point torch dtype (``torch.float16`` or ``"float16"``), or None (also for ``"auto"``: keep the file's)."""
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"{name} must be a floating-point torch dtype (torch.float32, torch.bfloat16, ...), got {_shown(dtype)}")
    return dtype


def check_device(device: Any, name: str = "device") -> torch.device | None:
    """A device this machine has (``"cpu"``, ``"cuda:0"``, a ``torch.device``), or None."""
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise InputError(f"{name} must be a torch device or its name ('cpu', 'cuda:0'), got {type(device).__name__} {_shown(device)}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InputError(f"{name} {device!r} is not a torch device: {err}") from None
    if device.type == "meta":
        raise InputError(f"{name} 'meta' holds no data; use 'cpu' or an accelerator")
    if device.type != "cpu":
        backend = getattr(torch, device.type, None)
        available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
        if not available:
            raise InputError(f"{name} {str(device)!r} is not available on this machine (torch.{device.type}.is_available() is False)")
        count = backend.device_count() if hasattr(backend, "device_count") else 1
        if device.index is not None and device.index >= count:
            raise InputError(f"{name} {str(device)!r} does not exist: this machine has {count} {device.type} device(s)")
    return device
