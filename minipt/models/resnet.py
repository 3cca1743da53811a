"""ResNet (He et al., 2015, "Deep Residual Learning for Image Recognition"), on torchvision's format.

    stem:    7x7 conv, stride 2 -> BatchNorm -> ReLU -> 3x3 max pool, stride 2     # (B, 64, H/4, W/4)
    stages:  four stages of residual blocks; stages 2-4 halve the resolution        # (B, C, H/32, W/32)
    head:    global average pool -> linear classifier                               # (B, num_classes)

Two residual blocks: ``BasicBlock`` (two 3x3 convs, ResNet-18/34) and
``Bottleneck`` (1x1 reduce, 3x3, 1x1 expand by 4, ResNet-50/101/152).
``groups`` and ``width_per_group`` widen the bottleneck's 3x3 conv: 32 groups
of width 4 is ResNeXt-50 32x4d, width 128 is Wide ResNet-50-2.

Checkpoints use torchvision's key names (``conv1``, ``layer1.0.downsample.0``,
``fc``; timm's ResNets share them); ``ResNet.keymap()`` translates them both
ways to minipt's names (``stem.conv``, ``stages.0.0.shortcut.conv``, ``head``).
The torchvision format has no config file, so ``ResNet.from_pretrained`` reads
the architecture off the tensors' names and shapes.

The model follows timm's calls: ``forward_features`` gives the last stage's
feature map, ``forward_head`` pools and classifies it, ``get_classifier`` and
``reset_classifier`` reach the head (``minipt.models.classifier``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoint import Checkpoint, Pretrained
from ..config import Config, count, flag, one_of, require
from ..errors import ConfigError, KeyMismatchError
from ..keymap import KeyMap
from ..nn import Linear
from ..nn.conv import conv1x1, conv3x3
from ..checks import floating_dtype, parameter_device
from ..vision import check_images, normalized_batch
from ..registry import Reads, describe, register
from .classifier import HasClassifier
from ..nn.backend import ChoosesBackend
from ..nn.fuse import InferenceCopy


# -- configuration -------------------------------------------------------------
@dataclass
class ResNetConfig(Config):
    block: str = one_of("bottleneck", ("basic", "bottleneck"))  # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50 and deeper)
    layers: tuple[int, ...] = (3, 4, 6, 3)  # residual blocks per stage
    num_classes: int = count(1000, minimum=0)  # 0: no head, the model gives pooled features (timm's convention)
    groups: int = count(1)  # groups of the bottleneck's 3x3 conv (ResNeXt: 32)
    width_per_group: int = count(64)  # channels per group at stage 1 (ResNeXt 32x4d: 4; Wide ResNet-50-2: 128)
    in_channels: int = count(3)
    zero_init_residual: bool = flag(False)  # start each residual branch at zero (Goyal et al., 2017)

    model_type = "resnet"

    def check(self):
        valid = isinstance(self.layers, (list, tuple)) and len(self.layers) == 4 and all(type(n) is int and n >= 1 for n in self.layers)
        require(valid, "layers", self.layers, "four stages of at least one block each")
        self.layers = tuple(self.layers)
        if self.block == "basic":
            require(self.groups == 1 and self.width_per_group == 64, "groups/width_per_group", (self.groups, self.width_per_group),
                    "(1, 64) for BasicBlock (use a Bottleneck ResNet for ResNeXt/wide)")

    @property
    def depth(self) -> int:
        """The number in the name: weighted layers (convs of the residual branches, the stem conv and the classifier)."""
        return BLOCKS[self.block].convs * sum(self.layers) + 2

    def describe(self) -> str:
        """The builder's name when there is one (``resnet50``, ``resnext50_32x4d``), with the layout."""
        name = NAMES.get((self.block, self.layers, self.groups, self.width_per_group))
        if name is None:
            name = f"a {self.depth}-layer ResNet with groups={self.groups}, width_per_group={self.width_per_group}"
        head = f"{self.num_classes} classes" if self.num_classes else "no classifier"
        return f"{name} ({self.block} blocks {'-'.join(map(str, self.layers))}, {head})"


