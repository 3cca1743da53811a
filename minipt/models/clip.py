"""CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language Supervision"): a text
tower and an image tower trained so that matching captions and images point the same way.

    input_ids (B_t, T) -> token + position table                                   # (B_t, T, C_t)
                       -> L x [ x + attn(LN(x), causal + padding mask); x + ffn(LN(x)) ]   # EncoderLayer(norm_first=True)
                       -> final LayerNorm -> the end-of-text token's vector         # (B_t, C_t)
                       -> text_projection (no bias)                                 # (B_t, D)
    images (B_i, 3, S, S) -> patches: Conv2d without bias, kernel = stride = patch   # (B_i, N, C_v), N = (S/p)^2
                          -> [CLS] first, + position table, pre LayerNorm            # (B_i, 1 + N, C_v)
                          -> L x the same pre-LN layer (no mask)
                          -> post LayerNorm on [CLS] -> visual_projection (no bias)  # (B_i, D)
    logits_per_image = exp(logit_scale) * normalised image embeds @ normalised text embeds^T   # (B_i, B_t)
    loss (return_loss=True) = mean of the cross-entropies of each row and each column, the i-th caption matching the i-th image

Training pulls each image towards its own caption and away from the batch's other captions, and each caption
likewise (``contrastive_loss``: the symmetric cross-entropy of the paper's pseudo-code). At another image
size the patch grid of the vision tower's position table is resized (``interpolate_pos_encoding=True``, bicubic,
``vit.interpolate_positions``).

The text tower pools at the end-of-text token as transformers does: configs written before transformers
fixed CLIP's ``eos_token_id`` (it says 2) take the position of the highest token id (OpenAI's rule: the
end-of-text token is the last of the vocabulary), newer ones the first position holding ``eos_token_id``.

Two official formats, each through its key map, both ways:

- Hugging Face's (``config.json`` with ``text_config`` / ``vision_config`` + ``model.safetensors``;
  ``text_model.encoder.layers.N.self_attn.q_proj``, ``vision_model.pre_layrnorm`` (sic), ``visual_projection``),
  read by ``CLIPModel``, and by ``CLIPTextModel`` / ``CLIPVisionModel`` from a full CLIP file or their own;
- OpenAI's state dicts (``visual.conv1``, ``visual.transformer.resblocks.N.attn.in_proj_weight``,
  ``transformer.resblocks.N``, ``ln_final``, ``text_projection``), open_clip's too, without a config: the
  architecture is read off the tensors as ``build_model_from_openai_state_dict`` does (heads 64 wide).

``zero_shot`` classifies images by comparing them with captions of each label (prompt ensembling over
templates, OpenAI's seven for ImageNet in ``IMAGENET_TEMPLATES``; ``minipt zero-shot IMAGE --labels "a cat,a dog"
--model PATH`` on the command line);
``CLIPModel.preprocess`` prepares images as CLIP was trained (bicubic resize of the shorter side, centre crop,
CLIP's own mean and std). The captions' token ids come from CLIP's BPE tokenizer (``minipt fetch clip-tokenizer``,
read by ``minipt.Tokenizer``).

"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..checkpoint import CONFIG, Checkpoint, Pretrained, read_config
from ..config import Config, count, epsilon, one_of, probability, real, require, token_id
from ..errors import ConfigError, InputError, KeyMismatchError
from ..keymap import TRANSPOSE, KeyMap, Split
from ..nn import LayerNorm, Linear, activation, attention_bias
from ..nn.backend import ChoosesBackend
from ..nn.encoder import EncoderLayer
from ..nn.fuse import InferenceCopy
from ..nn.init import init_normal_
from ..nn.layers import ACTIVATIONS
from ..nn.output import ModelOutput
from ..registry import Reads, register
from ..checks import floating_dtype, parameter_device, tracing
from ..vision import check_images, normalized_batch
from .text_encoder import check_token_inputs, run_layers
from .vit import ViTConfig, _layer_points, interpolate_positions, read_shapes, square_grid

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])  # the statistics of CLIP's training images
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])
# OpenAI's and open_clip's files store no head count: 64 wide, but open_clip's ViT-H/14, g/14 and bigG/14 image towers
# (widths 1280, 1408, 1664) have 16 heads of 80, 88 and 104
OPENAI_HEAD_WIDTH = 64
OPEN_CLIP_VISION_HEADS = {1280: 16, 1408: 16, 1664: 16}
# integers OpenAI's own files carry (its JIT archives' attributes): present, the towers are OpenAI's, with QuickGELU
_OPENAI_INTEGERS = ("input_resolution", "context_length", "vocab_size")
LEGACY_EOS_TOKEN_ID = 2  # what configs said before transformers fixed CLIP's eos_token_id: pool at the highest id
FORMATS = ("huggingface", "openai")


# -- configuration -------------------------------------------------------------------
@dataclass
class _CLIPTowerConfig(Config):
    """The fields both towers' configs hold (after their sizes, which each declares)."""

    hidden_act: str = one_of("quick_gelu", tuple(ACTIVATIONS))
    layer_norm_eps: float = epsilon(1e-5)
    attention_dropout: float = probability(0.0)
    dropout: float = probability(0.0)
    initializer_range: float = real(0.02)
    initializer_factor: float = real(1.0)

    def check(self):
        require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads", self.num_attention_heads, f"a divisor of hidden_size {self.hidden_size}")


@dataclass
class CLIPTextConfig(_CLIPTowerConfig):
    """The fields of a Hugging Face CLIP ``text_config`` (unknown fields are ignored)."""

    vocab_size: int = count(49408)
    hidden_size: int = count(512)
    intermediate_size: int = count(2048)
    projection_dim: int = count(512)  # transformers' CLIPTextModelWithProjection's; CLIPModel reads the top-level one
    num_hidden_layers: int = count(12)
    num_attention_heads: int = count(8)
    max_position_embeddings: int = count(77)  # the context: the most tokens a caption may hold
    pad_token_id: int | None = token_id(1)
    bos_token_id: int | None = token_id(49406)
    eos_token_id: int = token_id(49407)  # 2 (old configs): pool at the highest token id instead

    model_type = "clip_text_model"

    def check(self):
        super().check()
        require(self.eos_token_id is not None and self.eos_token_id < self.vocab_size, "eos_token_id", self.eos_token_id,
                f"a token id below vocab_size {self.vocab_size} (the text tower pools at it)")


