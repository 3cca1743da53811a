"""Vision Transformer (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words"): a pre-LayerNorm encoder on image patches.

    images (B, C, H, W) -> patch embedding: Conv2d, kernel = stride = patch       # (B, hidden, H/p, W/p)
                        -> flatten, [CLS] token first, + position table            # (B, 1 + N, hidden), N = HW / p^2
                        -> L x [ x + attn(LN(x)); x + ffn(LN(x)) ]                  # minipt.nn.EncoderLayer(norm_first=True)
                        -> final LayerNorm                                          # forward_features: (B, 1 + N, hidden)
                        -> [CLS] token -> classifier                                # (B, num_labels)

Two official formats, each through its key map, both ways:

- Hugging Face's (``config.json`` + ``model.safetensors``; ``vit.embeddings.patch_embeddings.projection``,
  ``vit.encoder.layer.N.attention.attention.query``, ``vit.layernorm``, ``classifier``; with or without
  the ``vit.`` prefix), read by ``ViTModel`` and ``ViTForImageClassification``;
- torchvision's ``vit_b_16`` / ``vit_b_32`` / ``vit_l_16`` state dicts (``conv_proj``, ``class_token``,
  ``encoder.layers.encoder_layer_N.self_attention.in_proj_weight``, ``heads.head``), a format without a
  config: the architecture is read off the tensors (torchvision stores no head count: its models use heads
  of width 64), and the builders ``vit_b_16(weights=...)`` ... build or load them.

The format a model was loaded from is kept (``config.weights_format``, read off the tensors) and decides
what ``save_pretrained`` writes and how ``preprocess`` prepares images: as the folder's
``preprocessor_config.json`` says for Hugging Face's checkpoints (transformers' ViTImageProcessor; mean =
std = 0.5 without one), as the transforms of torchvision's weights for its files.

``interpolate_pos_encoding=True`` runs at another image size, the patch grid of the position table
resized by bicubic interpolation as transformers does (``interpolate_positions``); without it an image
of another size than ``config.image_size`` is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CONFIG, Checkpoint, Pretrained
from ..files import read_json, write_json
from ..hub import resolve
from ..config import Config, count, epsilon, flag, minipt_only, one_of, probability, real, require
from ..errors import ConfigError, InputError, KeyMismatchError
from ..keymap import KeyMap, Split
from ..nn import Dropout, LayerNorm, Linear, activation
from ..nn.backend import ChoosesBackend
from ..nn.encoder import EncoderLayer
from ..nn.fuse import InferenceCopy
from ..nn.init import init_normal_
from ..nn.layers import ACTIVATIONS
from ..nn.output import ModelOutput
from ..registry import Reads, register
from ..checks import floating_dtype, parameter_device
from ..vision import check_images, normalized_batch, squeezed_batch
from .classifier import HasClassifier

from .text_encoder import PROBLEM_TYPES, ClassLabels, classification_loss, run_layers

FORMATS = ("huggingface", "torchvision")
# torchvision's files do not store the number of heads; its builders' (vit_b_16/32, vit_l_16/32, vit_h_14) by width
TORCHVISION_HEADS = {768: 12, 1024: 16, 1280: 16}


# -- configuration -------------------------------------------------------------
@dataclass
class ViTConfig(ClassLabels, Config):
    """The fields of a Hugging Face ViT ``config.json`` (unknown fields are ignored), checked when built."""

    hidden_size: int = count(768)
    num_hidden_layers: int = count(12)
    num_attention_heads: int = count(12)
    intermediate_size: int = count(3072)  # the feed-forward's inner width, 4 x hidden
    hidden_act: str = one_of("gelu", ACTIVATIONS)  # the exact (erf) GELU
    hidden_dropout_prob: float = probability(0.0)
    attention_probs_dropout_prob: float = probability(0.0)
    initializer_range: float = real(0.02)
    layer_norm_eps: float = epsilon(1e-12)  # Hugging Face's ViT configs say 1e-12; torchvision's models use 1e-6
    image_size: int = count(224)  # the side of the square images the position table is for
    patch_size: int = count(16)  # the side of a square patch: the patch embedding's kernel and stride
    num_channels: int = count(3)
    qkv_bias: bool = flag(True)
    encoder_stride: int = count(16)  # ViTForMaskedImageModeling's decoder (not in minipt); kept for config.json
    pooler_output_size: int | None = count(None, optional=True)  # ViTModel's pooler width; None: hidden_size
    pooler_act: str = one_of("tanh", ACTIVATIONS)
    # classification head (0 labels: no head, the classifier returns the [CLS] features)
    num_labels: int = count(2, minimum=0)
    id2label: dict | None = None
    problem_type: str | None = one_of(None, PROBLEM_TYPES, optional=True)
    # minipt's own, not written to config.json: decided by the checkpoint
    add_pooling_layer: bool = flag(True, minipt_only=True)  # ViTModel's optional pooler (tanh(W h_[CLS]))
    weights_format: str = one_of("huggingface", FORMATS, minipt_only=True)  # which official names save_pretrained writes
    # the folder's preprocessor_config.json (transformers' ViTImageProcessor fields), as read; None: that class's defaults
    image_processor: dict | None = minipt_only(None)

    model_type = "vit"

    def check(self):
        require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads", self.num_attention_heads, f"a divisor of hidden_size {self.hidden_size}")
        require(self.image_size % self.patch_size == 0, "image_size", self.image_size, f"a multiple of patch_size {self.patch_size}")
        # minipt.nn.EncoderLayer's attention has biases on q, k, v and the output projection alike
        require(self.qkv_bias, "qkv_bias", self.qkv_bias, "true (query, key and value projections without bias are not supported)")
        if self.num_labels == 0:
            self.id2label = None  # no head: no label names
        self.check_labels()

    @classmethod
    def prepare(cls, values: dict) -> dict:
        for name in ("image_size", "patch_size"):  # transformers accepts [height, width]; minipt's images and patches are square
            value = values.get(name)
            if isinstance(value, (list, tuple)):
                if len(value) != 2 or value[0] != value[1]:
                    raise ConfigError(f"{name} = {value!r}: expected one side (square {name.split('_')[0]}s only)")
                values[name] = value[0]
        return values

    @property
    def grid(self) -> int:
        """Patches along each side of an image of ``image_size``."""
        return self.image_size // self.patch_size

    @property
    def pooler_width(self) -> int:
        return self.pooler_output_size or self.hidden_size


# -- outputs -------------------------------------------------------------------
# Read as transformers' are: out.last_hidden_state, out["pooler_output"], out[0], out.to_tuple().
@dataclass
class ViTOutput(ModelOutput):
    last_hidden_state: torch.Tensor  # (B, 1 + N, hidden), after the final LayerNorm
    pooler_output: torch.Tensor | None = None  # (B, pooler_width); None without the pooler
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + each layer's output: L + 1 x (B, 1 + N, hidden)
    attentions: tuple[torch.Tensor, ...] | None = None  # each layer's attention probabilities: L x (B, heads, 1 + N, 1 + N)


@dataclass
class ViTClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None  # first, as in transformers: out[0] is the loss when labels were given
    logits: torch.Tensor = field(kw_only=True)  # (B, num_labels); (B, hidden) without a head
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


torch.export.register_dataclass(ViTOutput)  # pytrees: torch.export and torch.compile see the tensors inside
torch.export.register_dataclass(ViTClassifierOutput)


# -- building blocks -----------------------------------------------------------
def interpolate_positions(table: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The position table (1, 1 + n*n, C) for a grid of ``rows`` x ``cols`` patches: (1, 1 + rows*cols, C).

    transformers' ViTEmbeddings.interpolate_pos_encoding, step for step: the [CLS] position kept, the n x n
    patch grid resized by bicubic interpolation (align_corners=False); the table as it is for its own square grid."""
    positions = table.shape[1] - 1
    side = math.isqrt(positions)
    if side * side != positions:
        raise ConfigError(f"the position table holds {positions} patch positions, not a square grid: it cannot be interpolated")
    if rows * cols == positions and rows == cols:
        return table
    cls_position, grid = table[:, :1], table[:, 1:]
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, n, n)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)  # (1, C, rows, cols)
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)  # (1, rows * cols, C)
    return torch.cat((cls_position, grid), dim=1)


