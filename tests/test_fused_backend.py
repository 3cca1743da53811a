"""The backend vocabulary ("math", "torch", "fused") and minipt.nn's blocks on "fused", which
runs minipt.ops (on CPU: the ops' plain-torch references; their Triton kernels are checked in
test_ops_kernels.py).
"""

from __future__ import annotations

import re
import copy

import pytest
import torch
import torch.nn.functional as F

import minipt.ops as ops
from helpers import assert_error_ratio
from minipt.ops import onednn
from bert_reference import minilm_path
from minipt import Tokenizer
from minipt.errors import ConfigError
from minipt.models.bert import BertModel
from minipt.nn import (GELU, LayerNorm, Linear, MultiHeadAttention, attention_bias, get_backend, linear_then_activation,
                       scaled_dot_product_attention, set_backend, use_backend)


def test_sdpa_is_a_deprecated_alias_of_torch():
    with pytest.warns(DeprecationWarning, match="'torch'"):
        with use_backend("sdpa"):
            assert get_backend() == "torch"
    norm = LayerNorm(4)
    with pytest.warns(DeprecationWarning):
        set_backend("sdpa", module=norm)
    assert norm.backend == "torch"
    with pytest.raises(ConfigError, match="unknown backend 'flash'"):
        set_backend("flash")


def test_fused_blocks_equal_math():
    torch.manual_seed(0)
    x, residual = torch.randn(3, 7, 16), torch.randn(3, 7, 16)
    norm = LayerNorm(16, eps=1e-12)
    linear, act = torch.nn.Linear(16, 24), GELU()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    for run in (lambda: norm(x), lambda: norm(x, residual=residual), lambda: linear_then_activation(linear, act, x),
                lambda: GELU("tanh")(x)):
        with use_backend("math"):
            expected = run()
        with use_backend("fused"):
            assert torch.allclose(run(), expected, atol=1e-5)


def test_gelu_takes_the_linears_bias_only_where_bias_gelu_has_its_kernel(monkeypatch):
    """On the CPU the op would be its reference (an add, then GELU): the Linear keeps its bias, in its matmul."""
    assert ops.gelu_takes_bias("cuda") and not ops.gelu_takes_bias("cpu") and not ops.gelu_takes_bias(torch.device("cpu"))
    monkeypatch.setattr(ops, "bias_gelu", lambda *args: pytest.fail("bias_gelu on the CPU"))
    torch.manual_seed(0)
    x, linear = torch.randn(3, 7, 16, requires_grad=True), Linear(16, 24)
    with use_backend("fused"):
        out = linear_then_activation(linear, GELU(), x)
        out.sum().backward()
    torch.testing.assert_close(out, F.gelu(F.linear(x, linear.weight, linear.bias)), rtol=1e-5, atol=1e-5)
    assert linear.bias.grad is not None


@pytest.mark.parametrize("add_bias", [True, False])
def test_linear_follows_the_backend(add_bias):
    """minipt's Linear is torch.nn.Linear on "math"/"torch"; on "fused", float32 CPU products run
    oneDNN's matmul forward and backward (when the probe passes), the same function within
    torch's own float32 error against float64."""
    torch.manual_seed(0)
    linear = Linear(33, 17)
    assert isinstance(linear, torch.nn.Linear) and list(linear.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 5, 33, requires_grad=True)
    cotangent = torch.randn(2, 5, 17)

    def run(backend, dtype=torch.float32):
        module, inputs = copy.deepcopy(linear).to(dtype), x.detach().to(dtype).requires_grad_()
        set_backend(backend, module=module)
        out = module(inputs, add_bias=add_bias)
        grads = torch.autograd.grad(out, [inputs, module.weight, module.bias] if add_bias else [inputs, module.weight], cotangent.to(dtype))
        return out, grads

    with torch.no_grad():
        expected = F.linear(x, linear.weight, linear.bias if add_bias else None)
    plain, plain_grads = run("torch")
    assert torch.equal(plain, expected) and plain.grad_fn is not None and "OneDNN" not in type(plain.grad_fn).__name__
    fused, fused_grads = run("fused")
    if onednn.available():
        assert type(fused.grad_fn).__name__ == "_OneDNNLinearBackward"
    exact, exact_grads = run("fused", torch.float64)  # float64 multiplies on F.linear
    assert_error_ratio(fused, plain, exact, what="Linear on fused: output")
    assert_error_ratio(list(fused_grads), list(plain_grads), list(exact_grads), what="Linear on fused: gradients")


