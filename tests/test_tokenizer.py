"""minipt.Tokenizer against transformers' tokenizer on the same tokenizer.json."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bert_reference import minilm_path, transformers
from minipt import Tokenizer
from minipt.errors import CheckpointNotFoundError, InputError

TEXTS = ["Hello, world!", "The quick brown fox jumps over the lazy dog.", "Ünïcödé 🙂 and 12345", ""]
PAIRS = ["Is this a question?", "an answer", "b", "short"]


@pytest.fixture(scope="module")
def ours():
    return Tokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def theirs():
    return transformers.AutoTokenizer.from_pretrained(str(minilm_path()))


def _same(a, b):
    assert set(a) == {"input_ids", "attention_mask", "token_type_ids"}
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_batch_with_padding(ours, theirs):
    _same(ours(TEXTS), theirs(TEXTS, padding=True, truncation=True, return_tensors="pt"))


def test_sentence_pairs(ours, theirs):
    a = ours(TEXTS, PAIRS)
    _same(a, theirs(TEXTS, PAIRS, padding=True, truncation=True, return_tensors="pt"))
    assert (a["token_type_ids"] == 1).any()


@pytest.mark.parametrize("max_length", [5, 9])
def test_truncation_longest_first(ours, theirs, max_length):
    long = ["word " * 50, "another " * 30]
    _same(ours(long, PAIRS[:2], max_length=max_length), theirs(long, PAIRS[:2], padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
    _same(ours(long, max_length=max_length), theirs(long, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


def test_default_truncation_is_the_model_limit(ours):
    assert ours.model_max_length == 512
    assert ours(["word " * 1000])["input_ids"].shape == (1, 512)


def test_padding_to_max_length_and_other_return_types(ours, theirs):
    _same(ours(TEXTS, padding="max_length", max_length=16), theirs(TEXTS, padding="max_length", truncation=True, max_length=16, return_tensors="pt"))
    as_numpy = ours(TEXTS, return_tensors="np")
    assert isinstance(as_numpy["input_ids"], np.ndarray) and as_numpy["input_ids"].dtype == np.int64
    single = ours("Hello, world!", return_tensors=None)
    assert single["input_ids"] == theirs("Hello, world!")["input_ids"]


def test_decode(ours, theirs):
    ids = ours(TEXTS)["input_ids"]
    assert ours.batch_decode(ids) == theirs.batch_decode(ids, skip_special_tokens=True)
    assert ours.decode(ids[0], skip_special_tokens=False) == theirs.decode(ids[0], skip_special_tokens=False)
    assert ours.tokenize("Hello, world!") == theirs.tokenize("Hello, world!")
    assert ours.vocab_size == 30522 and ours.pad_token_id == 0


def test_errors(ours, tmp_path):
    with pytest.raises(InputError, match="2 texts but 1 text pairs"):
        ours(["a", "b"], ["c"])
    with pytest.raises(InputError, match="different lengths.*padding=True"):
        ours(["a", "a longer one"], padding=False)
    with pytest.raises(InputError, match="return_tensors"):
        ours(["a"], return_tensors="tf")
    with pytest.raises(CheckpointNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
