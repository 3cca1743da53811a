"""LayerNorm and activations, with their equations written out (the ``math`` backend)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .backend import get_backend


class LayerNorm(nn.Module):
    """Layer normalisation (Ba et al., 2016) over the last dimension: state-dict compatible with torch.nn.LayerNorm."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.backend: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if get_backend(self.backend) != "math":
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)  # biased variance, as in the paper
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GELU(nn.Module):
    """Gaussian error linear unit (Hendrycks & Gimpel, 2016): x * Phi(x), exact or tanh-approximated."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ConfigError(f"GELU approximation must be 'none' or 'tanh', not {approximate!r}")
        self.approximate = approximate
        self.backend: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if get_backend(self.backend) != "math":
            return F.gelu(x, approximate=self.approximate)
        if self.approximate == "tanh":
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))

    def extra_repr(self) -> str:
        return "" if self.approximate == "none" else "approximate='tanh'"


# The activation names used in Hugging Face config files.
ACTIVATIONS = {
    "gelu": lambda: GELU(),
    "gelu_new": lambda: GELU("tanh"),
    "gelu_pytorch_tanh": lambda: GELU("tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
