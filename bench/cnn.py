"""ResNet-18/50: minipt against torchvision's own ResNet code, measured in the same run.

    python bench/cnn.py                 # everything (~5-10 minutes on 2 CPU cores)
    python bench/cnn.py --no-compile    # skip torch.compile (its compile time dominates)

For each model at 224x224, batch 1 and 16 (same random weights on both sides):

- inference, eager: torchvision vs minipt (the same computation), and minipt's
  inference path, ``model.fuse()`` (BatchNorm folded into the convolutions) in
  channels-last memory format;
- one training step (forward, cross-entropy, backward, SGD with momentum);
- torch.compile (default inductor settings, batch 16): torchvision's model vs
  minipt's inference path (fused, channels-last); compile time is printed.

The cases of one row are timed round-robin (A, B, C, B, C, A, ...; bench/timing.py)
so that a machine whose load changes during the run affects them alike; the table shows
median and minimum latencies and the ratios minipt / torchvision of both (below 1:
minipt faster; on a shared machine the minimum is the steadier estimate).
Targets: eager <= 1.0, fused + channels-last <= 0.7, compiled minipt < 1.0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]


from minipt.reference import bare_torchvision  # noqa: E402

bare_torchvision()  # torchvision's wheel is a CUDA build: its model code imports, its extension does not

from torchvision.models import resnet as tv_resnet  # noqa: E402

from minipt.models import resnet as mp_resnet  # noqa: E402
from timing import Table, print_header, round_robin  # noqa: E402

ROWS: list[tuple] = []


def pair(name: str):
    """torchvision's model and minipt's, holding the same random weights and BatchNorm statistics."""
    torch.manual_seed(0)
    reference = getattr(tv_resnet, name)()
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1), m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    model = getattr(mp_resnet, name)()
    model.load_state_dict({mp_resnet.ResNet.keymap().to_minipt(k)[0]: v for k, v in reference.state_dict().items()})
    return reference.eval(), model.eval()


def record(model: str, batch: int, mode: str, timings: dict, baseline: str, targets: dict[str, str]):
    """One table row per case; every case but the baseline gets its ratio to the baseline and its target."""
    base = timings[baseline]
    for case, t in timings.items():
        ratio = None if case == baseline else (t.median / base.median, t.min / base.min)
        ROWS.append((model, batch, mode, case, t.median * 1e3, t.min * 1e3, ratio, targets.get(case, "")))


def bench_inference(name: str, batch: int, reps: int):
    reference, model = pair(name)
    fused = model.fuse().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = reference(x)
        for out in (model(x), fused(x_cl)):
            diff = ((out - expected).abs().max() / expected.abs().max()).item()
            assert diff < 1e-4, f"{name}: minipt differs from torchvision by {diff:.2e}"
        timings = round_robin(
            {"torchvision eager": lambda: reference(x), "minipt eager": lambda: model(x), "minipt fused+channels_last": lambda: fused(x_cl)},
            reps,
        )
    record(name, batch, "inference", timings, "torchvision eager", {"minipt eager": "<= 1.0", "minipt fused+channels_last": "<= 0.7"})


def bench_training(name: str, batch: int, reps: int):
    reference, model = pair(name)
    x, target = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))

    def step_fn(net):
        net.train()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step():
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), target).backward()
            optimizer.step()

        return step

    timings = round_robin({"torchvision train step": step_fn(reference), "minipt train step": step_fn(model)}, reps)
    record(name, batch, "training", timings, "torchvision train step", {"minipt train step": "<= 1.0"})


def bench_compiled(name: str, batch: int, reps: int):
    reference, model = pair(name)
    fused = model.fuse().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    compiled = {}
    for label, net, inp in (("torchvision compiled", reference, x), ("minipt fused+channels_last compiled", fused, x_cl)):
        start = time.perf_counter()
        fn = torch.compile(net)
        with torch.inference_mode():
            fn(inp)
        print(f"  compiled {label} ({name}, batch {batch}) in {time.perf_counter() - start:.0f} s", flush=True)
        compiled[label] = (lambda fn=fn, inp=inp: fn(inp))
    with torch.inference_mode():
        timings = round_robin(compiled, reps)
    record(name, batch, "torch.compile", timings, "torchvision compiled", {"minipt fused+channels_last compiled": "< 1.0"})


def print_table():
    print()
    table = Table(["model", "batch", "mode", "case", "median ms", "min ms", "ratio (medians)", "ratio (minimums)", "target (medians)"],
                  right=(1, 4, 5, 6, 7))
    for model, batch, mode, case, ms, fastest, ratio, target in ROWS:
        ratios = ("", "") if ratio is None else (f"{ratio[0]:.2f}", f"{ratio[1]:.2f}")
        met = "" if not target else (" ok" if (ratio[0] < 1.0 if target == "< 1.0" else ratio[0] <= float(target.split()[-1])) else " missed")
        table.row(model, batch, mode, case, f"{ms:.1f}", f"{fastest:.1f}", *ratios, target + met)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile cases")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every repetition count (at least 2 each)")
    args = parser.parse_args()
    reps = lambda n: max(2, round(n * args.scale))  # noqa: E731
    print_header()
    plan = [  # (model, batch, inference reps, training reps)
        ("resnet18", 1, 15, 5),
        ("resnet18", 16, 5, 3),
        ("resnet50", 1, 7, 3),
        ("resnet50", 16, 3, 2),
    ]
    for name, batch, inference_reps, training_reps in plan:
        start = time.perf_counter()
        bench_inference(name, batch, reps(inference_reps))
        bench_training(name, batch, reps(training_reps))
        print(f"{name} batch {batch}: {time.perf_counter() - start:.0f} s", flush=True)
    if not args.no_compile:
        for name in ("resnet18", "resnet50"):
            bench_compiled(name, 16, reps(3))
    print_table()


if __name__ == "__main__":
    main()
