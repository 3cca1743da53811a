"""The OCR pipeline (minipt.ocr): CRAFT's score maps to word boxes, against EasyOCR's own post-processing
(``craft_utils.getDetBoxes_core``, OpenCV's connected components, dilation and minimum-area rectangles) on the
real detector's maps, then the words of scikit-image's scanned ``page()`` read by the real recogniser, checked
against the text printed on the page.
"""

import importlib
import itertools
import math

import numpy as np
import pytest
import torch

from minipt import ocr
from minipt.errors import InputError, MiniptError
from minipt.models import craft as mc

pytestmark = pytest.mark.usefixtures("one_thread")

# The prose printed on skimage.data.page() (its last line is code: "markers = np.zeros_like(coins)")
PAGE_TEXT = ("Region-based segmentation Let us first determine markers of the coins and the background. These markers are "
             "pixels that we can label unambiguously as either object or background. Here, the markers are found at the "
             "two extreme parts of the histogram of grey values:")


@pytest.fixture(scope="module")
def detector():
    return mc.CRAFT.from_pretrained("craft_mlt_25k")


@pytest.fixture(scope="module")
def craft_utils():
    """EasyOCR's post-processing module; skipped, saying why, where easyocr (and its OpenCV) is not installed."""
    try:
        mc.reference_module()
        return importlib.import_module(mc._REFERENCE_PACKAGE + ".craft_utils")
    except (MiniptError, ImportError) as err:
        pytest.skip(f"EasyOCR's craft_utils is the reference and cannot be imported: {err}")


def photos():
    from skimage import data

    return {"page": data.page(), "text": data.text()}


@pytest.mark.parametrize("name", ["page", "text"])
def test_word_boxes_are_easyocrs(detector, craft_utils, name):
    """Same boxes, in the same order, as EasyOCR's getDetBoxes_core on the same maps (its defaults 0.7 / 0.4 / 0.4)."""
    region, affinity, _ = detector.detect(photos()[name])
    theirs = craft_utils.getDetBoxes_core(region.numpy(), affinity.numpy(), ocr.TEXT_THRESHOLD, ocr.LINK_THRESHOLD, ocr.LOW_TEXT)[0]
    ours = ocr.word_boxes(region, affinity)
    assert len(ours) == len(theirs) >= 1
    for index, (mine, expected) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(mine, np.asarray(expected, dtype=np.float64), atol=1e-3, err_msg=f"box {index}")


def test_reads_the_words_of_a_scanned_page():
    words = ocr.read_words(photos()["page"])
    truth = set(PAGE_TEXT.split())
    texts = [word.text for word in words]
    assert texts[:3] == ["Region-based", "segmentation", "Let"]  # the title, then the first line
    assert sum(text in truth for text in texts) >= 0.7 * len(words) and len(words) >= 40, texts
    for first, second in itertools.pairwise(["determine", "These", "either", "extreme", "values:"]):
        assert texts.index(first) < texts.index(second)  # lines top to bottom
    assert texts.index("markers") < texts.index("coins") < texts.index("and")  # words left to right
    assert all(0.0 <= word.confidence <= 1.0 and word.box.shape == (4, 2) for word in words)
    assert all((word.box >= -1).all() and (word.box[:, 0] <= 385).all() and (word.box[:, 1] <= 192).all() for word in words)
    sure = [word.text for word in words if word.confidence > 0.95]
    assert sum(text in truth for text in sure) >= 0.85 * len(sure), sure  # the code line and split words ("backg", "round") are not in it


def test_min_area_rect_of_a_turned_rectangle():
    """Points filling a 30 x 8 rectangle turned by 20 degrees: the rectangle found has its area and sides."""
    angle = math.radians(20)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    grid = np.stack(np.meshgrid(np.linspace(0, 30, 61), np.linspace(0, 8, 17)), axis=-1).reshape(-1, 2)
    box = ocr.min_area_rect(grid @ rotation.T + [50, 20])
    sides = sorted(np.linalg.norm(np.roll(box, -1, axis=0) - box, axis=1))
    np.testing.assert_allclose(sides, [8, 8, 30, 30], atol=1e-9)
    np.testing.assert_allclose(ocr.min_area_rect(np.array([[3.0, 4.0], [7.0, 4.0]])), [[3, 4], [7, 4], [7, 4], [3, 4]])  # a line


def test_reading_order():
    def box(x, y, w=20, h=10):
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=float)

    boxes = [box(60, 31), box(0, 0), box(30, 2), box(0, 30), box(60, -1)]
    assert ocr.reading_order(boxes) == [1, 2, 4, 3, 0]


def test_blank_and_empty_images(detector):
    recogniser = ocr.CRNN.from_pretrained("easyocr-english-g2")
    assert ocr.read_words(np.full((40, 60), 255, np.uint8), detector=detector, recogniser=recogniser) == []
    with pytest.raises(InputError, match="CRAFT got an empty image"):
        ocr.read_words(np.zeros((0, 10), np.uint8), detector=detector, recogniser=recogniser)
    with pytest.raises(InputError, match=r"the region and affinity maps differ in shape: \(4, 4\) and \(4, 5\)"):
        ocr.word_boxes(torch.zeros(4, 4), torch.zeros(4, 5))
