"""``fuse()``: BERT's inference copy on oneDNN's packed linears (minipt.ops.onednn), against the
unfused model and a float64 ground truth; the plain-torch fallback; bfloat16 fidelity; the heads."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bert_reference import minilm_path
from minipt import Tokenizer
from helpers import OpCounter, assert_inference_only
from minipt.errors import ConfigError, InputError
from minipt.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel
from minipt.models.sentence import SentenceEncoder
from minipt.ops import onednn

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The new movie is awesome!",
    "The cat sits outside.", "The new movie is so great.", "Do you like pizza?",
    "I love pasta; I cook it every Sunday, with basil and too much parmesan.", "Short.",
    "Fused matrix multiplies, packed weights and bfloat16 activations 🚀.",
    "Paris is the capital of France.", "Quantum chromodynamics describes the strong interaction.",
    "She sells sea shells by the sea shore.", "The quick brown fox jumps over the lazy dog.",
    "Rain is expected tomorrow afternoon.", "My phone's battery died during the call.",
    "Stock markets fell sharply on Monday.", "He plays the guitar in a small band.",
    "A long sentence that goes on and on, clause after clause, so that the batch holds sequences of very different "
    "lengths and the padding mask has real work to do in every layer of the encoder.",
    "Kittens sleep most of the day.", "The library closes at nine.", "Is this the right train to Berlin?",
    "Photosynthesis turns light into chemical energy.", "We met at a conference in 2019.",
    "Thank you!", "The bridge was closed for repairs.",
]


@pytest.fixture(scope="module")
def minilm():
    return BertModel.from_pretrained(minilm_path()).eval()


@pytest.fixture(scope="module")
def padded_batch():
    batch = Tokenizer.from_pretrained(minilm_path())(SENTENCES[:6] + SENTENCES[-8:])
    assert not batch["attention_mask"].bool().all()
    return batch


def max_error(values, exact) -> float:
    return max((a.double() - b.double()).abs().max().item() for a, b in zip(values, exact))


# -- minipt.ops.onednn ------------------------------------------------------------------
@pytest.mark.parametrize("activation", list(onednn.ACTIVATIONS))
def test_packed_linear_equals_plain_torch(activation):
    """Odd sizes, a leading batch dimension; the error against float64 is at most 3x F.linear's own."""
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(3, 7, 37, generator=generator), torch.randn(29, 37, generator=generator), torch.randn(29, generator=generator)
    plain = onednn.ACTIVATIONS[activation][1]
    exact = plain(F.linear(x.double(), weight.double(), bias.double()))
    packed = onednn.pack_linear(weight, bias, activation, batch_hint=5)
    assert packed.onednn == onednn.available()  # True on every CPU these tests run on that has oneDNN
    got = packed(x)
    assert got.shape == (3, 7, 29) and got.dtype == torch.float32
    assert max_error([got], [exact]) <= 3 * max_error([plain(F.linear(x, weight, bias))], [exact]) + 1e-6


def test_packed_linear_adds_a_residual():
    generator = torch.Generator().manual_seed(1)
    x, weight, bias, residual = (torch.randn(s, generator=generator) for s in ((2, 5, 16), (24, 16), (24,), (2, 5, 24)))
    exact = F.linear(x.double(), weight.double(), bias.double()) + residual.double()
    got = onednn.pack_linear(weight, bias)(x, residual=residual)
    assert max_error([got], [exact]) <= 3 * max_error([F.linear(x, weight, bias) + residual], [exact]) + 1e-6
    with pytest.raises(InputError, match="residual only without an activation"):
        onednn.pack_linear(weight, bias, "gelu")(x, residual=residual)


@pytest.mark.parametrize("activation", list(onednn.ACTIVATIONS))
def test_the_plain_path_writes_over_its_product_with_gradients_still_right(activation):
    """F.linear's product is written over by the activation and by the residual (a large new tensor costs fresh pages):
    the values are F.linear's then the activation's, and the gradients (GELU's and tanh's read what was replaced) too."""
    generator = torch.Generator().manual_seed(2)
    x, weight, bias = torch.randn(4, 6, generator=generator), torch.randn(5, 6, generator=generator), torch.randn(5, generator=generator)
    plain = {None: lambda y: y, "relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"), "tanh": torch.tanh}[activation]
    packed = onednn.pack_linear(weight, bias, activation, use_onednn=False)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), plain(F.linear(x, weight, bias)), rtol=0, atol=0)
    x.requires_grad_(True)
    got = packed(x)
    (grad,) = torch.autograd.grad(got.pow(2).sum(), x)
    exact = x.detach().double().requires_grad_(True)
    expected = plain(F.linear(exact, weight.double(), bias.double()))
    (expected_grad,) = torch.autograd.grad(expected.pow(2).sum(), exact)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-5)
    if activation is None:
        residual = torch.randn(4, 5, generator=generator)
        with torch.inference_mode():
            torch.testing.assert_close(packed(x, residual=residual), F.linear(x, weight, bias) + residual, rtol=0, atol=0)
        torch.testing.assert_close(packed(x, residual=residual), F.linear(x, weight, bias) + residual, rtol=0, atol=0)


