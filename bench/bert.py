"""minipt's BERT against transformers' (sdpa attention) on the same all-MiniLM-L6-v2 weights.

    python bench/bert.py [--repeats N] [--threads N] [--quick]

Everything is measured in this one run, side by side (the systems of a case timed
in turns, bench/timing.py): median latency of
inference (inference_mode) at batch x length = 1x16, 32x128 and 8x512 and of
a 16x128 training step (forward, backward, SGD update, dropout on), the
import time each library adds to ``import torch`` (fresh interpreters), and
the peak resident memory while loading the checkpoint, against its size.
Ratios are minipt / transformers: below 1 means minipt is faster or smaller.

The "fused" column is minipt's CPU fast path: for inference the ``fuse()`` copy
(prepacked oneDNN weights, float32; bfloat16 in its own column), for the
training step the model on the ``"fused"`` backend (each Linear's forward and
backward matmuls on oneDNN where measured faster for its shape, ``minipt.nn.Linear``;
the training target is on the model ``from_pretrained`` gives). Inference also runs, as a
second peer, ONNX Runtime on transformers' model exported with
``torch.onnx.export`` (the ``onnx`` extra: ``pip install -e '.[onnx]'``;
without it that column is left out). The bfloat16 row reports the lowest
cosine, over the batch, between its mean-pooled embeddings and float32's; the
bfloat16 copy is timed in its own round with transformers, its ratio there
times transformers' ms in the main round (``timing.medians_apart``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from minipt.hub import resolve  # noqa: E402
from minipt.models.bert import BertModel  # noqa: E402
from minipt.ops import cpu_report, native  # noqa: E402
from minipt.reference import import_transformers  # noqa: E402
from timing import Table, medians, medians_apart, onnx_runtime_session, print_header, ratio_table, round_robin, self_reported  # noqa: E402
from timing import gemm_limit as timing_gemm_limit  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
TARGETS = {"1x16": 0.6, "32x128": 0.9, "8x512": 0.9, "train 16x128": 0.9}  # training: the model from_pretrained gives
FUSED_TARGETS = {"1x16": 0.5, "32x128": 0.85, "8x512": 0.85}  # fuse() float32
BF16_TARGETS = {"32x128": 0.45}  # model.fuse(torch.bfloat16), with a cosine to float32 >= 0.999


def batch(vocab: int, size: int, length: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, vocab, (size, length), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "token_type_ids": torch.zeros_like(input_ids)}


def onnx_session(theirs, directory: str):
    """ONNX Runtime on transformers' model exported by torch.onnx.export (dynamic batch and length), or None."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    inputs = batch(theirs.config.vocab_size, 2, 16)
    path = os.path.join(directory, "bert.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(theirs, tuple(inputs.values()), path, input_names=list(inputs), output_names=["last_hidden_state", "pooler_output"],
                          dynamic_shapes=({0: "batch", 1: "length"},) * 3, dynamo=True, verbose=False)
    return onnx_runtime_session(path)


def linear_shapes(config) -> list[tuple[int, int]]:
    """(in, out) of each Linear in one layer: Q, K, V and the output projection, ffn_up, ffn_down."""
    H, intermediate = config.hidden_size, config.intermediate_size
    return [(H, H)] * 4 + [(H, intermediate), (intermediate, H)]


def model_flops(config, size: int, length: int) -> float:
    """Multiply-adds x 2 of a forward pass: every layer's Linears, and attention's scores and weighted sum."""
    rows = size * length
    linears = sum(2 * rows * n_in * n_out for n_in, n_out in linear_shapes(config))
    attention = 2 * 2 * size * length * length * config.hidden_size
    return config.num_hidden_layers * (linears + attention)


