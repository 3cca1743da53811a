"""How the tests compare numbers, and the random test models they share.

Two kinds of float32 comparison, chosen by what is compared:

- The same kernels on the same weights (minipt's ``torch`` backend against
  transformers' sdpa attention, a model against its reloaded copy): they round
  alike, so ``max_diff(a, b) <= ATOL`` with ATOL = 1e-5 absolute.
- Two different computations of the same function (equations written out
  against torch's fused kernels, a fused time loop against torch.nn's RNN
  kernels, oneDNN's matmul against addmm, a whole sequence at once against step
  by step, BatchNorm folded into the convolution against BatchNorm applied):
  each rounds in its own order, and by how much depends on the CPU's
  instruction set (``ATEN_CPU_CAPABILITY``) and the thread count. A fixed
  absolute bound there passes on one CPU and fails on the next. Such a pair is
  measured against a float64 run of the same function (``assert_error_ratio``),
  as flash-attention's tests do for kernels that round differently: minipt's
  float32 error may be at most ``ratio`` times the reference's own float32
  error, plus a floor of a few float32 ulps of the values' magnitude for outputs
  that both get almost exact. Where no float64 run exists, the difference is
  bounded relative to the values' magnitude (``rel_diff``).
"""

from __future__ import annotations

import collections
import io
from typing import Sequence, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode

Tensors = Union[torch.Tensor, Sequence[torch.Tensor]]

ATOL = 1e-5  # float32, max abs difference, for computations that run the same kernels
FP32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7: one ulp at 1.0
RATIO = 3.0  # see assert_error_ratio
ULPS = 4  # see assert_error_ratio


def _pairs(a: Tensors, b: Tensors) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``a`` and ``b`` as matching (tensor, tensor) pairs; a single tensor is a sequence of one."""
    a = [a] if isinstance(a, torch.Tensor) else list(a)
    b = [b] if isinstance(b, torch.Tensor) else list(b)
    assert len(a) == len(b), (len(a), len(b))
    for left, right in zip(a, b):
        assert left.shape == right.shape, (left.shape, right.shape)
    return list(zip(a, b))


def max_diff(a: Tensors, b: Tensors) -> float:
    """max |a - b| over every element (of every tensor, for sequences), computed in float64."""
    return max(((left.double() - right.double()).abs().max().item() if left.numel() else 0.0) for left, right in _pairs(a, b))


def rel_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: the difference in units of the values' magnitude."""
    return max_diff(actual, expected) / max(expected.double().abs().max().item(), 1e-12)


def assert_error_ratio(
    actual: Tensors, reference: Tensors, exact: Tensors, ratio: float = RATIO, ulps: float = ULPS, scale: float = 0.0, what: str = ""
) -> None:
    """``actual`` is at most ``ratio`` times as far from ``exact`` as ``reference`` is, plus ``ulps`` float32 ulps.

    ``actual`` and ``reference`` are two float32 computations of the same function, ``exact`` its float64
    value (the reference model or equation run in float64 on the same inputs). Per tensor:

        max|actual - exact| <= ratio * max|reference - exact| + ulps * FP32_EPS * max(max|exact|, scale)

    ``scale`` is the magnitude the computation works at where that exceeds its outputs' (a recurrent
    cell's gates work at 1 however small its outputs are).

    The ratio term is the comparison: a computation that rounds differently but is as accurate as the
    reference makes an error of the same size, not the same value (where the errors exceed the floor, the
    ratios measured over the whole suite, with ATEN_CPU_CAPABILITY default, avx2 and avx512 and 1 or 2
    threads, ran from 0.38 to 2.11), while a mistake shows as a ratio in the tens or thousands (a GRU's
    ``b_hn`` scaled by 1 + 1e-5 gives 16 times torch's own error, by 1 + 1e-3 over 1000 times; 1e-5
    absolute misses the first). The floor covers outputs that both compute to within an ulp or two, where
    the ratio of two tiny errors means nothing: 4 float32 ulps at the largest value (or at ``scale``) is a
    rounding or two of a short sum, far below any real mistake.
    """
    for index, ((ours, theirs), (_, truth)) in enumerate(zip(_pairs(actual, reference), _pairs(actual, exact))):
        ours_error, their_error = max_diff(ours, truth), max_diff(theirs, truth)
        floor = ulps * FP32_EPS * max(truth.abs().max().item() if truth.numel() else 0.0, scale)
        assert ours_error <= ratio * their_error + floor, (
            f"{what}[{index}]: error {ours_error:.3g} against float64, reference's own error {their_error:.3g}, "
            f"allowed {ratio} x {their_error:.3g} + {floor:.3g}"
        )


def randomise_batch_norm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random affine parameters and running statistics in every BatchNorm2d, so that a BatchNorm mapped to the
    wrong place, or left in training mode, changes the outputs (fresh modules hold ones and zeros)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.num_batches_tracked.fill_(int(torch.randint(0, 1000, (1,), generator=generator)))
    return model


def assert_inference_only(model, fused, tmp_path) -> None:
    """What every ``fuse()`` copy (minipt.nn.fuse.InferenceCopy) refuses: gradients, training,
    saving, another fuse(), a dtype other than float32 or bfloat16, a state dict (its packed weights are
    no parameters) and a move to another dtype or device (they would stay behind); a move to where it is
    already is nothing."""
    import pytest

    from minipt.errors import ConfigError

    assert fused.fused and not fused.training and not model.fused
    assert not any(p.requires_grad for p in fused.parameters())
    with pytest.raises(ConfigError, match="inference copy.*train the model before fuse"):
        fused.train()
    with pytest.raises(ConfigError, match=f"fused {type(model).__name__}"):
        fused.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="not torch.float16"):
        model.fuse(torch.float16)
    with pytest.raises(ConfigError, match="fused already"):
        fused.fuse(torch.bfloat16)
    with pytest.raises(ConfigError, match="holds packed weights that a state dict does not reach"):
        fused.load_state_dict(fused.state_dict())
    for move in (lambda m: m.double(), lambda m: m.to("meta"), lambda m: m.half()):
        with pytest.raises(ConfigError, match="is fixed to the dtype and device it was fused for"):
            move(fused)
    assert fused.to("cpu") is fused and fused.float() is fused
    with pytest.raises(ConfigError, match="cannot be pickled.*fuse\\(\\) it after loading"):
        torch.save(fused, io.BytesIO())
    import copy

    twin = copy.deepcopy(fused)  # deepcopy still works, the copy refusing what the original refuses
    assert twin.fused and twin is not fused
    torch.save(model.state_dict(), io.BytesIO())  # what the message advises


class OpCounter(TorchDispatchMode):
    """How often each op ran (``namespace.name.overload``, e.g. ``minipt.packed_linear_add.default``) while active."""

    def __enter__(self):
        self.counts = collections.Counter()
        super().__enter__()
        return self.counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))
