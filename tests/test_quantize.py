"""int8 quantisation through torchao: smaller models whose outputs stay close to the float model's."""

import subprocess
import sys

import pytest
import torch
from torch.utils._pytree import tree_leaves

import minipt.nn
from minipt import registry, transfer
from minipt.errors import InputError, MissingDependencyError
from minipt.models.bert import BertConfig, BertForSequenceClassification
from minipt.models.char_lm import CharLM, CharLMConfig
from minipt.quantize import Int8WeightRNN, quantize_int8, size_bytes

pytest.importorskip("torchao", reason="int8 quantisation needs torchao (the quantize and test extras)")


def _relative_error(quantized, reference):
    return ((quantized - reference).abs().max() / reference.abs().max()).item()


def _int8(tensor) -> bool:
    return type(tensor).__module__.startswith("torchao.")


def test_bert_linear_layers():
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, num_labels=3)).eval()
    quantized = quantize_int8(model)
    linears = [m for m in quantized.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 6 + 2 and all(_int8(m.weight) and not _int8(m.bias) for m in linears)  # q, k, v, out, up, down per layer; pooler, classifier
    assert not _int8(quantized.bert.embeddings.token.weight)  # embeddings stay float
    assert type(model.bert.layers[0].ffn_up) is minipt.nn.Linear and not _int8(model.bert.layers[0].ffn_up.weight)  # the original is untouched
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        assert _relative_error(quantized(ids).logits, model(ids).logits) < 0.1
    assert size_bytes(quantized) < 0.7 * size_bytes(model)  # the embeddings stay float
    assert transfer.is_quantized(quantized) and not transfer.is_quantized(model)


def test_without_exact_int8_products_the_weights_stay_int8_and_the_products_float(monkeypatch):
    """On an x86 CPU below VNNI the int8 products saturate (logits moved 15-40%): weight-only int8 there."""
    from minipt.ops import cpu

    monkeypatch.setattr(cpu, "int8_products_exact", lambda info=None: False)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, num_labels=3)).eval()
    quantized = quantize_int8(model)
    linears = [m for m in quantized.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 6 + 2 and all(_int8(m.weight) for m in linears)
    assert all(getattr(m.weight, "act_quant_kwargs", None) is None for m in linears)  # no input quantisation: float products
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        assert _relative_error(quantized(ids).logits, model(ids).logits) < 0.05
    assert size_bytes(quantized) < 0.7 * size_bytes(model)


@pytest.mark.parametrize("saved_exact", [True, False])
def test_an_int8_state_dict_loads_on_a_cpu_that_multiplies_otherwise(monkeypatch, saved_exact):
    """Saved where the products run in int8 and loaded where they cannot (or the reverse): the same int8 weights,
    computed as the loading CPU computes them (torchao's copy_ refused them over their metadata)."""
    from minipt.ops import cpu

    def model():
        return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128, num_labels=3)).eval()

    torch.manual_seed(0)
    float_model = model()
    monkeypatch.setattr(cpu, "int8_products_exact", lambda info=None: saved_exact)
    state = quantize_int8(float_model).state_dict()
    monkeypatch.setattr(cpu, "int8_products_exact", lambda info=None: not saved_exact)
    torch.manual_seed(1)
    here = quantize_int8(model())  # other random weights, replaced by the file's
    assert not here.load_state_dict(state).missing_keys
    linear = here.bert.layers[0].ffn_up
    assert (linear.weight.act_quant_kwargs is None) is saved_exact  # this CPU's way of multiplying
    assert torch.equal(linear.weight.qdata, state["bert.layers.0.ffn_up.weight"].qdata)
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        assert _relative_error(here(ids).logits, float_model(ids).logits) < 0.05


@pytest.mark.parametrize("family, cls", [(f, c) for f in registry.families() for c in f.classes], ids=lambda x: getattr(x, "__name__", ""))
def test_every_declared_model_quantises_and_stays_close(family, cls):
    model = family.tiny_model(cls)
    args, kwargs = family.inputs(cls)
    if not any(isinstance(m, (torch.nn.Linear, minipt.nn.LSTM)) for m in model.modules()):  # convolutions, GRU (CRAFT, G2P): nothing to quantise
        with pytest.raises(InputError, match=f"{cls.__name__} has no Linear or LSTM layer, which int8 quantisation reaches"):
            quantize_int8(model)
        return
    quantized = quantize_int8(model)
    assert transfer.is_quantized(quantized)
    with torch.no_grad():
        ours, theirs = (torch.cat([t.flatten().float() for t in tree_leaves(m(*args, **kwargs)) if t.is_floating_point()]) for m in (quantized, model))
    assert torch.isfinite(ours).all() and torch.nn.functional.cosine_similarity(ours, theirs, dim=0) > 0.99


def test_lstm_language_model():
    model = CharLM(CharLMConfig(embed_size=32, hidden_size=128, num_layers=2)).eval()
    quantized = quantize_int8(model)
    assert isinstance(quantized.lstm, Int8WeightRNN)
    assert {name for name, p in quantized.lstm.rnn.named_parameters() if _int8(p)} == {f"weight_{w}_l{k}" for w in ("ih", "hh") for k in (0, 1)}
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert _relative_error(quantized(ids)[0], model(ids)[0]) < 0.1
    assert size_bytes(quantized) < 0.4 * size_bytes(model)
    with torch.no_grad():  # the (h, c) state carries through; the head quantises each position on its own, so halves match the whole
        _, state = quantized(ids[:, :10])
        torch.testing.assert_close(quantized(ids[:, 10:], state)[0], quantized(ids)[0][:, 10:], rtol=1e-4, atol=1e-5)
    assert quantized.generate(ids[:1, :4], max_new_tokens=8).shape == (1, 12)  # decoding carries the state the same way


