"""minipt.ops' Triton kernels against their float64 references, forward and backward.

On a machine without CUDA the kernels run on CPU tensors through Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1); with CUDA the same tests run on the GPU with larger
shapes. The launchers (``*_triton``) are called directly, so the kernels are exercised on either
device.

Tolerances are error ratios, as in flash-attention's tests: against a float64 reference on the
same (rounded) inputs, a kernel may err at most ``RATIO`` times as much as torch's own
computation in the same dtype, plus a tiny floor. The interpreter converts float32 to bfloat16
by truncation instead of rounding, so on CPU a bfloat16 result may be one more bfloat16 step off.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="the kernels need triton (pip install triton); the references are tested in test_ops.py")

from minipt.ops import _attention, _bias_gelu, _gru_gates, _layer_norm, _lstm_gates  # noqa: E402

RATIO = 3.0
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(
        not INTERPRETING, reason="CPU tensors run kernels only under TRITON_INTERPRET=1 (set when CUDA is absent)")),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def assert_error_ratio(name, kernel, reference64, torch_same_dtype):
    """|kernel - reference| <= RATIO * |torch - reference| + floor, in the max norm."""
    scale = reference64.abs().max().item()
    floor = 1e-6 * scale + 1e-7
    if kernel.dtype == torch.bfloat16 and not kernel.is_cuda:
        floor += scale * 2.0**-7  # one bfloat16 step: the interpreter truncates
    error = (kernel.double() - reference64).abs().max().item()
    torch_error = (torch_same_dtype.double() - reference64).abs().max().item()
    assert error <= RATIO * torch_error + floor, (
        f"{name}: kernel error {error:.3g} > {RATIO} x torch's {torch_error:.3g} + {floor:.3g}")


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


# ---- attention ------------------------------------------------------------------------------------


def attention_in_dtype(q, k, v, key_padding_mask, causal, scale):
    """Attention written in torch without upcasting: what torch computes in q's dtype."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, T, S)
    allowed = _attention.allowed_keys(key_padding_mask, q.shape[2], k.shape[2], causal, q.device)
    allowed = allowed.expand(scores.shape)
    probs = scores.masked_fill(~allowed, torch.finfo(q.dtype).min).softmax(-1) * allowed.any(-1, keepdim=True)
    return torch.matmul(probs, v)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [(13, 21), (21, 13)], ids=["T<S", "T>S"])
def test_attention_kernels(device, dtype, causal, lengths):
    T, S = lengths
    B, H, D = (2, 2, 24) if device == "cpu" else (3, 5, 64)
    if device == "cuda":
        T, S = T * 37, S * 37
    q = torch.randn(B, H, T, D, device=device).to(dtype)
    k = torch.randn(B, H, S, D, device=device).to(dtype)
    v = torch.randn(B, H, S, D, device=device).to(dtype)
    keep = torch.rand(B, S, device=device) > 0.3
    keep[1] = False  # a sequence with no real key: its rows must give zeros, not NaN
    scale = D**-0.5
    grad = torch.randn(B, H, T, D, device=device).to(dtype)

    out, lse = _attention.attention_triton(q, k, v, keep, causal, scale)
    grads = _attention.attention_backward_triton(grad, q, k, v, keep, out, lse, causal, scale)

    q64, k64, v64, grad64 = (t.double() for t in (q, k, v, grad))
    out64, lse64 = _attention.attention_reference(q64, k64, v64, keep, causal, scale)
    grads64 = _attention.attention_backward_reference(grad64, q64, k64, v64, keep, out64, lse64, causal, scale)

    inputs = [leaf(t) for t in (q, k, v)]
    out_torch = attention_in_dtype(*inputs, keep, causal, scale)
    out_torch.backward(grad)

    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert (out[1] == 0).all() and (grads[0][1] == 0).all()
    assert_error_ratio("out", out, out64, out_torch)
    seen = torch.isfinite(lse64)
    assert torch.equal(torch.isfinite(lse), seen)
    assert torch.allclose(lse[seen].double(), lse64[seen], atol=1e-4, rtol=1e-4)
    for name, g, g64, x in zip(("dq", "dk", "dv"), grads, grads64, inputs):
        assert_error_ratio(name, g, g64, x.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_attention_kernel_strided_inputs(device):
    """q, k, v as MultiHeadAttention makes them: head views of (B, T, C) projections."""
    B, T, H, D = 2, 11, 3, 16
    qkv = torch.randn(B, T, 3, H, D, device=device)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, D), not contiguous
    out, lse = _attention.attention_triton(q, k, v, None, True, 0.25)
    expected, _ = _attention.attention_reference(q, k, v, None, True, 0.25)
    assert torch.allclose(out, expected, atol=1e-5)


# ---- bias + GELU ------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_kernels(device, dtype, approximate):
    shape = (3, 7, 33) if device == "cpu" else (4, 129, 3072)
    x = torch.randn(shape, device=device).mul(2).to(dtype)
    bias = torch.randn(shape[-1], device=device).to(dtype)
    grad = torch.randn(shape, device=device).to(dtype)

    out = _bias_gelu.bias_gelu_triton(x, bias, approximate)
    grad_x, grad_bias = _bias_gelu.bias_gelu_backward_triton(grad, x, bias, approximate)

    x64, bias64, grad64 = x.double(), bias.double(), grad.double()
    out64 = _bias_gelu.bias_gelu_reference(x64, bias64, approximate)
    grad_x64, grad_bias64 = _bias_gelu.bias_gelu_backward_reference(grad64, x64, bias64, approximate)

    x_t, bias_t = leaf(x), leaf(bias)
    out_torch = F.gelu(x_t + bias_t, approximate=approximate)
    out_torch.backward(grad)

    assert_error_ratio("out", out, out64, out_torch)
    assert_error_ratio("grad_x", grad_x, grad_x64, x_t.grad)
    assert_error_ratio("grad_bias", grad_bias, grad_bias64, bias_t.grad)