@dataclass
class CLIPVisionConfig(_CLIPTowerConfig):
    """The fields of a Hugging Face CLIP ``vision_config`` (unknown fields are ignored)."""

    hidden_size: int = count(768)
    intermediate_size: int = count(3072)
    projection_dim: int = count(512)
    num_hidden_layers: int = count(12)
    num_attention_heads: int = count(12)
    num_channels: int = count(3)
    image_size: int = count(224)
    patch_size: int = count(32)

    model_type = "clip_vision_model"

    def check(self):
        super().check()
        require(self.image_size % self.patch_size == 0, "image_size", self.image_size, f"a multiple of patch_size {self.patch_size}")

    @classmethod
    def prepare(cls, values: dict) -> dict:
        return ViTConfig.prepare(values)  # [height, width] of a square: one side

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class CLIPConfig(Config):
    """A Hugging Face CLIP ``config.json``: the two towers' configs nested, and what joins them."""

    text_config: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    vision_config: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    projection_dim: int = count(512)  # the shared embedding space
    logit_scale_init_value: float = real(2.6592, minimum=-math.inf)  # log(1 / 0.07), CLIP's initial temperature
    initializer_factor: float = real(1.0)
    # minipt's own, not written to config.json: which official names save_pretrained writes (the checkpoint's)
    weights_format: str = one_of("huggingface", FORMATS, minipt_only=True)

    model_type = "clip"

    def check(self):
        for name, kind in (("text_config", CLIPTextConfig), ("vision_config", CLIPVisionConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, kind.from_dict(value, source=name))
            elif not isinstance(value, kind):
                raise ConfigError(f"CLIPConfig.{name} = {value!r}: expected a {kind.__name__} or an object of its fields")

    @classmethod
    def prepare(cls, values: dict) -> dict:
        """Configs written by older transformers carry ``text_config_dict`` / ``vision_config_dict``, whose fields win over
        ``text_config`` / ``vision_config`` there (as transformers reads them)."""
        for name in ("text_config", "vision_config"):
            legacy = values.pop(f"{name}_dict", None)
            if isinstance(legacy, dict) and isinstance(values.get(name) or {}, dict):
                values[name] = {**(values.get(name) or {}), **legacy}
        return values

    def to_dict(self) -> dict:
        return {**super().to_dict(), "text_config": self.text_config.to_dict(), "vision_config": self.vision_config.to_dict()}

    def tower(self, kind: type) -> Config:
        """The text or vision config, with this config's backend."""
        tower = self.text_config if kind is CLIPTextConfig else self.vision_config
        return tower if tower.backend == self.backend else tower.replace(backend=self.backend)


# -- outputs ---------------------------------------------------------------------------
@dataclass
class CLIPTowerOutput(ModelOutput):
    last_hidden_state: torch.Tensor  # text: (B, T, C) after the final LayerNorm; images: (B, 1 + N, C) before the post LayerNorm
    pooler_output: torch.Tensor  # (B, C): the end-of-text token / the [CLS] token after post_layernorm
    hidden_states: tuple[torch.Tensor, ...] | None = None  # the layers' input and each layer's output: L + 1 x (B, T, C)
    attentions: tuple[torch.Tensor, ...] | None = None  # L x (B, heads, T, T)


@dataclass
class CLIPOutput(ModelOutput):
    loss: torch.Tensor | None = None  # () contrastive loss with return_loss=True; first, as in transformers: out[0] then
    logits_per_image: torch.Tensor | None = None  # (B_i, B_t): scaled cosine similarities; None unless both inputs are given
    logits_per_text: torch.Tensor | None = None  # (B_t, B_i)
    text_embeds: torch.Tensor | None = None  # (B_t, D), unit length
    image_embeds: torch.Tensor | None = None  # (B_i, D), unit length
    text_model_output: CLIPTowerOutput | None = None
    vision_model_output: CLIPTowerOutput | None = None


torch.export.register_dataclass(CLIPTowerOutput)
torch.export.register_dataclass(CLIPOutput)


# -- building blocks ---------------------------------------------------------------------
def encoder_layer(config: CLIPTextConfig | CLIPVisionConfig) -> EncoderLayer:
    """One pre-LN encoder layer of a tower's sizes, with the tower's activation (QuickGELU for OpenAI's models)."""
    return EncoderLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size, act=config.hidden_act,
                        eps=config.layer_norm_eps, attention_dropout=config.attention_dropout,  # config.dropout: read by no layer, as in transformers
                        norm_first=True, causal=isinstance(config, CLIPTextConfig))  # the text tower reads left to right


class CLIPTextEmbeddings(nn.Module):
    """Token ids -> token vectors + learned positions: (B, T) -> (B, T, C)."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Parameter(torch.zeros(config.max_position_embeddings, config.hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.token(input_ids) + self.position[: input_ids.shape[1]]  # (B, T, C)


class CLIPVisionEmbeddings(nn.Module):
    """Patches (a strided Conv2d without bias) -> [CLS] first -> + learned positions: (B, 3, S, S) -> (B, 1 + N, C)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.patch = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(config.hidden_size))
        self.position = nn.Parameter(torch.zeros(config.grid**2 + 1, config.hidden_size))  # [CLS] first, then the grid row by row

    def forward(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        patches = self.patch(images).flatten(2).transpose(1, 2)  # (B, C, H/p, W/p) -> (B, N, C)
        tokens = torch.cat((self.cls_token.expand(images.shape[0], 1, -1), patches), dim=1)  # (B, 1 + N, C)
        position = self.position
        if interpolate_pos_encoding:  # the grid resized to H/p x W/p, [CLS]'s position kept
            p = self.patch.stride[0]
            position = interpolate_positions(position[None], images.shape[-2] // p, images.shape[-1] // p)[0]  # (1 + N, C)
        return tokens + position


class CLIPSimilarity(nn.Module):
    """Unit-length embeddings -> cosine similarities scaled by the learned temperature exp(logit_scale): (B_i, B_t)."""

    def __init__(self, init_value: float):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        return image_embeds @ text_embeds.t() * self.logit_scale.exp()  # logits_per_image


def contrastive_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """CLIP's training loss for a batch of matching pairs (image i goes with caption i): the cross-entropy of each
    image over the captions and of each caption over the images, averaged (transformers' ``clip_loss``).

    ``logits_per_image``: (B, B), the scaled similarities ``CLIPModel`` returns; a scalar."""
    if not isinstance(logits_per_image, torch.Tensor) or logits_per_image.dim() != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        shape = tuple(logits_per_image.shape) if isinstance(logits_per_image, torch.Tensor) else type(logits_per_image).__name__
        raise InputError(f"the contrastive loss pairs image i with caption i: it needs as many captions as images, logits (B, B); got {shape}")
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)  # the diagonal: each one's own pair
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.t(), targets)) / 2


def unit(embeds: torch.Tensor) -> torch.Tensor:
    """Each row divided by its length (transformers' and CLIP's normalisation, no epsilon)."""
    return embeds / embeds.norm(p=2, dim=-1, keepdim=True)


