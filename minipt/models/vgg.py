"""VGG (Simonyan and Zisserman, 2014, "Very Deep Convolutional Networks for Large-Scale Image Recognition"),
on torchvision's format.

    stages:      five stages of 3x3 conv (-> BatchNorm) -> ReLU blocks, each ending in a 2x2 max pool  # (B, 512, H/32, W/32)
    pool:        adaptive average pool to 7x7                                                           # (B, 512, 7, 7)
    pre_logits:  flatten -> linear -> ReLU -> dropout -> linear -> ReLU -> dropout                     # (B, 4096)
    head:        linear classifier                                                                      # (B, num_classes)

VGG-11/13/16/19 (torchvision's layouts "A", "B", "D", "E") differ only in how
many convolutions each stage holds; the ``_bn`` variants put a BatchNorm after
every convolution.

Checkpoints use torchvision's flat names (``features.N``, ``classifier.N``),
where N counts every layer, ReLUs and pools included, so the same stage's
convolution has another N in each variant. ``VGG.keymap(config)`` translates
them both ways to minipt's names, which follow the paper's stages
(``stages.2.blocks.1.conv``, ``pre_logits.fc1``, ``head``): a stage, the
blocks between two poolings, is a module of its own (text detectors such as
CRAFT cut VGG16-BN's features there). The torchvision format has no config
file, so ``VGG.from_pretrained`` reads the architecture off the tensors'
names and shapes.

The model follows timm's calls: ``forward_features`` gives the map after the
last max pool, ``forward_head`` pools it and runs the classifier,
``get_classifier`` and ``reset_classifier`` reach the last linear layer
(``minipt.models.classifier``; ``reset_classifier(0)`` leaves the hidden
layers, so the model gives their 4096 features, as timm's VGG does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoint import Checkpoint, Pretrained
from ..config import Config, count, flag, probability, require
from ..errors import ConfigError, InputError, KeyMismatchError
from ..keymap import KeyMap
from ..nn import Dropout, Linear
from ..nn.backend import ChoosesBackend
from ..nn.conv import conv3x3
from ..nn.fuse import InferenceCopy
from ..registry import Reads, describe, register
from ..checks import floating_dtype, parameter_device
from ..vision import check_images, normalized_batch
from .classifier import HasClassifier

# torchvision's configurations: output channels of each 3x3 convolution, stage by stage (its "M" pools between)
LAYOUTS = {
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),  # VGG-11
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),  # VGG-13
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),  # VGG-16
    "E": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),  # VGG-19
}
DEPTHS = {11: "A", 13: "B", 16: "D", 19: "E"}
NAMES = {(LAYOUTS[letter], batch_norm): f"vgg{depth}{'_bn' if batch_norm else ''}" for depth, letter in DEPTHS.items() for batch_norm in (False, True)}


# -- configuration -------------------------------------------------------------
@dataclass
class VGGConfig(Config):
    stages: tuple[tuple[int, ...], ...] = LAYOUTS["D"]  # conv widths per stage; every stage ends in a 2x2 max pool
    batch_norm: bool = flag(True)  # a BatchNorm after every conv (the "_bn" variants)
    num_classes: int = count(1000, minimum=0)  # 0: no head, the model gives the classifier's hidden features (timm's convention)
    hidden_size: int = count(4096)  # width of the classifier's two hidden layers
    pool_size: int = count(7)  # side of the average pool's output, the classifier's input grid (torchvision: 7x7)
    dropout: float = probability(0.5)  # in the classifier, after each hidden layer
    in_channels: int = count(3)

    model_type = "vgg"

    def check(self):
        def widths(stage):
            return isinstance(stage, (list, tuple)) and len(stage) >= 1 and all(type(w) is int and w >= 1 for w in stage)

        valid = isinstance(self.stages, (list, tuple)) and len(self.stages) >= 1 and all(widths(stage) for stage in self.stages)
        require(valid, "stages", self.stages, "one or more stages, each a list of one or more conv widths (positive integers)")
        self.stages = tuple(tuple(stage) for stage in self.stages)

    @property
    def depth(self) -> int:
        """The number in the name: weighted layers (the convolutions and the classifier's three linear layers)."""
        return sum(len(stage) for stage in self.stages) + 3

    @property
    def smallest_image(self) -> int:
        """Height and width an image needs at least: each stage's 2x2 max pool halves it, rounding down."""
        return 2 ** len(self.stages)

    def describe(self) -> str:
        """The builder's name when there is one (``vgg16_bn``), with the convs per stage."""
        name = NAMES.get((self.stages, self.batch_norm))
        if name is None:
            widths = " M ".join("-".join(map(str, stage)) for stage in self.stages)
            name = f"a VGG of {self.depth} layers{' with BatchNorm' if self.batch_norm else ''} (widths {widths} M)"
        head = f"{self.num_classes} classes" if self.num_classes else "no classifier"
        return f"{name} (convs {'-'.join(str(len(stage)) for stage in self.stages)}, {head})"


# -- building blocks -----------------------------------------------------------
class ConvBlock(nn.Module):
    """3x3 conv (with bias, as torchvision's VGG) -> BatchNorm (the _bn variants) -> ReLU; same size out."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool):
        super().__init__()
        self.conv = conv3x3(in_channels, out_channels, bias=True)
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else None
        self.relu = nn.ReLU(inplace=True)
        self.conv_bn_pairs = (("conv", "bn"),) if batch_norm else ()  # fuse(): the BatchNorm folded into the conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.conv(x)  # (B, out_channels, H, W)
        if self.bn is not None:
            hidden = self.bn(hidden)
        return self.relu(hidden)


class Stage(nn.Module):
    """The blocks between two poolings, then the 2x2 max pool: (B, C, H, W) -> (B, widths[-1], H/2, W/2)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], batch_norm: bool):
        super().__init__()
        self.blocks = nn.Sequential(*(ConvBlock(c_in, c_out, batch_norm) for c_in, c_out in zip((in_channels, *widths), widths)))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(x))


