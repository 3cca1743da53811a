"""What this CPU does in hardware, and so which kernel each fast path takes: decided here only.

    from minipt import ops
    print(ops.cpu_report())            # the CPU and each fused op's implementation (`minipt info`)
    ops.native(torch.bfloat16)         # True where the CPU multiplies bfloat16 in hardware

The answers come from capability queries, read once on first use and never on import: the CPU's
flags (``/proc/cpuinfo`` on Linux), ``torch.backends.cpu.get_cpu_capability()`` (the kernels aten
dispatches to, which ``ATEN_CPU_CAPABILITY`` caps), whether torch was built with oneDNN, and
``ONEDNN_MAX_CPU_ISA`` (the cap oneDNN honours). A reduced-precision dtype is fast only where it
is native:

========  ===============================================  ======================================
dtype     native on                                        elsewhere
========  ===============================================  ======================================
bfloat16  x86 AVX512-BF16 or AMX-BF16; ARM BF16 (bf16)     emulated: each product converts to
float16   x86 AVX512-FP16 or AMX-FP16; ARM FP16 (fphp)     float32 and back, several times slower
                                                           than float32
========  ===============================================  ======================================

``fuse(torch.bfloat16)`` on a CPU where bfloat16 is emulated warns once per process, naming the
CPU's capability and the slowdown a short timed probe measured (``F.linear`` in float32 and in
bfloat16 on the same sizes), and pointing to ``fuse()`` in float32, the fast path there.

Each Linear of a ``fuse()`` copy takes the fastest of oneDNN's packed matmul, aten's ``F.linear``
and, at a few rows (up to ``FEW_ROWS``) on several threads, ``F.linear`` in blocks of output
features on torch's threads (``onednn.linear_in_blocks``) for its shape on this CPU
(``linear_kernel``): oneDNN ran twice as fast as MKL on one AVX-512 host, 1.15x on another, and
slower on an AVX2 one, where a product of one row in blocks ran 1.6x as fast as ``F.linear``. The
answer is measured once per process and shape class (the rows rounded up to a power of two, the
weight's shape, the activation, whether a residual is added), in a few milliseconds, when the first
copy of that shape is made; ``F.linear``, what the unfused model runs, keeps a class unless another
kernel is more than 5% faster.
``MINIPT_LINEAR=onednn``, ``=aten`` or ``=blocks`` fixes it instead (the tests fix oneDNN's path,
to check it where it runs). At a few rows (up to
``FEW_ROWS``) the product may also run faster on one thread than on several (``linear_threads``,
measured the same way): a ``PackedLinear`` then sets one thread for that call only and restores
torch's setting after it, whatever happens.

The same measured choice serves the two other places that multiply on oneDNN: the ``"fused"``
backend's Linear in training (``linear``: oneDNN's three unpacked matmuls, forward and backward,
timed against ``F.linear`` and its backward at the layer's shape, ``training_linear_kernel``), and
the recurrent layers' products with W_hh at every step (``minipt.ops.recurrent``, through
``linear_kernel`` at the batch's rows).
"""

from __future__ import annotations

import functools
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from . import onednn
from ._timing import faster

NATIVE_FLAGS = {  # dtype -> CPU flags (x86 /proc/cpuinfo names, ARM Features names) that make it native
    torch.bfloat16: frozenset({"avx512_bf16", "amx_bf16", "bf16"}),
    torch.float16: frozenset({"avx512_fp16", "amx_fp16", "fphp"}),
}
ISA_FLAGS = (  # x86: oneDNN's instruction-set level, from the most capable down: (name, flags it needs)
    ("avx512_core_amx", ("amx_tile", "amx_bf16", "avx512_bf16")),
    ("avx512_core_fp16", ("avx512_fp16", "avx512_bf16")),
    ("avx512_core_bf16", ("avx512_bf16", "avx512bw")),
    ("avx512_core_vnni", ("avx512_vnni", "avx512bw")),
    ("avx512_core", ("avx512bw", "avx512vl", "avx512dq")),
    ("avx2", ("avx2", "fma")),
    ("avx", ("avx",)),
    ("sse41", ("sse4_1",)),
)
NATIVE_ISA = {  # x86: the oneDNN levels that run a dtype's products in hardware (a lower ONEDNN_MAX_CPU_ISA emulates)
    torch.bfloat16: ("avx512_core_amx", "avx512_core_fp16", "avx512_core_bf16"),
    torch.float16: ("avx512_core_amx", "avx512_core_fp16"),
}


