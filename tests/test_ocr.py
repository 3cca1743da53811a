"""The OCR pipeline (minipt.ocr): CRAFT's score maps to word boxes, against EasyOCR's own post-processing
(``craft_utils.getDetBoxes_core``, OpenCV's connected components, dilation and minimum-area rectangles) on the
real detector's maps, then the words of scikit-image's scanned ``page()`` read by the real recogniser, checked
against the text printed on the page.
"""

import importlib
import itertools
import math
import re
import warnings

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
    assert not [text for text in texts if " " in text]  # a word is one word ("or" beside "backg" + "round": two)
    assert all((word.box >= -1).all() and (word.box[:, 0] <= 385).all() and (word.box[:, 1] <= 192).all() for word in words)
    sure = [word.text for word in words if word.confidence > 0.95]
    assert sum(text in truth for text in sure) >= 0.85 * len(sure), sure  # the code line and split words ("backg", "round") are not in it


def test_the_default_detector_takes_the_cpus_dtype_and_either_reads_the_page_alike():
    """bfloat16 where the CPU computes it natively, else float32 (minipt.ops.detector_dtype); the page's words and
    boxes are the same with the detector in either dtype (emulated bfloat16 too, slower)."""
    from minipt.ops import detector_dtype

    detector, _ = ocr._default_models()
    assert next(detector.parameters()).dtype == detector_dtype()
    page = photos()["page"]
    read = {}
    for dtype in (torch.float32, torch.bfloat16):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # fuse(torch.bfloat16) says where bfloat16 is emulated
            read[dtype] = ocr.read_words(page, detector=ocr.load_detector(dtype))
    texts = {dtype: [word.text for word in words] for dtype, words in read.items()}
    assert texts[torch.float32] == texts[torch.bfloat16] and len(texts[torch.float32]) >= 40
    for single, half in zip(read[torch.float32], read[torch.bfloat16]):
        np.testing.assert_allclose(half.box, single.box, atol=3)  # pixels


def test_min_area_rect_of_a_turned_rectangle():
    """Points filling a 30 x 8 rectangle turned by 20 degrees: the rectangle found has its area and sides."""
    angle = math.radians(20)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    grid = np.stack(np.meshgrid(np.linspace(0, 30, 61), np.linspace(0, 8, 17)), axis=-1).reshape(-1, 2)
    box = ocr.min_area_rect(grid @ rotation.T + [50, 20])
    sides = sorted(np.linalg.norm(np.roll(box, -1, axis=0) - box, axis=1))
    np.testing.assert_allclose(sides, [8, 8, 30, 30], atol=1e-9)
    np.testing.assert_allclose(ocr.min_area_rect(np.array([[3.0, 4.0], [7.0, 4.0]])), [[3, 4], [7, 4], [7, 4], [3, 4]])  # a line


def test_joined_runs():
    """Boxes are joined along a line where they are level, of like height and close, as EasyOCR joins them; never
    across lines, and a tilted box stays alone."""
    def box(x, y, w=20, h=10, slope=0.0):
        return np.array([[x, y], [x + w, y + slope * w], [x + w, y + h + slope * w], [x, y + h]], dtype=float)

    boxes = [box(60, 31), box(0, 0), box(24, 2), box(0, 30), box(47, -1), box(90, -3, h=16), box(114, 0)]
    # line 1: 1, 2 (gap 4, under half of 10), 4 (gap 3); 5 not (height 16: 6 from the run's 10, not under 5);
    # 6 joins 5 (height 10: 6 from 16, under 8; gap 4). Line 2: 3, and 0 apart (gap 40)
    assert ocr.joined_runs(boxes) == [[[1, 2, 4], [5, 6]], [[3], [0]]]
    assert ocr.joined_runs([box(0, 0), box(24, 0, slope=0.3)]) == [[[0], [1]]]  # the second is cropped turned upright
    assert ocr.joined_runs([box(0, 0), box(30, 0)]) == [[[0], [1]]]  # a gap of 10: not under half the height
    assert ocr.joined_runs([]) == []


def test_blank_and_empty_images(detector):
    recogniser = ocr.CRNN.from_pretrained("easyocr-english-g2")
    assert ocr.read_words(np.full((40, 60), 255, np.uint8), detector=detector, recogniser=recogniser) == []
    with pytest.raises(InputError, match="CRAFT got an empty image"):
        ocr.read_words(np.zeros((0, 10), np.uint8), detector=detector, recogniser=recogniser)
    with pytest.raises(InputError, match=r"the region and affinity maps differ in shape: \(4, 4\) and \(4, 5\)"):
        ocr.word_boxes(torch.zeros(4, 4), torch.zeros(4, 5))


