"""Reading the words in a photo: CRAFT finds them, the CRNN recogniser reads them (EasyOCR's pipeline).

    image -> craft.preprocess: pad to multiples of 32 (scale down past 2560 pixels), ImageNet-normalise
          -> CRAFT: region and affinity scores at half resolution
          -> word_boxes: pixels whose region score passes low_text or whose affinity passes link_threshold,
             4-connected components; each component of 10 pixels or more whose region score peaks at
             text_threshold or above is grown by a few pixels and enclosed in its minimum-area rectangle
          -> joined_runs: the boxes grouped into lines (line_groups: top to bottom, each left to right), and in
             each line, neighbouring level boxes of like height and a small gap joined into runs (EasyOCR's
             group_text_box)
          -> crop: each run cut from the grayscale image with a margin (the axis-aligned box around level
             boxes; a tilted one turned upright)
          -> read_boxes: the recogniser (minipt.models.crnn) on the crops, each resized to 64 rows, in batches
             of similar widths, each crop padded to the widest of its batch by repeating its last column (as
             EasyOCR pads); greedy CTC text and EasyOCR's confidence
          -> lines_from_boxes: each run's text split into its boxes' words where it reads one word per box,
             else, for a level run, its box split between the words where the recogniser's columns place the
             spaces (split_by_columns); and the lines, each with its rectangle, text and words

Only numpy and scipy (which scikit-image brings) are used for the boxes, and Pillow for the images: no OpenCV
(the ``ocr`` extra).

    >>> from minipt.ocr import read_lines, read_words
    >>> for word in read_words("sign.png"):
    ...     print(word.text, round(word.confidence, 2), word.box.tolist())
    >>> for line in read_lines("page.png"):
    ...     print(line.text)
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .checks import check_float, check_int
from .errors import InputError
from .models.craft import CANVAS_SIZE, CRAFT, image_array
from .models.crnn import CRNN, preprocess as crnn_preprocess
from .ops import detector_dtype
from .summary import evaluating
from .vision import pillow

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
def _thresholds(text_threshold, low_text, link_threshold) -> tuple[float, float, float]:
    """The three map thresholds, each a number in [0, 1] (checked before any model runs)."""
    return tuple(check_float(name, value, low=0, high=1) for name, value in (
        ("text_threshold", text_threshold), ("low_text", low_text), ("link_threshold", link_threshold)))


def word_boxes(region, affinity, *, text_threshold: float = TEXT_THRESHOLD, low_text: float = LOW_TEXT,
               link_threshold: float = LINK_THRESHOLD, min_size: int = MIN_SIZE) -> list[np.ndarray]:
    """Word rectangles (each (4, 2) corners (x, y), clockwise from the top left) on the maps' own grid."""
    from scipy import ndimage

    text_threshold, low_text, link_threshold = _thresholds(text_threshold, low_text, link_threshold)
    min_size = check_int("min_size", min_size, low=1)
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
TILT = 0.1  # a box whose top edge rises or falls more than this per pixel across (about 6 degrees) is cropped turned upright (EasyOCR's slope_ths)
WIDTH_SPREAD = 1.25  # crops are batched with others at most this much wider, and padded to the widest of their batch


def level(box: np.ndarray) -> bool:
    """Whether ``box`` (4, 2) is cropped as the axis-aligned rectangle around it: its top edge rises or falls at
    most ``TILT`` per pixel across."""
    across = box[1] - box[0]
    return bool(abs(across[1]) <= TILT * abs(across[0]))


def _level_crop(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): the pixels a level box's crop takes from an image of ``height`` x ``width``."""
    (x0, y0), (x1, y1) = box.min(axis=0), box.max(axis=0)
    margin = MARGIN * (y1 - y0)
    return (max(int(y0 - margin), 0), min(int(math.ceil(y1 + margin)), height),
            max(int(x0 - margin), 0), min(int(math.ceil(x1 + margin)), width))