class ViTEmbeddings(nn.Module):
    """Patches (a strided Conv2d) -> [CLS] token in front -> + learned positions -> dropout."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.patch = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position = nn.Parameter(torch.zeros(1, config.grid**2 + 1, config.hidden_size))  # [CLS] first, then the grid row by row
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        B, _, H, W = images.shape
        patches = self.patch(images).flatten(2).transpose(1, 2)  # (B, hidden, H/p, W/p) -> (B, N, hidden)
        tokens = torch.cat((self.cls_token.expand(B, -1, -1), patches), dim=1)  # (B, 1 + N, hidden)
        position = self.position
        if interpolate_pos_encoding:
            position = interpolate_positions(position, H // self.patch_size, W // self.patch_size)
        return self.dropout(tokens + position)


class ViTPooler(nn.Module):
    """ViTModel's optional pooler: a dense layer and ``pooler_act`` (tanh) on the [CLS] token."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.pooler_width)
        self.act = activation(config.pooler_act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden[:, 0]))  # (B, pooler_width)


def encoder_layer(config: ViTConfig) -> EncoderLayer:
    """One encoder layer of ViT's sizes: pre-LN, each branch's input normalised and its output added to it."""
    return EncoderLayer(
        config.hidden_size, config.num_attention_heads, config.intermediate_size, act=config.hidden_act, eps=config.layer_norm_eps,
        dropout=config.hidden_dropout_prob, attention_dropout=config.attention_probs_dropout_prob, norm_first=True,
    )


def pool(features: torch.Tensor, kind: str = "token") -> torch.Tensor:
    """The image's vector from ``forward_features``' tokens (B, 1 + N, hidden): the [CLS] token (``"token"``, what
    the classifier reads) or the mean of the patch tokens (``"avg"``, timm's global average pool)."""
    if kind not in ("token", "avg"):
        raise InputError(f"pool kind must be 'token' or 'avg', got {kind!r}")
    return features[:, 0] if kind == "token" else features[:, 1:].mean(dim=1)  # (B, hidden)