def test_resizing_in_bands_is_bilinear():
    """craft.resize_bilinear (a band of rows at a time) gives torch's bilinear resize, rounded, within one grey level."""
    pixels = torch.randint(0, 256, (191, 384, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for height, width in ((100, 200), (19, 11), (300, 40)):
        whole = torch.nn.functional.interpolate(pixels.permute(2, 0, 1)[None].float(), size=(height, width), mode="bilinear")
        assert (mc.resize_bilinear(pixels, height, width, rows=7) - whole.round()).abs().max() <= 1


# -- lines -----------------------------------------------------------------------------------------
def render(text: str, size: int = 32, angle: float = 0):
    """Black text in Pillow's default font on white (grayscale), turned ``angle`` degrees anticlockwise."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    _, _, right, bottom = font.getbbox(text)
    image = Image.new("L", (right + 40, bottom + 40), 255)
    ImageDraw.Draw(image).text((20, 20), text, fill=0, font=font)
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)


def test_lines_of_a_scanned_page():
    words = ocr.read_words(photos()["page"])
    lines = ocr.read_lines(photos()["page"])
    assert lines[0].text == "Region-based segmentation" and len(lines) == 7
    assert [word.text for line in lines for word in line.words] == [word.text for word in words]  # the same words, in order
    assert lines[2].text.startswith("background") and lines[5].text.startswith("histogram")
    for line in lines:
        assert line.text == " ".join(word.text for word in line.words)
        assert line.confidence == min(word.confidence for word in line.words)
        (x0, y0), (x1, y1) = line.box.min(axis=0), line.box.max(axis=0)
        for word in line.words:  # each word inside its line's rectangle
            assert (word.box >= [x0 - 1e-6, y0 - 1e-6]).all() and (word.box <= [x1 + 1e-6, y1 + 1e-6]).all()


def test_tilted_words_are_read_upright():
    """A line turned by 20 and 30 degrees: each word is cropped turned upright and read; cropped level, the
    same boxes read wrong. The words make one line although the short ones are boxed upright."""
    for angle in (20, 30):
        image = np.asarray(render("Words read at an angle", angle=angle))
        lines = ocr.read_lines(image)
        assert [line.text for line in lines] == ["Words read at an angle"], angle
        assert ocr._slope(lines[0].box) == pytest.approx(-math.tan(math.radians(angle)), abs=0.05)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ocr, "TILT", math.inf)  # every box cropped level
        assert [word.text for word in ocr.read_words(image)] != "Words read at an angle".split()


def test_words_read_together_in_one_box_get_a_box_each():
    """One box around three words: the recogniser's columns place the spaces, and the box is cut there, each cut
    between the boxes the detector gives the words one by one. A tilted box is not cut (one Word, as before)."""
    image = np.asarray(render("or background here"))
    height, width = image.shape
    detected = [word.box for word in ocr.read_words(image)]
    assert [word.text for word in ocr.read_words(image)] == ["or", "background", "here"]
    box = np.array([[15, 15], [width - 15, 15], [width - 15, height - 15], [15, height - 15]], dtype=np.float64)
    recogniser = ocr._default_models()[1]
    [line] = ocr.lines_from_boxes(recogniser, image, [box])
    assert [word.text for word in line.words] == ["or", "background", "here"] and line.text == "or background here"
    edges = [word.box[:, 0] for word in line.words]
    assert edges[0].min() == 15 and edges[-1].max() == width - 15  # the words fill the box, left to right
    for left, right, before, after in zip(edges, edges[1:], detected, detected[1:]):
        assert left.max() == right.min()  # cut once
        assert before[:, 0].max() - 4 <= left.max() <= after[:, 0].min() + 4  # between the detector's two words
    for word in line.words:
        assert (word.box[:, 1].min(), word.box[:, 1].max()) == (15, height - 15) and word.confidence == line.confidence
    reading = ocr.read_crops(recogniser, image, [box])[0]
    assert reading.text == "or background here" and "".join(char for _, char in reading.columns) == reading.text
    tilted = box + np.array([[0, 0], [0, 40], [0, 40], [0, 0]])  # the right edge 40 pixels lower: cropped turned upright
    assert [len(line.words) for line in ocr.lines_from_boxes(recogniser, image, [tilted])] == [1]


def test_line_groups():
    def box(x, y, w=40, h=10, slope=0.0):
        down = np.array([-slope, 1.0]) / math.hypot(1, slope) * h
        across = np.array([1.0, slope]) / math.hypot(1, slope) * w
        return np.array([[x, y], [x, y] + across, [x, y] + across + down, [x, y] + down])

    level = [box(60, 31), box(0, 0), box(30, 2), box(0, 30), box(60, -1)]
    assert ocr.line_groups(level) == [[1, 2, 4], [3, 0]]
    # two lines falling 0.4 per pixel, 40 pixels apart, each with a short word boxed upright in the middle
    tilted = [box(0, 0, slope=0.4), box(50, 20, w=10), box(70, 28, slope=0.4), box(0, 40, slope=0.4), box(50, 60, w=10),
              box(70, 68, slope=0.4)]
    assert ocr.line_groups(tilted[::-1]) == [[5, 4, 3], [2, 1, 0]]
    assert ocr.line_groups([]) == []
    # a box a little higher and more tilted than its level line is taken first: its axis misses its neighbours, which
    # start a line of their own, and it joins them after
    sloped = [box(0, 100), box(50, 100), box(100, 100), box(150, 99, slope=0.15), box(0, 130), box(50, 130)]
    assert ocr.line_groups(sloped) == [[0, 1, 2, 3], [4, 5]]
    # a rising line (0.25 up per pixel) whose last word is short and boxed upright: highest, it is taken first
    rising = [box(0, 100, slope=-0.25), box(50, 87, slope=-0.25), box(100, 72, w=10)]
    assert ocr.line_groups(rising) == [[0, 1, 2]]
    # but a line never joins a line of fewer boxes, whose one tilted box's axis, carried far, may pass through it
    heading = [box(0, 15, h=20), box(70, 15, h=20), box(140, 15, h=20), box(600, 85, w=200, h=30, slope=0.15)]
    assert ocr.line_groups(heading) == [[0, 1, 2], [3]]


def test_lines_of_rotated_text_stay_whole():
    """Three lines turned 15 degrees (rising to the right): each read whole, its short last word included."""
    from PIL import Image, ImageDraw, ImageFont

    texts = ["Rotated sample words", "another line below it", "and a third one"]
    font = ImageFont.load_default(size=28)
    page = Image.new("L", (max(int(font.getbbox(t)[2]) for t in texts) + 40, 44 * 3 + 40), 255)
    for row, text in enumerate(texts):
        ImageDraw.Draw(page).text((20, 20 + 44 * row), text, fill=0, font=font)
    turned = page.rotate(15, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    assert [line.text for line in ocr.read_lines(np.asarray(turned))] == texts


# -- bad input -------------------------------------------------------------------------------------
def test_an_image_too_small_to_hold_a_word():
    for shape in ((1, 1), (1, 1, 3), (7, 5)):
        with pytest.raises(InputError, match=r"a \d+x\d+ image is too small to hold a word: CRAFT's score maps of it have \d cells"):
            ocr.read_words(np.zeros(shape, np.uint8))


def test_a_20000_pixel_wide_image():
    """An array 20,000 pixels wide is scaled to 2,560 a side in bands of rows (never whole as floats) and its words are
    found in its own pixels; a file of 20,000 x 6,000 pixels is refused by its size before it is decoded."""
    wide = np.full((400, 20000), 255, np.uint8)
    wide[:, :1500] = np.asarray(render("WIDE", size=330).resize((1500, 400)))
    words = ocr.read_words(wide)
    assert [word.text for word in words] == ["WIDE"]
    assert 0 <= words[0].box[:, 0].min() < words[0].box[:, 0].max() <= 1500


def test_a_huge_image_file_is_refused_before_decoding(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    width, height = 20000, 6000  # 120 million grey pixels, each row "filter 0" and zeros: a 120 kB file
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(bytes(width + 1)) for _ in range(height)) + packer.flush()
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match=r"huge.png is 20000x6000 pixels \(120 million\); the text detector reads images up to 100 million"):
        ocr.read_words(path)


def test_a_file_that_is_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(InputError, match=r"notes.png cannot be decoded as an image \(UnidentifiedImageError"):
        ocr.read_words(tmp_path / "notes.png")
    with pytest.raises(InputError, match=r"no such image file"):
        ocr.read_words(tmp_path / "absent.png")


def test_grayscale_rgba_and_16_bit_images(tmp_path):
    """The same words from 8-bit grayscale, RGB, RGBA with a transparent background (laid over white) and 16-bit
    grayscale, as arrays and as PNG files; floating-point pixels are refused by name."""
    from PIL import Image

    gray = np.asarray(render("Reading every format"))
    expected = [word.text for word in ocr.read_words(gray)]
    assert expected == ["Reading", "every", "format"]
    transparent = np.zeros(gray.shape + (4,), np.uint8)
    transparent[..., 3] = 255 - gray  # black text whose background is see-through (its colour black too)
    sixteen = gray.astype(np.uint16) * 257
    images = {"rgb": np.repeat(gray[..., None], 3, axis=2), "rgba": transparent, "16-bit": sixteen}
    for name, array in images.items():
        assert [word.text for word in ocr.read_words(array)] == expected, name
        Image.fromarray(array).save(tmp_path / f"{name}.png")
        assert Image.open(tmp_path / f"{name}.png").mode == {"rgb": "RGB", "rgba": "RGBA", "16-bit": "I;16"}[name]
        assert [word.text for word in ocr.read_words(tmp_path / f"{name}.png")] == expected, name
    int32 = Image.fromarray(gray.astype(np.int32))  # mode I (as some TIFFs open) holding 8-bit levels: read as 8-bit
    assert int32.mode == "I"
    assert [word.text for word in ocr.read_words(int32)] == expected
    assert int(mc.image_array(int32).max()) == int(gray.max())  # as the --boxes picture draws it
    with pytest.raises(InputError, match=r"expected an \(H, W\) or \(H, W, 3\) uint8 image array, got shape \(\d+, \d+\) of float32"):
        ocr.read_words(gray.astype(np.float32))
    with pytest.raises(InputError, match=r"32-bit floating-point image \(PIL mode F\)"):
        ocr.read_words(Image.fromarray(gray.astype(np.float32)))


def test_the_recogniser_reads_transparency_and_orientation_as_the_pipeline(tmp_path):
    """read_text (one line, CRNN.read) lays a transparent background over white and turns a photo as its EXIF
    orientation says, as read_lines does: the same text both ways, as arrays, PIL images and files."""
    from PIL import Image

    from minipt.models.crnn import english_g2

    line = render("Hello World 2024")
    gray = np.asarray(line.crop((10, 10, line.size[0] - 10, line.size[1] - 10)))  # a line's crop, as read_lines cuts it
    assert english_g2().read(Image.fromarray(gray)) == ["Hello World 2024"]
    transparent = np.zeros(gray.shape + (4,), np.uint8)
    transparent[..., 3] = 255 - gray  # black text on a see-through black background
    Image.fromarray(transparent).save(tmp_path / "line.png")
    turned = Image.fromarray(gray).rotate(90, expand=True)  # stored on its side, the tag says to turn it back
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to view (a phone held upright)
    turned.convert("RGB").save(tmp_path / "phone.jpg", exif=exif, quality=95)
    for image in (tmp_path / "line.png", Image.open(tmp_path / "line.png"), tmp_path / "phone.jpg"):
        assert english_g2().read(image) == ["Hello World 2024"], image
    assert [line.text for line in ocr.read_lines(tmp_path / "phone.jpg")] == ["Hello World 2024"]


def test_bad_options_and_models_are_named(tmp_path):
    """Thresholds outside [0, 1], a canvas that is no positive integer or too large, swapped models, a closed or
    truncated image: an InputError naming it, before any model runs."""
    from PIL import Image

    from minipt.models.crnn import english_g2

    gray = np.asarray(render("Hello"))
    for options, message in [({"text_threshold": "0.7"}, "text_threshold must be a real number"), ({"low_text": float("nan")}, "low_text must be finite"),
                             ({"link_threshold": -1}, r"link_threshold must be in \[0, 1\]"), ({"canvas_size": True}, "canvas_size must be an integer"),
                             ({"detector": english_g2()}, "detector must be a CRAFT model"), ({"recogniser": "english_g2"}, "recogniser must be a CRNN model")]:
        with pytest.raises(InputError, match=message):
            ocr.read_lines(gray, **options)
    with pytest.raises(InputError, match=r"scale a \d+x\d+ image to .* more than the detector reads"):
        mc.preprocess(gray, canvas_size=2**20, mag_ratio=1e4)
    closed = Image.fromarray(gray)
    Image.fromarray(gray).save(tmp_path / "line.png")
    opened = Image.open(tmp_path / "line.png")
    opened.close()
    with pytest.raises(InputError, match="the PIL image cannot be read"):
        ocr.read_lines(opened)
    (tmp_path / "cut.png").write_bytes((tmp_path / "line.png").read_bytes()[:200])
    with pytest.raises(InputError, match="cut.png"):
        english_g2().read(tmp_path / "cut.png")
    assert closed.size  # (an image never opened from a file stays readable)


def test_a_detector_left_in_training_mode_detects_as_in_eval(detector):
    """detect() is inference: BatchNorm on one image's statistics would miss lines; the mode is restored after."""
    image = np.asarray(render("Hello World 2024"))
    expected = detector.detect(image)[0]
    detector.train()
    try:
        assert torch.equal(detector.detect(image)[0], expected)
        assert detector.training and all(m.training for m in detector.modules())
    finally:
        detector.eval()


def test_a_recogniser_left_in_training_mode_reads_as_in_eval():
    """read_lines and CRNN.read are inference: a recogniser in training mode (just fine-tuned) reads with its
    BatchNorms' running statistics, which stay as they were (the timing of its threads, on more than one, too), and
    is left in training mode."""
    from minipt.models.crnn import english_g2

    recogniser = english_g2()
    crop = render("Let us first determine markers")
    image = np.asarray(crop)
    expected = [(line.text, line.confidence) for line in ocr.read_lines(image, recogniser=recogniser)]
    read = recogniser.read(crop)
    statistics = {name: buffer.clone() for name, buffer in recogniser.named_buffers()}
    threads, choices = torch.get_num_threads(), dict(ocr._thread_choices)
    try:
        torch.set_num_threads(2)
        ocr._thread_choices.clear()  # measured again, in training mode, on two threads
        recogniser.train()
        assert [(line.text, line.confidence) for line in ocr.read_lines(image, recogniser=recogniser)] == expected
        assert recogniser.read(crop) == read
        assert all(torch.equal(buffer, statistics[name]) for name, buffer in recogniser.named_buffers())
        assert all(module.training for module in recogniser.modules())
    finally:
        recogniser.eval()
        torch.set_num_threads(threads)
        ocr._thread_choices.clear()
        ocr._thread_choices.update(choices)


# -- minipt ocr ------------------------------------------------------------------------------------
def test_the_command_line(tmp_path, capsys):
    """Lines and their words with confidences and corners, the picture of the boxes; each error one line, status 1."""
    from PIL import Image

    from minipt import cli

    Image.fromarray(photos()["page"]).save(tmp_path / "page.png")
    assert cli.main(["ocr", str(tmp_path / "page.png"), "--boxes", str(tmp_path / "boxes.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r".*page.png: \d+ words in 7 lines \(confidence, box corners .*\)", out[0])
    assert re.fullmatch(r"line 0  0\.\d\d  (-?\d+,-?\d+ ){4} Region-based segmentation", out[1])
    assert re.fullmatch(r"    \d\.\d\d  (-?\d+,-?\d+ ){4} Region-based", out[2])
    assert out[-1] == f"wrote {tmp_path / 'boxes.png'}" and Image.open(tmp_path / "boxes.png").format == "PNG"
    assert cli.main(["ocr", str(tmp_path / "page.png"), "--dtype", "float32"]) == 0  # the detector in float32 on any CPU
    single = capsys.readouterr().out.splitlines()
    assert single[0] == out[0] and single[1].endswith("Region-based segmentation")  # the same words and lines

    (tmp_path / "notes.png").write_text("not a picture")
    Image.new("L", (1, 1)).save(tmp_path / "dot.png")
    for argv, message in [
        (["ocr", str(tmp_path / "absent.png")], r"absent.png: no such image file"),
        (["ocr", str(tmp_path / "notes.png")], r"notes.png cannot be decoded as an image"),
        (["ocr", str(tmp_path / "dot.png")], r"a 1x1 image is too small to hold a word"),
        (["ocr", str(tmp_path / "page.png"), "--boxes", str(tmp_path / "no" / "boxes.png")], r"--boxes .*cannot write the picture \(no folder"),
    ]:
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.match(r"minipt ocr: .*" + message, err), err


def test_the_recogniser_s_threads_are_measured_once_and_restored():
    recogniser = ocr.CRNN.from_pretrained("easyocr-english-g2")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ocr._thread_choices.clear()
        choice = ocr.recognition_threads(recogniser)
        assert choice in (1, 2) and torch.get_num_threads() == 2
        assert list(ocr._thread_choices.values()) == [choice]
        ocr._thread_choices[next(iter(ocr._thread_choices))] = 1  # as measured where a second thread stalls
        assert ocr.read_boxes(recogniser, photos()["page"], []) == [] and torch.get_num_threads() == 2
        words = ocr.read_words(photos()["page"], recogniser=recogniser)
        assert words[0].text == "Region-based" and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_example_reads_a_page(capsys):
    """examples/ocr.py --photo: every line of scikit-image's scanned page, through read_lines."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("ocr_example", Path(__file__).parents[1] / "examples" / "ocr.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--photo", "skimage"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "skimage:" and len(printed) == 1 + len(ocr.read_lines(photos()["page"]))
    assert printed[1].endswith("Region-based segmentation")
