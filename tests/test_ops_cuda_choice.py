"""minipt.ops.cuda: the choice between an op's Triton kernel and torch's kernels on CUDA, checked without a GPU
(the clock, the device queries and the candidates replaced); the candidates themselves are checked against the
references in tests/test_ops.py and, on a GPU, tests/test_ops_kernels.py."""

import pytest
import torch

from minipt.ops import _attention, _register, _timing, cuda


@pytest.fixture
def clock(monkeypatch):
    """A fake clock that each candidate moves on by its own cost; no device to wait for, no capture."""
    now = [0.0]
    monkeypatch.setattr(_timing.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(cuda, "_synchronize", lambda: None)
    monkeypatch.setattr(cuda, "_capturing", lambda: False)
    monkeypatch.setattr(cuda, "_choices", {})
    monkeypatch.setattr(cuda, "_by_shape", {})
    monkeypatch.delenv(cuda.KERNELS_ENV, raising=False)

    def candidate(cost, calls):
        def run(*args):
            calls.append(args)
            now[0] += cost
        return run

    return candidate


def test_the_faster_is_kept_per_shape_class(clock):
    triton_calls, torch_calls = [], []
    triton, torch_version = clock(1.0, triton_calls), clock(0.5, torch_calls)
    x = torch.zeros(100, 768)
    assert cuda.kernel("layer_norm", (x, None, 1e-5), triton, torch_version) == "torch"
    assert len(triton_calls) == len(torch_calls) == 6  # a warm-up and five timed calls each, alternated
    assert cuda.kernel("layer_norm", (x, None, 1e-5), triton, torch_version) == "torch" and len(torch_calls) == 6  # the same call
    # the same class (rows 65..128, the same width, dtype and flags) is not measured again
    assert cuda.kernel("layer_norm", (torch.zeros(128, 768), None, 1e-3), triton, torch_version) == "torch"
    assert len(torch_calls) == 6
    # another class is: here torch's kernels lose
    slow_torch = clock(2.0, torch_calls)
    assert cuda.kernel("layer_norm", (torch.zeros(129, 768), None, 1e-5), triton, slow_torch) == "triton"
    assert cuda.kernel("layer_norm", (x.double(), None, 1e-5), triton, slow_torch) == "triton"  # dtype makes a class
    assert set(cuda.choices().values()) == {"torch", "triton"} and len(cuda.choices()) == 3


def test_triton_is_kept_unless_torch_wins_by_the_margin(clock):
    assert cuda.kernel("bias_gelu", (torch.zeros(8, 8),), clock(1.0, []), clock(0.97, [])) == "triton"
    assert _timing.faster({"a": clock(1.0, []), "b": clock(1.0, [])}, calls=2, favoured="b") == "b"  # a tie keeps the favoured


def test_forced_and_captured_choices_measure_nothing(clock, monkeypatch):
    calls = []
    monkeypatch.setenv(cuda.KERNELS_ENV, "torch")
    assert cuda.kernel("layer_norm", (torch.zeros(4, 4),), clock(1.0, calls), clock(2.0, calls)) == "torch"
    monkeypatch.setenv(cuda.KERNELS_ENV, "triton")
    assert cuda.kernel("layer_norm", (torch.zeros(4, 4),), clock(2.0, calls), clock(1.0, calls)) == "triton"
    monkeypatch.delenv(cuda.KERNELS_ENV)
    monkeypatch.setattr(cuda, "_capturing", lambda: True)  # a CUDA graph being captured: no synchronising
    assert cuda.kernel("layer_norm", (torch.zeros(4, 4),), clock(2.0, calls), clock(1.0, calls)) == "triton"
    assert calls == [] and cuda.choices() == {}  # and nothing cached: the next call outside the capture measures


def test_the_shape_class():
    key = cuda.shape_class((torch.zeros(3, 100, dtype=torch.bfloat16), None, True, "tanh", 1e-5))
    assert key == ((torch.bfloat16, (4, 128)), None, True, "tanh", "float")


def test_an_op_on_cuda_runs_what_was_chosen(monkeypatch):
    """The function registered for CUDA tensors runs torch's version where the choice says so (called here on CPU
    tensors: the Triton launcher is never reached), and never asks for float64, which only the reference takes."""
    asked = []

    def choose(answer):
        def kernel(name, args, triton, torch_version):
            asked.append(name)
            return answer
        return kernel

    def no_triton(name):
        raise AssertionError(f"the Triton launcher ran ({name})")

    monkeypatch.setattr(_register.importlib, "import_module", no_triton)  # where the launcher finds its kernel
    x, weight, bias = torch.randn(5, 16), torch.randn(16), torch.randn(16)
    monkeypatch.setattr(cuda, "kernel", choose("torch"))
    out = _register.ON_CUDA["layer_norm"](x, weight, bias, 1e-5)
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x, (16,), weight, bias, 1e-5), rtol=0, atol=1e-6)
    assert asked == ["layer_norm"]
    out = _register.ON_CUDA["layer_norm"](x.double(), weight.double(), bias.double(), 1e-5)  # the kernels do not take float64
    assert out.dtype == torch.float64 and asked == ["layer_norm"]
    grads = _register.ON_CUDA["bias_gelu_backward"](torch.randn(5, 16), x, bias, "none")  # aten's backward is torch's version
    assert [tuple(g.shape) for g in grads] == [(5, 16), (16,)]
    monkeypatch.setattr(cuda, "kernel", choose("triton"))
    with pytest.raises(AssertionError, match="the Triton launcher ran"):
        _register.ON_CUDA["layer_norm"](x, weight, bias, 1e-5)


def test_attention_competes_only_where_its_scores_fit(monkeypatch):
    asked = []
    monkeypatch.setattr(_register.importlib, "import_module", lambda name: pytest.fail(f"the Triton launcher ran ({name})"))
    monkeypatch.setattr(cuda, "kernel", lambda name, *rest: asked.append(name) or "torch")
    q = torch.randn(1, 2, 3, 8)
    out, lse = _register.ON_CUDA["attention"](q, q, q, None, False, 0.5)
    torch.testing.assert_close(out, _attention.attention_reference(q, q, q, None, False, 0.5)[0])
    assert asked == ["attention"]
    assert not _attention._scores_fit(torch.empty(8, 16, 4096, 64, device="meta"), torch.empty(8, 16, 4096, 64, device="meta"))


def test_the_report_lists_each_choice(clock, monkeypatch):
    cuda.kernel("layer_norm", (torch.zeros(100, 768), None, 1e-5), clock(1.0, []), clock(0.5, []))
    cuda.kernel("attention", (torch.zeros(8, 12, 512, 64, dtype=torch.float16),), clock(1.0, []), clock(3.0, []))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (9, 0))
    report = cuda.report().splitlines()
    assert report[0] == "CUDA: NVIDIA H100 (compute capability 9.0)"
    assert report[2:] == ["    attention (8x16x512x64 float16): triton", "    layer_norm (128x1024 float32): torch"]