def end_of_text(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Where each sequence's end-of-text token is, as transformers' CLIPTextModel finds it: (B,) positions.

    ``eos_token_id`` 2 is what configs said before transformers fixed it: the highest token id's position then (OpenAI's
    rule, its end-of-text token being the vocabulary's last). Otherwise the first position holding ``eos_token_id``
    (the padding may repeat it); a sequence without one pools at position 0, as transformers' argmax does."""
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return input_ids.argmax(dim=-1)
    return (input_ids == eos_token_id).int().argmax(dim=-1)


# -- the models ----------------------------------------------------------------------------
class _CLIPPretrained(Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    """What the three CLIP classes share: initialisation, loading a tower from a full CLIP file."""

    config_class = CLIPConfig

    def init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) weights, zero biases, unit LayerNorms; the tables and the [CLS] vector normal too."""
        config = self.config  # a tower's config has the field; a full CLIP's keeps it in each tower's (the text tower's read)
        std = config.initializer_range if hasattr(config, "initializer_range") else config.text_config.initializer_range
        init_normal_(module, std)
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, std)
        if isinstance(module, (CLIPTextEmbeddings, CLIPVisionEmbeddings)):
            nn.init.normal_(module.position, 0.0, std)
        if isinstance(module, CLIPVisionEmbeddings):
            nn.init.normal_(module.cls_token, 0.0, std)


class _CLIPTower(_CLIPPretrained):
    """A tower on its own: built from its config or from a full CLIPConfig (the tower's part), loaded from a file
    of its own (``config.json`` of model_type ``clip_text_model`` / ``clip_vision_model``) or of a full CLIP."""

    _tower_key = ""  # "text_config" / "vision_config"
    _prefix = ""  # "text_model." / "vision_model.": where a full CLIP file keeps the tower

    @classmethod
    def load_config(cls, path: Path, checkpoint, **overrides):
        directory = path if path.is_dir() else path.parent
        if (directory / CONFIG).is_file():
            values = read_config(directory)
            if values.get("model_type") == CLIPConfig.model_type:  # a full CLIP checkpoint: its tower's part
                values = values.get(cls._tower_key) or {}
                if not isinstance(values, dict):
                    raise ConfigError(f"{directory / CONFIG}: {cls._tower_key} must be an object of config fields, found {type(values).__name__}")
            config = cls.config_class.from_dict(values, source=directory / CONFIG, **overrides)
            cls.check_config(config, checkpoint)
            return config
        return super().load_config(path, checkpoint, **overrides)

    @classmethod
    def check_config(cls, config, checkpoint) -> None:
        """The tower's sizes against its tensors, the vision tower's position count included, before anything is built."""
        _check_tower(cls, config, checkpoint, cls.keymap(config), "", owner=cls.__name__)

    @classmethod
    def keymap(cls, config=None) -> KeyMap:
        """Hugging Face's names of the tower <-> minipt's: a tower file's own, or a full CLIP file's (under the
        tower's prefix, the other tower and the projections ignored)."""
        other = "vision_model." if cls._prefix == "text_model." else "text_model."
        ignore = [f"{other}{{*}}", "text_projection.{*}", "visual_projection.{*}", "logit_scale"]
        return _huggingface_tower(cls._prefix) + KeyMap([], ignore=ignore, optional_prefix=cls._prefix)


class CLIPTextModel(_CLIPTower):
    """The text tower: ``model(input_ids, attention_mask) -> CLIPTowerOutput`` (every token after the final LayerNorm,
    the end-of-text token's vector as ``pooler_output``)."""

    config_class = CLIPTextConfig
    _tower_key, _prefix = "text_config", "text_model."
    checkpoint_fields = {"vocab_size": ("embeddings.token.weight", 0), "hidden_size": ("embeddings.token.weight", 1),
                         "max_position_embeddings": ("embeddings.position", 0), "intermediate_size": ("layers.0.ffn_up.weight", 0),
                         "num_hidden_layers": "layers."}
    transfer_stages = {"embeddings": "embeddings", "layers.{i}": "layers.{i}", "final_norm": "final_norm"}

    def __init__(self, config: CLIPTextConfig | CLIPConfig):
        super().__init__()
        self.config = config.tower(CLIPTextConfig) if isinstance(config, CLIPConfig) else config
        config = self.config
        self.embeddings = CLIPTextEmbeddings(config)
        self.layers = nn.ModuleList(encoder_layer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.apply(self.init_weights)
        self.set_backend(config.backend)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) token ids, each caption ending in its end-of-text token
        attention_mask: torch.Tensor | None = None,  # (B, T): 1 = a real token, 0 = padding
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> CLIPTowerOutput:
        self.check_inputs(input_ids, attention_mask)
        T = input_ids.shape[1]
        hidden = self.embeddings(input_ids)  # (B, T, C)
        # each token sees itself and the tokens before it (CLIP's text tower is causal), never padding
        bias = attention_bias(attention_mask, T, T, causal=True, dtype=hidden.dtype, device=hidden.device)
        hidden, all_hidden, all_attn = run_layers(self.layers, hidden, bias, output_hidden_states, output_attentions)
        hidden = self.final_norm(hidden)  # (B, T, C)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), end_of_text(input_ids, self.config.eos_token_id)]  # (B, C)
        return CLIPTowerOutput(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_hidden, attentions=all_attn)

    def check_inputs(self, input_ids, attention_mask=None) -> None:
        """Raise an InputError naming the argument that does not fit: ids of the vocabulary, at most
        ``max_position_embeddings`` tokens (CLIP's context), a mask of the ids' shape."""
        config = self.config
        if not isinstance(input_ids, torch.Tensor):
            raise InputError(f"input_ids must be a tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dim() == 2 and input_ids.shape[1] > config.max_position_embeddings and not input_ids.is_floating_point():
            raise InputError(f"a caption of {input_ids.shape[1]} tokens is longer than CLIP's context of {config.max_position_embeddings} "
                             "(max_position_embeddings); truncate it")
        check_token_inputs(input_ids, attention_mask, vocab_size=config.vocab_size, max_length=config.max_position_embeddings,
                           type_vocab_size=None, family="CLIP", num_heads=config.num_attention_heads,
                           device=self.embeddings.token.weight.device)
        if config.eos_token_id != LEGACY_EOS_TOKEN_ID and not tracing() and not input_ids.is_meta and input_ids.numel():
            without = (~(input_ids == config.eos_token_id).any(dim=-1)).nonzero().flatten().tolist()
            if without:  # it would pool at position 0, the start token, which sees only itself: every such caption the same
                raise InputError(f"caption {without[0]} holds no end-of-text token (id {config.eos_token_id}), where CLIP's text tower "
                                 "pools; tokenize with CLIP's tokenizer (minipt fetch clip-tokenizer), which ends every caption with it")


class CLIPVisionModel(_CLIPTower):
    """The image tower: ``model(pixel_values) -> CLIPTowerOutput`` (every token after the last layer, the [CLS]
    token after post_layernorm as ``pooler_output``)."""

    config_class = CLIPVisionConfig
    _tower_key, _prefix = "vision_config", "vision_model."
    checkpoint_fields = {"hidden_size": ("embeddings.cls_token", 0), "num_channels": ("embeddings.patch.weight", 1),
                         "patch_size": ("embeddings.patch.weight", 2), "intermediate_size": ("layers.0.ffn_up.weight", 0), "num_hidden_layers": "layers."}
    transfer_stages = {"embeddings": ("embeddings", "pre_norm"), "layers.{i}": "layers.{i}", "post_norm": "post_norm"}

    def __init__(self, config: CLIPVisionConfig | CLIPConfig):
        super().__init__()
        self.config = config.tower(CLIPVisionConfig) if isinstance(config, CLIPConfig) else config
        config = self.config
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(encoder_layer(config) for _ in range(config.num_hidden_layers))
        self.post_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.apply(self.init_weights)
        self.set_backend(config.backend)

    def forward(
        self,
        pixel_values: torch.Tensor,  # (B, 3, image_size, image_size), normalised (preprocess)
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        interpolate_pos_encoding: bool = False,  # True: images of another size (sides multiples of patch_size)
    ) -> CLIPTowerOutput:
        self.check_inputs(pixel_values, interpolate_pos_encoding)
        hidden = self.pre_norm(self.embeddings(pixel_values, interpolate_pos_encoding))  # (B, 1 + N, C)
        hidden, all_hidden, all_attn = run_layers(self.layers, hidden, None, output_hidden_states, output_attentions)
        pooled = self.post_norm(hidden[:, 0])  # (B, C)
        return CLIPTowerOutput(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_hidden, attentions=all_attn)

    def check_inputs(self, pixel_values, interpolate_pos_encoding: bool = False) -> None:
        """Raise an InputError unless ``pixel_values`` is a batch of ``image_size`` x ``image_size`` images, or with
        ``interpolate_pos_encoding`` of images whose sides are multiples of ``patch_size``."""
        config, owner = self.config, type(self).__name__
        check_images(pixel_values, config.num_channels, owner, floating_dtype(self), parameter_device(self))
        H, W = pixel_values.shape[-2:]
        if interpolate_pos_encoding and (H % config.patch_size or W % config.patch_size):
            raise InputError(f"{owner} cuts images into {config.patch_size}x{config.patch_size} patches (patch_size); "
                             f"an image of {H}x{W} pixels is not a whole number of them")
        if not interpolate_pos_encoding and (H, W) != (config.image_size, config.image_size):
            raise InputError(f"{owner}'s position table is for {config.image_size}x{config.image_size} images (image_size), got {H}x{W}; "
                             "resize them (preprocess does), or pass interpolate_pos_encoding=True")

    def preprocess(self, images) -> torch.Tensor:
        """Image paths (or PIL images) -> (B, 3, image_size, image_size) as transformers' CLIPImageProcessor prepares them."""
        return clip_preprocess(images, self.config.image_size)


class CLIPModel(_CLIPPretrained):
    """Both towers, their projections into one space and the similarity of every image to every caption:

        model(input_ids, pixel_values, attention_mask) -> CLIPOutput(logits_per_image (B_i, B_t), logits_per_text, text_embeds, image_embeds)

    Either input alone gives that side's embeddings (open_clip's CLIP does the same), the logits need both;
    ``return_loss=True`` adds the contrastive loss of matching pairs (``contrastive_loss``: B_i = B_t, image i
    with caption i)."""

    checkpoint_fields = {"projection_dim": ("text_projection.weight", 0)}  # the towers' sizes: _check_tower
    transfer_stages = {"text_model.embeddings": "text_model.embeddings", "text_model.layers.{i}": "text_model.layers.{i}",
                       "text_model.final_norm": "text_model.final_norm", "vision_model.embeddings": ("vision_model.embeddings", "vision_model.pre_norm"),
                       "vision_model.layers.{i}": "vision_model.layers.{i}", "vision_model.post_norm": "vision_model.post_norm",
                       "projections": ("text_projection", "visual_projection", "similarity")}
    transfer_towers = ("text_model.", "vision_model.")  # side by side: each one's depth counts from the projections down

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.text_model = CLIPTextModel(config)
        self.vision_model = CLIPVisionModel(config)
        self.text_projection = Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.visual_projection = Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.similarity = CLIPSimilarity(config.logit_scale_init_value)
        self.apply(self.init_weights)
        self.set_backend(config.backend)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B_t, T)
        pixel_values: torch.Tensor | None = None,  # (B_i, 3, image_size, image_size), normalised (preprocess)
        attention_mask: torch.Tensor | None = None,  # (B_t, T)
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_loss: bool = False,  # True: the contrastive loss of the pairs (image i, caption i) as ``loss``
        interpolate_pos_encoding: bool = False,  # True: images of another size than vision_config.image_size
    ) -> CLIPOutput:
        self.check_inputs(input_ids, pixel_values, attention_mask, return_loss, interpolate_pos_encoding)
        text = image = text_embeds = image_embeds = logits_per_image = logits_per_text = loss = None
        if input_ids is not None:
            text = self.text_model(input_ids, attention_mask, output_hidden_states, output_attentions)
            text_embeds = unit(self.text_projection(text.pooler_output))  # (B_t, D)
        if pixel_values is not None:
            image = self.vision_model(pixel_values, output_hidden_states, output_attentions, interpolate_pos_encoding)
            image_embeds = unit(self.visual_projection(image.pooler_output))  # (B_i, D)
        if text is not None and image is not None:
            logits_per_image = self.similarity(image_embeds, text_embeds)  # (B_i, B_t)
            logits_per_text = logits_per_image.t()
        if return_loss:
            loss = contrastive_loss(logits_per_image)  # ()
        return CLIPOutput(loss=loss, logits_per_image=logits_per_image, logits_per_text=logits_per_text, text_embeds=text_embeds,
                          image_embeds=image_embeds, text_model_output=text, vision_model_output=image)

    def check_inputs(self, input_ids=None, pixel_values=None, attention_mask=None, return_loss=False, interpolate_pos_encoding=False) -> None:
        """Captions (``CLIPTextModel.check_inputs``) and/or images (``CLIPVisionModel.check_inputs``); at least one,
        both for the loss, as many captions as images."""
        if input_ids is None and pixel_values is None:
            raise InputError("CLIPModel needs input_ids, pixel_values or both; got neither")
        if input_ids is not None:
            self.text_model.check_inputs(input_ids, attention_mask)
        elif attention_mask is not None:
            raise InputError("attention_mask given without input_ids")
        if pixel_values is not None:
            self.vision_model.check_inputs(pixel_values, interpolate_pos_encoding)
        if return_loss and (input_ids is None or pixel_values is None):
            raise InputError("return_loss=True needs both input_ids and pixel_values: the loss compares every image with every caption")
        if return_loss and input_ids.shape[0] != pixel_values.shape[0]:
            raise InputError(f"the contrastive loss pairs image i with caption i: return_loss=True needs as many captions as images, "
                             f"got {input_ids.shape[0]} captions and {pixel_values.shape[0]} images")

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The captions' projected embeddings, not normalised: (B_t, projection_dim)."""
        return self.text_projection(self.text_model(input_ids, attention_mask).pooler_output)

    def get_image_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """The images' projected embeddings, not normalised: (B_i, projection_dim)."""
        return self.visual_projection(self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding).pooler_output)

    def preprocess(self, images) -> torch.Tensor:
        """Image paths (or PIL images) -> (B, 3, image_size, image_size) as CLIP was trained on them, placed as the
        checkpoint's format does (open_clip's preprocess for OpenAI's layout, transformers' CLIPImageProcessor otherwise)."""
        return clip_preprocess(images, self.config.vision_config.image_size, self.config.weights_format)

    # -- loading and saving ----------------------------------------------------
    @classmethod
    def keymap(cls, config: CLIPConfig | None = None) -> KeyMap:
        """The official names of the format ``config.weights_format`` (default: Hugging Face's) <-> minipt's."""
        if config is not None and config.weights_format == "openai":
            return _openai_keymap()
        return (_huggingface_tower("text_model.").prefixed("text_model.", "text_model.")
                + _huggingface_tower("vision_model.").prefixed("vision_model.", "vision_model.")
                + KeyMap([("text_projection.weight", "text_projection.weight"), ("visual_projection.weight", "visual_projection.weight"),
                          ("logit_scale", "similarity.logit_scale")]))

    @classmethod
    def config_from_checkpoint(cls, path: Path, checkpoint) -> CLIPConfig | None:
        """An OpenAI-format file's architecture, read off its tensors (the format has no config.json)."""
        return openai_config(checkpoint) if _is_openai(checkpoint) else None

    @classmethod
    def adapt_config(cls, config: CLIPConfig, checkpoint) -> CLIPConfig:
        config.weights_format = "openai" if _is_openai(checkpoint) else "huggingface"
        return config

    @classmethod
    def load_config(cls, path: Path, checkpoint, **overrides) -> CLIPConfig:
        """``hidden_act`` ("quick_gelu" or "gelu") sets both towers' activation of an OpenAI-layout file, which does not
        store it: OpenAI's weights use QuickGELU (the default, certain where the file carries OpenAI's integers),
        open_clip's own (LAION-trained ViT-B-32, ViT-H-14, ...) the exact GELU; a file that may be either warns."""
        act = overrides.pop("hidden_act", None)
        directory = path if path.is_dir() else path.parent
        openai_layout = _is_openai(checkpoint) and not (directory / CONFIG).is_file()
        if act is not None and not openai_layout:
            raise ConfigError(f"hidden_act is for OpenAI-layout files, which do not store it; {path} has a config.json, whose "
                              "text_config and vision_config say it")
        config = super().load_config(path, checkpoint, **overrides)
        if not openai_layout:
            return config
        if act is None and not any(key.removeprefix("module.") in _OPENAI_INTEGERS for key in checkpoint.keys()):
            import warnings

            warnings.warn(f"{path}: an OpenAI-layout CLIP without OpenAI's own integers: its activation is not stored; "
                          "QuickGELU assumed (OpenAI's weights, and open_clip's '-quickgelu' models); open_clip's own "
                          "LAION-trained weights use GELU: pass hidden_act='gelu' (minipt zero-shot --hidden-act gelu)", stacklevel=4)
        if act is not None:
            config = config.replace(text_config=config.text_config.replace(hidden_act=act),
                                    vision_config=config.vision_config.replace(hidden_act=act))
        return config

    @classmethod
    def check_config(cls, config: CLIPConfig, checkpoint) -> None:
        """Each tower's sizes against the tensors, as the towers check them, before anything is built."""
        keymap = cls.keymap(config)
        filled = set()
        for key in checkpoint.keys():
            found = keymap.to_minipt(keymap.canonical(key))
            if found is not None:
                filled.update(found[0] if isinstance(found[0], tuple) else (found[0],))
        for tower, prefix in ((CLIPTextModel, "text_model."), (CLIPVisionModel, "vision_model.")):
            if not any(key.startswith(prefix) for key in filled):
                raise KeyMismatchError(f"checkpoint {checkpoint.path} holds no {prefix.rstrip('.')} tensors: a CLIP checkpoint needs both towers "
                                       f"(a file of one tower loads with {tower.__name__})")
            _check_tower(tower, getattr(config, tower._tower_key), checkpoint, keymap, prefix)
        super().check_config(config, checkpoint)


def _check_tower(tower: type, config, checkpoint, keymap: KeyMap, prefix: str, owner: str = "CLIPModel") -> None:
    """``tower.checkpoint_fields`` (and the vision tower's position count) against the tensors ``keymap`` gives the
    tower under ``prefix``: a CLIPModel's towers, or a tower loaded on its own (``owner``, its fields unprefixed)."""
    named = f"{tower._tower_key}." if owner == "CLIPModel" else ""  # how a field is named in the message
    problems = []
    found: dict[str, tuple[str, tuple]] = {}
    for file_key in checkpoint.keys():
        for key, shape in keymap.minipt_shapes(keymap.canonical(file_key), checkpoint.shape(file_key)).items():
            if shape is not None and key.startswith(prefix):
                found[key[len(prefix):]] = (file_key, shape)
    for name, where in tower.checkpoint_fields.items():
        value = getattr(config, name)
        if isinstance(where, str):
            held = len({key[len(where):].split(".")[0] for key in found if key.startswith(where)})
            if value != held:
                problems.append(f"{named}{name} = {value!r}, but the checkpoint holds {held}")
        elif where[0] in found:
            file_key, shape = found[where[0]]
            if len(shape) <= where[1] or shape[where[1]] != value:
                problems.append(f"{named}{name} = {value!r}, but {file_key} has shape {checkpoint.shape(file_key)}")
    position = found.get("embeddings.position")
    if tower is CLIPVisionModel and position is not None and position[1][0] != config.grid**2 + 1:
        problems.append(f"{named}image_size = {config.image_size} and patch_size = {config.patch_size} make {config.grid**2 + 1} positions, "
                        f"but {position[0]} has shape {checkpoint.shape(position[0])}")
    if problems:
        raise ConfigError(f"the config of {owner} does not match the checkpoint {checkpoint.path}: " + "; ".join(problems))


# -- preprocessing and zero-shot classification ---------------------------------------------------
def clip_preprocess(images, image_size: int, weights_format: str = "huggingface") -> torch.Tensor:
    """Image paths (or PIL images) -> (B, 3, image_size, image_size): the shorter side resized to ``image_size``
    (bicubic), the centre square cut out, normalised with CLIP's mean and std. Where the margin is odd the square
    sits as open_clip places it (``round``) for OpenAI's layout, as transformers does (``floor``) for Hugging Face's."""
    offset = "round" if weights_format == "openai" else "floor"
    return normalized_batch(images, resize=image_size, crop=image_size, resample="bicubic", mean=CLIP_MEAN, std=CLIP_STD, offset=offset)


# The seven captions OpenAI chose for ImageNet out of its eighty by a search over subsets (the CLIP repository's
# prompt-engineering notebook; open_clip's SIMPLE_IMAGENET_TEMPLATES): zero_shot(..., templates=IMAGENET_TEMPLATES).
IMAGENET_TEMPLATES = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.", "a {} in a video game.",
                      "art of the {}.", "a photo of the small {}.")


