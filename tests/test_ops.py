"""minipt.ops as torch ops, on their plain-torch references: opcheck, float64 gradcheck,
torch.compile and torch.export, input errors, and a cheap ``import minipt.ops``.

The Triton kernels themselves are checked against these references in test_ops_kernels.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import minipt.ops as ops
from minipt.errors import InputError


def attention_inputs(dtype=torch.float32, requires_grad=False):
    q = torch.randn(2, 1, 3, 4, dtype=dtype)
    k, v = torch.randn(2, 1, 5, 4, dtype=dtype), torch.randn(2, 1, 5, 4, dtype=dtype)
    keep = torch.tensor([[True] * 5, [True, False, True, False, False]])
    return [t.requires_grad_(requires_grad) for t in (q, k, v)] + [keep]


def inputs(name, dtype=torch.float32, requires_grad=False):
    """Small inputs for each public op: a list of tensors, then the op's other arguments."""
    rand = lambda *shape: torch.randn(*shape, dtype=dtype).requires_grad_(requires_grad)  # noqa: E731
    return {
        "attention": (attention_inputs(dtype, requires_grad), dict(causal=True, scale=0.3)),
        "bias_gelu": ([rand(2, 3, 5), rand(5)], dict(approximate="tanh")),
        "bias_gelu_exact": ([rand(2, 3, 5), rand(5)], dict(approximate="none")),
        "layer_norm": ([rand(2, 3, 5), rand(5), rand(5)], dict(eps=1e-5)),
        "add_layer_norm": ([rand(2, 3, 5), rand(2, 3, 5), rand(5), rand(5)], dict(eps=1e-5)),
        "lstm_gates": ([rand(4, 4 * 6), rand(4, 6)], {}),
        "gru_gates": ([rand(4, 3 * 6), rand(4, 3 * 6), rand(4, 6)], {}),
    }[name]


def call(name, tensors, kwargs):
    function = getattr(ops, "bias_gelu" if name == "bias_gelu_exact" else name)
    return function(*tensors, **kwargs)


OPS = ["attention", "bias_gelu", "bias_gelu_exact", "layer_norm", "add_layer_norm", "lstm_gates", "gru_gates"]


def test_import_does_not_import_triton():
    code = "import sys, minipt, minipt.ops, minipt.nn; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# (op, arguments) for opcheck: every registered op, the backward ops included.
def opcheck_cases():
    q, k, v, keep = attention_inputs(requires_grad=True)
    out, lse = torch.ops.minipt.attention(q, k, v, keep, True, 0.3)
    g = lambda *shape: torch.randn(*shape)  # noqa: E731
    r = lambda *shape: torch.randn(*shape, requires_grad=True)  # noqa: E731
    return {
        "attention": (torch.ops.minipt.attention.default, (q, k, v, keep, True, 0.3)),
        "attention_unmasked": (torch.ops.minipt.attention.default, (q, k, v, None, False, 0.3)),
        "attention_backward": (torch.ops.minipt.attention_backward.default,
                               (g(2, 1, 3, 4), q.detach(), k.detach(), v.detach(), keep, out.detach(),
                                lse.detach(), True, 0.3)),
        "bias_gelu": (torch.ops.minipt.bias_gelu.default, (r(3, 7, 11), r(11), "none")),
        "bias_gelu_backward": (torch.ops.minipt.bias_gelu_backward.default, (g(3, 7, 11), g(3, 7, 11), g(11), "tanh")),
        "layer_norm": (torch.ops.minipt.layer_norm.default, (r(3, 7, 11), r(11), r(11), 1e-5)),
        "add_layer_norm": (torch.ops.minipt.add_layer_norm.default, (r(3, 7, 11), r(3, 7, 11), r(11), r(11), 1e-5)),
        "layer_norm_backward": (torch.ops.minipt.layer_norm_backward.default, (g(3, 11), g(3, 11), g(3, 11), g(11), 1e-5)),
        "layer_norm_backward_no_residual": (torch.ops.minipt.layer_norm_backward.default,
                                            (g(3, 11), g(3, 11), None, g(11), 1e-5)),
        "lstm_gates": (torch.ops.minipt.lstm_gates.default, (r(4, 24), r(4, 6))),
        "lstm_gates_backward": (torch.ops.minipt.lstm_gates_backward.default, (g(4, 6), g(4, 6), g(4, 24), g(4, 6))),
        "gru_gates": (torch.ops.minipt.gru_gates.default, (r(4, 18), r(4, 18), r(4, 6))),
        "gru_gates_backward": (torch.ops.minipt.gru_gates_backward.default, (g(4, 6), g(4, 18), g(4, 18), g(4, 6))),
    }


