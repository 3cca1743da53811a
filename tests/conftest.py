"""Test set-up shared by every test module.

torchvision's PyPI wheel is a CUDA build whose compiled extension does not load
on a CPU-only torch; its pure-Python model code does. A bare package module is
put in ``sys.modules`` before anything imports torchvision (transformers probes
for it too), so ``from torchvision.models.resnet import resnet50`` works as the
test reference.
"""

import importlib.machinery
import importlib.util
import os
import sys
import types

import pytest


def _bare_torchvision() -> None:
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


_bare_torchvision()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
