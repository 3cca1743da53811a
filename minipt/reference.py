"""Side by side with the reference implementation: where does a minipt model stop matching the original?

``layer_diffs(model, source)`` builds the reference implementation of the
model's family from the same checkpoint, runs both on the same input and
compares them at every point the two share, in data-flow order: the largest
absolute difference, the same relative to the reference's largest value, and
the first point past the tolerance. A broken part shows up where it breaks.

Each family says where its reference computes what: the function
``compare_with_reference`` at the end of its model file (BERT against
transformers, ResNet against torchvision, EfficientNet-Lite against timm, the
recurrent models against torch.nn on the same weights), declared with the
family in ``minipt.registry``. This module is the engine they share: running
both sides, reading values at the named points, and the report.

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
from dataclasses import dataclass, field
from typing import Any, Callable

from collections.abc import Mapping

import torch
from torch import nn

from .checks import check_float
from .errors import ConfigError, InputError, MissingDependencyError


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



PACKAGES = {"open_clip": "open_clip_torch"}  # reference modules whose package is named otherwise


def import_reference(module: str, purpose: str):
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"comparing {purpose} needs {module} (pip install {PACKAGES.get(module, module)})")
    if module == "transformers":
        return import_transformers()
    bare_torchvision()
    return importlib.import_module(module)


def transformers_reference(reference_class, path, **kwargs):
    """transformers' ``reference_class`` loaded from ``path`` (eager attention, eval mode), every weight from the file:
    one it would initialise at random (a head the checkpoint lacks) is a ConfigError naming it, as the comparison
    would report a difference the model does not have."""
    reference, info = reference_class.from_pretrained(str(path), attn_implementation="eager", output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ConfigError(f"{path} lacks {len(missing)} of transformers' {reference_class.__name__} weights ({', '.join(missing[:3])}"
                          f"{', ...' if len(missing) > 3 else ''}), which transformers would initialise at random: compare with a "
                          "checkpoint that holds them (save_pretrained this model and compare with that folder)")
    return reference.eval()


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
def _ours(model: nn.Module, names: list[str], run: Callable[[], Any]) -> dict[str, torch.Tensor]:
    from .nn.backend import use_backend
    from .probe import capture

    with use_backend("math", module=model), capture(model, *names) as seen:  # every name exists on math
        run()
    return {name: seen[name] for name in seen}


def first(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _hooked(reference: nn.Module, points: dict[str, tuple[str, Callable | None]], run: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """Run ``reference`` and return, for each minipt name, ``pick(output)`` of the reference module named with it
    (``pick(inputs)`` for a name ending in ``:input``; the first tensor of the output or input by default)."""
    modules = dict(reference.named_modules())
    found, handles = {}, []

    def hook(name, pick, on_input):
        def record(module, args, output=None):
            value = (pick or first)(args if on_input else output)
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

    ``inputs``: for text models a list of texts (or a tokenised batch / id tensor (B, T); GPT-2's rows unpadded), for image models image paths
    (or a ready batch, also as {"pixel_values": batch}), for CRNN a line of text to render (or an image path or batch), for G2P a word; None runs
    each family's default (its ``compare_with_reference``). ``rtol`` bounds the difference relative to the reference's
    largest value at each point. The model runs on the "math" backend (its own choice is restored after).
    """
    from .hub import resolve
    from .registry import family_of

    family = family_of(model)
    if family is None and isinstance(getattr(model, "encoder", None), nn.Module):
        return layer_diffs(model.encoder, source, inputs, rtol=rtol)  # a pipeline (SentenceEncoder): its model
    if family is None or family.reference is None:
        raise ConfigError(f"minipt has no reference comparison for {type(model).__name__}")
    rtol = check_float("rtol", rtol, low=0)
    from .checkpoint import Checkpoint
    from .registry import model_class_for
    from .summary import evaluating

    path = resolve(source)
    with Checkpoint(path) as checkpoint:
        held = family_of(model_class_for(path, checkpoint))
        if held is not None and held is not family:
            raise ConfigError(f"{source} holds a checkpoint of the {held.model_type!r} family; {type(model).__name__} is compared with one of its own family's ({family.model_type!r})")
        if callable(getattr(type(model), "check_config", None)) and getattr(model, "config", None) is not None:
            type(model).check_config(model.config, checkpoint)  # sizes and depth against the file's, each named (a 3-layer model and a 6-layer file)
    with evaluating(model):
        return family.reference(model, path, inputs, rtol)



def _rows(names: list[str], where: dict[str, str], ours: dict, theirs: dict, rtol: float) -> list[DiffRow]:
    rows = []
    for name in names:
        if name not in ours or name not in theirs:
            side = "minipt" if name not in ours else "the reference"
            raise ConfigError(f"{side} computed no value for {name} on this input")
        rows.append(_compare(name, where[name], ours[name], theirs[name], rtol))
    return rows