def crop(gray: torch.Tensor, box: np.ndarray) -> np.ndarray | None:
    """The pixels of ``box`` (4, 2) in a grayscale (H, W) uint8 image, with ``MARGIN`` of its height on every side:
    the axis-aligned rectangle around a level box, or, for a tilted box, the box turned upright (bilinear, as
    EasyOCR's four_point_transform with OpenCV's warpPerspective). None where nothing of the box lies in the image."""
    height, width = gray.shape
    (x0, y0), (x1, y1) = box.min(axis=0), box.max(axis=0)
    across, down = box[1] - box[0], box[3] - box[0]  # the top edge (along the text) and the left edge
    if level(box):
        top, bottom, left, right = _level_crop(box, height, width)
        if bottom - top < 1 or right - left < 1:
            return None
        return gray[top:bottom, left:right].numpy()
    length, tall = np.linalg.norm(across), np.linalg.norm(down)
    if x1 < 0 or y1 < 0 or x0 > width or y0 > height or length < 1 or tall < 1:
        return None
    grow = MARGIN * tall
    along, normal = across / length, down / tall
    corners = [box[0] - grow * (along + normal), box[3] + grow * (normal - along),  # PIL's QUAD: top left, bottom left,
               box[2] + grow * (along + normal), box[1] + grow * (along - normal)]  # bottom right, top right
    size = (max(int(round(length + 2 * grow)), 1), max(int(round(tall + 2 * grow)), 1))
    Image = pillow().Image
    upright = Image.fromarray(gray.numpy()).transform(size, Image.Transform.QUAD, np.concatenate(corners).tolist(),
                                                      resample=Image.Resampling.BILINEAR, fillcolor=255)
    return np.array(upright)  # writable: the recogniser's preprocess makes a tensor of it


@dataclass
class Reading:
    """What the recogniser read in one crop."""
    text: str
    confidence: float  # EasyOCR's (see Word)
    columns: list[tuple[int, str]]  # each character of ``text`` and the recogniser's column it was read at (CRNN.decode_columns)
    scale: float  # the crop's pixels per pixel of the recogniser's 64-row copy of it: column t is at crop x ~ (4t + 2) * scale
    left: float  # the image's x at the crop's first pixel (a level crop's; 0 for a tilted one)


def read_boxes(recogniser: CRNN, image, boxes: list[np.ndarray]) -> list[tuple[str, float]]:
    """(text, confidence) of each box (corners in the image's pixels), read from the grayscale image (``read_crops``)."""
    return [(reading.text, reading.confidence) for reading in read_crops(recogniser, image, boxes)]


LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 weights of R, G, B, as Pillow's convert("L")
GRAY_BAND = 256  # rows converted to grey at a time


