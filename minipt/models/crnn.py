"""CRNN: a convolutional recurrent network that reads a line of text (Shi et al., 2015).

The network here is EasyOCR's English recogniser ("english_g2"), built from
minipt parts and loaded from the official file:

    image (B, 1, 64, W), grayscale in [-1, 1]
      -> VGG-style convolutions          (B, 256, 3, W/4 - 1)
      -> average over the height         (B, T, 256)      T = W/4 - 1 columns
      -> BiLSTM(256) + Linear(512->256), twice
      -> Linear(256 -> 97)               (B, T, 97) per-column class scores
      -> greedy CTC decoding: best class per column, repeats merged, blanks (0) dropped

    >>> from minipt.models.crnn import read_text
    >>> read_text("line.png")
    'Hello World 2024'
"""

from __future__ import annotations

import functools
import math
import os
import string
from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoint import Checkpoint, Pretrained
from ..config import Config, count, require, text
from ..errors import ConfigError, InputError
from ..keymap import KeyMap
from ..nn import LSTM, Linear
from ..nn.conv import conv3x3
from ..registry import Reads, register
from ..checks import check_on_device, floating_dtype, parameter_device
from ..vision import decoded, eight_bit, opaque, pillow, upright
from ..nn.backend import ChoosesBackend
from ..nn.fuse import InferenceCopy
from ..summary import evaluating

# EasyOCR's English character set, in the order of the classifier's outputs 1..96
# (output 0 is the CTC blank): digits, ASCII punctuation, space, euro sign, letters.
ENGLISH_CHARSET = string.digits + string.punctuation + " €" + string.ascii_uppercase + string.ascii_lowercase


@dataclass
class CRNNConfig(Config):
    in_channels: int = count(1)  # grayscale
    channels: tuple[int, int, int, int] = (32, 64, 128, 256)  # width of the four convolution stages
    hidden_size: int = count(256)  # per direction in each BiLSTM; also the width of its output projection
    charset: str = text(ENGLISH_CHARSET)
    image_height: int = count(64)  # the convolutions reduce 64 rows to 3, averaged into one feature column

    model_type = "crnn"

    @property
    def num_classes(self) -> int:
        return len(self.charset) + 1  # + the CTC blank

    def check(self):
        valid = isinstance(self.channels, (list, tuple)) and len(self.channels) == 4 and all(type(c) is int and c >= 1 for c in self.channels)
        require(valid, "channels", self.channels, "4 stage widths, positive integers")
        self.channels = tuple(self.channels)
        require(len(self.charset) > 0 and len(set(self.charset)) == len(self.charset), "charset", self.charset, "distinct characters, at least one")
        require(self.image_height >= 16, "image_height", self.image_height, "at least 16 rows (the convolutions halve it four times)")


class VGGFeatures(nn.Module):
    """Seven convolutions; the last two pools halve only the height, keeping horizontal resolution."""

    conv_bn_pairs = (("conv5", "bn5"), ("conv6", "bn6"))  # fuse(): each BatchNorm folded into its conv

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int]):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.conv1 = conv3x3(in_channels, c1, bias=True)
        self.conv2 = conv3x3(c1, c2, bias=True)
        self.conv3 = conv3x3(c2, c3, bias=True)
        self.conv4 = conv3x3(c3, c3, bias=True)
        self.conv5 = conv3x3(c3, c4, bias=False)  # followed by BatchNorm, so no bias
        self.bn5 = nn.BatchNorm2d(c4)
        self.conv6 = conv3x3(c4, c4, bias=False)
        self.bn6 = nn.BatchNorm2d(c4)
        self.conv7 = nn.Conv2d(c4, c4, kernel_size=2)  # 2x2, no padding: height 4 -> 3, width w -> w - 1
        self.pool = nn.MaxPool2d(2, 2)
        self.pool_rows = nn.MaxPool2d((2, 1), (2, 1))  # halves the height only

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 64, W)
        relu = torch.relu
        x = self.pool(relu(self.conv1(x)))  # (B, 32, 32, W/2)
        x = self.pool(relu(self.conv2(x)))  # (B, 64, 16, W/4)
        x = relu(self.conv3(x))
        x = self.pool_rows(relu(self.conv4(x)))  # (B, 128, 8, W/4)
        x = relu(self.bn5(self.conv5(x)))
        x = self.pool_rows(relu(self.bn6(self.conv6(x))))  # (B, 256, 4, W/4)
        return relu(self.conv7(x))  # (B, 256, 3, W/4 - 1)


