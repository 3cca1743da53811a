"""Test set-up shared by every test module.

torchvision's PyPI wheel is a CUDA build whose compiled extension does not load
on a CPU-only torch; its pure-Python model code does. A bare package module is
put in ``sys.modules`` before anything imports torchvision (transformers probes
for it too), so ``from torchvision.models.resnet import resnet50`` works as the
test reference.
"""

import os

import pytest

from minipt.reference import bare_torchvision

bare_torchvision()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