@torch.no_grad()
def zero_shot(images, labels, model: CLIPModel, tokenizer, templates=("a photo of a {}.",)) -> torch.Tensor:
    """Each image's probability of each label: (B, len(labels)), rows summing to 1.

    ``images``: paths or PIL images (``model.preprocess``) or a ready batch (B, 3, S, S). ``tokenizer(texts)``
    returns a mapping with ``input_ids`` (and ``attention_mask``) for a list of captions (transformers' CLIP
    tokenizer with ``padding=True, return_tensors="pt"``, or minipt's). Each label's text embedding is the mean of
    its captions' unit embeddings over ``templates`` (``"a photo of a {}."``; ``IMAGENET_TEMPLATES``: OpenAI's seven),
    made unit length again: the prompt ensembling of CLIP's paper."""
    if not isinstance(model, CLIPModel):
        raise InputError(f"zero_shot needs a CLIPModel, got {type(model).__name__}")
    if isinstance(labels, str) or not labels or not all(isinstance(label, str) for label in labels):
        raise InputError(f"labels must be a non-empty list of strings, got {labels!r}")
    if isinstance(templates, str) or not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise InputError(f"templates must be a non-empty list of strings each holding '{{}}' for the label, got {templates!r}")
    for template in templates:
        try:
            template.format("label")
        except (IndexError, KeyError, ValueError) as err:  # "{} and {}", "{} {x}", "{} {": str.format's refusals
            raise InputError(f"template {template!r} must hold one '{{}}' for the label and no other braces (double them: '{{{{'): "
                             f"{type(err).__name__}: {err}") from None
    pixel_values = images if isinstance(images, torch.Tensor) else model.preprocess(images)
    image_embeds = unit(model.get_image_features(pixel_values))  # (B, D)
    per_template = []
    for template in templates:
        batch = tokenizer([template.format(label) for label in labels])
        per_template.append(unit(model.get_text_features(batch["input_ids"], batch.get("attention_mask"))))  # (L, D)
    label_embeds = unit(torch.stack(per_template).mean(dim=0))  # (L, D)
    return model.similarity(image_embeds, label_embeds).softmax(dim=-1)  # (B, L)


