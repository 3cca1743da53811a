"""Side by side with the reference implementation: where does a minipt model stop matching the original?

``layer_diffs(model, source)`` builds the reference implementation of the
model's family from the same checkpoint, runs both on the same input and
compares them at every point the two share, in data-flow order: the largest
absolute difference, the same relative to the reference's largest value, and
the first point past the tolerance. A broken part shows up where it breaks.

    family            reference                                   compared at
    BERT (+ heads)    transformers' BertModel / ...ForMaskedLM /   embeddings, each layer's attention probabilities,
                      ...ForSequenceClassification (eager)         heads, attention output, add & norm, GELU, FFN, output
    GPT-2             transformers' GPT2Model / GPT2LMHeadModel     the same per block, final norm, logits
    ResNet            torchvision's ResNet                          stem, every conv and BatchNorm, shortcut, block, head
    EfficientNet-Lite timm's tf_efficientnet_lite0..4               stem, expand / depthwise / project of each block, head
    CRNN              EasyOCR's network rebuilt from torch.nn       each convolution, each BiLSTM direction per step, head
    CharLM            torch.nn.Embedding, LSTM per layer, Linear    embedding, each layer's h per step, logits
    G2P               torch.nn.Embedding, GRU, Linear               embeddings, encoder and decoder h per step, logits

minipt's side is read with ``minipt.probe`` on the "math" backend (where
every name exists); the reference's with forward hooks, or by running its
layers one at a time. transformers, torchvision and timm are imported here,
lazily, and only when a comparison is asked for; minipt never needs them.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import os
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .errors import ConfigError, InputError


def bare_torchvision() -> None:
    """Let pure-Python torchvision code import where its compiled extension cannot load.

    torchvision's PyPI wheel is a CUDA build; on a CPU-only torch its
    ``__init__`` fails, and transformers, which probes for torchvision, fails
    with it. A bare package module in ``sys.modules`` skips that ``__init__``;
    ``torchvision.models.resnet`` and the rest of its Python code still import.
    """
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    location = list(spec.submodule_search_locations)[0]
    module = types.ModuleType("torchvision")
    module.__path__ = [location]
    module.__file__ = os.path.join(location, "__init__.py")
    module.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    module.__spec__.submodule_search_locations = [location]
    sys.modules["torchvision"] = module


def import_transformers():
    """transformers, or None when it is not installed."""
    if importlib.util.find_spec("transformers") is None:
        return None
    bare_torchvision()
    import transformers  # reference-only

    transformers.utils.logging.disable_progress_bar()  # its loading bar would break the tables minipt prints
    return transformers



def _import(module: str, purpose: str):
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"comparing {purpose} needs {module} (pip install {module})")
    if module == "transformers":
        return import_transformers()
    bare_torchvision()
    return importlib.import_module(module)


# -- the report ------------------------------------------------------------------------
@dataclass
class DiffRow:
    name: str  # minipt's name of the value (minipt.probe)
    reference: str  # where the reference computes it
    max_abs: float  # max |minipt - reference|; inf when the shapes differ
    relative: float  # max_abs / max |reference|
    shapes: tuple | None = None  # (minipt's, the reference's) when they differ
    diverged: bool = False  # past the tolerance, or of another shape, or not finite


@dataclass
class DiffReport:
    model: str  # "minipt BertModel"
    reference: str  # "transformers BertModel"
    input: str  # what both ran on
    rtol: float
    rows: list[DiffRow] = field(default_factory=list)

    @property
    def first_divergence(self) -> DiffRow | None:
        """The first point, in data-flow order, where the two differ beyond the tolerance (None: they agree)."""
        return next((row for row in self.rows if row.diverged), None)

    def __str__(self) -> str:
        first = self.first_divergence
        width = max([len(r.name) for r in self.rows] + [5])
        lines = [f"{self.model} against {self.reference} on {self.input}; tolerance {self.rtol:.0e} relative to the reference's largest value", "",
                 f"  {'point':<{width}}  {'max abs':>9}  {'relative':>9}"]
        for row in self.rows:
            values = f"shape {row.shapes[0]} vs {row.shapes[1]}" if row.shapes else f"{row.max_abs:9.2e}  {row.relative:9.2e}"
            mark = f"   <- first divergence ({self.reference.split()[0]}: {row.reference})" if row is first else ""
            lines.append(f"  {row.name:<{width}}  {values}{mark}")
        lines.append("")
        lines.append(f"first divergence: {first.name}" if first else f"no divergence: all {len(self.rows)} points within {self.rtol:.0e}")
        return "\n".join(lines)


def _compare(name: str, where: str, ours: torch.Tensor, theirs: torch.Tensor, rtol: float) -> DiffRow:
    ours, theirs = ours.detach().double(), theirs.detach().double()
    if ours.shape != theirs.shape:
        return DiffRow(name, where, math.inf, math.inf, (tuple(ours.shape), tuple(theirs.shape)), True)
    if ours.numel() == 0:
        return DiffRow(name, where, 0.0, 0.0)
    max_abs = (ours - theirs).abs().max().item()
    relative = max_abs / max(theirs.abs().max().item(), 1e-12)
    return DiffRow(name, where, max_abs, relative, None, not relative <= rtol)


# -- running both sides ------------------------------------------------------------------
@contextmanager
def _on_math(model: nn.Module):
    """Every block of ``model`` on the "math" backend for the comparison, its own choice restored after."""
    from .nn import set_backend

    saved = [(block, block.backend) for block in model.modules() if hasattr(block, "backend")]
    set_backend("math", module=model)
    try:
        yield
    finally:
        for block, backend in saved:
            block.backend = backend


def _ours(model: nn.Module, names: list[str], run: Callable[[], Any]) -> dict[str, torch.Tensor]:
    from .probe import capture

    with _on_math(model), capture(model, *names) as seen:
        run()
    return {name: seen[name] for name in seen}


def _first(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _hooked(reference: nn.Module, points: dict[str, tuple[str, Callable | None]], run: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """Run ``reference`` and return, for each minipt name, ``pick(output)`` of the reference module named with it
    (``pick(inputs)`` for a name ending in ``:input``; the first tensor of the output or input by default)."""
    modules = dict(reference.named_modules())
    found, handles = {}, []

    def hook(name, pick, on_input):
        def record(module, args, output=None):
            value = (pick or _first)(args if on_input else output)
            found[name] = value.detach().clone()  # before an in-place op (torchvision's ReLU, +=) changes it
        return record

    try:
        for name, (where, pick) in points.items():
            module_name, _, kind = where.partition(":")
            if module_name not in modules:
                raise ConfigError(f"the reference {type(reference).__name__} has no module {module_name!r} (for {name})")
            if kind == "input":
                handles.append(modules[module_name].register_forward_pre_hook(hook(name, pick, True)))
            else:
                handles.append(modules[module_name].register_forward_hook(hook(name, pick, False)))
        run()
    finally:
        for handle in handles:
            handle.remove()
    return found


@torch.inference_mode()
def layer_diffs(model: nn.Module, source, inputs: Any = None, *, rtol: float = 1e-4) -> DiffReport:
    """Compare ``model`` with the reference implementation loaded from ``source`` (the checkpoint's path or
    catalogue name) on the same input, at every point the two share, in data-flow order.

    ``inputs``: for text models a list of texts (or a tokenised batch / id tensor), for image models image paths
    (or a ready batch), for CRNN a line of text to render (or an image path or batch), for G2P a word; None runs
    each family's default (``DEFAULT_INPUTS``). ``rtol`` bounds the difference relative to the reference's
    largest value at each point. The model runs on the "math" backend (its own choice is restored after).
    """
    from .hub import resolve

    path = resolve(source)
    was_training = model.training
    model.eval()
    try:
        for family, compare in _FAMILIES:
            if _is(model, family):
                return compare(model, path, inputs, rtol)
    finally:
        model.train(was_training)
    raise ConfigError(f"minipt has no reference comparison for {type(model).__name__}; families: {', '.join(f for f, _ in _FAMILIES)}")


def _is(model, family: str) -> bool:
    module, _, name = _CLASSES[family].partition(":")
    return any(isinstance(model, getattr(importlib.import_module(module), n)) for n in name.split(","))


_CLASSES = {
    "BERT": "minipt.models.bert:BertModel,BertForMaskedLM,BertForSequenceClassification",
    "sentence encoder": "minipt.models.sentence:SentenceEncoder",
    "GPT-2": "minipt.models.gpt2:GPT2Model,GPT2LMHeadModel",
    "ResNet": "minipt.models.resnet:ResNet",
    "EfficientNet": "minipt.models.efficientnet:EfficientNet",
    "CRNN": "minipt.models.crnn:CRNN",
    "CharLM": "minipt.models.char_lm:CharLM",
    "G2P": "minipt.models.g2p:G2P",
}

DEFAULT_INPUTS = {
    "text": "minipt.cli.DEMO_SENTENCES (six short sentences)",
    "image": "the first photo of minipt.cli.DEMO_PHOTOS found (scikit-image's chelsea.png)",
    "CRNN": "'Hello World 2024' rendered with Pillow's default font",
    "CharLM": "'The government said on Tuesday that it would'",
    "G2P": "'activationist'",
}


def _rows(names: list[str], where: dict[str, str], ours: dict, theirs: dict, rtol: float) -> list[DiffRow]:
    rows = []
    for name in names:
        if name not in ours or name not in theirs:
            side = "minipt" if name not in ours else "the reference"
            raise ConfigError(f"{side} computed no value for {name} on this input")
        rows.append(_compare(name, where[name], ours[name], theirs[name], rtol))
    return rows


def _report(model, label: str, input_label: str, rtol: float, points: dict, ours_run, ref, ref_run, extra: dict | None = None) -> DiffReport:
    """Compare at ``points`` (minipt name -> (reference module[:input], pick)); ``extra`` adds reference values computed directly."""
    names = list(points)
    ours = _ours(model, names, ours_run)
    hooked = {name: spec for name, spec in points.items() if spec is not None and (extra is None or name not in extra)}
    theirs = _hooked(ref, hooked, ref_run) if ref is not None else {}
    if extra:
        theirs.update({name: value() if callable(value) else value for name, value in extra.items()})
    where = {name: (spec[0] if spec is not None else "computed") for name, spec in points.items()}
    return DiffReport(f"minipt {type(model).__name__}", label, input_label, rtol, _rows(names, where, ours, theirs, rtol))


# -- text: BERT and GPT-2 ------------------------------------------------------------------
def _texts(inputs) -> list[str]:
    from .cli import DEMO_SENTENCES

    if inputs is None:
        return list(DEMO_SENTENCES)
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
        return list(inputs)
    raise InputError(f"text models compare on a list of texts, a tokenised batch or an id tensor; got {type(inputs).__name__}")


def _tokenizer(path):
    from .tokenizer import BPE_VOCAB, TOKENIZER_FILE, Tokenizer

    directory = path if path.is_dir() else path.parent
    if (directory / TOKENIZER_FILE).is_file() or (directory / BPE_VOCAB).is_file():
        return Tokenizer.from_pretrained(directory)
    return None


def _heads(num_heads: int):
    """(B, T, C) -> (B, heads, T, C / heads): a reference's concatenated heads in minipt's per-head layout."""
    return lambda x: _first(x).unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _compare_bert(model, path, inputs, rtol) -> DiffReport:
    from .models.bert import BertForMaskedLM, BertForSequenceClassification

    transformers = _import("transformers", "BERT")
    if isinstance(inputs, dict):
        batch, label = inputs, f"a batch of shape {tuple(inputs['input_ids'].shape)}"
    else:
        tokenizer = _tokenizer(path)
        if tokenizer is None:
            raise InputError(f"{path} holds no tokenizer; pass a tokenised batch (input_ids, attention_mask)")
        texts = _texts(inputs)
        batch, label = tokenizer(texts), f"{len(texts)} texts"
    if isinstance(model, BertForMaskedLM):
        cls, ours, theirs, head = transformers.BertForMaskedLM, "bert.", "bert.", {"head.out": ("cls", None)}
    elif isinstance(model, BertForSequenceClassification):
        cls, ours, theirs, head = transformers.BertForSequenceClassification, "bert.", "bert.", {"classifier.out": ("classifier", None)}
    else:
        cls, ours, theirs, head = transformers.BertModel, "", "", {}
    encoder = model.bert if ours else model
    kwargs = {"add_pooling_layer": encoder.pooler is not None} if cls is transformers.BertModel else {}
    reference = cls.from_pretrained(str(path), attn_implementation="eager", **kwargs).eval()
    config = encoder.config
    points = {f"{ours}embeddings.out": (f"{theirs}embeddings", None)}
    for i in range(config.num_hidden_layers):
        a, b = f"{ours}layers.{i}.", f"{theirs}encoder.layer.{i}."
        points.update({
            a + "attn.probs": (b + "attention.self", lambda out: out[1]),
            a + "attn.heads": (b + "attention.self", _heads(config.num_attention_heads)),
            a + "attn.out": (b + "attention.output.dense", None),
            a + "attn_norm.out": (b + "attention.output", None),
            a + "act.out": (b + "intermediate", None),
            a + "ffn_down.out": (b + "output.dense", None),
            a + "out": (b.rstrip("."), None),
        })
    if encoder.pooler is not None:
        points[f"{ours}pooler.out"] = (f"{theirs}pooler", None)
    points.update(head)
    return _report(model, f"transformers {cls.__name__}", label, rtol, points, lambda: model(**batch), reference, lambda: reference(**batch))


def _compare_sentence(model, path, inputs, rtol) -> DiffReport:
    return _compare_bert(model.encoder, path, inputs, rtol)


def _compare_gpt2(model, path, inputs, rtol) -> DiffReport:
    from .models.gpt2 import GPT2LMHeadModel

    transformers = _import("transformers", "GPT-2")
    config = model.config
    if isinstance(inputs, torch.Tensor):
        ids, label = inputs, f"token ids of shape {tuple(inputs.shape)}"
    elif inputs is None and _tokenizer(path) is None:
        ids = torch.randint(config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        label = "random token ids (2, 16), seed 0 (no tokenizer beside the checkpoint)"
    else:
        tokenizer = _tokenizer(path)
        if tokenizer is None:
            raise InputError(f"{path} holds no tokenizer; pass token ids (B, T)")
        rows = [tokenizer(t, padding=False, truncation=False)["input_ids"][0] for t in _texts(inputs)]
        shortest = min(len(r) for r in rows)
        ids = torch.stack([r[:shortest] for r in rows])  # cut to one length: no padding to tell apart
        label = f"{len(rows)} texts cut to their shortest, {shortest} tokens"
    lm = isinstance(model, GPT2LMHeadModel)
    cls = transformers.GPT2LMHeadModel if lm else transformers.GPT2Model
    reference = cls.from_pretrained(str(path), attn_implementation="eager").eval()
    p = "transformer." if lm else ""
    points = {f"{p}token.out": (f"{p}wte", None), f"{p}position.out": (f"{p}wpe", None)}
    for i in range(config.n_layer):
        a, b = f"{p}layers.{i}.", f"{p}h.{i}."
        points.update({
            a + "attn_norm.out": (b + "ln_1", None),
            a + "attn.probs": (b + "attn", lambda out: out[1]),
            a + "attn.heads": (b + "attn.c_proj:input", _heads(config.n_head)),
            a + "attn.out": (b + "attn", None),
            a + "ffn_norm.out": (b + "ln_2", None),
            a + "act.out": (b + "mlp.act", None),
            a + "ffn_down.out": (b + "mlp", None),
            a + "out": (b.rstrip("."), None),
        })
    points[f"{p}final_norm.out"] = (f"{p}ln_f", None)
    if lm:
        points["lm_head.out"] = ("lm_head", None)
    return _report(model, f"transformers {cls.__name__}", label, rtol, points, lambda: model(ids), reference, lambda: reference(input_ids=ids))


# -- images: ResNet and EfficientNet-Lite ----------------------------------------------------
def demo_photo():
    """The first photo of ``minipt.cli.DEMO_PHOTOS`` installed here (scikit-image's cat, ...)."""
    from pathlib import Path

    from .cli import DEMO_PHOTOS

    for package, relpath in DEMO_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            photo = Path(list(spec.submodule_search_locations)[0]) / relpath
            if photo.is_file():
                return photo
    raise InputError("no demo photo is installed (pip install scikit-image); pass an image path")


def _images(inputs, prepare) -> tuple[torch.Tensor, str]:
    import os

    if isinstance(inputs, torch.Tensor):
        return inputs, f"images of shape {tuple(inputs.shape)}"
    paths = [demo_photo()] if inputs is None else [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    batch = prepare(paths)
    return batch, f"{', '.join(os.path.basename(str(p)) for p in paths)} as {tuple(batch.shape)}"


def _resnet_pixels(paths) -> torch.Tensor:
    from .vision import image_batch

    pixels = image_batch(paths, resize=256, crop=224) / 255.0  # torchvision's ImageNet preprocessing
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (pixels - mean[:, None, None]) / std[:, None, None]


def _compare_resnet(model, path, inputs, rtol) -> DiffReport:
    from .checkpoint import Checkpoint
    from .models.resnet import KEYMAP, infer_config

    _import("torchvision", "ResNet")
    from torchvision.models import resnet as tv  # reference-only

    checkpoint = Checkpoint(path)
    config = infer_config(checkpoint)  # the reference's architecture is the checkpoint's, not the model's
    block = tv.BasicBlock if config.block == "basic" else tv.Bottleneck
    reference = tv.ResNet(block, list(config.layers), num_classes=config.num_classes, groups=config.groups, width_per_group=config.width_per_group)
    state = {KEYMAP.canonical(key): checkpoint.get(key) for key in checkpoint.keys()}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    if unexpected or any(not key.endswith("num_batches_tracked") for key in missing):
        raise ConfigError(f"torchvision's ResNet does not take {path}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    reference.eval()
    x, label = _images(inputs, _resnet_pixels)
    points = {"stem.conv.out": ("conv1", None), "stem.bn.out": ("bn1", None), "stem.out": ("maxpool", None)}
    convs = ("conv1", "bn1", "conv2", "bn2") + (("conv3", "bn3") if config.block == "bottleneck" else ())
    for s, blocks in enumerate(config.layers):
        for b in range(blocks):
            a, r = f"stages.{s}.{b}.", f"layer{s + 1}.{b}."
            points.update({a + f"{part}.out": (r + part, None) for part in convs})
            if b == 0 and (s > 0 or config.block == "bottleneck"):
                points[a + "shortcut.out"] = (r + "downsample", None)
            points[a + "out"] = (r.rstrip("."), None)
    points.update({"pool.out": ("avgpool", None), "head.out": ("fc", None)})
    return _report(model, "torchvision ResNet", label, rtol, points, lambda: model(x), reference, lambda: reference(x))


def _compare_efficientnet(model, path, inputs, rtol) -> DiffReport:
    from .checkpoint import model_keys
    from .models.efficientnet import KEYMAP, LITE, EfficientNet, infer_config, preprocess

    timm = _import("timm", "EfficientNet-Lite")
    checkpoint = model.open_checkpoint(path)
    config = infer_config(checkpoint)
    variant = next(n for n, v in LITE.items() if (v["width"], v["depth"]) == (config.width, config.depth))
    reference = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, num_classes=config.num_classes).eval()
    with torch.device("meta"):
        official = [KEYMAP.to_official(k)[0] for k in model_keys(EfficientNet(config))]
    theirs = list(reference.state_dict())  # timm's order is the official file's order
    if len(theirs) != len(official):
        raise ConfigError(f"timm's tf_efficientnet_{variant} holds {len(theirs)} tensors, the official layout {len(official)}")
    by_name = {KEYMAP.canonical(key): key for key in checkpoint.keys()}
    reference.load_state_dict({t: checkpoint.get(by_name[o]) for t, o in zip(theirs, official)}, strict=True)
    x, label = _images(inputs, lambda paths: preprocess(paths, config))
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
    points.update({"head.out": ("bn2", None), "classifier.out": ("classifier", None)})
    return _report(model, f"timm tf_efficientnet_{variant}", label, rtol, points, lambda: model(x), reference, lambda: reference(x))


# -- recurrent: CRNN, CharLM, G2P -----------------------------------------------------------
def _directions(output: torch.Tensor, hidden: int, direction: int, batch_first: bool = True) -> torch.Tensor:
    """One direction of a torch.nn recurrent layer's output as (T, B, H), the layout of minipt's per-step names."""
    half = output[..., direction * hidden : (direction + 1) * hidden]
    return half.transpose(0, 1) if batch_first else half


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
    from PIL import Image, ImageDraw, ImageFont

    from .models.crnn import preprocess

    font = ImageFont.load_default()
    _, _, right, bottom = font.getbbox(text)
    image = Image.new("L", (right + 8, bottom + 8), 255)
    ImageDraw.Draw(image).text((4, 4), text, fill=0, font=font)
    return preprocess(image, height)


def _compare_crnn(model, path, inputs, rtol) -> DiffReport:
    import os

    from .models.crnn import CRNN, preprocess

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
        points[a + "lstm.layers.0.h"] = (r + "rnn", lambda out: _directions(out[0], H, 0))
        points[a + "lstm.layers.0.reverse.h"] = (r + "rnn", lambda out: _directions(out[0], H, 1))
        points[a + "lstm.out"] = (r + "rnn", None)
        points[a + "out"] = (r + "linear", None)
    points["classifier.out"] = ("Prediction", None)
    return _report(model, "EasyOCR's network rebuilt from torch.nn", label, rtol, points, lambda: model(x), reference, lambda: reference(x))


def _lstm_layer(state: dict, prefix: str, layer: int, kind: str = "LSTM") -> nn.Module:
    """Layer ``layer`` of a torch.nn-layout recurrent module (weights ``{prefix}weight_ih_l{layer}``...) as a one-layer torch.nn module."""
    weights = {key[len(prefix) :].replace(f"_l{layer}", "_l0"): value for key, value in state.items()
               if key.startswith(prefix) and (key.endswith(f"_l{layer}") or key.endswith(f"_l{layer}_reverse"))}
    hidden, inputs = weights["weight_hh_l0"].shape[1], weights["weight_ih_l0"].shape[1]
    cls = nn.LSTM if kind == "LSTM" else nn.GRU
    module = cls(inputs, hidden, batch_first=True, bidirectional="weight_ih_l0_reverse" in weights)
    module.load_state_dict(weights, strict=True)
    return module.eval()


def _compare_char_lm(model, path, inputs, rtol) -> DiffReport:
    from .checkpoint import Checkpoint

    checkpoint = Checkpoint(path)
    state = {key: checkpoint.get(key) for key in checkpoint.keys()}
    text = "The government said on Tuesday that it would" if inputs is None else inputs
    if isinstance(text, torch.Tensor):
        ids, label = text, f"byte ids of shape {tuple(text.shape)}"
    elif isinstance(text, str):
        ids, label = model.encode(text)[None], f"{text!r} ({len(text.encode())} bytes)"
    else:
        raise InputError(f"CharLM compares on a text or byte ids (B, T); got {type(text).__name__}")
    layers = 1 + max(int(key.split("_l")[-1].split("_")[0]) for key in state if key.startswith("lstm.weight_ih_l"))
    theirs = {"embedding.out": nn.functional.embedding(ids, state["embedding.weight"])}
    x = theirs["embedding.out"]
    for k in range(layers):  # torch.nn, one layer at a time, to see each layer's output
        x, _ = _lstm_layer(state, "lstm.", k)(x)
        theirs[f"lstm.layers.{k}.h"] = x.transpose(0, 1)  # (T, B, H)
    theirs["head.out"] = nn.functional.linear(x, state["head.weight"], state["head.bias"])
    points = {name: None for name in ["embedding.out", *[f"lstm.layers.{k}.h" for k in range(layers)], "head.out"]}
    return _report(model, "torch.nn (Embedding, LSTM per layer, Linear)", label, rtol, points, lambda: model(ids), None, None, theirs)


def _compare_g2p(model, path, inputs, rtol) -> DiffReport:
    from .models.g2p import BOS, G2P

    checkpoint = G2P.open_checkpoint(path)
    array = lambda key: torch.as_tensor(checkpoint.get(key)).float()  # noqa: E731
    word = "activationist" if inputs is None else inputs
    if not isinstance(word, str):
        raise InputError(f"G2P compares on a word; got {type(word).__name__}")
    letters = model.encode_letters(word)[None]  # (1, T)
    phonemes = model.config.phonemes
    spoken = [phonemes.index(BOS)] + [phonemes.index(p) for p in model.phonemize(word)]
    decoder_in = torch.tensor([spoken])  # (1, S): teacher forcing on minipt's own pronunciation
    gru = {}
    for side in ("enc", "dec"):
        module = nn.GRU(array(f"{side}_w_ih").shape[1], array(f"{side}_w_hh").shape[1], batch_first=True)
        module.load_state_dict({f"{kind}_l0": array(f"{side}_{short}") for kind, short in
                                (("weight_ih", "w_ih"), ("weight_hh", "w_hh"), ("bias_ih", "b_ih"), ("bias_hh", "b_hh"))})
        gru[side] = module.eval()
    theirs = {"letter_embedding.out": nn.functional.embedding(letters, array("enc_emb"))}
    encoded, state = gru["enc"](theirs["letter_embedding.out"])
    theirs["encoder.layers.0.h"] = encoded.transpose(0, 1)
    theirs["phoneme_embedding.out"] = nn.functional.embedding(decoder_in, array("dec_emb"))
    decoded, _ = gru["dec"](theirs["phoneme_embedding.out"], state)
    theirs["decoder.layers.0.h"] = decoded.transpose(0, 1)
    theirs["classifier.out"] = nn.functional.linear(decoded, array("fc_w"), array("fc_b"))
    points = {name: None for name in theirs}
    label = f"{word!r} ({letters.shape[1]} letters with </s>; the decoder fed <s> and minipt's {len(spoken) - 1} phonemes)"
    return _report(model, "torch.nn (Embedding, GRU, Linear) on g2p-en's arrays", label, rtol, points, lambda: model(letters, decoder_in), None, None, theirs)


_FAMILIES = [
    ("BERT", _compare_bert),
    ("sentence encoder", _compare_sentence),
    ("GPT-2", _compare_gpt2),
    ("ResNet", _compare_resnet),
    ("EfficientNet", _compare_efficientnet),
    ("CRNN", _compare_crnn),
    ("CharLM", _compare_char_lm),
    ("G2P", _compare_g2p),
]