@pytest.mark.parametrize("backend", ["math", "fused", "torch"])
def test_an_int8_lstm_runs_on_every_backend(backend):
    lstm = minipt.nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True).eval()
    quantized = quantize_int8(lstm)  # the model may be the layer itself
    quantized.rnn.backend = backend
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        out, (h, c) = quantized(x)
        reference, _ = lstm(x)
    assert out.shape == (3, 5, 32) and h.shape == c.shape == (4, 3, 16)
    assert _relative_error(out, reference) < 0.05


def test_lstm_false_keeps_the_lstm_float():
    quantized = quantize_int8(CharLM(CharLMConfig(embed_size=8, hidden_size=16)), lstm=False)
    assert type(quantized.lstm) is minipt.nn.LSTM and _int8(quantized.head.weight)


def test_bad_models_are_refused():
    model = CharLM(CharLMConfig(embed_size=8, hidden_size=16))
    with pytest.raises(InputError, match="float32"):
        quantize_int8(model.to(torch.bfloat16))
    with pytest.raises(InputError, match="already quantised"):
        quantize_int8(quantize_int8(model.float()))


def test_fuse_or_quantise_not_both_and_no_official_file_of_int8(tmp_path):
    """A fuse() copy's packed weights are no Linear modules: quantising it changed nothing while size_bytes said it
    shrank. An int8 model's torchao tensors fuse() cannot pack, and no official format holds them: each refused."""
    from minipt.errors import ConfigError

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)).eval()
    with pytest.raises(InputError, match="is or holds a fuse\\(\\) copy, whose packed weights int8 quantisation cannot reach"):
        quantize_int8(model.fuse())
    with pytest.raises(InputError, match="holds a fuse\\(\\) copy \\(at '0'\\)"):  # inside a pipeline: int8 weights nowhere, without a word
        quantize_int8(torch.nn.Sequential(model.fuse()))
    with pytest.raises(InputError, match="packed weights are outside it \\(at '0'\\)"):
        size_bytes(torch.nn.Sequential(model.fuse()))
    with pytest.raises(InputError, match="size_bytes measures a model's state dict"):
        size_bytes(model.fuse())
    quantized = quantize_int8(model)
    with pytest.raises(ConfigError, match="quantised to int8 \\(torchao tensors\\), which fuse\\(\\) cannot pack"):
        quantized.fuse()
    with pytest.raises(ConfigError, match="has no official format to be saved in: save the float model"):
        quantized.save_pretrained(tmp_path)
    assert not any(tmp_path.iterdir())


def test_an_int8_model_is_not_counted():
    """torch's FLOP counter does not see torchao's int8 products: summary and count_flops on an int8 model counted
    only the attention (6,400 FLOPs of a tiny BERT's 89,344); each names it."""
    from minipt.errors import ConfigError
    from minipt.summary import count_flops, summary

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)).eval()
    ids = torch.randint(0, 50, (1, 8))
    quantized = quantize_int8(model)
    for count in (summary, count_flops):
        with pytest.raises(ConfigError, match="holds int8 weights.*count the float model before quantize_int8"):
            count(quantized, ids)
    assert count_flops(model, ids) > 0


def test_without_torchao_the_error_says_how_to_install_it():
    script = (
        "import sys; sys.modules['torchao'] = None\n"  # import torchao now raises ImportError
        "import minipt.quantize, minipt.transfer\n"
        "from minipt.errors import MissingDependencyError\n"
        "from minipt.models.char_lm import CharLM, CharLMConfig\n"
        "try:\n"
        "    minipt.quantize.quantize_int8(CharLM(CharLMConfig(embed_size=8, hidden_size=16)))\n"
        "except MissingDependencyError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert 'int8 quantisation needs torchao: pip install "minipt[quantize]"' in out
    assert issubclass(MissingDependencyError, ImportError)


def test_importing_torchao_prints_nothing():
    script = "from minipt.quantize import quantize_int8; import torch; quantize_int8(torch.nn.Linear(4, 4))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout == done.stderr == ""


def test_an_int8_model_keeps_its_dtype_and_is_saved_by_its_state_dict(tmp_path):
    """q.double() was accepted and torchao's kernel then asserted on float64 inputs (half/bfloat16 ran with float32
    scales); torch.save(q) failed inside torchao's pickling. Both are named; the state dict round trip named there works."""
    import copy

    from minipt.errors import ConfigError

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)).eval()
    quantized = quantize_int8(model)
    for move in (lambda q: q.double(), lambda q: q.half(), lambda q: q.to(torch.bfloat16)):
        with pytest.raises(ConfigError, match="computes in float32 around its int8 weights"):
            move(copy.deepcopy(quantized))
    quantized.to("cpu")  # where it is: fine
    with pytest.raises(ConfigError, match=r"cannot be pickled whole .*torch.save\(model.state_dict\(\), path\)"):
        torch.save(quantized, tmp_path / "whole.pt")
    torch.save(quantized.state_dict(), tmp_path / "int8.pt")
    again = quantize_int8(model)
    again.load_state_dict(torch.load(tmp_path / "int8.pt", weights_only=True))
    ids = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, quantized(ids).logits)