# -- the models ----------------------------------------------------------------
# What a ViT checkpoint's tensors fix in its config (checked before the model is built); the position table is checked on its own.
ENCODER_FIELDS = {"hidden_size": ("embeddings.cls_token", 2), "num_channels": ("embeddings.patch.weight", 1), "patch_size": ("embeddings.patch.weight", 2),
                  "intermediate_size": ("layers.0.ffn_up.weight", 0), "num_hidden_layers": "layers."}


class _ViTPretrained(Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    """What both ViT classes share: initialisation, the input checks, and the two official formats."""

    config_class = ViTConfig
    _prefix = ""  # where the encoder sits in the model ("vit." under a head)

    def init_weights(self, module: nn.Module) -> None:
        """transformers' initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorm; truncated
        normal [CLS] token and position table."""
        init_normal_(module, self.config.initializer_range)
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, self.config.initializer_range)
            nn.init.zeros_(module.bias)
        if isinstance(module, ViTEmbeddings):
            nn.init.trunc_normal_(module.cls_token, std=self.config.initializer_range)
            nn.init.trunc_normal_(module.position, std=self.config.initializer_range)

    def check_inputs(self, pixel_values, interpolate_pos_encoding: bool = False) -> None:
        """Raise an InputError unless ``pixel_values`` is a batch of images (B, num_channels, H, W) this model reads:
        sides a multiple of ``patch_size``, and ``image_size`` unless ``interpolate_pos_encoding``."""
        config, owner = self.config, type(self).__name__
        check_images(pixel_values, config.num_channels, owner, floating_dtype(self), parameter_device(self))
        H, W = pixel_values.shape[-2:]
        if H % config.patch_size or W % config.patch_size:
            raise InputError(f"{owner} cuts images into {config.patch_size}x{config.patch_size} patches (patch_size); "
                             f"an image of {H}x{W} pixels is not a whole number of them")
        if not interpolate_pos_encoding and (H, W) != (config.image_size, config.image_size):
            raise InputError(f"{owner}'s position table is for {config.image_size}x{config.image_size} images (image_size), got {H}x{W}; "
                             "pass interpolate_pos_encoding=True to run at another size")

    def preprocess(self, images, *, resize: int | None = None, resample: str | None = None) -> torch.Tensor:
        """Image paths (or PIL images) -> (B, 3, image_size, image_size), normalised as the checkpoint's format was trained.

        torchvision's: the shorter side resized, the centre cropped, ImageNet mean and std, as the weights' own transforms
        (``torchvision_resize``: 256 bilinear for ``vit_b_16``/``vit_b_32``/``vit_l_32``, 242 for ``vit_l_16``, the
        crop's size bicubic for the SWAG weights at 384, 512 and 518 and for ``vit_h_14``). The SWAG "linear" weights
        of ``vit_b_16`` and ``vit_l_16`` have the ImageNet weights' shapes and need ``resize=224, resample="bicubic"``.

        Hugging Face's: as transformers' ViTImageProcessor with the folder's ``preprocessor_config.json`` (its size,
        resampling, mean and std; without the file the whole image resized to image_size square, bilinear, mean =
        std = 0.5)."""
        size = self.config.image_size
        if self.config.weights_format == "torchvision":
            default_resize, default_resample = torchvision_resize(self.config)
            return normalized_batch(images, resize=resize or default_resize, crop=size, resample=resample or default_resample)
        if resize is not None:
            raise InputError("resize= is for torchvision's ViT weights; a Hugging Face folder's preprocessor_config.json says its size")
        processing = processor_settings(self.config)
        return squeezed_batch(images, size=processing["size"], mean=processing["mean"], std=processing["std"],
                              resample=resample or processing["resample"], scale=processing["scale"])

    # -- loading and saving ----------------------------------------------------
    @classmethod
    def keymap(cls, config: ViTConfig | None = None) -> KeyMap:
        """The official names of the format ``config.weights_format`` (default: Hugging Face's) <-> minipt's."""
        if config is not None and config.weights_format == "torchvision":
            return cls._torchvision_keymap()
        return cls._huggingface_keymap()

    @classmethod
    def config_from_checkpoint(cls, path: Path, checkpoint) -> ViTConfig | None:
        """A torchvision file's architecture, read off its tensors (the format has no config.json)."""
        return torchvision_config(checkpoint) if _is_torchvision(checkpoint) else None

    @classmethod
    def load_config(cls, path: Path, checkpoint, **overrides) -> ViTConfig:
        directory = path if path.is_dir() else path.parent
        if _is_torchvision(checkpoint) and not (directory / CONFIG).is_file() and "num_attention_heads" not in overrides:
            hidden = next(checkpoint.shape(key) for key in checkpoint.keys() if key.removeprefix("module.") == _TV_SIGNATURE)[-1]
            if hidden not in TORCHVISION_HEADS:
                builders = ", ".join(f"{width}: {heads} heads" for width, heads in TORCHVISION_HEADS.items())
                raise ConfigError(f"{path} is a torchvision ViT of hidden size {hidden}, none of torchvision's builders' ({builders}), "
                                  "and its files do not store the number of heads; pass num_attention_heads=")
        return super().load_config(path, checkpoint, **overrides)

    @classmethod
    def from_pretrained(cls, name_or_path=None, **kwargs):
        """``Pretrained.from_pretrained``, with the folder's ``preprocessor_config.json`` (if any) kept for ``preprocess``."""
        model = super().from_pretrained(name_or_path, **kwargs)
        if model.config.weights_format == "huggingface":
            path = resolve(cls.default_checkpoint if name_or_path is None else name_or_path)
            model.config.image_processor = read_processor(path if path.is_dir() else path.parent)
        return model

    def save_pretrained(self, directory) -> Path:
        """``Pretrained.save_pretrained``, and the ``preprocessor_config.json`` the model was loaded with, if any."""
        directory = super().save_pretrained(directory)
        if self.config.image_processor is not None and self.config.weights_format == "huggingface":
            write_json(directory / PROCESSOR, self.config.image_processor)
        return directory

    @classmethod
    def adapt_config(cls, config: ViTConfig, checkpoint) -> ViTConfig:
        """The format is the checkpoint's; ViTModel's pooler is there when the checkpoint holds it."""
        config.weights_format = "torchvision" if _is_torchvision(checkpoint) else "huggingface"
        if cls is ViTModel:
            keymap = cls.keymap(config)
            config.add_pooling_layer = any(keymap.canonical(key).startswith("pooler.") for key in checkpoint.keys())
        return config

    @classmethod
    def check_config(cls, config: ViTConfig, checkpoint) -> None:
        """The shared checks (sizes, layer count), and a position table that fits image_size / patch_size."""
        super().check_config(config, checkpoint)
        keymap = cls.keymap(config)
        position = cls._prefix + "embeddings.position"
        for key in checkpoint.keys():
            found = keymap.to_minipt(keymap.canonical(key))
            if found is not None and found[0] == position:
                shape = checkpoint.shape(key)
                expected = config.grid**2 + 1
                if len(shape) != 3 or shape[1] != expected:
                    raise ConfigError(f"the config of {cls.__name__} does not match the checkpoint {checkpoint.path}: image_size = {config.image_size} "
                                      f"and patch_size = {config.patch_size} make {config.grid}x{config.grid} patches + [CLS] = {expected} positions, "
                                      f"but {key} has shape {shape}")


