"""Reading the words in a photo: CRAFT finds them, the CRNN recogniser reads them (EasyOCR's pipeline).

    image -> craft.preprocess: pad to multiples of 32 (scale down past 2560 pixels), ImageNet-normalise
          -> CRAFT: region and affinity scores at half resolution
          -> word_boxes: pixels whose region score passes low_text or whose affinity passes link_threshold,
             4-connected components; each component of 10 pixels or more whose region score peaks at
             text_threshold or above is grown by a few pixels and enclosed in its minimum-area rectangle
          -> each box cropped from the grayscale image (the axis-aligned box around the rectangle, with a margin)
          -> the recogniser (minipt.models.crnn) on all crops in one batch, each resized to 64 rows and
             padded to the widest by repeating its last column, as EasyOCR pads
          -> greedy CTC text and EasyOCR's confidence, words in reading order (lines top to bottom, words left to right)

Only numpy and scipy (which scikit-image brings) are used for the boxes: no OpenCV.

    >>> from minipt.ocr import read_words
    >>> for word in read_words("sign.png"):
    ...     print(word.text, round(word.confidence, 2), word.box.tolist())
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .models.craft import CANVAS_SIZE, CRAFT, image_array
from .models.crnn import CRNN, preprocess as crnn_preprocess

# EasyOCR's defaults (Reader.readtext)
TEXT_THRESHOLD = 0.7  # a word's region score must peak at least this high
LOW_TEXT = 0.4  # region score above which a pixel is text
LINK_THRESHOLD = 0.4  # affinity score above which a pixel links two characters
MIN_SIZE = 10  # components of fewer pixels (on the half-resolution maps) are noise
MARGIN = 0.05  # of a box's height, added on every side of its crop (a tenth, EasyOCR's for whole lines, takes in strokes of the lines above and below)


@dataclass
class Word:
    box: np.ndarray  # (4, 2) corners (x, y) in the image's pixels, clockwise from the top left
    text: str
    confidence: float  # EasyOCR's: the product of the best class's probability over the characters read, ** (2 / sqrt(n))


# -- score maps -> boxes ------------------------------------------------------------
def word_boxes(region, affinity, *, text_threshold: float = TEXT_THRESHOLD, low_text: float = LOW_TEXT,
               link_threshold: float = LINK_THRESHOLD, min_size: int = MIN_SIZE) -> list[np.ndarray]:
    """Word rectangles (each (4, 2) corners (x, y), clockwise from the top left) on the maps' own grid."""
    from scipy import ndimage

    region, affinity = _map(region, "region"), _map(affinity, "affinity")
    if region.shape != affinity.shape:
        raise InputError(f"the region and affinity maps differ in shape: {region.shape} and {affinity.shape}")
    text, link = region > low_text, affinity > link_threshold
    labels, count = ndimage.label(text | link, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])  # 4-connected
    boxes = []
    for k, where in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[where] == k
        size = int(mask.sum())
        if size < min_size or region[where][mask].max() < text_threshold:
            continue
        # the component without its link-only pixels, grown by about twice the stroke width it implies
        segment = np.zeros(region.shape, dtype=bool)
        segment[where] = mask & ~(link[where] & ~text[where])
        top, left = where[0].start, where[1].start
        h, w = where[0].stop - top, where[1].stop - left
        grow = int(math.sqrt(size * min(w, h) / (w * h)) * 2)
        if grow:
            window = (slice(max(top - grow, 0), top + h + grow + 1), slice(max(left - grow, 0), left + w + grow + 1))
            # a square of side 1 + grow; an even side is anchored as OpenCV's dilate anchors it (origin -1 in scipy's terms)
            kernel = np.ones((1 + grow, 1 + grow), dtype=bool)
            segment[window] = ndimage.binary_dilation(segment[window], structure=kernel, origin=-1 if grow % 2 else 0)
        ys, xs = np.nonzero(segment)
        if len(xs) == 0:
            continue
        points = np.stack([xs, ys], axis=1).astype(np.float64)  # (N, 2) as (x, y)
        box = min_area_rect(points)
        side_a, side_b = np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[1] - box[2])
        if abs(1 - max(side_a, side_b) / (min(side_a, side_b) + 1e-5)) <= 0.1:  # nearly square: an upright box, as EasyOCR
            (x0, y0), (x1, y1) = points.min(0), points.max(0)
            box = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        boxes.append(np.roll(box, -int(box.sum(axis=1).argmin()), axis=0))  # start at the top left corner
    return boxes


