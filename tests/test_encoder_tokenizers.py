"""minipt.Tokenizer on RoBERTa, DistilBERT and ALBERT snapshots against transformers' tokenizer on the same files.

Each snapshot is written by transformers' own tokenizer class (tests/encoder_snapshots.py) and
read back by both: ids, attention masks and, where the tokenizer returns them, token types must be
equal on texts with case, accents, emoji, CJK, runs of whitespace and special tokens, alone, in
pairs and in padded, truncated batches; decoding must give transformers' text.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from bert_reference import transformers
from encoder_snapshots import FAMILIES, gpt2_files, save_snapshot
from minipt.bpe import BPE_MERGES, BPE_VOCAB
from minipt import Tokenizer, registry
from minipt.errors import CheckpointError

TEXTS = [
    "Hello world",
    "HeLLo WoRLD, SHOUTING and MiXeD cAsE",
    "  leading,   inner   and trailing   spaces  ",
    "tabs\tand\nnew\n\nlines",
    "Ünïcödé àçcénts: naïve café, Ångström, façade",
    "emoji 🙂🚀 family 👩‍👩‍👧 flag 🇫🇷",
    "日本語のテキスト and 中文 mixed",
    "don't stop: it's 3.14159 (or -42)!",
    "a <mask> in RoBERTa, [MASK] in the others, <s> and [CLS] inside",
    "",
]
PAIRS = [("Is this a question?", "the passage answers it"), ("", "only the second"), ("Café 🙂", "naïve   日本")]
LONG = "the quick brown fox jumps over the lazy dog " * 6


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    root = tmp_path_factory.mktemp("snapshots")
    return {family: save_snapshot(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded(snapshots):
    """family -> (minipt's tokenizer, transformers') on its snapshot, each loaded once."""
    cache = {}

    def load(family: str):
        if family not in cache:
            cache[family] = Tokenizer.from_pretrained(snapshots[family]), transformers.AutoTokenizer.from_pretrained(str(snapshots[family]))
        return cache[family]

    return load


@pytest.fixture
def pair(loaded, request):
    return loaded(request.param)


def _lists(ours_batch) -> dict:
    return {key: value.tolist() for key, value in ours_batch.items()}


every_family = pytest.mark.parametrize("pair", FAMILIES, indirect=True)


@every_family
def test_the_snapshot_is_the_real_vocabulary(pair):
    ours, theirs = pair
    assert ours.vocab_size == len(theirs) > 900  # not transformers' five-token placeholder vocabulary
    assert "hello" in theirs.decode(theirs("hello")["input_ids"], skip_special_tokens=True).lower()
    for role in ("pad", "unk", "cls", "sep", "mask"):
        assert getattr(ours, f"{role}_token_id") == getattr(theirs, f"{role}_token_id") is not None, role


@every_family
def test_single_texts_and_pairs(pair):
    ours, theirs = pair
    for text in TEXTS:
        assert ours(text, padding=False, truncation=False, return_tensors=None) == dict(theirs(text)), text
        assert ours.tokenize(text) == theirs.tokenize(text), text
    for first, second in PAIRS:
        assert ours(first, second, padding=False, truncation=False, return_tensors=None) == dict(theirs(first, second)), (first, second)


@every_family
def test_padded_and_truncated_batches(pair):
    ours, theirs = pair
    texts = TEXTS + [LONG]
    batch, expected = ours(texts, max_length=16), theirs(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    assert _lists(batch) == {key: value.tolist() for key, value in expected.items()}
    firsts, seconds = [LONG, "short", LONG], ["short", LONG, LONG]
    batch = ours(firsts, seconds, max_length=20)
    expected = theirs(firsts, seconds, padding=True, truncation="longest_first", max_length=20, return_tensors="pt")
    assert _lists(batch) == {key: value.tolist() for key, value in expected.items()}
    assert batch["input_ids"].shape == (3, 20)


@every_family
def test_decoding(pair):
    ours, theirs = pair
    for text in TEXTS:
        ids = theirs(text)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), (text, skip)
    rows = theirs([first for first, _ in PAIRS], [second for _, second in PAIRS], padding=True)["input_ids"]
    assert ours.batch_decode(rows) == theirs.batch_decode(rows, skip_special_tokens=True)


@pytest.mark.parametrize(
    "family, setting, text",
    [
        ("roberta", {"add_prefix_space": True}, "Hello world"),
        ("distilbert", {"do_lower_case": False}, "Hello Café"),
        ("distilbert", {"strip_accents": False}, "hello café"),
        ("distilbert", {"tokenize_chinese_chars": False}, "中文テキスト"),
        ("albert", {"keep_accents": True}, "naïve café"),
        ("albert", {"do_lower_case": False}, "Hello World"),
        ("albert", {"add_prefix_space": False}, "hello world"),
        ("roberta", {"model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}, "one text"),
        ("albert", {"model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}, "one text"),
    ],
)
def test_tokenizer_config_settings_win_over_tokenizer_json(snapshots, loaded, tmp_path, family, setting, text):
    folder = shutil.copytree(snapshots[family], tmp_path / family)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | setting))
    ours, theirs = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    before = loaded(family)[0]
    assert ours(text, "and a pair", return_tensors=None) == dict(theirs(text, "and a pair"))
    assert ours(text, "and a pair", return_tensors=None) != before(text, "and a pair", return_tensors=None)  # the setting changed something
    ids = theirs(text)["input_ids"]
    assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_cleans_up_spaces_where_the_config_says(snapshots, loaded, tmp_path, family):
    folder = shutil.copytree(snapshots[family], tmp_path / family)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"clean_up_tokenization_spaces": True}))
    ours, theirs = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    ids = theirs("hello , world . isn 't it ? do n't ! they 're 'm 've ' s")["input_ids"]
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    cleaned = family != "roberta"  # transformers leaves byte-level BPE's text as it is
    assert (ours.decode(ids) != loaded(family)[0].decode(ids)) == cleaned
    assert Tokenizer.from_pretrained(ours.save_pretrained(tmp_path / "saved")).decode(ids) == ours.decode(ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_follow_the_model_type_without_a_tokenizer_class(snapshots, tmp_path, family):
    folder = shutil.copytree(snapshots[family], tmp_path / family)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["tokenizer_class"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps({"model_type": family}))
    ours, theirs = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    batch, expected = ours("a", "b", return_tensors=None), dict(theirs("a", "b"))
    # the model's inputs: transformers' AutoTokenizer maps model_type "distilbert" to BertTokenizer, whose token types
    # DistilBertModel cannot take; minipt gives the inputs of DistilBertTokenizer, the class transformers saves
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch == {key: expected[key] for key in batch}
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert set(Tokenizer.from_pretrained(folder)("a")) == {"input_ids", "attention_mask", "token_type_ids"}


@pytest.mark.parametrize("tokenizer_config", [None, {"tokenizer_class": "RobertaTokenizerFast", "add_prefix_space": True}])
def test_roberta_from_vocab_and_merges_alone(tmp_path, tokenizer_config):
    folder = tmp_path / "roberta"
    folder.mkdir()
    files = gpt2_files(tmp_path / "gpt2-files")
    for name in (BPE_VOCAB, BPE_MERGES):
        shutil.copy(files / name, folder / name)
    (folder / "config.json").write_text(json.dumps({"model_type": "roberta"}))  # what names the family when no config does
    if tokenizer_config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    ours, theirs = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    assert ours.vocab_size == len(theirs) and ours.mask_token_id == theirs.mask_token_id and ours.pad_token_id == theirs.pad_token_id
    for text in TEXTS:
        assert ours(text, padding=False, truncation=False, return_tensors=None) == dict(theirs(text)), text
        ids = theirs(text)["input_ids"]
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids, skip_special_tokens=False), text
    for first, second in PAIRS:
        assert ours(first, second, padding=False, truncation=False, return_tensors=None) == dict(theirs(first, second)), (first, second)


def test_special_tokens_map_of_an_older_snapshot(snapshots, tmp_path):
    folder = shutil.copytree(snapshots["roberta"], tmp_path / "roberta")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"pad_token": "<unk>"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<pad>", "lstrip": False, "normalized": True,
                                                                               "rstrip": False, "single_word": False}}))
    ours, theirs = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    assert ours.pad_token == theirs.pad_token == "<pad>"
    assert _lists(ours(["a", "a b c"])) == {key: value.tolist() for key, value in theirs(["a", "a b c"], padding=True, return_tensors="pt").items()}


@every_family
def test_settings_survive_save_pretrained(pair, tmp_path):
    ours, _ = pair
    again = Tokenizer.from_pretrained(ours.save_pretrained(tmp_path / "saved"))
    assert again.model_input_names == ours.model_input_names
    assert again(TEXTS, return_tensors=None) == ours(TEXTS, return_tensors=None)


@pytest.mark.parametrize("names, message", [
    ("input_ids", "must be a list of input names"),
    (["attention_mask"], "lacks 'input_ids'"),
    (["input_ids", "pixel_values"], "'pixel_values', which a tokenizer does not make"),
])
def test_bad_model_input_names_are_named(snapshots, tmp_path, names, message):
    folder = shutil.copytree(snapshots["distilbert"], tmp_path / "distilbert")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"model_input_names": names}))
    with pytest.raises(CheckpointError, match=f"tokenizer_config.json: model_input_names .*{message}"):
        Tokenizer.from_pretrained(folder)


# -- the tokenizer's batch goes straight into a model of its family -------------------------------
ENCODERS = [family for family in registry.families() if family.model_type in FAMILIES]


def test_every_encoder_family_is_registered():
    assert sorted(family.model_type for family in ENCODERS) == sorted(FAMILIES), "a text encoder family is not registered with minipt.registry"


@pytest.mark.parametrize("family", ENCODERS, ids=lambda family: family.model_type)
def test_a_batch_runs_through_a_model_of_the_family(loaded, family):
    tokenizer = loaded(family.model_type)[0]
    config = dataclasses.replace(family.tiny(), vocab_size=tokenizer.vocab_size, max_position_embeddings=64)
    model = family.classes[0](config).eval()
    batch = tokenizer(TEXTS[:4], [second for _, second in PAIRS] + [""], max_length=40)
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (*batch["input_ids"].shape, config.hidden_size) and torch.isfinite(hidden).all()
