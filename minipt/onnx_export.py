"""ONNX export of the classifiers (the text encoders' and the image models'), for runtimes outside Python.

    export_onnx(model, "bert.onnx")              # inputs named as in minipt, batch (and length) dynamic
    onnxruntime.InferenceSession("bert.onnx").run(None, {"input_ids": ..., "attention_mask": ...})

It runs ``torch.onnx.export`` with ``dynamo=True``: the exporter built on
``torch.export`` (minipt's input checks step aside while torch.export traces,
so the graph has no breaks), which torch keeps developing, where the older
TorchScript tracer is deprecated. Needs the ``onnx`` extra (onnx and
onnxscript; onnxruntime to run the file).
The graph returns the logits, one tensor. BERT's padding mask enters as 0/1 integers and
is turned into the additive float mask inside the graph, so the exported graph
has no branch on the data (minipt skips the mask when nothing is padded; a
graph cannot).

A ``CLIPModel`` exports as one graph of both towers: inputs ``input_ids``,
``attention_mask`` and ``pixel_values`` (captions and images counted apart),
outputs ``text_embeds`` and ``image_embeds``, the projected features
(``get_text_features``, ``get_image_features``, not normalised).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .checks import check_int
from .errors import InputError, SaveError
from .files import TEMPORARY_PREFIX, atomic_path
from .nn.backend import blocks, get_backend, use_backend


class _TextClassifierLogits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        additive = (1.0 - attention_mask.to(torch.float32)) * torch.finfo(torch.float32).min  # (B, T): 0 keep, lowest mask
        return self.model(input_ids, additive[:, None, None, :]).logits  # (B, 1, 1, T), an additive mask; (B, num_labels)


class _CLIPFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.get_text_features(input_ids, attention_mask), self.model.get_image_features(pixel_values)  # (B_t, D), (B_i, D)


def _clip_graph(model: nn.Module, batch: int, length: int):
    """CLIPModel's graph: captions of at most its context, images of its image_size."""
    text, vision = model.config.text_config, model.config.vision_config
    length = min(length, text.max_position_embeddings)
    ids = torch.randint(0, text.vocab_size, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # padding in the example, so the graph masks
    if text.eos_token_id is not None and text.eos_token_id < text.vocab_size:  # each caption ends where the tower pools, as CLIP's tokenizer ends it
        ids[:, -1], ids[0, length // 2 - 1] = text.eos_token_id, text.eos_token_id
    pixels = torch.randn(batch + 1, vision.num_channels, vision.image_size, vision.image_size)  # another count than the captions'
    dynamic = {"input_ids": {0: "text_batch", 1: "length"}, "attention_mask": {0: "text_batch", 1: "length"}, "pixel_values": {0: "image_batch"}}
    return _CLIPFeatures(model).eval(), (ids, mask, pixels), list(dynamic), dynamic, ["text_embeds", "image_embeds"]


def _graph(model: nn.Module, batch: int, length: int, image_size: int | None):
    """The module to export, example inputs, their names and dynamic dimensions, and the outputs' names."""
    from .models.classifier import HasClassifier
    from .models.clip import CLIPModel
    from .registry import family_of

    if isinstance(model, CLIPModel):
        return _clip_graph(model, batch, length)

    family = family_of(model) if isinstance(model, HasClassifier) else None
    if family is None or family.reads is None:
        raise InputError(f"export_onnx handles minipt's classifiers (text and images) and CLIPModel, not {type(model).__name__}")
    if len(family.reads.default_size(model).split("x")) == 2:  # token ids: a text classifier
        ids = torch.randint(0, model.config.vocab_size, (batch, length))
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, length // 2 :] = 0  # padding in the example, so the graph masks
        names = ["input_ids", "attention_mask"]
        return _TextClassifierLogits(model).eval(), (ids, mask), names, {name: {0: "batch", 1: "length"} for name in names}, ["logits"]
    channels = getattr(model.config, "in_channels", 3)
    image_size = image_size or int(family.reads.default_size(model).split("x")[-1])  # the model's own (ViT: config.image_size)
    return model, (torch.randn(batch, channels, image_size, image_size),), ["x"], {"x": {0: "batch"}}, ["logits"]


def export_onnx(model: nn.Module, path, *, batch: int = 2, length: int = 16, image_size: int | None = None) -> Path:
    """Write ``model`` (in eval mode) as an ONNX file whose one output, ``logits``, is the model's (a CLIPModel's
    two: ``text_embeds`` and ``image_embeds``).

    ``batch``, ``length`` and ``image_size`` (None: the model's own, ``config.image_size`` or 224) size the example
    the graph is traced on; the batch and the length stay dynamic in the file. A size of 1 is traced as 2 (torch.export
    fixes a dimension it meets at 1: ALBERT's graph then ran at that length only). The model is run on them once
    first, so an input it refuses (a length past its positions) is named as its own error. The graph computes in
    float32 (ONNX Runtime's CPU kernels have no float64 GELU or bfloat16 sums): a model of another dtype is refused;
    blocks on the ``"fused"`` backend are exported on ``"torch"`` (the same function, in ONNX's operators).

    The weights go inside the file, written atomically (readers see the old file or the new one).
    Past ONNX's 2 GB limit the exporter puts them in ``<name>.data`` and names that file inside the
    graph, so it exports into a scratch folder beside ``path`` under the final name, then moves the
    weights' file into place before the graph. ``SaveError`` when ``path`` cannot be written. The model is
    left in the mode it was in. Export the model itself: a ``fuse()`` copy's packed oneDNN weights and an int8
    model's torchao tensors have no ONNX operators (ONNX Runtime fuses and quantises the graph on its own)."""
    from .transfer import is_quantized

    if getattr(model, "fused", False) or is_quantized(model):
        what = "a fuse() copy (packed oneDNN weights)" if getattr(model, "fused", False) else "an int8 model (torchao tensors)"
        raise InputError(f"export_onnx takes the model itself, not {what}: ONNX has no operators for it; "
                         "export the float model (ONNX Runtime optimises and quantises the graph on its own)")
    batch, length = max(2, check_int("batch", batch, low=1)), max(2, check_int("length", length, low=1))
    image_size = check_int("image_size", image_size, low=1, optional=True)
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()} - {"torch.float32"})
    if dtypes:
        raise InputError(f"export_onnx writes a float32 graph; {type(model).__name__} holds {', '.join(dtypes)} weights "
                         "(ONNX Runtime's CPU kernels lack some of their operators): export model.float()")
    path = Path(path)
    training = model.training
    fused = any(get_backend(block.backend) == "fused" for block in blocks(model))
    try:
        with use_backend("torch", model) if fused else contextlib.nullcontext():
            module, example, names, dynamic, outputs = _graph(model.eval(), batch, length, image_size)
            try:
                with torch.no_grad():
                    module(*example)  # the model's own checks, on the example, before torch.export wraps what they raise
            except InputError as err:
                shapes = ", ".join(f"{name} {tuple(x.shape)}" for name, x in zip(names, example))
                raise InputError(f"export_onnx's example inputs ({shapes}; batch=, length=, image_size= size them): {err}") from None
            _write_onnx(module, example, names, dynamic, outputs, path)
    finally:
        model.train(training)
    return path


def _write_onnx(module, example, names, dynamic, outputs, path: Path) -> None:
    try:
        scratch = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX, dir=path.parent))
        try:
            with warnings.catch_warnings(), torch.no_grad():  # the tracer's notes on Python values it fixes (input checks)
                warnings.simplefilter("ignore")
                torch.onnx.export(module, example, str(scratch / path.name), dynamo=True, input_names=names,
                                  output_names=outputs, dynamic_axes=dynamic, external_data=False)
            for written in sorted(scratch.iterdir(), key=lambda file: file.name == path.name):  # the graph last
                with atomic_path(path.parent / written.name) as temporary:
                    os.replace(written, temporary)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except SaveError:
        raise
    except OSError as err:
        raise SaveError(f"cannot write {path}: {err.strerror or err}") from err