@pytest.mark.parametrize("case", list(opcheck_cases()))
def test_opcheck(case):
    op, args = opcheck_cases()[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("name", OPS)
def test_reference_gradcheck_float64(name):
    tensors, kwargs = inputs(name, torch.float64, requires_grad=True)
    differentiable = [t for t in tensors if t.requires_grad]

    def function(*xs):
        it = iter(xs)
        return call(name, [next(it) if t.requires_grad else t for t in tensors], kwargs)

    assert torch.autograd.gradcheck(function, differentiable)


@pytest.mark.parametrize("residual", [False, True])
def test_layer_norm_backward_cpu_kernel_matches_its_reference(residual):
    """The CPU kernel (aten's native_layer_norm_backward) gives the reference's three gradients in float32,
    within float32 rounding of values of their size; float64 runs the reference itself."""
    from minipt.ops._layer_norm import layer_norm_backward_cpu, layer_norm_backward_reference

    generator = torch.Generator().manual_seed(0)
    x, grad = (torch.randn(6, 7, 96, generator=generator) for _ in range(2))
    res = torch.randn(6, 7, 96, generator=generator) if residual else None
    weight = torch.randn(96, generator=generator)
    got = layer_norm_backward_cpu(grad, x, res, weight, 1e-5)
    exact = layer_norm_backward_reference(*(t.double() if t is not None else None for t in (grad, x, res, weight)), 1e-5)
    for g, e in zip(got, exact):
        assert g.dtype == torch.float32 and g.shape == e.shape
        assert (g.double() - e).abs().max() <= 1e-5 * e.abs().max()
    # the op on the CPU runs it: the same gradients through autograd
    x.requires_grad_(True)
    out = ops.layer_norm(x, weight, torch.zeros(96), eps=1e-5) if res is None else ops.add_layer_norm(x, res, weight, torch.zeros(96), eps=1e-5)
    (x_grad,) = torch.autograd.grad(out, x, grad)
    assert torch.equal(x_grad, got[0])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_backward_cpu_kernel_matches_its_reference(approximate):
    from minipt.ops._bias_gelu import bias_gelu_backward_cpu, bias_gelu_backward_reference

    generator = torch.Generator().manual_seed(0)
    x, grad = (3 * torch.randn(6, 7, 64, generator=generator) for _ in range(2))
    bias = torch.randn(64, generator=generator)
    got = bias_gelu_backward_cpu(grad, x, bias, approximate)
    exact = bias_gelu_backward_reference(grad.double(), x.double(), bias.double(), approximate)
    for g, e in zip(got, exact):
        assert g.dtype == torch.float32 and g.shape == e.shape
        assert (g.double() - e).abs().max() <= 1e-5 * e.abs().max()
    x.requires_grad_(True)
    (x_grad,) = torch.autograd.grad(ops.bias_gelu(x, bias, approximate=approximate), x, grad)
    assert torch.equal(x_grad, got[0])


def test_attention_reference_matches_the_definition():
    """softmax(q k^T * scale + mask) v with the bottom-right causal mask, and zeros for unseen rows."""
    q, k, v, keep = attention_inputs(torch.float64)
    T, S = q.shape[2], k.shape[2]
    out = ops.attention(q, k, v, keep, causal=True, scale=0.3)
    i = torch.arange(T)[:, None]
    j = torch.arange(S)[None, :]
    allowed = keep[:, None, None, :] & (j <= i + S - T)  # (B, 1, T, S)
    scores = (q @ k.transpose(-2, -1) * 0.3).masked_fill(~allowed, float("-inf"))
    expected = torch.nan_to_num(scores.softmax(-1)) @ v
    assert torch.allclose(out, expected, atol=1e-12)
    # a query that sees no key at all gives zeros, and passes zero gradient
    keep_none = torch.zeros_like(keep)
    q.requires_grad_(True)
    out = ops.attention(q, k, v, keep_none)
    out.sum().backward()
    assert (out == 0).all() and (q.grad == 0).all()
    assert torch.allclose(ops.attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_recurrent_gates_match_torch_nn():
    """One step of torch.nn.LSTMCell / GRUCell equals the matrix multiplies + the gate ops."""
    x, h, c = torch.randn(4, 5), torch.randn(4, 6), torch.randn(4, 6)
    lstm, gru = torch.nn.LSTMCell(5, 6), torch.nn.GRUCell(5, 6)
    gates = x @ lstm.weight_ih.T + lstm.bias_ih + h @ lstm.weight_hh.T + lstm.bias_hh
    for mine, theirs in zip(ops.lstm_gates(gates, c), lstm(x, (h, c))):
        assert torch.allclose(mine, theirs, atol=1e-6)
    gi, gh = x @ gru.weight_ih.T + gru.bias_ih, h @ gru.weight_hh.T + gru.bias_hh
    assert torch.allclose(ops.gru_gates(gi, gh, h), gru(x, h), atol=1e-6)


class EveryOp(torch.nn.Module):
    """One function through all six ops, for torch.compile and torch.export."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.randn(8))
        self.weight = torch.nn.Parameter(1 + torch.randn(8) * 0.1)
        self.ln_bias = torch.nn.Parameter(torch.randn(8))

    def forward(self, q, k, v, keep, residual):
        B, H, T, D = q.shape
        x = ops.attention(q, k, v, keep, causal=True).transpose(1, 2).reshape(B, T, H * D)  # (B, T, 8)
        x = ops.bias_gelu(x, self.bias)
        x = ops.add_layer_norm(x, residual, self.weight, self.ln_bias, 1e-5)
        x = ops.layer_norm(x, self.weight, self.ln_bias, 1e-5)
        flat = x.reshape(B * T, 8)
        h, c = ops.lstm_gates(flat.repeat(1, 4) * 0.5, flat)
        return ops.gru_gates(h.repeat(1, 3), c.repeat(1, 3), h)


def every_op_inputs():
    q = torch.randn(2, 2, 5, 4, requires_grad=True)
    k, v = torch.randn(2, 2, 7, 4), torch.randn(2, 2, 7, 4)
    keep = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    return q, k, v, keep, torch.randn(2, 5, 8)


def test_torch_compile_fullgraph_matches_eager():
    """aot_eager traces what inductor traces (fake tensors, functionalisation, the autograd
    formulas) without generating C++, which costs ~40 s on a cold cache; inductor itself is
    checked below on the forward alone."""
    model = EveryOp()
    q, *rest = every_op_inputs()
    eager = model(q, *rest)
    eager.sum().backward()
    eager_grads = [q.grad.clone()] + [p.grad.clone() for p in model.parameters()]
    q.grad = None
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(q, *rest)
    compiled.sum().backward()
    assert torch.allclose(compiled, eager, atol=1e-6)
    for mine, theirs in zip([q.grad] + [p.grad for p in model.parameters()], eager_grads):
        assert torch.allclose(mine, theirs, atol=1e-6)


@pytest.mark.usefixtures("fresh_compiler")
@torch.no_grad()
def test_inductor_fullgraph_matches_eager():
    model = EveryOp()
    inputs = every_op_inputs()
    assert torch.allclose(torch.compile(model, fullgraph=True)(*inputs), model(*inputs), atol=1e-6)


def test_torch_export_shows_each_op_as_one_node():
    program = torch.export.export(EveryOp(), every_op_inputs())
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    for name in ("attention", "bias_gelu", "add_layer_norm", "layer_norm", "lstm_gates", "gru_gates"):
        assert targets.count(f"minipt.{name}.default") == 1, targets


@pytest.mark.parametrize("bad_call, match", [
    (lambda: ops.attention(torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.randn(2, 3, 5)), "batch, heads"),
    (lambda: ops.attention(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4)), "do not match"),
    (lambda: ops.attention(*(torch.randn(1, 2, 5, 8) for _ in range(3)), torch.ones(1, 4, dtype=torch.bool)),
     r"\(1, 5\)"),
    (lambda: ops.attention(*(torch.randn(1, 2, 5, 8) for _ in range(3)), torch.ones(1, 5)), "bool"),
    (lambda: ops.bias_gelu(torch.randn(3, 4), torch.randn(5)), r"shape \(4,\)"),
    (lambda: ops.bias_gelu(torch.randn(3, 4), torch.randn(4), approximate="erf"), "approximation"),
    (lambda: ops.bias_gelu(torch.randn(3, 4), torch.randn(4, dtype=torch.float64)), "dtype"),
    (lambda: ops.layer_norm(torch.randn(3, 4), torch.randn(5), torch.randn(5), 1e-5), r"\(4,\)"),
    (lambda: ops.add_layer_norm(torch.randn(3, 4), torch.randn(3, 5), torch.randn(4), torch.randn(4), 1e-5),
     "residual"),
    (lambda: ops.lstm_gates(torch.randn(2, 12), torch.randn(2, 4)), "4 \\* hidden"),
    (lambda: ops.gru_gates(torch.randn(2, 12), torch.randn(2, 9), torch.randn(2, 4)), "3 \\* hidden"),
])
def test_bad_input_raises_input_error(bad_call, match):
    with pytest.raises(InputError, match=match):
        bad_call()
