"""Linear, LayerNorm and activations, with their equations written out (the ``math`` backend),
torch's kernels (``torch``) or minipt's ops (``fused``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..checks import autocast_on, tracing
from ..errors import ConfigError, InputError
from ..ops import cpu
from .backend import BackendBlock, get_backend


class Linear(BackendBlock, nn.Linear):
    """``x W^T + b``: torch.nn.Linear (the same parameters, state dict and initialisation) whose
    matrix multiplies follow the backend. On ``"fused"``, float32 CPU tensors take their product and
    the input's gradient on oneDNN (the weight's gradient on aten) where that is measured faster for
    the layer's shape on this CPU (``minipt.ops.cpu.linear``: 1.1-2x the MKL GEMM behind ``F.linear``
    on AVX-512 hosts, slower on an AVX2 one; bench/bert.py's training row). Everywhere else, and while
    torch.compile, torch.export or the ONNX exporter trace the model, ``F.linear``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)

    def forward(self, x: torch.Tensor, add_bias: bool = True, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(..., in) -> (..., out), ``+ residual`` where given; ``add_bias=False`` leaves the bias to the
        caller (``linear_then_activation``)."""
        bias = self.bias if add_bias else None
        if get_backend(self.backend) == "fused" and not (tracing() or torch.jit.is_tracing()):
            out = cpu.linear(x, self.weight, bias)
        else:
            out = F.linear(x, self.weight, bias)
        return out if residual is None else out + residual


def _check_normalised(norm: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> None:
    """An InputError unless ``x`` (and ``residual``, of its shape) ends in the norm's width: a last dimension of 1
    would broadcast against the weight into a tensor of the bias. (Written for speed: it runs at every norm.)"""
    weight = norm._parameters.get("weight")
    if weight is None:  # pruned or parametrised (torch.nn.utils.prune, parametrize): an attribute computed from others
        weight = norm.weight
    fits = isinstance(x, torch.Tensor) and x.shape[-1:] == weight.shape and (
        residual is None or (isinstance(residual, torch.Tensor) and residual.shape == x.shape))
    if not fits:
        width = norm.weight.shape[0]
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != width:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"{type(norm).__name__}({width}) normalises a last dimension of {width}, got an input of shape {got}")
        got = tuple(residual.shape) if isinstance(residual, torch.Tensor) else type(residual).__name__
        raise InputError(f"{type(norm).__name__}'s residual must have the input's shape {tuple(x.shape)}, got {got}")


class LayerNorm(BackendBlock, nn.Module):
    """Layer normalisation (Ba et al., 2016) over the last dimension: state-dict compatible with torch.nn.LayerNorm."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """LN(x), or LN(x + residual): a post-LN block's residual step, one op on ``fused``."""
        _check_normalised(self, x, residual)
        backend = get_backend(self.backend)
        if backend == "fused":
            weight, bias = self.weight, self.bias
            if autocast_on(x.device.type):  # the dtype the torch path computes in: CUDA autocast runs layer_norm in float32;
                # the CPU's has no rule for it: the sum's dtype (x + residual), the weights cast to it
                common = torch.float32 if x.device.type == "cuda" else x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
                x, weight, bias = x.to(common), weight.to(common), bias.to(common)
                residual = None if residual is None else residual.to(common)
            if residual is None:
                return ops.layer_norm(x, weight, bias, self.eps)
            return ops.add_layer_norm(x, residual, weight, bias, self.eps)
        if residual is not None:
            x = x + residual
        if backend == "torch":
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)  # biased variance, as in the paper
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang & Sennrich, 2019), T5's "LayerNorm": no mean subtracted, no bias.

        weight * x / sqrt(mean(x^2) + eps)

    The mean of squares and the division run in float32 whatever the input's dtype (as transformers'
    T5LayerNorm); the result is cast to a half-precision weight's dtype before the scale.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_normalised(self, x)
        variance = x.float().pow(2).mean(-1, keepdim=True)  # (..., 1), float32
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GELU(BackendBlock, nn.Module):
    """Gaussian error linear unit (Hendrycks & Gimpel, 2016): x * Phi(x), exact or tanh-approximated."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ConfigError(f"GELU approximation must be 'none' or 'tanh', not {approximate!r}")
        self.approximate = approximate

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """gelu(x), or gelu(x + bias) for a bias (N,) the Linear before left out (``linear_then_activation``)."""
        backend = get_backend(self.backend)
        if backend == "fused" and ops.gelu_takes_bias(x.device):  # elsewhere the op would be the lines below
            return ops.bias_gelu(x, bias if bias is not None else x.new_zeros(x.shape[-1]), self.approximate)
        if bias is not None:
            x = x + bias
        if backend != "math":
            return F.gelu(x, approximate=self.approximate)
        if self.approximate == "tanh":
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))

    def extra_repr(self) -> str:
        return "" if self.approximate == "none" else "approximate='tanh'"


# The activation names used in Hugging Face config files.
class QuickGELU(nn.Module):
    """OpenAI's sigmoid approximation of GELU (CLIP's ``"quick_gelu"``): ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": lambda: GELU(),
    "gelu_new": lambda: GELU("tanh"),
    "gelu_pytorch_tanh": lambda: GELU("tanh"),
    "quick_gelu": QuickGELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
}


def linear_then_activation(linear: nn.Linear, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(linear(x))``. A GELU on the ``fused`` backend takes the Linear's bias itself where
    ``minipt.ops.bias_gelu`` has its kernel (``ops.gelu_takes_bias``), so that the biased
    pre-activation is never written to memory; on the CPU the matmul adds the bias."""
    if isinstance(act, GELU) and linear.bias is not None and get_backend(act.backend) == "fused" and ops.gelu_takes_bias(x.device):
        product = linear(x, add_bias=False) if isinstance(linear, Linear) else F.linear(x, linear.weight)
        return act(product, linear.bias)
    return act(linear(x))


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