class ViTModel(_ViTPretrained):
    """The ViT encoder: ``model(pixel_values) -> ViTOutput`` (tokens after the final LayerNorm, the optional pooler)."""

    checkpoint_fields = ENCODER_FIELDS
    transfer_stages = {"patch_embed": "embeddings", "layers.{i}": "layers.{i}", "norm": "norm", "pooler": "pooler"}  # see minipt.transfer

    def __init__(self, config: ViTConfig, add_pooling_layer: bool | None = None):
        """``add_pooling_layer``: None follows the config (which the checkpoint decides)."""
        super().__init__()
        self.config = config
        self.embeddings = ViTEmbeddings(config)
        self.layers = nn.ModuleList(encoder_layer(config) for _ in range(config.num_hidden_layers))
        self.norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        with_pooler = config.add_pooling_layer if add_pooling_layer is None else add_pooling_layer
        self.pooler = ViTPooler(config) if with_pooler else None
        self.num_features = config.hidden_size
        self.apply(self.init_weights)
        self.set_backend(config.backend)

    def forward(
        self,
        pixel_values: torch.Tensor,  # (B, num_channels, H, W), normalised (preprocess)
        interpolate_pos_encoding: bool = False,  # True: run at an image size other than config.image_size
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ViTOutput:
        self.check_inputs(pixel_values, interpolate_pos_encoding)
        hidden = self.embeddings(pixel_values, interpolate_pos_encoding)  # (B, 1 + N, hidden)
        hidden, all_hidden, all_attn = run_layers(self.layers, hidden, None, output_hidden_states, output_attentions)
        hidden = self.norm(hidden)  # (B, 1 + N, hidden)
        pooled = self.pooler(hidden) if self.pooler is not None else None  # (B, pooler_width)
        return ViTOutput(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_hidden, attentions=all_attn)

    def forward_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Every token after the final LayerNorm, [CLS] first (timm's convention): (B, 1 + N, hidden)."""
        return self(pixel_values, interpolate_pos_encoding).last_hidden_state

    @classmethod
    def _huggingface_keymap(cls) -> KeyMap:
        """Hugging Face's ViTModel names (or a ViTForImageClassification's, under vit.) <-> minipt's."""
        return _huggingface_encoder() + KeyMap([], ignore=["classifier.{*}"], optional_prefix="vit.")  # a head minipt's ViTModel lacks

    @classmethod
    def _torchvision_keymap(cls) -> KeyMap:
        return _torchvision_encoder("") + KeyMap([], ignore=["heads.{*}"])  # the encoder of a classifier's file


class ViTForImageClassification(HasClassifier, _ViTPretrained):
    """ViT with a linear classifier on the [CLS] token after the final LayerNorm:

        forward_features (B, 1 + N, hidden) -> [CLS] (B, hidden) -> classifier (B, num_labels)

    ``get_classifier()`` / ``reset_classifier(n)`` reach the head as on every minipt classifier; 0 labels: no head,
    the logits are the [CLS] features (transformers' and timm's convention)."""

    base_model_prefix = "vit"
    _prefix = "vit."
    checkpoint_fields = {**{name: "vit." + where if isinstance(where, str) else ("vit." + where[0], where[1]) for name, where in ENCODER_FIELDS.items()},
                         "num_labels": ("classifier.weight", 0)}
    transfer_stages = {"patch_embed": "vit.embeddings", "layers.{i}": "vit.layers.{i}", "norm": "vit.norm", "head": "classifier"}
    transfer_head = ("classifier", "num_labels")
    headless = True

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.vit = ViTModel(config, add_pooling_layer=False)  # the classifier reads the [CLS] token, not the pooler
        self.classifier = Linear(config.hidden_size, config.num_labels) if config.num_labels else nn.Identity()
        self.num_features = config.hidden_size
        self.apply(self.init_weights)
        self.set_backend(config.backend)

    def forward(
        self,
        pixel_values: torch.Tensor,  # (B, num_channels, H, W)
        labels: torch.Tensor | None = None,  # (B,) class ids; (B,) / (B, num_labels) targets for regression and multi-label
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ViTClassifierOutput:
        self.check_inputs(pixel_values, labels, interpolate_pos_encoding)
        out = self.vit(pixel_values, interpolate_pos_encoding, output_hidden_states, output_attentions)
        logits = self.forward_head(out.last_hidden_state)  # (B, num_labels)
        loss = classification_loss(self.config.problem_type, self.config.num_labels, logits, labels) if self.config.num_labels else None
        return ViTClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)

    def check_inputs(self, pixel_values, labels=None, interpolate_pos_encoding: bool = False) -> None:
        """The images (``ViTModel.check_inputs``), and one label entry per image."""
        super().check_inputs(pixel_values, interpolate_pos_encoding)
        if labels is not None and (not isinstance(labels, torch.Tensor) or labels.dim() == 0 or labels.shape[0] != pixel_values.shape[0]):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise InputError(f"labels must hold one entry per image ({pixel_values.shape[0]} for pixel_values {tuple(pixel_values.shape)}), got {shape}")

    def forward_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Every token after the final LayerNorm, [CLS] first: (B, 1 + N, hidden)."""
        return self.vit.forward_features(pixel_values, interpolate_pos_encoding)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The [CLS] token of ``forward_features``' tokens, classified: (B, 1 + N, hidden) -> (B, num_labels);
        ``pre_logits=True`` stops before the head: (B, hidden)."""
        if not isinstance(features, torch.Tensor) or features.dim() != 3 or features.shape[-1] != self.num_features or features.shape[1] == 0:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise InputError(f"{type(self).__name__}.forward_head expects the tokens of forward_features, (batch, 1 + patches, {self.num_features}); got {shape}")
        cls_features = pool(features, "token")  # (B, hidden)
        return cls_features if pre_logits else self.classifier(cls_features)

    @classmethod
    def _huggingface_keymap(cls) -> KeyMap:
        """Hugging Face's names <-> minipt's; a bare ViTModel's file (no vit. prefix) loads too, under a new head."""
        bare = [(f"{part}.{{*}}", f"vit.{part}.{{*}}") for part in ("embeddings", "encoder", "layernorm", "pooler")]
        head = KeyMap([("classifier.{p}", "classifier.{p}")], renames=bare, ignore=["vit.pooler.{*}"])  # the pooler is not read
        return _huggingface_encoder().prefixed("vit.", "vit.") + head

    @classmethod
    def _torchvision_keymap(cls) -> KeyMap:
        return _torchvision_encoder("vit.") + KeyMap([("heads.head.{p}", "classifier.{p}")])


# -- Hugging Face's names --------------------------------------------------------
# transformers' ViTLayer (as its files name it) -> minipt.nn.EncoderLayer
_HF_LAYER = {"attention.attention.query": "attn.q_proj", "attention.attention.key": "attn.k_proj", "attention.attention.value": "attn.v_proj",
             "attention.output.dense": "attn.out_proj", "layernorm_before": "attn_norm", "intermediate.dense": "ffn_up",
             "output.dense": "ffn_down", "layernorm_after": "ffn_norm"}


def _huggingface_encoder() -> KeyMap:
    """Hugging Face's ViTModel names -> minipt's (the classes' key maps build on it)."""
    return KeyMap(
        [
            ("embeddings.patch_embeddings.projection.{p}", "embeddings.patch.{p}"),
            ("embeddings.cls_token", "embeddings.cls_token"),
            ("embeddings.position_embeddings", "embeddings.position"),
            *[(f"encoder.layer.{{i}}.{theirs}.{{p}}", f"layers.{{i}}.{ours}.{{p}}") for theirs, ours in _HF_LAYER.items()],
            ("layernorm.{p}", "norm.{p}"),
            ("pooler.dense.{p}", "pooler.dense.{p}"),
        ],
        ignore=["embeddings.mask_token"],  # ViTForMaskedImageModeling's, unused without its decoder
    )


# -- torchvision's names ---------------------------------------------------------
# torchvision's attention (torch.nn.MultiheadAttention) keeps q, k and v stacked in one in_proj tensor (3C, ...):
# a Split rule cuts it into minipt's three projections on load and joins them on save.
_TV_LAYER = {"ln_1": "attn_norm", "self_attention.out_proj": "attn.out_proj", "ln_2": "ffn_norm", "mlp.0": "ffn_up", "mlp.3": "ffn_down"}
_TV_SIGNATURE = "class_token"


def _torchvision_encoder(ours: str) -> KeyMap:
    """torchvision's VisionTransformer names -> minipt's encoder under ``ours`` ("vit." in the classifier)."""
    layer = "encoder.layers.encoder_layer_{i}"
    return KeyMap(
        [
            ("conv_proj.{p}", f"{ours}embeddings.patch.{{p}}"),
            ("class_token", f"{ours}embeddings.cls_token"),
            ("encoder.pos_embedding", f"{ours}embeddings.position"),
            (f"{layer}.self_attention.in_proj_{{p}}", tuple(f"{ours}layers.{{i}}.attn.{part}_proj.{{p}}" for part in "qkv"), Split(dim=0)),
            *[(f"{layer}.{theirs}.{{p}}", f"{ours}layers.{{i}}.{mine}.{{p}}") for theirs, mine in _TV_LAYER.items()],
            ("encoder.ln.{p}", f"{ours}norm.{{p}}"),
        ],
        # torchvision's files from before its MLPBlock became a Sequential name the two linears (its own upgrade hook does the same)
        renames=[("{*}.mlp.linear_1.{p}", "{*}.mlp.0.{p}"), ("{*}.mlp.linear_2.{p}", "{*}.mlp.3.{p}")],
        optional_prefix="module.",  # saved from DataParallel/DDP
    )


def _is_torchvision(checkpoint) -> bool:
    return any(key.removeprefix("module.") == _TV_SIGNATURE for key in checkpoint.keys())



def square_grid(path, key: str, shape, positions: int) -> int:
    """The side of the square patch grid a stored position table holds ``positions`` patch positions of,
    or a KeyMismatchError naming the tensor: no image size fits a table that is not square."""
    grid = math.isqrt(positions) if positions > 0 else 0
    if grid == 0 or grid * grid != positions:
        raise KeyMismatchError(f"checkpoint {path}: {key} {shape} holds {max(positions, 0)} patch positions, not a square grid, so no image size fits it")
    return grid


def read_shapes(checkpoint, needed: dict, what: str) -> dict[str, tuple]:
    """The shapes of a config-less checkpoint's tensors by name (a DataParallel ``module.`` prefix dropped), once each
    tensor the architecture is read from is there (a key of ``needed``, or a tuple of its other names) with the number
    of dimensions ``needed`` gives it; else a KeyMismatchError naming every one that is not ("is not ``what``")."""
    shapes = {key.removeprefix("module."): tuple(checkpoint.shape(key)) for key in checkpoint.keys()}
    absent, misshaped = [], []
    for names, dims in needed.items():
        names = (names,) if isinstance(names, str) else names
        name = next((name for name in names if name in shapes), None)
        if name is None:
            absent.append(names[0])
        elif len(shapes[name]) != dims:
            misshaped.append(f"{name} has shape {shapes[name]}, not {dims} dimensions")
    if absent or misshaped:
        problems = ([f"it has no {', '.join(absent)}"] if absent else []) + misshaped
        raise KeyMismatchError(f"checkpoint {checkpoint.path} is not {what}: {'; '.join(problems)}")
    return shapes


def torchvision_config(checkpoint) -> ViTConfig:
    """A torchvision ViT's architecture read off its tensors: sizes, depth, the image size from the position table
    (a square grid of patches), the heads of torchvision's builder of that width, LayerNorm eps 1e-6."""
    needed = {"conv_proj.weight": 4, "class_token": 3, "encoder.pos_embedding": 3,
              ("encoder.layers.encoder_layer_0.mlp.0.weight", "encoder.layers.encoder_layer_0.mlp.linear_1.weight"): 2}
    if any(key.removeprefix("module.") == "heads.head.weight" for key in checkpoint.keys()):
        needed["heads.head.weight"] = 2
    shapes = read_shapes(checkpoint, needed, "a torchvision-format ViT")
    hidden, channels, patch = shapes["conv_proj.weight"][:3]
    grid = square_grid(checkpoint.path, "encoder.pos_embedding", shapes["encoder.pos_embedding"], shapes["encoder.pos_embedding"][1] - 1)
    mlp = shapes.get("encoder.layers.encoder_layer_0.mlp.0.weight") or shapes["encoder.layers.encoder_layer_0.mlp.linear_1.weight"]
    layers = {key.split(".")[2] for key in shapes if key.startswith("encoder.layers.encoder_layer_")}
    values = dict(hidden_size=hidden, num_hidden_layers=len(layers), num_attention_heads=TORCHVISION_HEADS.get(hidden, 1),
                  intermediate_size=mlp[0], layer_norm_eps=1e-6, image_size=grid * patch, patch_size=patch, num_channels=channels,
                  num_labels=shapes["heads.head.weight"][0] if "heads.head.weight" in shapes else 0, weights_format="torchvision")
    try:
        return ViTConfig(**values)
    except ConfigError as err:
        raise KeyMismatchError(f"checkpoint {checkpoint.path} does not describe a ViT minipt can build: {err}") from None


# -- preprocessing as each format's weights were trained ---------------------------------
PROCESSOR = "preprocessor_config.json"
PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # Pillow's codes, as processor files store them; the others are not offered


def torchvision_resize(config: ViTConfig) -> tuple[int, str]:
    """The shorter side and resampling of the transforms of torchvision's weights of this architecture: the ImageNet
    weights resize to 256 bilinear (``vit_l_16``: 242), the SWAG weights (every ``vit_h_14``, and any image size but
    224) to the crop's size, bicubic."""
    if config.image_size != 224 or config.hidden_size == 1280:
        return config.image_size, "bicubic"
    if (config.hidden_size, config.patch_size) == (1024, 16):
        return 242, "bilinear"
    return 256, "bilinear"


def read_processor(directory: Path) -> dict | None:
    """The folder's ``preprocessor_config.json`` as it is, or None where there is none."""
    return read_json(directory / PROCESSOR, default=None, what="an object (transformers' image processor settings)")


def processor_settings(config: ViTConfig) -> dict:
    """What ``preprocess`` does for a Hugging Face checkpoint: transformers' ViTImageProcessor with the fields of
    ``config.image_processor`` (its defaults where absent); a field minipt does not follow is an InputError naming it."""
    found = dict(config.image_processor or {})
    where = f"{PROCESSOR} ({found.get('image_processor_type', 'no image_processor_type')})"
    kind = found.get("image_processor_type", "ViTImageProcessor")
    if kind not in ("ViTImageProcessor", "ViTImageProcessorFast", "ViTFeatureExtractor"):
        raise InputError(f"{where}: minipt's ViT preprocess follows ViTImageProcessor, not {kind!r}; prepare the pixels as it does")
    for unsupported in ("do_center_crop", "do_pad", "do_convert_rgb_to_bgr"):
        if found.get(unsupported):
            raise InputError(f"{where} sets {unsupported}, which ViTImageProcessor does not do; prepare the pixels as {kind} does")
    size = found.get("size", {"height": config.image_size, "width": config.image_size})
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if not isinstance(size, dict) or set(size) != {"height", "width"}:
        raise InputError(f"{where}: size = {size!r}; minipt's ViT preprocess resizes to {{'height': H, 'width': W}}")
    if not found.get("do_resize", True):
        raise InputError(f"{where} sets do_resize false: the images must already have the model's size; give their pixels to the model")
    resample = found.get("resample", 2)
    if resample not in PIL_RESAMPLE:
        raise InputError(f"{where}: resample = {resample!r}; minipt resizes with {', '.join(f'{code} ({name})' for code, name in PIL_RESAMPLE.items())}")

    def channels(name: str, default: float) -> torch.Tensor:
        value = found.get(name, default) if found.get("do_normalize", True) else {"image_mean": 0.0, "image_std": 1.0}[name]
        value = [value] * 3 if isinstance(value, (int, float)) else value
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
            raise InputError(f"{where}: {name} = {value!r}; expected three numbers (R, G, B)")
        return torch.tensor(value, dtype=torch.float32)

    scale = found.get("rescale_factor", 1 / 255) if found.get("do_rescale", True) else 1.0
    return {"size": (size["height"], size["width"]), "resample": PIL_RESAMPLE[resample],
            "mean": channels("image_mean", 0.5), "std": channels("image_std", 0.5), "scale": scale}


# -- torchvision's builders --------------------------------------------------------
TORCHVISION_VARIANTS = {  # name -> the architecture (torchvision.models.vit_*)
    "vit_b_16": dict(patch_size=16, num_hidden_layers=12, num_attention_heads=12, hidden_size=768, intermediate_size=3072),
    "vit_b_32": dict(patch_size=32, num_hidden_layers=12, num_attention_heads=12, hidden_size=768, intermediate_size=3072),
    "vit_l_16": dict(patch_size=16, num_hidden_layers=24, num_attention_heads=16, hidden_size=1024, intermediate_size=4096),
}


def _torchvision_vit(name: str, weights, num_classes: int | None, **options) -> ViTForImageClassification:
    architecture = {**TORCHVISION_VARIANTS[name], "layer_norm_eps": 1e-6}
    if weights is None:  # torchvision's 224 x 224 ImageNet model, randomly initialised
        values = {"image_size": 224, "num_labels": 1000 if num_classes is None else num_classes, **architecture, **options}
        return ViTForImageClassification(ViTConfig(**values, weights_format="torchvision"))
    if num_classes is not None:  # else the checkpoint decides, as torchvision's weights enums do
        options["num_labels"] = num_classes
    return ViTForImageClassification.from_pretrained(weights, **architecture, **options)  # a file of another architecture is refused


def vit_b_16(*, weights=None, num_classes: int | None = None, **options) -> ViTForImageClassification:
    return _torchvision_vit("vit_b_16", weights, num_classes, **options)


def vit_b_32(*, weights=None, num_classes: int | None = None, **options) -> ViTForImageClassification:
    return _torchvision_vit("vit_b_32", weights, num_classes, **options)


def vit_l_16(*, weights=None, num_classes: int | None = None, **options) -> ViTForImageClassification:
    return _torchvision_vit("vit_l_16", weights, num_classes, **options)


# -- minipt.reference: where the reference implementation computes the same values ----------
# transformers' ViTLayer (its modules, as transformers builds them) and torchvision's EncoderBlock computing each
# value of minipt.nn.EncoderLayer in pre-LN order; torchvision's attention returns no probabilities to compare.
REFERENCE_LAYER = {"attn_norm.out": "layernorm_before", "attn.probs": "attention", "attn.heads": "attention.o_proj:input",
                   "attn.out": "attention.o_proj", "ffn_norm.out": "layernorm_after", "act.out": "mlp.activation_fn", "ffn_down.out": "mlp.fc2", "out": ""}
TORCHVISION_LAYER = {"attn_norm.out": "ln_1", "attn.out": "self_attention", "ffn_norm.out": "ln_2", "act.out": "mlp.1", "ffn_down.out": "mlp.3", "out": ""}


def _layer_points(ours: str, theirs: str, names: dict[str, str], num_heads: int) -> dict:
    from ..reference import heads

    read = {"attn.probs": lambda out: out[1], "attn.heads": heads(num_heads)}  # the attention's (output, probabilities); heads split
    return {ours + point: (theirs + name if name else theirs.rstrip("."), read.get(point)) for point, name in names.items()}


def compare_with_reference(model, path, inputs, rtol):
    """transformers' ViTModel / ViTForImageClassification (eager attention) or torchvision's VisionTransformer, whichever
    format the checkpoint is in, on the same checkpoint, point by point (``minipt.reference.layer_diffs``): the
    embeddings, inside every layer, the final LayerNorm, the pooler or the classifier."""
    from ..reference import images, report

    x, label = images(inputs, model.preprocess)
    config = model.config
    prefix = "vit." if isinstance(model, ViTForImageClassification) else ""
    with Checkpoint(path) as checkpoint:
        torchvision = _is_torchvision(checkpoint)
    if torchvision:
        reference, layers, names, theirs = _torchvision_reference(path, config), "encoder.layers.encoder_layer_", TORCHVISION_LAYER, ""
        points = {f"{prefix}embeddings.out": ("encoder.dropout", None)}
        final, head = "encoder.ln", "heads.head"
    else:
        from ..reference import import_reference, transformers_reference

        transformers = import_reference("transformers", "ViT")
        kwargs = {"add_pooling_layer": model.pooler is not None} if isinstance(model, ViTModel) else {}
        reference = transformers_reference(getattr(transformers, type(model).__name__), path, **kwargs)
        layers, names, theirs = "layers.", REFERENCE_LAYER, prefix
        points = {f"{prefix}embeddings.out": (f"{theirs}embeddings", None)}
        final, head = f"{theirs}layernorm", "classifier"
    for i in range(config.num_hidden_layers):
        points.update(_layer_points(f"{prefix}layers.{i}.", f"{theirs}{layers}{i}.", names, config.num_attention_heads))
    points[f"{prefix}norm.out"] = (final, None)
    if isinstance(model, ViTModel) and model.pooler is not None and head == "classifier":
        points["pooler.out"] = ("pooler", None)
    if isinstance(model, ViTForImageClassification) and config.num_labels:
        points["classifier.out"] = (head, None)
    return report(model, f"{type(reference).__module__.split('.')[0]} {type(reference).__name__}", label, rtol, points,
                  lambda: model(x), reference, lambda: reference(x))


def _torchvision_reference(path, config: ViTConfig) -> nn.Module:
    """torchvision's VisionTransformer of the model's architecture (``config``) with the checkpoint's weights, loaded strictly."""
    from ..reference import import_reference

    import_reference("torchvision", "ViT")
    from torchvision.models.vision_transformer import VisionTransformer  # reference-only

    with Checkpoint(path) as checkpoint:
        state = {key.removeprefix("module."): checkpoint.get(key) for key in checkpoint.keys()}
    head = state.get("heads.head.weight")
    reference = VisionTransformer(image_size=config.image_size, patch_size=config.patch_size, num_layers=config.num_hidden_layers,
                                  num_heads=config.num_attention_heads, hidden_dim=config.hidden_size, mlp_dim=config.intermediate_size,
                                  num_classes=1 if head is None else head.shape[0])
    if head is None:  # a headless file: torchvision's model without its head
        reference.heads = nn.Identity()
    reference.load_state_dict(state, strict=True)
    return reference.eval()


# -- the family's one declaration (minipt.registry) ------------------------------------------
FAMILY = register(
    "vit",
    (ViTModel, ViTForImageClassification),
    tiny=lambda: ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8, num_labels=5),
    inputs=lambda cls: ((torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),), {}),
    signature=(_TV_SIGNATURE, "a torchvision-format ViT", ViTForImageClassification),  # with its head (headless: num_classes 0)
    reference=compare_with_reference,
    reads=Reads("images (batch x channels x height x width)", lambda model: f"1x{model.config.num_channels}x{model.config.image_size}x{model.config.image_size}"),
)
