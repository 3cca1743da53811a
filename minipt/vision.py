"""Images in, tensors out: decoding, the usual resize / centre-crop, and input checks for image models.

Pillow is imported inside the functions that decode images, so ``import minipt``
does not need it; install it (``pip install pillow``) to read image files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from .checks import check_choice, check_int, check_on_device, check_path
from .errors import InputError, MissingDependencyError


MAX_SIDE = 1 << 16  # the most pixels a side may have after resizing or cropping: 65536, far above any model's input
# torchvision's ImageNet statistics (per RGB channel, on pixels scaled to 0..1)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])


def pillow():
    """The ``PIL`` package (Image, ImageDraw, ImageFont are imported), or ``MissingDependencyError``:
    images are read, resized and drawn with Pillow; the models themselves do not need it."""
    try:
        import PIL.Image
        import PIL.ImageDraw
        import PIL.ImageFont
        import PIL.ImageOps
    except ImportError as err:
        raise MissingDependencyError("reading and drawing images needs Pillow (PIL): pip install pillow") from err
    return PIL


def image_file(image: str | os.PathLike) -> Path:
    """The path of an existing image file, or an ``InputError`` naming what is there instead."""
    path = check_path("image", image)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an image file")
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    return path


def load_image(image: Any) -> Any:
    """An RGB ``PIL.Image`` from a path (or an image already decoded), turned upright as its EXIF orientation says (a
    phone's photo as viewers show it, as transformers' ``load_image`` and the OCR pipeline read it; torchvision's and
    open_clip's loaders read the pixels as stored); grayscale and RGBA are converted, and 16-bit grayscale (PNG, TIFF)
    is scaled to 8 bits (65535 -> 255), as the OCR pipeline reads it: Pillow's own conversion clips it at 255, a white
    picture."""
    Image = pillow().Image
    if isinstance(image, Image.Image):
        return to_rgb(upright(image))
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(f"expected an image file path or a PIL image, got {type(image).__name__}")
    return to_rgb(upright(decoded(image)))


def decoded(image: str | os.PathLike) -> Any:
    """The ``PIL.Image`` in an image file, decoded whole (the file closed), or an ``InputError`` naming the file and
    what is wrong with it (missing, a folder, not an image, truncated)."""
    Image = pillow().Image
    path = image_file(image)
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{path} cannot be decoded as an image ({type(err).__name__}: {err})") from err


def upright(image: Any) -> Any:
    """A decoded ``PIL.Image`` turned as its EXIF orientation tag says (a phone's photo, as viewers show it; OpenCV's
    imread, which EasyOCR reads with, turns it too); an image that cannot be read (closed) is an ``InputError``."""
    ImageOps = pillow().ImageOps
    try:
        image.load()
        return ImageOps.exif_transpose(image) if image.getexif().get(0x0112, 1) != 1 else image
    except (AssertionError, ValueError, OSError) as err:  # Pillow asserts on a closed image's missing data
        raise InputError(f"the PIL image cannot be read ({type(err).__name__}: {str(err) or 'closed?'})") from err


def opaque(image: Any) -> Any:
    """A decoded ``PIL.Image`` with transparency laid over white (text on a transparent background reads as on paper);
    others as they are."""
    import numpy as np

    if see_through(image):
        return pillow().Image.fromarray(over_white(np.asarray(image.convert("RGBA"))), "RGB")
    return image


def see_through(image: Any) -> bool:
    """Whether a ``PIL.Image`` has transparency: an alpha channel, or a palette or colour marked transparent."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def over_white(rgba):
    """An (H, W, 4) uint8 array laid over white paper: (H, W, 3) uint8, rgb * alpha + 255 * (1 - alpha), rounded."""
    import numpy as np

    rgb, alpha = rgba[:, :, :3].astype(np.uint32), rgba[:, :, 3:].astype(np.uint32)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def to_rgb(image: Any) -> Any:
    """A decoded ``PIL.Image`` as 8-bit RGB (``eight_bit``, then Pillow's conversion)."""
    return eight_bit(image).convert("RGB")


def eight_bit(image: Any) -> Any:
    """A decoded ``PIL.Image`` whose grey levels Pillow's conversions keep: 16-bit grayscale (PNG, TIFF; Pillow's
    convert would clip it at 255, a white picture) scaled to 8 bits, 65535 -> 255, as the OCR pipeline reads it;
    other modes as they are. A 32-bit integer image (mode I: ``Image.fromarray`` of int32, some TIFFs) is read as 8-bit
    levels when none is above 255, as 16-bit ones otherwise. A 32-bit floating-point image (mode F) has no set range
    of grey levels: refused."""
    import numpy as np

    Image = pillow().Image
    if image.mode.startswith("I;16") or image.mode == "I":
        levels = np.array(image).clip(0, 65535).astype(np.uint32)
        if image.mode == "I" and levels.size and levels.max() <= 255:  # 32-bit integers holding 8-bit levels
            return Image.fromarray(levels.astype(np.uint8), "L")
        return Image.fromarray(((levels + 128) // 257).astype(np.uint8), "L")  # 16-bit grayscale: 65535 -> 255, rounded
    if image.mode == "F":
        raise InputError("a 32-bit floating-point image (PIL mode F) has no set range of grey levels: save it with 8 or 16 bits")
    return image


def resize_shorter_side(image: Any, size: int, resample: str = "bicubic") -> Any:
    """Scale so that the shorter side is ``size`` pixels, keeping the aspect ratio as torchvision's Resize does (the
    longer side truncated: int(size * long / short)); ``resample``: "bicubic" (CLIP, timm's EfficientNet) or
    "bilinear" (torchvision's weights)."""
    size = check_int("size", size, low=1, high=MAX_SIDE)
    width, height = image.size
    short, long = min(width, height), max(width, height)
    other = max(size, int(size * long / short))
    if other > MAX_SIDE:
        raise InputError(f"an image of {width}x{height} pixels resized to {size} pixels on its shorter side would be "
                         f"{other} pixels long (at most {MAX_SIDE}): crop the strip first")
    new = (size, other) if width <= height else (other, size)
    return image.resize(new, getattr(pillow().Image.Resampling, check_choice("resample", resample, ("bicubic", "bilinear")).upper()))


CROP_OFFSETS = ("round", "floor")


def center_crop(image: Any, size: int, offset: str = "round") -> Any:
    """The centre ``size`` x ``size`` square (padded with black where the image is smaller). Where the margin is odd
    the square sits half a pixel off centre: ``offset="round"`` places it as torchvision's CenterCrop (and timm's and
    open_clip's preprocessing) does, ``round(margin / 2)``; ``"floor"`` as transformers' image processors do,
    ``margin // 2``."""
    size = check_int("size", size, low=1, high=MAX_SIDE)
    width, height = image.size
    if check_choice("offset", offset, CROP_OFFSETS) == "round":  # torchvision pads a smaller image by (size - side) // 2 before
        half = lambda margin: int(round(margin / 2)) if margin >= 0 else -(-margin // 2)  # noqa: E731
    else:
        half = lambda margin: margin // 2  # noqa: E731
    left, top = half(width - size), half(height - size)
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Any) -> torch.Tensor:
    """(3, H, W) float32 pixels in 0..255."""
    import numpy as np

    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())  # (H, W, 3)
    return pixels.permute(2, 0, 1).contiguous()  # (3, H, W)


def image_batch(images: Sequence[Any], *, resize: int, crop: int, resample: str = "bicubic", offset: str = "round") -> torch.Tensor:
    """Decode, resize the shorter side to ``resize``, centre-crop ``crop`` x ``crop`` (``offset``: see ``center_crop``):
    (B, 3, crop, crop) in 0..255."""
    resize, crop = check_int("resize", resize, low=1, high=MAX_SIDE), check_int("crop", crop, low=1, high=MAX_SIDE)
    return torch.stack([to_tensor(center_crop(resize_shorter_side(load_image(image), resize, resample), crop, offset))
                        for image in _image_list(images)])


def squeezed_batch(images: Sequence[Any], *, size: int | tuple[int, int], mean: torch.Tensor, std: torch.Tensor,
                   resample: str = "bilinear", scale: float = 1 / 255) -> torch.Tensor:
    """Each image resized whole to ``size`` (a side, or (height, width); the aspect ratio is not kept, nothing is
    cropped), its 0..255 pixels multiplied by ``scale`` and normalised per channel: (B, 3, height, width), as
    transformers' image processor for ViT does."""
    height, width = (size, size) if isinstance(size, int) else size
    height, width = check_int("height", height, low=1, high=MAX_SIDE), check_int("width", width, low=1, high=MAX_SIDE)
    method = getattr(pillow().Image.Resampling, check_choice("resample", resample, ("bicubic", "bilinear")).upper())
    pixels = torch.stack([to_tensor(load_image(image).resize((width, height), method)) for image in _image_list(images)]) * scale
    return (pixels - mean[:, None, None]) / std[:, None, None]


def _image_list(images: Any) -> list:
    """One image (a path or a PIL image) or a non-empty list of them, as a list."""
    if isinstance(images, (str, os.PathLike)) or type(images).__module__.startswith("PIL."):  # one image
        images = [images]
    if not hasattr(images, "__len__") or not hasattr(images, "__iter__"):
        raise InputError(f"images must be a path, a PIL image or a list of them, got {type(images).__name__}")
    if len(images) == 0:
        raise InputError("no images given")
    return list(images)


def normalized_batch(images: Sequence[Any], *, resize: int = 256, crop: int = 224, resample: str = "bilinear",
                     mean: torch.Tensor = IMAGENET_MEAN, std: torch.Tensor = IMAGENET_STD, offset: str = "round") -> torch.Tensor:
    """``image_batch`` scaled to 0..1 and normalised per channel: (B, 3, crop, crop). The defaults are how
    torchvision's weights prepare ImageNet inputs (shorter side 256, bilinear, centre crop 224, ImageNet mean and std)."""
    pixels = image_batch(images, resize=resize, crop=crop, resample=resample, offset=offset) / 255.0  # (B, 3, crop, crop) in 0..1
    return (pixels - mean[:, None, None]) / std[:, None, None]


def check_images(x: Any, channels: int, owner: str, dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
    """Raise an InputError unless ``x`` is an image batch (B, channels, H, W), floating point, in ``dtype`` where given
    (the model's: a float64 batch, numpy's default, into a float32 model), on ``device`` where given (the model's)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{owner} expects images shaped (batch, {channels}, height, width); got {shape}")
    if x.shape[1] != channels:
        raise InputError(
            f"{owner} expects {channels} input channels; got a tensor of shape {tuple(x.shape)} with {x.shape[1]} "
            "(channels-last data must be permuted to (B, C, H, W); memory format does not matter)"
        )
    if x.shape[2] == 0 or x.shape[3] == 0:  # an empty batch (B = 0) is fine; an image without pixels is not
        raise InputError(f"{owner} got images of shape {tuple(x.shape)}: height and width must be at least 1 pixel")
    if not x.is_floating_point():
        raise InputError(f"{owner} expects floating-point images, got {x.dtype} (convert pixels with .float() and normalise them)")
    if dtype is not None and x.dtype != dtype:
        raise InputError(f"{owner} computes in {dtype}; got images of {x.dtype} (convert them with .to({dtype}))")
    check_on_device(f"{owner}'s input", x, device)
