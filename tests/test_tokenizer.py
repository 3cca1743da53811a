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


# -- settings changed after loading, as in transformers -----------------------------------------
@pytest.fixture
def fresh(ours):
    return Tokenizer.from_pretrained(minilm_path())  # a copy this test may change


def test_left_padding(fresh, theirs):
    fresh.padding_side = "left"
    left = fresh(TEXTS)
    assert (left["attention_mask"][:, -1] == 1).all() and (left["attention_mask"][:, 0] == 0).any()
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_path()), padding_side="left")
    _same(left, reference(TEXTS, padding=True, truncation=True, return_tensors="pt"))
    _same(fresh(TEXTS, PAIRS), reference(TEXTS, PAIRS, padding=True, truncation=True, return_tensors="pt"))


def test_setting_the_pad_token(fresh, theirs):
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_path()))
    fresh.pad_token = reference.pad_token = "[UNK]"
    assert fresh.pad_token_id == reference.pad_token_id == 100
    _same(fresh(TEXTS), reference(TEXTS, padding=True, truncation=True, return_tensors="pt"))
    fresh.pad_token_id = 0
    assert fresh.pad_token == "[PAD]" and fresh.special_tokens["pad_token"] == "[PAD]"
    fresh.pad_token = None
    with pytest.raises(InputError, match="has no padding token"):
        fresh(TEXTS)


def test_tokens_and_ids_convert_as_in_transformers(ours, theirs):
    ids = ours(TEXTS[:2], return_tensors=None)["input_ids"][1]
    assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == theirs.convert_ids_to_tokens(ids, skip_special_tokens=True)
    assert ours.convert_ids_to_tokens(ids[1]) == theirs.convert_ids_to_tokens(ids[1])
    assert ours.convert_ids_to_tokens(torch.tensor(ids)) == theirs.convert_ids_to_tokens(ids)
    tokens = ["[CLS]", "hello", "##s", "not-a-token-at-all"]
    assert ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)  # the unknown one: [UNK]'s id
    assert ours.convert_tokens_to_ids("hello") == theirs.convert_tokens_to_ids("hello")
    assert (ours.unk_token, ours.pad_token) == (theirs.unk_token, theirs.pad_token) == ("[UNK]", "[PAD]")


def test_settings_survive_save_pretrained(fresh, tmp_path):
    fresh.padding_side, fresh.pad_token = "left", "[MASK]"
    again = Tokenizer.from_pretrained(fresh.save_pretrained(tmp_path))
    assert again.padding_side == "left" and again.pad_token == "[MASK]"
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert reference.padding_side == "left" and reference.pad_token == "[MASK]"


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("padding_side", "middle", "padding_side must be one of 'right', 'left'; got 'middle'"),
        ("padding_side", None, "padding_side must be one of 'right', 'left'; got None"),
        ("pad_token", "<no such token>", r"pad_token '<no such token>' is not in the vocabulary"),
        ("pad_token", 0, r"pad_token must be a token \(str\) or None, got int"),
        ("eos_token_id", 30522, r"eos_token_id must be a token id in \[0, 30521\] or None, got 30522"),
        ("pad_token_id", True, "pad_token_id must be a token id or None, got bool True"),
    ],
)
def test_bad_settings_are_named(fresh, setting, value, message):
    with pytest.raises(InputError, match=message):
        setattr(fresh, setting, value)


