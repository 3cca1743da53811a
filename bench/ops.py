"""minipt.ops' Triton kernels against the torch alternatives, on a CUDA GPU.

    python bench/ops.py [--repeats N] [--quick]

Shapes: BERT-base (B=8, T=512, 12 heads of 64, hidden 768, FFN 3072) and GPT-2 small (the
same with T=1024 and causal attention); the recurrent gates at batch 64, hidden 1024. Each op
forward and forward+backward, in float16 and bfloat16. Times are medians of CUDA-event timings
after warm-up, minipt's and its torch alternatives' timed in turns (bench/timing.py). For the
memory-bound ops (everything but attention) the table also gives the achieved bandwidth (bytes
that must move / time) as a fraction of the device's peak, measured in the same run with a
large device-to-device copy. Prints one markdown table.

Each case first checks that minipt's output and the gradients of its inputs match the torch
alternative's (a wrong kernel is not timed); ratios are minipt / torch, below 1 is faster. The "minipt" column is the Triton kernel (``MINIPT_CUDA_KERNELS=triton`` is set here,
unless given): the choice ``minipt.ops.cuda`` makes per shape is then printed for the same cases
(with ``MINIPT_CUDA_KERNELS`` unset, minipt runs whichever of the two it measured faster).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
os.environ.setdefault("MINIPT_CUDA_KERNELS", "triton")  # the kernels themselves are what this measures

import minipt.ops as ops  # noqa: E402
from timing import Table, cuda_events, medians, print_header, round_robin  # noqa: E402

SHAPES = {
    "BERT-base": dict(B=8, T=512, heads=12, head_dim=64, hidden=768, ffn=3072, causal=False),
    "GPT-2 small": dict(B=8, T=1024, heads=12, head_dim=64, hidden=768, ffn=3072, causal=True),
}
RNN = dict(B=64, hidden=1024)


WARMUP = 5


def peak_bandwidth(repeats: int) -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write)."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    seconds = round_robin({"copy": lambda: dst.copy_(src)}, repeats, warmup=WARMUP, timer=cuda_events)["copy"].median
    return 2 * src.numel() / seconds


def forward_backward(fn, inputs, grad_outputs):
    """A closure running fn forward and backward (gradients freed each time)."""
    def run():
        for t in inputs:
            t.grad = None
        outputs = fn()
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        torch.autograd.backward(outputs, grad_outputs)
    return run


def measure(fns: dict, label, inputs, grad_outputs, repeats) -> dict[str, float]:
    """Median milliseconds of each of ``fns``, forward only ("fwd", no autograd) or forward and backward, timed in turns."""
    if label == "fwd":
        with torch.no_grad():
            timings = round_robin(fns, repeats, warmup=WARMUP, timer=cuda_events)
    else:
        runs = {name: forward_backward(fn, inputs, grad_outputs) for name, fn in fns.items()}
        timings = round_robin(runs, repeats, warmup=WARMUP, timer=cuda_events)
    return {name: seconds * 1e3 for name, seconds in medians(timings).items()}


def leaf(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype).requires_grad_(True)


def check_close(name, mine, theirs, dtype):
    mine = mine if isinstance(mine, tuple) else (mine,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    for a, b in zip(mine, theirs):
        err = (a.float() - b.float()).abs().max().item() / max(b.float().abs().max().item(), 1e-6)
        if err > tol:
            raise SystemExit(f"{name}: minipt and torch differ by {err:.3g} (relative to the largest value)")


def check_gradients(name, mine, theirs, inputs, grad_outputs, dtype):
    """minipt's backward against the torch alternative's: the gradients of every input, as check_close compares."""
    forward_backward(mine, inputs, grad_outputs)()
    ours = [None if t.grad is None else t.grad.clone() for t in inputs]
    forward_backward(theirs, inputs, grad_outputs)()
    for i, (a, t) in enumerate(zip(ours, inputs)):
        if (a is None) != (t.grad is None):
            raise SystemExit(f"{name}: input {i} has a gradient from {'torch' if a is None else 'minipt'} only")
        if a is not None:
            check_close(f"{name}, the gradient of input {i}", a, t.grad, dtype)


def cases(dtype):
    """(op, shape name, minipt fn, torch alternatives {name: fn}, inputs, grad_outputs, bytes fwd, bytes fwd+bwd)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    size = torch.tensor([], dtype=dtype).element_size()
    for shape_name, s in SHAPES.items():
        B, T, H, D = s["B"], s["T"], s["heads"], s["head_dim"]
        q, k, v = (leaf(B, H, T, D, dtype=dtype) for _ in range(3))
        grad = torch.randn(B, H, T, D, device="cuda", dtype=dtype)

        def flash(q=q, k=k, v=v, causal=s["causal"]):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        yield ("attention", shape_name, lambda q=q, k=k, v=v, c=s["causal"]: ops.attention(q, k, v, causal=c),
               {"SDPA flash": flash}, [q, k, v], [grad], None, None)

        M, N = B * T, s["ffn"]
        x, bias = leaf(M, N, dtype=dtype), leaf(N, dtype=dtype)
        grad = torch.randn(M, N, device="cuda", dtype=dtype)
        eager = lambda x=x, bias=bias: F.gelu(x + bias)  # noqa: E731
        yield ("bias_gelu", shape_name, lambda x=x, bias=bias: ops.bias_gelu(x, bias),
               {"eager": eager, "compiled": torch.compile(eager)}, [x, bias], [grad],
               2 * M * N * size, 5 * M * N * size)  # fwd: x, y; bwd also: x, grad, grad_x

        N = s["hidden"]
        x, residual = leaf(M, N, dtype=dtype), leaf(M, N, dtype=dtype)
        weight, ln_bias = leaf(N, dtype=dtype), leaf(N, dtype=dtype)
        grad = torch.randn(M, N, device="cuda", dtype=dtype)
        yield ("layer_norm", shape_name, lambda: ops.layer_norm(x, weight, ln_bias, 1e-12),
               {"F.layer_norm": lambda: F.layer_norm(x, (N,), weight, ln_bias, 1e-12)},
               [x, weight, ln_bias], [grad], 2 * M * N * size, 5 * M * N * size)
        yield ("add_layer_norm", shape_name, lambda: ops.add_layer_norm(x, residual, weight, ln_bias, 1e-12),
               {"F.layer_norm(x + r)": lambda: F.layer_norm(x + residual, (N,), weight, ln_bias, 1e-12)},
               [x, residual, weight, ln_bias], [grad], 3 * M * N * size, 7 * M * N * size)

    Bn, Hn = RNN["B"], RNN["hidden"]
    gates, c = leaf(Bn, 4 * Hn, dtype=dtype), leaf(Bn, Hn, dtype=dtype)
    grads = [torch.randn(Bn, Hn, device="cuda", dtype=dtype) for _ in range(2)]

    def lstm_eager(gates=gates, c=c):
        i, f, g, o = gates.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new

    yield ("lstm_gates", f"B={Bn}, H={Hn}", lambda: ops.lstm_gates(gates, c), {"eager gate math": lstm_eager},
           [gates, c], grads, 7 * Bn * Hn * size, 19 * Bn * Hn * size)

    gi, gh, h = leaf(Bn, 3 * Hn, dtype=dtype), leaf(Bn, 3 * Hn, dtype=dtype), leaf(Bn, Hn, dtype=dtype)

    def gru_eager(gi=gi, gh=gh, h=h):
        (ir, iz, in_), (hr, hz, hn) = gi.chunk(3, 1), gh.chunk(3, 1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        return (1 - z) * torch.tanh(in_ + r * hn) + z * h

    yield ("gru_gates", f"B={Bn}, H={Hn}", lambda: ops.gru_gates(gi, gh, h), {"eager gate math": gru_eager},
           [gi, gh, h], grads[:1], 8 * Bn * Hn * size, 23 * Bn * Hn * size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="float16 only, 10 repeats")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/ops.py measures Triton kernels on a CUDA GPU; this machine has none "
                         "(the kernels' correctness is tested on CPU by tests/test_ops_kernels.py).")
    import triton

    repeats = 10 if args.quick else args.repeats
    dtypes = [torch.float16] if args.quick else [torch.float16, torch.bfloat16]
    peak = peak_bandwidth(repeats)
    print_header(f"triton {triton.__version__}", f"measured copy bandwidth {peak / 1e9:.0f} GB/s")
    table = Table(["op", "shape", "dtype", "pass", "minipt ms", "torch alternative", "torch ms", "minipt / torch", "minipt bandwidth / peak"])
    for dtype in dtypes:
        for op, shape, mine, alternatives, inputs, grad_outputs, bytes_fwd, bytes_fwd_bwd in cases(dtype):
            reference = next(iter(alternatives.values()))
            with torch.no_grad():
                check_close(f"{op} {shape}", mine(), reference(), dtype)
            check_gradients(f"{op} {shape}", mine, reference, inputs, grad_outputs, dtype)  # the fwd+bwd rows time the backward kernels too
            dtype_name = str(dtype).removeprefix("torch.")
            for label, moved in (("fwd", bytes_fwd), ("fwd+bwd", bytes_fwd_bwd)):
                t = measure({"minipt": mine, **alternatives}, label, inputs, grad_outputs, repeats)
                ms = t["minipt"]
                fraction = f"{moved / (ms * 1e-3) / peak:.2f}" if moved else "-"
                for name in alternatives:
                    table.row(op, shape, dtype_name, label, f"{ms:.3f}", name, f"{t[name]:.3f}", f"{ms / t[name]:.2f}", fraction)
    if os.environ["MINIPT_CUDA_KERNELS"] == "triton":  # what minipt chooses on these cases when left to measure
        del os.environ["MINIPT_CUDA_KERNELS"]
        for dtype in dtypes:
            for _, _, mine, _, inputs, grad_outputs, _, _ in cases(dtype):
                forward_backward(mine, inputs, grad_outputs)()  # each op and its backward op choose once per shape
        print()
        print(ops.cuda_report())


if __name__ == "__main__":
    main()
