"""minipt's Vision Transformer against transformers' ViTModel (sdpa attention) and ONNX Runtime, on the same weights.

    python bench/vit.py [--repeats N] [--threads N] [--batch 8] [--quick]

transformers builds ViT-B/16 (224 px, 12 layers, width 768) with random weights
and saves it; minipt loads the same folder. Everything is measured in this one
run, the systems timed in turns (bench/timing.py), medians; ratios are
minipt / transformers (below 1: minipt is faster). ``fused`` is the ``fuse()``
copy (float32), ``fused bf16`` ``fuse(torch.bfloat16)`` (with the lowest
cosine of its [CLS] features to float32's); ONNX Runtime runs transformers'
model exported with ``torch.onnx.export`` (the ``onnx`` extra; without it that
column is left out). No pretrained ViT installs here; a forward pass's speed
does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from minipt.models.vit import ViTModel  # noqa: E402
from minipt.ops import cpu_report  # noqa: E402
from minipt.reference import import_transformers  # noqa: E402
from timing import medians_apart, onnx_runtime_session, print_header, ratio_table  # noqa: E402

TARGETS = {"fused": 0.6}  # fuse() against transformers at batch 8, 224 px; and faster than ONNX Runtime


def onnx_session(theirs, pixels: torch.Tensor, directory: str):
    """ONNX Runtime on transformers' model exported by torch.onnx.export (dynamic batch), or None."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    path = str(Path(directory) / "vit.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(theirs, (pixels[:2],), path, input_names=["pixel_values"], output_names=["last_hidden_state"],
                          dynamic_shapes=({0: "batch"},), dynamo=True, verbose=False)
    return onnx_runtime_session(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch (and ONNX Runtime) threads; default: torch's choice")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="two repetitions: a smoke run, not numbers to report")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers = import_transformers()
    if transformers is None:
        sys.exit("bench/vit.py compares with transformers: pip install transformers")
    print_header(f"transformers {transformers.__version__}")
    pixels = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        transformers.ViTModel(transformers.ViTConfig(), add_pooling_layer=False).save_pretrained(folder)  # ViT-B/16
        theirs = transformers.ViTModel.from_pretrained(folder, attn_implementation="sdpa", add_pooling_layer=False).eval()
        ours = ViTModel.from_pretrained(folder).eval()
        session = onnx_session(theirs, pixels, folder)
        models = {"transformers": theirs, "minipt": ours, "fused": ours.fuse(), "fused bf16": ours.fuse(torch.bfloat16)}
        cases = {name: (lambda m=model: m(pixels)) for name, model in models.items()}
        if session is not None:
            cases["onnxruntime"] = lambda: session.run(["last_hidden_state"], {"pixel_values": pixels.numpy()})
        with torch.inference_mode():
            seconds = medians_apart(cases, ["fused bf16"], "transformers", 2 if args.quick else args.repeats)  # bf16 in its own round
            cls = {name: models[name](pixels).last_hidden_state[:, 0].float() for name in ("minipt", "fused bf16")}
    cosine = float(torch.nn.functional.cosine_similarity(cls["fused bf16"], cls["minipt"], dim=-1).min())
    print(f"ViT-B/16, batch {args.batch}, 224 px, random weights; ms, and in brackets the ratio to transformers "
          f"(sdpa, float32); targets: fused <= {TARGETS['fused']} and faster than ONNX Runtime\n")
    row = ratio_table("case", "transformers", ["minipt", "fused", "fused bf16", "onnxruntime"], ["bf16 cosine (min)", "targets"])
    verdicts = [f"fused {'met' if seconds['fused'] / seconds['transformers'] <= TARGETS['fused'] else 'missed'}"]
    if "onnxruntime" in seconds:
        verdicts.append(f"{'faster' if seconds['fused'] < seconds['onnxruntime'] else 'slower'} than ONNX Runtime")
    row(f"{args.batch}x3x224x224", seconds, f"{cosine:.5f}", ", ".join(verdicts))
    print("\n" + "\n".join("    " + line for line in cpu_report().splitlines()))


if __name__ == "__main__":
    main()
