"""Test set-up shared by every test module.

torchvision's PyPI wheel is a CUDA build whose compiled extension does not load
on a CPU-only torch; its pure-Python model code does. A bare package module is
put in ``sys.modules`` before anything imports torchvision (transformers probes
for it too), so ``from torchvision.models.resnet import resnet50`` works as the
test reference.
"""

import atexit
import os
import shutil
import tempfile

# torch.compile's compiled code is cached on disk, by default in one folder shared by every process of the
# machine (/tmp/torchinductor_<user>): code compiled by another minipt or another torch there was loaded by
# these tests and aborted the process. Each test process compiles into a folder of its own, as on a clean
# machine, removed when it ends.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="minipt-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

from minipt.reference import bare_torchvision  # noqa: E402

bare_torchvision()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
# fuse()'s Linears take oneDNN wherever it runs (not the faster kernel measured per shape), so that
# the tests check that path on every machine and do not depend on timings; test_cpu.py measures.
os.environ.setdefault("MINIPT_LINEAR", "onednn")

if not torch.cuda.is_available():
    # minipt.ops' Triton kernels run on CPU tensors through Triton's interpreter. The variable is
    # read when a kernel module is imported (lazily, by the first test that launches a kernel),
    # so setting it here does not import triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: recurrent models step through small matrices, where one
    thread is faster than two and does not stall when the CPU is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_compiler():
    """torch.compile's caches emptied first: dynamo recompiles a function at most a few times (its
    recompile limit), and the suite compiles the same blocks (EncoderLayer.forward, ...) for many
    models, so a fullgraph compile late in the suite would otherwise hit the limit and fail."""
    import torch

    torch.compiler.reset()
    yield
    torch.compiler.reset()


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