# -- Hugging Face's names -----------------------------------------------------------------
_HF_LAYER = {"self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj", "self_attn.v_proj": "attn.v_proj",
             "self_attn.out_proj": "attn.out_proj", "layer_norm1": "attn_norm", "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down", "layer_norm2": "ffn_norm"}


def _huggingface_tower(prefix: str) -> KeyMap:
    """transformers' CLIPTextModel ("text_model.") or CLIPVisionModel ("vision_model.") names, without the prefix -> minipt's."""
    layers = [(f"encoder.layers.{{i}}.{theirs}.{{p}}", f"layers.{{i}}.{ours}.{{p}}") for theirs, ours in _HF_LAYER.items()]
    if prefix == "text_model.":
        rules = [("embeddings.token_embedding.weight", "embeddings.token.weight"), ("embeddings.position_embedding.weight", "embeddings.position"),
                 *layers, ("final_layer_norm.{p}", "final_norm.{p}")]
    else:
        rules = [("embeddings.patch_embedding.weight", "embeddings.patch.weight"), ("embeddings.class_embedding", "embeddings.cls_token"),
                 ("embeddings.position_embedding.weight", "embeddings.position"), ("pre_layrnorm.{p}", "pre_norm.{p}"), *layers,
                 ("post_layernorm.{p}", "post_norm.{p}")]
    return KeyMap(rules, ignore=["embeddings.position_ids"])  # a buffer older transformers saved