def test_bad_conversions_are_named(ours):
    with pytest.raises(InputError, match=r"ids\[0\] is 99999, outside the vocabulary"):
        ours.convert_ids_to_tokens(99999)
    with pytest.raises(InputError, match=r"convert_ids_to_tokens takes one sequence of ids \(1-D\)"):
        ours.convert_ids_to_tokens(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(InputError, match=r"tokens\[1\] must be a token \(str\), got int"):
        ours.convert_tokens_to_ids(["a", 1])
    with pytest.raises(InputError, match="convert_tokens_to_ids takes a token"):
        ours.convert_tokens_to_ids(5)


@pytest.mark.parametrize("damage, message", [
    (lambda pipeline: pipeline["model"]["vocab"].pop("[UNK]"),
     r"the WordPiece model's unknown-word token '\[UNK\]' is not in its vocabulary"),
    (lambda pipeline: pipeline["post_processor"]["special_tokens"].pop("[SEP]"),
     r"the post-processor's template uses '\[SEP\]', which its special_tokens do not define"),
])
def test_a_file_that_tokenizers_loads_but_cannot_encode_with(tmp_path, damage, message):
    """tokenizers loads a WordPiece file without its unknown-word token, and a template post-processor that uses a
    special token it does not define, then fails at the first encode: a bare Exception at the first unknown word,
    a PanicException (which no `except Exception` catches) at any text. The loader fuzz found both: each file is
    refused when it is read, naming the token."""
    import json

    from minipt.errors import CheckpointError

    pipeline = json.loads((minilm_path() / "tokenizer.json").read_text())
    damage(pipeline)
    (tmp_path / "tokenizer.json").write_text(json.dumps(pipeline))
    with pytest.raises(CheckpointError, match=r"tokenizer.json: " + message):
        Tokenizer.from_pretrained(tmp_path)


def test_a_unigram_without_an_unknown_id_meeting_an_unknown_character(tmp_path):
    """Such a file is valid until a text holds a character outside its vocabulary; tokenizers then raises a bare
    Exception (the loader fuzz found it): an InputError saying why."""
    import json

    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    backend = Backend(models.Unigram([("a", -1.0), ("b", -2.0)], unk_id=None))
    (tmp_path / "tokenizer.json").write_text(backend.to_str())
    tokenizer = Tokenizer.from_pretrained(tmp_path)
    assert tokenizer(["ab"])["input_ids"].tolist() == [[0, 1]]
    with pytest.raises(InputError, match=r"the tokenizer cannot encode these texts: Encountered an unknown token but `unk_id` is missing"):
        tokenizer(["abc"])
    json.loads((tmp_path / "tokenizer.json").read_text())  # the file itself stays a valid tokenizer.json


def test_tokenize_is_never_truncated_by_an_earlier_call(fresh, theirs):
    """A call that truncates set the shared backend's truncation, which tokenize() kept: every later tokenize() was
    cut at that length (after a plain call, at model_max_length)."""
    text = "hello world " * 300
    fresh(["short"], max_length=5)
    assert fresh.tokenize(text) == theirs.tokenize(text) and len(fresh.tokenize(text)) == 600
    fresh(["short"])
    assert len(fresh.tokenize(text)) == 600


@pytest.mark.parametrize("options", [
    {"padding_side": "left"},
    {"pad_to_multiple_of": 8},
    {"padding": "max_length", "max_length": 12, "pad_to_multiple_of": 4},
    {"return_attention_mask": False},
    {"return_token_type_ids": False},
    {"padding_side": "left", "pad_to_multiple_of": 4, "return_token_type_ids": False},
], ids=lambda o: ",".join(o))
def test_per_call_padding_and_returned_inputs(ours, theirs, options):
    """padding_side, pad_to_multiple_of, return_attention_mask and return_token_type_ids as transformers takes them
    per call; the tokenizer's own padding side is left as it was."""
    padding = options.get("padding", True)
    rest = {k: v for k, v in options.items() if k != "padding"}
    a, b = ours(TEXTS, PAIRS, **options), theirs(TEXTS, PAIRS, padding=padding, truncation=True, return_tensors="pt", **rest)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert ours.padding_side == "right"


def test_per_call_options_are_checked(ours):
    for options, message in [({"padding_side": "top"}, "padding_side"), ({"pad_to_multiple_of": 0}, "pad_to_multiple_of"),
                             ({"return_attention_mask": 1}, "return_attention_mask"),
                             ({"max_length": 10, "pad_to_multiple_of": 8}, "not a multiple of pad_to_multiple_of 8")]:
        with pytest.raises(InputError, match=message):
            ours(TEXTS, **options)



def _copy(source, folder, config: dict | None = None, files=None, **json_files):
    """A copy of a tokenizer folder with tokenizer_config.json updated by ``config`` and other JSON files written."""
    import json
    import shutil

    folder.mkdir(parents=True)
    for file in files or [p.name for p in source.iterdir() if p.is_file() and p.suffix in (".json", ".txt")]:
        shutil.copy(source / file, folder / file)
    settings = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").exists() else {}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings | (config or {})))
    for name, value in json_files.items():
        (folder / f"{name}.json").write_text(json.dumps(value))
    return folder


def _same_ids(folder, *calls):
    ours, theirs = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    for args, kwargs in calls:
        assert ours(*args, return_tensors=None, **kwargs)["input_ids"] == theirs(*args, **kwargs)["input_ids"], (args, kwargs)
    return ours, theirs


def test_settings_of_the_files_that_were_ignored(tmp_path):
    """truncation_side "left" (tokenizer_config.json, or tokenizer.json's own truncation and padding directions) cut the
    text's end; a special token the vocabulary lacks was replaced by the usual spelling ([PAD]) where transformers adds
    it, and one set to null was replaced too; an empty text_pair of one text made [SEP] [SEP]. Ids as transformers'."""
    import json

    long = "one two three four five six seven eight"
    left = _copy(minilm_path(), tmp_path / "left", {"truncation_side": "left"})
    ours, _ = _same_ids(left, ((long,), {"max_length": 6, "truncation": True}), ((long, "nine ten"), {"max_length": 8, "truncation": True}))
    assert ours.truncation_side == "left"
    assert json.loads((ours.save_pretrained(tmp_path / "saved") / "tokenizer_config.json").read_text())["truncation_side"] == "left"
    pipeline = json.loads((minilm_path() / "tokenizer.json").read_text())
    pipeline["truncation"] = {"direction": "Left", "max_length": 512, "strategy": "LongestFirst", "stride": 0}
    pipeline["padding"] = {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": None, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}
    in_file = _copy(minilm_path(), tmp_path / "in_file", files=["vocab.txt", "tokenizer_config.json"], tokenizer=pipeline)
    ours, _ = _same_ids(in_file, ((long,), {"max_length": 6, "truncation": True}), (([long, "a"],), {"padding": True}))
    assert (ours.padding_side, ours.truncation_side) == ("left", "left")
    files = ["tokenizer.json", "tokenizer_config.json", "vocab.txt"]  # no special_tokens_map.json, which would name [PAD] over it
    new_pad = _copy(minilm_path(), tmp_path / "new_pad", {"pad_token": "<newpad>"}, files=files)
    ours, theirs = _same_ids(new_pad, ((["a b c", "a"],), {"padding": True}))
    assert ours.pad_token_id == theirs.pad_token_id == 30522 and len(ours) == len(theirs) == 30523
    no_pad = _copy(minilm_path(), tmp_path / "no_pad", {"pad_token": None}, files=files)
    assert Tokenizer.from_pretrained(no_pad).pad_token is None
    with pytest.raises(InputError, match="has no padding token"):
        Tokenizer.from_pretrained(no_pad)(["a b c", "a"])
    ours, theirs = Tokenizer.from_pretrained(minilm_path()), transformers.AutoTokenizer.from_pretrained(str(minilm_path()))
    assert ours("a question", "", return_tensors=None) == dict(theirs("a question", ""))
    assert ours(["q"], [""], return_tensors=None)["input_ids"] == theirs(["q"], [""])["input_ids"]  # in a batch, a pair stays a pair


def test_files_the_tokenizers_library_fails_on_are_named(tmp_path):
    """Merges that make a token the vocabulary lacks made the Rust library panic (a BaseException, past every except
    Exception); a template putting an id outside the vocabulary loaded, and decode then refused minipt's own ids."""
    import json

    from minipt.errors import CheckpointError

    pipeline = json.loads((minilm_path() / "tokenizer.json").read_text())
    pipeline["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                                  "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                                  "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [999999], "tokens": ["[CLS]"]}}}
    outside = _copy(minilm_path(), tmp_path / "outside", files=["tokenizer_config.json"], tokenizer=pipeline)
    with pytest.raises(CheckpointError, match=r"template puts '\[CLS\]' = 999999, outside the vocabulary of 30522 ids"):
        Tokenizer.from_pretrained(outside)
    bpe = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}, "pre_tokenizer": None}
    folder = tmp_path / "merges"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(bpe))
    with pytest.raises(CheckpointError, match=r"merge 0 \('a' \+ 'b'\) needs 'ab', which the vocabulary lacks"):
        Tokenizer.from_pretrained(folder)
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(CheckpointError, match=r"merges.txt: merge 0 \('a' \+ 'b'\) needs 'ab'"):
        Tokenizer.from_pretrained(folder)