@dataclass(frozen=True)
class CPUInfo:
    """The capability answers every decision reads (tests build one to stand for another CPU)."""

    model: str  # "AMD EPYC 9B14"
    capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", "SVE256", ...
    flags: frozenset[str]  # /proc/cpuinfo's flags (x86) or Features (ARM)
    onednn: bool  # torch built with oneDNN, and MINIPT_ONEDNN not "0"
    isa_cap: str | None = None  # ONEDNN_MAX_CPU_ISA, lower-cased, where set

    @property
    def onednn_isa(self) -> str:
        """oneDNN's instruction-set level: the best the flags allow, no higher than ONEDNN_MAX_CPU_ISA."""
        names = [name for name, _ in ISA_FLAGS]
        best = next((name for name, needs in ISA_FLAGS if all(flag in self.flags for flag in needs)), "generic")
        if self.isa_cap in names and best in names and names.index(self.isa_cap) > names.index(best):
            return self.isa_cap
        return best


def _flags_and_model() -> tuple[frozenset[str], str]:
    flags, model = set(), platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware") and model in ("", platform.processor(), platform.machine()):
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
                    break  # the first processor's entry says it for all
    except OSError:
        pass
    return frozenset(flags), model


@functools.cache
def cpu() -> CPUInfo:
    """This machine's answers, read on the first call."""
    flags, model = _flags_and_model()
    return CPUInfo(
        model=model,
        capability=torch.backends.cpu.get_cpu_capability(),
        flags=flags,
        onednn=torch.backends.mkldnn.is_available() and not onednn.switched_off(),
        isa_cap=os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().lower() or None,
    )


def native(dtype: torch.dtype, info: CPUInfo | None = None) -> bool:
    """Whether the CPU computes ``dtype`` in hardware (float32 and float64 always; bfloat16 and float16
    where the flags say so, and oneDNN's instruction-set cap does not forbid it)."""
    info = info or cpu()
    if dtype not in NATIVE_FLAGS:
        return True
    if not info.flags & NATIVE_FLAGS[dtype]:
        return False
    x86 = "sse4_1" in info.flags or "avx2" in info.flags
    return info.onednn_isa in NATIVE_ISA[dtype] if x86 else True


INT8_ISA = ("avx512_core_amx", "avx512_core_fp16", "avx512_core_bf16", "avx512_core_vnni")  # x86: VNNI's dot products


def int8_products_exact(info: CPUInfo | None = None) -> bool:
    """Whether int8 x int8 matrix products (torch._int_mm, oneDNN) are exact here. Below VNNI, oneDNN's x86
    kernels add pairs of u8 x s8 products in 16 bits, which saturate (vpmaddubsw): a quantised BERT's logits
    moved 15-40% where they move 1% with VNNI. ARM's dot products accumulate in 32 bits."""
    info = info or cpu()
    x86 = "sse4_1" in info.flags or "avx2" in info.flags
    return info.onednn_isa in INT8_ISA if x86 else True


def torch_lstm_runs(dtype: torch.dtype, info: CPUInfo | None = None) -> bool:
    """Whether torch's own LSTM kernel runs under CPU autocast to ``dtype``: there it takes oneDNN's LSTM,
    which builds no reduced-precision primitive on a CPU without it in hardware ("could not create a
    primitive descriptor": bfloat16 on an AVX2 CPU, float16 on most), where minipt's cells compute it."""
    return native(dtype, info)


