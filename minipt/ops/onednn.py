"""oneDNN's linear layer on a prepacked weight (CPU), with its activation or a residual add fused in.

The one module in minipt that calls torch's private ``torch.ops.mkldnn`` ops:

    packed = pack_linear(weight, bias, activation="gelu", batch_hint=16)   # once, at inference set-up
    y = packed(x)                     # act(x @ W^T + b), x (..., in) -> (..., out)
    y = pack_linear(w, b)(x, residual=r)   # x @ W^T + b + r, the add done by the matmul's epilogue
    y = linear(x, weight, bias)       # F.linear with gradients, every matmul (forward and backward) on oneDNN
    w = pack(w_hh, batch, rows)       # the recurrent layers: one weight, many small products per call
    y = linear_packed(h, w, bias); y = linear_add(h, w, x_t)     # h W^T + b; x_t + h W^T

``pack_linear`` reorders the weight into oneDNN's blocked layout for its matrix multiply
(``_reorder_linear_weight``; ``batch_hint`` is the number of rows expected, a hint for the
layout, any number of rows works) and ``PackedLinear`` runs ``_linear_pointwise`` on it, the
activation computed as a post-op on the tile just multiplied. Measured on an AMD EPYC with
AVX-512, oneDNN's matmul ran about twice as fast as the MKL GEMM behind ``F.linear`` at every
size BERT uses (16 to 4096 rows), and the post-op saves the bias/activation passes over memory.

A ``PackedLinear`` built with a chooser keeps the plain weight beside the packed one and runs,
per number of input rows, one of three kernels (``KERNELS``; ``minipt.ops.cpu.linear_kernel``
times them): ``"onednn"`` (the packed matmul), ``"aten"`` (``F.linear``), or ``"blocks"``
(``linear_in_blocks``: ``F.linear`` as one batched product over blocks of output features, which
torch runs on all its threads where it runs a product of a few rows on one).

Where the private ops are missing, fail, or give a wrong answer on a tiny input (checked once,
lazily, per dtype, by ``probe``), ``pack_linear`` returns the same module on plain torch:
``F.linear`` and the activation. Both paths compute the same function; the packed weights are
detached copies, so a ``PackedLinear`` is for inference only (no gradients).

``linear`` is for training: the weight is read as it is (a plain matrix, nothing packed or
cached, so an optimizer's in-place update is always seen), float32 only; it falls back to
``F.linear`` like ``pack_linear``. The forward product and the input's gradient run on oneDNN;
the weight's gradient dy^T x runs on aten's ``mm``, which reads both operands transposed in
place, where oneDNN's matmul would first copy them transposed (DistilBERT-base's
2048 x 3072 activations: 16 ms a copy; with the copies oneDNN took 1.06-1.22x aten's time for
that product at BERT-base's three shapes on a 2-core AVX512-BF16 EPYC, 1.10-1.38x with both
capped to AVX2 kernels).

``pack`` / ``linear_packed`` / ``linear_add`` serve the recurrent layers' fused path, which
multiplies the same weight W_hh by a small (batch, H) matrix at every time step: the weight is
packed once per call (never cached, so an in-place update of a parameter cannot leave a stale
copy), only where enough rows are multiplied in all to pay for the packing (``MIN_ROWS``); they
have no derivative (callers use them inside an autograd.Function or without grad).

``MINIPT_ONEDNN=0`` in the environment turns every oneDNN path off (the fallbacks run).

Activations: None, ``"relu"``, ``"gelu"`` (exact, erf), ``"gelu_tanh"`` (tanh approximation),
``"tanh"``. Dtypes: float32, and bfloat16 where the CPU has native bfloat16 dot products
(AVX512-BF16 or AMX); elsewhere bfloat16 runs the fallback.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import tracing
from ..errors import ConfigError, InputError


# activation -> (oneDNN post-op name, its algorithm argument) and the plain-torch function, written over the product
# just computed (autograd keeps what GELU's and tanh's derivatives read). A new tensor of over 32 MiB comes from fresh
# pages of the operating system (glibc maps every block that large), and touching them cost more than the activation:
# on a 2-core AVX2 host GELU over BERT-base's (4096, 3072) feed-forward product took 29-30 ms into a new tensor and
# 7 ms in place, ReLU 25 and 2.
ACTIVATIONS = {
    None: (("none", ""), lambda y: y),
    "relu": (("relu", ""), torch.relu_),
    "gelu": (("gelu", "none"), lambda y: torch.ops.aten.gelu_(y)),  # "none": the exact erf form, as F.gelu's approximate="none"
    "gelu_tanh": (("gelu", "tanh"), lambda y: torch.ops.aten.gelu_(y, approximate="tanh")),
    "tanh": (("tanh", ""), torch.tanh_),
}
DTYPES = (torch.float32, torch.bfloat16)
ENV_SWITCH = "MINIPT_ONEDNN"  # "0" turns the oneDNN paths off (the fallbacks run)
MIN_ROWS = 64  # rows multiplied in all (steps x batch) below which packing W_hh costs more than it saves
_probed: dict[torch.dtype, str | None] = {}  # dtype -> why oneDNN's path does not run or is wrong, None where it is fine


def probe(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's linear exists, runs, and matches plain torch on a tiny input, for every
    activation and the residual add on a packed weight and on a plain one, in ``dtype``. Runs the
    check now (``available`` caches it; ``unavailable_because`` says why it failed)."""
    return _probe_failure(dtype) is None