# -- building blocks -----------------------------------------------------------
class Shortcut(nn.Module):
    """The projection on the identity path when a block changes resolution or width: 1x1 conv -> BatchNorm."""

    conv_bn_pairs = (("conv", "bn"),)  # fuse(): each BatchNorm folded into its conv

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv = conv1x1(in_channels, out_channels, stride)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """relu(x + bn(conv3x3(relu(bn(conv3x3(x))))))."""

    expansion = 1  # output channels = planes * expansion
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))
    convs = 2  # convolutions on the residual branch

    def __init__(self, in_channels: int, planes: int, stride: int = 1, groups: int = 1, width_per_group: int = 64):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = Shortcut(in_channels, out_channels, stride) if stride != 1 or in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        hidden = self.relu(self.bn1(self.conv1(x)))
        hidden = self.bn2(self.conv2(hidden))
        hidden += identity  # in place, as torchvision: no extra (B, C, H, W) buffer
        return self.relu(hidden)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """relu(x + bn(conv1x1(relu(bn(conv3x3(relu(bn(conv1x1(x)))))))), 4x wider out than in the middle."""

    expansion = 4
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
    convs = 3

    def __init__(self, in_channels: int, planes: int, stride: int = 1, groups: int = 1, width_per_group: int = 64):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups  # channels of the 3x3 conv
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        # "V1.5": the stride sits on the 3x3 conv, not on the first 1x1 conv as in the paper (torchvision's layout;
        # a checkpoint trained the other way loads without error here and gives wrong outputs).
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = Shortcut(in_channels, out_channels, stride) if stride != 1 or in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        hidden = self.relu(self.bn1(self.conv1(x)))  # (B, width, H, W)
        hidden = self.relu(self.bn2(self.conv2(hidden)))  # (B, width, H/stride, W/stride)
        hidden = self.bn3(self.conv3(hidden))  # (B, 4 * planes, H/stride, W/stride)
        hidden += identity  # in place, as torchvision: no extra (B, C, H, W) buffer
        return self.relu(hidden)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
STAGE_PLANES = (64, 128, 256, 512)
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
VARIANTS = {  # name -> (depth, groups, width_per_group)
    **{f"resnet{depth}": (depth, 1, 64) for depth in DEPTHS},
    "resnext50_32x4d": (50, 32, 4),
    "resnext101_32x8d": (101, 32, 8),
    "resnext101_64x4d": (101, 64, 4),
    "wide_resnet50_2": (50, 1, 128),
    "wide_resnet101_2": (101, 1, 128),
}
NAMES = {(*DEPTHS[depth], groups, width): name for name, (depth, groups, width) in VARIANTS.items()}


class Stem(nn.Module):
    """7x7 conv with stride 2, BatchNorm, ReLU, 3x3 max pool with stride 2: a quarter of the resolution."""

    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_channels: int, out_channels: int = 64):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.bn(self.conv(x))))


# -- the model -------------------------------------------------------------------
class ResNet(HasClassifier, Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    config_class = ResNetConfig
    transfer_stages = {"stem": "stem", "stages.{i}": "stages.{i}", "head": "head"}  # see minipt.transfer
    transfer_head = ("head", "num_classes")  # get_classifier() / reset_classifier() (minipt.models.classifier)
    headless = True  # num_classes = 0: no head

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        self.fused = False
        block = BLOCKS[config.block]
        self.stem = Stem(config.in_channels)
        stages, in_channels = [], 64
        for index, (planes, count) in enumerate(zip(STAGE_PLANES, config.layers)):
            stride = 1 if index == 0 else 2  # stages 2-4 halve the resolution in their first block
            blocks = []
            for b in range(count):
                blocks.append(block(in_channels, planes, stride if b == 0 else 1, config.groups, config.width_per_group))
                in_channels = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = Linear(in_channels, config.num_classes) if config.num_classes else nn.Identity()
        self.num_features = in_channels  # channels of the last feature map: 512 * expansion
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()
        self.set_backend(config.backend)

    def reset_parameters(self) -> None:
        """torchvision's initialisation: He-normal convs (fan out), BatchNorm at identity."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            if isinstance(module, (BasicBlock, Bottleneck)) and self.config.zero_init_residual:
                nn.init.zeros_(module.last_bn().weight)

    def check_inputs(self, x: torch.Tensor) -> None:
        """Raise an InputError unless ``x`` is a batch of floating-point images (B, in_channels, H, W)."""
        check_images(x, self.config.in_channels, "ResNet", floating_dtype(self), parameter_device(self))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, not pooled: (B, C, H, W) -> (B, num_features, H/32, W/32)."""
        self.check_inputs(x)
        hidden = self.stem(x)  # (B, 64, H/4, W/4)
        for stage in self.stages:
            hidden = stage(hidden)  # (B, num_features, H/32, W/32) after the last stage
        return hidden

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average-pool the feature map and classify: (B, num_features, h, w) -> (B, num_classes);
        ``pre_logits=True`` stops before the head: (B, num_features)."""
        self.check_features(features)
        pooled = torch.flatten(self.pool(features), 1)  # (B, num_features)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (B, num_classes) logits; (B, num_features) without a head

    def preprocess(self, images) -> torch.Tensor:
        """Image paths (or PIL images) -> (B, 3, 224, 224), as torchvision prepares ImageNet inputs:
        shorter side to 256, centre crop 224, scaled to 0..1, normalised by the ImageNet mean and std."""
        return normalized_batch(images)

    # -- loading and saving ----------------------------------------------------
    # torchvision's format has no config: the architecture is read off the tensors' names and shapes.
    @classmethod
    def keymap(cls, config: ResNetConfig | None = None) -> KeyMap:
        """torchvision's (and timm's) names <-> minipt's; the same for every depth and width."""
        return _KEYMAP

    @classmethod
    def config_from_checkpoint(cls, path, checkpoint: Checkpoint) -> ResNetConfig:
        return infer_config(checkpoint)

    @classmethod
    def check_config(cls, config: ResNetConfig, checkpoint: Checkpoint) -> None:
        """A config of another depth or width than the checkpoint's is refused, saying what the checkpoint is."""
        found = infer_config(checkpoint)
        fields = ("block", "layers", "groups", "width_per_group", "num_classes", "in_channels")
        if any(getattr(found, f) != getattr(config, f) for f in fields):
            raise KeyMismatchError(f"checkpoint {checkpoint.path} does not fit {config.describe()}: {_looks_like(found)}")