def test_linear_on_fused_traces_as_f_linear():
    """While torch.compile traces, the fused Linear is F.linear (no private op in the graph)."""
    linear = Linear(8, 4)
    set_backend("fused", module=linear)
    x = torch.randn(3, 8)
    compiled = torch.compile(linear, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x), F.linear(x, linear.weight, linear.bias), atol=1e-6)


def test_fused_attention_uses_the_op_for_padding_masks_only(monkeypatch):
    calls = []
    monkeypatch.setattr(ops, "attention", lambda *a, **k: calls.append(1) or ops._attention.attention(*a, **k))
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    keep = torch.tensor([[True] * 5, [True, True, False, False, False]])
    for bias in (None, attention_bias(keep, 5, 5), attention_bias(keep, 5, 5, causal=True)):
        expected, _ = scaled_dot_product_attention(q, k, v, bias, backend="math")
        out, _ = scaled_dot_product_attention(q, k, v, bias, backend="fused")
        assert torch.allclose(out, expected, atol=1e-5)
    assert len(calls) == 2  # the causal bias is not a padding mask: it runs on torch
    attention = MultiHeadAttention(8, 2, dropout=0.5).train()
    with use_backend("fused"):
        attention(torch.randn(2, 4, 8))  # attention dropout: torch's kernel
    assert len(calls) == 2


def test_fused_attention_keeps_an_additive_mask_of_the_padding_shape(monkeypatch):
    """A (B, 1, 1, S) or causal (B, 1, T, S) bias was read as a padding mask (kept where above the lowest float):
    a -1e4 mask or a soft bias was dropped, a user's 4-D causal mask cut to its last row."""
    calls = []
    monkeypatch.setattr(ops, "attention", lambda *a, **k: calls.append(1) or ops._attention.attention(*a, **k))
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    keep = torch.tensor([[True] * 5, [True, True, False, False, False]])
    classic = (1.0 - keep.float())[:, None, None, :] * -1e4  # transformers' old extended mask
    soft = torch.randn(2, 1, 1, 5)
    own_causal = torch.randn(2, 1, 5, 5).triu(1) * -1e9
    for bias, causal in ((classic, False), (soft, False), (own_causal, True)):
        expected, _ = scaled_dot_product_attention(q, k, v, bias, causal=causal, backend="math")
        out, _ = scaled_dot_product_attention(q, k, v, bias, causal=causal, backend="fused")
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert not calls  # none of them is the padding mask the op takes
    scaled_dot_product_attention(q, k, v, attention_bias(keep, 5, 5, causal=True), causal=True, backend="fused")
    assert len(calls) == 1  # padding with causal on top still takes it


def test_additive_masks_of_the_wrong_shape_are_named():
    from minipt.errors import ConfigError, InputError
    from minipt.models.bert import BertConfig

    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4, intermediate_size=32)).eval()
    ids = torch.randint(0, 50, (2, 6))
    for mask in (torch.zeros(2, 1, 1, 5), torch.zeros(3, 1, 1, 6), torch.zeros(2, 3, 6, 6), torch.zeros(2, 6)[None, None, None]):
        with pytest.raises(InputError, match=r"attention_mask of shape .* is neither a padding mask \(2, 6\) nor an additive mask broadcastable to"):
            model(ids, mask)
    model(ids, torch.zeros(1, 4, 6, 6))  # broadcastable over the batch, one mask per head
    for backend in ("torch", "fused"):  # and over the keys, as transformers takes it (fused read a padding mask of 1 key)
        with use_backend(backend):
            model(ids, torch.zeros(2, 1, 1, 1))
    for mask in (torch.zeros(2, 1, 1, 5), torch.zeros(6), torch.zeros(())):  # 1-D and 0-D: an IndexError in the check itself
        with pytest.raises(InputError, match=rf"has 3 or 4 dimensions broadcastable to \(batch, heads, 6, 6\), got {re.escape(str(tuple(mask.shape)))}"):
            attention_bias(mask, 6, 6)
    for heads in (0, -4, 2.0):
        with pytest.raises(ConfigError, match=f"num_heads must be a positive integer, got {heads}"):
            MultiHeadAttention(32, heads)