def _probe_failure(dtype: torch.dtype) -> str | None:
    """None where ``probe`` passes, else what failed, in words."""
    try:
        if not torch.backends.mkldnn.is_available():
            return "torch was built without oneDNN (torch.backends.mkldnn.is_available() is False)"
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "oneDNN reports no bfloat16 support on this CPU"
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(3, 2, 5, generator=generator)  # a leading batch dimension, odd sizes
        weight, bias, residual = (torch.randn(shape, generator=generator) for shape in ((4, 5), (4,), (3, 2, 4)))
        tolerance = 1e-5 if dtype == torch.float32 else 0.1  # bfloat16 keeps 8 bits of mantissa
        expected_linear = F.linear(x.double(), weight.double(), bias.double())
        for name, (_, plain) in ACTIVATIONS.items():
            packed = _pack(weight.to(dtype), bias.to(dtype), name, batch_hint=6)
            got = packed(x.to(dtype)).double()
            if got.shape != (3, 2, 4) or not torch.allclose(got, plain(expected_linear.clone()), atol=tolerance, rtol=tolerance):
                return f"the packed matmul with activation {name} differs from plain torch"
        got = _pack(weight.to(dtype), bias.to(dtype), None, batch_hint=6)(x.to(dtype), residual=residual.to(dtype)).double()
        if not torch.allclose(got, expected_linear + residual.double(), atol=tolerance, rtol=tolerance):
            return "the packed matmul with a residual add differs from plain torch"
        got = _matmul_t(x.to(dtype).reshape(6, 5), weight.to(dtype), bias.to(dtype)).double()  # unpacked, as linear() runs it
        if not torch.allclose(got, expected_linear.reshape(6, 4), atol=tolerance, rtol=tolerance):
            return "the unpacked matmul differs from plain torch"
        return None
    except (AttributeError, RuntimeError, NotImplementedError, TypeError) as error:  # missing or changed private ops
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no message'}"


def available(dtype: torch.dtype = torch.float32) -> bool:
    """``probe(dtype)``, run once per dtype on first use; False without probing under ``MINIPT_ONEDNN=0``."""
    return unavailable_because(dtype) is None


_OFF, _ON = ("0", "false", "no", "off"), ("", "1", "true", "yes", "on")


def switched_off() -> bool:
    """Whether ``MINIPT_ONEDNN`` turns the oneDNN paths off (0, false, no, off; unset, 1, true, yes, on leave them on);
    any other value is a ConfigError naming it, not a silent "on"."""
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    if value not in _OFF + _ON:
        raise ConfigError(f"{ENV_SWITCH}={os.environ[ENV_SWITCH]!r}: expected 0 (oneDNN off) or 1 (on, the default); also false/no/off, true/yes/on")
    return value in _OFF


