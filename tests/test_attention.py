"""Attention, LayerNorm and GELU against torch's own implementations.

minipt's written-out equations and torch's kernels round differently, so every
comparison is an error ratio against a float64 run (tests/helpers.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minipt.errors import ConfigError, InputError
from minipt.nn import GELU, LayerNorm, MultiHeadAttention, attention_bias, get_backend, scaled_dot_product_attention, set_backend, use_backend

from helpers import assert_error_ratio


def _qkv(B=2, H=3, T=5, S=7, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, n, D, generator=g) for n in (T, S, S))


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3), heads=st.integers(1, 4), head_dim=st.integers(1, 8), length=st.integers(1, 9),
    causal=st.booleans(), padded=st.booleans(), seed=st.integers(0, 1000),
)
def test_against_torch_multihead_attention(batch, heads, head_dim, length, causal, padded, seed):
    """Same weights in torch.nn.MultiheadAttention, an independent implementation."""
    torch.manual_seed(seed)
    dim = heads * head_dim
    ours = MultiHeadAttention(dim, heads).eval()
    theirs = torch.nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    hidden = torch.randn(batch, length, dim)
    keep = torch.ones(batch, length, dtype=torch.bool)
    if padded:
        keep[:, length // 2 + 1 :] = False  # the first key always stays, so no row is fully masked
    bias = attention_bias(keep if padded else None, length, length, causal=causal)
    future = torch.ones(length, length, dtype=torch.bool).triu(1) if causal else None
    masks = dict(key_padding_mask=~keep if padded else None, attn_mask=future, average_attn_weights=False)
    with torch.no_grad():
        expected, expected_probs = theirs(hidden, hidden, hidden, **masks)
        exact, exact_probs = copy.deepcopy(theirs).double()(*3 * [hidden.double()], **masks)
    for backend in ("math", "torch"):
        with torch.no_grad(), use_backend(backend):
            out, probs = ours(hidden, bias, need_weights=True)
            out_fast, _ = ours(hidden, bias)
        assert_error_ratio([out, out_fast, probs], [expected, expected, expected_probs], [exact, exact, exact_probs], what=backend)


@pytest.mark.parametrize("backend", ["math", "torch"])
def test_fully_masked_rows_give_zeros_not_nan(backend):
    q, k, v = (t.requires_grad_() for t in _qkv())
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1] = False  # the second sequence is all padding
    bias = attention_bias(keep, 5, 7)
    out, probs = scaled_dot_product_attention(q, k, v, bias, backend=backend, need_weights=backend == "math")
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all() and (out[0] != 0).any()
    if probs is not None:
        assert (probs[1] == 0).all() and torch.allclose(probs[0].sum(-1), torch.ones(()))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_additive_minus_inf_mask_gives_no_nan():
    q, k, v = _qkv()
    additive = torch.zeros(2, 1, 1, 7)
    additive[0] = float("-inf")
    for backend in ("math", "torch"):
        out, _ = scaled_dot_product_attention(q, k, v, attention_bias(additive, 5, 7), backend=backend)
        assert torch.isfinite(out).all() and (out[0] == 0).all()


def test_causal_mask_is_aligned_bottom_right_with_a_cache():
    """3 new queries over 7 keys (4 cached): query i sees keys 0 .. 4 + i."""
    bias = attention_bias(None, 3, 7, causal=True)
    allowed = bias == 0
    expected = torch.tensor([[j <= 4 + i for j in range(7)] for i in range(3)])
    assert torch.equal(allowed, expected)


def test_padding_mask_that_masks_nothing_is_dropped():
    assert attention_bias(torch.ones(2, 5, dtype=torch.long), 5, 5) is None
    with pytest.raises(InputError, match=r"padding mask must have shape \(batch, 5\), got \(2, 4\)"):
        attention_bias(torch.ones(2, 4, dtype=torch.long), 5, 5)


def test_attention_dropout_only_in_training():
    attention = MultiHeadAttention(8, 2, dropout=0.5)
    hidden = torch.randn(2, 6, 8)
    attention.eval()
    a, _ = attention(hidden)
    b, _ = attention(hidden)
    assert torch.equal(a, b)
    attention.train()
    with use_backend("math"):
        c, _ = attention(hidden)
    assert not torch.allclose(a, c)


# -- LayerNorm and GELU: the written-out equations ------------------------------------
# Op by op the equations must be as accurate as torch's kernels: at most twice torch's own error against
# float64, plus one float32 ulp of the largest value (below that, two roundings cannot be told apart).
AS_ACCURATE = dict(ratio=2.0, ulps=1)


@pytest.mark.parametrize("shape", [(1, 1, 3000), (3, 7, 256), (1, 1, 1023), (4096, 384)])
def test_layer_norm_equation_is_as_accurate_as_torch(shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 1
    norm = LayerNorm(shape[-1], eps=1e-12)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    exact = F.layer_norm(x.double(), shape[-1:], norm.weight.double(), norm.bias.double(), 1e-12)
    with torch.no_grad(), use_backend("math"):
        ours = norm(x)
    assert_error_ratio(ours, F.layer_norm(x, shape[-1:], norm.weight, norm.bias, 1e-12), exact, **AS_ACCURATE)
    with use_backend("torch"):
        assert torch.equal(norm(x), F.layer_norm(x, shape[-1:], norm.weight, norm.bias, 1e-12))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_equation_is_as_accurate_as_torch(approximate):
    x = torch.linspace(-12, 12, 100_001)
    exact = F.gelu(x.double(), approximate=approximate)
    with use_backend("math"):
        ours = GELU(approximate)(x)
    assert_error_ratio(ours, F.gelu(x, approximate=approximate), exact, **AS_ACCURATE)


def test_layer_norm_is_a_state_dict_drop_in_for_torch():
    theirs = torch.nn.LayerNorm(10)
    ours = LayerNorm(10)
    ours.load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("backend", ["math", "torch", "fused"])
def test_norms_refuse_an_input_of_another_width(backend):
    """An input ending in 1 broadcast against the weight into the bias everywhere (math) or a torch error (torch), as
    RMSNorm did on every backend; a residual of another shape broadcast on two backends and was refused on one."""
    from minipt.errors import InputError
    from minipt.nn import RMSNorm

    norm = LayerNorm(16)
    with use_backend(backend, module=norm):
        for x in (torch.randn(2, 5, 1), torch.randn(2, 5, 8), torch.tensor(1.0), torch.randn(2, 5, 16).numpy()):
            with pytest.raises(InputError, match=r"LayerNorm\(16\) normalises a last dimension of 16, got an input of shape"):
                norm(x)
        with pytest.raises(InputError, match=r"residual must have the input's shape \(2, 5, 16\), got \(2, 1, 16\)"):
            norm(torch.randn(2, 5, 16), residual=torch.randn(2, 1, 16))
        assert norm(torch.randn(2, 5, 16)).shape == (2, 5, 16)
    with pytest.raises(InputError, match=r"RMSNorm\(16\) normalises a last dimension of 16, got an input of shape \(2, 5, 1\)"):
        RMSNorm(16)(torch.randn(2, 5, 1))
    # a weight pruned or parametrised is no entry of _parameters: the check reads the module's attribute
    import torch.nn.utils.prune as prune

    for module in (LayerNorm(16), RMSNorm(16)):
        prune.l1_unstructured(module, "weight", amount=0.5)
        assert module(torch.randn(2, 5, 16)).shape == (2, 5, 16)


def test_backend_switch():
    assert get_backend() == "torch"
    with use_backend("math"):
        assert get_backend() == "math"
        with pytest.raises(RuntimeError):
            with use_backend("torch"):
                raise RuntimeError
        assert get_backend() == "math"  # restored after an exception
    assert get_backend() == "torch"
    set_backend("math")
    try:
        assert get_backend() == "math"
    finally:
        set_backend("torch")
    with pytest.raises(ConfigError):
        set_backend(None)


def test_self_attention_names_inputs_it_cannot_take():
    """A padding mask or a bool mask passed as the bias (torch.finfo's TypeError before), a bias over other keys (a
    broadcast error inside torch), unbatched input or input of another width: each an InputError naming it."""
    from minipt.errors import InputError
    from minipt.nn import EncoderLayer

    mha, layer = MultiHeadAttention(16, 2).eval(), EncoderLayer(16, 2, 32).eval()
    x = torch.randn(2, 5, 16)
    for module in (mha, layer):
        for bias in (torch.ones(2, 5, dtype=torch.long), torch.ones(2, 1, 1, 5, dtype=torch.bool)):
            with pytest.raises(InputError, match=r"additive float mask .* got torch\.(int64|bool): attention_bias\(mask, T, T\) builds it"):
                module(x, bias)
        with pytest.raises(InputError, match=r"bias of shape \(2, 1, 1, 4\) does not broadcast to .* \(2, 2, 5, 5\)"):
            module(x, torch.zeros(2, 1, 1, 4))
        with pytest.raises(InputError, match=r"bias of shape \(5,\) does not broadcast to .* from 2 to 4 dimensions"):
            module(x, torch.zeros(5))  # sdpa's IndexError on two backends, and no future masked on math
        for bad in (x[0], torch.randn(2, 5, 8), x.numpy()):
            with pytest.raises(InputError, match=r"self-attention of width 16 takes hidden states \(batch, seq_len, 16\)"):
                module(bad)
        assert module(x, attention_bias(torch.tensor([[1, 1, 1, 0, 0], [1] * 5]), 5, 5))[0].shape == (2, 5, 16)
        assert module(x, torch.zeros(2, 2, 5, 5))[0].shape == (2, 5, 16)  # one bias per head
