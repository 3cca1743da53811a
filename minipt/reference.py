"""Side by side with the reference implementation: where do minipt and transformers differ?

``layer_diffs`` runs a minipt BERT and Hugging Face's on the same checkpoint
and the same batch and reports the largest absolute difference after the
embeddings, after every layer and at the pooler, so a broken part shows up
at the layer where it breaks. ``minipt demo`` and ``minipt diff`` print it.

transformers is imported here lazily and only here; minipt never needs it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types

import torch


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


@torch.inference_mode()
def layer_diffs(model, name_or_path, batch: dict) -> list[tuple[str, float]]:
    """``(place, max abs difference)`` between a minipt ``BertModel`` and transformers' on one batch."""
    transformers = import_transformers()
    if transformers is None:
        raise ImportError("the comparison needs transformers (pip install transformers)")
    from .hub import resolve

    reference = transformers.BertModel.from_pretrained(str(resolve(name_or_path)), add_pooling_layer=model.pooler is not None).eval()
    ours = model(**batch, output_hidden_states=True)
    theirs = reference(**batch, output_hidden_states=True)
    rows = [("embeddings" if i == 0 else f"layer {i}", (a - b).abs().max().item()) for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states))]
    if ours.pooler_output is not None:
        rows.append(("pooler", (ours.pooler_output - theirs.pooler_output).abs().max().item()))
    return rows