# -- OpenAI's (and open_clip's) names ----------------------------------------------------------------
# torch.nn.MultiheadAttention keeps q, k and v stacked in one in_proj tensor (3C, ...): a Split rule cuts it.
_OPENAI_LAYER = {"attn.out_proj": "attn.out_proj", "ln_1": "attn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down", "ln_2": "ffn_norm"}
_OPENAI_SIGNATURE = "visual.class_embedding"


def _openai_layers(theirs: str, ours: str) -> list[tuple]:
    block = f"{theirs}resblocks.{{i}}"
    return [(f"{block}.attn.in_proj_{{p}}", tuple(f"{ours}layers.{{i}}.attn.{part}_proj.{{p}}" for part in "qkv"), Split(dim=0)),
            *[(f"{block}.{name}.{{p}}", f"{ours}layers.{{i}}.{mine}.{{p}}") for name, mine in _OPENAI_LAYER.items()]]


def _openai_keymap() -> KeyMap:
    """OpenAI's CLIP state dict (and open_clip's for its ViT models) <-> CLIPModel's names. The projections are
    stored (width, dim), applied as x @ proj: transposed against minipt's Linear."""
    return KeyMap(
        [
            ("visual.conv1.weight", "vision_model.embeddings.patch.weight"),
            ("visual.class_embedding", "vision_model.embeddings.cls_token"),
            ("visual.positional_embedding", "vision_model.embeddings.position"),
            ("visual.ln_pre.{p}", "vision_model.pre_norm.{p}"),
            *_openai_layers("visual.transformer.", "vision_model."),
            ("visual.ln_post.{p}", "vision_model.post_norm.{p}"),
            ("visual.proj", "visual_projection.weight", TRANSPOSE),
            ("token_embedding.weight", "text_model.embeddings.token.weight"),
            ("positional_embedding", "text_model.embeddings.position"),
            *_openai_layers("transformer.", "text_model."),
            ("ln_final.{p}", "text_model.final_norm.{p}"),
            ("text_projection", "text_projection.weight", TRANSPOSE),
            ("logit_scale", "similarity.logit_scale"),
        ],
        ignore=list(_OPENAI_INTEGERS),  # integers OpenAI's JIT archives carry
        optional_prefix="module.",
    )


def _is_openai(checkpoint) -> bool:
    return any(key.removeprefix("module.") == _OPENAI_SIGNATURE for key in checkpoint.keys())


