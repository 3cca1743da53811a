"""minipt.nn.LSTM / GRU on each backend against torch.nn.LSTM / GRU on CPU, measured in one interleaved run.

    python bench/rnn.py [--repeats 15] [--threads N] [--only LSTM] [--math]

All modules hold the same weights (minipt loads torch.nn's state dict). The
cases: input 256, hidden 512, 2 layers, batch 32 x 100 steps, for inference
(no grad) and a training step (forward, backward of a loss, gradients of every
parameter); and batch-1 step-by-step generation, 100 calls of one step each
feeding the state back. The columns:

- ``torch.nn``: torch.nn.LSTM / GRU, the baseline of every ratio;
- ``torch``: minipt's module on the "torch" backend (torch._VF on its own parameters);
- ``fused``: minipt's "fused" path (minipt.ops.recurrent), the gate math calling the op's
  reference function directly on CPU;
- ``fused-op``: the same with every step's gate math dispatched through the custom op
  (``torch.ops.minipt.lstm_gates``), to show what the dispatch costs;
- ``math`` (with ``--math``): the cells of rnn_cells.py step by step.

Each repeat runs every column once, in an order rotated from repeat to repeat, so
that load on a shared machine hits all alike (bench/timing.py). The table shows the
median time of torch.nn and, per column, the ratio of medians (below 1: faster than torch.nn).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import minipt.nn  # noqa: E402
from minipt.nn import use_backend  # noqa: E402
from minipt.ops import recurrent  # noqa: E402
from timing import print_header, ratio_table, round_robin  # noqa: E402

INPUT, HIDDEN, LAYERS, BATCH, STEPS = 256, 512, 2, 32, 100


@contextmanager
def gate_math_through_the_ops():
    """The fused path with torch.ops.minipt.* per step on CPU too (the custom-op dispatch)."""
    saved = recurrent._lstm_gate_math, recurrent._gru_gate_math
    recurrent._lstm_gate_math = lambda device: (torch.ops.minipt.lstm_gates, torch.ops.minipt.lstm_gates_backward)
    recurrent._gru_gate_math = lambda device: (torch.ops.minipt.gru_gates, torch.ops.minipt.gru_gates_backward)
    try:
        yield
    finally:
        recurrent._lstm_gate_math, recurrent._gru_gate_math = saved


def on(backend, run):
    if backend is None:
        return run

    def wrapped():
        with use_backend(backend.split("-")[0]):
            if backend == "fused-op":
                with gate_math_through_the_ops():
                    return run()
            return run()

    return wrapped


def inference(module, x):
    def run():
        with torch.no_grad():
            module(x)

    return run


def training(module, x):
    def run():
        module.zero_grad(set_to_none=True)
        output, _ = module(x)
        output.square().mean().backward()

    return run


def generation(module, steps):
    def run():
        state = None
        with torch.no_grad():
            for x in steps:  # one (1, 1, INPUT) step at a time, the state fed back
                _, state = module(x, state)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", choices=["LSTM", "GRU"], default=None)
    parser.add_argument("--math", action="store_true", help="add the math backend (slow)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_header()
    torch.manual_seed(0)
    x = torch.randn(STEPS, BATCH, INPUT)
    steps = [torch.randn(1, 1, INPUT) for _ in range(STEPS)]
    columns = ["torch", "fused", "fused-op"] + (["math"] if args.math else [])
    cases = []
    for kind in ("LSTM", "GRU"):
        if args.only and kind != args.only:
            continue
        reference = getattr(torch.nn, kind)(INPUT, HIDDEN, LAYERS)
        ours = getattr(minipt.nn, kind)(INPUT, HIDDEN, LAYERS)
        ours.load_state_dict(reference.state_dict())
        shape = f"{LAYERS}x{HIDDEN}, {BATCH}x{STEPS}"
        for case, make, data in (("inference", inference, x), ("training step", training, x), ("generation", generation, steps)):
            label = f"{kind} {case} ({shape})" if case != "generation" else f"{kind} generation (batch 1, {STEPS} steps)"
            runs = {"torch.nn": make(reference, data)} | {c: on(c, make(ours, data)) for c in columns}
            cases.append((label, runs))
    rows = [(label, round_robin(runs, args.repeats)) for label, runs in cases]  # the columns of a case in turns
    print(f"median of {args.repeats} (interleaved); columns after torch.nn: time / torch.nn's time\n")
    row = ratio_table("case", "torch.nn", columns, ratios_only=True)
    for label, timings in rows:
        row(label, timings)


if __name__ == "__main__":
    main()