def unavailable_because(dtype: torch.dtype = torch.float32) -> str | None:
    """Why minipt's oneDNN paths are off for ``dtype`` (``MINIPT_ONEDNN=0``, or what the probe found), or None where
    they run. ``minipt info`` prints it: a torch whose private oneDNN ops changed turns them off, and says so."""
    if switched_off():
        return f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    if dtype not in _probed:
        _probed[dtype] = _probe_failure(dtype)
    return _probed[dtype]


def post_op(act: nn.Module) -> str | None:
    """The ``ACTIVATIONS`` name that computes the module ``act`` as a post-op, or None where oneDNN has none."""
    if type(act).__name__ == "GELU":  # minipt.nn.GELU (not imported here: minipt.nn imports minipt.ops)
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    return {nn.ReLU: "relu", nn.Tanh: "tanh"}.get(type(act))


# oneDNN's matmul on a packed weight, as minipt ops: torch.compile and torch.export then call it as it is
# (inductor's own lowering of _linear_pointwise expects the weights it packed itself, and fails on ours).
def _packed_linear_body(rows: Tensor, packed: Tensor, bias: Optional[Tensor], attr: str, algorithm: str, out_features: int) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise.default(rows, packed, bias, attr, [], algorithm)  # act(rows W^T + b): (N, out)


def _packed_linear_add_body(rows: Tensor, residual: Tensor, packed: Tensor, bias: Optional[Tensor]) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise.binary(rows, residual, packed, bias, "add")  # rows W^T + b + residual: (N, out)


_packed_linear = torch.library.custom_op("minipt::packed_linear", _packed_linear_body, mutates_args=())
_packed_linear_add = torch.library.custom_op("minipt::packed_linear_add", _packed_linear_add_body, mutates_args=())


@_packed_linear.register_fake
def _(rows, packed, bias, attr, algorithm, out_features):
    return rows.new_empty(rows.shape[0], out_features)


@_packed_linear_add.register_fake
def _(rows, residual, packed, bias):
    return torch.empty_like(residual)


class _Eager:
    """The bodies of ``minipt::packed_linear`` and ``packed_linear_add``, called as they are: in eager mode the
    registered op's dispatch adds about 9 us to each call (a 16-row product of MiniLM's: 92 us against 83)."""

    packed_linear = staticmethod(_packed_linear_body)
    packed_linear_add = staticmethod(_packed_linear_add_body)


def _packed_ops(rows: Tensor):
    """minipt's registered ops where something watches the calls (a graph traced, a dispatch mode such as
    FlopCounterMode, fake or meta tensors): they see minipt's op; else the ops' bodies, the same kernel."""
    if (tracing() or torch.jit.is_tracing() or type(rows) is not Tensor or rows.device.type != "cpu"
            or torch._C._len_torch_dispatch_stack() > 0):  # tracing() first: torch.compile reads no further
        return torch.ops.minipt
    return _Eager


KERNELS = ("onednn", "aten", "blocks")  # the products a PackedLinear runs (see the module's doc)