def test_absent_special_tokens_and_pairs_given_as_arrays(tmp_path):
    """Several special tokens the vocabulary lacks are added in transformers' order (bos, eos, unk, sep, pad, cls,
    mask), not the config's; a role set to null stays unset after a save; a text_pair given as an array of strings
    is compared with "" no more (numpy's ambiguous truth value)."""
    files = ["tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    absent = _copy(minilm_path(), tmp_path / "absent", {"pad_token": "<newpad>", "mask_token": "<newmask>", "bos_token": "<newbos>"}, files=files)
    ours, theirs = Tokenizer.from_pretrained(absent), transformers.AutoTokenizer.from_pretrained(str(absent))
    for role in ("pad", "mask", "bos"):
        assert getattr(ours, f"{role}_token_id") == getattr(theirs, f"{role}_token_id"), role
    no_pad = Tokenizer.from_pretrained(_copy(minilm_path(), tmp_path / "no_pad", {"pad_token": None}, files=files))
    assert Tokenizer.from_pretrained(no_pad.save_pretrained(tmp_path / "saved")).pad_token_id is None
    texts, pairs = np.array(["a question", "another"]), np.array(["an answer", ""])
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_path()))
    assert Tokenizer.from_pretrained(minilm_path())(list(texts), pairs, return_tensors=None)["input_ids"] == reference(list(texts), list(pairs), padding=True)["input_ids"]


