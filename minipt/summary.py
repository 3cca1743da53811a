"""A model at a glance: every module's output shape, parameter count and forward FLOPs for one input.

    >>> from minipt.summary import summary
    >>> print(summary(model, input_size=(1, 128), depth=2))      # or summary(model, ids), or summary(model)
    module                         output shape         params  FLOPs (2xMACs)
    BertModel                      [1, 128, 384]    22,713,216           2.87G
      embeddings (BertEmbeddings)  [1, 128, 384]    11,918,592               0
      layers (ModuleList)          --               10,646,784           2.87G
      ...

The inputs are given as tensors (``example_inputs``) or, as torchinfo takes
them, as shapes (``input_size``, batch dimension included): token ids for
minipt's text models, random floats of the model's dtype for any other module.
A minipt model given neither runs on its family's default size.

Modules are listed in the order the data reaches them (the order of their
first call), nested under their parent. A row's parameters and FLOPs include
those of the modules inside it; a weight shared by two modules (a tied
decoder) shows in both rows and is counted once in the total.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: two per
multiply-add of the matrix multiplies, convolutions and attention; elementwise
work (norms, activations, softmax, pooling) counts nothing. So a FLOP count
here is twice a count of multiply-accumulates (MACs, torchinfo's "Mult-Adds"),
and the table says so. The counter works
on meta tensors, so a model built on the meta device (``minipt inspect``
builds it from a checkpoint's header) is summarised without allocating or
reading a single weight.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .checks import check_int, floating_dtype, fused_inside, is_quantized
from .errors import ConfigError, InputError, MiniptError


FLOPS_COLUMN = "FLOPs (2xMACs)"  # not torchinfo's "Mult-Adds", which counts each multiply-add once


@dataclass
class Row:
    name: str  # qualified name inside the model ("" for the model itself)
    kind: str  # the module's class
    depth: int  # 0 for the model, 1 for its children, ...
    output_shape: tuple[int, ...] | None  # of the first tensor it returned the first time it ran; None if never run
    params: int  # its parameters, with those of the modules inside it (a shared tensor once)
    flops: int  # forward FLOPs of all its calls, with those of the modules inside it (2 per multiply-add)
    calls: int  # how often it ran in one forward pass (0: never, or a container such as ModuleList)

    @property
    def label(self) -> str:
        return self.kind if self.depth == 0 else f"{self.name.rsplit('.', 1)[-1]} ({self.kind})"


@dataclass
class Summary:
    rows: list[Row]  # the model first, then every module in data-flow order
    inputs: dict[str, tuple[int, ...]]  # name -> shape of the tensors the model was run on
    total_params: int  # distinct parameters: a tied weight once
    trainable_params: int
    total_flops: int
    tied: list[tuple[str, ...]]  # names under which one parameter tensor appears
    device: str
    depth: int | None = 3  # what str() shows

    def table(self, depth: int | None = -1) -> str:
        """The rows down to ``depth`` (None: all; by default the summary's own) as a text table, with totals under it."""
        depth = self.depth if depth == -1 else check_int("depth", depth, low=0, optional=True)
        shown = [row for row in self.rows if depth is None or row.depth <= depth]
        labels = ["  " * row.depth + row.label for row in shown]
        shapes = [_shape_text(row) for row in shown]
        width = max(len("module"), *map(len, labels))
        shape_width = max(len("output shape"), *map(len, shapes))
        lines = [f"{'module':<{width}}  {'output shape':<{shape_width}}  {'params':>12}  {FLOPS_COLUMN:>{len(FLOPS_COLUMN)}}"]
        for row, label, shape in zip(shown, labels, shapes):
            lines.append(f"{label:<{width}}  {shape:<{shape_width}}  {row.params:>12,}  {_si(row.flops):>{len(FLOPS_COLUMN)}}")
        inputs = ", ".join(f"{name} {tuple(shape)}" for name, shape in self.inputs.items())
        lines += [
            "",
            f"input: {inputs} on {self.device}",
            f"parameters: {self.total_params:,} ({self.trainable_params:,} trainable)",
            f"forward FLOPs: {self.total_flops:,} ({_si(self.total_flops)}; 2 per multiply-add of matmuls, convolutions and attention: "
            f"{self.total_flops // 2:,} MACs)",
        ]
        lines += [f"tied (counted once): {' = '.join(names)}" for names in self.tied]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def summary(model: nn.Module, example_inputs: Any = None, *, input_size: Any = None, depth: int | None = 3) -> Summary:
    """Run ``model`` once and return every module's output shape, parameters and FLOPs.

    The input is either ``example_inputs`` (a tensor, a tuple of positional
    inputs or a dict of keyword inputs) or ``input_size``, torchinfo's
    argument: one shape with the batch dimension, such as ``(1, 3, 224, 224)``
    or ``"1x128"``, or a list of shapes, one per positional input. Shapes
    become token ids for minipt's text models (``example_inputs``) and random
    floats of the model's dtype otherwise. A minipt model given neither runs
    on its family's default size (its declaration's ``reads``).

    The model runs in eval mode under ``torch.no_grad()`` on the device of its
    parameters (inputs are moved there); a model on the meta device runs on
    shapes only. ``depth`` only sets how deep ``str()`` shows the tree (None: all of it).
    """
    from torch.utils.flop_counter import FlopCounterMode

    if not isinstance(model, nn.Module):
        raise InputError(f"summary expects a torch.nn.Module, got {type(model).__name__}")
    _refuse_fused(model, "summary")
    if example_inputs is not None and input_size is not None:
        raise InputError("summary takes example_inputs or input_size, not both")
    depth = check_int("depth", depth, low=0, optional=True)
    if example_inputs is None:
        example_inputs = _inputs_of_size(model, input_size)
    args, kwargs = _as_call(example_inputs, _device_of(model))
    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(module, name)  # a module under two names goes by the first
    first_call: dict[str, int] = {}
    calls: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...] | None] = {}
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    # Each FLOP goes to every running module and every module that holds one of them in the tree: a module a parent
    # calls outside its own parent's call (T5's decoder stack computes each cross-attention's keys and values once)
    # counts in the rows above it in the table, not only in the calls that ran it.
    running: list[str] = []
    flops: dict[str, int] = {}
    counted = [0]

    def settle() -> None:  # the FLOPs since the last module boundary, to the modules running then
        total = counter.get_total_flops()
        if total > counted[0]:
            holders = {".".join(parts[:i]) for parts in (name.split(".") if name else [] for name in running) for i in range(len(parts) + 1)}
            for name in holders:
                flops[name] = flops.get(name, 0) + total - counted[0]
            counted[0] = total

    def before(module, _inputs):
        settle()
        name = names[module]
        first_call.setdefault(name, len(first_call))
        calls[name] = calls.get(name, 0) + 1
        running.append(name)

    def after(module, _inputs, output):
        settle()
        running.pop()
        shapes.setdefault(names[module], _first_shape(output))

    handles = []
    for module in names:
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after, always_call=True))
    try:
        _run(model, args, kwargs, counter)
    finally:
        for handle in handles:
            handle.remove()
    rows = _rows(model, first_call, calls, shapes, flops)
    unique = {id(p): p for p in model.parameters()}.values()
    return Summary(
        rows=rows,
        inputs=_input_shapes(model, args, kwargs),
        total_params=sum(p.numel() for p in unique),
        trainable_params=sum(p.numel() for p in unique if p.requires_grad),
        total_flops=counter.get_total_flops(),
        tied=_tied(model),
        device=str(_device_of(model)),
        depth=depth,
    )


