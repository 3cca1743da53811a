"""CRAFT (Baek et al., 2019, "Character Region Awareness for Text Detection"), on the official format that
EasyOCR ships (``craft_mlt_25k.pth``).

    image (B, 3, H, W): RGB pixels in 0..255 normalised by the ImageNet mean and std, H and W padded to multiples of 32
      backbone:  VGG16-BN (minipt.models.vgg) up to conv5_2, read at four depths    # (B, 128, H/2) ... (B, 512, H/16)
      fc:        3x3 max pool, stride 1 -> fc6 (3x3 conv, dilation 6) -> fc7 (1x1)   # (B, 1024, H/16, W/16)
      decoder:   four UpConv blocks, each: upsample to the next skip, concatenate it,
                 1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU                   # (B, 32, H/2, W/2), the "feature"
      head:      3x3, 3x3, 3x3 and 1x1 convs with ReLUs -> 1x1 conv to two maps     # region and affinity, (B, H/2, W/2)

The region score is the chance that a pixel is the centre of a character, the
affinity score the chance that it lies between two characters of one word;
``minipt.ocr`` turns the two maps into word boxes.

The backbone is minipt's VGG16-BN (``vgg.make_stages``), one stage per pooling,
without conv5_3 (CRAFT drops it). The official file names its tensors by
CRAFT's five "slices" of torchvision's flat ``features`` list
(``basenet.slice3.24.weight`` is ``features.24``); ``CRAFT.keymap`` takes
VGG's own key map from ``features.N`` to minipt's stages and renames only the
official side, so the backbone has one map. The file was saved from
``nn.DataParallel``: its keys carry ``module.``, which loading removes and
saving leaves out. The format has no config file: ``CRAFT.from_pretrained``
reads the widths off the tensors.

    >>> model = CRAFT.from_pretrained("craft_mlt_25k")
    >>> pixels, ratio = preprocess("photo.png")
    >>> region, affinity, features = model(pixels)
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
import types
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Checkpoint, Pretrained
from ..config import Config, count, require
from ..errors import ConfigError, InputError, KeyMismatchError, MissingDependencyError
from ..keymap import KeyMap
from ..nn.backend import ChoosesBackend
from ..nn.conv import conv1x1, conv3x3
from ..nn.fuse import InferenceCopy
from ..registry import Reads, register
from ..summary import evaluating
from ..checks import check_float, check_int, floating_dtype, parameter_device
from ..vision import check_images, over_white
from .vgg import VGG, VGGConfig, flat_layout, make_stages

# VGG16-BN's convolution widths stage by stage (torchvision's layout "D") without conv5_3, which CRAFT drops
BACKBONE = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512))
CONVS_PER_STAGE = tuple(len(stage) for stage in BACKBONE)  # (2, 2, 3, 3, 2): where the four skips are taken depends on it
SIZE_MULTIPLE = 32  # EasyOCR pads each side to a multiple of 32
CANVAS_SIZE = 2560  # EasyOCR's default largest side: longer images are scaled down to it
# ImageNet's mean and std on the 0..255 scale, each product rounded once to float32 as EasyOCR's numpy code rounds it
PIXEL_MEAN = torch.tensor([0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0]).view(1, 3, 1, 1)
PIXEL_STD = torch.tensor([0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0]).view(1, 3, 1, 1)


# -- configuration -------------------------------------------------------------
@dataclass
class CRAFTConfig(Config):
    stages: tuple[tuple[int, ...], ...] = BACKBONE  # the backbone's conv widths per stage (2, 2, 3, 3 and 2 convs)
    fc_channels: int = count(1024)  # width of fc6 and fc7
    dilation: int = count(6)  # fc6's dilation: its 3x3 kernel spans 13x13 pixels of the H/16 map (not in the file: 6 in CRAFT)
    decoder: tuple[tuple[int, int], ...] = ((512, 256), (256, 128), (128, 64), (64, 32))  # (middle, out) width of each UpConv
    head_channels: tuple[int, ...] = (32, 32, 16, 16)  # the head's four convs (3x3, 3x3, 3x3, 1x1) before the two score maps
    in_channels: int = count(3)

    model_type = "craft"

    def check(self):
        def widths(values, length):
            return isinstance(values, (list, tuple)) and len(values) == length and all(type(w) is int and w >= 1 for w in values)

        valid = isinstance(self.stages, (list, tuple)) and len(self.stages) == 5 and all(
            widths(stage, n) for stage, n in zip(self.stages, CONVS_PER_STAGE))
        require(valid, "stages", self.stages, f"five stages of {', '.join(map(str, CONVS_PER_STAGE))} conv widths (VGG16-BN without conv5_3)")
        self.stages = tuple(tuple(stage) for stage in self.stages)
        valid = isinstance(self.decoder, (list, tuple)) and len(self.decoder) == 4 and all(widths(block, 2) for block in self.decoder)
        require(valid, "decoder", self.decoder, "four (middle, out) width pairs, one per UpConv block")
        self.decoder = tuple(tuple(block) for block in self.decoder)
        require(widths(self.head_channels, 4), "head_channels", self.head_channels, "four positive widths")
        self.head_channels = tuple(self.head_channels)

    @property
    def smallest_image(self) -> int:
        """Height and width an image needs at least: four 2x2 max pools lie before the deepest map."""
        return 16


# -- building blocks -----------------------------------------------------------
class FC(nn.Module):
    """VGG's fc6 and fc7 as convolutions, at stride 1 (as SSD made them): (B, C, h, w) -> (B, fc_channels, h, w)."""

    def __init__(self, in_channels: int, channels: int, dilation: int):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)  # keeps the size: pool5 made dense
        self.fc6 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=dilation, dilation=dilation)
        self.fc7 = conv1x1(channels, channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc7(self.fc6(self.pool(x)))  # no ReLU after fc6 or fc7 in the official network


class UpConv(nn.Module):
    """Upsample to the skip's size, concatenate the skip, 1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))  # fuse(): each BatchNorm folded into its conv

    def __init__(self, in_channels: int, skip_channels: int, middle: int, out_channels: int, upsample: bool):
        super().__init__()
        self.upsample = upsample  # the first block meets a skip of its own size (both H/16)
        self.conv1 = conv1x1(in_channels + skip_channels, middle, bias=True)
        self.bn1 = nn.BatchNorm2d(middle)
        self.conv2 = conv3x3(middle, out_channels, bias=True)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.upsample:  # x2, to the skip's exact size (the pools rounded odd sizes down)
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        hidden = torch.cat([x, skip], dim=1)  # (B, in + skip, h, w)
        hidden = self.relu(self.bn1(self.conv1(hidden)))  # (B, middle, h, w)
        return self.relu(self.bn2(self.conv2(hidden)))  # (B, out_channels, h, w)


class Head(nn.Module):
    """Four convs with ReLUs, then a 1x1 conv to the region and affinity scores: (B, C, h, w) -> (B, 2, h, w)."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int]):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.conv1 = conv3x3(in_channels, w1, bias=True)
        self.conv2 = conv3x3(w1, w2, bias=True)
        self.conv3 = conv3x3(w2, w3, bias=True)
        self.conv4 = conv1x1(w3, w4, bias=True)
        self.scores = conv1x1(w4, 2, bias=True)  # no activation: the maps are regressed (to Gaussian heat maps in 0..1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = self.relu(conv(x))
        return self.scores(x)


class CRAFTOutput(NamedTuple):
    region: torch.Tensor  # (B, H/2, W/2): character centres
    affinity: torch.Tensor  # (B, H/2, W/2): the space between two characters of a word
    features: torch.Tensor  # (B, decoder[-1][1], H/2, W/2): the last UpConv's map (EasyOCR's "feature")


# -- the model -------------------------------------------------------------------
class CRAFT(Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    config_class = CRAFTConfig
    default_checkpoint = "craft_mlt_25k"
    weights_file = "craft_mlt_25k.pth"  # EasyOCR's folder also holds its recogniser
    transfer_stages = {"stages.{i}": "stages.{i}", "fc": "fc", "decoder.{i}": "decoder.{i}", "head": "head"}  # see minipt.transfer

    def __init__(self, config: CRAFTConfig | None = None):
        super().__init__()
        self.config = config = config or CRAFTConfig()
        self.stages = make_stages(config.stages, config.in_channels, batch_norm=True)  # VGG16-BN's, from minipt.models.vgg
        self.fc = FC(config.stages[-1][-1], config.fc_channels, config.dilation)
        skips = [stage[1] for stage in reversed(config.stages[1:])]  # the second conv of stages 5, 4, 3, 2: deepest first
        blocks, in_channels = [], config.fc_channels
        for index, (skip, (middle, out)) in enumerate(zip(skips, config.decoder)):
            blocks.append(UpConv(in_channels, skip, middle, out, upsample=index > 0))
            in_channels = out
        self.decoder = nn.ModuleList(blocks)
        self.head = Head(in_channels, config.head_channels)
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()
        self.set_backend(config.backend)

    def reset_parameters(self) -> None:
        """CRAFT's initialisation: Xavier-uniform convs with zero biases, BatchNorm at identity."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def check_inputs(self, x: torch.Tensor) -> None:
        """Raise an InputError unless ``x`` is a batch of floating-point images (B, in_channels, H, W) of at least 16x16."""
        check_images(x, self.config.in_channels, "CRAFT", floating_dtype(self), parameter_device(self))
        smallest = self.config.smallest_image
        if x.shape[2] < smallest or x.shape[3] < smallest:
            raise InputError(
                f"CRAFT halves the image four times before its deepest map: images need at least {smallest}x{smallest} pixels "
                f"(EasyOCR pads them to multiples of {SIZE_MULTIPLE}: see preprocess()); got a tensor of shape {tuple(x.shape)}"
            )

    def forward_backbone(self, x: torch.Tensor) -> list[torch.Tensor]:
        """VGG16-BN up to conv5_2: the maps the decoder reads, deepest first: [(B, 512, H/16, W/16) before fc6 and as
        the first skip, (B, 512, H/8, W/8), (B, 256, H/4, W/4), (B, 128, H/2, W/2)] for VGG16's widths.

        CRAFT's slices end after the second conv of stages 2 to 5 (its names relu2_2, relu3_2, relu4_3 and relu5_3;
        the last two are in fact conv4_2 and conv5_2). The maps of stages 2 to 4 are taken after that conv's ReLU."""
        self.check_inputs(x)
        hidden = self.stages[0](x)  # conv1_1, conv1_2, pool: (B, 64, H/2, W/2)
        skips = []
        for stage in self.stages[1:4]:
            hidden = stage.blocks[1](stage.blocks[0](hidden))  # (B, C, h, w): conv2_2, conv3_2, conv4_2 with their ReLUs
            skips.append(hidden)
            hidden = stage.pool(stage.blocks[2:](hidden))  # the stage's third conv (stages 3 and 4), then the 2x2 pool
        last = self.stages[4]
        hidden = last.blocks[0](hidden)  # conv5_1: (B, 512, H/16, W/16)
        block = last.blocks[1]
        # The official slice4 ends at conv5_2's BatchNorm: its ReLU is not applied, so fc6's pool and the first UpConv
        # both read the BatchNorm's output, negative values included. (conv5_3 and pool5 are not used.)
        skips.append(block.bn(block.conv(hidden)))
        return skips[::-1]

    def forward(self, x: torch.Tensor) -> CRAFTOutput:
        """Region and affinity scores (B, H/2, W/2) and the decoder's last map for images (B, 3, H, W)."""
        skips = self.forward_backbone(x)  # deepest first
        hidden = self.fc(skips[0])  # (B, fc_channels, H/16, W/16)
        for block, skip in zip(self.decoder, skips):
            hidden = block(hidden, skip)  # (B, out, h, w) at the skip's size: H/16, H/8, H/4, H/2
        scores = self.head(hidden)  # (B, 2, H/2, W/2)
        return CRAFTOutput(scores[:, 0], scores[:, 1], hidden)

    @torch.no_grad()
    def detect(self, image, *, canvas_size: int = CANVAS_SIZE, mag_ratio: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One image (a path, a PIL image or an (H, W[, 3|4]) uint8 or uint16 array) -> its region and affinity maps (H'/2, W'/2)
        and the ratio from the image's pixels to the network input's (see ``preprocess``)."""
        pixels, ratio = preprocess(image, canvas_size=canvas_size, mag_ratio=mag_ratio)
        first = next(self.parameters())  # conv1_1's kernel: the input follows its device, dtype and memory format
        layout = torch.channels_last if first.dim() == 4 and not first.is_contiguous() else torch.contiguous_format
        # inference whatever mode the model was left in (BatchNorm on one image's statistics misses lines)
        with evaluating(self), torch.no_grad():
            output = self(pixels.to(device=first.device, dtype=first.dtype, memory_format=layout))
        return output.region[0], output.affinity[0], ratio

    # -- loading and saving ----------------------------------------------------
    # EasyOCR's format has no config: the widths are read off the tensors' names and shapes.
    @classmethod
    def keymap(cls, config: CRAFTConfig | None = None) -> KeyMap:
        """EasyOCR's (CRAFT-pytorch's) names <-> minipt's; the same at every width."""
        return _keymap()

    @classmethod
    def config_from_checkpoint(cls, path, checkpoint: Checkpoint) -> CRAFTConfig:
        return infer_config(checkpoint)

    @classmethod
    def check_config(cls, config: CRAFTConfig, checkpoint: Checkpoint) -> None:
        """A config of other widths than the checkpoint's is refused, saying what the checkpoint holds."""
        found = infer_config(checkpoint)
        fields = ("stages", "fc_channels", "decoder", "head_channels", "in_channels")
        wrong = [f"{f} = {getattr(config, f)!r}, but the checkpoint has {getattr(found, f)!r}" for f in fields if getattr(found, f) != getattr(config, f)]
        if wrong:
            raise KeyMismatchError(f"checkpoint {checkpoint.path} does not fit the config of CRAFT: {'; '.join(wrong)}")


# -- the official names ------------------------------------------------------------
def _slice_ends() -> list[int]:
    """Where each of the official slices 1-4 ends in torchvision's ``features`` list (exclusive): after the
    BatchNorm of the second conv of stages 2 to 5, so each tapped conv's ReLU opens the next slice."""
    convs, _ = flat_layout(BACKBONE, batch_norm=True)  # [(stage, block, index of its conv)]
    return [index + 2 for stage, block, index in convs if stage >= 1 and block == 1]  # 12, 19, 29, 39


def _keymap() -> KeyMap:
    # VGG's own map says which features.N is which conv and BatchNorm of minipt's stages; only the official
    # name changes, to the slice that holds layer N: features.24.{p} -> basenet.slice3.24.{p}
    ends = _slice_ends()
    rows = []
    for rule in VGG.keymap(VGGConfig(BACKBONE, batch_norm=True)).rules:
        group, index, rest = rule.official.split(".", 2)
        if group == "features":
            number = next(i for i, end in enumerate(ends, start=1) if int(index) < end)
            rows.append((f"basenet.slice{number}.{index}.{rest}", rule.minipt, rule.transform))
    rows += [("basenet.slice5.1.{p}", "fc.fc6.{p}"), ("basenet.slice5.2.{p}", "fc.fc7.{p}")]  # slice5.0 is the pool
    for block in range(4):  # the official counts the UpConv blocks from 1, each an nn.Sequential (conv, BN, ReLU) x 2
        rows += [(f"upconv{block + 1}.conv.{index}.{{p}}", f"decoder.{block}.{name}.{{p}}")
                 for index, name in ((0, "conv1"), (1, "bn1"), (3, "conv2"), (4, "bn2"))]
    rows += [(f"conv_cls.{index}.{{p}}", f"head.{name}.{{p}}")  # an nn.Sequential with a ReLU after each conv but the last
             for index, name in ((0, "conv1"), (2, "conv2"), (4, "conv3"), (6, "conv4"), (8, "scores"))]
    return KeyMap(
        rows,
        optional_prefix="module.",  # craft_mlt_25k.pth was saved from nn.DataParallel
        defaults={"{*}.num_batches_tracked": torch.tensor(0)},  # files saved before PyTorch 0.4.1 lack it; torch.nn starts it at 0
    )


def infer_config(checkpoint: Checkpoint) -> CRAFTConfig:
    """Read a CRAFT's widths off an official checkpoint's kernels (the dilation is not in the file: CRAFT's 6)."""
    keymap = _keymap()
    shapes = {}  # minipt key -> shape
    for file_key in checkpoint.keys():
        shapes.update(keymap.minipt_shapes(keymap.canonical(file_key), checkpoint.shape(file_key)))
    kernels = {
        **{f"stages.{s}.blocks.{b}.conv.weight": None for s, n in enumerate(CONVS_PER_STAGE) for b in range(n)},
        "fc.fc6.weight": None, "fc.fc7.weight": None,
        **{f"decoder.{i}.{conv}.weight": None for i in range(4) for conv in ("conv1", "conv2")},
        **{f"head.{conv}.weight": None for conv in ("conv1", "conv2", "conv3", "conv4", "scores")},
    }
    absent = [keymap.to_official(key)[0] for key in kernels if len(shapes.get(key, ())) != 4]
    if absent:
        from ..registry import describe

        listed = ", ".join(absent[:4]) + (f" and {len(absent) - 4} more" if len(absent) > 4 else "")
        signed = any(keymap.canonical(key) == "basenet.slice5.1.weight" for key in checkpoint.keys())  # a damaged CRAFT: no hint
        other = "" if signed else f"; {describe(checkpoint.path, checkpoint)}"
        raise KeyMismatchError(f"checkpoint {checkpoint.path} is not a CRAFT text detector in EasyOCR's format: it has no 4-d kernel "
                               f"{listed}{other}")
    out = lambda key: shapes[key][0]  # noqa: E731
    values = dict(
        stages=tuple(tuple(out(f"stages.{s}.blocks.{b}.conv.weight") for b in range(n)) for s, n in enumerate(CONVS_PER_STAGE)),
        fc_channels=out("fc.fc6.weight"),
        decoder=tuple((out(f"decoder.{i}.conv1.weight"), out(f"decoder.{i}.conv2.weight")) for i in range(4)),
        head_channels=tuple(out(f"head.{conv}.weight") for conv in ("conv1", "conv2", "conv3", "conv4")),
        in_channels=shapes["stages.0.blocks.0.conv.weight"][1],
    )
    try:
        return CRAFTConfig(**values)
    except ConfigError as err:
        raise KeyMismatchError(f"checkpoint {checkpoint.path} does not describe a CRAFT minipt can build: {err}") from None


# -- images in -----------------------------------------------------------------
def preprocess(image, *, canvas_size: int = CANVAS_SIZE, mag_ratio: float = 1.0) -> tuple[torch.Tensor, float]:
    """One image -> ((1, 3, H, W) network input, ratio), as EasyOCR's detector prepares it.

    ``image`` is a path, a PIL image, or an (H, W) / (H, W, 3) uint8 array or tensor (RGB). The longer side is
    scaled to ``mag_ratio`` times itself, at most ``canvas_size`` (bilinear; ratio 1 for EasyOCR's defaults on
    images up to 2560 pixels), the image is pasted at the top left of a black canvas whose sides are multiples of
    32, and the pixels (0..255) are normalised by the ImageNet mean and std. ``ratio`` is the scale applied: a
    point (x, y) of the score maps lies at (2 x / ratio, 2 y / ratio) in the image.
    """
    pixels = image_array(image)  # (H, W, 3) uint8
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise InputError(f"CRAFT got an empty image ({width}x{height} pixels)")
    canvas_size = check_int("canvas_size", canvas_size, low=1)
    mag_ratio = check_float("mag_ratio", mag_ratio, low=0, low_open=True)
    ratio = min(mag_ratio * max(height, width), canvas_size) / max(height, width)
    target_h, target_w = int(height * ratio), int(width * ratio)
    if target_h < 1 or target_w < 1:
        raise InputError(f"an image of {width}x{height} pixels scaled by {ratio:.4g} has no pixels left")
    if target_h * target_w > MAX_PIXELS:
        raise InputError(f"canvas_size {canvas_size} and mag_ratio {mag_ratio:g} scale a {width}x{height} image to {target_w}x{target_h} "
                         f"pixels, more than the detector reads ({MAX_PIXELS / 1e6:.0f} million); EasyOCR's canvas is {CANVAS_SIZE}")
    if (target_h, target_w) != (height, width):
        x = resize_bilinear(pixels, target_h, target_w)  # (1, 3, h, w) whole pixel values
    else:
        x = pixels.permute(2, 0, 1).float().unsqueeze(0)  # (1, 3, H, W) in 0..255
    pad_h, pad_w = -target_h % SIZE_MULTIPLE, -target_w % SIZE_MULTIPLE
    x = F.pad(x, (0, pad_w, 0, pad_h))  # black canvas, the image at its top left
    x = (x - PIXEL_MEAN) / PIXEL_STD
    return x, ratio


def resize_bilinear(pixels: torch.Tensor, height: int, width: int, rows: int = 64) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, height, width) floats holding whole pixel values: OpenCV's INTER_LINEAR (torch's
    bilinear without antialiasing, align_corners=False), then rounded as OpenCV rounds 8-bit pixels.

    Done ``rows`` output rows at a time, reading only the two source rows each one needs, so that a 20,000-pixel-wide
    photo never exists as floats: the memory is that of the uint8 image, the output, and one band of rows."""
    source_h = pixels.shape[0]
    scale = source_h / height  # torch's source position of output row i: (i + 0.5) * scale - 0.5, at least 0
    position = ((torch.arange(height, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    top = position.floor().long().clamp(max=source_h - 1)
    bottom = (top + 1).clamp(max=source_h - 1)
    weight = (position - top).float().view(1, 1, -1, 1)  # of the lower row
    out = torch.empty(1, 3, height, width)
    for start in range(0, height, rows):
        band = slice(start, start + rows)
        first, last = int(top[band][0]), int(bottom[band][-1]) + 1
        lines = pixels[first:last].permute(2, 0, 1).unsqueeze(0).float()  # (1, 3, n, W): the source rows of this band
        lines = F.interpolate(lines, size=(last - first, width), mode="bilinear", align_corners=False)  # along x only
        upper, lower = lines[:, :, top[band] - first], lines[:, :, bottom[band] - first]
        out[:, :, band] = upper + (lower - upper) * weight[:, :, band]
    return out.round_().clamp_(0, 255)


MAX_PIXELS = 100_000_000  # the largest image file decoded (3 bytes a pixel); the detector sees at most 2560 pixels a side anyway


def image_array(image) -> torch.Tensor:
    """A path, a PIL image, or an (H, W) / (H, W, 1|3|4) uint8 or uint16 array -> (H, W, 3) uint8 RGB tensor.

    Grayscale is repeated into the three channels (as EasyOCR does); 16-bit values are scaled to 8 bits (/ 257);
    transparent pixels are laid over white paper, so that dark text on a transparent background stays readable.
    A file is refused by its size before it is decoded when it holds more than ``MAX_PIXELS`` pixels."""
    import numpy as np

    if isinstance(image, torch.Tensor) or type(image).__module__ == "numpy":
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if not array.flags.writeable:  # torch keeps no read-only tensors (nothing here writes to it)
            array = array.copy()
    else:
        array = _decoded(image)
    if array.dtype == np.uint16:
        array = ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 65535 -> 255, rounded
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InputError(f"expected an (H, W) or (H, W, 3) uint8 image array, got shape {tuple(array.shape)} of {array.dtype} "
                         f"(uint16, and a fourth channel of alpha, are read too)")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 4:
        array = over_white(array)
    if array.shape[2] == 1:
        return torch.from_numpy(np.ascontiguousarray(array)).expand(-1, -1, 3)  # grayscale as RGB, without copying it
    return torch.from_numpy(np.ascontiguousarray(array))


def _decoded(image):
    """A path or PIL image -> a numpy array image_array reads: uint8 L, RGB or RGBA."""
    import numpy as np

    from ..vision import eight_bit, image_file, pillow, see_through, upright

    Image = pillow().Image
    if isinstance(image, (str, os.PathLike)):
        path = image_file(image)
        try:
            with warnings.catch_warnings():  # Pillow's warning of a large file: its size is checked here, just below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(path)  # reads the header only
            with opened:
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise InputError(f"{path} is {width}x{height} pixels ({width * height / 1e6:.0f} million); the text detector "
                                     f"reads images up to {MAX_PIXELS / 1e6:.0f} million pixels (scaling them to {CANVAS_SIZE} a side): scale it down first")
                return _decoded(opened)
        except InputError:
            raise
        except Image.DecompressionBombError as err:
            raise InputError(f"{path} is too large to decode ({err})") from err
        except (OSError, SyntaxError, ValueError) as err:
            raise InputError(f"{path} cannot be decoded as an image ({type(err).__name__}: {err})") from err
    if not isinstance(image, Image.Image):
        raise InputError(f"expected an image file path, a PIL image or an (H, W[, 3]) uint8 array, got {type(image).__name__}")
    image = upright(image)
    image = eight_bit(image)  # 16-bit grayscale scaled to 8 bits; 32-bit integers holding 8-bit levels as they are
    if see_through(image):
        return np.array(image.convert("RGBA"))
    return np.array(image.convert("L" if image.mode in ("L", "1") else "RGB"))


# -- minipt.reference: EasyOCR's own CRAFT -----------------------------------------------
_REFERENCE_PACKAGE = "_minipt_easyocr_reference"


def reference_module():
    """EasyOCR's ``easyocr/craft.py`` (with its ``model/modules.py``), imported under a private package name so
    that ``easyocr/__init__`` (the whole reader: OpenCV, the recognisers, torchvision's transforms) is not run."""
    spec = importlib.util.find_spec("easyocr")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("comparing CRAFT with EasyOCR needs easyocr (pip install easyocr)")
    from ..reference import bare_torchvision

    bare_torchvision()
    torchvision = sys.modules.get("torchvision")
    if torchvision is not None and not hasattr(torchvision, "__version__"):  # model/modules.py compares it; a bare package has none
        torchvision.__version__ = importlib.metadata.version("torchvision")
    if _REFERENCE_PACKAGE not in sys.modules:
        package = types.ModuleType(_REFERENCE_PACKAGE)
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = importlib.machinery.ModuleSpec(_REFERENCE_PACKAGE, None, is_package=True)
        package.__spec__.submodule_search_locations = package.__path__
        sys.modules[_REFERENCE_PACKAGE] = package
    return importlib.import_module(f"{_REFERENCE_PACKAGE}.craft")


def compare_with_reference(model, path, inputs, rtol):
    """EasyOCR's CRAFT on the same checkpoint, point by point (``minipt.reference.layer_diffs``). EasyOCR builds
    CRAFT at its one size (VGG16-BN, fc 1024), so only checkpoints of those widths compare."""
    from ..reference import images, report

    checkpoint = CRAFT.open_checkpoint(path)
    found, keymap = infer_config(checkpoint), _keymap()
    if found.replace(dilation=CRAFTConfig().dilation) != CRAFTConfig():
        raise ConfigError(f"EasyOCR builds CRAFT only at the widths of craft_mlt_25k; {path} holds {found}")
    with torch.device("meta"):  # its torchvision VGG16-BN, classifier included, costs nothing there
        reference = reference_module().CRAFT(pretrained=False, freeze=False)
    reference.load_state_dict({keymap.canonical(key): checkpoint.get(key) for key in checkpoint.keys()}, strict=True, assign=True)
    reference.eval()
    x, label = images(inputs, lambda paths: torch.cat([preprocess(p)[0] for p in paths]))
    official = {rule.minipt.removesuffix(".{p}"): rule.official.removesuffix(".{p}") for rule in keymap.rules}
    points = {}
    for s, widths in enumerate(found.stages):
        for b in range(len(widths)):
            block = f"stages.{s}.blocks.{b}"
            for part in ("conv", "bn"):
                points[f"{block}.{part}.out"] = (official[f"{block}.{part}"], None)
            relu = int(official[f"{block}.bn"].rsplit(".", 1)[1]) + 1  # the ReLU after it, in the slice that holds it
            where = next((f"basenet.slice{n}.{relu}" for n, end in enumerate(_slice_ends(), start=1) if relu < end), None)
            if where is not None and (s, b) != (4, 1):  # conv5_2's ReLU does not run (see forward_backbone)
                points[f"{block}.out"] = (where, None)
    points.update({"fc.fc6.out": ("basenet.slice5.1", None), "fc.fc7.out": ("basenet.slice5.2", None)})
    for i in range(4):
        for part in ("conv1", "bn1", "conv2", "bn2"):
            points[f"decoder.{i}.{part}.out"] = (official[f"decoder.{i}.{part}"], None)
        points[f"decoder.{i}.out"] = (f"upconv{i + 1}", None)
    for part in ("conv1", "conv2", "conv3", "conv4", "scores"):
        points[f"head.{part}.out"] = (official[f"head.{part}"], None)
    return report(model, "EasyOCR's CRAFT", label, rtol, points, lambda: model(x), reference, lambda: reference(x))


# -- the family's one declaration (minipt.registry) ------------------------------------------
FAMILY = register(
    "craft",
    (CRAFT,),
    tiny=lambda: CRAFTConfig(((4, 4), (8, 8), (8, 8, 8), (16, 16, 16), (16, 16)), fc_channels=16,
                             decoder=((8, 8), (8, 8), (8, 4), (4, 4)), head_channels=(4, 4, 4, 4)),
    inputs=lambda cls: ((torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),), {}),
    signature=("basenet.slice5.1.weight", "EasyOCR's CRAFT text detector"),
    reference=compare_with_reference,
    reads=Reads("images (batch x channels x height x width)", "1x3x256x256"),
)
