"""Real photos through EfficientNet-Lite0's official ImageNet weights, the ImageNet class names and ``minipt classify``.

The photos ship inside scikit-image's and scikit-learn's wheels; they are found
with ``importlib.util.find_spec`` (the packages are not imported).
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from minipt import cli
from minipt.errors import InputError
from minipt.models import efficientnet as en
from minipt.models.imagenet import imagenet_classes, top_classes

REPO = Path(__file__).resolve().parent.parent
CATS = {"tabby", "tiger cat", "Egyptian cat"}
PHOTOS = [  # (package, folder inside it, file, accepted top-1 classes)
    ("skimage", "data", "chelsea.png", CATS),
    ("skimage", "data", "coffee.png", {"espresso"}),
    ("skimage", "data", "camera.png", {"tripod"}),  # grayscale
    ("skimage", "data", "rocket.jpg", {"missile"}),
    ("skimage", "data", "motorcycle_left.png", {"moped"}),
    ("sklearn", "datasets/images", "flower.jpg", {"daisy"}),
    ("sklearn", "datasets/images", "china.jpg", {"palace"}),
]


def photo(package: str, folder: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} (part of the test extra) carries the test photo {name}"
    return Path(list(spec.submodule_search_locations)[0]) / folder / name


@pytest.fixture(scope="module")
def lite0():
    return en.EfficientNet.from_pretrained("efficientnet_lite0")


@pytest.mark.parametrize("package, folder, name, expected", PHOTOS, ids=[p[2] for p in PHOTOS])
def test_real_photo_top1(lite0, package, folder, name, expected):
    [classes] = en.classify([photo(package, folder, name)], model=lite0, top=5)
    assert len(classes) == 5
    assert classes[0][0] in expected, classes
    probabilities = [p for _, p in classes]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < probabilities[0] <= 1


def test_classify_by_catalogue_name_in_one_batch():
    paths = [photo(*p[:3]) for p in PHOTOS]
    results = en.classify(paths, top=3)  # loads efficientnet_lite0 from the catalogue
    assert [r[0][0] in p[3] for r, p in zip(results, PHOTOS)] == [True] * len(PHOTOS)


def test_preprocessing(lite0):
    """Shorter side to 256, centre crop 224, (x - 127) / 128 of 0..255 pixels."""
    from PIL import Image

    image = Image.new("RGB", (400, 300), (255, 127, 0))
    batch = en.preprocess([image], lite0.config)
    assert batch.shape == (1, 3, 224, 224)
    assert torch.allclose(batch[0, :, 100, 100], torch.tensor([128 / 128, 0.0, -127 / 128]))


def test_a_16_bit_photo_reads_as_its_8_bit_self(lite0, tmp_path):
    """16-bit grayscale (PNG, TIFF) scaled to 8 bits, as the OCR pipeline reads it; Pillow's convert("RGB") clipped
    it at 255 (a white picture, classified as something else). A float image (mode F) has no set range: named."""
    import numpy as np
    from PIL import Image

    from minipt.errors import InputError
    from minipt.vision import load_image

    gray = np.asarray(Image.open(photo("skimage", "data", "camera.png")).convert("L"))
    Image.fromarray(gray).save(tmp_path / "8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode.startswith("I")
    assert np.array_equal(np.asarray(load_image(tmp_path / "16.png")), np.asarray(load_image(tmp_path / "8.png")))
    assert en.classify([tmp_path / "16.png"], model=lite0, top=1) == en.classify([tmp_path / "8.png"], model=lite0, top=1)
    Image.fromarray(gray.astype(np.float32) / 255).save(tmp_path / "float.tif")
    with pytest.raises(InputError, match="32-bit floating-point image"):
        load_image(tmp_path / "float.tif")


def test_imagenet_classes_are_torchvisions():
    spec = importlib.util.spec_from_file_location("make_imagenet_classes", REPO / "bench" / "make_imagenet_classes.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert list(imagenet_classes()) == generator.imagenet_categories()


def test_top_classes():
    logits = torch.full((2, 1000), -10.0)
    logits[0, 285], logits[1, 967] = 10.0, 10.0
    rows = top_classes(logits, top=2)
    assert rows[0][0][0] == "Egyptian cat" and rows[1][0][0] == "espresso"
    assert abs(sum(torch.softmax(logits[0], -1).tolist()) - 1) < 1e-6 and rows[0][0][1] > 0.99


# -- the command line ------------------------------------------------------------------
def test_cli_classify(capsys):
    coffee, flower = photo("skimage", "data", "coffee.png"), photo("sklearn", "datasets/images", "flower.jpg")
    assert cli.main(["classify", str(coffee), str(flower)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(coffee) and lines[1].endswith("  espresso") and "%" in lines[1]
    assert lines[6] == str(flower) and lines[7].endswith("  daisy")
    assert len(lines) == 12  # two images, five classes each


def test_cli_undecodable_image(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    assert cli.main(["classify", str(bad)]) == 1
    assert f"{bad} cannot be decoded as an image" in capsys.readouterr().err


# -- bad input ------------------------------------------------------------------------
def test_undecodable_and_missing_images(lite0, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(photo("skimage", "data", "coffee.png").read_bytes()[:2000])
    for path in (truncated, tmp_path / "empty.png"):
        path.touch()
        with pytest.raises(InputError, match=f"{path.name} cannot be decoded as an image"):
            en.classify([path], model=lite0)
    with pytest.raises(InputError, match="nowhere.png: no such image file"):
        en.classify([tmp_path / "nowhere.png"], model=lite0)
    with pytest.raises(InputError, match="no images given"):
        en.classify([], model=lite0)
    with pytest.raises(InputError, match="expected an image file path or a PIL image, got int"):
        en.classify([3], model=lite0)


@pytest.mark.parametrize("content", ["tench\ngoldfish\n", None])
def test_damaged_class_list_names_the_file(tmp_path, monkeypatch, content):
    from minipt.errors import MiniptError
    from minipt.models import imagenet

    path = tmp_path / "imagenet_classes.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    monkeypatch.setattr(imagenet, "_NAMES", path)
    imagenet.imagenet_classes.cache_clear()
    try:
        with pytest.raises(imagenet.ShippedDataError, match="imagenet_classes.txt") as info:
            imagenet.imagenet_classes()
        assert isinstance(info.value, MiniptError)
        if content is not None:
            assert "2 class names, not 1000" in str(info.value)
    finally:
        monkeypatch.undo()
        imagenet.imagenet_classes.cache_clear()
    assert len(imagenet.imagenet_classes()) == 1000  # the shipped file, once the patch is undone