def _rows(model, first_call, calls, shapes, flops) -> list[Row]:
    """The module tree, each module's children sorted by when data first reached them. A module never called itself
    (a ModuleList, a stage whose blocks its parent calls one by one) counts what the modules inside it count."""

    def order(name: str, _module: nn.Module) -> float:  # when data first reached it or a module inside it
        return min((i for n, i in first_call.items() if n == name or n.startswith(name + ".")), default=float("inf"))

    def visit(name: str, module: nn.Module, depth: int) -> tuple[list[Row], int]:
        children = [(f"{name}.{child}" if name else child, sub) for child, sub in module.named_children()]
        below, inside = [], 0
        for child, sub in sorted(children, key=lambda c: order(*c)):  # stable: never-called modules keep their place at the end
            rows, total = visit(child, sub, depth + 1)
            below += rows
            inside += total
        own = flops.get(name, inside)
        row = Row(name, type(module).__name__, depth, shapes.get(name), sum(p.numel() for p in module.parameters()), own, calls.get(name, 0))
        return [row, *below], own

    return visit("", model, 0)[0]


def _tied(model: nn.Module) -> list[tuple[str, ...]]:
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    return [tuple(group) for group in names.values() if len(group) > 1]


@contextmanager
def _countable(model: nn.Module) -> Iterator[None]:
    """Run minipt's recurrent layers on their written-out path while counting.

    Their fast path hands the matrix multiplies to oneDNN ops that
    FlopCounterMode has no formula for (it would count 0); the written-out
    path does the same multiplies as ``F.linear`` calls, which it counts.
    """
    from .nn import GRU, LSTM, RNN

    recurrent = [m for m in model.modules() if isinstance(m, (RNN, LSTM, GRU))]
    saved = [m.backend for m in recurrent]
    for m in recurrent:
        m.backend = "math"
    try:
        yield
    finally:
        for m, backend in zip(recurrent, saved):
            m.backend = backend


