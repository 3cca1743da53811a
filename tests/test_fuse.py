"""``model.fuse(dtype=None)`` on every declared family: one inference transform, one contract.

float32: the fused copy errs against the float64 model at most as the unfused float32 model does
(``assert_error_ratio``), on the family's example inputs, with random BatchNorm statistics so that a
fold in the wrong place shows. bfloat16: the outputs keep their direction (cosine >= 0.999). Every copy
refuses training, saving and a second fuse().
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves

from helpers import OpCounter, assert_error_ratio, assert_inference_only, randomise_batch_norm
from minipt import registry
from minipt.ops import onednn

CASES = [(family, cls) for family in registry.families() for cls in family.classes]
IDS = [cls.__name__ for _, cls in CASES]


def _model(family, cls):
    torch.manual_seed(0)
    return randomise_batch_norm(cls(family.tiny())).eval()


def _outputs(model, args, kwargs):
    dtype = next(model.parameters()).dtype
    if dtype == torch.float64:  # the float64 model reads float64 pixels
        args = tuple(a.double() if a.is_floating_point() else a for a in args)
    with torch.inference_mode():
        return [leaf for leaf in tree_leaves(model(*args, **kwargs)) if leaf.is_floating_point()]


@pytest.mark.parametrize("family, cls", CASES, ids=IDS)
def test_fused_float32_is_as_accurate_as_the_model(family, cls, tmp_path):
    model = _model(family, cls)
    args, kwargs = family.inputs(cls)
    fused = model.fuse()
    assert_inference_only(model, fused, tmp_path)
    assert not any(type(m) is torch.nn.Linear or type(m).__name__ == "Linear" for m in fused.modules()), "a Linear was left unpacked"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules()), "a BatchNorm was left unfolded"
    exact = _outputs(copy.deepcopy(model).double(), args, kwargs)
    assert_error_ratio(_outputs(fused, args, kwargs), _outputs(model, args, kwargs), exact, what=cls.__name__)


@pytest.mark.parametrize("family, cls", CASES, ids=IDS)
def test_fused_without_onednn_computes_the_same(family, cls, monkeypatch):
    monkeypatch.setattr(onednn, "available", lambda dtype=torch.float32: False)
    model = _model(family, cls)
    args, kwargs = family.inputs(cls)
    fused = model.fuse()
    assert not any(m.onednn for m in fused.modules() if isinstance(m, onednn.PackedLinear))
    exact = _outputs(copy.deepcopy(model).double(), args, kwargs)
    assert_error_ratio(_outputs(fused, args, kwargs), _outputs(model, args, kwargs), exact, what=cls.__name__)


@pytest.mark.parametrize("family, cls", CASES, ids=IDS)
def test_fused_bfloat16_keeps_the_direction(family, cls):
    model = _model(family, cls)
    args, kwargs = family.inputs(cls)
    fused = model.fuse(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in fused.parameters())  # float32 pixels are read as bfloat16
    for got, expected in zip(_outputs(fused, args, kwargs), _outputs(model, args, kwargs)):
        assert got.dtype == torch.bfloat16
        cosine = F.cosine_similarity(got.float().flatten(), expected.flatten(), dim=0)
        assert cosine >= 0.999, (cls.__name__, float(cosine))


@pytest.mark.skipif(not onednn.available(), reason="oneDNN is not available: the packed matmuls run on F.linear")
@pytest.mark.parametrize("family, cls", CASES, ids=IDS)
def test_residual_adds_run_inside_the_matmuls(family, cls):
    """Every call of a block with ``residual_in_matmul`` adds its residuals in oneDNN matmuls (the sum post-op): two, or the
    block's ``residual_adds`` (a T5 decoder layer's three: self-attention, cross-attention, feed-forward)."""
    fused = _model(family, cls).fuse()
    blocks = [m for m in fused.modules() if getattr(m, "residual_in_matmul", False)]
    if not blocks:
        pytest.skip(f"{cls.__name__} has no block whose residual adds join a matmul")
    calls = []
    for block in blocks:
        block.register_forward_hook(lambda module, *_: calls.append(getattr(module, "residual_adds", 2)))
    args, kwargs = family.inputs(cls)
    with OpCounter() as ops_run:
        _outputs(fused, args, kwargs)
    assert calls and ops_run["minipt.packed_linear_add.default"] == sum(calls), dict(ops_run)


@pytest.mark.usefixtures("fresh_compiler")
def test_a_fused_copy_compiles_where_the_products_are_chosen_per_shape(monkeypatch):
    """Without MINIPT_LINEAR (as users run it) each packed Linear chooses oneDNN or F.linear per shape; the F.linear
    path asked torch.get_num_threads(), which torch.compile(fullgraph=True) cannot trace."""
    monkeypatch.delenv("MINIPT_LINEAR", raising=False)
    family = next(f for f in registry.families() if f.model_type == "bert")
    cls = family.classes[0]
    fused = _model(family, cls).fuse()
    args, kwargs = family.inputs(cls)
    for got, expected in zip(_outputs(torch.compile(fused, fullgraph=True), args, kwargs), _outputs(fused, args, kwargs)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("fresh_compiler")
@pytest.mark.parametrize("family", registry.families(), ids=lambda f: f.model_type)
def test_a_fused_copy_compiles(family):
    """torch.compile of the inference copy: the packed matmuls are minipt ops inductor calls as they are."""
    cls = family.classes[0]
    fused = _model(family, cls).fuse()
    args, kwargs = family.inputs(cls)
    eager = _outputs(fused, args, kwargs)
    compiled = _outputs(torch.compile(fused, fullgraph=True), args, kwargs)
    convolutions_only = not any(isinstance(m, torch.nn.Linear) for m in _model(family, cls).modules())  # CRAFT: nothing to pack
    assert convolutions_only or any(isinstance(m, onednn.PackedLinear) and m.onednn for m in fused.modules()) or not onednn.available()
    for got, expected in zip(compiled, eager):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_changes_inside_a_fused_copy_are_refused():
    """The copy refused train(), .to() and pickling at its top only: requires_grad_(True) was accepted and backward
    reached 13 of 41 weights (the packed ones are no parameters), a layer's .train() turned dropout on inside the
    inference copy (and generate, which calls the inner model, ran with it), and a layer's .double() failed inside
    torch. Each is refused when asked, on the copy and on a deep copy of it."""
    from minipt.errors import ConfigError
    from minipt.models.bert import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=32, max_position_embeddings=20, hidden_dropout_prob=0.5)).eval()
    ids = torch.randint(0, 50, (2, 6))
    with pytest.raises(ConfigError, match="computes no gradients"):
        model.fuse().requires_grad_(True)
    changes = {r"bert.layers.0 inside a fused BertForSequenceClassification is part of an inference copy": lambda f: f.bert.layers[0].train(),
               r"bert.layers inside a fused .* is part of an inference copy": lambda f: f.bert.layers.train(),
               r"bert.layers.1 inside a fused .* computes no gradients": lambda f: f.bert.layers[1].requires_grad_(True),
               r"bert.layers.0 inside a fused .* is fixed to the dtype and device it was fused for": lambda f: f.bert.layers[0].double()}
    for message, change in changes.items():
        for fused in (model.fuse(), copy.deepcopy(model.fuse())):
            expected = fused(ids).logits
            with pytest.raises(ConfigError, match=message):
                change(fused)
            assert torch.equal(fused(ids).logits, expected) and not any(m.training for m in fused.modules())
    fused = model.fuse()
    fused.bert.layers.eval().requires_grad_(False)  # what an inference copy already is: allowed
    fused.bert.to(memory_format=torch.channels_last)  # no dtype or device: allowed
    # minipt.transfer set requires_grad on each parameter past the copy's refusal: 13 parameters trained, the rest not
    from minipt import transfer
    from minipt.errors import TrainingError
    from minipt.train import fit

    for step in (transfer.unfreeze, transfer.freeze, lambda f: transfer.param_groups(f, lr=1e-3),
                 lambda f: fit(f, torch.optim.SGD(f.parameters(), lr=0.1), [(ids, torch.tensor([0, 1]))],
                               loss=lambda m, batch: m(batch[0], labels=batch[1]).loss, epochs=1)):
        with pytest.raises(TrainingError, match=r"is or holds a fuse\(\) copy, made for inference"):
            step(fused)
    assert not any(p.requires_grad for p in fused.parameters())


def test_generate_of_a_fused_copy_cannot_be_put_in_training():
    """generate calls the inner model, not the copy's forward: a check made there would not see dropout turned on."""
    from minipt.errors import ConfigError
    from minipt.models.gpt2 import GPT2Config, GPT2LMHeadModel

    fused = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.5)).eval().fuse()
    with pytest.raises(ConfigError, match="transformer.layers inside a fused GPT2LMHeadModel is part of an inference copy"):
        fused.transformer.layers.train()
    first = fused.generate(torch.ones(1, 3, dtype=torch.long), max_new_tokens=4)
    assert torch.equal(fused.generate(torch.ones(1, 3, dtype=torch.long), max_new_tokens=4), first)