def linear_in_blocks(rows: Tensor, weight: Tensor, bias: Tensor | None, blocks: int) -> Tensor:
    """``F.linear(rows, weight, bias)``, (N, in) -> (N, out), as one batched product over ``blocks`` equal blocks
    of the weight's rows (output features): (blocks, N, in) x (blocks, in, out / blocks), the weight read in place.
    A product of a few rows is bound by reading the weight, and torch runs it on one thread; a batched product
    runs its blocks on its threads, so they read the weight together (on a 2-core AVX2 host a T5 decoder step's
    one-row products took 4.4 ms in two blocks against 7.0 ms in ``F.linear``). ``out`` must divide by ``blocks``."""
    n, in_features = rows.shape
    out_features = weight.shape[0]
    blocked = weight.view(blocks, out_features // blocks, in_features).transpose(1, 2)  # (blocks, in, out / blocks)
    out = torch.bmm(rows.expand(blocks, n, in_features), blocked)  # (blocks, N, out / blocks)
    out = out.view(1, out_features) if n == 1 else out.transpose(0, 1).reshape(n, out_features)  # (N, out)
    return out if bias is None else out + bias


def _on_threads(threads: int, function: Callable, *args):
    """``function(*args)`` with torch set to ``threads`` threads, torch's setting restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return function(*args)
    finally:
        torch.set_num_threads(before)


class PackedLinear(nn.Module):
    """``act(x @ W^T + b)`` (or ``x @ W^T + b + residual``) on a weight packed for oneDNN, or on plain
    torch where oneDNN is not available. Built by ``pack_linear``; holds no parameters."""

    def __init__(self, weight: Tensor, bias: Tensor | None, activation: str | None, packed: Tensor | None,
                 choose: Callable[[int], tuple[str, int]] | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.activation = activation
        self.onednn = packed is not None  # which path runs (under tracing, and where choose is None)
        # A packed (opaque, oneDNN-layout) tensor is no buffer: it stays out of state_dict and .to().
        self._weight = _Shared(packed if packed is not None else weight)
        # with a chooser, the plain weight too: inputs of the rows oneDNN is slower at run F.linear or linear_in_blocks
        self._plain_weight = _Shared(weight) if choose is not None else None
        # rows -> (one of KERNELS, threads: 1, or 0 for torch's setting), asked once per row count
        self._choose, self._chosen = choose, {}
        self.bias = bias
        self._post_op, self._plain = ACTIVATIONS[activation]

    @property
    def weight(self) -> Tensor:
        """The weight the matmul reads: oneDNN's packed copy (opaque) or the plain (out, in) matrix."""
        return self._weight.tensor

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise InputError(f"input of shape {tuple(x.shape)} to a packed linear layer of {self.in_features} input features")
        if residual is not None and self.activation is not None:
            raise InputError("a packed linear layer adds a residual only without an activation")
        rows = x.reshape(-1, self.in_features)  # (N, in)
        residual = None if residual is None else residual.reshape(-1, self.out_features)
        if self._choose is None or tracing():
            out = self._product(rows, residual, "onednn" if self.onednn else "aten")
        else:
            case = (rows.shape[0], residual is not None)
            if case not in self._chosen:
                self._chosen[case] = self._choose(*case)
            kernel, threads = self._chosen[case]
            if kernel == "onednn" and not self.onednn:
                kernel = "aten"
            if threads and threads < torch.get_num_threads():
                out = _on_threads(threads, self._product, rows, residual, kernel)
            else:
                out = self._product(rows, residual, kernel)
        return out.view(*x.shape[:-1], self.out_features)  # (..., out)

    def _product(self, rows: Tensor, residual: Tensor | None, kernel: str) -> Tensor:
        """(N, in) -> (N, out) on oneDNN's packed weight, or on the plain one: F.linear, or in blocks on torch's threads."""
        if kernel == "onednn":
            ops = _packed_ops(rows)
            if residual is not None:
                return ops.packed_linear_add(rows, residual, self.weight, self.bias)
            attr, algorithm = self._post_op
            return ops.packed_linear(rows, self.weight, self.bias, attr, algorithm, self.out_features)
        weight = self.weight if self._plain_weight is None else self._plain_weight.tensor
        blocks = torch.get_num_threads() if kernel == "blocks" else 1  # never asked while tracing: torch.compile cannot trace it
        if blocks > 1 and self.out_features % blocks == 0:
            out = self._plain(linear_in_blocks(rows, weight, self.bias, blocks))
        else:
            out = self._plain(F.linear(rows, weight, self.bias))
        return out if residual is None else out.add_(residual)  # over the product just computed (see ACTIVATIONS)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}, " \
               f"{'oneDNN' if self.onednn else 'plain torch'}"


class _Shared:
    """Holds a weight that copies of the module share: a packed tensor has no storage that
    ``copy.deepcopy`` could copy, and no one writes to it."""

    def __init__(self, tensor: Tensor):
        self.tensor = tensor

    def __deepcopy__(self, memo) -> "_Shared":
        return self


def pack_linear(weight: Tensor, bias: Tensor | None = None, activation: str | None = None, *, batch_hint: int | None = None,
                use_onednn: bool = True, choose: Callable[[int, bool], tuple[str, int]] | None = None) -> PackedLinear:
    """A ``PackedLinear`` computing ``activation(x @ weight^T + bias)``: oneDNN on a packed copy of
    ``weight`` (out, in) when ``use_onednn`` and ``available(weight.dtype)``, plain torch otherwise
    (``minipt.ops.cpu.linear_kernel`` says which is faster for a shape). ``choose(rows, residual)``,
    where given (CPU weights), decides per number of input rows, with or without a residual to add,
    whether the packed copy runs them, or ``F.linear`` or ``linear_in_blocks`` on a plain copy kept
    beside it, and on how many threads (1, or 0 for torch's setting): ``(kernel, threads)``, asked once
    per case. The result's dtype is the
    weight's; inputs must have it too."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"pack_linear supports the activations {list(ACTIVATIONS)}, not {activation!r}")
    if weight.dim() != 2 or (bias is not None and bias.shape != weight.shape[:1]):
        raise InputError(f"pack_linear needs a weight (out, in) and a bias (out,), got {tuple(weight.shape)} and {None if bias is None else tuple(bias.shape)}")
    weight = weight.detach()
    bias = None if bias is None else bias.detach().to(weight.dtype)
    use_onednn = use_onednn and weight.device.type == "cpu" and weight.dtype in DTYPES and available(weight.dtype)
    choose = choose if weight.device.type == "cpu" else None
    if not use_onednn:
        return PackedLinear(weight.clone(memory_format=torch.contiguous_format), None if bias is None else bias.clone(), activation, None, choose)
    return _pack(weight, bias, activation, batch_hint, choose)


def _pack(weight: Tensor, bias: Tensor | None, activation: str | None, batch_hint: int | None,
          choose: Callable[[int], tuple[str, int]] | None = None) -> PackedLinear:
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), batch_hint)
    plain = weight.contiguous().clone() if choose is not None else weight  # kept for F.linear beside the packed copy
    return PackedLinear(plain, None if bias is None else bias.contiguous().clone(), activation, packed, choose)


# -- training: oneDNN's matmul with gradients -------------------------------------------
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, differentiable: y = x W^T and dx = dy W on oneDNN, dW = dy^T x on
    aten (no transposed copies), for float32 CPU tensors when ``available()``; ``F.linear`` otherwise."""
    on_onednn = x.device.type == weight.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and available()
    if not on_onednn:
        return F.linear(x, weight, bias)
    return _OneDNNLinear.apply(x, weight, bias)


def _matmul_t(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a @ b^T (+ bias) for 2-d a (N, K), b (M, K) on oneDNN, the weight operand read unpacked."""
    return torch.ops.mkldnn._linear_pointwise.default(a.contiguous(), b.contiguous(), bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])  # (N, in)
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return _matmul_t(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])  # (..., out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, weight.shape[0])  # (N, out)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _matmul_t(grad_rows, weight.t()).view(*grad.shape[:-1], weight.shape[1])  # dy W: (..., in)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_rows.t().mm(rows)  # dy^T x: (out, in), the transposes read in place
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


# -- the recurrent layers: one packed weight, a product at every step (no gradients) -------
class PackedWeight(NamedTuple):
    weight: Tensor  # (out, in), as nn.Linear stores it
    packed: Optional[Tensor]  # the same weight in oneDNN's layout, or None: the fallback runs


def pack(weight: Tensor, batch: int, rows: int) -> PackedWeight:
    """``weight`` (out, in) ready for products with (``batch``, in) matrices, ``rows`` rows in all."""
    use = weight.device.type == "cpu" and weight.dtype == torch.float32 and rows >= MIN_ROWS and not tracing() and available()
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), batch) if use else None
    return PackedWeight(weight, packed)


def linear_packed(x: Tensor, weight: PackedWeight, bias: Optional[Tensor] = None) -> Tensor:
    """``x W^T + bias``: (B, in) -> (B, out)."""
    if weight.packed is not None:
        # the overload named explicitly: resolving it from the arguments costs more than the product
        return torch.ops.mkldnn._linear_pointwise.default(x, weight.packed, bias, "none", [], "")
    return F.linear(x, weight.weight, bias)


def linear_add(x: Tensor, weight: PackedWeight, other: Tensor) -> Tensor:
    """``other + x W^T``: (B, in) -> (B, out), the sum taken inside the matrix multiply."""
    if weight.packed is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, weight.packed, None, "add")
    return torch.addmm(other, x, weight.weight.t())