def read_crops(recogniser: CRNN, image, boxes: list[np.ndarray]) -> list[Reading]:
    """What the recogniser reads in each box (corners in the image's pixels), cropped from the grayscale image.

    The crops, each resized to the recogniser's 64 rows, are read in batches of similar widths, each padded to its
    widest by repeating its last column (as EasyOCR pads every crop to the widest of all): a long line does not make
    every short word pay for its width."""
    if not boxes:
        return []
    rgb = image_array(image)  # (H, W, 3) uint8
    gray = torch.empty(rgb.shape[:2], dtype=torch.uint8)  # (H, W) luma, as Pillow's "L"; the recogniser reads one channel
    for top in range(0, rgb.shape[0], GRAY_BAND):  # in bands of rows: floats for a band, not the whole image
        gray[top:top + GRAY_BAND] = (rgb[top:top + GRAY_BAND].float() @ LUMA).round().clamp(0, 255).to(torch.uint8)
    lines, scales = [], []
    for box in boxes:
        pixels = crop(gray, box)
        lines.append(None if pixels is None else crnn_preprocess(pixels, recogniser.config.image_height))  # (1, 1, 64, w)
        scales.append(1.0 if pixels is None else pixels.shape[1] / lines[-1].shape[-1])
    lefts = [float(_level_crop(box, *gray.shape)[2]) if level(box) else 0.0 for box in boxes]
    first = next(recogniser.parameters())
    threads = recognition_threads(recogniser) if first.device.type == "cpu" else torch.get_num_threads()
    results = [Reading("", 0.0, [], scale, left) for scale, left in zip(scales, lefts)]
    order = sorted((i for i, line in enumerate(lines) if line is not None), key=lambda i: lines[i].shape[-1])
    while order:
        narrowest = lines[order[0]].shape[-1]
        batch = [i for i in order if lines[i].shape[-1] <= WIDTH_SPREAD * narrowest]
        order = order[len(batch):]
        widest = lines[batch[-1]].shape[-1]
        pixels = torch.cat([torch.cat([lines[i], lines[i][..., -1:].expand(-1, -1, -1, widest - lines[i].shape[-1])], dim=-1)
                            for i in batch])  # (B, 1, 64, widest): each padded with its last column
        with evaluating(recogniser), torch.no_grad(), _threads(threads):  # BatchNorm's running statistics, kept as they are
            logits = recogniser(pixels.to(device=first.device, dtype=first.dtype)).float()  # (B, T, classes)
        best, index = logits.softmax(dim=-1).max(dim=-1)  # (B, T)
        for i, columns, probabilities, classes in zip(batch, recogniser.decode_columns(logits), best, index):
            kept = probabilities[classes != 0].double()  # the columns that are not the CTC blank
            confidence = float(kept.prod() ** (2.0 / math.sqrt(len(kept)))) if len(kept) else 0.0
            results[i] = Reading("".join(char for _, char in columns), confidence, columns, scales[i], lefts[i])
    return results


def split_by_columns(box: np.ndarray, reading: Reading) -> list[Word]:
    """The words of a level ``box`` read as ``reading`` (several words), each boxed by its part of the box: the box is
    cut halfway between the columns of the last character of a word and the first of the next, placed in the image
    through the crop. Each word has the reading's confidence."""
    words, current = [], []  # (first column, last column, text) of each word
    for column, char in reading.columns + [(-1, " ")]:
        if char.isspace():
            if current:
                words.append((current[0][0], current[-1][0], "".join(c for _, c in current)))
            current = []
        else:
            current.append((column, char))
    (x0, y0), (x1, y1) = box.min(axis=0), box.max(axis=0)
    cuts = [float(np.clip(reading.left + (2 * (last + first) + 2) * reading.scale, x0, x1))  # at column (last + first) / 2
            for (_, last, _), (first, _, _) in zip(words, words[1:])]
    edges = [float(x0)] + cuts + [float(x1)]
    return [Word(np.array([[a, y0], [b, y0], [b, y1], [a, y1]], dtype=np.float64), text, reading.confidence)
            for (_, _, text), a, b in zip(words, edges, edges[1:])]