class BidirectionalLSTM(nn.Module):
    """One bidirectional LSTM layer whose two directions are projected back to ``out_size``."""

    def __init__(self, in_size: int, hidden_size: int, out_size: int):
        super().__init__()
        self.lstm = LSTM(in_size, hidden_size, bidirectional=True, batch_first=True)
        self.proj = Linear(2 * hidden_size, out_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, in)
        hidden, _ = self.lstm(x)  # (B, T, 2 * hidden): forward and backward halves
        return self.proj(hidden)  # (B, T, out)


class CRNN(Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    config_class = CRNNConfig
    default_checkpoint = "easyocr-english-g2"
    weights_file = "english_g2.pth"  # EasyOCR's folder also holds its text detector
    checkpoint_fields = {
        "in_channels": ("features.conv1.weight", 1),
        "hidden_size": ("sequence.0.lstm.weight_hh_l0", 1),
        "num_classes": ("classifier.weight", 0),
    }
    transfer_stages = {"features": "features", "sequence.{i}": "sequence.{i}", "classifier": "classifier"}  # see minipt.transfer
    transfer_head = ("classifier", "num_classes")  # sized by the charset: reset_classifier(model, charset="...")

    def __init__(self, config: CRNNConfig | None = None):
        super().__init__()
        self.config = config = config or CRNNConfig()
        width, hidden = config.channels[-1], config.hidden_size
        self.features = VGGFeatures(config.in_channels, config.channels)
        self.sequence = nn.Sequential(
            BidirectionalLSTM(width, hidden, hidden),
            BidirectionalLSTM(hidden, hidden, hidden),
        )
        self.classifier = Linear(hidden, config.num_classes)
        self.set_backend(config.backend)

    def check_inputs(self, images: torch.Tensor) -> None:
        """Raise an InputError unless ``images`` is a float batch (B, in_channels, image_height, W) at least 8 pixels wide."""
        c = self.config
        if not isinstance(images, torch.Tensor):
            raise InputError(f"CRNN expects a tensor of images (B, {c.in_channels}, {c.image_height}, W), got {type(images).__name__}")
        if images.dim() != 4:
            raise InputError(f"CRNN expects images of rank 4 (B, {c.in_channels}, {c.image_height}, W), got shape {tuple(images.shape)}")
        _, channels, height, width = images.shape
        if channels != c.in_channels or height != c.image_height:
            raise InputError(
                f"CRNN expects (B, {c.in_channels}, {c.image_height}, W) images, got shape {tuple(images.shape)}: "
                f"{channels} channel(s) of height {height}; resize lines to height {c.image_height} (see preprocess())"
            )
        if width < 8:
            raise InputError(f"CRNN needs images at least 8 pixels wide (one output column per 4 pixels), got width {width}")
        if not images.is_floating_point():
            raise InputError(f"CRNN expects float images normalised to [-1, 1], got dtype {images.dtype}; see preprocess()")
        check_on_device("CRNN's input", images, parameter_device(self))
        dtype = floating_dtype(self)
        if images.dtype != dtype:
            raise InputError(f"CRNN computes in {dtype}; got images of {images.dtype} (convert them with .to({dtype}))")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-column class scores (B, T, num_classes) for images (B, 1, 64, W) in [-1, 1]."""
        self.check_inputs(images)
        features = self.features(images)  # (B, C, 3, T)
        columns = features.mean(dim=2).transpose(1, 2)  # (B, T, C): each column averaged over its rows
        return self.classifier(self.sequence(columns))  # (B, T, num_classes)

    def decode(self, logits: torch.Tensor) -> list[str]:
        """Greedy CTC decoding: the best class per column, repeats merged, blanks dropped."""
        return ["".join(char for _, char in row) for row in self.decode_columns(logits)]

    def decode_columns(self, logits: torch.Tensor) -> list[list[tuple[int, str]]]:
        """``decode``'s characters of each image with the column each was read at (its first, where repeated):
        column t looks at about pixels 4t to 4t + 3 of the (64-row) image, so the columns place each character."""
        best = logits.argmax(dim=-1)  # (B, T)
        rows = []
        for row in best.tolist():
            chars, previous = [], 0
            for column, index in enumerate(row):
                if index != previous and index != 0:
                    chars.append((column, self.config.charset[index - 1]))
                previous = index
            rows.append(chars)
        return rows

    @torch.no_grad()
    def read(self, images) -> list[str]:
        """Text of each image: PIL images, paths or a preprocessed (B, 1, 64, W) tensor; read in eval mode (BatchNorm's
        running statistics, no dropout), the model left in the mode it was in."""
        if not isinstance(images, torch.Tensor):
            images = images if isinstance(images, (list, tuple)) else [images]
            if not images:
                raise InputError("CRNN.read got no images")
            with evaluating(self):
                return [self.decode(self(preprocess(image, self.config.image_height)))[0] for image in images]
        with evaluating(self):
            return self.decode(self(images))

    # -- official weights --------------------------------------------------
    @classmethod
    def keymap(cls, config: CRNNConfig | None = None) -> KeyMap:
        """EasyOCR's names <-> minipt's; the same for every width."""
        return _KEYMAP

    @classmethod
    def check_config(cls, config: CRNNConfig, checkpoint: Checkpoint) -> None:
        """The scalar fields as every family checks them, then each stage width against its convolution."""
        super().check_config(config, checkpoint)
        shapes = {_KEYMAP.canonical(key): checkpoint.shape(key) for key in checkpoint.keys()}
        for stage, (official, width) in enumerate(zip(STAGE_CONVOLUTIONS, config.channels)):
            shape = shapes.get(official)
            if shape and shape[0] != width:
                raise ConfigError(
                    f"the config of {cls.__name__} does not match the checkpoint {checkpoint.path}: "
                    f"channels[{stage}] = {width}, but {official} has shape {shape}"
                )

    @classmethod
    def config_from_checkpoint(cls, path, checkpoint: Checkpoint) -> CRNNConfig:
        """EasyOCR's file has no config: the widths are read off the tensors; the charset is EasyOCR's English one."""
        shapes = {_KEYMAP.canonical(key): checkpoint.shape(key) for key in checkpoint.keys()}
        conv = [shapes.get(key, ()) for key in STAGE_CONVOLUTIONS]
        hidden = shapes.get("SequenceModeling.0.rnn.weight_hh_l0", ())
        if any(len(s) != 4 for s in conv) or len(hidden) != 2:
            return CRNNConfig()  # not EasyOCR's layout: the loader names every difference
        return CRNNConfig(in_channels=conv[0][1], channels=tuple(s[0] for s in conv), hidden_size=hidden[1])


OFFICIAL_FILE = CRNN.weights_file

# The official convolution that sets each of the four stage widths (config.channels).
STAGE_CONVOLUTIONS = tuple(f"FeatureExtraction.ConvNet.{i}.weight" for i in (0, 3, 6, 11))

# EasyOCR's names (an nn.Sequential numbered by position, ReLUs and pools included)
# -> minipt's. Files saved from nn.DataParallel carry "module." before every key.
_KEYMAP = KeyMap(
    [
        ("FeatureExtraction.ConvNet.0.{p}", "features.conv1.{p}"),
        ("FeatureExtraction.ConvNet.3.{p}", "features.conv2.{p}"),
        ("FeatureExtraction.ConvNet.6.{p}", "features.conv3.{p}"),
        ("FeatureExtraction.ConvNet.8.{p}", "features.conv4.{p}"),
        ("FeatureExtraction.ConvNet.11.{p}", "features.conv5.{p}"),
        ("FeatureExtraction.ConvNet.12.{p}", "features.bn5.{p}"),
        ("FeatureExtraction.ConvNet.14.{p}", "features.conv6.{p}"),
        ("FeatureExtraction.ConvNet.15.{p}", "features.bn6.{p}"),
        ("FeatureExtraction.ConvNet.18.{p}", "features.conv7.{p}"),
        ("SequenceModeling.{i}.rnn.{p}", "sequence.{i}.lstm.{p}"),
        ("SequenceModeling.{i}.linear.{p}", "sequence.{i}.proj.{p}"),
        ("Prediction.{p}", "classifier.{p}"),
    ],
    optional_prefix="module.",
)


# -- images in -----------------------------------------------------------------
def preprocess(image, height: int = 64) -> torch.Tensor:
    """A PIL image, a path, or a 2-D uint8 array/tensor -> (1, 1, height, W) floats in [-1, 1].

    The line is converted to grayscale and resized to ``height`` rows keeping its aspect ratio (bicubic; EasyOCR
    resizes bilinear, then bicubic to the width rounded up, which reads bench/ocr_set.py's images slightly worse: see
    docs/benchmarks.md), then scaled ``(x / 255 - 0.5) / 0.5``.
    """
    Image = pillow().Image

    if isinstance(image, (str, os.PathLike)):
        image = decoded(image)
    elif isinstance(image, torch.Tensor) or type(image).__module__ == "numpy":
        array = torch.as_tensor(image)
        if array.dim() != 2 or array.dtype != torch.uint8:
            raise InputError(f"preprocess expects a 2-D uint8 grayscale array (H, W), got shape {tuple(array.shape)} of {array.dtype}")
        image = Image.fromarray(array.numpy())
    elif not isinstance(image, Image.Image):
        raise InputError(f"preprocess expects a PIL image, a path or a 2-D uint8 array, got {type(image).__name__}")
    # 16-bit lines scaled, not clipped to white; transparency over white (as read_lines reads it), turned as EXIF says
    gray = opaque(eight_bit(upright(image))).convert("L")
    w, h = gray.size
    if w == 0 or h == 0:
        raise InputError(f"empty image ({w}x{h} pixels)")
    width = max(8, math.ceil(height * w / h))
    gray = gray.resize((width, height), Image.BICUBIC)
    pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(1, 1, height, width)
    return (pixels.float() / 255 - 0.5) / 0.5


@functools.cache
def english_g2() -> CRNN:
    """EasyOCR's English recogniser, loaded once."""
    return CRNN.from_pretrained("easyocr-english-g2")


def read_text(image) -> str:
    """The text in one image of a single line (PIL image or path), read by EasyOCR's English recogniser."""
    return english_g2().read(image)[0]


# -- minipt.reference: where the reference implementation computes the same values ----------
class EasyOCRReference(nn.Module):
    """EasyOCR's recogniser (VGG features, two BiLSTMs, a linear head) from torch.nn, under its official names."""

    def __init__(self, in_channels: int, channels: tuple, hidden: int, num_classes: int):
        super().__init__()
        c1, c2, c3, c4 = channels
        conv = lambda i, o, bias=True: nn.Conv2d(i, o, 3, 1, 1, bias=bias)  # noqa: E731
        self.FeatureExtraction = nn.Module()
        self.FeatureExtraction.ConvNet = nn.Sequential(
            conv(in_channels, c1), nn.ReLU(), nn.MaxPool2d(2, 2),
            conv(c1, c2), nn.ReLU(), nn.MaxPool2d(2, 2),
            conv(c2, c3), nn.ReLU(), conv(c3, c3), nn.ReLU(), nn.MaxPool2d((2, 1), (2, 1)),
            conv(c3, c4, False), nn.BatchNorm2d(c4), nn.ReLU(),
            conv(c4, c4, False), nn.BatchNorm2d(c4), nn.ReLU(), nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(c4, c4, 2, 1, 0), nn.ReLU(),
        )  # fmt: skip
        self.SequenceModeling = nn.ModuleList()
        for size in (c4, hidden):
            block = nn.Module()
            block.rnn, block.linear = nn.LSTM(size, hidden, bidirectional=True, batch_first=True), nn.Linear(2 * hidden, hidden)
            self.SequenceModeling.append(block)
        self.Prediction = nn.Linear(hidden, num_classes)

    def forward(self, x):
        features = self.FeatureExtraction.ConvNet(x)  # (B, C, 3, T)
        x = nn.functional.adaptive_avg_pool2d(features.permute(0, 3, 1, 2), (None, 1)).squeeze(3)  # (B, T, C)
        for block in self.SequenceModeling:
            x = block.linear(block.rnn(x)[0])
        return self.Prediction(x)


def render_line(text: str, height: int = 64):
    """``text`` drawn black on white with Pillow's default font, as a CRNN input (1, 1, height, W)."""
    PIL = pillow()
    Image, ImageDraw, ImageFont = PIL.Image, PIL.ImageDraw, PIL.ImageFont
    font = ImageFont.load_default()
    _, _, right, bottom = font.getbbox(text)
    image = Image.new("L", (right + 8, bottom + 8), 255)
    ImageDraw.Draw(image).text((4, 4), text, fill=0, font=font)
    return preprocess(image, height)


def compare_with_reference(model, path, inputs, rtol):
    """EasyOCR's recogniser rebuilt from torch.nn on the same checkpoint, point by point (``minipt.reference.layer_diffs``)."""
    from ..reference import directions, report

    import os

    config = model.config
    checkpoint = CRNN.open_checkpoint(path)
    found = CRNN.config_from_checkpoint(path, checkpoint)  # the reference's sizes are the checkpoint's
    state = {key.removeprefix("module."): checkpoint.get(key) for key in checkpoint.keys()}
    reference = EasyOCRReference(found.in_channels, found.channels, found.hidden_size, state["Prediction.weight"].shape[0])
    reference.load_state_dict(state, strict=True)
    reference.eval()
    if isinstance(inputs, torch.Tensor):
        x, label = inputs, f"images of shape {tuple(inputs.shape)}"
    elif isinstance(inputs, (str, os.PathLike)) and os.path.isfile(inputs):
        x, label = preprocess(inputs, config.image_height), f"{os.path.basename(str(inputs))} as {tuple(preprocess(inputs, config.image_height).shape)}"
    else:
        text = "Hello World 2024" if inputs is None else inputs
        if not isinstance(text, str):
            raise InputError(f"CRNN compares on a line of text to render, an image path or an image batch; got {type(text).__name__}")
        x = render_line(text, config.image_height)
        label = f"{text!r} rendered with Pillow, {tuple(x.shape)}"
    convs = {"conv1": 0, "conv2": 3, "conv3": 6, "conv4": 8, "conv5": 11, "bn5": 12, "conv6": 14, "bn6": 15, "conv7": 18}
    points = {f"features.{name}.out": (f"FeatureExtraction.ConvNet.{index}", None) for name, index in convs.items()}
    points["features.out"] = ("FeatureExtraction.ConvNet", None)
    H = found.hidden_size
    for i in range(len(model.sequence)):
        a, r = f"sequence.{i}.", f"SequenceModeling.{i}."
        points[a + "lstm.layers.0.h"] = (r + "rnn", lambda out: directions(out[0], H, 0))
        points[a + "lstm.layers.0.reverse.h"] = (r + "rnn", lambda out: directions(out[0], H, 1))
        points[a + "lstm.out"] = (r + "rnn", None)
        points[a + "out"] = (r + "linear", None)
    points["classifier.out"] = ("Prediction", None)
    return report(model, "EasyOCR's network rebuilt from torch.nn", label, rtol, points, lambda: model(x), reference, lambda: reference(x))


# -- the family's one declaration (minipt.registry) ------------------------------------------
FAMILY = register(
    "crnn",
    (CRNN,),
    tiny=lambda: CRNNConfig(channels=(4, 8, 8, 16), hidden_size=8, charset="abc"),
    inputs=lambda cls: ((torch.randn(2, 1, 64, 32, generator=torch.Generator().manual_seed(1)),), {}),
    signature=("FeatureExtraction.ConvNet.0.weight", "EasyOCR's text recogniser"),
    reference=compare_with_reference,
    reads=Reads("text-line images (batch x 1 x 64 x width)", "1x1x64x256"),
)
