"""Bad input to minipt.nn.RNN / LSTM / GRU gets a minipt error naming the expected and actual sizes."""

import re

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import minipt.nn
from minipt.errors import ConfigError, InputError, KeyMismatchError


def lstm(**config):
    return minipt.nn.LSTM(**{"input_size": 4, "hidden_size": 6, "num_layers": 2, **config})


@pytest.mark.parametrize("shape", [(5,), (2, 5, 3, 4), ()])
def test_wrong_input_rank(shape):
    pattern = f"(seq_len, batch, 4) (3-D) or (seq_len, 4) for one unbatched sequence (2-D); got a {len(shape)}-D tensor of shape {shape}"
    with pytest.raises(InputError, match=re.escape(pattern)):
        lstm()(torch.randn(shape))


def test_wrong_rank_message_follows_batch_first():
    with pytest.raises(InputError, match=r"\(batch, seq_len, 4\)"):
        lstm(batch_first=True)(torch.randn(1, 2, 3, 4))


@pytest.mark.parametrize("cls", [minipt.nn.LSTM, minipt.nn.GRU, minipt.nn.RNN])
def test_wrong_feature_size(cls):
    module = cls(4, 6)
    with pytest.raises(InputError, match=r"input_size=4 features, got input with 3 \(shape \(5, 2, 3\)\)"):
        module(torch.randn(5, 2, 3))
    with pytest.raises(InputError, match=r"input_size=4 features, got input with 7 \(shape \(5, 7\)\)"):
        module(torch.randn(5, 7))  # unbatched


def test_wrong_feature_size_in_packed_data():
    packed = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 2]))
    with pytest.raises(InputError, match=r"input_size=4 features, got input with 3 \(shape \(7, 3\)\)"):
        lstm()(packed)


def test_dtype_mismatch():
    with pytest.raises(InputError, match="float64.*float32"):
        lstm()(torch.randn(5, 2, 4, dtype=torch.float64))


def test_empty_sequence():
    with pytest.raises(InputError, match="empty sequence"):
        lstm()(torch.randn(0, 2, 4))


def test_initial_state_of_the_wrong_shape():
    x = torch.randn(5, 3, 4)
    with pytest.raises(InputError, match=r"h_0 must have shape .* = \(2, 3, 6\), got \(1, 3, 6\)"):
        lstm()(x, (torch.zeros(1, 3, 6), torch.zeros(2, 3, 6)))
    with pytest.raises(InputError, match=r"c_0 must have shape .* = \(2, 3, 6\), got \(2, 2, 6\)"):
        lstm()(x, (torch.zeros(2, 3, 6), torch.zeros(2, 2, 6)))
    with pytest.raises(InputError, match=r"h_0 must have shape .* = \(4, 3, 2\), got \(4, 3, 6\)"):
        lstm(proj_size=2, bidirectional=True)(x, (torch.zeros(4, 3, 6), torch.zeros(4, 3, 6)))
    with pytest.raises(InputError, match=r"h_0 must have shape .* = \(2, 3, 6\), got \(2, 3, 5\)"):
        minipt.nn.GRU(4, 6, 2)(x, torch.zeros(2, 3, 5))


def test_initial_state_rank_must_follow_the_input():
    with pytest.raises(InputError, match=r"= \(1, 6\) for unbatched \(2-D\) input, got \(1, 1, 6\)"):
        minipt.nn.GRU(4, 6)(torch.randn(5, 4), torch.zeros(1, 1, 6))
    with pytest.raises(InputError, match=r"= \(1, 2, 6\), got \(1, 6\)"):
        minipt.nn.RNN(4, 6)(torch.randn(5, 2, 4), torch.zeros(1, 6))


def test_lstm_state_must_be_a_pair():
    with pytest.raises(InputError, match=r"tuple \(h_0, c_0\), got Tensor"):
        lstm()(torch.randn(5, 3, 4), torch.zeros(2, 3, 6))
    with pytest.raises(InputError, match="h_0 as a tensor, got tuple"):
        minipt.nn.GRU(4, 6)(torch.randn(5, 3, 4), (torch.zeros(1, 3, 6),))


