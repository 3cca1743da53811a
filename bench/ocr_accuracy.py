"""Character error rate and word accuracy of minipt's OCR pipeline, EasyOCR's Reader and RapidOCR on one set.

    python bench/ocr_accuracy.py [--set DIR] [--systems minipt,easyocr,rapidocr] [--failures N] [--threads N]

The set is bench/ocr_set.py's (built into DIR first when DIR holds none). The systems:

- minipt: ``minipt.ocr.read_words`` with its defaults (craft_mlt_25k in ``minipt.ops.detector_dtype()``, easyocr-english-g2);
- easyocr: EasyOCR's own ``Reader(["en"])`` with its ``readtext`` defaults, on the same two files (given through
  ``model_storage_directory`` with downloads off; EasyOCR checks their md5 sums itself);
- easyocr-float (only when asked for): the same Reader with ``quantize=False``, its recogniser in float32 as
  minipt's is;
- rapidocr: ``rapidocr_onnxruntime.RapidOCR()`` with its defaults: PaddleOCR's PP-OCRv4 detector and recogniser
  and its orientation classifier, from its own wheel, on ONNX Runtime (``pip install rapidocr-onnxruntime``).

How a reading is scored against the truth of an image (each image's ``lines``):

- what a system returns (boxes and their text) is put in reading order by one rule for every system
  (``reading_order``: boxes whose centres lie within half a line's height of the line's centre form a line,
  lines from the top, boxes from the left) and joined with single spaces. The set puts each truth line in its own
  horizontal band, so this order is the truth's order whenever the boxes are right;
- both texts are compared after NFKC, case folding and collapsing runs of whitespace to one space;
- CER: the Levenshtein distance between the read text and the truth (characters, spaces included) over the
  truth's length, summed over the set (the total edits over the total characters). ``CER (case)`` is the same
  without case folding;
- word accuracy: the truth's words (split at whitespace) that are among the read words, each read word used
  once (multiset intersection, order ignored), over the truth's words; precision: the same count over the read
  words. A word is right only when all its characters are (punctuation included);
- an image is a failure when any of its truth words is missed; failures are listed with what each system read.
  Text that the photographs themselves hold (a name tag, a badge) is not in the truth: a system that reads it
  loses precision and CER, not word accuracy.

``--variant NAME`` (repeatable) adds minipt's pipeline with a change made in this script (``VARIANTS``:
``unjoined``, ``min-size``, ``float32-detector``, ``bfloat16-detector``, ``easyocr-resize``; ``boxes``, none, as a check), to show what moves its numbers; they change
nothing in minipt.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import ocr_set  # noqa: E402


# -- scoring --------------------------------------------------------------------------------------
def normalise(text: str, *, fold: bool = True) -> str:
    text = " ".join(unicodedata.normalize("NFKC", text).split())
    return text.casefold() if fold else text


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def reading_order(items: list[tuple[np.ndarray, str]]) -> list[str]:
    """The texts of (box (N, 2) as (x, y), text) items in reading order: lines from the top, boxes from the left."""
    order = sorted(range(len(items)), key=lambda i: items[i][0][:, 1].mean())
    lines: list[list[int]] = []
    for i in order:
        centre = items[i][0][:, 1].mean()
        if lines:
            line = lines[-1]
            line_centre = np.mean([items[j][0][:, 1].mean() for j in line])
            line_height = np.mean([np.ptp(items[j][0][:, 1]) for j in line])
            if abs(centre - line_centre) <= 0.5 * line_height:
                line.append(i)
                continue
        lines.append([i])
    return [items[i][1] for line in lines for i in sorted(line, key=lambda j: items[j][0][:, 0].min())]


def score(read: str, truth: str) -> dict:
    """Edits (case folded and exact), truth characters, truth words, read words and words found for one image."""
    r, t = normalise(read), normalise(truth)
    found = sum((Counter(r.split()) & Counter(t.split())).values())
    return dict(edits=levenshtein(r, t), edits_case=levenshtein(normalise(read, fold=False), normalise(truth, fold=False)),
                chars=len(t), words=len(t.split()), read_words=len(r.split()), found=found)


def totals(scores: list[dict]) -> dict:
    s = {key: sum(x[key] for x in scores) for key in scores[0]}
    return dict(cer=s["edits"] / s["chars"], cer_case=s["edits_case"] / s["chars"], word_accuracy=s["found"] / s["words"],
                precision=s["found"] / max(s["read_words"], 1), perfect=sum(x["found"] == x["words"] for x in scores),
                images=len(scores))


# -- the systems ------------------------------------------------------------------------------------
def minipt_system(**options):
    from minipt import ocr

    def run(path: Path) -> list[tuple[np.ndarray, str]]:
        return [(word.box, word.text) for word in ocr.read_words(str(path), **options)]

    return run


def easyocr_system(quantize: bool = True):
    from importlib.metadata import version

    from minipt.hub import resolve
    from minipt.reference import bare_torchvision

    bare_torchvision()  # torchvision's wheel here is a CUDA build: its transforms import, its extension does not
    import torchvision

    if not hasattr(torchvision, "__version__"):  # EasyOCR's modules.py compares it; a bare package has none
        torchvision.__version__ = version("torchvision")
    import easyocr

    folder = Path(tempfile.mkdtemp(prefix="easyocr-models-"))  # the Reader wants both files in one folder
    for key, name in (("craft_mlt_25k", "craft_mlt_25k.pth"), ("easyocr-english-g2", "english_g2.pth")):
        os.symlink(resolve(key) / name, folder / name)
    reader = easyocr.Reader(["en"], gpu=False, model_storage_directory=str(folder), download_enabled=False, verbose=False,
                            quantize=quantize)  # on the CPU EasyOCR makes the recogniser's LSTM and Linear int8 unless told not to

    def run(path: Path) -> list[tuple[np.ndarray, str]]:
        return [(np.asarray(box, dtype=np.float64), text) for box, text, _ in reader.readtext(str(path))]

    return run, f"easyocr {easyocr.__version__}"


def rapidocr_system():
    from importlib.metadata import version

    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR()

    def run(path: Path) -> list[tuple[np.ndarray, str]]:
        result, _ = engine(str(path))
        return [(np.asarray(box, dtype=np.float64), text) for box, text, _ in (result or [])]

    return run, f"rapidocr-onnxruntime {version('rapidocr-onnxruntime')}, onnxruntime {version('onnxruntime')}"


# -- changes tried on minipt's pipeline (they change nothing in minipt) -------------------------------
@functools.cache
def _boxes(path: Path):
    """minipt's word boxes of one image in its pixels (``read_words``' own steps), computed once for every variant."""
    from minipt import ocr
    from minipt.models.craft import image_array

    detector, _ = ocr._default_models()
    pixels = image_array(str(path))
    region, affinity, ratio = detector.detect(pixels)
    return pixels, [box * (2 / ratio) for box in ocr.word_boxes(region, affinity)]


def variant(*, joined: bool = True, min_size: int = 0):
    """minipt's boxes read as ``read_lines`` reads them (``lines_from_boxes``), after: ``joined=False``: each box
    read from its own crop, in reading order (minipt before it joined runs of boxes as EasyOCR does);
    ``min_size``: boxes whose width and height are both under ``min_size`` pixels dropped (EasyOCR's ``min_size``)."""
    from minipt import ocr

    _, recogniser = ocr._default_models()

    def run(path: Path) -> list[tuple[np.ndarray, str]]:
        pixels, boxes = _boxes(path)
        if min_size:
            boxes = [b for b in boxes if np.ptp(b[:, 0]) >= min_size or np.ptp(b[:, 1]) >= min_size]
        if not joined:
            boxes = [boxes[i] for i in (i for line in ocr.line_groups(boxes) for i in line)]
            return list(zip(boxes, (text for text, _ in ocr.read_boxes(recogniser, pixels, boxes))))
        return [(word.box, word.text) for line in ocr.lines_from_boxes(recogniser, pixels, boxes) for word in line.words]

    return run


def fused_detector(dtype_name: str):
    """minipt's pipeline with the detector in ``dtype_name`` (``minipt.ocr.load_detector``) on every CPU, where
    its default takes ``minipt.ops.detector_dtype()``: bfloat16 where the CPU has bfloat16 instructions (AVX512-BF16,
    AMX; about half float32's time there), float32 elsewhere (where bfloat16 is emulated and several times slower)."""
    import torch

    from minipt import ocr

    return minipt_system(detector=ocr.load_detector(getattr(torch, dtype_name)))


def easyocr_crop_resize(pixels, height: int = 64):
    """A (H, W) uint8 crop -> (1, 1, height, W') as EasyOCR's recogniser resizes it, in two steps: bilinear (OpenCV's
    INTER_LINEAR, which EasyOCR asks for with Pillow's LANCZOS constant, 1) to ``height`` rows and the width
    truncated, then Pillow's bicubic to the width rounded up; within one grey level of EasyOCR's. minipt's
    ``crnn.preprocess`` resizes once, bicubic."""
    import math

    import torch
    import torch.nn.functional as F
    from PIL import Image

    pixels = torch.as_tensor(np.asarray(pixels))
    h, w = pixels.shape
    first = (max(1, int(height * w / h)), height) if w >= h else (height, max(1, int(height * h / w)))  # (width, rows)
    resized = F.interpolate(pixels.float()[None, None], size=first[::-1], mode="bilinear", align_corners=False)
    gray = Image.fromarray(resized[0, 0].round().clamp(0, 255).to(torch.uint8).numpy())
    width = max(8, math.ceil(height * first[0] / first[1]))
    gray = gray.resize((width, height), Image.BICUBIC)
    return (torch.from_numpy(np.asarray(gray).copy()).float().view(1, 1, height, width) / 255 - 0.5) / 0.5


def easyocr_resize():
    """minipt's pipeline with every crop resized as EasyOCR resizes it (``easyocr_crop_resize``)."""
    from minipt import ocr

    inner = variant()

    def run(path: Path):
        original, ocr.crnn_preprocess = ocr.crnn_preprocess, easyocr_crop_resize
        try:
            return inner(path)
        finally:
            ocr.crnn_preprocess = original

    return run


VARIANTS = {  # name -> a function building a system
    "boxes": lambda: variant(),  # minipt's own steps through the cached boxes: scores as minipt does
    "unjoined": lambda: variant(joined=False),
    "min-size": lambda: variant(min_size=20),
    "float32-detector": lambda: fused_detector("float32"),
    "bfloat16-detector": lambda: fused_detector("bfloat16"),
    "easyocr-resize": easyocr_resize,
}


# -- the report ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=None, help="the set's folder (default: minipt's cache, ocr-set/)")
    parser.add_argument("--systems", default="minipt,easyocr,rapidocr")
    parser.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS), help="also run minipt with this change")
    parser.add_argument("--failures", type=int, default=1000, help="list at most this many failed images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from timing import header

    torch.set_num_threads(args.threads)
    folder = args.set or ocr_set.default_dir()
    if not (folder / "truth.json").is_file():
        ocr_set.build(folder)
    samples = ocr_set.load(folder)

    systems, versions = {}, []
    for name in args.systems.split(","):
        if name == "minipt":
            systems[name] = minipt_system()
        elif name == "easyocr":
            systems[name], v = easyocr_system()
            versions.append(v)
        elif name == "easyocr-float":
            systems[name], v = easyocr_system(quantize=False)
            versions.append(v)
        elif name == "rapidocr":
            try:
                systems[name], v = rapidocr_system()
                versions.append(v)
            except ImportError as err:
                print(f"rapidocr left out: {err} (pip install rapidocr-onnxruntime)", file=sys.stderr)
        else:
            parser.error(f"unknown system {name!r}")
    variants = [f"minipt+{name}" for name in args.variant]
    for name in args.variant:
        systems[f"minipt+{name}"] = VARIANTS[name]()

    print(header(*dict.fromkeys(versions)) + "\n")
    read = {name: {} for name in systems}
    scores = {name: [] for name in systems}
    for index, (path, sample) in enumerate(samples, start=1):
        print(f"[{index}/{len(samples)}] {sample.name}", file=sys.stderr, flush=True)
        for name, run in systems.items():
            text = " ".join(reading_order(run(path)))
            read[name][sample.name] = text
            scores[name].append(score(text, sample.text))

    kinds = sorted({s.kind for _, s in samples}, key=lambda k: (k not in ("scan", "logo"), k))
    print(f"{len(samples)} images, {sum(len(s.text.split()) for _, s in samples)} words, "
          f"{sum(len(normalise(s.text)) for _, s in samples)} characters\n")
    print("| system | CER | CER (case) | word accuracy | word precision | images all right |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in systems:
        t = totals(scores[name])
        print(f"| {name} | {t['cer']:.3f} | {t['cer_case']:.3f} | {t['word_accuracy']:.3f} | {t['precision']:.3f} | "
              f"{t['perfect']}/{t['images']} |")

    print("\nWord accuracy by kind of image:\n")
    print("| kind | images | words | " + " | ".join(systems) + " |")
    print("|---|---:|---:|" + "---:|" * len(systems))
    for kind in kinds:
        rows = [i for i, (_, s) in enumerate(samples) if s.kind == kind]
        cells = [f"{totals([scores[name][i] for i in rows])['word_accuracy']:.2f}" for name in systems]
        print(f"| {kind} | {len(rows)} | {sum(scores[next(iter(systems))][i]['words'] for i in rows)} | " + " | ".join(cells) + " |")

    listed = [name for name in systems if name not in variants]  # the variants are in the tables only
    failed = [i for i, _ in enumerate(samples) if any(scores[name][i]["found"] < scores[name][i]["words"] for name in listed)]
    print(f"\nImages where a system missed a word ({len(failed)}; found/words and CER per system, then what each read):\n")
    for i in failed[:args.failures]:
        _, sample = samples[i]
        marks = ", ".join(f"{name} {scores[name][i]['found']}/{scores[name][i]['words']} "
                          f"({scores[name][i]['edits'] / scores[name][i]['chars']:.2f})" for name in listed)
        print(f"- `{sample.name}`: {marks}")
        print(f"  - truth: `{sample.text}`")
        for name in listed:
            print(f"  - {name}: `{read[name][sample.name]}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