def test_a_saved_tokenizer_reads_in_transformers_as_the_original(tmp_path):
    """minipt's save wrote no tokenizer_class and no model_input_names: transformers read a saved BERT tokenizer as its
    generic backend without token types (and a saved CLIP one decoded "a</w>photo</w>...")."""
    saved = Tokenizer.from_pretrained(minilm_path()).save_pretrained(tmp_path / "bert")
    theirs = transformers.AutoTokenizer.from_pretrained(str(saved))
    assert type(theirs).__name__.startswith("BertTokenizer")
    assert dict(theirs(["a question", "an answer"], padding=True)) == dict(
        transformers.AutoTokenizer.from_pretrained(str(minilm_path()))(["a question", "an answer"], padding=True))


def test_an_encoding_reads_as_attributes_and_moves_as_transformers_batch_encoding():
    import pickle

    from bert_reference import minilm_path

    tok = Tokenizer.from_pretrained(minilm_path())
    batch = tok(["hello world", "hi"])
    assert isinstance(batch, dict) and batch.input_ids is batch["input_ids"]
    moved = batch.to("cpu")
    assert torch.equal(moved.attention_mask, batch["attention_mask"]) and type(moved) is type(batch)
    assert pickle.loads(pickle.dumps(batch)).input_ids.shape == (2, 4)
    with pytest.raises(AttributeError, match="the encoding holds input_ids, attention_mask, token_type_ids, not 'labels'"):
        batch.labels
    with pytest.raises(InputError, match="Encoding.to takes a device, not the dtype torch.float16"):
        batch.to(torch.float16)
    from minipt.models.bert import BertModel

    model = BertModel.from_pretrained(minilm_path()).eval()
    exported = torch.export.export(model, (), kwargs=batch)  # a pytree as a dict is: export sees its tensors
    assert torch.equal(exported.module()(**batch).last_hidden_state, model(**batch).last_hidden_state)
