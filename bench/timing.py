"""The timing every benchmark script in bench/ shares.

- ``header()``: who measured what where: the command line, the commit, the date and the
  machine (CPU model and the instruction-set flags that decide which kernels run, CPU
  count, torch version and threads, load average). ``Table`` prints it above the first
  table of a run, so no table is printed without it.
- ``round_robin(cases, repeats)``: the cases timed in turns (each repeat runs every case
  once, in an order rotated from repeat to repeat), after warm-up calls. A machine whose
  speed drifts (a shared VM, a neighbour's load) then slows every case alike: the ratios
  between cases are what the scripts report and what to trust, more than any one time.
  Each case gets its median and its minimum (on a noisy machine the steadier estimate).
- ``gemm_limit(shapes, rows)``: the FLOP/s this CPU's fastest matmul reaches on a model's
  Linear shapes, against which a model's FLOPs per second are read as a fraction.
- ``Table`` and ``ratio_table``: markdown tables printed row by row (a long run shows
  its progress), the latter with every case's time next to its ratio to a baseline.

The scripts import it as a sibling module (``python bench/x.py`` puts bench/ first on
``sys.path``; they also add it themselves).
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")  # which oneDNN / MKL kernels a CPU gets


# --- the header -------------------------------------------------------------------------


def _command() -> str:
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_file() and script.is_relative_to(ROOT) else Path(sys.argv[0])
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    if not commit:
        return "commit unknown"
    return f"commit {commit}" + (" (with uncommitted changes)" if changed else "")


def _cpu() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break  # the first processor's entry says it for all
    except OSError:
        pass
    present = [flag for flag in FLAGS if flag in flags]
    return f"{model} [{' '.join(present) or 'none of ' + ' '.join(FLAGS)}], {os.cpu_count()} CPUs"


def header(*extra: str) -> str:
    """Three lines: the command; the commit and the date; the machine (and ``extra``, e.g. library versions).

    Threads are torch's at the time of the call: call it after ``torch.set_num_threads``.
    """
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    machine = [_cpu(), f"torch {torch.__version__}", f"{torch.get_num_threads()} threads", f"load average {load}"]
    if torch.cuda.is_available():
        machine.insert(1, torch.cuda.get_device_name())
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([f"`{_command()}`", f"{_commit()}, {date}", ", ".join(machine + list(extra))])


_printed = False


def print_header(*extra: str) -> None:
    """Print ``header(*extra)`` once per run (later calls do nothing)."""
    global _printed
    if not _printed:
        _printed = True
        print(header(*extra) + "\n", flush=True)


# --- timing -----------------------------------------------------------------------------


def wall_clock(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cuda_events(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes on the current CUDA stream (between two recorded events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e-3


def self_reported(fn: Callable[[], float]) -> float:
    """The seconds ``fn`` returns: for a case that times itself (e.g. in a fresh interpreter)."""
    return fn()


@dataclass(frozen=True)
class Timing:
    """One case's seconds per call, every repeat kept."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)


def round_robin(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                timer: Callable[[Callable[[], object]], float] = wall_clock) -> dict[str, Timing]:
    """Each case's ``Timing`` over ``repeats`` calls, timed in turns.

    Every case is first called ``warmup`` times (caches, lazy initialisation, compilation).
    Then each repeat calls every case once, in an order rotated by one from repeat to
    repeat (A B C, B C A, C A B, ...), so that each case runs as often first as last and
    a change in the machine's speed during the run reaches every case alike.
    """
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timer(cases[name]))
    return {name: Timing(tuple(t)) for name, t in times.items()}


def medians(timings: dict[str, Timing]) -> dict[str, float]:
    """Each case's median seconds."""
    return {name: t.median for name, t in timings.items()}


