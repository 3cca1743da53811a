"""minipt.Tokenizer on a T5 snapshot (tokenizer.json, SentencePiece Unigram) against transformers' T5Tokenizer on the same files.

The snapshot (tests/t5_snapshot.py) is written by transformers' own T5Tokenizer from a Unigram model
trained here, numbered as T5's: <pad> 0, </s> 1, <unk> 2, the pieces, the sentinels <extra_id_99> ... <extra_id_0>
last. Ids and attention masks must be equal on texts with case, accents, emoji, CJK, runs of whitespace and
sentinels, alone, in pairs and in padded, truncated batches; decoding must give transformers' text.
"""

from __future__ import annotations

import json
import shutil

import pytest

from bert_reference import transformers
from minipt import Tokenizer
from t5_snapshot import SENTINELS, save_t5_snapshot
from test_encoder_tokenizers import LONG, PAIRS, TEXTS

SENTINEL_TEXTS = ["The <extra_id_0> walks in <extra_id_1> park", "<extra_id_99>, </s> and <pad> inside a text", "ends with <extra_id_5>"]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return save_t5_snapshot(tmp_path_factory.mktemp("t5-tokenizer"))


@pytest.fixture(scope="module")
def pair(snapshot):
    return Tokenizer.from_pretrained(snapshot), transformers.AutoTokenizer.from_pretrained(str(snapshot))


def test_the_snapshot_is_numbered_as_t5s(pair, snapshot):
    ours, theirs = pair
    assert type(theirs).__name__ == "T5Tokenizer"
    assert json.loads((snapshot / "tokenizer.json").read_text())["model"]["type"] == "Unigram"
    assert ours.vocab_size == len(theirs) == 1000 + SENTINELS
    assert (ours.pad_token_id, ours.eos_token_id, ours.unk_token_id) == (theirs.pad_token_id, theirs.eos_token_id, theirs.unk_token_id) == (0, 1, 2)
    assert ours.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == theirs.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [1099, 1000]


def test_single_texts_and_pairs(pair):
    ours, theirs = pair
    for text in TEXTS + SENTINEL_TEXTS:
        ids = ours(text, padding=False, truncation=False, return_tensors=None)
        assert ids == dict(theirs(text)), text
        assert set(ids) == {"input_ids", "attention_mask"} and ids["input_ids"][-1] == 1  # no token types; </s> closes every text
        assert ours.tokenize(text) == theirs.tokenize(text), text
    for first, second in PAIRS:
        assert ours(first, second, padding=False, truncation=False, return_tensors=None) == dict(theirs(first, second)), (first, second)


def test_padded_and_truncated_batches(pair):
    ours, theirs = pair
    texts = TEXTS + SENTINEL_TEXTS + [LONG]
    batch, expected = ours(texts, max_length=16), theirs(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    assert {key: value.tolist() for key, value in batch.items()} == {key: value.tolist() for key, value in expected.items()}
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()  # padded with <pad>, id 0
    firsts, seconds = [LONG, "short", LONG], ["short", LONG, LONG]
    batch = ours(firsts, seconds, max_length=20)
    expected = theirs(firsts, seconds, padding=True, truncation="longest_first", max_length=20, return_tensors="pt")
    assert {key: value.tolist() for key, value in batch.items()} == {key: value.tolist() for key, value in expected.items()}


def test_decoding(pair):
    ours, theirs = pair
    for text in TEXTS + SENTINEL_TEXTS:
        ids = theirs(text)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), (text, skip)
    rows = theirs(SENTINEL_TEXTS, padding=True)["input_ids"]
    assert ours.batch_decode(rows) == theirs.batch_decode(rows, skip_special_tokens=True)


def test_inputs_follow_the_model_type_without_a_tokenizer_class(snapshot, tmp_path):
    folder = shutil.copytree(snapshot, tmp_path / "t5")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["tokenizer_class"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
    assert set(Tokenizer.from_pretrained(folder)("a", "b")) == {"input_ids", "attention_mask"}  # T5 takes no token types


def test_add_prefix_space_leaves_t5s_word_boundaries(snapshot, tmp_path, pair):
    """transformers' T5 tokenizer keeps a tokenizer.json's "▁" step whatever add_prefix_space says; minipt turned
    the step off (prepend_scheme "never"), which joined every word to the one before it."""
    folder = shutil.copytree(snapshot, tmp_path / "t5")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "add_prefix_space": False}))
    ours, theirs = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    for text in ("Hello World", "a b c"):
        assert ours(text, return_tensors=None)["input_ids"] == theirs(text)["input_ids"], text
        assert ours.decode(ours(text, return_tensors=None)["input_ids"]) == text
