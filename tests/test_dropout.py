"""minipt.nn.dropout: the counter-hash masks (the hash against its equations in Python integers, two draws
from each hash, the keep rate and independence as a binomial's, reproducible under torch.manual_seed), and
dropout's values and gradients against the mask it drew."""

import sys

import pytest
import torch
from torch import nn

from minipt.errors import ConfigError
from minipt.nn import Dropout, dropout
from minipt.nn.dropout import _ROUND_1, _ROUND_2, _WEYL, _ScaledByMask, keep_mask, uniform_int32

MASK = (1 << 32) - 1


def hash_in_python(index: int, key0: int, key1: int) -> int:
    """The hash with Python integers reduced modulo 2^32 (logical shifts), as a signed int32."""
    x = (index * (_WEYL & MASK) + key0) & MASK
    x ^= x >> 16
    x = (x * (_ROUND_1 & MASK)) & MASK
    x ^= key1 & MASK
    x ^= x >> 15
    x = (x * (_ROUND_2 & MASK)) & MASK
    x ^= x >> 16
    return x - (1 << 32) if x >= 1 << 31 else x


@pytest.mark.parametrize("keys", [(0, 0), (123456789, -987654321), (-(1 << 31), (1 << 31) - 1)])
def test_hash_wraps_as_its_equations_say(keys):
    numel = 70_001  # more than one vectorised block, and a tail
    values = uniform_int32(numel, torch.tensor(keys, dtype=torch.int32))
    for index in (0, 1, 2, 7, 255, 65_535, 65_536, 69_999, 70_000):
        assert int(values[index]) == hash_in_python(index, *keys), index


@pytest.mark.parametrize("p", [0.3, 0.9])
def test_each_hash_gives_the_draws_of_two_elements(p):
    """Element i's draw is one 16-bit half of the hash of counter i // 2 (as the bytes of an int32 lie in memory),
    read as an int16 and kept where it is at least p in 16-bit steps; an odd count uses the first half of the last."""
    mask = keep_mask((1001,), p, generator=torch.Generator().manual_seed(5))
    keys = torch.randint(-(1 << 31), (1 << 31) - 1, (2,), dtype=torch.int32, generator=torch.Generator().manual_seed(5)).tolist()
    threshold = round(p * (1 << 16)) - (1 << 15)
    for index in (0, 1, 2, 3, 511, 512, 998, 999, 1000):
        word = hash_in_python(index // 2, *keys) & MASK
        low, high = word & 0xFFFF, word >> 16
        first, second = (low, high) if sys.byteorder == "little" else (high, low)
        half = first if index % 2 == 0 else second
        draw = half - (1 << 16) if half >= 1 << 15 else half
        assert bool(mask[index]) == (draw >= threshold), index


def test_p_is_taken_in_steps_of_two_to_the_minus_16():
    """Within 2^-17 of 1 nothing is kept (an int16 threshold of 2^15 would wrap to keep everything); below 2^-17 all is."""
    n = 1_000_000
    assert not keep_mask((n,), 1 - 2.0**-18).any()
    assert keep_mask((n,), 2.0**-18).all()
    assert 0 < keep_mask((n,), 1 - 2.0**-15).sum() < 90  # one draw in 2^15 kept: about 31 here


def binomial_bound(n: int, p: float, sigmas: float = 5.0) -> float:
    return sigmas * (p * (1 - p) / n) ** 0.5


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.9])
def test_keep_rate_is_one_minus_p(p):
    n = 2_000_000
    kept = keep_mask((n,), p).double().mean().item()
    assert abs(kept - (1 - p)) < binomial_bound(n, 1 - p)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1].item()


def test_draws_are_uncorrelated_across_elements_and_calls():
    n = 1_000_000
    first, second = keep_mask((n,), 0.3), keep_mask((n,), 0.3)
    bound = 5 / n ** 0.5  # a correlation's standard deviation is about 1/sqrt(n)
    assert abs(correlation(first, second)) < bound
    for lag in (1, 2, 128, 1 << 16):  # neighbours, and a row or a head apart
        assert abs(correlation(first[:-lag], first[lag:])) < bound, lag
    assert not torch.equal(first, second)


def test_masks_follow_torch_manual_seed():
    torch.manual_seed(7)
    a = keep_mask((4, 5, 6), 0.5)
    torch.manual_seed(7)
    b = keep_mask((4, 5, 6), 0.5)
    assert a.shape == (4, 5, 6) and a.dtype == torch.bool
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dropout_zeroes_dropped_and_scales_kept(dtype):
    x = torch.randn(8, 16, 32, dtype=dtype)
    torch.manual_seed(3)
    out = dropout(x, 0.25)
    torch.manual_seed(3)
    keep = keep_mask(x.shape, 0.25)
    assert out.dtype == dtype
    assert torch.equal(out[~keep], torch.zeros_like(out[~keep]))
    torch.testing.assert_close(out[keep], x[keep] * (1 / 0.75), rtol=0, atol=0)