def medians_apart(cases: dict[str, Callable[[], object]], apart: Sequence[str], baseline: str, repeats: int,
                  warmup: int = 1) -> dict[str, float]:
    """Median seconds of ``cases`` timed in turns, except those named in ``apart``: each of these is timed in
    its own round with ``baseline`` and reported as its ratio to the baseline in that round times the
    baseline's median in the main round. A case many times slower than the others (bfloat16 where the
    CPU emulates it: 5-37 s a call against 0.8-5 s) disturbed the timings of whatever ran beside it: on a
    2-core AVX2 host DistilBERT-base's fuse() copy measured 1.19 of transformers' time at 32x128 beside it,
    1.05-1.07 with it timed apart (docs/benchmarks.md, encoder families on the AVX2-only host)."""
    main = medians(round_robin({name: fn for name, fn in cases.items() if name not in apart}, repeats, warmup))
    for name in apart:
        alone = medians(round_robin({baseline: cases[baseline], name: cases[name]}, repeats, warmup))
        main[name] = alone[name] / alone[baseline] * main[baseline]
    return main


def onnx_runtime_session(path: str):
    """An ONNX Runtime CPU session on torch's number of threads, with every graph optimisation, whose threads do
    not spin once a run ends. By default ONNX Runtime's workers spin-wait for the next call; in a run timed in
    turns they then take the CPU from whatever runs next (on a 2-core machine every torch case beside it measured
    2-3x slower)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def gemm_limit(shapes: Sequence[tuple[int, int]], rows: int, dtype: torch.dtype, repeats: int) -> float:
    """This CPU's matmul limit for a model's Linears: FLOP/s of the fastest kernel (aten, or oneDNN with prepacked weights)
    per (in, out) shape of ``shapes`` (repeats counted) at ``rows`` rows, the shapes weighted by their FLOPs."""
    from minipt.ops import onednn

    generator = torch.Generator().manual_seed(0)
    flops, seconds = 0.0, 0.0
    for n_in, n_out in sorted(set(shapes)):
        x = torch.randn(rows, n_in, generator=generator).to(dtype)
        weight = torch.randn(n_out, n_in, generator=generator).to(dtype)
        cases = {"aten": lambda x=x, w=weight: torch.nn.functional.linear(x, w)}
        if onednn.available(dtype):
            packed = onednn.pack_linear(weight, None, batch_hint=rows)
            cases["onednn"] = lambda x=x, p=packed: p(x)
        with torch.inference_mode():
            best = min(t.min for t in round_robin(cases, repeats, warmup=1).values())
        count = list(shapes).count((n_in, n_out))
        flops += count * 2 * rows * n_in * n_out
        seconds += count * best
    return flops / seconds


# --- tables -----------------------------------------------------------------------------


class Table:
    """A markdown table printed a row at a time; the run's header is printed above it first."""

    def __init__(self, columns: Sequence[str], right: Iterable[int] = ()):
        """``right``: the indices of the columns to align right (numbers)."""
        print_header()
        right = set(right)
        self.width = len(columns)
        print("| " + " | ".join(columns) + " |")
        print("|" + "|".join("---:" if i in right else "---" for i in range(self.width)) + "|", flush=True)

    def row(self, *cells: object) -> None:
        assert len(cells) == self.width, f"{len(cells)} cells for {self.width} columns"
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def with_ratio(value: float | None, baseline: float, scale: float = 1e3, digits: int = 1) -> str:
    """``value`` (times ``scale``: seconds as ms by default) and in brackets its ratio to ``baseline``."""
    return "-" if value is None else f"{value * scale:.{digits}f} ({value / baseline:.2f})"


def ratio_table(first: str, baseline: str, columns: Sequence[str], extra: Sequence[str] = (), *,
                ratios_only: bool = False) -> Callable[..., None]:
    """Start a table of ``first`` | ``baseline`` (its median in ms) | each of ``columns`` | ``extra``.

    Returns ``row(label, timings, *extra_cells)``: ``timings`` maps case names to ``Timing``
    (or to seconds); each column's cell is its median and, in brackets, the ratio of
    medians to the baseline's (below 1: faster), or that ratio alone with ``ratios_only``.
    A column the row has no timing for shows "-".
    """
    table = Table([first, f"{baseline} ms", *columns, *extra], right=range(1, 2 + len(columns)))

    def row(label: str, timings: dict, *extra_cells: object) -> None:
        seconds = {name: t.median if isinstance(t, Timing) else t for name, t in timings.items()}
        base = seconds[baseline]
        cells = [("-" if c not in seconds else f"{seconds[c] / base:.2f}") if ratios_only else with_ratio(seconds.get(c), base)
                 for c in columns]
        table.row(label, f"{base * 1e3:.1f}", *cells, *extra_cells)

    return row