# ---- LayerNorm, with and without the residual ------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True], ids=["layer_norm", "add_layer_norm"])
@pytest.mark.parametrize("hidden", [37, 256])
def test_layer_norm_kernels(device, dtype, with_residual, hidden):
    shape = (3, 7, hidden) if device == "cpu" else (8, 512, hidden * 12)
    x = (torch.randn(shape, device=device) * 3 + 1).to(dtype)
    residual = torch.randn(shape, device=device).to(dtype) if with_residual else None
    weight = (1 + 0.5 * torch.randn(shape[-1], device=device)).to(dtype)
    bias = torch.randn(shape[-1], device=device).to(dtype)
    grad = torch.randn(shape, device=device).to(dtype)
    eps = 1e-5

    out = _layer_norm.add_layer_norm_triton(x, residual, weight, bias, eps) if with_residual \
        else _layer_norm.layer_norm_triton(x, weight, bias, eps)
    grads = _layer_norm.layer_norm_backward_triton(grad, x, residual, weight, eps)

    as64 = lambda t: None if t is None else t.double()  # noqa: E731
    out64 = _layer_norm.layer_norm_reference(as64(x), as64(residual), as64(weight), as64(bias), eps)
    grads64 = _layer_norm.layer_norm_backward_reference(as64(grad), as64(x), as64(residual), as64(weight), eps)

    x_t, weight_t, bias_t = leaf(x), leaf(weight), leaf(bias)
    summed = x_t if residual is None else x_t + residual
    out_torch = F.layer_norm(summed, weight.shape, weight_t, bias_t, eps)
    out_torch.backward(grad)

    assert_error_ratio("out", out, out64, out_torch)
    for name, g, g64, t in zip(("grad_x", "grad_weight", "grad_bias"), grads, grads64, (x_t, weight_t, bias_t)):
        assert_error_ratio(name, g, g64, t.grad)


# ---- recurrent gates -------------------------------------------------------------------------------


def lstm_gates_in_dtype(gates, c):
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


def gru_gates_in_dtype(gi, gh, h):
    (gi_r, gi_z, gi_n), (gh_r, gh_z, gh_n) = gi.chunk(3, dim=1), gh.chunk(3, dim=1)
    r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
    n = torch.tanh(gi_n + r * gh_n)
    return (1 - z) * n + z * h


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_gates_kernels(device, dtype):
    B, H = (5, 37) if device == "cpu" else (64, 1000)
    gates = (2 * torch.randn(B, 4 * H, device=device)).to(dtype)
    c = torch.randn(B, H, device=device).to(dtype)
    grad_h, grad_c = torch.randn(B, H, device=device).to(dtype), torch.randn(B, H, device=device).to(dtype)

    h_new, c_new = _lstm_gates.lstm_gates_triton(gates, c)
    grad_gates, grad_c_prev = _lstm_gates.lstm_gates_backward_triton(grad_h, grad_c, gates, c)

    h64, c64 = _lstm_gates.lstm_gates_reference(gates.double(), c.double())
    grad_gates64, grad_c_prev64 = _lstm_gates.lstm_gates_backward_reference(
        grad_h.double(), grad_c.double(), gates.double(), c.double())

    gates_t, c_t = leaf(gates), leaf(c)
    h_torch, c_torch = lstm_gates_in_dtype(gates_t, c_t)
    torch.autograd.backward([h_torch, c_torch], [grad_h, grad_c])

    assert_error_ratio("h_new", h_new, h64, h_torch)
    assert_error_ratio("c_new", c_new, c64, c_torch)
    assert_error_ratio("grad_gates", grad_gates, grad_gates64, gates_t.grad)
    assert_error_ratio("grad_c", grad_c_prev, grad_c_prev64, c_t.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gru_gates_kernels(device, dtype):
    B, H = (5, 37) if device == "cpu" else (64, 1000)
    gi = (2 * torch.randn(B, 3 * H, device=device)).to(dtype)
    gh = (2 * torch.randn(B, 3 * H, device=device)).to(dtype)
    h = torch.randn(B, H, device=device).to(dtype)
    grad = torch.randn(B, H, device=device).to(dtype)

    h_new = _gru_gates.gru_gates_triton(gi, gh, h)
    grads = _gru_gates.gru_gates_backward_triton(grad, gi, gh, h)

    h64 = _gru_gates.gru_gates_reference(gi.double(), gh.double(), h.double())
    grads64 = _gru_gates.gru_gates_backward_reference(grad.double(), gi.double(), gh.double(), h.double())

    inputs = [leaf(t) for t in (gi, gh, h)]
    h_torch = gru_gates_in_dtype(*inputs)
    h_torch.backward(grad)

    assert_error_ratio("h_new", h_new, h64, h_torch)
    for name, g, g64, t in zip(("grad_gi", "grad_gh", "grad_h"), grads, grads64, inputs):
        assert_error_ratio(name, g, g64, t.grad)


# ---- on CUDA the op itself runs the kernel ------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the ops run their references")
def test_cuda_dispatches_to_the_kernels():
    import minipt.ops as ops

    q, k, v = (torch.randn(2, 3, 100, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    assert torch.equal(ops.attention(q, k, v), _attention.attention_triton(q, k, v, None, False, 0.125)[0])
    x, bias = torch.randn(64, 3072, device="cuda"), torch.randn(3072, device="cuda")
    assert torch.equal(ops.bias_gelu(x, bias), _bias_gelu.bias_gelu_triton(x, bias, "none"))
