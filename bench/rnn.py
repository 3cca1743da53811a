"""minipt.nn.LSTM / GRU against torch.nn.LSTM / GRU on CPU, measured side by side in one run.

    python bench/rnn.py [--repeats 15] [--threads N]

Both modules hold the same weights (minipt loads torch.nn's state dict). The
cases: input 256, hidden 512, 2 layers, batch 32 x 100 steps, for inference
(no grad) and a training step (forward, backward of a loss, gradients of every
parameter); and batch-1 step-by-step generation, 100 calls of one step each
feeding the state back. Each repeat runs torch.nn and minipt back to back (in
alternating order) so that load on the machine hits both alike; the table shows
median times and the ratio minipt / torch (below 1 means minipt is faster), and
the ratio of the best times. On a busy machine ``--threads 1`` gives steadier
numbers than torch's default thread count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import minipt.nn

INPUT, HIDDEN, LAYERS, BATCH, STEPS = 256, 512, 2, 32, 100


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


def measure(cases, repeats: int):
    rows = []
    for name, torch_run, minipt_run in cases:
        torch_run(), minipt_run(), torch_run(), minipt_run()  # warm-up (TorchScript compiles on first use)
        times = {"torch": [], "minipt": []}
        for r in range(repeats):
            order = (("torch", torch_run), ("minipt", minipt_run))
            for label, run in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - start)
        t, m = statistics.median(times["torch"]), statistics.median(times["minipt"])
        rows.append((name, t * 1e3, m * 1e3, m / t, min(times["minipt"]) / min(times["torch"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", choices=["LSTM", "GRU"], default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(STEPS, BATCH, INPUT)
    steps = [torch.randn(1, 1, INPUT) for _ in range(STEPS)]
    cases = []
    for kind in ("LSTM", "GRU"):
        if args.only and kind != args.only:
            continue
        reference = getattr(torch.nn, kind)(INPUT, HIDDEN, LAYERS)
        ours = getattr(minipt.nn, kind)(INPUT, HIDDEN, LAYERS)
        ours.load_state_dict(reference.state_dict())
        shape = f"{LAYERS}x{HIDDEN}, {BATCH}x{STEPS}"
        cases += [
            (f"{kind} inference ({shape})", inference(reference, x), inference(ours, x)),
            (f"{kind} training step ({shape})", training(reference, x), training(ours, x)),
            (f"{kind} generation (batch 1, {STEPS} steps)", generation(reference, steps), generation(ours, steps)),
        ]
    rows = measure(cases, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} (interleaved)\n")
    print(f"| {'case':<44} | {'torch.nn ms':>11} | {'minipt ms':>9} | {'minipt/torch':>12} | {'(best/best)':>11} |")
    print(f"|{'-' * 46}|{'-' * 12}:|{'-' * 10}:|{'-' * 13}:|{'-' * 12}:|")
    for name, t, m, ratio, best in rows:
        print(f"| {name:<44} | {t:>11.2f} | {m:>9.2f} | {ratio:>12.2f} | {best:>11.2f} |")


if __name__ == "__main__":
    main()
