"""Dynamic int8 quantisation: smaller models whose outputs stay close to the float model's."""

import pytest
import torch

import minipt.nn

from minipt.errors import InputError
from minipt.models.bert import BertConfig, BertForSequenceClassification
from minipt.models.char_lm import CharLM, CharLMConfig
from minipt.quantize import quantize_int8, size_bytes


def _relative_error(quantized, reference):
    return ((quantized - reference).abs().max() / reference.abs().max()).item()


def test_bert_linear_layers():
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, num_labels=3)).eval()
    quantized = quantize_int8(model)
    assert type(quantized.bert.layers[0].ffn_up).__name__ == "Linear" and type(quantized.bert.layers[0].ffn_up).__module__.startswith("torch.ao.nn.quantized")
    assert type(model.bert.layers[0].ffn_up) is minipt.nn.Linear  # the original is untouched
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        assert _relative_error(quantized(ids).logits, model(ids).logits) < 0.1
    assert size_bytes(quantized) < 0.7 * size_bytes(model)  # the embeddings stay float


def test_lstm_language_model():
    model = CharLM(CharLMConfig(embed_size=32, hidden_size=128, num_layers=2)).eval()
    quantized = quantize_int8(model)
    assert type(quantized.lstm).__module__.startswith("torch.ao.nn.quantized.dynamic")
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert _relative_error(quantized(ids)[0], model(ids)[0]) < 0.1
    assert size_bytes(quantized) < 0.4 * size_bytes(model)
    with torch.no_grad():  # the (h, c) state carries through the int8 LSTM (inputs are quantised per call: close, not equal)
        _, state = quantized(ids[:, :10])
        assert _relative_error(quantized(ids[:, 10:], state)[0], quantized(ids)[0][:, 10:]) < 0.1


def test_only_float32_cpu_models():
    with pytest.raises(InputError, match="float32"):
        quantize_int8(CharLM(CharLMConfig(embed_size=8, hidden_size=16)).to(torch.bfloat16))