# -- torchvision's names ---------------------------------------------------------
# torchvision counts stages from 1 (layer1..layer4), minipt from 0, so each stage has its own rows.
_KEYMAP = KeyMap(
    [
        ("conv1.weight", "stem.conv.weight"),
        ("bn1.{p}", "stem.bn.{p}"),
        *[
            row
            for stage in range(4)
            for row in (
                (f"layer{stage + 1}.{{b}}.downsample.0.weight", f"stages.{stage}.{{b}}.shortcut.conv.weight"),
                (f"layer{stage + 1}.{{b}}.downsample.1.{{p}}", f"stages.{stage}.{{b}}.shortcut.bn.{{p}}"),
                (f"layer{stage + 1}.{{b}}.{{layer}}.{{p}}", f"stages.{stage}.{{b}}.{{layer}}.{{p}}"),  # conv1-3, bn1-3
            )
        ],
        ("fc.{p}", "head.{p}"),
    ],
    optional_prefix="module.",  # checkpoints saved from DataParallel/DDP
    # torchvision's original ImageNet files were saved before PyTorch 0.4.1 added BatchNorm's
    # batch counter; torch.nn starts it at 0 for such files, and so does this.
    defaults={"{*}.num_batches_tracked": torch.tensor(0)},
)



def infer_config(checkpoint: Checkpoint) -> ResNetConfig:
    """Read a ResNet's architecture off a torchvision-format checkpoint's names and shapes."""
    shapes = {_KEYMAP.canonical(key): checkpoint.shape(key) for key in checkpoint.keys()}
    headless = not any(key.startswith("fc.") for key in shapes)  # saved after reset_classifier(0)
    needed = ["conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight"] + ([] if headless else ["fc.weight"])
    absent = [key for key in needed if key not in shapes]
    if absent:
        first = ", ".join(f"{k} {s}" for k, s in list(shapes.items())[:5])
        other = "" if "layer1.0.conv1.weight" in shapes else f"; {describe(checkpoint.path, checkpoint)}"  # a damaged ResNet: no hint
        raise KeyMismatchError(f"checkpoint {checkpoint.path} is not a torchvision-format ResNet: it has no {', '.join(absent)} (its first keys: "
                               f"{first}){other}")
    odd = [f"{key} {shapes[key]}" for key in needed if len(shapes[key]) < 2 or min(shapes[key]) < 1]
    if odd:
        raise KeyMismatchError(f"checkpoint {checkpoint.path} does not describe a ResNet: {', '.join(odd)} is not a weight matrix or kernel")
    layers = []
    for stage in range(1, 5):
        blocks = {key.split(".")[1] for key in shapes if key.startswith(f"layer{stage}.")}
        layers.append(len(blocks))
    block = "bottleneck" if "layer1.0.conv3.weight" in shapes else "basic"
    groups, width_per_group = 1, 64
    if block == "bottleneck":
        width, per_group = shapes["layer1.0.conv2.weight"][:2]  # (width, width / groups, 3, 3)
        groups = max(1, width // per_group)
        width_per_group = max(1, width // groups)
    values = dict(
        block=block, layers=tuple(layers), num_classes=0 if headless else shapes["fc.weight"][0], groups=groups,
        width_per_group=width_per_group, in_channels=shapes["conv1.weight"][1],
    )
    try:
        return ResNetConfig(**values)
    except ConfigError as err:
        raise KeyMismatchError(f"checkpoint {checkpoint.path} does not describe a ResNet torchvision can build: {err}") from None


def _looks_like(found: ResNetConfig) -> str:
    return f"the checkpoint looks like {found.describe()}: load it with ResNet.from_pretrained(path)"


# -- builders ----------------------------------------------------------------------
def _resnet(depth: int, weights, num_classes: int | None, **options) -> ResNet:
    block, layers = DEPTHS[depth]
    if weights is None:
        return ResNet(ResNetConfig(block, layers, num_classes=1000 if num_classes is None else num_classes, **options))
    if num_classes is not None:  # else the checkpoint decides, as torchvision's weights enums do
        options["num_classes"] = num_classes
    options = {"groups": 1, "width_per_group": 64, **options}  # the builder's architecture, whatever the file holds
    return ResNet.from_pretrained(weights, block=block, layers=layers, **options)


def resnet18(*, weights=None, num_classes: int | None = None, **options) -> ResNet:
    return _resnet(18, weights, num_classes, **options)


def resnet34(*, weights=None, num_classes: int | None = None, **options) -> ResNet:
    return _resnet(34, weights, num_classes, **options)


def resnet50(*, weights=None, num_classes: int | None = None, **options) -> ResNet:
    return _resnet(50, weights, num_classes, **options)


def resnet101(*, weights=None, num_classes: int | None = None, **options) -> ResNet:
    return _resnet(101, weights, num_classes, **options)


def resnet152(*, weights=None, num_classes: int | None = None, **options) -> ResNet:
    return _resnet(152, weights, num_classes, **options)


def resnext50_32x4d(*, weights=None, num_classes: int | None = None, **options) -> ResNet:
    return _resnet(50, weights, num_classes, groups=32, width_per_group=4, **options)


def resnext101_32x8d(*, weights=None, num_classes: int | None = None, **options) -> ResNet:
    return _resnet(101, weights, num_classes, groups=32, width_per_group=8, **options)


def resnext101_64x4d(*, weights=None, num_classes: int | None = None, **options) -> ResNet:
    return _resnet(101, weights, num_classes, groups=64, width_per_group=4, **options)


def wide_resnet50_2(*, weights=None, num_classes: int | None = None, **options) -> ResNet:
    return _resnet(50, weights, num_classes, width_per_group=128, **options)


def wide_resnet101_2(*, weights=None, num_classes: int | None = None, **options) -> ResNet:
    return _resnet(101, weights, num_classes, width_per_group=128, **options)


# -- minipt.reference: where the reference implementation computes the same values ----------
def compare_with_reference(model, path, inputs, rtol):
    """torchvision's ResNet on the same checkpoint, point by point (``minipt.reference.layer_diffs``)."""
    from ..checkpoint import Checkpoint
    from ..reference import images, import_reference, load_torchvision_state, report

    import_reference("torchvision", "ResNet")
    from torchvision.models import resnet as tv  # reference-only

    checkpoint = Checkpoint(path)
    config = infer_config(checkpoint)  # the reference's architecture is the checkpoint's, not the model's
    block = tv.BasicBlock if config.block == "basic" else tv.Bottleneck
    reference = tv.ResNet(block, list(config.layers), num_classes=max(config.num_classes, 1), groups=config.groups, width_per_group=config.width_per_group)
    if not config.num_classes:  # a headless checkpoint: torchvision's model without its fc
        reference.fc = nn.Identity()
    load_torchvision_state(reference, checkpoint, _KEYMAP, "ResNet", path)
    x, label = images(inputs, model.preprocess)
    points = {"stem.conv.out": ("conv1", None), "stem.bn.out": ("bn1", None), "stem.out": ("maxpool", None)}
    convs = ("conv1", "bn1", "conv2", "bn2") + (("conv3", "bn3") if config.block == "bottleneck" else ())
    for s, blocks in enumerate(config.layers):
        for b in range(blocks):
            a, r = f"stages.{s}.{b}.", f"layer{s + 1}.{b}."
            points.update({a + f"{part}.out": (r + part, None) for part in convs})
            if b == 0 and (s > 0 or config.block == "bottleneck"):
                points[a + "shortcut.out"] = (r + "downsample", None)
            points[a + "out"] = (r.rstrip("."), None)
    points["pool.out"] = ("avgpool", None)
    if config.num_classes:
        points["head.out"] = ("fc", None)
    return report(model, "torchvision ResNet", label, rtol, points, lambda: model(x), reference, lambda: reference(x))


# -- the family's one declaration (minipt.registry) ------------------------------------------
FAMILY = register(
    "resnet",
    (ResNet,),
    tiny=lambda: ResNetConfig("basic", (1, 1, 1, 1), num_classes=5),
    inputs=lambda cls: ((torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),), {}),
    signature=("layer1.0.conv1.weight", "a torchvision-format ResNet"),
    reference=compare_with_reference,
    reads=Reads("images (batch x channels x height x width)", "1x3x224x224"),
)