def openai_config(checkpoint) -> CLIPConfig:
    """An OpenAI-format CLIP's architecture read off its tensors, as open_clip's build_model_from_openai_state_dict
    reads it: widths, depths, the patch and image size (a square grid), the context and vocabulary, heads 64 wide
    (open_clip's widest image towers: OPEN_CLIP_VISION_HEADS), QuickGELU, LayerNorm eps 1e-5, pooling at the highest
    token id (OpenAI's end-of-text token is the last id)."""
    if any(key.removeprefix("module.") in ("visual.layer1.0.conv1.weight", "visual.attnpool.positional_embedding") for key in checkpoint.keys()):
        raise ConfigError(f"{checkpoint.path} is an OpenAI CLIP with a ResNet image tower (visual.layer1, visual.attnpool); minipt's CLIP has the ViT tower only")
    needed = {"visual.conv1.weight": 4, "visual.positional_embedding": 2, "visual.proj": 2, "visual.transformer.resblocks.0.mlp.c_fc.weight": 2,
              "token_embedding.weight": 2, "positional_embedding": 2, "transformer.resblocks.0.mlp.c_fc.weight": 2, "text_projection": 2}
    shapes = read_shapes(checkpoint, needed, "an OpenAI-format CLIP")
    vision_width, channels, patch = shapes["visual.conv1.weight"][:3]
    grid = square_grid(checkpoint.path, "visual.positional_embedding", shapes["visual.positional_embedding"],
                       shapes["visual.positional_embedding"][0] - 1)
    vocab, text_width = shapes["token_embedding.weight"]

    def depth(prefix: str) -> int:
        return len({key[len(prefix):].split(".")[0] for key in shapes if key.startswith(prefix)})

    for width, what in ((vision_width, "visual.conv1.weight"), (text_width, "token_embedding.weight")):
        if width % OPENAI_HEAD_WIDTH and not (what.startswith("visual") and width in OPEN_CLIP_VISION_HEADS):
            raise ConfigError(f"{checkpoint.path}: {what} gives a width of {width}, not a multiple of OpenAI's head width {OPENAI_HEAD_WIDTH}: "
                              "the file does not store the number of heads")
    text = dict(vocab_size=vocab, hidden_size=text_width, intermediate_size=shapes["transformer.resblocks.0.mlp.c_fc.weight"][0],
                num_hidden_layers=depth("transformer.resblocks."), num_attention_heads=text_width // OPENAI_HEAD_WIDTH,
                max_position_embeddings=shapes["positional_embedding"][0], bos_token_id=vocab - 2, eos_token_id=LEGACY_EOS_TOKEN_ID, pad_token_id=1)
    vision = dict(hidden_size=vision_width, intermediate_size=shapes["visual.transformer.resblocks.0.mlp.c_fc.weight"][0],
                  num_hidden_layers=depth("visual.transformer.resblocks."),
                  num_attention_heads=OPEN_CLIP_VISION_HEADS.get(vision_width, vision_width // OPENAI_HEAD_WIDTH),
                  num_channels=channels, image_size=grid * patch, patch_size=patch)
    try:
        return CLIPConfig(text_config=CLIPTextConfig(**text), vision_config=CLIPVisionConfig(**vision),
                          projection_dim=shapes["text_projection"][1], weights_format="openai")
    except ConfigError as err:
        raise KeyMismatchError(f"checkpoint {checkpoint.path} does not describe a CLIP minipt can build: {err}") from None


# -- minipt.reference: where transformers computes the same values ---------------------------------
# transformers' CLIPEncoderLayer (pre-LN) computing each value of minipt.nn.EncoderLayer
REFERENCE_LAYER = {"attn_norm.out": "layer_norm1", "attn.probs": "self_attn", "attn.heads": "self_attn.out_proj:input", "attn.out": "self_attn.out_proj",
                   "ffn_norm.out": "layer_norm2", "act.out": "mlp.activation_fn", "ffn_down.out": "mlp.fc2", "out": ""}


def _tower_points(ours: str, theirs: str, config, text: bool) -> dict:
    points = {f"{ours}embeddings.out": (f"{theirs}embeddings", None)}
    if not text:
        points[f"{ours}pre_norm.out"] = (f"{theirs}pre_layrnorm", None)
    for i in range(config.num_hidden_layers):
        points.update(_layer_points(f"{ours}layers.{i}.", f"{theirs}encoder.layers.{i}.", REFERENCE_LAYER, config.num_attention_heads))
    points[f"{ours}final_norm.out" if text else f"{ours}post_norm.out"] = (f"{theirs}final_layer_norm" if text else f"{theirs}post_layernorm", None)
    return points


def _call(model, inputs, path) -> dict:
    """The forward arguments to compare on: a dict keyed by forward's names; one tensor (ids or images); or, as
    ``minipt diff`` gives them, texts (None: the demo sentences) tokenized by the tokenizer beside the checkpoint
    (else the fetched clip-tokenizer), with the demo photo for CLIPModel's image tower; image paths for CLIPVisionModel.
    Given to CLIPModel, inputs that are files are its photos and the others its captions."""
    from ..demo import tokenizer_beside
    from ..reference import images, texts
    from ..tokenizer import Tokenizer

    names = {CLIPTextModel: ("input_ids",), CLIPVisionModel: ("pixel_values",)}.get(type(model))
    if isinstance(inputs, torch.Tensor) and names is not None:
        return {names[0]: inputs}
    if isinstance(inputs, Mapping) and inputs:  # a dict, transformers' BatchEncoding or BatchFeature
        return dict(inputs)
    if not (inputs is None or isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, str) for i in inputs))):
        raise InputError(f"{type(model).__name__} compares on a dict of its forward's arguments (input_ids, attention_mask, pixel_values), "
                         f"token ids or images as a tensor, or a list of {'image paths' if names == ('pixel_values',) else 'texts'}; "
                         f"got {type(inputs).__name__}")
    if isinstance(model, CLIPVisionModel):
        return {"pixel_values": images(inputs, model.preprocess)[0]}
    given = [inputs] if isinstance(inputs, str) else list(inputs or [])
    photos = [item for item in given if isinstance(model, CLIPModel) and os.path.isfile(item)]
    captions = [item for item in given if item not in photos]
    tokenizer = tokenizer_beside(path) or Tokenizer.from_pretrained("clip-tokenizer")
    batch = tokenizer(texts(captions or None))
    call = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if isinstance(model, CLIPModel):
        call["pixel_values"] = images(photos or None, model.preprocess)[0]
    return call


# open_clip's ResidualAttentionBlock (OpenAI's names) computing each value of minipt.nn.EncoderLayer: minipt's point -> its module
OPEN_CLIP_LAYER = {"attn_norm.out": "ln_1", "attn.out": "attn", "ffn_norm.out": "ln_2", "act.out": "mlp.gelu", "ffn_down.out": "mlp.c_proj", "out": ""}


def _open_clip_points(ours: str, theirs: str, layers: int, text: bool) -> dict:
    first = lambda out: out[0]  # noqa: E731  (torch.nn.MultiheadAttention returns (output, weights))
    points = {} if text else {f"{ours}pre_norm.out": (f"{theirs}ln_pre", None)}
    for i in range(layers):
        block = f"{theirs}transformer.resblocks.{i}"
        points.update({f"{ours}layers.{i}.{point}": (f"{block}.{name}" if name else block, first if point == "attn.out" else None)
                       for point, name in OPEN_CLIP_LAYER.items()})
    if text:
        points[f"{ours}final_norm.out"] = ("ln_final", None)
    else:
        points[f"{ours}post_norm.out"] = (f"{theirs}ln_post", lambda out: out[:, 0])  # open_clip normalises every token, then takes [CLS]
    return points


