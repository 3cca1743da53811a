"""Reading the words in a photo end to end: minipt.ocr against EasyOCR's own Reader on the same weights and
images, RapidOCR (PaddleOCR's models on ONNX Runtime) beside them when it is installed.

    python bench/ocr.py              # 5 images, 5 rounds each (~5 minutes on 2 CPU cores)
    python bench/ocr.py --repeats 3

The images: scikit-image's scanned page (384x191, and scaled 3x as a scan at a
usual resolution), its photograph of handwriting (``text()``), and two of its
photographs with lines of text drawn over them, one line turned by 15 degrees.

For each image, timed in turns (bench/timing.py's round_robin), 2 threads each:

- EasyOCR: ``Reader(['en'], gpu=False).readtext(image)`` with craft_mlt_25k and english_g2.pth,
  the files minipt fetches (its defaults: the recogniser quantised to int8 on the CPU);
- minipt: ``minipt.ocr.read_words(image)`` (the detector fused and channels-last, as it loads by default, in
  ``minipt.ops.detector_dtype()``: bfloat16 where the CPU has bfloat16 instructions, else float32);
- minipt, detector float32: where that default is bfloat16, the same with the detector fused in float32;
  bench/ocr_accuracy.py ``--variant float32-detector`` / ``bfloat16-detector`` scores what each reads;
- minipt unfused: the same with the detector as loaded (float32, BatchNorm separate, contiguous), to show what
  fuse() and channels-last give;
- RapidOCR: ``RapidOCR()(image)`` (its detector, angle classifier and recogniser; ONNX Runtime's threads not spinning
  after a run, as bench/timing.py's sessions), if importable;
- each side's box finding alone, for its share of the time: minipt's ``CRAFT.detect`` and ``word_boxes``,
  EasyOCR's ``Reader.detect``.

Target: minipt's time per image at most 0.5 of EasyOCR's (the ratio of the summed medians), judged for the default
pipeline and, where it runs, the float32 detector.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from minipt import ocr  # noqa: E402
from minipt.hub import resolve  # noqa: E402
from minipt.models.craft import CRAFT  # noqa: E402
from minipt.ops import detector_dtype  # noqa: E402
from timing import Table, print_header, round_robin  # noqa: E402

THREADS = 2


def images() -> dict[str, np.ndarray]:
    """name -> (H, W, 3) uint8 RGB."""
    from PIL import Image, ImageDraw, ImageFont
    from skimage import data

    def rgb(array):
        return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array

    def with_text(photo, lines, size, angle=0):
        image = Image.fromarray(photo).convert("RGB")
        font = ImageFont.load_default(size=size)
        layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for row, (text, colour) in enumerate(lines):
            draw.text((20, 20 + row * int(size * 1.4)), text, fill=colour, font=font)
        layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC)
        return np.asarray(Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB"))

    page = data.page()
    return {
        "page": rgb(page),
        "page x3": rgb(np.asarray(Image.fromarray(page).resize((page.shape[1] * 3, page.shape[0] * 3), Image.Resampling.BICUBIC))),
        "text": rgb(data.text()),
        "chelsea + 3 lines": with_text(data.chelsea(), [("A cat named Chelsea", (255, 255, 255, 255)),
                                                        ("sits on the floor", (255, 255, 0, 255)),
                                                        ("Photo 2024 No. 17", (0, 0, 0, 255))], size=32),
        "coffee + 2 lines at 15 deg": with_text(data.coffee(), [("Fresh coffee served daily", (255, 255, 255, 255)),
                                                                ("Open 7am to 5pm", (20, 20, 20, 255))], size=36, angle=15),
    }


def easyocr_reader():
    from minipt.reference import bare_torchvision

    bare_torchvision()  # torchvision's wheel here is a CUDA build: its transforms import, its extension does not
    import torchvision

    if not hasattr(torchvision, "__version__"):  # EasyOCR's model/modules.py compares it; a bare package has none
        torchvision.__version__ = importlib.metadata.version("torchvision")
    import cv2
    import easyocr

    cv2.setNumThreads(THREADS)
    folder = Path(tempfile.mkdtemp(prefix="easyocr-models-"))  # the Reader wants both files in one folder
    for name, file in (("craft_mlt_25k", "craft_mlt_25k.pth"), ("easyocr-english-g2", "english_g2.pth")):
        os.symlink(resolve(name) / file, folder / file)
    reader = easyocr.Reader(["en"], gpu=False, model_storage_directory=str(folder), download_enabled=False, verbose=False)
    return reader, f"easyocr {importlib.metadata.version('easyocr')}"


def rapidocr_engine():
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        return None, "RapidOCR not installed (pip install rapidocr-onnxruntime): left out"
    from rapidocr_onnxruntime.utils import infer_engine

    versions = f"rapidocr-onnxruntime {importlib.metadata.version('rapidocr-onnxruntime')}, onnxruntime {importlib.metadata.version('onnxruntime')}"
    options = infer_engine.OrtInferSession._init_sess_opts  # RapidOCR takes no session settings beyond threads

    def not_spinning(config):  # ONNX Runtime's threads spin after a run by default, slowing the next case timed (bench/timing.py)
        session_options = options(config)
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return session_options

    infer_engine.OrtInferSession._init_sess_opts = staticmethod(not_spinning)
    try:
        return RapidOCR(intra_op_num_threads=THREADS, inter_op_num_threads=1), versions
    finally:
        infer_engine.OrtInferSession._init_sess_opts = staticmethod(options)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every case per image (default 5)")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    reader, easyocr_version = easyocr_reader()
    rapid, rapid_version = rapidocr_engine()
    detector, recogniser = ocr._default_models()  # what read_words uses: the detector fused and channels-last, in detector_dtype()
    plain = CRAFT.from_pretrained("craft_mlt_25k").eval()
    float32 = None if detector_dtype() == torch.float32 else ocr.load_detector(torch.float32)
    print_header(easyocr_version, rapid_version)
    print("Milliseconds per image (median of the rounds), in brackets the ratio to EasyOCR's Reader; box finding's share of "
          "each side's own time in the last two columns.\n")
    columns = ["image", "minipt words", "EasyOCR Reader ms", "minipt ms", "minipt, detector unfused ms"]
    columns += ["minipt, detector float32 ms"] if float32 is not None else []
    columns += ["RapidOCR ms", "minipt: boxes' share", "EasyOCR: boxes' share"]
    table = Table(columns, right=range(1, len(columns)))
    totals: dict[str, float] = {}
    for name, image in images().items():
        cases = {
            "easyocr": lambda: reader.readtext(image),
            "minipt": lambda: ocr.read_words(image),
            "minipt unfused": lambda: ocr.read_words(image, detector=plain, recogniser=recogniser),
            "minipt boxes": lambda: ocr.word_boxes(*detector.detect(image)[:2]),
            "easyocr boxes": lambda: reader.detect(image),
        }
        if float32 is not None:
            cases["minipt float32"] = lambda: ocr.read_words(image, detector=float32, recogniser=recogniser)
        if rapid is not None:
            cases["rapidocr"] = lambda: rapid(image)
        with torch.inference_mode():
            timings = round_robin(cases, args.repeats)
        seconds = {case: t.median for case, t in timings.items()}
        for case, value in seconds.items():
            totals[case] = totals.get(case, 0.0) + value
        words = len(ocr.read_words(image))
        table.row(*row(f"{name} ({image.shape[1]}x{image.shape[0]})", words, seconds, float32 is not None))
    table.row(*row("**all images**", "", totals, float32 is not None))
    for case, label in (("minipt", f"minipt (detector {str(detector_dtype()).removeprefix('torch.')})"),
                        ("minipt float32", "minipt, detector float32")):
        if case in totals:
            ratio = totals[case] / totals["easyocr"]
            verdict = "met" if ratio <= 0.5 else f"missed: {ratio / 0.5:.2f}x the time allowed"
            print(f"\n{label} / EasyOCR Reader over all images: {ratio:.2f} (target <= 0.50: {verdict})")
    return 0


def row(label: str, words, seconds: dict[str, float], with_float32: bool) -> list[str]:
    base = seconds["easyocr"]

    def cell(case):
        return "-" if case not in seconds else f"{seconds[case] * 1e3:.0f} ({seconds[case] / base:.2f})"

    cells = [label, str(words), f"{base * 1e3:.0f}", cell("minipt"), cell("minipt unfused")]
    cells += [cell("minipt float32")] if with_float32 else []
    return cells + [cell("rapidocr"), f"{seconds['minipt boxes'] / seconds['minipt']:.0%}", f"{seconds['easyocr boxes'] / base:.0%}"]


if __name__ == "__main__":
    sys.exit(main())