def test_gradient_is_the_same_mask_and_scale():
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    keep = keep_mask(x.shape, 0.4)
    assert torch.autograd.gradcheck(lambda t: _ScaledByMask.apply(t, keep, 1 / 0.6), (x,))
    upstream = torch.randn(6, 7, dtype=torch.float64)
    torch.manual_seed(11)
    dropout(x, 0.4).backward(upstream)
    torch.manual_seed(11)
    torch.testing.assert_close(x.grad, upstream * keep_mask(x.shape, 0.4) / 0.6, rtol=0, atol=0)


def test_evaluation_and_edge_probabilities():
    x = torch.randn(3, 4)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    for p in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="between 0 and 1"):
            dropout(x, p)


def test_module_is_a_torch_dropout():
    layer = Dropout(0.2)
    assert isinstance(layer, nn.Dropout) and layer.p == 0.2 and not dict(layer.state_dict())
    x = torch.ones(1000, 100)
    out = layer(x)
    assert abs((out == 0).double().mean().item() - 0.2) < binomial_bound(x.numel(), 0.2)
    assert torch.equal(layer.eval()(x), x)


def test_models_train_with_it_reproducibly():
    from minipt.models.bert import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)).train()
    assert all(type(m) is Dropout for m in model.modules() if isinstance(m, nn.Dropout))
    ids = torch.randint(0, 50, (2, 9))
    torch.manual_seed(5)
    first = model(ids).last_hidden_state
    torch.manual_seed(5)
    again = model(ids).last_hidden_state
    torch.manual_seed(6)
    other = model(ids).last_hidden_state
    assert torch.equal(first, again) and not torch.allclose(first, other)


def dropout_sites(model: nn.Module, *args, **kwargs) -> list[tuple[float, tuple[int, ...]]]:
    """(p, shape) of every dropout module applied with p > 0 in one training-mode forward pass, sorted."""
    sites = []
    hooks = [m.register_forward_hook(lambda m, args, out: sites.append((m.p, tuple(out.shape))))
             for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    try:
        model.train()(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return sorted(sites)


def test_each_family_drops_out_where_transformers_does(tmp_path):
    """The hidden dropouts a training step applies, and their sizes, are transformers': DistilBERT drops the
    feed-forward output only, ALBERT the attention output only (its AlbertLayer never applies the dropout it holds),
    CLIP no branch output (config.dropout is read by no layer); BERT and ViT drop both branches."""
    from bert_reference import transformers

    from minipt.models.albert import AlbertModel
    from minipt.models.bert import BertModel
    from minipt.models.clip import CLIPModel
    from minipt.models.distilbert import DistilBertModel
    from minipt.models.vit import ViTModel

    ids = torch.randint(3, 37, (2, 6))
    ids[:, -1] = 39  # CLIP's end-of-text token, where its text tower pools
    text = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, max_position_embeddings=16)
    cases = [
        ("BertModel", BertModel, transformers.BertConfig(**text, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0), (ids,)),
        ("DistilBertModel", DistilBertModel, transformers.DistilBertConfig(vocab_size=40, dim=16, n_layers=2, n_heads=2, hidden_dim=24,
                                                                            max_position_embeddings=16, dropout=0.1, attention_dropout=0.0), (ids,)),
        ("AlbertModel", AlbertModel, transformers.AlbertConfig(**text, embedding_size=8, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0), (ids,)),
        ("ViTModel", ViTModel, transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, image_size=8,
                                                      patch_size=4, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0), (torch.randn(2, 3, 8, 8),)),
        ("CLIPModel", CLIPModel, transformers.CLIPConfig(
            text_config=dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=8,
                             bos_token_id=37, eos_token_id=39, pad_token_id=1, dropout=0.1),
            vision_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, image_size=8, patch_size=4, dropout=0.1),
            projection_dim=8), (ids, torch.randn(2, 3, 8, 8))),
    ]
    for name, cls, config, inputs in cases:
        reference = getattr(transformers, name)._from_config(config, attn_implementation="eager")
        reference.save_pretrained(tmp_path / name)
        ours = cls.from_pretrained(tmp_path / name)
        theirs = dropout_sites(reference, *inputs)
        assert dropout_sites(ours, *inputs) == theirs, name
        assert name == "CLIPModel" or theirs, name  # a check that sees dropouts
