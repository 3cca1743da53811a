"""Bad input gets a MiniptError that names the problem: tokenizer files and calls, empty batches and
zero-length sequences in every model's forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minipt import Tokenizer
from minipt.errors import CheckpointError, InputError, MiniptError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "a", "b", "##s"]


def write_tokenizer(folder, config: dict | None = None):
    """A small BERT-style WordPiece tokenizer.json (with [CLS] ... [SEP] templates) in ``folder``."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    backend = Backend(WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    backend.add_special_tokens(VOCAB[:4])
    backend.normalizer = normalizers.BertNormalizer()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = write_tokenizer(tmp_path_factory.mktemp("tok"), {"model_max_length": 8, "pad_token": {"content": "[PAD]"}})
    return Tokenizer.from_pretrained(folder)


# -- tokenizer files -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", r"is empty \(0 bytes\)"),
        (b"   \n", r"is empty \(4 bytes\)"),
        (b"hello", "is not valid JSON"),
        (b"\xff\xfe\x00x", "cannot be read as UTF-8"),
        (b"[1, 2]", "holds a JSON list, expected an object"),
        (b"{}", 'has no "model" entry'),
        (b'{"version": "1.0", "added_tokens": []}', 'has no "model" entry'),
        (b'{"version": "1.0", "model": {"type": "NoSuchModel"}}', "is not a valid tokenizers tokenizer file"),
    ],
)
def test_bad_tokenizer_json_names_the_file(tmp_path, content, problem):
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=problem) as caught:
        Tokenizer.from_pretrained(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(caught.value)


@pytest.mark.parametrize("content, problem", [(b"{oops", "is not valid JSON"), (b'"a string"', "holds a JSON str"), (b"", "is empty")])
def test_bad_tokenizer_config_names_the_file(tmp_path, content, problem):
    write_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=problem) as caught:
        Tokenizer.from_pretrained(tmp_path)
    assert "tokenizer_config.json" in str(caught.value)


def test_tokenizer_config_special_tokens_as_objects(tok):
    assert tok.model_max_length == 8 and tok.special_tokens["pad_token"] == "[PAD]" and tok.pad_token_id == 0


@pytest.mark.parametrize("backend", [None, "tokenizer.json", 3, object()])
def test_tokenizer_needs_a_backend(backend):
    with pytest.raises(InputError, match=f"Tokenizer wraps a tokenizers.Tokenizer .*got {type(backend).__name__}"):
        Tokenizer(backend)


# -- tokenizer calls -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, text_pair, problem",
    [
        (5, None, "text must be a string or a list of strings, got int"),
        (None, None, "text must be a string or a list of strings, got NoneType"),
        (b"hello", None, r"got bytes; decode it first"),
        ({"a": 1}, None, "got dict"),
        ([["hello"]], None, r"text\[0\] must be a string, got list.*nested lists"),
        (["hello", 3, "a"], None, r"text\[1\] must be a string, got int: 3"),
        (["hello", None], None, r"text\[1\] must be a string, got NoneType"),
        (("a", b"b"), None, r"text\[1\] must be a string, got bytes"),
        (["a", "b"], ["a", 7], r"text_pair\[1\] must be a string, got int"),
        ("a", 7, "text_pair must be a string or a list of strings, got int"),
        ("a", b"b", "text_pair must be .* got bytes"),
        ("a", ["b"], "text is one string but text_pair is a list"),
        (["a"], "b", "text is a list but text_pair is one string"),
        (["a", "b"], ["c"], "2 texts but 1 text pairs"),
    ],
)
def test_non_text_input_is_named(tok, text, text_pair, problem):
    with pytest.raises(InputError, match=problem):
        tok(text, text_pair)


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"max_length": 0}, "max_length must be a positive integer, not 0"),
        ({"max_length": -3}, "max_length must be a positive integer, not -3"),
        ({"max_length": 2.5}, "max_length must be a positive integer, not 2.5"),
        ({"max_length": "8"}, "max_length must be a positive integer, not '8'"),
        ({"max_length": True}, "max_length must be a positive integer, not True"),
        ({"max_length": 1}, "max_length 1 leaves no room for the 2 special tokens each text gets"),
        ({"padding": "yes"}, "padding must be one of True, False, 'longest', 'max_length', not 'yes'"),
        ({"padding": 1}, "padding must be one of .* not 1"),
        ({"padding": None}, "padding must be one of .* not None"),
        ({"truncation": "longest"}, "truncation must be True or False"),
        ({"return_tensors": "tf"}, "return_tensors must be 'pt', 'np' or None, not 'tf'"),
        ({"return_tensors": True}, "return_tensors must be .* not True"),
    ],
)
def test_bad_options_are_named(tok, options, problem):
    with pytest.raises(InputError, match=problem):
        tok(["hello world"], **options)


def test_max_length_below_the_special_tokens_of_a_pair(tok):
    with pytest.raises(InputError, match="max_length 2 leaves no room for the 3 special tokens each pair gets"):
        tok("hello", "world", max_length=2)
    assert tok("hello world", max_length=2)["input_ids"].tolist() == [[2, 3]]  # room for the special tokens only
    assert tok("hello world", max_length=1, add_special_tokens=False)["input_ids"].tolist() == [[4]]


def test_empty_batch_gives_empty_tensors(tok):
    for batch in (tok([]), tok([], [])):
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {k: ((0, 0), torch.long) for k in batch}
    assert tok([], padding="max_length", max_length=5)["input_ids"].shape == (0, 5)
    assert tok([], return_tensors="np")["input_ids"].shape == (0, 0)
    assert tok([], return_tensors=None)["input_ids"] == []
    assert tok("")["input_ids"].tolist() == [[2, 3]]  # an empty text is [CLS] [SEP]


def test_tuples_and_numpy_strings_are_texts(tok):
    expected = tok(["hello", "a b"])["input_ids"]
    assert torch.equal(tok(("hello", "a b"))["input_ids"], expected)
    assert torch.equal(tok(np.array(["hello", "a b"]))["input_ids"], expected)


@pytest.mark.parametrize(
    "ids, problem",
    [
        (None, "decode takes a sequence of token ids, got NoneType"),
        ("hello", "got str"),
        (torch.zeros(2, 3, dtype=torch.long), r"got shape \(2, 3\); use batch_decode"),
        ([4, 1.5], r"ids\[1\] must be an integer token id, got float"),
        ([4, -1], r"ids\[1\] is -1, outside the vocabulary \(valid: 0..8\)"),
        (torch.tensor([4, 99]), r"ids\[1\] is 99, outside the vocabulary"),
    ],
)
def test_decode_names_bad_ids(tok, ids, problem):
    with pytest.raises(InputError, match=problem):
        tok.decode(ids)


def test_decode_accepts_tensors_arrays_and_lists(tok):
    assert tok.decode(torch.tensor([2, 4, 5, 3])) == tok.decode(np.array([2, 4, 5, 3])) == tok.decode([2, 4, 5, 3]) == "hello world"
    assert tok.batch_decode(torch.tensor([[4], [5]])) == ["hello", "world"]