def _compare_with_open_clip(model, path, call: dict, rtol):
    """An OpenAI-layout file: open_clip's own CLIP built from it (``build_model_from_openai_state_dict``, then the
    tensors loaded again in float32, as that function keeps them in float16), compared inside every block of both
    towers, at the final LayerNorms, the projected features and the logits. open_clip's text tower reads captions
    of the whole context, padded with 0, and masks causally and nothing else: both sides run on such ids without a
    padding mask (the pooled end-of-text token sees no padding)."""
    from ..reference import import_reference, report

    if not isinstance(model, CLIPModel):
        raise ConfigError(f"{path} is in OpenAI's layout, which open_clip reads as a whole CLIP: compare a CLIPModel loaded from it")
    open_clip = import_reference("open_clip", "a CLIP in OpenAI's layout")
    with Checkpoint(path) as checkpoint:
        state = {key.removeprefix("module."): checkpoint.get(key) for key in checkpoint.keys()}
    try:
        reference = open_clip.model.build_model_from_openai_state_dict(dict(state)).float()
        reference.load_state_dict({k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")})
    except RuntimeError as err:  # open_clip infers no feed-forward width: it builds 4 x the model width
        raise ConfigError(f"open_clip cannot build {path} (it assumes feed-forward layers 4 times the width): {str(err).splitlines()[0]}") from None
    reference.eval()
    ids, pixels = call.get("input_ids"), call.get("pixel_values")
    if ids is None or pixels is None:
        raise InputError("comparing with open_clip needs both input_ids and pixel_values (open_clip's CLIP runs both towers)")
    config = model.config
    context = config.text_config.max_position_embeddings
    if ids.shape[1] > context:
        raise InputError(f"a caption of {ids.shape[1]} tokens is longer than CLIP's context of {context} (max_position_embeddings)")
    ids = torch.nn.functional.pad(ids, (0, context - ids.shape[1]))  # open_clip reads the whole context: OpenAI's tokenizer pads with 0
    points = {**_open_clip_points("text_model.", "", config.text_config.num_hidden_layers, True), "text_projection.out": None,
              **_open_clip_points("vision_model.", "visual.", config.vision_config.num_hidden_layers, False), "visual_projection.out": None,
              "similarity.out": None}
    held = {}
    extra = {"text_projection.out": lambda: reference.encode_text(ids), "visual_projection.out": lambda: reference.encode_image(pixels),
             "similarity.out": lambda: held["scale"] * held["image"] @ held["text"].t()}
    label = f"input_ids {tuple(ids.shape)} (padded with 0, no padding mask), pixel_values {tuple(pixels.shape)}"
    run_reference = lambda: held.update(zip(("image", "text", "scale"), reference(pixels, ids)))  # noqa: E731
    return report(model, "open_clip CLIP", label, rtol, points, lambda: model(ids, pixels), reference, run_reference, extra)


def compare_with_reference(model, path, inputs, rtol):
    """transformers' CLIPModel / CLIPTextModel / CLIPVisionModel (eager attention) on the same checkpoint, point by
    point (``minipt.reference.layer_diffs``): each tower's embeddings, inside every layer, its final LayerNorm; the
    projections and the similarity logits. A file in OpenAI's layout is compared with open_clip's CLIP instead."""
    from ..reference import import_reference, report, transformers_reference

    call = _call(model, inputs, path)
    with Checkpoint(path) as checkpoint:
        openai = _is_openai(checkpoint)
    if openai:
        return _compare_with_open_clip(model, path, call, rtol)
    transformers = import_reference("transformers", "CLIP")
    reference = transformers_reference(getattr(transformers, type(model).__name__), path)
    extra, held = {}, {}
    if isinstance(model, CLIPModel):
        points = {}
        if call.get("input_ids") is not None:
            points.update(_tower_points("text_model.", "text_model.", model.config.text_config, True))
            points["text_projection.out"] = ("text_projection", None)
        if call.get("pixel_values") is not None:
            points.update(_tower_points("vision_model.", "vision_model.", model.config.vision_config, False))
            points["visual_projection.out"] = ("visual_projection", None)
        if call.get("input_ids") is not None and call.get("pixel_values") is not None:
            points["similarity.out"] = None
            extra["similarity.out"] = lambda: held["out"].logits_per_image
    else:
        points = _tower_points("", "", model.config, isinstance(model, CLIPTextModel))
    label = ", ".join(f"{name} {tuple(value.shape)}" for name, value in call.items() if isinstance(value, torch.Tensor))
    return report(model, f"transformers {type(reference).__name__}", label, rtol, points, lambda: model(**call), reference,
                  lambda: held.update(out=reference(**call)), extra)


# -- what the family's declaration (minipt.registry) will name ------------------------------------------



def tiny_config() -> CLIPConfig:
    """A small CLIP: random models for tests and examples."""
    text = CLIPTextConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=12,
                          bos_token_id=48, eos_token_id=49, pad_token_id=1, projection_dim=8)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8, projection_dim=8)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)


def example_inputs(cls) -> tuple[tuple, dict]:
    """Two captions (the first padded after its end-of-text token 49) and two 16 x 16 images."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.tensor([[48, 5, 17, 49, 1, 1, 1], [48, 30, 2, 44, 9, 21, 49]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    pixel_values = torch.randn(2, 3, 16, 16, generator=generator)
    if cls is CLIPTextModel:
        return (input_ids, attention_mask), {}
    if cls is CLIPVisionModel:
        return (pixel_values,), {}
    return (input_ids, pixel_values, attention_mask), {}


def images_beside_captions(model, batch: int) -> dict:
    """What minipt.summary gives a CLIPModel beside its captions: as many blank images of its tower's size, so that
    both towers run and their FLOPs are counted."""
    if not isinstance(model, CLIPModel):
        return {}
    vision, anchor = model.config.vision_config, next(model.parameters())
    size = (batch, vision.num_channels, vision.image_size, vision.image_size)
    return {"pixel_values": torch.zeros(size, dtype=anchor.dtype, device=anchor.device)}


def default_size(model) -> str:
    """What minipt.summary feeds a model by default: a caption of the full context, or one image."""
    if isinstance(model, CLIPVisionModel):
        return f"1x{model.config.num_channels}x{model.config.image_size}x{model.config.image_size}"
    text = model.config if isinstance(model, CLIPTextModel) else model.config.text_config
    return f"1x{text.max_position_embeddings}"


# -- the family's one declaration ---------------------------------------------------------
FAMILY = register("clip", (CLIPModel, CLIPTextModel, CLIPVisionModel), tiny=tiny_config, inputs=example_inputs,
                  signature=(_OPENAI_SIGNATURE, "an OpenAI-format CLIP"), reference=compare_with_reference,
                  reads=Reads("token ids (batch x tokens) for the text tower, images (batch x channels x height x width) "
                              "for the image tower", default_size, beside=images_beside_captions))
