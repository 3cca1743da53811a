"""The backend seam, for every declared family: the choice reaches every block, and "fused" runs minipt's ops.

Each family is found through ``minipt.registry``; what "fused" must call is read off the blocks the
model holds (attention -> ``minipt::attention``, LayerNorm -> ``minipt::layer_norm`` or
``add_layer_norm``, GELU -> ``minipt::bias_gelu`` where it has its kernel (CUDA), minipt's Linear -> oneDNN's matmul where oneDNN
runs, LSTM/GRU -> ``minipt.ops.lstm_layer``/``gru_layer``, whose time loop calls the gate ops where they
have a kernel and their references directly elsewhere: ``minipt.ops._register.per_step``), so a block
that silently falls back to torch is caught.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import minipt.nn
import minipt.ops
from minipt import registry
from minipt.errors import ConfigError
from minipt.nn.backend import BackendBlock, blocks, get_backend
from minipt.ops import onednn

CASES = [(family, cls) for family in registry.families() for cls in family.classes]
IDS = [cls.__name__ for _, cls in CASES]


class OpCalls(TorchDispatchMode):
    """The names of the ops in the minipt and mkldnn namespaces called inside the mode."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        namespace = func.namespace
        if namespace in ("minipt", "mkldnn"):
            self.names.append(f"{namespace}::{func._opname}")
        return func(*args, **(kwargs or {}))


def expected_ops(model) -> set[str]:
    """The ops "fused" must call for the blocks this model holds."""
    kinds = {type(block).__name__ for block in blocks(model)}
    wanted = set()
    if kinds & {"MultiHeadAttention", "CausalSelfAttention"}:
        wanted.add("minipt::attention")
    if "GELU" in kinds and minipt.ops.gelu_takes_bias(next(model.parameters()).device):  # on the CPU: F.gelu after the biased product
        wanted.add("minipt::bias_gelu")
    if "LSTM" in kinds:
        wanted.add("minipt.ops.lstm_layer")
    if "GRU" in kinds:
        wanted.add("minipt.ops.gru_layer")
    if "Linear" in kinds and onednn.available(torch.float32):
        wanted.add("mkldnn::_linear_pointwise")
    return wanted


@pytest.mark.parametrize("family, cls", CASES, ids=IDS)
def test_fused_calls_minipt_ops(family, cls, monkeypatch):
    model = cls(family.tiny()).eval()
    model.set_backend("fused")
    args, kwargs = family.inputs(cls)
    calls = OpCalls()
    for name in ("lstm_layer", "gru_layer"):  # the recurrent fast path's layers, counted as they are called
        layer = getattr(minipt.ops, name)
        monkeypatch.setattr(minipt.ops, name, lambda *a, _layer=layer, _name=name, **k: calls.names.append(f"minipt.ops.{_name}") or _layer(*a, **k))
    with torch.no_grad(), calls:
        model(*args, **kwargs)
    called = set(calls.names)
    assert expected_ops(model) <= called, f"{cls.__name__} on 'fused' did not call {sorted(expected_ops(model) - called)}; it called {sorted(called)}"
    norms = [b for b in blocks(model) if type(b).__name__ == "LayerNorm"]
    if norms:
        assert called & {"minipt::layer_norm", "minipt::add_layer_norm"}, f"{cls.__name__}'s LayerNorms ran no minipt op"


@pytest.mark.parametrize("family, cls", CASES, ids=IDS)
def test_the_choice_is_configured_the_same_way_on_every_family(family, cls):
    by_config = cls(family.tiny().replace(backend="math"))
    if not any(isinstance(m, torch.nn.Linear) for m in by_config.modules()):  # convolutions only (CRAFT): no block has backends
        assert blocks(by_config) == [] and by_config.config.backend == "math"
        return
    assert blocks(by_config), f"{cls.__name__} holds no block that follows the backend"
    assert {b.backend for b in blocks(by_config)} == {"math"}
    model = cls(family.tiny())
    assert {b.backend for b in blocks(model)} == {None}
    model.set_backend("fused")
    assert {b.backend for b in blocks(model)} == {"fused"}
    with model.use_backend("math"):
        assert {b.backend for b in blocks(model)} == {"math"}
    assert {b.backend for b in blocks(model)} == {"fused"}
    with minipt.nn.use_backend("math", module=model):
        assert {get_backend(b.backend) for b in blocks(model)} == {"math"}
    assert {b.backend for b in blocks(model)} == {"fused"}


def test_use_backend_restores_after_an_error():
    model = minipt.nn.LayerNorm(4)
    with pytest.raises(RuntimeError), minipt.nn.use_backend("math", module=model):
        assert model.backend == "math"
        raise RuntimeError("inside")
    assert model.backend is None
    with pytest.raises(RuntimeError), minipt.nn.use_backend("math"):
        raise RuntimeError("inside")
    assert get_backend() == "torch"


def test_blocks_are_found_by_class_not_by_attribute():
    class LooksLikeABlock(torch.nn.Module):
        backend = None  # an attribute alone does not make a block

    holder = torch.nn.Sequential(LooksLikeABlock(), minipt.nn.GELU())
    minipt.nn.set_backend("math", module=holder)
    assert holder[0].backend is None and holder[1].backend == "math"
    assert isinstance(holder[1], BackendBlock)


def test_unknown_backend_in_a_config_is_named():
    family = registry.families()[0]
    with pytest.raises(ConfigError, match=r"unknown backend 'fast'; choose one of \('math', 'torch', 'fused'\)"):
        family.tiny().replace(backend="fast")


@pytest.mark.parametrize("value", [["fused"], {"fused": 1}, 1, True])
def test_a_backend_that_is_not_a_name_is_named(value):
    family = registry.families()[0]
    with pytest.raises(ConfigError, match=r"backend must be a name \('math', 'torch', 'fused'\) or None, got "):
        family.tiny().replace(backend=value)
    with pytest.raises(ConfigError, match=r"backend must be a name"):
        minipt.nn.set_backend(value, module=torch.nn.Sequential(minipt.nn.GELU()))