def _cpu_flash_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)  # the same two matrix multiplies as every other attention kernel


# torch's CPU attention kernel has no formula in FlopCounterMode (it would count 0);
# on meta tensors attention decomposes into matmuls and is counted anyway.
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}


def count_flops(model: nn.Module, example_inputs: Any) -> int:
    """Forward FLOPs (2 per multiply-add) of one call in eval mode, counted on the whole model (``summary``'s total without its rows)."""
    from torch.utils.flop_counter import FlopCounterMode

    _refuse_fused(model, "count_flops")
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    _run(model, *_as_call(example_inputs, _device_of(model)), counter)
    return counter.get_total_flops()


def _refuse_fused(model: nn.Module, what: str) -> None:
    """A ``fuse()`` copy's packed weights are no parameters and its oneDNN products no ops FlopCounterMode counts (0
    FLOPs; the first call also counts the kernel choice's timing runs): its counts would be wrong, so it is refused, as
    is an int8 model (``quantize_int8``), whose torchao products the counter does not see either."""
    where = fused_inside(model)
    if where is not None:
        raise ConfigError(f"{what} counts a model's parameters and FLOPs; {type(model).__name__} is or holds a fuse() copy{where}, whose packed "
                          "weights are no parameters and whose oneDNN products torch's FLOP counter does not see: count the model before fuse()")
    if is_quantized(model):
        raise ConfigError(f"{what} counts a model's parameters and FLOPs; {type(model).__name__} holds int8 weights, whose products (torchao's) "
                          "torch's FLOP counter does not see: count the float model before quantize_int8 (int8 does the same multiply-adds)")


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; afterwards every module is back in its own mode (a model in training
    with frozen stages held in eval, ``minipt.transfer``, keeps them so)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _run(model: nn.Module, args: tuple, kwargs: dict, counter) -> None:
    """One forward pass as for inference (eval mode: no dropout, BatchNorm's running statistics), under ``counter``."""
    try:
        with evaluating(model), torch.no_grad(), _countable(model), counter:
            model(*args, **kwargs)
    except MiniptError:
        raise
    except Exception as err:  # a module that does not take these inputs: name them beside what it said
        inputs = ", ".join(f"{name} {tuple(shape)}" for name, shape in _input_shapes(model, args, kwargs).items()) or "no tensors"
        raise InputError(f"{type(model).__name__} cannot run on the inputs given ({inputs}): {type(err).__name__}: {str(err).splitlines()[0]}") from err