def make_stages(stages: tuple[tuple[int, ...], ...], in_channels: int, batch_norm: bool) -> nn.ModuleList:
    """The convolution stages of a VGG, the backbone other models take from here (CRAFT's text detector)."""
    built = []
    for widths in stages:
        built.append(Stage(in_channels, widths, batch_norm))
        in_channels = widths[-1]
    return nn.ModuleList(built)


class PreLogits(nn.Module):
    """The classifier's two hidden layers: linear -> ReLU -> dropout, twice: (B, in_features) -> (B, hidden_size)."""

    linear_act_pairs = (("fc1", "act1"), ("fc2", "act2"))  # fuse(): each ReLU as a post-op of its matmul

    def __init__(self, in_features: int, hidden_size: int, dropout: float):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_size)
        self.act1 = nn.ReLU(inplace=True)
        self.drop1 = Dropout(dropout)
        self.fc2 = Linear(hidden_size, hidden_size)
        self.act2 = nn.ReLU(inplace=True)
        self.drop2 = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.drop1(self.act1(self.fc1(x)))
        return self.drop2(self.act2(self.fc2(hidden)))


# -- the model -------------------------------------------------------------------
class VGG(HasClassifier, Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    config_class = VGGConfig
    transfer_stages = {"stages.{i}": "stages.{i}", "pre_logits": "pre_logits", "head": "head"}  # see minipt.transfer
    transfer_head = ("head", "num_classes")  # get_classifier() / reset_classifier() (minipt.models.classifier)
    headless = True  # num_classes = 0: no head

    def __init__(self, config: VGGConfig):
        super().__init__()
        self.config = config
        self.fused = False
        self.stages = make_stages(config.stages, config.in_channels, config.batch_norm)
        in_channels = config.stages[-1][-1]
        self.pool = nn.AdaptiveAvgPool2d(config.pool_size)
        self.pre_logits = PreLogits(in_channels * config.pool_size**2, config.hidden_size, config.dropout)
        self.head = Linear(config.hidden_size, config.num_classes) if config.num_classes else nn.Identity()
        self.num_features = in_channels  # channels of the feature map forward_features gives (timm's name)
        self.head_hidden_size = config.hidden_size  # width the head reads (timm's name)
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()
        self.set_backend(config.backend)

    def reset_parameters(self) -> None:
        """torchvision's initialisation: He-normal convs (fan out), BatchNorm at identity, linear layers N(0, 0.01), zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def check_inputs(self, x: torch.Tensor) -> None:
        """Raise an InputError unless ``x`` is a batch of floating-point images (B, in_channels, H, W) that
        survive every stage's halving."""
        check_images(x, self.config.in_channels, "VGG", floating_dtype(self), parameter_device(self))
        smallest = self.config.smallest_image
        if x.shape[2] < smallest or x.shape[3] < smallest:
            raise InputError(
                f"VGG halves the image in each of its {len(self.config.stages)} stages (a 2x2 max pool): images need at least "
                f"{smallest}x{smallest} pixels; got a tensor of shape {tuple(x.shape)}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The map after the last stage's max pool: (B, C, H, W) -> (B, num_features, H/32, W/32) for five stages."""
        self.check_inputs(x)
        hidden = x
        for stage in self.stages:
            hidden = stage(hidden)  # (B, widths[-1], H/2, W/2) of the stage's input
        return hidden

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average-pool the feature map to pool_size x pool_size and classify: (B, num_features, h, w) ->
        (B, num_classes); ``pre_logits=True`` stops before the head: (B, hidden_size)."""
        self.check_features(features)
        pooled = torch.flatten(self.pool(features), 1)  # (B, num_features * pool_size**2), channel-major as torchvision
        hidden = self.pre_logits(pooled)  # (B, hidden_size)
        return hidden if pre_logits else self.head(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (B, num_classes) logits; (B, hidden_size) without a head

    def preprocess(self, images) -> torch.Tensor:
        """Image paths (or PIL images) -> (B, 3, 224, 224), as torchvision prepares ImageNet inputs for VGG."""
        return normalized_batch(images)

    # -- loading and saving ----------------------------------------------------
    # torchvision's format has no config: the architecture is read off the tensors' names and shapes.
    @classmethod
    def keymap(cls, config: VGGConfig | None = None) -> KeyMap:
        """torchvision's names <-> minipt's for ``config``'s layout (default: VGGConfig's, vgg16_bn); the flat
        ``features.N`` indices differ from one layout to the next."""
        config = config or VGGConfig()
        return _keymap(config.stages, config.batch_norm)

    @classmethod
    def config_from_checkpoint(cls, path, checkpoint: Checkpoint) -> VGGConfig:
        return infer_config(checkpoint)

    @classmethod
    def check_config(cls, config: VGGConfig, checkpoint: Checkpoint) -> None:
        """A config of another layout or size than the checkpoint's is refused, saying what the checkpoint is."""
        found = infer_config(checkpoint)
        fields = ("stages", "batch_norm", "num_classes", "hidden_size", "pool_size", "in_channels")
        if any(getattr(found, f) != getattr(config, f) for f in fields):
            raise KeyMismatchError(
                f"checkpoint {checkpoint.path} does not fit {config.describe()}: the checkpoint looks like {found.describe()}: "
                "load it with VGG.from_pretrained(path)"
            )


# -- torchvision's names ---------------------------------------------------------
def flat_layout(stages: tuple[tuple[int, ...], ...], batch_norm: bool) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Where torchvision's ``features`` Sequential puts each layer: ([(stage, block, index of its conv)], [index of
    each stage's max pool]). A block is conv, (BatchNorm,) ReLU; each stage ends with one max pool."""
    convs, pools, index = [], [], 0
    for s, widths in enumerate(stages):
        for b in range(len(widths)):
            convs.append((s, b, index))
            index += 3 if batch_norm else 2
        pools.append(index)
        index += 1
    return convs, pools


def _keymap(stages: tuple[tuple[int, ...], ...], batch_norm: bool) -> KeyMap:
    convs, _ = flat_layout(stages, batch_norm)
    rows = []
    for s, b, index in convs:
        rows.append((f"features.{index}.{{p}}", f"stages.{s}.blocks.{b}.conv.{{p}}"))
        if batch_norm:
            rows.append((f"features.{index + 1}.{{p}}", f"stages.{s}.blocks.{b}.bn.{{p}}"))
    rows += [("classifier.0.{p}", "pre_logits.fc1.{p}"), ("classifier.3.{p}", "pre_logits.fc2.{p}"), ("classifier.6.{p}", "head.{p}")]
    return KeyMap(
        rows,
        optional_prefix="module.",  # checkpoints saved from DataParallel/DDP
        # files saved before PyTorch 0.4.1 lack BatchNorm's batch counter; torch.nn starts it at 0 for them, and so does this
        defaults={"{*}.num_batches_tracked": torch.tensor(0)},
    )


_PREFIX = KeyMap([], optional_prefix="module.")  # the names with DataParallel's prefix removed, for reading shapes


def infer_config(checkpoint: Checkpoint) -> VGGConfig:
    """Read a VGG's architecture off a torchvision-format checkpoint's names and shapes: each conv's place in
    ``features`` says which stage it belongs to (one index more than a block takes is a max pool between)."""
    shapes = {_PREFIX.canonical(key): checkpoint.shape(key) for key in checkpoint.keys()}
    path = checkpoint.path

    def refuse(problem: str):
        first = ", ".join(f"{k} {s}" for k, s in list(shapes.items())[:5])
        other = "" if "features.0.weight" in shapes else f"; {describe(path, checkpoint)}"  # another family's file (CRAFT's) says so
        raise KeyMismatchError(f"checkpoint {path} is not a torchvision-format VGG: {problem} (its first keys: {first}){other}")

    kernels = {}
    for key, shape in shapes.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[1].isdigit() and parts[2] == "weight" and len(shape) == 4:
            kernels[int(parts[1])] = shape
    headless = "classifier.6.weight" not in shapes  # saved after reset_classifier(0)
    absent = ([] if 0 in kernels else ["features.0.weight (a 4-d conv kernel)"]) + [
        key for key in ("classifier.0.weight", "classifier.3.weight") if key not in shapes]
    if absent:
        refuse(f"it has no {', '.join(absent)}")
    batch_norm = "features.1.running_mean" in shapes
    step = 3 if batch_norm else 2  # conv, (BatchNorm,) ReLU
    stages, expected, in_channels = [[]], 0, kernels[0][1]
    for index in sorted(kernels):
        shape = kernels[index]
        if shape[2:] != (3, 3) or min(shape) < 1:
            refuse(f"features.{index}.weight has shape {shape}, not a 3x3 convolution's")
        if index == expected + 1:  # a max pool before it: a new stage
            stages.append([])
        elif index != expected:
            refuse(f"the convolution after features.{expected - step}.weight is features.{index}.weight; "
                   f"a {'conv-BatchNorm-ReLU' if batch_norm else 'conv-ReLU'} block puts the next one at features.{expected} (or at features.{expected + 1} after a max pool)")
        if shape[1] != in_channels:
            refuse(f"features.{index}.weight has shape {shape}: it reads {shape[1]} channels, but the layer before gives {in_channels}")
        stages[-1].append(shape[0])
        in_channels, expected = shape[0], index + step
    hidden_size, flat = shapes["classifier.0.weight"][:2] if len(shapes["classifier.0.weight"]) == 2 else (0, 0)
    pool_size = math.isqrt(flat // in_channels) if flat % in_channels == 0 else 0
    if hidden_size < 1 or pool_size < 1 or pool_size**2 * in_channels != flat:
        refuse(f"classifier.0.weight has shape {shapes['classifier.0.weight']}, not (hidden, {in_channels} x side x side) "
               f"for the {in_channels}-channel map of the last conv")
    num_classes = 0 if headless else shapes["classifier.6.weight"][0]
    try:
        return VGGConfig(tuple(map(tuple, stages)), batch_norm, num_classes=num_classes, hidden_size=hidden_size,
                         pool_size=pool_size, in_channels=kernels[0][1])
    except ConfigError as err:
        raise KeyMismatchError(f"checkpoint {path} does not describe a VGG torchvision can build: {err}") from None


# -- builders ----------------------------------------------------------------------
def _vgg(depth: int, batch_norm: bool, weights, num_classes: int | None, **options) -> VGG:
    stages = LAYOUTS[DEPTHS[depth]]
    if weights is None:
        return VGG(VGGConfig(stages, batch_norm, num_classes=1000 if num_classes is None else num_classes, **options))
    if num_classes is not None:  # else the checkpoint decides, as torchvision's weights enums do
        options["num_classes"] = num_classes
    return VGG.from_pretrained(weights, stages=stages, batch_norm=batch_norm, **options)  # the builder's layout, whatever the file holds


def vgg11(*, weights=None, num_classes: int | None = None, **options) -> VGG:
    return _vgg(11, False, weights, num_classes, **options)


def vgg11_bn(*, weights=None, num_classes: int | None = None, **options) -> VGG:
    return _vgg(11, True, weights, num_classes, **options)


def vgg13(*, weights=None, num_classes: int | None = None, **options) -> VGG:
    return _vgg(13, False, weights, num_classes, **options)


def vgg13_bn(*, weights=None, num_classes: int | None = None, **options) -> VGG:
    return _vgg(13, True, weights, num_classes, **options)


def vgg16(*, weights=None, num_classes: int | None = None, **options) -> VGG:
    return _vgg(16, False, weights, num_classes, **options)


def vgg16_bn(*, weights=None, num_classes: int | None = None, **options) -> VGG:
    return _vgg(16, True, weights, num_classes, **options)


def vgg19(*, weights=None, num_classes: int | None = None, **options) -> VGG:
    return _vgg(19, False, weights, num_classes, **options)


def vgg19_bn(*, weights=None, num_classes: int | None = None, **options) -> VGG:
    return _vgg(19, True, weights, num_classes, **options)


# -- minipt.reference: where the reference implementation computes the same values ----------
def reference_model(config: VGGConfig) -> nn.Module:
    """torchvision's VGG for ``config``, on the meta device: its ``features`` from its own ``make_layers``, and
    (torchvision fixes them at 7x7 and 4096) the average pool and classifier at the config's sizes, in its layout."""
    from ..reference import import_reference

    import_reference("torchvision", "VGG")
    from torchvision.models import vgg as tv  # reference-only

    layout = [item for widths in config.stages for item in (*widths, "M")]
    flat = config.stages[-1][-1] * config.pool_size**2
    with torch.device("meta"):
        reference = tv.VGG(tv.make_layers(layout, config.batch_norm), num_classes=max(config.num_classes, 1), init_weights=False, dropout=config.dropout)
        reference.avgpool = nn.AdaptiveAvgPool2d((config.pool_size, config.pool_size))
        reference.classifier = nn.Sequential(
            nn.Linear(flat, config.hidden_size), nn.ReLU(True), Dropout(config.dropout),
            nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(True), Dropout(config.dropout),
            nn.Linear(config.hidden_size, config.num_classes) if config.num_classes else nn.Identity(),  # headless: no classifier.6
        )
    return reference


def compare_with_reference(model, path, inputs, rtol):
    """torchvision's VGG on the same checkpoint, point by point (``minipt.reference.layer_diffs``)."""
    from ..reference import images, load_torchvision_state, report

    checkpoint = Checkpoint(path)
    config = infer_config(checkpoint)  # the reference's architecture is the checkpoint's, not the model's
    reference = reference_model(config).to_empty(device="cpu")
    keymap = _keymap(config.stages, config.batch_norm)
    load_torchvision_state(reference, checkpoint, keymap, "VGG", path)
    x, label = images(inputs, model.preprocess)
    convs, pools = flat_layout(config.stages, config.batch_norm)
    points = {}
    for s, b, index in convs:
        block = f"stages.{s}.blocks.{b}."
        points[block + "conv.out"] = (f"features.{index}", None)
        if config.batch_norm:
            points[block + "bn.out"] = (f"features.{index + 1}", None)
        points[block + "out"] = (f"features.{index + (2 if config.batch_norm else 1)}", None)  # its ReLU
        if b == len(config.stages[s]) - 1:
            points[f"stages.{s}.out"] = (f"features.{pools[s]}", None)  # the stage's max pool
    points.update({"pool.out": ("avgpool", None), "pre_logits.fc1.out": ("classifier.0", None), "pre_logits.fc2.out": ("classifier.3", None),
                   "pre_logits.out": ("classifier.4", None)})  # classifier.5 is dropout: the same values in eval mode
    if config.num_classes:
        points["head.out"] = ("classifier.6", None)
    return report(model, "torchvision VGG", label, rtol, points, lambda: model(x), reference, lambda: reference(x))


# -- the family's one declaration (minipt.registry) ------------------------------------------
FAMILY = register(
    "vgg",
    (VGG,),
    tiny=lambda: VGGConfig(((4,), (8,), (8, 8), (16, 16), (16, 16)), True, num_classes=5, hidden_size=16, pool_size=2),
    inputs=lambda cls: ((torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),), {}),
    signature=("features.0.weight", "a torchvision-format VGG"),
    reference=compare_with_reference,
    reads=Reads("images (batch x channels x height x width)", "1x3x224x224"),
)
