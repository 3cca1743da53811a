"""Looking inside a model: every intermediate value has a name; read or edit any of them.

    from minipt import probe

    probe.names(model)                          # every name, in the module tree's order
    with probe.capture(model, "layers.*.attn.probs", "layers.5.out") as seen:
        model(**batch)
    seen["layers.2.attn.probs"]                 # (B, heads, T, T) attention map of layer 2

    no_head_7 = lambda heads: heads.index_fill(1, torch.tensor([7]), 0.0)    # (B, heads, T, D)
    with probe.capture(model, edit={"layers.2.attn.heads": no_head_7}):
        ablated = model(**batch)                # layer 2 without its head 7

The names follow the modules' own names:

- ``<module>.out``: the output of every submodule (the first element when it
  returns a tuple, as attention and recurrent layers do; the ``logits`` of a
  ``ModelOutput``, else its first tensor that is not the ``loss``; the first
  field of another output dataclass): ``embeddings.out``,
  ``layers.3.attn.out``, ``layers.3.ffn_up.out``, ``layers.3.out``,
  ``stages.2.0.conv1.out``, ``blocks.4.out``. Dropout and identity modules have
  none. A module called twice in one forward (ResNet's shared ReLU) records
  each call: ``seen[name]`` is the last, ``seen.history(name)`` all of them.
- ``<module>.<tap>``: values computed inside a block, at the tap points it
  declares (``minipt.nn.tap``): an attention block's ``probs`` (B, heads, T, S)
  and ``heads`` (B, heads, T, head_dim, each head's output before the output
  projection); a recurrent layer's state at every step, ``lstm.layers.1.h``,
  ``lstm.layers.1.c`` (LSTM), ``encoder.layers.0.h`` (GRU), with
  ``layers.{k}.reverse.h`` for the backward direction of a bidirectional layer.
  A per-step name is recorded once per call of the layer as one tensor
  (T, B, H) in time order; an edit is applied at every step (an edit function
  with a ``step`` parameter is told which).

Values written out by the ``"math"`` backend only: attention probabilities
(the "torch" and "fused" backends run a fused kernel that never forms them) and
per-step recurrent states (the other backends run the whole sequence in one
call). Asking for them on another backend raises a ``ConfigError`` that names
them and the backend; ``model.set_backend("math")`` or
``minipt.nn.use_backend("math")`` makes them available.

Nothing is installed outside ``capture``: hooks are registered on the modules
asked for when the block opens and removed when it closes, and the tap points
are a pass-through while no capture is open.

A capture belongs to the thread that opened it: it records and edits the
model's runs in that thread only, so a server thread running the same model
while another thread ablates a head gets the model's ordinary output.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import threading
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterator, Union

import torch
from torch import nn

from .checks import check_bool, fused_inside
from .errors import ConfigError, InputError
from .nn import tap as tap_points
from .nn.backend import get_backend
from .nn.output import ModelOutput

Edit = Union[Callable[..., torch.Tensor], torch.Tensor]  # a function of the value, or the value to put in its place

# Modules whose output is not a value of their own: their input, unchanged or randomly zeroed.
_NO_OUTPUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.ModuleList, nn.ModuleDict)


# -- names ---------------------------------------------------------------------------
def _points(model: nn.Module) -> Iterator[tuple[str, nn.Module, str | None, str | None]]:
    """(name, module, tap or None for the module's output, the one backend that computes it or None), in tree order."""
    seen: set[int] = set()

    def walk(module: nn.Module, prefix: str):
        if id(module) in seen:
            return
        seen.add(id(module))
        for child_name, child in module.named_children():
            yield from walk(child, f"{prefix}.{child_name}" if prefix else child_name)
        for tap, backend in getattr(module, "taps", {}).items():
            yield (f"{prefix}.{tap}" if prefix else tap), module, tap, backend
        if prefix and not isinstance(module, _NO_OUTPUT):
            yield f"{prefix}.out", module, None, None

    yield from walk(model, "")


def names(model: nn.Module, *inputs: Any, **kw_inputs: Any) -> list[str]:
    """Every name ``capture`` knows in ``model``, in the order of the module tree.

    Given an input (``names(model, **batch)``), the model runs once on it and the
    names come in the order their values were computed, leaving out those that
    did not occur (a module the forward does not call, a value this backend does
    not compute)."""
    if not inputs and not kw_inputs:
        return [name for name, *_ in _points(model)]
    with capture(model, *_available(model), detach=True) as seen, torch.no_grad():
        model(*inputs, **kw_inputs)
    return seen.order()


def _available(model: nn.Module) -> list[str]:
    return [name for name, module, tap, backend in _points(model) if backend is None or get_backend(module.backend) == backend]


# -- capture -------------------------------------------------------------------------
class capture(Mapping):
    """``with capture(model, *patterns, edit={pattern: edit}, detach=True) as seen:`` records the named values.

    ``patterns`` are names or glob patterns (``"layers.*.attn.probs"``, ``"*"``).
    ``edit`` maps names or patterns to a function of the value (returning a tensor
    of the same shape) or to a tensor that replaces it; an edited value flows on
    through the model, and is what is recorded. ``detach`` (default) records
    copies of the values without their autograd history; ``detach=False``
    records the tensors with their history and lets the model go on with a
    copy of each (an in-place op after the point, a ReLU, leaves the record as
    it was computed), for gradients with respect to an intermediate (``torch.autograd.grad(out.sum(), seen[name])``;
    per-step recurrent states are stacked, so gradients reach them only
    through their history). Inside the block, ``seen`` maps each recorded name
    to its latest value. A glob pattern (``"*"``) takes the values the modules'
    backends compute; a name (or a pattern matching nothing else) that only the
    ``"math"`` backend writes out is a ``ConfigError`` on another backend.
    """

    def __init__(self, model: nn.Module, *patterns: str, edit: dict[str, Edit] | None = None, detach: bool = True):
        if not isinstance(model, nn.Module):
            raise InputError(f"capture looks inside a torch module, got {type(model).__name__}")
        where = fused_inside(model)
        if where is not None:  # its points hold other values under the same names: refused rather than read as the model's
            raise ConfigError(f"{type(model).__name__} is or holds a fuse() copy{where}: fuse() adds residuals and activations inside the "
                              "matmuls and folds BatchNorm into convolutions, so its points would hold other values under the model's "
                              "names; capture the model itself (model.set_backend('fused') runs the fast kernels with every point kept)")
        self.model = model
        self.detach = check_bool("detach", detach)
        if edit is not None and not isinstance(edit, Mapping):
            raise InputError(f"edit must map names or patterns to edits ({{'layers.0.out': fn}}), got {type(edit).__name__}")
        points = {name: (module, tap, backend) for name, module, tap, backend in _points(model)}
        self._wanted: set[str] = set()
        for pattern in patterns:  # a glob takes what the backends compute here, where it matches any such value
            found = _match((pattern,), points, "capture")
            here = {name for name in found if points[name][2] is None or get_backend(points[name][0].backend) == points[name][2]}
            self._wanted |= here if here and pattern not in points else found
        self._edits: dict[str, Edit] = {}
        for pattern, change in (edit or {}).items():
            if not (callable(change) or isinstance(change, torch.Tensor)):
                raise InputError(f"edit {pattern!r}: expected a function of the value or a tensor to put in its place, got {type(change).__name__}")
            for name in _match((pattern,), points, "edit"):
                self._edits[name] = change
        chosen = self._wanted | set(self._edits)
        _check_backends(chosen, points)
        self._hooked = {name: points[name][0] for name in chosen if points[name][1] is None}  # module outputs
        self._sites = {}  # module -> its name prefix, for the tap points asked for
        for name in chosen:
            module, tap, _ = points[name]
            if tap is not None:
                self._sites[module] = name[: len(name) - len(tap)].rstrip(".")
        self._takes_step = {name: _accepts_step(change) for name, change in self._edits.items()}
        self._handles: list = []
        self._values: dict[str, list[torch.Tensor]] = {}
        self._steps: dict[str, list] = {}  # per-step names: the steps of the layer call in progress
        self._edited: set[str] = set()
        self._thread: int | None = None  # the thread that opened the block: the only one whose runs it sees

    # -- opening and closing -----------------------------------------------------
    def __enter__(self) -> "capture":
        if self._thread is not None:
            raise InputError("this capture is already open; open a new capture(...) for another block")
        self._thread = threading.get_ident()
        self._values, self._steps, self._edited = {}, {}, set()  # a capture opened again records this block's values only
        for name, module in self._hooked.items():
            self._handles.append(module.register_forward_hook(self._module_hook(name), prepend=True))  # before outer captures' hooks
        tap_points._listeners.append(self._tapped)
        return self

    def __exit__(self, kind, error, trace) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        tap_points._listeners.remove(self._tapped)
        self._thread = None
        missed = sorted(set(self._edits) - self._edited)
        if kind is None and missed:
            raise InputError(f"the edits of {', '.join(missed)} never applied: the model computed no such value inside the block"
                             " (was the model run? on the 'fused' backend a Linear followed by GELU is not called as a module)")

    # -- recording and editing ------------------------------------------------------
    def _module_hook(self, name: str):
        def hook(module, args, output):
            if not _same_thread(self._thread):  # another thread's run of the same model
                return None
            value, rebuild = _main_value(output)
            if not isinstance(value, torch.Tensor):
                return None
            new = self._apply(name, value, None)
            return None if new is value else rebuild(new)

        return hook

    def _tapped(self, site, tap: str, value: torch.Tensor, step) -> torch.Tensor:
        prefix = self._sites.get(site)
        if prefix is None or not _same_thread(self._thread):
            return value
        name = f"{prefix}.{tap}" if prefix else tap
        if name not in self._wanted and name not in self._edits:
            return value
        return self._apply(name, value, step)

    def _apply(self, name: str, value: torch.Tensor, step) -> torch.Tensor:
        if name in self._edits:
            value = self._edit(name, value, step)
        if name in self._wanted:
            if step is None:  # a copy, or (detach=False) the tensor itself, in the graph that reaches the output
                self._values.setdefault(name, []).append(value.detach().clone() if self.detach else value)
            else:
                self._record_step(name, value.detach() if self.detach else value, *step)
            if not self.detach:  # the model goes on with a copy: an in-place op after it (a ReLU) leaves the record as it was
                return value.clone()
        return value

    def _edit(self, name: str, value: torch.Tensor, step) -> torch.Tensor:
        change = self._edits[name]
        if isinstance(change, torch.Tensor):
            new = change.to(device=value.device, dtype=value.dtype, copy=True)  # an in-place op after it leaves the caller's as it is
        elif step is not None and self._takes_step[name]:
            new = change(value, step=step[0])
        else:
            new = change(value)
        if not isinstance(new, torch.Tensor) or new.shape != value.shape or new.dtype != value.dtype or new.device != value.device:
            got = f"{tuple(new.shape)} {new.dtype} on {new.device}" if isinstance(new, torch.Tensor) else type(new).__name__
            raise InputError(f"the edit of {name} must give a tensor of the value's shape, dtype and device "
                             f"{tuple(value.shape)} {value.dtype} on {value.device}, got {got}")
        self._edited.add(name)
        return new

    def _record_step(self, name: str, value: torch.Tensor, t: int, T: int) -> None:
        steps = self._steps.setdefault(name, [None] * T)
        steps[t] = value
        if all(s is not None for s in steps):  # the layer has run every step: one value (T, B, H) in time order
            self._values.setdefault(name, []).append(torch.stack(steps))
            del self._steps[name]

    # -- reading -------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self.history(name)[-1]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def get(self, name: str, default=None):
        """The latest value recorded under ``name``, else ``default`` (a Mapping's get)."""
        return self._values[name][-1] if name in self._values else default

    def history(self, name: str) -> list[torch.Tensor]:
        """Every value recorded under ``name``, in the order computed (one per module call or layer call)."""
        if name not in self._values:
            if name in self._wanted:
                raise InputError(f"{name} was asked for but never computed inside the capture (was the model run on it?)")
            raise InputError(f"{name} was not asked for; recorded: {', '.join(self._values) or 'nothing'}")
        return self._values[name]

    def order(self) -> list[str]:
        """The recorded names in the order they were first computed."""
        return list(self._values)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<capture of {len(self._wanted)} names, {len(self._values)} recorded>"


def _same_thread(opened_by: int | None) -> bool:
    """Whether this run belongs to the capture opened on thread ``opened_by``. While torch.compile traces the model
    (in the thread that runs it) the answer is yes: dynamo cannot trace the thread's id."""
    return torch.compiler.is_compiling() or threading.get_ident() == opened_by


def _main_value(output) -> tuple[Any, Callable[[torch.Tensor], Any]]:
    """A module's value and how to put a new one in its place: the output itself, the first element
    of a tuple (attention, recurrent layers), the logits of a ``ModelOutput`` (else its first tensor
    that is not the loss), or the first field of another output dataclass (BertOutput)."""
    if isinstance(output, tuple) and output:
        return output[0], lambda new: (new, *output[1:])
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        names = [field.name for field in dataclasses.fields(output)]
        if isinstance(output, ModelOutput):
            tensors = [name for name in names if name != "loss" and isinstance(getattr(output, name), torch.Tensor)]
            names = ["logits"] if "logits" in tensors else tensors or names
        main = names[0]
        return getattr(output, main), lambda new: dataclasses.replace(output, **{main: new})
    return output, lambda new: new


def _match(patterns, points: dict, what: str) -> set[str]:
    chosen: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise InputError(f"{what}: names and patterns are strings, got {type(pattern).__name__}")
        found = [name for name in points if fnmatchcase(name, pattern)]
        if not found:
            close = difflib.get_close_matches(pattern, list(points), n=3, cutoff=0.6)
            hint = f"; close: {', '.join(close)}" if close else "; minipt.probe.names(model) lists them"
            raise InputError(f"{what}: {pattern!r} names nothing in this model{hint}")
        chosen.update(found)
    return chosen


def _check_backends(chosen: set[str], points: dict) -> None:
    """Names that only the math backend computes, asked for on modules that run another: one ConfigError naming them all."""
    missing: dict[str, list[str]] = {}
    for name in sorted(chosen, key=list(points).index):
        module, tap, needs = points[name]
        if needs is not None and get_backend(module.backend) != needs:
            missing.setdefault(get_backend(module.backend), []).append(name)
    if missing:
        parts = [f"{', '.join(found[:6])}{f' (and {len(found) - 6} more)' if len(found) > 6 else ''} on the {backend!r} backend"
                 for backend, found in missing.items()]
        raise ConfigError(
            f"these values exist only on the 'math' backend, which writes them out: {'; '.join(parts)} "
            "(attention probabilities and per-step recurrent states are inside fused kernels there); "
            "run model.set_backend('math') or use `with minipt.nn.use_backend('math'):`"
        )


def _accepts_step(change: Edit) -> bool:
    if not callable(change):
        return False
    try:
        return "step" in inspect.signature(change).parameters
    except (TypeError, ValueError):
        return False