def test_gelu_post_op_is_the_exact_erf_form():
    """oneDNN's "gelu" post-op with algorithm "none" is erf-GELU; tanh-GELU differs by ~5e-4 here."""
    x = torch.linspace(-4, 4, 801).view(-1, 1)
    weight, bias = torch.ones(1, 1), torch.zeros(1)
    erf = onednn.pack_linear(weight, bias, "gelu")(x)
    assert (erf.double() - F.gelu(x.double())).abs().max() < 1e-6
    assert (erf - F.gelu(x, approximate="tanh")).abs().max() > 1e-4
    assert (onednn.pack_linear(weight, bias, "gelu_tanh")(x) - F.gelu(x, approximate="tanh")).abs().max() < 1e-6


def test_probe_fails_closed(monkeypatch):
    """Missing, raising or wrong private ops make the probe say no: pack_linear then runs plain torch."""
    assert onednn.probe() == torch.backends.mkldnn.is_available()

    def wrong(weight, bias, activation, batch_hint):  # a oneDNN that answers, wrongly
        return onednn.PackedLinear(weight * 2, bias, activation, None)

    def raising(*args):
        raise RuntimeError("no such op")

    for fake in (wrong, raising):
        monkeypatch.setattr(onednn, "_pack", fake)
        assert not onednn.probe() and not onednn.probe(torch.bfloat16)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not onednn.probe()


def test_pack_linear_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="'softplus'"):
        onednn.pack_linear(torch.ones(2, 3), None, "softplus")
    with pytest.raises(InputError, match=r"\(2, 3\) and \(3,\)"):
        onednn.pack_linear(torch.ones(2, 3), torch.ones(3))
    with pytest.raises(InputError, match="3 input features"):
        onednn.pack_linear(torch.ones(2, 3))(torch.ones(4, 5))


# -- fuse() on the real all-MiniLM-L6-v2 --------------------------------------------------
def _fused_against_float64(model, batch, fused):
    """Error of ``fused`` and of the unfused float32 model against the unfused model in float64."""
    model64 = copy.deepcopy(model).double()
    with torch.inference_mode():
        exact = model64(**batch, output_hidden_states=True)
        ours = model(**batch, output_hidden_states=True)
        got = fused(**batch, output_hidden_states=True)
    fields = lambda out: [out.last_hidden_state, out.pooler_output, *out.hidden_states]  # noqa: E731
    return max_error(fields(got), fields(exact)), max_error(fields(ours), fields(exact))


def test_fused_bert_equals_unfused_on_real_weights(minilm, padded_batch):
    """Padded batch: the fused model errs against float64 at most 3x what the unfused float32 model does."""
    fused = minilm.fuse()
    for layer in fused.layers:  # Q, K, V in one packed matmul; GELU a post-op of ffn_up's; every Linear packed
        assert isinstance(layer.attn.qkv_proj, onednn.PackedLinear) and layer.attn.q_proj is None
        assert layer.ffn_up.activation == "gelu" and isinstance(layer.act, torch.nn.Identity)
    assert not any(isinstance(m, torch.nn.Linear) for m in fused.modules())
    assert all(m.onednn == onednn.available() for m in fused.modules() if isinstance(m, onednn.PackedLinear))
    if onednn.available():  # each layer's two residual adds run inside out_proj's and ffn_down's matmuls
        with OpCounter() as ops_run, torch.inference_mode():
            fused(**padded_batch)
        apart = copy.deepcopy(fused)
        for layer in apart.layers:
            layer.residual_in_matmul = False
        with OpCounter() as ops_run_apart, torch.inference_mode():
            apart(**padded_batch)
        assert ops_run["minipt.packed_linear_add.default"] == 2 * len(fused.layers), dict(ops_run)
        assert ops_run_apart["aten.add.Tensor"] - ops_run["aten.add.Tensor"] == 2 * len(fused.layers)
    fused_error, unfused_error = _fused_against_float64(minilm, padded_batch, fused)
    assert fused_error <= 3 * unfused_error + 1e-6, (fused_error, unfused_error)
    assert minilm.layers[0].attn.q_proj.weight.requires_grad  # the original is untouched
    with torch.inference_mode():  # attention maps, as the unfused model returns them
        expected = minilm(**padded_batch, output_attentions=True).attentions
        got = fused(**padded_batch, output_attentions=True).attentions
    assert max_error(got, expected) < 1e-4