def detector_dtype(info: CPUInfo | None = None) -> torch.dtype:
    """The dtype ``minipt.ocr``'s default text detector (CRAFT, ``fuse(dtype)``) runs in here: bfloat16 where the CPU
    computes it in hardware, float32 elsewhere. On a 2-core AVX512-BF16 EPYC the bfloat16 detector took 0.49 of
    float32's time on a 1152 x 573 page, and the pipeline read bench/ocr_set.py's set as well (word accuracy 0.735
    against 0.731, CER 0.174 against 0.169: docs/benchmarks.md, OCR accuracy); where bfloat16 is emulated it is
    several times slower."""
    return torch.bfloat16 if native(torch.bfloat16, info) else torch.float32


@functools.cache
def slowdown(dtype: torch.dtype) -> float:
    """How many times longer a Linear's product, ``F.linear`` of (256, 512) rows with a (512, 512) weight, takes in
    ``dtype`` than in float32 here: the median of five timed runs of each, after one untimed; measured once per
    process. (The weight's layout matters: on a 2-core AVX2 EPYC ``torch.mm`` with the (in, out) matrix ran 100x
    slower in bfloat16, ``F.linear``, which every Linear calls, 7x.)"""
    generator = torch.Generator().manual_seed(0)
    a, w = torch.randn(256, 512, generator=generator), torch.randn(512, 512, generator=generator)
    seconds = {}
    for kind, (x, y) in {"float32": (a, w), "reduced": (a.to(dtype), w.to(dtype))}.items():
        F.linear(x, y)
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            F.linear(x, y)
            runs.append(time.perf_counter() - start)
        seconds[kind] = sorted(runs)[2]
    return seconds["reduced"] / max(seconds["float32"], 1e-9)


_warned: set[torch.dtype] = set()


def warn_if_emulated(dtype: torch.dtype, what: str = "fuse()") -> None:
    """One warning per process and dtype where ``dtype`` is not native on this CPU."""
    if dtype in _warned or native(dtype):
        return
    _warned.add(dtype)
    info = cpu()
    name = str(dtype).removeprefix("torch.")
    warnings.warn(
        f"{what} in {name} on this CPU ({info.model}, torch capability {info.capability}, no native {name} "
        f"instructions): {name} is emulated here, and a matrix product measured {slowdown(dtype):.1f}x the time "
        f"of float32's; fuse() in float32 is the fast path on this CPU", RuntimeWarning, stacklevel=3)


LINEAR_ENV = "MINIPT_LINEAR"  # one of onednn.KERNELS: every fuse() Linear takes it; unset: the fastest, measured
_linear_choices: dict[tuple, str] = {}  # (dtype, rows, in, out, activation, residual) -> one of onednn.KERNELS
_reused_choices: dict[tuple, str] = {}  # the same, for a weight multiplied at every step: "onednn" | "aten"
TIMED_WORK = 1 << 31  # multiply-adds of one timed product of many rows (about 33 ms at 130 GFLOP/s) ...
TIMED_ROWS = 512  # ... but never fewer rows than this: the kernels rank by rows (a base model's 4096 at 910)


def _forced_kernel() -> str | None:
    """The kernel ``MINIPT_LINEAR`` forces (one of ``onednn.KERNELS``), None where it is unset; another value is a
    ConfigError naming it (a misspelt choice measured the kernels instead, without a word)."""
    forced = os.environ.get(LINEAR_ENV, "").strip().lower()
    if forced and forced not in onednn.KERNELS:
        raise ConfigError(f"{LINEAR_ENV}={os.environ[LINEAR_ENV]!r}: expected one of {', '.join(onednn.KERNELS)} (or unset: the fastest, measured)")
    return forced or None


