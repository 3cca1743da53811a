"""Regenerate minipt/models/imagenet_classes.txt: the 1000 ImageNet-1k class names, one per line, in index order.

The names are torchvision's ``_IMAGENET_CATEGORIES``, read from the text of
``torchvision/models/_meta.py`` with ``ast`` (torchvision is not imported).

    python bench/make_imagenet_classes.py
"""

import ast
import importlib.util
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "minipt" / "models" / "imagenet_classes.txt"


def imagenet_categories() -> list[str]:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchvision is not installed (pip install torchvision); its wheel carries the class names")
    source = Path(list(spec.submodule_search_locations)[0]) / "models" / "_meta.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_IMAGENET_CATEGORIES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"{source} has no _IMAGENET_CATEGORIES")


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # no options: --help says what it writes
    names = imagenet_categories()
    assert len(names) == 1000 and all("\n" not in n for n in names), len(names)
    OUT.write_text("\n".join(names) + "\n")
    print(f"wrote {len(names)} names to {OUT}")
