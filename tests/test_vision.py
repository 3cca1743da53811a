"""Images in: decoding (EXIF orientation, 32-bit integer grey levels), resizing within the size limit, and the centre
crop placed as each reference places it where the margin is odd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minipt.errors import InputError
from minipt.vision import center_crop, image_batch, load_image, resize_shorter_side

Image = pytest.importorskip("PIL.Image")


def striped(width: int, height: int):
    """An RGB picture whose every column has its own colour, so that a crop's horizontal place shows in its pixels."""
    columns = np.arange(width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)  # (H, W, 3)
    return Image.fromarray(columns, "RGB")


@pytest.mark.parametrize("width", [383, 384, 385, 386, 100, 97])
def test_centre_crop_is_torchvisions_and_transformers(width):
    """torchvision's CenterCrop (timm's, open_clip's) puts the square at int(round(margin / 2)), transformers at
    margin // 2; minipt placed it at margin // 2 for every model, one pixel off torchvision's where the margin is
    3 mod 4 (a 640 x 427 photo resized to 256: margin 159). Also an image narrower than the crop, padded."""
    from torchvision.transforms import functional as TF
    from transformers.image_transforms import center_crop as transformers_center_crop

    image = striped(width, 256)
    torchvision = np.asarray(TF.center_crop(image, [224, 224]))
    assert np.array_equal(np.asarray(center_crop(image, 224)), torchvision)
    theirs = transformers_center_crop(np.asarray(image), (224, 224), input_data_format="channels_last")
    if width >= 224:
        assert np.array_equal(np.asarray(center_crop(image, 224, "floor")), theirs)
    with pytest.raises(InputError, match="offset"):
        center_crop(image, 224, "ceil")


def test_an_upright_photo_is_read_upright():
    """A phone's photo stored sideways with EXIF orientation 6 is read as viewers show it (transformers' load_image
    does so); it was classified as stored."""
    from transformers.image_utils import load_image as transformers_load_image

    image = striped(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    import io

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    stored = Image.open(io.BytesIO(buffer.getvalue()))
    assert stored.size == (40, 30)
    ours = load_image(stored)
    assert ours.size == (30, 40) == transformers_load_image(Image.open(io.BytesIO(buffer.getvalue()))).size
    assert np.array_equal(np.asarray(ours), np.asarray(transformers_load_image(Image.open(io.BytesIO(buffer.getvalue())))))


def test_32_bit_integer_images_of_8_bit_levels_keep_them():
    """Image.fromarray of int32 levels 0..255 (mode I) was read as 16-bit and came out black; 16-bit levels still scale."""
    ramp = np.arange(256, dtype=np.int32).reshape(16, 16)
    assert Image.fromarray(ramp).mode == "I"
    assert np.array_equal(np.asarray(load_image(Image.fromarray(ramp)))[:, :, 0], ramp.astype(np.uint8))
    assert np.asarray(Image.fromarray(ramp).convert("RGB")).max() == 255  # Pillow's own conversion agrees
    wide = (ramp * 257).astype(np.int32)  # 16-bit levels held in 32 bits
    assert np.array_equal(np.asarray(load_image(Image.fromarray(wide)))[:, :, 0], ramp.astype(np.uint8))


def test_a_thin_strip_is_refused_before_its_resize():
    """A 1 x 400 strip resized to 256 on its shorter side would be 102,400 pixels long (a 1 x 20,000 one asked for 3.9 GB)."""
    strip = Image.new("RGB", (400, 1))
    with pytest.raises(InputError, match=r"400x1 pixels resized to 256 .* 102400 pixels long \(at most 65536\)"):
        resize_shorter_side(strip, 256)
    with pytest.raises(InputError, match="102400 pixels long"):
        image_batch([strip], resize=256, crop=224)
    assert resize_shorter_side(Image.new("RGB", (200, 1)), 256).size == (51200, 256)


def test_image_batch_crops_as_torchvisions_transforms(tmp_path):
    """The whole path (decode, bilinear resize, crop) equals torchvision's transforms on a 640 x 427 photo, whose
    margin after the resize is odd."""
    from torchvision import transforms

    generator = torch.Generator().manual_seed(0)
    image = Image.fromarray(torch.randint(0, 256, (427, 640, 3), generator=generator, dtype=torch.uint8).numpy())
    path = tmp_path / "photo.png"
    image.save(path)
    expected = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])(image)
    assert torch.equal(image_batch([path], resize=256, crop=224, resample="bilinear")[0], expected.float())
