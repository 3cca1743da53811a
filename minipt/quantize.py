"""Smaller models for CPU inference: dynamic int8 quantisation, and the size of a model on disk.

``quantize_int8(model)`` returns a copy whose ``nn.Linear`` layers (and
LSTM layers) keep int8 weights and quantise their input on the fly
(per-tensor, "dynamic"): about 4x smaller Linear weights and faster matrix
products on x86 CPUs, at a small cost in accuracy (measured in the examples).

It uses ``torch.ao.quantization.quantize_dynamic``, which torch 2.13 still
ships (CPU kernels: fbgemm/x86 and qnnpack) but marks deprecated in favour of
the separate ``torchao`` package. minipt keeps to torch alone, so this is the
one place that calls it and silences its deprecation warnings; when torch
drops it, this module is where torchao's ``quantize_`` would go.

minipt's Linear and LSTM are state-dict drop-ins for ``torch.nn.Linear`` and
``torch.nn.LSTM``; to quantise them, each one is swapped for the torch.nn
module holding the same tensors, which torch's dynamic int8 module then replaces.

A quantised model is for inference only: ``minipt.transfer`` and
``minipt.train.fit`` refuse to train it.
"""

from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import nn

from .errors import InputError


def quantize_int8(model: nn.Module, *, lstm: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` with int8 Linear (and, with ``lstm``, LSTM) weights; the original is untouched."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise InputError("dynamic int8 quantisation runs on the CPU: move the model there first (model.cpu())")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise InputError("dynamic int8 quantisation starts from float32 weights: call model.float() first")
    quantized = copy.deepcopy(model).eval()
    kinds = {nn.Linear}
    _swap_linears(quantized)
    if lstm:
        _swap_lstms(quantized)
        kinds.add(nn.LSTM)
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices (see the module docstring)
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning, FutureWarning))
        return torch.ao.quantization.quantize_dynamic(quantized, kinds, dtype=torch.qint8, inplace=True)


def _swap_lstms(model: nn.Module) -> None:
    from .nn import LSTM

    for name, module in list(model.named_modules()):
        if isinstance(module, LSTM):
            twin = nn.LSTM(
                module.input_size, module.hidden_size, module.num_layers, module.bias, module.batch_first,
                module.dropout, module.bidirectional, module.proj_size,
            )
            twin.load_state_dict(module.state_dict())  # same names and layout: a drop-in
            _replace(model, name, twin.eval())


def _swap_linears(model: nn.Module) -> None:
    from .nn import Linear

    for name, module in list(model.named_modules()):
        if isinstance(module, Linear):
            twin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            twin.weight, twin.bias = module.weight, module.bias  # the same tensors (a tied weight stays tied)
            _replace(model, name, twin)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where the submodule called ``name`` is."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as ``torch.save`` writes it (int8 packed weights included)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), buffer)
    return buffer.tell()
