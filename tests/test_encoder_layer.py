"""minipt.nn.EncoderLayer against torch.nn.TransformerEncoderLayer on the same weights, post-LN and pre-LN.

Both run the same aten ops on the "torch" backend, so outputs agree to 1e-5;
the "math" and "fused" backends compute attention and LayerNorm their own
way and are held to an error ratio against torch.nn in float64 (tests/helpers.py).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from minipt.nn import EncoderLayer, attention_bias, use_backend

from helpers import assert_error_ratio


def reference_of(layer: EncoderLayer, heads: int) -> nn.TransformerEncoderLayer:
    """torch.nn's layer holding ``layer``'s weights (Q, K, V stacked into in_proj as torch.nn keeps them)."""
    dim, inner = layer.ffn_up.in_features, layer.ffn_up.out_features
    act = {"GELU": "gelu", "ReLU": "relu"}[type(layer.act).__name__]
    reference = nn.TransformerEncoderLayer(dim, heads, inner, dropout=0.0, activation=act, layer_norm_eps=layer.attn_norm.eps,
                                           batch_first=True, norm_first=layer.norm_first)
    attn = layer.attn
    state = {
        "self_attn.in_proj_weight": torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
        "self_attn.in_proj_bias": torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]),
        "self_attn.out_proj.weight": attn.out_proj.weight, "self_attn.out_proj.bias": attn.out_proj.bias,
        "linear1.weight": layer.ffn_up.weight, "linear1.bias": layer.ffn_up.bias,
        "linear2.weight": layer.ffn_down.weight, "linear2.bias": layer.ffn_down.bias,
        "norm1.weight": layer.attn_norm.weight, "norm1.bias": layer.attn_norm.bias,
        "norm2.weight": layer.ffn_norm.weight, "norm2.bias": layer.ffn_norm.bias,
    }
    reference.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return reference.eval()


def randomised(layer: EncoderLayer, seed: int) -> EncoderLayer:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1 + 0.1 * noise if name.endswith("norm.weight") else 0.3 * noise)  # LayerNorm scales near 1
    return layer.eval()


@settings(max_examples=20, deadline=None)
@given(
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 8),
    inner=st.integers(1, 40),
    length=st.integers(1, 9),
    padded=st.integers(0, 8),
    norm_first=st.booleans(),
    act=st.sampled_from(["gelu", "relu"]),
    seed=st.integers(0, 2**16),
)
def test_matches_torch_nn_on_the_torch_backend(heads, head_dim, inner, length, padded, norm_first, act, seed):
    dim = heads * head_dim
    layer = randomised(EncoderLayer(dim, heads, inner, act=act, eps=1e-5, norm_first=norm_first), seed)
    reference = reference_of(layer, heads)
    x = torch.randn(2, length, dim, generator=torch.Generator().manual_seed(seed + 1))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length - min(padded, length - 1):] = 0  # the second row padded at the end, at least one token kept
    with torch.no_grad(), use_backend("torch", module=layer):
        ours, _ = layer(x, attention_bias(mask, length, length, dtype=x.dtype))
        theirs = reference(x, src_key_padding_mask=mask == 0)
    kept = mask.bool()
    torch.testing.assert_close(ours[kept], theirs[kept], atol=1e-5, rtol=1e-5)  # torch.nn leaves padded rows as they come


@pytest.mark.parametrize("backend", ["math", "fused"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_every_backend_within_an_error_ratio_of_torch_nn(backend, norm_first):
    layer = randomised(EncoderLayer(32, 4, 64, eps=1e-5, norm_first=norm_first), seed=3)
    reference = reference_of(layer, 4)
    x = torch.randn(3, 11, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), use_backend(backend, module=layer):
        ours, _ = layer(x)
    with torch.no_grad():
        exact = reference.double()(x.double())
        theirs = reference.float()(x)
    assert_error_ratio(ours, theirs, exact)


def test_attention_probabilities_come_back_when_asked():
    layer = EncoderLayer(8, 2, 16).eval()
    x = torch.randn(1, 5, 8)
    with torch.no_grad(), use_backend("math", module=layer):
        _, probs = layer(x, need_weights=True)
    assert probs.shape == (1, 2, 5, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2, 5))


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert", "albert", "vit", "clip"])
def test_the_transformer_families_build_their_layers_from_this_one(model_type):
    """BERT, RoBERTa, DistilBERT, ALBERT, ViT and CLIP differ in embeddings, names and sharing, not in the layer: every
    attention block of theirs sits in a minipt.nn.EncoderLayer, and ALBERT's shared layer is one module run at several depths."""
    from minipt import registry
    from minipt.nn import MultiHeadAttention

    family = next(f for f in registry.families() if f.model_type == model_type)
    for cls in family.classes:
        model = family.tiny_model(cls)
        owners = {name.rpartition(".")[0] for name, module in model.named_modules() if isinstance(module, MultiHeadAttention)}
        assert owners and all(isinstance(model.get_submodule(owner), EncoderLayer) for owner in owners), (cls.__name__, owners)
        if model_type == "albert":  # 4 layer steps on 2 shared groups: two layer modules
            assert len(owners) == model.config.num_hidden_groups * model.config.inner_group_num < model.config.num_hidden_layers


def test_a_layer_pickled_with_one_dropout_for_both_branches_still_runs():
    """A layer pickled before the feed-forward branch had its own dropout gets one of the same rate, in the same mode."""
    import pickle

    layer = EncoderLayer(16, 2, 32, dropout=0.3).train()
    del layer.ffn_dropout  # as such a layer was pickled
    loaded = pickle.loads(pickle.dumps(layer))
    assert loaded.ffn_dropout.p == 0.3 and loaded.ffn_dropout.training
    assert loaded.eval()(torch.randn(2, 5, 16))[0].shape == (2, 5, 16)


@pytest.mark.parametrize("backend", ["math", "torch", "fused"])
def test_a_causal_layer_given_a_padding_bias_stays_causal(backend):
    """EncoderLayer(causal=True) given attention_bias(mask, T, T) (padding only, as the module docstring builds it)
    computes what it computes on attention_bias(mask, T, T, causal=True): a later token changes no earlier position."""
    torch.manual_seed(0)
    layer = EncoderLayer(16, 2, 32, norm_first=True, causal=True).eval()
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    with torch.no_grad(), use_backend(backend, module=layer):
        expected = layer(x, attention_bias(mask, 5, 5, causal=True))[0]
        got = layer(x, attention_bias(mask, 5, 5))[0]
        changed = x.clone()
        changed[:, 3] = torch.randn(2, 16)
        later = layer(changed, attention_bias(mask, 5, 5))[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert torch.equal(later[:, :3], got[:, :3])