def linear_kernel(dtype: torch.dtype, rows: int, in_features: int, out_features: int, activation: str | None = None,
                  *, reused: bool = False, residual: bool = False) -> str:
    """``"onednn"``, ``"aten"`` or ``"blocks"``: the kernel a ``fuse()`` Linear of this shape takes here (see the module's
    doc). ``residual``: the product adds a residual (oneDNN in its epilogue, the others after it), and is timed so.
    ``reused``: one weight multiplied at every step (a recurrent layer's W_hh, which stays in the cache): only
    ``"onednn"`` or ``"aten"``, timed on the one weight."""
    forced, with_onednn = _forced_kernel(), cpu().onednn and onednn.available(dtype)
    if reused:
        if not with_onednn or forced in ("onednn", "aten"):
            return forced if with_onednn and forced else "aten"
        key = (dtype, _rows_class(rows), in_features, out_features, activation)
        if key not in _reused_choices:
            _reused_choices[key] = _faster_linear(*key, reused=True)
        return _reused_choices[key]
    if forced:
        return forced if with_onednn or forced != "onednn" else "aten"
    if not (with_onednn or _blocks_apply(rows, out_features)):
        return "aten"
    key = (dtype, _rows_class(rows), in_features, out_features, activation, residual)
    if key not in _linear_choices:
        _linear_choices[key] = _faster_linear(*key)
    return _linear_choices[key]