def line_groups(boxes: list[np.ndarray]) -> list[list[int]]:
    """Indices of ``boxes`` grouped into lines of text, the lines from the top, each line's boxes from the left.

    Boxes are taken by the height of their centres. A box joins the line whose axis passes nearest its centre,
    within half the line's height; else it starts a line. A line's axis runs through the centre of its box nearest
    across (so a line may bend, as a curved page does) at the line's slope: its boxes' slopes weighted by their
    widths, a box within ``TILT`` of level counting as level (as ``crop`` takes it) and a box boxed upright because
    it is nearly square (a short word, which says nothing of the line's direction) not counting. A line all of whose
    boxes lie on the axis of another line of as many boxes or more then joins it (one box may start a line before its line's boxes are
    seen: a short word higher than its rising line, a box more tilted than its line). Lines are ordered
    by where they cross the vertical through the middle of all boxes. Words of one row are one line however far
    apart: columns are not told apart."""
    centres = [box.mean(axis=0) for box in boxes]
    heights = [float(np.linalg.norm(box[3] - box[0])) for box in boxes]
    widths = [float(np.linalg.norm(box[1] - box[0])) for box in boxes]
    slopes = [_slope(box) if abs(_slope(box)) > TILT else 0.0 for box in boxes]
    directed = [0.0 if abs(1 - max(w, h) / (min(w, h) + 1e-5)) <= 0.1 else w for w, h in zip(widths, heights)]  # word_boxes' square test
    lines: list[list[int]] = []

    def axis(line: list[int], x: float) -> float:  # the height of the line's axis at x
        weight = sum(directed[j] for j in line)
        slope = sum(slopes[j] * directed[j] for j in line) / weight if weight else 0.0
        cx, cy = centres[min(line, key=lambda j: abs(centres[j][0] - x))]
        return float(cy + slope * (x - cx))

    for i in sorted(range(len(boxes)), key=lambda i: centres[i][1]):
        (x, y), best = centres[i], None
        for line in lines:
            distance = abs(y - axis(line, x))
            if distance <= 0.5 * np.mean([heights[j] for j in line]) and (best is None or distance < best[0]):
                best = (distance, line)
        if best is None:
            lines.append([i])
        else:
            best[1].append(i)
    # Taken from the top, a box may start a line before the boxes of its own line are seen: a word higher than its
    # line (the last word of a rising line) or tilted more than it (an axis that misses its neighbours). A line whose
    # every box lies on another line's axis, by that line's own boxes, joins it; the shortest lines first.
    joined = True
    while joined and len(lines) > 1:
        joined = False
        for short in sorted(lines, key=len):
            into = next((line for line in lines if line is not short and len(line) >= len(short) and all(
                abs(centres[i][1] - axis(line, centres[i][0])) <= 0.5 * np.mean([heights[j] for j in line]) for i in short)), None)
            if into is not None:
                into.extend(short)
                lines.remove(short)
                joined = True
                break
    middle = float(np.mean([c[0] for c in centres])) if boxes else 0.0
    lines.sort(key=lambda line: axis(line, middle))
    return [sorted(line, key=lambda j: boxes[j][:, 0].min()) for line in lines]


def joined_runs(boxes: list[np.ndarray]) -> list[list[list[int]]]:
    """Indices of ``boxes``: the lines of ``line_groups``, each a list of runs from the left, each run read from
    one crop, as EasyOCR's ``group_text_box`` joins boxes before reading. In a line, a level box (within ``TILT``)
    joins the level run before it where its height differs from the run's mean height by less than half of it and
    its gap to the run is under half its own height. CRAFT often cuts a word in two boxes ("backg", "round"), and
    a short word alone in its crop ("a", "=") reads worse than in its phrase. A tilted box is a run of its own."""
    spans = [(*box.min(axis=0), *box.max(axis=0)) for box in boxes]  # x0, y0, x1, y1
    level = [abs(_slope(box)) <= TILT for box in boxes]
    lines = []
    for line in line_groups(boxes):
        runs: list[list[int]] = []
        for i in line:
            height = spans[i][3] - spans[i][1]
            run = runs[-1] if runs else []
            mean_height = float(np.mean([spans[j][3] - spans[j][1] for j in run])) if run else 0.0
            if run and level[i] and level[run[-1]] and abs(mean_height - height) < 0.5 * mean_height \
                    and spans[i][0] - max(spans[j][2] for j in run) < 0.5 * height:
                run.append(i)
            else:
                runs.append([i])
        lines.append(runs)
    return lines


def _slope(box: np.ndarray) -> float:
    """How much the top edge of a box (top left to top right corner) falls per pixel across."""
    dx, dy = box[1] - box[0]
    return float(dy / dx) if abs(dx) > 1e-9 else 0.0


_thread_choices: dict[tuple, int] = {}  # (recogniser's widths, torch's threads) -> the threads it reads on