def min_area_rect(points: np.ndarray) -> np.ndarray:
    """The smallest rectangle around ``points`` (N, 2): its four corners (4, 2), clockwise in image coordinates
    (y down). One side of the best rectangle lies along an edge of the convex hull (rotating calipers)."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        hull = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):  # fewer than three points, or all on one line
        hull = points
    edges = np.diff(np.vstack([hull, hull[:1]]), axis=0)
    angles = np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2)) if len(hull) > 1 else np.zeros(1)
    best = None
    for angle in angles:
        c, s = math.cos(angle), math.sin(angle)
        rotation = np.array([[c, s], [-s, c]])  # into the frame whose x axis lies along the edge
        turned = hull @ rotation.T
        low, high = turned.min(axis=0), turned.max(axis=0)
        area = float(np.prod(high - low))
        if best is None or area < best[0]:
            corners = np.array([[low[0], low[1]], [high[0], low[1]], [high[0], high[1]], [low[0], high[1]]])
            best = (area, corners @ rotation)  # back to image coordinates
    return best[1]


def _map(values, name: str) -> np.ndarray:
    array = values.detach().cpu().float().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float32)
    if array.ndim != 2:
        raise InputError(f"the {name} map must be 2-d (height, width), got shape {array.shape}")
    return array


# -- boxes -> text -------------------------------------------------------------------
def read_boxes(recogniser: CRNN, image, boxes: list[np.ndarray]) -> list[tuple[str, float]]:
    """(text, confidence) of each box (corners in the image's pixels), read from the grayscale image in one batch."""
    if not boxes:
        return []
    gray = image_array(image).float() @ torch.tensor([0.299, 0.587, 0.114])  # (H, W) luma, as Pillow's "L"; the recogniser reads one channel
    gray = gray.round().clamp(0, 255).to(torch.uint8)
    height, width = gray.shape
    lines = []
    for box in boxes:
        (x0, y0), (x1, y1) = box.min(axis=0), box.max(axis=0)
        margin = MARGIN * (y1 - y0)
        top, bottom = max(int(y0 - margin), 0), min(int(math.ceil(y1 + margin)), height)
        left, right = max(int(x0 - margin), 0), min(int(math.ceil(x1 + margin)), width)
        if bottom - top < 1 or right - left < 1:
            lines.append(None)
            continue
        lines.append(crnn_preprocess(gray[top:bottom, left:right].numpy(), recogniser.config.image_height))  # (1, 1, 64, w)
    widest = max(line.shape[-1] for line in lines if line is not None)
    batch = torch.cat([torch.cat([line, line[..., -1:].expand(-1, -1, -1, widest - line.shape[-1])], dim=-1)
                       for line in lines if line is not None])  # each padded with its last column, as EasyOCR pads
    first = next(recogniser.parameters())
    with torch.no_grad():
        logits = recogniser(batch.to(device=first.device, dtype=first.dtype)).float()  # (B, T, classes)
    texts = recogniser.decode(logits)
    best, index = logits.softmax(dim=-1).max(dim=-1)  # (B, T)
    read = iter(zip(texts, best, index))
    results = []
    for line in lines:
        if line is None:
            results.append(("", 0.0))
            continue
        text, probabilities, classes = next(read)
        kept = probabilities[classes != 0].double()  # the columns that are not the CTC blank
        confidence = float(kept.prod() ** (2.0 / math.sqrt(len(kept)))) if len(kept) else 0.0
        results.append((text, confidence))
    return results


def reading_order(boxes: list[np.ndarray]) -> list[int]:
    """Indices of ``boxes`` in reading order: lines from the top (a box joins a line when its centre lies within
    half the line's height of the line's centre), each line from the left."""
    order = sorted(range(len(boxes)), key=lambda i: boxes[i][:, 1].mean())
    lines: list[list[int]] = []
    for i in order:
        centre = boxes[i][:, 1].mean()
        if lines:
            line = lines[-1]
            line_centre = np.mean([boxes[j][:, 1].mean() for j in line])
            line_height = np.mean([np.ptp(boxes[j][:, 1]) for j in line])
            if abs(centre - line_centre) <= 0.5 * line_height:
                line.append(i)
                continue
        lines.append([i])
    return [i for line in lines for i in sorted(line, key=lambda j: boxes[j][:, 0].min())]


# -- the pipeline ----------------------------------------------------------------------
@functools.cache
def _default_models() -> tuple[CRAFT, CRNN]:
    return CRAFT.from_pretrained("craft_mlt_25k"), CRNN.from_pretrained("easyocr-english-g2")


def read_words(image, *, detector: CRAFT | None = None, recogniser: CRNN | None = None, canvas_size: int = CANVAS_SIZE,
               text_threshold: float = TEXT_THRESHOLD, low_text: float = LOW_TEXT, link_threshold: float = LINK_THRESHOLD) -> list[Word]:
    """The words in one image (a path, a PIL image or an (H, W[, 3]) uint8 array), in reading order.

    Without ``detector`` and ``recogniser``, EasyOCR's English models (craft_mlt_25k, easyocr-english-g2), loaded once."""
    if detector is None or recogniser is None:
        default_detector, default_recogniser = _default_models()
        detector, recogniser = detector or default_detector, recogniser or default_recogniser
    pixels = image_array(image)  # decoded once: (H, W, 3) uint8
    region, affinity, ratio = detector.detect(pixels, canvas_size=canvas_size)
    boxes = [box * (2 / ratio) for box in word_boxes(region, affinity, text_threshold=text_threshold, low_text=low_text,
                                                   link_threshold=link_threshold)]  # map cells are 2 input pixels
    boxes = [boxes[i] for i in reading_order(boxes)]
    return [Word(box, text, confidence) for box, (text, confidence) in zip(boxes, read_boxes(recogniser, pixels, boxes))]