def _faster_linear(dtype: torch.dtype, rows: int, in_features: int, out_features: int, activation: str | None,
                   residual: bool = False, reused: bool = False) -> str:
    """Time oneDNN's packed matmul (with its post-op, where oneDNN runs) against ``F.linear`` and the activation,
    and at up to ``FEW_ROWS`` rows on several threads against ``onednn.linear_in_blocks`` (one block per thread), on random
    tensors of this shape (adding a residual where the layer does): one warm-up each, then five alternated calls each.
    Each keeps its fastest call (on a shared machine the steadier estimate); oneDNN or the blocks win over F.linear,
    what the unfused model runs, only by more than 5%, so that a choice within the timing's noise does not make a
    fused copy slower than its model. At a few rows each call multiplies ``_streamed`` copies of the
    weight, one after the other, as a model's layers do; at many, at most ``TIMED_WORK`` multiply-adds and no fewer
    than ``TIMED_ROWS`` rows (a language model's head at 4096 rows took 12 s to time). ``reused``:
    oneDNN against F.linear on the one weight, in the cache (``linear_kernel``)."""
    if rows > TIMED_ROWS:
        rows = max(TIMED_ROWS, min(rows, TIMED_WORK // (in_features * out_features)))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=generator).to(dtype)
    weight = torch.randn(out_features, in_features, generator=generator).to(dtype) / in_features ** 0.5
    weights = [weight] + [weight.clone() for _ in range(_streamed(weight) - 1 if rows <= FEW_ROWS and not reused else 0)]
    bias = torch.zeros(out_features, dtype=dtype)
    added = torch.randn(rows, out_features, generator=generator).to(dtype) if residual else None  # (rows, out)
    plain = onednn.ACTIVATIONS[activation][1]

    def then_add(out: torch.Tensor) -> torch.Tensor:
        return out if added is None else out + added

    cases = {"aten": lambda: [then_add(plain(F.linear(x, w, bias))) for w in weights]}
    if cpu().onednn and onednn.available(dtype):
        packed = [onednn.pack_linear(w, bias, activation, batch_hint=rows) for w in weights]
        cases["onednn"] = lambda: [p(x, residual=added) for p in packed]
    if _blocks_apply(rows, out_features) and not reused:
        blocks = torch.get_num_threads()
        cases["blocks"] = lambda: [then_add(plain(onednn.linear_in_blocks(x, w, bias, blocks))) for w in weights]
    with torch.inference_mode():
        return faster(cases, calls=5, favoured="aten")


@functools.cache
def _largest_cache() -> int:
    """The CPU's largest cache in bytes (sysfs; 32 MiB where it does not say)."""
    largest = 32 << 20
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = (index / "size").read_text().strip()
            largest = max(largest, int(size[:-1]) << {"K": 10, "M": 20, "G": 30}[size[-1]] if size[-1] in "KMG" else int(size))
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return largest


def _streamed(weight: torch.Tensor) -> int:
    """How many copies of ``weight`` fill twice the largest cache (at most 64): multiplied one after the other, each
    is read from memory, as a model's weights are at a few rows (each used once per step, the others read in
    between). Timed on one weight, which stays in the cache, a product of a few rows runs several times faster than
    in the model, and the kernels rank otherwise: on a 2-core AVX2 host F.linear beat the blocks at one row on a
    cached 512x512 weight, and lost by 1.6x over a T5 decoder step's weights."""
    return max(1, min(64, -(-2 * _largest_cache() // (weight.numel() * weight.element_size()))))


def _blocks_apply(rows: int, out_features: int) -> bool:
    """Whether ``linear_in_blocks`` is a candidate: a few rows, several threads, the outputs in equal blocks."""
    threads = torch.get_num_threads()
    return rows <= FEW_ROWS and threads > 1 and out_features % threads == 0


_thread_choices: dict[tuple, int] = {}  # (kernel, dtype, rows class, in, out, activation) -> 1 or 0 (torch's own)
FEW_ROWS = 64  # up to this many rows a product may run faster on one thread than on several


def linear_threads(kernel: str, dtype: torch.dtype, rows: int, in_features: int, out_features: int,
                   activation: str | None = None) -> int:
    """1 where a ``fuse()`` Linear of this shape on ``kernel`` runs faster on one thread than on torch's
    ``get_num_threads()`` at this many rows (a few rows: waking the other threads costs more than they
    save, and a descheduled one stalls the product), else 0 (torch's setting). Measured once per
    process and shape class, like ``linear_kernel``; ``PackedLinear`` scopes it to the one call."""
    threads = torch.get_num_threads()
    if threads == 1 or rows > FEW_ROWS or kernel == "blocks" or _forced_kernel():  # blocks: a product on all the threads
        return 0
    key = (kernel, dtype, _rows_class(rows), in_features, out_features, activation, threads)
    if key not in _thread_choices:
        _thread_choices[key] = _fewer_threads_faster(*key)
    return _thread_choices[key]


def _fewer_threads_faster(kernel: str, dtype: torch.dtype, rows: int, in_features: int, out_features: int,
                          activation: str | None, threads: int) -> int:
    """Time the product on ``threads`` threads against one thread, alternated, five calls each after a
    warm-up; one thread wins by more than 10% (its fastest call against the others')."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=generator).to(dtype)
    weight = torch.randn(out_features, in_features, generator=generator).to(dtype) / in_features ** 0.5
    linear = onednn.pack_linear(weight, None, activation, batch_hint=rows, use_onednn=kernel == "onednn")
    runs: dict[int, list[float]] = {threads: [], 1: []}
    with torch.inference_mode():
        try:
            for _ in range(6):
                for n in runs:
                    torch.set_num_threads(n)
                    start = time.perf_counter()
                    linear(x)
                    runs[n].append(time.perf_counter() - start)
        finally:
            torch.set_num_threads(threads)
    return 1 if min(runs[1][1:]) * 1.10 < min(runs[threads][1:]) else 0


_training_choices: dict[tuple, str] = {}  # (rows class, in, out, with gradients) -> "onednn" | "aten"


def training_linear_kernel(rows: int, in_features: int, out_features: int, grad: bool = True) -> str:
    """``"onednn"`` or ``"aten"``: the kernel the ``"fused"`` backend's float32 Linear takes at this shape
    here (forward and, with ``grad``, backward), measured once per process and shape class."""
    if not (cpu().onednn and onednn.available(torch.float32)):
        return "aten"
    forced = os.environ.get(LINEAR_ENV, "").strip().lower()
    if forced in ("onednn", "aten"):  # training has no blocked product
        return forced
    key = (_rows_class(rows), in_features, out_features, grad)
    if key not in _training_choices:
        _training_choices[key] = _faster_training_linear(*key)
    return _training_choices[key]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for the ``"fused"`` backend: on oneDNN (``onednn.linear``) where it
    is measured faster for this shape, with gradients as with ``F.linear``."""
    if x.device.type == weight.device.type == "cpu" and x.dtype == weight.dtype == torch.float32:
        grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        if training_linear_kernel(x.numel() // max(x.shape[-1], 1), weight.shape[1], weight.shape[0], grad) == "onednn":
            return onednn.linear(x, weight, bias)
    return F.linear(x, weight, bias)


def _rows_class(rows: int) -> int:
    """Rows rounded up to a power of two, at most 4096: one measurement stands for the class."""
    return min(1 << max(rows - 1, 0).bit_length(), 4096)


def _faster_training_linear(rows: int, in_features: int, out_features: int, grad: bool) -> str:
    """Time ``onednn.linear`` against ``F.linear`` on random tensors of this shape, each call followed by its
    backward where ``grad``: one warm-up each, then three alternated calls each, the fastest of each kept;
    oneDNN wins by more than 5%: nothing is folded into its product here, and aten is what the other backends
    run (on a 2-core AVX2 host F.linear's forward and backward took 0.70-0.80 of oneDNN's time at MiniLM's
    2048-row training shapes)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=generator).requires_grad_(grad)
    weight = (torch.randn(out_features, in_features, generator=generator) / in_features ** 0.5).requires_grad_(grad)
    bias = torch.zeros(out_features, requires_grad=grad)
    upstream = torch.randn(rows, out_features, generator=generator)

    def step(function):
        def run():
            out = function(x, weight, bias)
            if grad:
                torch.autograd.grad(out, (x, weight, bias), upstream)
        return run

    with torch.enable_grad() if grad else torch.no_grad():
        return faster({"onednn": step(onednn.linear), "aten": step(F.linear)}, calls=3, favoured="aten")


def implementations(info: CPUInfo | None = None) -> dict[str, dict[str, str]]:
    """For each fast path on the CPU: the implementation it takes in float32 and in bfloat16."""
    info = info or cpu()
    packed = {dtype: info.onednn and onednn.available(dtype) for dtype in (torch.float32, torch.bfloat16)}

    def linear(dtype):
        forced = _forced_kernel()
        if forced:
            kernel = f"{'aten' if forced == 'onednn' and not packed[dtype] else forced} for every shape ({LINEAR_ENV})"
        else:
            chosen = [f"{rows}x{n_in}->{n_out}{'+' + act if act else ''}{'+residual' if residual else ''}: {kernel}"
                      for (d, rows, n_in, n_out, act, residual), kernel in _linear_choices.items() if d == dtype]
            chosen += [f"{rows}x{n_in}->{n_out}{'+' + act if act else ''} on {kernel}: on 1 thread"
                       for (kernel, d, rows, n_in, n_out, act, _), n in _thread_choices.items() if d == dtype and n == 1]
            kernels = "oneDNN's packed matmul, F.linear" if packed[dtype] else "F.linear (aten) then the activation"
            kernel = f"{kernels} or F.linear in blocks on the threads (a few rows), the fastest per shape" \
                + (f" ({', '.join(chosen)})" if chosen else ", measured at fuse()")
        return kernel if native(dtype, info) else f"{kernel}; emulated"

    return {
        "fuse(): Linear": {"float32": linear(torch.float32), "bfloat16": linear(torch.bfloat16)},
        "fuse(): attention": {"float32": "torch's scaled_dot_product_attention", "bfloat16": "torch's scaled_dot_product_attention"},
        '"fused" backend: Linear (training)': {
            "float32": _training_choice() if packed[torch.float32] else "F.linear (aten)",
            "bfloat16": "F.linear (aten)" + ("" if native(torch.bfloat16, info) else "; emulated"),
        },
        '"fused" backend: attention, LayerNorm, gates': {
            "float32": "minipt.ops references (plain torch; Triton kernels are for CUDA)",
            "bfloat16": "minipt.ops references, computing in float32",
        },
        '"fused" backend: GELU after a Linear': {
            "float32": "F.gelu on the Linear's product with its bias (minipt.ops.bias_gelu is for CUDA)",
            "bfloat16": "F.gelu on the Linear's product with its bias",
        },
        "quantize_int8(): Linear": {
            "float32": "int8 weights and int8 products of each token's int8 input (torchao, dynamic)" if int8_products_exact(info)
                       else "int8 weights turned back to float32 for F.linear (torchao, weight-only): this CPU's int8 products saturate",
            "bfloat16": "-",
        },
        "recurrent layers: W_hh products": {
            "float32": f"oneDNN (W_hh packed once per call, from {onednn.MIN_ROWS} rows) or torch.addmm, the faster at the batch's rows"
                       if packed[torch.float32] else "torch.addmm (aten)",
            "bfloat16": "torch.addmm (aten)" + ("" if native(torch.bfloat16, info) else "; emulated"),
        },
    }


def _training_choice() -> str:
    forced = os.environ.get(LINEAR_ENV, "").strip().lower()
    if forced in ("onednn", "aten"):
        return f"{forced} for every shape ({LINEAR_ENV})"
    chosen = [f"{rows}x{n_in}->{n_out}{'' if grad else ' (no grad)'}: {kernel}"
              for (rows, n_in, n_out, grad), kernel in _training_choices.items()]
    return "oneDNN's matmuls or F.linear, forward and backward, the faster per shape" + (f" ({', '.join(chosen)})" if chosen else ", measured at first use")


def _onednn_failures(info: CPUInfo) -> dict[str, str]:
    """dtype name -> why minipt's oneDNN path is off for it, where oneDNN itself is on (the probe's finding)."""
    if not info.onednn:
        return {}
    reasons = {str(dtype).removeprefix("torch."): onednn.unavailable_because(dtype) for dtype in (torch.float32, torch.bfloat16)}
    if not native(torch.bfloat16, info) and reasons["bfloat16"] == "oneDNN reports no bfloat16 support on this CPU":
        del reasons["bfloat16"]  # the line above already says bfloat16 is emulated
    return {dtype: why for dtype, why in reasons.items() if why is not None}


def cpu_report(info: CPUInfo | None = None) -> str:
    """The CPU and the implementation each fast path takes, as text (``minipt info`` prints it)."""
    info = info or cpu()
    flags = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "bf16", "fphp") if flag in info.flags]
    lines = [
        f"CPU: {info.model}",
        f"  instruction sets: {' '.join(flags) or 'none of the ones minipt looks for'}",
        f"  torch {torch.__version__}, kernel capability {info.capability}, {torch.get_num_threads()} threads",
        f"  oneDNN: {'level ' + info.onednn_isa if info.onednn else 'off'}"
        + (f" (capped by ONEDNN_MAX_CPU_ISA={info.isa_cap})" if info.isa_cap else "")
        + "".join(f"; its {dtype} path off: {why}" for dtype, why in _onednn_failures(info).items()),
        f"  native bfloat16: {'yes' if native(torch.bfloat16, info) else 'no (emulated)'}; "
        f"native float16: {'yes' if native(torch.float16, info) else 'no (emulated)'}",
        "",
        "fast path: float32 | bfloat16",
    ]
    for path, choice in implementations(info).items():
        lines.append(f"  {path}: {choice['float32']} | {choice['bfloat16']}")
    lines.append(f"  minipt.ocr's default detector: {str(detector_dtype(info)).removeprefix('torch.')}"
                 f" ({'bfloat16 is native here' if native(torch.bfloat16, info) else 'bfloat16 would be emulated here'})")
    return "\n".join(lines)
