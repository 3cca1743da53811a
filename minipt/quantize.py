"""Smaller models for CPU inference: int8 weights through torchao, and the size of a model on disk.

``quantize_int8(model)`` returns an eval-mode copy in which

- every ``Linear`` keeps int8 weights (one scale per output row) and quantises
  its input on the fly (one scale per token): torchao's
  ``Int8DynamicActivationInt8WeightConfig``, so the matrix product itself runs
  in int8;
  On an x86 CPU without VNNI (AVX2 or AVX-512 before Cascade Lake; most AMD
  EPYC before Zen 4), whose int8 products add pairs in 16 bits and saturate,
  the Linear layers keep int8 weights and turn them back into float32 for
  ``F.linear`` instead (torchao's ``Int8WeightOnlyConfig``): the same 4x
  smaller weights and accuracy, at float32's speed (``minipt info`` says which);
- every ``LSTM`` (with ``lstm=True``) keeps its weight matrices in int8 (one
  scale per row: torchao's ``Int8WeightOnlyConfig`` applied to the
  parameters) and turns them back into float32 for each call, so that the
  layer's usual kernel runs on them. torchao has no recurrent int8 kernel:
  this gives the 4x smaller weights at float32's speed, where running the
  int8 weights step by step through ``F.linear`` took three times float32's.

Embeddings and norms stay float32. The Linear layers' outputs move by about 1%
of their range; the measured costs on real tasks are in docs/transfer.md and
docs/models.md.

torchao is an optional extra (``pip install "minipt[quantize]"``), imported
only here and only when ``quantize_int8`` runs; without it the call raises
``MissingDependencyError`` saying how to install it. It replaces
``torch.ao.quantization.quantize_dynamic``, which torch 2.13 marks deprecated
in favour of torchao.

minipt's Linear is a state-dict drop-in for ``torch.nn.Linear`` whose matrix
multiplies follow minipt's backend (oneDNN on ``"fused"``); torchao's int8
weights need torch's own ``F.linear``, so each one is swapped for the
torch.nn module holding the same tensors before torchao quantises it.

A quantised model is for inference only: ``minipt.transfer`` and
``minipt.train.fit`` refuse to train it (``minipt.transfer.is_quantized``).
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from .checks import check_bool, fused_inside
from .errors import InputError, MissingDependencyError
from .ops import cpu
from .transfer import is_quantized

INSTALL = 'pip install "minipt[quantize]" -c .ci/constraints.txt (or pip install torchao)'


def quantize_int8(model: nn.Module, *, lstm: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` with int8 Linear (and, with ``lstm``, LSTM) weights; the original is untouched."""
    if not isinstance(model, nn.Module):
        raise InputError(f"quantize_int8 takes a torch.nn.Module, got {type(model).__name__}")
    lstm = check_bool("lstm", lstm)
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise InputError("int8 quantisation is measured and tested on the CPU: move the model there first (model.cpu())")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise InputError("int8 quantisation starts from float32 weights: call model.float() first")
    if is_quantized(model):
        raise InputError(f"{type(model).__name__} is already quantised to int8: quantise the float model")
    fused = fused_inside(model)
    if fused is not None:  # its packed weights are no Linear modules: nothing would be quantised
        raise InputError(f"{type(model).__name__} is or holds a fuse() copy{fused}, whose packed weights int8 quantisation cannot reach: "
                         "quantise the model itself (fuse() or quantise, not both)")
    from .nn import LSTM, Linear

    kinds = (Linear, nn.Linear, LSTM) if lstm else (Linear, nn.Linear)
    if not any(isinstance(module, kinds) for module in model.modules()):
        raise InputError(f"{type(model).__name__} has no {'Linear or LSTM' if lstm else 'Linear'} layer, which int8 quantisation "
                         "reaches (convolutions, GRU and RNN layers stay float): there is nothing to quantise")
    ao = _torchao()
    quantized = _swap_linears(copy.deepcopy(model).eval())
    # set_inductor_config=False: leave torch.compile's global settings as the user has them
    if cpu.int8_products_exact():
        ao.quantize_(quantized, ao.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    else:  # int8 products that saturate would move the outputs by tens of percent, in silence
        ao.quantize_(quantized, ao.Int8WeightOnlyConfig(set_inductor_config=False))
    quantized = _quantize_lstms(quantized, ao) if lstm else quantized
    quantized.register_load_state_dict_pre_hook(_int8_from_another_cpu)
    return quantized


def _int8_from_another_cpu(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """A state dict saved where the int8 products differ (``cpu.int8_products_exact``: dynamic there, weight-only
    here, or the reverse) holds the same int8 weights and scales: they load, computed as this CPU computes them,
    where torchao's copy_ refused them over their metadata."""
    params = dict(module.named_parameters(prefix=prefix.rstrip(".")) if prefix else module.named_parameters())
    for key, saved in list(state_dict.items()):
        target = params.get(key)
        wanted = getattr(target, "act_quant_kwargs", None)
        if type(saved).__name__ != "Int8Tensor" or type(target) is not type(saved) or getattr(saved, "act_quant_kwargs", None) == wanted:
            continue
        state_dict[key] = type(saved)(saved.qdata, saved.scale, saved.block_size, saved.dtype, zero_point=saved.zero_point,
                                      act_quant_kwargs=wanted, reduce_range=getattr(target, "reduce_range", False))


@contextmanager
def _quiet():
    """torchao's import logs a warning for each CUDA-only library it cannot load on a CPU build, and torch one
    about an enum torchao registers; neither concerns CPU quantisation."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _torchao():
    """``torchao.quantization``, or a MissingDependencyError saying how to install it."""
    try:
        with _quiet():
            import torchao.quantization as ao
    except ImportError as err:
        raise MissingDependencyError(f"int8 quantisation needs torchao: {INSTALL}") from err
    return ao


class Int8WeightRNN(nn.Module):
    """A recurrent layer whose weight matrices are stored in int8 (torchao, one scale per row) and
    turned back into float32 for each call, so that whichever kernel its backend picks runs on them.

    The wrapped layer is ``self.rnn``; calls pass through unchanged (input, state, packed sequences).
    """

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, *args, **kwargs):
        weights = {name: p.dequantize() if type(p).__module__.startswith("torchao.") else p for name, p in self.rnn.named_parameters()}
        return torch.func.functional_call(self.rnn, weights, args, kwargs)


def _quantize_lstms(model: nn.Module, ao) -> nn.Module:
    from .nn import LSTM

    weight_only = ao.Int8WeightOnlyConfig(set_inductor_config=False)
    for name, module in list(model.named_modules()):
        if isinstance(module, LSTM):
            # the weight matrices, not the biases: weight_ih_l0, weight_hh_l0, weight_hr_l0, ..._reverse
            matrices = {f"{name}.{param}" if name else param: weight_only for param, _ in module.named_parameters() if param.startswith("weight_")}
            ao.quantize_(model, ao.FqnToConfig(matrices), filter_fn=None)
            model = _replace(model, name, Int8WeightRNN(module))
    return model


class _TorchLinear(nn.Linear):
    """torch.nn.Linear, which torchao quantises, taking a residual to add as minipt's Linear does
    (an encoder layer's inference path hands its residuals to the matmul before them)."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(x)
        return out if residual is None else out + residual


def _swap_linears(model: nn.Module) -> nn.Module:
    from .nn import Linear

    for name, module in list(model.named_modules()):
        if isinstance(module, Linear):
            twin = _TorchLinear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            twin.weight, twin.bias = module.weight, module.bias  # the same tensors (a tied weight stays tied)
            model = _replace(model, name, twin)
    return model


def _replace(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` where the submodule called ``name`` is; the model with it (``module`` itself for the name "")."""
    if not name:
        return module
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)
    return model


def size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as ``torch.save`` writes it (int8 weights and their scales included)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"size_bytes takes a torch.nn.Module, got {type(model).__name__}")
    fused = fused_inside(model)
    if fused is not None:
        raise InputError(f"size_bytes measures a model's state dict, and a fuse() copy's packed weights are outside it{fused}: measure the "
                         "model it came from")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), buffer)
    return buffer.tell()