def gemm_limit(config, rows: int, dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of the fastest kernel per Linear shape of one layer at ``rows`` rows (timing.gemm_limit)."""
    return timing_gemm_limit(linear_shapes(config), rows, dtype, repeats)


def mean_pooled(hidden: torch.Tensor) -> torch.Tensor:
    return hidden.float().mean(1)  # (B, H): every token is real in these batches


def inference_rows(models: dict, session, repeats: int, quick: bool):
    """Per case: seconds for each model (and ONNX Runtime), and bfloat16's lowest cosine to float32."""
    rows = []
    for size, length, n in ((1, 16, repeats * 10), (32, 128, repeats), (8, 512, max(3, repeats // 2))):
        inputs = batch(models["minipt"].config.vocab_size, size, length)
        fns = {name: (lambda m=model: m(**inputs)) for name, model in models.items()}
        if session is not None:
            arrays = {name: value.numpy() for name, value in inputs.items()}
            fns["onnxruntime"] = lambda: session.run(["last_hidden_state"], arrays)
        with torch.inference_mode():
            t = medians_apart(fns, ["fused bf16"], "transformers", 3 if quick else n, warmup=2)
            cosine = torch.nn.functional.cosine_similarity(
                mean_pooled(models["fused bf16"](**inputs).last_hidden_state), mean_pooled(models["minipt"](**inputs).last_hidden_state), dim=-1).min()
        limits = {"float32": gemm_limit(models["minipt"].config, size * length, torch.float32, 3 if quick else 5)}
        if native(torch.bfloat16):
            limits["bfloat16"] = gemm_limit(models["minipt"].config, size * length, torch.bfloat16, 3 if quick else 5)
        rows.append((f"{size}x{length}", t, size * length, float(cosine), model_flops(models["minipt"].config, size, length), limits))
    return rows


def training_row(path, transformers, repeats: int, quick: bool):
    inputs = batch(30522, 16, 128)
    models = {
        "minipt": BertModel.from_pretrained(path).train(),
        "fused": BertModel.from_pretrained(path, backend="fused").train(),
        "transformers": transformers.BertModel.from_pretrained(str(path), attn_implementation="sdpa").train(),
    }
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-4) for name, m in models.items()}

    def step(name):
        def run():
            optimizers[name].zero_grad(set_to_none=True)
            loss = models[name](**inputs).last_hidden_state.pow(2).mean()
            loss.backward()
            optimizers[name].step()

        return run

    t = medians(round_robin({name: step(name) for name in models}, 2 if quick else max(5, repeats), warmup=2))
    return ("train 16x128", t, 16 * 128, None, None, None)


def fresh_interpreter(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout.strip()


def import_times(repeats: int) -> dict:
    probe = (
        "import time; import torch\n"
        "start = time.perf_counter()\n"
        "{stmt}\n"
        "print(time.perf_counter() - start)"
    )
    statements = {
        "import minipt": "import minipt",
        "minipt BertModel": "from minipt.models.bert import BertModel",
        "import transformers": "from minipt.reference import bare_torchvision; bare_torchvision(); import transformers",
        "transformers BertModel": "from minipt.reference import bare_torchvision; bare_torchvision(); from transformers import BertModel",
    }
    probes = {name: (lambda stmt=stmt: float(fresh_interpreter(probe.format(stmt=stmt)))) for name, stmt in statements.items()}
    return medians(round_robin(probes, repeats, warmup=0, timer=self_reported))  # each interpreter times its import


def loading_memory(path: Path, tiny: Path) -> dict:
    """Resident memory added by loading the checkpoint, then by a first forward pass, in fresh interpreters.

    Each interpreter first loads a tiny checkpoint, so that paging in library
    code on first use is not counted; then the Linux high-water mark (VmHWM)
    is reset and the real checkpoint loaded.
    """
    probe = (
        "import torch\n"
        "{setup}\n"
        "def status(field):\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith(field)).split()[1]) * 1024\n"
        "BertModel.from_pretrained({tiny!r})\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # high-water mark := current RSS\n"
        "before = status('VmRSS')\n"
        "model = BertModel.from_pretrained({path!r}{options})\n"
        "loading = status('VmHWM') - before\n"
        "with torch.inference_mode():\n"
        "    model(torch.randint(1000, 30000, (8, 128)))\n"
        "print(loading, status('VmHWM') - before)"
    )
    setups = {  # name -> (imports, from_pretrained's options)
        "minipt": ("from minipt.models.bert import BertModel", ""),
        "minipt mmap=True": ("from minipt.models.bert import BertModel", ", mmap=True"),
        "transformers": ("from minipt.reference import bare_torchvision; bare_torchvision(); from transformers import BertModel", ""),
    }
    results = {}
    for name, (setup, options) in setups.items():
        loading, first_forward = fresh_interpreter(probe.format(setup=setup, tiny=str(tiny), path=str(path), options=options)).split()
        results[name] = (int(loading), int(first_forward))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch (and ONNX Runtime) threads; default: torch's choice")
    parser.add_argument("--quick", action="store_true", help="few repetitions: a smoke run, not numbers to report")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers = import_transformers()
    if transformers is None:
        sys.exit("bench/bert.py compares with transformers: pip install transformers")
    path = resolve(MODEL)
    torch.manual_seed(0)
    ours = BertModel.from_pretrained(path).eval()
    theirs = transformers.BertModel.from_pretrained(str(path), attn_implementation="sdpa").eval()
    print_header(f"transformers {transformers.__version__}")
    print(f"{MODEL}, inference and a training step\n")

    models = {"minipt": ours, "fused": ours.fuse(), "fused bf16": ours.fuse(torch.bfloat16), "transformers": theirs}
    with tempfile.TemporaryDirectory() as directory:
        session = onnx_session(theirs, directory)
        rows = inference_rows(models, session, args.repeats, args.quick)
    del ours, theirs, models, session
    gc.collect()
    rows.append(training_row(path, transformers, args.repeats, args.quick))
    systems = ["minipt", "fused", "fused bf16", "onnxruntime"]
    print("ms, and in brackets the ratio to transformers (sdpa, float32); targets: minipt "
          + ", ".join(f"{k} <= {v}" for k, v in TARGETS.items()) + "; fused " + ", ".join(f"{k} <= {v}" for k, v in FUSED_TARGETS.items())
          + "; fused bf16 " + ", ".join(f"{k} <= {v}" for k, v in BF16_TARGETS.items()) + "\n")
    row = ratio_table("case", "transformers", systems, ["bf16 cosine (min)", "minipt tokens/s", "targets"])
    for name, t, tokens, cosine, _, _ in rows:
        theirs_s = t["transformers"]
        verdicts = [f"{system} {'met' if t[system] / theirs_s <= target[name] else 'missed'}"
                    for system, target in (("minipt", TARGETS), ("fused", FUSED_TARGETS), ("fused bf16", BF16_TARGETS)) if name in target]
        if name in BF16_TARGETS and cosine is not None and cosine < 0.999:
            verdicts.append("bf16 cosine missed")
        row(name, t, "-" if cosine is None else f"{cosine:.5f}", f"{tokens / t['minipt']:,.0f}", ", ".join(verdicts))

    print("\nthe fraction of this CPU's GEMM limit each system reaches (model FLOPs / time / the best matmul rate at the case's shapes)\n")
    table = Table(["case", "GEMM limit float32 GFLOP/s", "bfloat16", "transformers", "minipt", "fused", "fused bf16", "onnxruntime"], right=range(1, 8))
    for name, t, _, _, flops, limits in rows:
        if flops is None:
            continue
        fractions = [f"{flops / t[system] / limits[dtype]:.2f}" if system in t and dtype in limits else "-"
                     for system, dtype in (("transformers", "float32"), ("minipt", "float32"), ("fused", "float32"),
                                           ("fused bf16", "bfloat16"), ("onnxruntime", "float32"))]
        table.row(name, f"{limits['float32'] / 1e9:.0f}", f"{limits['bfloat16'] / 1e9:.0f}" if "bfloat16" in limits else "-", *fractions)
    print("\n" + "\n".join("    " + line for line in cpu_report().splitlines()))

    imports = import_times(3 if args.quick else 5)
    print()
    table = Table(["import (after `import torch`)", "seconds"], right=[1])
    for name, seconds in imports.items():
        table.row(f"`{name}`", f"{seconds:.3f}")
    verdict = "met" if imports["import minipt"] <= 0.15 else "missed"
    print(f"\n`import minipt` adds {imports['import minipt']:.3f} s to `import torch` (target <= 0.15 s: {verdict}).")

    size = (path / "model.safetensors").stat().st_size
    with tempfile.TemporaryDirectory() as tiny:
        from minipt.models.bert import BertConfig

        BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)).save_pretrained(tiny)
        memory = loading_memory(path, Path(tiny))
    print()
    table = Table([f"peak memory added ({size / 2**20:.0f} MiB checkpoint)", "loading: MiB", "x checkpoint", "loading + first forward 8x128: MiB"],
                  right=[1, 2, 3])
    for name, (loading, first_forward) in memory.items():
        table.row(name, f"{loading / 2**20:.0f}", f"{loading / size:.2f}", f"{first_forward / 2**20:.0f}")
    verdict = "met" if memory["minipt"][0] <= 1.2 * size else "missed"
    print(f"\nminipt's peak while loading is {memory['minipt'][0] / size:.2f}x the checkpoint (target <= 1.2x: {verdict}); "
          "the weights are copied out of the file; with mmap=True they stay mapped, read on first use and shared with the page cache.")

if __name__ == "__main__":
    main()
