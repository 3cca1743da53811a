"""``model.fuse(dtype=None)``: one inference transform for every model.

    fast = model.fuse()                  # the model's dtype
    fast = model.fuse(torch.bfloat16)    # weights, activations and outputs in bfloat16

The copy is built in one way for every family: a deep copy in eval mode, no parameter
requiring a gradient, cast to ``dtype``, then the rewrite rules below applied to every module,
children first. A block's forward is the same function before and after: the rules replace
sub-modules by ones that compute the same thing faster, never the data flow.

============================  ===============================================================
rule                          what it does, and where
============================  ===============================================================
Conv + BatchNorm fold         ``W' = W s``, ``b' = beta + (b - mean) s``, ``s = gamma / sqrt(var
                              + eps)``, for each (conv, norm) pair a block lists in
                              ``conv_bn_pairs``; the norm becomes ``nn.Identity``
Linear + activation           a Linear and the activation after it (pairs a block lists in
                              ``linear_act_pairs``) become one prepacked oneDNN matmul with the
                              activation as its post-op, where oneDNN has that activation
residual into the matmul      blocks with ``residual_in_matmul`` (encoder layer, GPT-2) add each
                              residual in the matmul before it (oneDNN's sum post-op), not in a
                              pass of its own
Q, K, V merge                 an attention block's three projections become one (3C, C) matmul
                              (``MultiHeadAttention.merge_qkv``)
packed Linear                 every other Linear runs on a weight prepacked for oneDNN
                              (``minipt.ops.onednn.pack_linear``), or on F.linear (whole, or
                              in blocks on the threads at a few rows) where oneDNN is missing or
                              slower for that shape and number of rows on this CPU
                              (``minipt.ops.cpu.linear_kernel``, asked per row count at run
                              time: on an AVX2 host oneDNN wins at 16 rows and loses at 4096),
                              on one thread for that call where a few rows run faster so
                              (``minipt.ops.cpu.linear_threads``); ``fuse_batch_hint`` on the
                              model is the number of rows oneDNN chooses the layout for (any
                              number runs)
channels-last                 convolution weights in NHWC, the layout oneDNN's convolutions run
                              fastest in
============================  ===============================================================

``fuse(torch.bfloat16)`` warns once where the CPU has no bfloat16 instructions (``minipt.ops.cpu``:
emulated there, it is slower than float32). The copy refuses ``train()`` and ``save_pretrained()`` with a ``ConfigError`` (train and save the
model, then fuse it), and ``fuse()`` of a fused model is refused too.
"""

from __future__ import annotations

import copy
import functools
import types

import torch
from torch import nn

from ..checks import floating_dtype, is_quantized
from ..errors import ConfigError
from ..ops import linear_kernel, linear_threads, onednn, warn_if_emulated

