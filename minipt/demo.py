"""The demo's data: sentences, photos that ship inside common wheels, and the tokenizer saved beside a model.

The ``minipt`` commands and ``minipt.reference`` take their default inputs from here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import InputError

DEMO_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "A man is riding a white horse on an enclosed ground.",
    "The girl is carrying a baby.",
    "A monkey is playing drums.",
]
# (package, file inside it): photos with known ImageNet classes (cat, espresso, missile, palace, daisy)
DEMO_PHOTOS = [
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/rocket.jpg"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
]


def demo_photos() -> list[Path]:
    """The demo photos installed here (found without importing their packages)."""
    photos = []
    for package, relpath in DEMO_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            path = Path(list(spec.submodule_search_locations)[0]) / relpath
            if path.is_file():
                photos.append(path)
    return photos


def demo_photo() -> Path:
    """The first demo photo installed here (scikit-image's cat, ...)."""
    photos = demo_photos()
    if not photos:
        raise InputError("no demo photo is installed (pip install scikit-image); pass an image path")
    return photos[0]


def tokenizer_beside(path: Path):
    """The tokenizer saved in a checkpoint's folder (``tokenizer.json`` or GPT-2's BPE files), or None."""
    from .tokenizer import BPE_VOCAB, TOKENIZER_FILE, Tokenizer

    directory = path if path.is_dir() else path.parent
    if (directory / TOKENIZER_FILE).is_file() or (directory / BPE_VOCAB).is_file():
        return Tokenizer.from_pretrained(directory)
    return None
