"""Dropout (Srivastava et al., 2014): in training, each element is zeroed with probability ``p`` and the
others scaled by ``1 / (1 - p)``, so that the expected output is the input; in evaluation, the identity.

On the CPU the keep-or-drop draws come from a counter-based hash, as CUDA's dropout takes them from
Philox: a 32-bit hash of counter ``j`` and two int32 keys drawn per call from torch's generator gives the
draws of elements ``2j`` and ``2j + 1``, its two 16-bit halves, and an element keeps its value where its
draw is at least ``p`` in 16-bit steps (``p`` is rounded to a multiple of 2^-16, at most 7.6e-6 away).
``torch.manual_seed`` makes the masks reproducible; they are not torch's masks. The hash is fifteen
whole-tensor integer operations over half as many counters as elements, on all the threads, where torch's
CPU dropout draws one number at a time from one generator: a BERT-base attention dropout of 16 x 12 x 128
x 128 probabilities took 24-25 ms with ``F.dropout``, 9.4-9.9 ms with one 32-bit draw per element and
4.3-4.5 ms with one per two (a 2-core AVX512-BF16 EPYC; capped to AVX2 kernels, 24-25, 10.7-12.4 and
4.7-5.1 ms), and dropout had been 15-19% of a MiniLM training step on an AVX2-only one (bench/bert.py). Elsewhere (CUDA, tensors of 2^31 elements or more), ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

# The hash: a Weyl step spreads the counter, then Wellons' "lowbias32" (two xorshift-multiply rounds and a
# last xorshift) mixes every input bit into every output bit, high and low halves alike, which are read as
# two draws. A second key is xored in between the rounds, so that two calls' masks are not shifted copies
# of each other. The constants are the 32-bit values written as signed int32; int32 multiplies wrap
# modulo 2^32.
_WEYL = -1640531527  # 0x9E3779B9
_ROUND_1 = 0x7FEB352D
_ROUND_2 = -2073254261  # 0x846CA68B


def uniform_int32(numel: int, keys: torch.Tensor) -> torch.Tensor:
    """(numel,) int32 values spread uniformly over all 2^32, a hash of each counter 0..numel-1 and the two
    int32 ``keys`` (on the device of the result). Every step writes into ``x`` or one scratch tensor."""
    x = torch.arange(numel, dtype=torch.int32, device=keys.device)
    scratch = torch.empty_like(x)

    def xorshift(bits: int) -> None:  # x ^= x >>> bits (logical: torch's >> on int32 copies the sign bit)
        torch.bitwise_right_shift(x, bits, out=scratch)
        x.bitwise_xor_(scratch.bitwise_and_((1 << (32 - bits)) - 1))

    x.mul_(_WEYL).add_(keys[0])
    xorshift(16)
    x.mul_(_ROUND_1).bitwise_xor_(keys[1])
    xorshift(15)
    x.mul_(_ROUND_2)
    xorshift(16)
    return x


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool tensor of ``shape``, each element True with probability ``1 - p`` (``p`` to 2^-16), independently."""
    numel = 1
    for size in shape:
        numel *= size
    keys = torch.randint(-(1 << 31), (1 << 31) - 1, (2,), dtype=torch.int32, generator=generator).to(device)
    threshold = round(p * (1 << 16)) - (1 << 15)  # P(a uniform int16 >= threshold) = 1 - p, p in 16-bit steps
    if threshold >= 1 << 15:  # p within 2^-17 of 1: nothing kept (an int16 compared with 2^15 would wrap it)
        return torch.zeros(shape, dtype=torch.bool, device=device)
    draws = uniform_int32((numel + 1) // 2, keys).view(torch.int16)[:numel]  # each counter's two halves: (numel,)
    return (draws >= threshold).view(shape)


class _ScaledByMask(torch.autograd.Function):
    """``x * keep * scale`` that keeps the bool mask (one byte an element) for its backward, as torch's dropout does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(_as_factor(keep, x.dtype)).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(_as_factor(keep, grad.dtype)).mul_(ctx.scale), None, None


def _as_factor(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``keep`` as 1.0 and 0.0 of ``dtype``, converted through its bytes: torch's CPU bool-to-float conversion
    (and a multiply by a bool tensor, which makes it) took 7x as long as the conversion of the same bytes."""
    return keep.view(torch.uint8).to(dtype)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, its draws from ``keep_mask`` on the CPU (see the module's doc)."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"dropout probability must be between 0 and 1, got {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or x.numel() >= 1 << 31 or p == 1.0 or not x.is_floating_point():
        return F.dropout(x, p, training=True)
    return _ScaledByMask.apply(x, keep_mask(x.shape, p), 1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``torch.nn.Dropout`` (the same ``p``, ``inplace`` ignored, no state) whose CPU masks come from ``keep_mask``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