# -- inputs ----------------------------------------------------------------------
def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _as_call(example_inputs: Any, device: torch.device) -> tuple[tuple, dict]:
    move = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x  # noqa: E731
    if isinstance(example_inputs, dict):
        return (), {k: move(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(move(x) for x in example_inputs), {}
    return (move(example_inputs),), {}


def _input_shapes(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, tuple[int, ...]]:
    """Each input tensor's shape under the name ``forward`` gives it."""
    import inspect

    try:
        names = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        names = []
    named = {names[i] if i < len(names) else f"input {i}": a for i, a in enumerate(args)}
    return {k: tuple(v.shape) for k, v in {**named, **kwargs}.items() if isinstance(v, torch.Tensor)}


def _first_shape(output: Any) -> tuple[int, ...] | None:
    """The shape of the first tensor in a module's output (a tensor, tuple, dict or dataclass of them)."""
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        output = [getattr(output, f.name) for f in dataclasses.fields(output)]
    elif isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            shape = _first_shape(item)
            if shape is not None:
                return shape
    return None


def _shape_text(row: Row) -> str:
    if row.output_shape is None:
        return "--" if row.calls == 0 else "(no tensor)"
    shape = "[" + ", ".join(map(str, row.output_shape)) + "]"
    return shape if row.calls <= 1 else f"{shape} x{row.calls}"


def _si(value: int) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def parse_size(text: str) -> tuple[int, ...]:
    """``"1x3x224x224"`` -> (1, 3, 224, 224)."""
    if not isinstance(text, str) or not re.fullmatch(r"\s*\d+(\s*[xX,]\s*\d+)*\s*", text):
        raise InputError(f"input size {text!r}: write it as positive integers joined by 'x', such as 1x128 or 1x3x224x224")
    size = tuple(int(part) for part in re.split(r"\s*[xX,]\s*", text.strip()))
    if min(size) < 1:
        raise InputError(f"input size {text!r}: every dimension must be at least 1")
    return size


def _reads(model: nn.Module):
    """What ``model``'s family reads (``minipt.registry.Reads``), or None for a module that is not a minipt model."""
    if not type(model).__module__.startswith("minipt.models."):
        return None  # a plain torch module: no need to import every family to know it is none of them
    from .registry import family_of

    family = family_of(model)
    return family.reads if family is not None else None


def example_inputs(model: nn.Module, size: str | tuple[int, ...] | None = None) -> Any:
    """Inputs of ``size`` for one of minipt's models, on its device: zeros as ids, zeros as pixels. The ids
    end with the end-of-text token where the model's text config has one (CLIP's text tower pools there).

    ``size`` is ``"BxT"`` for token models and ``"BxCxHxW"`` for image models;
    None gives the family's default (its declaration's ``reads``, ``minipt.registry.Reads``).
    """
    reads = _reads(model)
    if reads is None:
        raise InputError(f"no default inputs for {type(model).__name__}; call summary(model, inputs) with your own")
    default = reads.default_size(model)
    dims = len(_shapes(default)[0])
    shapes = _shapes(default if size is None else size)
    if len(shapes) != 1:
        raise InputError(f"{type(model).__name__} reads {reads.what}: one input size such as {default}, not {len(shapes)}")
    shape = shapes[0]
    if len(shape) != dims:
        raise InputError(f"{type(model).__name__} reads {reads.what}: an input size of {dims} dimensions such as {default}, not {'x'.join(map(str, shape))}")
    device = _device_of(model)
    if dims == 4:
        return _allocate(torch.zeros, shape, device=device)
    ids = _allocate(torch.zeros, shape, dtype=torch.long, device=device)
    text = getattr(getattr(model, "config", None), "text_config", getattr(model, "config", None))
    eos, vocab = getattr(text, "eos_token_id", None), getattr(text, "vocab_size", 0)
    if isinstance(eos, int) and 0 <= eos < vocab and ids.shape[-1]:
        ids[..., -1] = eos
    return ids if reads.count == 1 else tuple(ids.clone() for _ in range(reads.count))


def _inputs_of_size(model: nn.Module, input_size: Any = None) -> Any:
    """Inputs for ``model`` from torchinfo-style shapes: one shape (batch included) or a list of shapes, one per positional input.

    A minipt model reads what its family reads (``example_inputs``: token ids
    for text models); any other module gets random floats of its parameters'
    dtype. ``None`` is the family's default size.
    """
    reads = _reads(model)
    if input_size is None:
        if reads is None:
            raise InputError(f"no default inputs for {type(model).__name__}; pass example_inputs (tensors) or input_size (shapes) to summary")
        return _with_inputs_beside(model, reads, example_inputs(model))
    shapes = _shapes(input_size)
    if reads is not None:
        if len(shapes) == 1:
            return _with_inputs_beside(model, reads, example_inputs(model, shapes[0]))
        if len(shapes) == reads.count:  # one size per input (G2P: the letters, and the phonemes read so far)
            return tuple(example_inputs(model, shape)[0] for shape in shapes)
        raise InputError(f"{type(model).__name__} reads {reads.what}: one input size such as {reads.default_size(model)}, not {len(shapes)}")
    device, dtype = _device_of(model), _float_dtype_of(model)
    inputs = tuple(_allocate(torch.randn, shape, device=device, dtype=dtype) for shape in shapes)
    return inputs[0] if len(inputs) == 1 else inputs


def _with_inputs_beside(model: nn.Module, reads, inputs: Any) -> Any:
    """``inputs`` (one tensor) with what the family's ``reads.beside`` adds as keywords (CLIPModel's images beside its
    captions), as the keyword inputs of one call; ``inputs`` alone where it adds nothing."""
    import inspect

    beside = reads.beside(model, inputs.shape[0]) if reads.beside is not None and isinstance(inputs, torch.Tensor) else {}
    if not beside:
        return inputs
    first = next(iter(inspect.signature(model.forward).parameters))
    return {first: inputs, **beside}


def _allocate(make, shape: tuple[int, ...], **options) -> torch.Tensor:
    """``make(shape, **options)``, or an InputError naming a size this machine cannot hold."""
    try:
        return make(shape, **options)
    except (RuntimeError, MemoryError, TypeError) as err:  # the CPU allocator, a size overflow, a dimension over 64 bits
        raise InputError(f"input size {'x'.join(map(str, shape))} cannot be allocated here: {str(err).splitlines()[0]}") from None


def _shapes(input_size: Any) -> list[tuple[int, ...]]:
    """``(1, 3, 224, 224)``, ``"1x128"``, ``torch.Size`` or a list of those -> a list of shapes."""
    def one(size) -> tuple[int, ...] | None:
        if isinstance(size, str):
            return parse_size(size)
        if isinstance(size, (tuple, list, torch.Size)) and size and all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in size):
            if min(size) < 1:
                raise InputError(f"input_size {tuple(size)}: every dimension must be at least 1")
            return tuple(int(d) for d in size)
        return None

    single = one(input_size)
    if single is not None:
        return [single]
    if isinstance(input_size, (tuple, list)) and input_size:
        shapes = [one(size) for size in input_size]
        if all(shape is not None for shape in shapes):
            return shapes
    raise InputError(
        f"input_size {input_size!r}: give one shape with the batch dimension, such as (1, 3, 224, 224) or \"1x128\", "
        "or a list of such shapes, one per input"
    )


def _float_dtype_of(model: nn.Module) -> torch.dtype:
    return floating_dtype(model) or torch.get_default_dtype()