def report(model, label: str, input_label: str, rtol: float, points: dict, ours_run, ref, ref_run, extra: dict | None = None) -> DiffReport:
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
def load_torchvision_state(reference: nn.Module, checkpoint, keymap, name: str, path) -> nn.Module:
    """``checkpoint``'s tensors, under their canonical torchvision names, in ``reference`` (eval mode); only the
    BatchNorm batch counters (``num_batches_tracked``, which older files lack) may be missing."""
    state = {keymap.canonical(key): checkpoint.get(key) for key in checkpoint.keys()}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    if unexpected or any(not key.endswith("num_batches_tracked") for key in missing):
        raise ConfigError(f"torchvision's {name} does not take {path}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return reference.eval()


def texts(inputs) -> list[str]:
    from .demo import DEMO_SENTENCES

    if inputs is None:
        return list(DEMO_SENTENCES)
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
        return list(inputs)
    raise InputError(f"text models compare on a list of texts, a tokenised batch or an id tensor; got {type(inputs).__name__}")


def batch_input_ids(batch: dict) -> torch.Tensor:
    """The ``input_ids`` of a tokenised batch; ``InputError`` when it holds none."""
    if not isinstance(batch.get("input_ids"), torch.Tensor):
        raise InputError(f"a tokenised batch holds input_ids (a tensor); got the keys {sorted(batch)}")
    return batch["input_ids"]


def token_batch(inputs, path) -> tuple[dict, str]:
    """A text encoder's inputs for a comparison, and how to describe them: token ids (B, T) as they are, a
    tokenised batch (a dict with input_ids), or texts (default: the demo sentences) through the tokenizer
    saved beside the checkpoint at ``path``."""
    from .demo import tokenizer_beside

    if isinstance(inputs, torch.Tensor):  # token ids (B, T), no padding
        return {"input_ids": inputs}, f"token ids of shape {tuple(inputs.shape)}"
    if isinstance(inputs, Mapping):  # a dict, transformers' BatchEncoding
        inputs = dict(inputs)
        return inputs, f"a batch of shape {tuple(batch_input_ids(inputs).shape)}"
    tokenizer = tokenizer_beside(path)
    if tokenizer is None:
        raise InputError(f"{path} holds no tokenizer; pass a tokenised batch (input_ids, attention_mask)")
    sentences = texts(inputs)
    return tokenizer(sentences), f"{len(sentences)} texts"


def heads(num_heads: int):
    """(B, T, C) -> (B, heads, T, C / heads): a reference's concatenated heads in minipt's per-head layout."""
    return lambda x: first(x).unflatten(-1, (num_heads, -1)).transpose(1, 2)


# -- images: ResNet and EfficientNet-Lite ----------------------------------------------------
def images(inputs, prepare) -> tuple[torch.Tensor, str]:
    import os

    if isinstance(inputs, Mapping):  # a processor's batch (a dict, transformers' BatchFeature): {"pixel_values": (B, 3, H, W)}
        values = list(inputs.values())
        if len(values) != 1 or not isinstance(values[0], torch.Tensor):
            raise InputError(f"an image model's batch holds one tensor of images (pixel_values); got the keys {sorted(map(str, inputs))}")
        inputs = values[0]
    if isinstance(inputs, torch.Tensor):
        return inputs, f"images of shape {tuple(inputs.shape)}"
    from .demo import demo_photo

    paths = [demo_photo()] if inputs is None else [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    batch = prepare(paths)
    return batch, f"{', '.join(os.path.basename(str(p)) for p in paths)} as {tuple(batch.shape)}"


# -- recurrent: CRNN, CharLM, G2P -----------------------------------------------------------
def directions(output: torch.Tensor, hidden: int, direction: int, batch_first: bool = True) -> torch.Tensor:
    """One direction of a torch.nn recurrent layer's output as (T, B, H), the layout of minipt's per-step names."""
    half = output[..., direction * hidden : (direction + 1) * hidden]
    return half.transpose(0, 1) if batch_first else half


def lstm_layer(state: dict, prefix: str, layer: int, kind: str = "LSTM") -> nn.Module:
    """Layer ``layer`` of a torch.nn-layout recurrent module (weights ``{prefix}weight_ih_l{layer}``...) as a one-layer torch.nn module."""
    weights = {key[len(prefix) :].replace(f"_l{layer}", "_l0"): value for key, value in state.items()
               if key.startswith(prefix) and (key.endswith(f"_l{layer}") or key.endswith(f"_l{layer}_reverse"))}
    hidden, inputs = weights["weight_hh_l0"].shape[1], weights["weight_ih_l0"].shape[1]
    cls = nn.LSTM if kind == "LSTM" else nn.GRU
    module = cls(inputs, hidden, batch_first=True, bidirectional="weight_ih_l0_reverse" in weights)
    module.load_state_dict(weights, strict=True)
    return module.eval()