def recognition_threads(recogniser: CRNN) -> int:
    """1 where the recogniser reads a typical batch of crops (8 words, 64 x 128 pixels) faster on one thread than
    on torch's ``get_num_threads()``, else torch's number: measured once per process and recogniser width, as
    ``minipt.ops.cpu.linear_threads`` measures small products. Its convolutions are small and its LSTM steps
    through 256-wide matrices one column at a time: each step wakes the other threads, and where the CPU is
    shared, one descheduled thread stalls every step (on the 2-core machine of docs/benchmarks.md, loaded by
    other jobs, the scanned page's words took 2.6 s on one thread against 16.5 s on two)."""
    threads = torch.get_num_threads()
    key = (recogniser.config.channels, recogniser.config.hidden_size, threads)
    if threads == 1 or key in _thread_choices:
        return _thread_choices.get(key, 1)
    first = next(recogniser.parameters())
    batch = torch.randn(8, recogniser.config.in_channels, recogniser.config.image_height, 128,
                        generator=torch.Generator().manual_seed(0)).to(first.dtype)
    runs: dict[int, list[float]] = {threads: [], 1: []}
    with evaluating(recogniser), torch.no_grad():  # a recogniser in training mode keeps its BatchNorms' statistics
        for _ in range(4):  # the first of each is a warm-up
            for n in runs:
                with _threads(n):
                    start = time.perf_counter()
                    recogniser(batch)
                    runs[n].append(time.perf_counter() - start)
    _thread_choices[key] = 1 if min(runs[1][1:]) * 1.10 < min(runs[threads][1:]) else threads
    return _thread_choices[key]