DTYPES = (torch.float32, torch.bfloat16)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by an eval-mode BatchNorm as one conv: W' = W * s, b' = beta + (b - mean) * s, s = gamma / sqrt(var + eps)."""
    scale = bn.weight.detach() * torch.rsqrt(bn.running_var + bn.eps)  # (out,)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused = copy.copy(conv)  # the same class (a "same"-padding conv stays one), hyper-parameters and forward
    fused._parameters = dict(conv._parameters)
    fused.weight = nn.Parameter(conv.weight.detach() * scale.view(-1, 1, 1, 1), requires_grad=False)  # keeps conv's memory format
    fused.bias = nn.Parameter(bn.bias.detach() + (bias - bn.running_mean) * scale, requires_grad=False)
    return fused


def _pack(weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None, batch_hint: int | None) -> nn.Module:
    """A packed Linear on oneDNN, or on F.linear (whole or in blocks) where that is faster for this shape here (``minipt.ops.cpu``)."""
    out_features, in_features = weight.shape
    dtype = weight.dtype

    def choose(rows: int, residual: bool) -> tuple[str, int]:  # per row count at run time: a fused model meets 1 and 4096 rows alike
        kernel = linear_kernel(dtype, rows, in_features, out_features, activation, residual=residual)
        kernel = "aten" if kernel == "onednn" and not packed else kernel
        return kernel, linear_threads(kernel, dtype, rows, in_features, out_features, activation)

    # slower at both ends (16 and 4096 rows): never packed (unless in blocks won at 16: oneDNN may still win at 2 to 8)
    at_16, at_4096 = (linear_kernel(dtype, rows, in_features, out_features, activation) for rows in (16, 4096))
    packed = onednn.available(dtype) and ("onednn" in (at_16, at_4096) or at_16 == "blocks")
    return onednn.pack_linear(weight, bias, activation, batch_hint=batch_hint, use_onednn=packed, choose=choose)


def _rewrite(module: nn.Module, batch_hint: int | None) -> None:
    """Apply the rules inside ``module``, children first."""
    for child in module.children():
        _rewrite(child, batch_hint)
    for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
        setattr(module, conv_name, fold_batchnorm(getattr(module, conv_name), getattr(module, bn_name)))
        setattr(module, bn_name, nn.Identity())
    for linear_name, act_name in getattr(module, "linear_act_pairs", ()):
        linear, act = getattr(module, linear_name), getattr(module, act_name)
        post_op = onednn.post_op(act)
        if isinstance(linear, nn.Linear) and post_op is not None:
            setattr(module, linear_name, _pack(linear.weight, linear.bias, post_op, batch_hint))
            setattr(module, act_name, nn.Identity())  # now inside the matmul
    if hasattr(type(module), "residual_in_matmul"):
        module.residual_in_matmul = True
    merge = getattr(module, "merge_qkv", None)
    if callable(merge):
        merge(lambda weight, bias: _pack(weight, bias, None, batch_hint))
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, _pack(child.weight, child.bias, None, batch_hint))
        elif isinstance(child, nn.Conv2d):
            child.weight.data = child.weight.data.contiguous(memory_format=torch.channels_last)


def _inputs_to(dtype: torch.dtype):
    def cast(value):
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    def hook(module, args, kwargs):
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    return hook


def _seal(fused: nn.Module) -> None:
    """Every module inside a fuse() copy refuses what would change it past the copy's own guards, when it is asked
    (``fused.bert.layers.train()`` turning dropout on, ``requires_grad_(True)`` of one layer, its ``.double()``):
    each module's ``train``, ``requires_grad_`` and ``_apply`` are replaced on the instance, so the copy's calls cost
    nothing more (``generate``, ``get_image_features`` and the like reach the modules without the copy's forward)."""
    owner = type(fused).__name__
    for name, module in fused.named_modules():
        if name:  # the copy itself: InferenceCopy's own methods
            module.train = types.MethodType(functools.partial(_sealed_train, what=f"{name} inside a fused {owner}"), module)
            module.requires_grad_ = types.MethodType(functools.partial(_sealed_requires_grad, what=f"{name} inside a fused {owner}"), module)
            module._apply = types.MethodType(functools.partial(_sealed_apply, what=f"{name} inside a fused {owner}"), module)


def _sealed_train(module: nn.Module, mode: bool = True, *, what: str):
    if mode:
        raise ConfigError(f"{what} is part of an inference copy (dropout off, no gradients): train the model before fuse()")
    return type(module).train(module, False)


def _sealed_requires_grad(module: nn.Module, requires_grad: bool = True, *, what: str):
    if requires_grad:
        raise ConfigError(f"{what} computes no gradients (the copy's packed weights are no parameters, so gradients would "
                          "reach some weights only): train the model before fuse()")
    return type(module).requires_grad_(module, False)


def _sealed_apply(module: nn.Module, fn, recurse: bool = True, *, what: str):
    _refuse_move(module, fn, what)
    return type(module)._apply(module, fn, recurse)


def _refuse_move(module: nn.Module, fn, what: str) -> None:
    """A ConfigError where ``fn`` (what ``.to()``, ``.double()``, ``.cuda()`` apply) would change the dtype or device of
    a fused module's parameters: its packed weights would stay as they are."""
    probe = next(module.parameters(), None)
    moved = None if probe is None else fn(probe)
    if moved is not None and (moved.dtype != probe.dtype or moved.device != probe.device):
        raise ConfigError(f"{what} is fixed to the dtype and device it was fused for ({probe.dtype}, {probe.device}): convert the "
                          "model (model.to(...)), then fuse() it")


class InferenceCopy:
    """Mixed into every model: ``fuse(dtype=None)`` returns its inference copy, which refuses ``train()``
    (``Pretrained.save_pretrained`` refuses it too)."""

    fused = False  # True for the copy fuse() returns
    fuse_batch_hint: int | None = 128  # rows (batch x positions) oneDNN chooses its packed layout for

    def fuse(self, dtype: torch.dtype | None = None):
        """An inference copy for the CPU (eval mode, no gradients), computing in ``dtype`` (float32 or
        bfloat16; None: the model's own). See ``minipt.nn.fuse`` for what it changes."""
        if dtype is not None and dtype not in DTYPES:
            other = f"; for {dtype} convert the model first: model.to({dtype}).fuse() computes in the model's own dtype" if isinstance(dtype, torch.dtype) and dtype.is_floating_point else ""
            raise ConfigError(f"fuse(dtype) casts to {' or '.join(map(str, DTYPES))} (the dtypes oneDNN packs its fast products for), not {dtype!r}{other}")
        if self.fused:
            raise ConfigError(f"this {type(self).__name__} is fused already; call fuse() on the model it came from")
        if is_quantized(self):
            raise ConfigError(f"this {type(self).__name__} is quantised to int8 (torchao tensors), which fuse() cannot pack: "
                              "fuse() the float model, or quantise it, not both")
        if dtype is not None and all(p.device.type == "cpu" for p in self.parameters()):
            warn_if_emulated(dtype)  # bfloat16 on a CPU without bfloat16 instructions: slower than float32
        fused = copy.deepcopy(self).eval().requires_grad_(False)
        if dtype is not None and dtype != floating_dtype(self):
            fused = fused.to(dtype)
            fused.register_forward_pre_hook(_inputs_to(dtype), with_kwargs=True)  # float inputs (pixels) follow the weights
        with torch.no_grad():
            _rewrite(fused, self.fuse_batch_hint)
        fused.eval()  # the modules the rewrite made too
        for module in fused.modules():
            if isinstance(module, InferenceCopy):
                module.fused = True  # a model inside a model (the BertModel of a head) too
        _seal(fused)
        return fused

    def requires_grad_(self, requires_grad: bool = True):
        if requires_grad and self.fused:  # the packed weights are no parameters: gradients would reach some weights only
            raise ConfigError(f"a fused {type(self).__name__} computes no gradients (its packed weights are no parameters); "
                              "train the model before fuse()")
        return super().requires_grad_(requires_grad)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.fused:  # the packed weights are no parameters: a state dict would reach some tensors and not the products
            raise ConfigError(f"a fused {type(self).__name__} holds packed weights that a state dict does not reach: "
                              "load the weights into the model, then fuse() it again")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn, recurse: bool = True):
        if self.fused:  # .to(), .half(), .double(), .cuda(), .to("meta"): the packed weights would stay as they are
            _refuse_move(self, fn, f"a fused {type(self).__name__}")
        elif is_quantized(self):  # torchao's int8 tensors keep float32 scales, and its kernels take float32 inputs only
            probe = next((p for p in self.parameters() if p.is_floating_point() and not type(p).__module__.startswith("torchao.")), None)
            moved = None if probe is None else fn(probe)
            if moved is not None and moved.dtype != probe.dtype:
                raise ConfigError(f"an int8 {type(self).__name__} computes in float32 around its int8 weights (torchao's kernels take "
                                  "float32 only): it stays in float32; quantise a float32 model")
        return super()._apply(fn, recurse)

    def __reduce_ex__(self, protocol):
        if self.fused:  # pickle, torch.save: oneDNN's packed weights have no storage to write, the products are closures
            raise ConfigError(f"a fused {type(self).__name__} cannot be pickled (torch.save): its packed weights are made for this "
                              "CPU; save the model (save_pretrained, or torch.save of its state_dict) and fuse() it after loading")
        if is_quantized(self):  # torchao's tensors fail inside pickle (AttributeError on a functools.partial)
            raise ConfigError(f"an int8 {type(self).__name__} cannot be pickled whole (torchao's tensors fail to): save "
                              "torch.save(model.state_dict(), path), and load it with quantize_int8(the float model).load_state_dict(...)")
        return super().__reduce_ex__(protocol)

    def __deepcopy__(self, memo):
        """What copy.deepcopy does without this method (a fused copy's own __reduce_ex__ refuses pickling)."""
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return clone

    def train(self, mode: bool = True):
        if mode and self.fused:
            raise ConfigError(f"a fused {type(self).__name__} is an inference copy (packed weights, no gradients); train the model before fuse()")
        return super().train(mode)