def test_fused_layer_norm_under_autocast_returns_what_the_torch_path_returns():
    """It cast everything to float32: a bfloat16 model under autocast gave float32 on fused, bfloat16 elsewhere."""
    from minipt.nn import LayerNorm

    x, residual = torch.randn(2, 8).bfloat16(), torch.randn(2, 8)
    for norm, args in ((LayerNorm(8).bfloat16(), (x,)), (LayerNorm(8).bfloat16(), (x, residual.bfloat16())),  # a bfloat16 model
                       (LayerNorm(8), (x,)), (LayerNorm(8), (x, residual))):  # a float32 model: a Linear's bfloat16 output, its residual
        dtypes = {}
        for backend in ("torch", "fused"):
            with torch.autocast("cpu", dtype=torch.bfloat16), use_backend(backend):
                dtypes[backend] = norm(*args).dtype
        assert dtypes["fused"] == dtypes["torch"], (args, dtypes)


def test_a_model_on_the_meta_device_runs_the_fused_attention_with_a_mask():
    """minipt.summary runs models on meta tensors: the padding check compared values that are not there."""
    from minipt.models.gpt2 import GPT2Config, GPT2Model

    with torch.device("meta"):
        model = GPT2Model(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
        ids, mask = torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
    with use_backend("fused"):
        assert model(ids, mask).last_hidden_state.shape == (2, 5, 16)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "albert"])
def test_post_ln_encoders_run_on_fused_under_autocast(family):
    """add_layer_norm met a bfloat16 matmul output beside float32 weights and refused, naming the caller's tensors."""
    from minipt import registry

    found = next(f for f in registry.families() if f.model_type == family)
    cls = next(c for c in found.classes if c.__name__.endswith("ForSequenceClassification"))
    torch.manual_seed(0)
    model = found.tiny_model(cls).train()
    args, kwargs = found.inputs(cls)
    outputs = {}
    for backend in ("torch", "fused"):
        torch.manual_seed(1)  # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16), use_backend(backend):
            outputs[backend] = model(*args, **kwargs).logits
    outputs["fused"].float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    torch.testing.assert_close(outputs["fused"].float(), outputs["torch"].float(), atol=0.05, rtol=0.05)  # bfloat16 products


@pytest.fixture(scope="module")
def minilm():
    return BertModel.from_pretrained(minilm_path()).eval()


def _forward_and_grads(model, batch, backend, cotangent):
    model.zero_grad()
    with use_backend(backend):
        out = model(**batch).last_hidden_state  # (B, T, H)
    (out * cotangent.to(out.dtype)).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]  # the pooler gets none


def test_bert_fused_equals_math_on_real_weights(minilm, monkeypatch):
    """all-MiniLM-L6-v2 on a padded batch, outputs and every parameter's gradient: "fused" in
    float32 against "math" in float64 may err at most twice as much as torch's own float32
    kernels (the "torch" backend) do, plus a floor. Seen on CPU: fused 2.5e-5 (outputs) and
    4.6e-3 (gradients), torch 6.4e-5 and 2.5e-2, math in float32 6.0e-6 and 1.1e-3."""
    called = set()
    for name in ("attention", "layer_norm", "add_layer_norm", "bias_gelu"):
        op = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _op=op, _name=name, **k: called.add(_name) or _op(*a, **k))
    tokenizer = Tokenizer.from_pretrained(minilm_path())
    batch = tokenizer(["Fused kernels, with references.", "Short."])
    assert not batch["attention_mask"].bool().all()
    cotangent = torch.randn(*batch["input_ids"].shape, minilm.config.hidden_size)

    out64, grads64 = _forward_and_grads(copy.deepcopy(minilm).double(), batch, "math", cotangent)
    out_fused, grads_fused = _forward_and_grads(minilm, batch, "fused", cotangent)
    assert called == {"attention", "layer_norm", "add_layer_norm"} | ({"bias_gelu"} if ops.gelu_takes_bias("cpu") else set())
    out_torch, grads_torch = _forward_and_grads(minilm, batch, "torch", cotangent)

    def error(values, exact):
        return max((a.double() - b).abs().max().item() for a, b in zip(values, exact))

    floor = 1e-6 * max(g.abs().max().item() for g in [out64, *grads64])
    assert error([out_fused], [out64]) <= 2 * error([out_torch], [out64]) + floor
    assert error(grads_fused, grads64) <= 2 * error(grads_torch, grads64) + floor