def test_packed_lengths_longer_than_the_sequence():
    # torch's pack_padded_sequence accepts a length of 7 for 5 padded steps and packs
    # rows that do not exist; the module names the lengths and the steps it holds
    packed = pack_padded_sequence(torch.randn(5, 2, 4), torch.tensor([7, 2]), enforce_sorted=False)
    with pytest.raises(InputError, match=r"lengths \[7, 2\] \(9 steps in all\) but its data holds 7 steps"):
        lstm()(packed)


def test_malformed_batch_sizes():
    data = torch.randn(5, 4)
    with pytest.raises(InputError, match=r"non-increasing, got \[2, 3\]"):
        lstm()(PackedSequence(data, torch.tensor([2, 3])))


def test_state_dict_of_another_module():
    ours = lstm()
    with pytest.raises(KeyMismatchError) as error:
        ours.load_state_dict(torch.nn.GRU(4, 6, 2).state_dict())  # 3 gates, not 4
    message = str(error.value)
    assert "weight_ih_l0: given (18, 4), expected (24, 4)" in message
    assert "bias_hh_l1: given (18,), expected (24,)" in message
    with pytest.raises(KeyMismatchError, match=r"missing \(2\): weight_ih_l1 \(24, 6\), weight_hh_l1 \(24, 6\)"):
        ours.load_state_dict(torch.nn.LSTM(4, 6, 1, bias=False).state_dict() | {"bias_ih_l0": torch.zeros(24), "bias_hh_l0": torch.zeros(24), "bias_ih_l1": torch.zeros(24), "bias_hh_l1": torch.zeros(24)})
    with pytest.raises(KeyMismatchError, match=r"unexpected \(8\): weight_ih_l0_reverse \(24, 4\)"):
        ours.load_state_dict(torch.nn.LSTM(4, 6, 2, bidirectional=True).state_dict())
    with pytest.raises(KeyMismatchError, match=r"weight_hr_l0 \(3, 6\)"):
        ours.load_state_dict(torch.nn.LSTM(4, 6, 2, proj_size=3).state_dict())
    with pytest.raises(KeyMismatchError, match=r"not tensors: weight_ih_l0 \(list\)"):
        ours.load_state_dict(ours.state_dict() | {"weight_ih_l0": [[0.0] * 4] * 24})


def test_state_dict_non_strict_still_checks_shapes():
    ours = lstm()
    partial = {k: v for k, v in torch.nn.LSTM(4, 6, 2).state_dict().items() if k.endswith("l0")}
    result = ours.load_state_dict(partial, strict=False)
    assert sorted(result.missing_keys) == ["bias_hh_l1", "bias_ih_l1", "weight_hh_l1", "weight_ih_l1"]
    with pytest.raises(KeyMismatchError, match="wrong shape"):
        ours.load_state_dict({"weight_ih_l0": torch.zeros(3, 4)}, strict=False)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: minipt.nn.LSTM(4, 6, proj_size=6), r"proj_size \(6\) must be smaller than hidden_size \(6\)"),
        (lambda: minipt.nn.LSTM(4, 6, proj_size=-1), "proj_size must be a non-negative integer, got -1"),
        (lambda: minipt.nn.GRU(4, 6, 2, dropout=1.5), r"dropout must be a number in \[0, 1\].*got 1.5"),
        (lambda: minipt.nn.GRU(4, 0), "hidden_size must be a positive integer, got 0"),
        (lambda: minipt.nn.RNN(4, 6, nonlinearity="sigmoid"), "nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"),
    ],
)
def test_bad_configuration(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


@pytest.mark.parametrize("cls", [minipt.nn.LSTM, minipt.nn.GRU, minipt.nn.RNN])
@pytest.mark.parametrize("argument", ["bias", "batch_first", "bidirectional"])
@pytest.mark.parametrize("value", [0, 1, "True", "False", None])
def test_flags_must_be_bools(cls, argument, value):
    """torch.nn refuses a bias or batch_first that is not a bool, and takes any bidirectional (the string
    "False" turns it on); minipt refuses all three, naming the argument."""
    with pytest.raises(InputError, match=f"^{argument} must be True or False, got {type(value).__name__} {re.escape(repr(value))}$"):
        cls(4, 6, **{argument: value})