def test_fused_bert_fallback_equals_unfused(minilm, padded_batch, monkeypatch):
    """Without oneDNN (forced), fuse() builds the same model on F.linear and the activation."""
    monkeypatch.setattr(onednn, "available", lambda dtype=torch.float32: False)
    fused = minilm.fuse()
    packed = [m for m in fused.modules() if isinstance(m, onednn.PackedLinear)]
    assert len(packed) == 4 * 6 + 1 and not any(m.onednn for m in packed)
    fused_error, unfused_error = _fused_against_float64(minilm, padded_batch, fused)
    assert fused_error <= 3 * unfused_error + 1e-6, (fused_error, unfused_error)


def test_bfloat16_sentence_embeddings_keep_their_direction():
    """bfloat16 fused model: every sentence embedding's cosine to float32's is >= 0.999
    (measured on an AMD EPYC with AVX512-BF16 and oneDNN: lowest 0.9998, mean 0.99995 over these 32)."""
    encoder = SentenceEncoder.from_pretrained(minilm_path())
    reference = encoder.encode(SENTENCES, batch_size=16)
    encoder.encoder = encoder.encoder.fuse(torch.bfloat16)
    assert encoder.encoder.embeddings.token.weight.dtype == torch.bfloat16
    embeddings = encoder.encode(SENTENCES, batch_size=16)
    cosine = F.cosine_similarity(embeddings.float(), reference, dim=-1)
    print(f"bfloat16 fused: cosine to float32 min {cosine.min():.5f}, mean {cosine.mean():.5f}")
    assert cosine.min() >= 0.999, cosine.min()


def test_fused_model_is_for_inference_only(minilm, tmp_path):
    fused = minilm.fuse()
    assert_inference_only(minilm, fused, tmp_path)
    ids = torch.tensor([[101, 7592, 102]])
    assert not fused(ids).last_hidden_state.requires_grad  # no gradients even outside inference_mode
    assert torch.equal(copy.deepcopy(fused)(ids).last_hidden_state, fused(ids).last_hidden_state)  # copies share packed weights


# -- the heads, on small random models ----------------------------------------------------
def tiny_config(**overrides) -> BertConfig:
    values = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64, num_labels=3)
    return BertConfig(**{**values, **overrides})


@pytest.mark.parametrize("cls, hidden_act", [(BertForMaskedLM, "gelu"), (BertForMaskedLM, "gelu_new"), (BertForSequenceClassification, "gelu"),
                                             (BertForSequenceClassification, "silu")])
def test_fused_heads_equal_unfused(cls, hidden_act):
    torch.manual_seed(0)
    model = cls(tiny_config(hidden_act=hidden_act)).eval()
    ids = torch.randint(1, 99, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    fused = model.fuse()
    assert fused.fused and fused.bert.fused
    with pytest.raises(ConfigError, match=f"fused {cls.__name__}"):
        fused.train()
    with torch.inference_mode():
        exact = copy.deepcopy(model).double()(ids, mask).logits
        unfused_error = max_error([model(ids, mask).logits], [exact])
        fused_error = max_error([fused(ids, mask).logits], [exact])
    assert fused_error <= 3 * unfused_error + 1e-6, (fused_error, unfused_error)


# -- training: onednn.linear ----------------------------------------------------------
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_gradients_equal_f_linear(with_bias):
    """Output and the three gradients against float64: at most 3x F.linear's own float32 error."""
    generator = torch.Generator().manual_seed(2)
    x, weight = torch.randn(3, 7, 37, generator=generator), torch.randn(29, 37, generator=generator)
    bias = torch.randn(29, generator=generator) if with_bias else None
    cotangent = torch.randn(3, 7, 29, generator=generator)

    def run(fn, dtype):
        leaves = [t.detach().to(dtype, copy=True).requires_grad_() for t in (x, weight, bias) if t is not None]
        out = fn(*leaves)
        out.backward(cotangent.to(dtype))
        return [out.detach(), *(leaf.grad for leaf in leaves)]

    exact = run(F.linear, torch.float64)
    assert max_error(run(onednn.linear, torch.float32), exact) <= 3 * max_error(run(F.linear, torch.float32), exact) + 1e-6
    assert torch.equal(run(onednn.linear, torch.float64)[0], exact[0])  # float64 runs F.linear


def test_onednn_linear_sees_in_place_updates_and_falls_back(monkeypatch):
    weight = torch.randn(4, 5)
    x = torch.randn(2, 5)
    before = onednn.linear(x, weight)
    weight.mul_(2)  # an optimizer step: nothing is cached
    assert torch.allclose(onednn.linear(x, weight), 2 * before, atol=1e-5)
    monkeypatch.setattr(onednn, "available", lambda dtype=torch.float32: False)
    monkeypatch.setattr(onednn._OneDNNLinear, "apply", lambda *a: pytest.fail("oneDNN used without being available"))
    assert torch.allclose(onednn.linear(x, weight), F.linear(x, weight), atol=1e-6)