@contextlib.contextmanager
def _threads(count: int):
    """torch set to ``count`` threads inside, its setting restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Line:
    box: np.ndarray  # (4, 2) the minimum-area rectangle around its words' boxes, clockwise from the top left
    text: str  # its words' texts joined by spaces
    confidence: float  # its least sure word's
    words: list[Word]


def _line(words: list[Word]) -> Line:
    """The line of ``words``, in their order."""
    box = min_area_rect(np.concatenate([word.box for word in words]).astype(np.float64))
    box = np.roll(box, -int(box.sum(axis=1).argmin()), axis=0)  # start at the top left corner
    return Line(box, " ".join(word.text for word in words), min(word.confidence for word in words), words)


def lines_from_boxes(recogniser: CRNN, image, boxes: list[np.ndarray]) -> list[Line]:
    """The lines of text that word ``boxes`` ((4, 2) corners in ``image``'s pixels) hold, from the top, each with
    its words from the left: the boxes grouped into lines and joined into runs (``joined_runs``), each run read
    from one crop (``read_crops``). Where a run reads as many words as it has boxes, each box keeps its word; where
    a level run (or box) reads several words otherwise (more words than boxes: words run together; fewer: a word
    CRAFT cut in two beside another), its box is split between them (``split_by_columns``); else the run is one
    ``Word``, boxed by the upright rectangle around it (a word cut in two, or a tilted run)."""
    lines = joined_runs(boxes)
    runs = [run for line in lines for run in line]
    run_boxes = []
    for run in runs:  # a run of several boxes is cropped as the upright rectangle around them
        corners = np.concatenate([boxes[i] for i in run])
        (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
        run_boxes.append(boxes[run[0]] if len(run) == 1 else np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64))
    read = iter(zip(runs, run_boxes, read_crops(recogniser, image, run_boxes)))
    result = []
    for line in lines:
        words = []
        for run, run_box, reading in itertools.islice(read, len(line)):
            parts = reading.text.split()
            if len(run) > 1 and len(parts) == len(run):  # as many words read as boxes joined: each box keeps its word
                words += [Word(boxes[i], part, reading.confidence) for i, part in zip(run, parts)]
            elif len(parts) > 1 and level(run_box):  # words run together, or a word cut in two beside another: split
                words += split_by_columns(run_box, reading)
            else:
                words.append(Word(run_box, " ".join(parts), reading.confidence))
        result.append(_line(words))
    return result


# -- the pipeline ----------------------------------------------------------------------
def load_detector(dtype: torch.dtype | None = None) -> CRAFT:
    """EasyOCR's detector (craft_mlt_25k) as the pipeline runs it: fused (BatchNorm folded into its convolutions)
    in ``dtype`` and channels-last, the layout oneDNN's convolutions run fastest in. ``dtype`` None: the one this CPU
    runs it fastest in without reading worse (``minipt.ops.detector_dtype``: bfloat16 where native, else float32)."""
    return CRAFT.from_pretrained("craft_mlt_25k").fuse(dtype or detector_dtype()).to(memory_format=torch.channels_last)


@functools.cache
def _default_models() -> tuple[CRAFT, CRNN]:
    """EasyOCR's English models: the detector as ``load_detector()`` gives it; the recogniser reads in float32."""
    return load_detector(), CRNN.from_pretrained("easyocr-english-g2").eval()


def read_lines(image, *, detector: CRAFT | None = None, recogniser: CRNN | None = None, canvas_size: int = CANVAS_SIZE,
               text_threshold: float = TEXT_THRESHOLD, low_text: float = LOW_TEXT, link_threshold: float = LINK_THRESHOLD) -> list[Line]:
    """The lines of text in one image (a path, a PIL image or an (H, W[, 3|4]) uint8 or uint16 array, its channels
    RGB(A): OpenCV's ``cv2.imread`` gives BGR, ``[..., ::-1]`` turns it, where EasyOCR takes BGR arrays), from the
    top, each with its words from the left.

    The detector's word boxes are read by ``lines_from_boxes``.

    Without ``detector`` and ``recogniser``, EasyOCR's English models (craft_mlt_25k, easyocr-english-g2), loaded once,
    the detector in bfloat16 where the CPU computes it natively (``minipt.ops.detector_dtype``); for float32 on every
    CPU, pass ``detector=load_detector(torch.float32)``.
    An image too small to hold a word (CRAFT's maps of it have fewer than ``MIN_SIZE`` cells) is refused."""
    for name, value, kind in (("detector", detector, CRAFT), ("recogniser", recogniser, CRNN)):
        if value is not None and not isinstance(value, kind):
            raise InputError(f"{name} must be a {kind.__name__} model ({kind.__name__}.from_pretrained(...)), got {type(value).__name__}" + ("" if isinstance(value, torch.nn.Module) else f" {value!r:.60}"))
    canvas_size = check_int("canvas_size", canvas_size, low=1)
    text_threshold, low_text, link_threshold = _thresholds(text_threshold, low_text, link_threshold)
    if detector is None or recogniser is None:
        default_detector, default_recogniser = _default_models()
        detector, recogniser = detector or default_detector, recogniser or default_recogniser
    pixels = image_array(image)  # decoded once: (H, W, 3) uint8
    height, width = pixels.shape[:2]
    if height and width:  # an empty image is refused by the detector, by name
        scale = min(canvas_size, max(height, width)) / max(height, width)
        cells = (int(height * scale) // 2) * (int(width * scale) // 2)
        if cells < MIN_SIZE:
            raise InputError(f"a {width}x{height} image is too small to hold a word: CRAFT's score maps of it have {cells} cells "
                             f"(half its size each way), and a word takes at least {MIN_SIZE}")
    region, affinity, ratio = detector.detect(pixels, canvas_size=canvas_size)
    boxes = [box * (2 / ratio) for box in word_boxes(region, affinity, text_threshold=text_threshold, low_text=low_text,
                                                   link_threshold=link_threshold)]  # map cells are 2 input pixels
    return lines_from_boxes(recogniser, pixels, boxes)


def read_words(image, **options) -> list[Word]:
    """The words in one image, in reading order: those of ``read_lines`` (with the same options), line after line."""
    return [word for line in read_lines(image, **options) for word in line.words]
