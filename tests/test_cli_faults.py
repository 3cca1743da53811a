"""The command line under faults a user can cause: optional packages missing, bad numbers, text that is not
UTF-8, output files that cannot be written. Each ends in one line on stderr and a non-zero exit, never a
traceback, and before the command's work. Tiny random models built here stand in for the real ones."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minipt import cli, registry
from minipt.errors import InputError
from minipt.models.bert import BertModel
from minipt.models.gpt2 import GPT2LMHeadModel
from minipt.tokenizer import ENDOFTEXT, build_bpe_files, read_tiktoken
from test_gpt2_tokenizer import tiny_tiktoken

OPTIONAL = ["transformers", "torchvision", "timm", "sentence_transformers", "matplotlib", "PIL", "onnxruntime", "open_clip", "easyocr", "skimage"]
VOCAB = 264  # the tiny byte-level BPE below: 256 bytes, 7 merges, <|endoftext|>


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A folder per model family (random weights); BERT and GPT-2 with a byte-level BPE tokenizer beside them."""
    root = tmp_path_factory.mktemp("tiny")
    for family in registry.families():
        family.tiny_model().save_pretrained(root / family.model_type)
    for name, model in (("bert-text", BertModel(dataclasses.replace(_family("bert").tiny(), vocab_size=VOCAB))),
                        ("gpt2-text", GPT2LMHeadModel(dataclasses.replace(_family("gpt2").tiny(), vocab_size=VOCAB)))):
        model.save_pretrained(root / name)
        build_bpe_files(read_tiktoken(tiny_tiktoken([b"he", b"ll", b"hell", b"hello", b" w", b" wo", b"or"])), {ENDOFTEXT: VOCAB - 1}, root / name)
        (root / name / "tokenizer_config.json").write_text(json.dumps({"pad_token": ENDOFTEXT}))  # batches of several texts
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 120, 40)).save(root / "photo.png")
    return root


def _family(model_type: str):
    return next(family for family in registry.families() if family.model_type == model_type)


def one_line(capsys, argv: list[str], code: int = 1) -> str:
    """Run ``minipt argv`` in this process; it must exit with ``code`` after one line on stderr, no traceback."""
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"minipt {argv[0]}: ")
    return err.strip()


@pytest.fixture
def without_optional_packages(monkeypatch):
    """Every optional package unimportable, as where it is not installed (``import X`` raises ImportError)."""
    for name in OPTIONAL:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


# -- optional packages missing --------------------------------------------------------
NEEDS_A_PACKAGE = [
    (["attention", "{bert-text}", "a text", "--out", "{out}/a.png"], "matplotlib", '"minipt[plot]"'),
    (["features", "{photo}", "--model", "{resnet}", "--out", "{out}/f.png"], "PIL", "pillow"),
    (["classify", "{photo}", "--model", "{efficientnet-lite}"], "PIL", "pillow"),
    (["diff", "{bert}"], "transformers", "transformers"),
    (["diff", "{gpt2}"], "transformers", "transformers"),
    (["diff", "{resnet}"], "torchvision", "torchvision"),
    (["diff", "{efficientnet-lite}"], "timm", "timm"),
    (["diff", "{crnn}"], "PIL", "pillow"),
    (["diff", "{g2p}", "--plot", "{out}/d.png"], "matplotlib", '"minipt[plot]"'),
]


@pytest.mark.parametrize("argv, package, install", NEEDS_A_PACKAGE, ids=[" ".join(a[:2]) + f" ({p})" for a, p, _ in NEEDS_A_PACKAGE])
def test_a_missing_optional_package_is_one_line_naming_it_and_its_install(argv, package, install, tiny, tmp_path, capsys, without_optional_packages):
    places = {path.name: str(path) for path in tiny.iterdir()} | {"photo": str(tiny / "photo.png"), "out": str(tmp_path)}
    line = one_line(capsys, [arg.format(**places) for arg in argv])
    assert package in line and f"pip install {install}" in line, line
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_commands_without_optional_packages_still_run(tiny, tmp_path, capsys, without_optional_packages):
    """inspect, embed, generate and diff on torch.nn references need none of them; demo says what each would add."""
    assert cli.main(["inspect", str(tiny / "g2p"), "--depth", "1"]) == 0
    assert cli.main(["diff", str(tiny / "char-lm"), "--input", "some text"]) == 0
    assert cli.main(["embed", "hello world", "--model", str(tiny / "bert-text"), "--out", str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy").shape == (1, 16)
    assert cli.main(["generate", "--model", str(tiny / "gpt2-text"), "hello", "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    assert cli.main(["demo", "--model", str(tiny / "bert-text")]) == 0
    out = capsys.readouterr().out
    assert "cosine similarity of 6 sentences" in out
    assert "(install transformers to compare" in out and "(install pillow and scikit-image" in out


# -- the defects each fixed --------------------------------------------------------------
def test_temperature_zero_is_refused_as_generate_refuses_it(tiny, capsys):
    model = GPT2LMHeadModel.from_pretrained(tiny / "gpt2-text")
    with pytest.raises(InputError, match="temperature must be > 0") as api:
        model.generate(torch.tensor([[1, 2]]), max_new_tokens=2, do_sample=True, temperature=0.0)
    line = one_line(capsys, ["generate", "--model", str(tiny / "no-such-model"), "hello", "--temperature", "0"])
    assert str(api.value) in line  # the same words, and before the model is looked for
    assert "temperature must be > 0" in one_line(capsys, ["generate", "--model", str(tiny / "gpt2-text"), "hi", "--temperature", "-1"])


def test_sampling_at_a_temperature_differs_from_greedy_and_is_reproducible(tiny, capsys):
    argv = ["generate", "--model", str(tiny / "gpt2-text"), "hello", "--max-new-tokens", "12"]
    texts = []
    for extra in ([], ["--temperature", "5", "--seed", "1"], ["--temperature", "5", "--seed", "1"]):
        assert cli.main(argv + extra) == 0
        texts.append(capsys.readouterr().out)
    assert texts[1] == texts[2] and texts[1] != texts[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inspect", "{g2p}", "--depth", "-1"], "--depth must be"),
        (["generate", "--model", "{gpt2-text}", "hi", "--seed", str(2**70)], "--seed must be an integer in [0, 18446744073709551615]"),
        (["generate", "--model", "{gpt2-text}", "hi", "--seed", "-1"], "--seed must be"),
        (["embed", "hi", "--model", "{bert-text}", "--batch-size", "0"], "--batch-size must be"),
        (["features", "x.png", "--channels", "0"], "--channels must be"),
        (["features", "x.png", "--stage", "-2"], "--stage must be"),
        (["classify", "x.png", "--top", "0"], "--top must be"),
        (["generate", "--model", "{gpt2-text}", "bad \udcff byte"], "prompt 'bad \\udcff byte' is not UTF-8 text"),
        (["embed", "fine", "bad \udcfe", "--model", "{bert-text}"], "is not UTF-8 text"),
        (["attention", "{bert-text}", "\udcff"], "text '\\udcff' is not UTF-8 text"),
        (["diff", "{gpt2-text}", "--input", "\udcff"], "--input '\\udcff' is not UTF-8 text"),
    ],
)
def test_bad_arguments_are_one_line(argv, message, tiny, capsys):
    places = {path.name: str(path) for path in tiny.iterdir()}
    line = one_line(capsys, [arg.format(**places) for arg in argv])
    assert message in line, line


def test_output_paths_are_checked_before_the_work(tiny, tmp_path, capsys):
    missing_model = str(tmp_path / "no-such-model")  # the output check comes first: the model is never looked for
    for argv, option in (
        (["embed", "hi", "--model", missing_model, "--out", "{out}"], "--out"),
        (["attention", missing_model, "hi", "--out", "{out}"], "--out"),
        (["features", "x.png", "--model", missing_model, "--out", "{out}"], "--out"),
        (["diff", missing_model, "--plot", "{out}"], "--plot"),
    ):
        for out, reason in ((tmp_path, "it is a folder"), (tmp_path / "no" / "x.png", f"no folder {tmp_path / 'no'}")):
            line = one_line(capsys, [arg.format(out=out) for arg in argv])
            assert f"{option} {out}: cannot write" in line and reason in line, line
    for argv, option in ((["attention", missing_model, "hi", "--out", "{out}"], "--out"), (["diff", missing_model, "--plot", "{out}"], "--plot"),
                         (["ocr", "page.png", "--boxes", "{out}"], "--boxes")):
        line = one_line(capsys, [arg.format(out=tmp_path / "picture.jpg") for arg in argv])  # a picture is written as PNG
        assert f"{option} {tmp_path / 'picture.jpg'}: cannot write the picture (it is written as a PNG file: name it .png)" in line, line
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "is not writable" in one_line(capsys, ["embed", "hi", "--model", missing_model, "--out", str(locked / "e.npy")])


def test_embed_writes_exactly_the_path_it_reports(tiny, tmp_path, capsys):
    out = tmp_path / "vectors"  # no .npy suffix: none is added
    assert cli.main(["embed", "hello", "world", "--model", str(tiny / "bert-text"), "--out", str(out)]) == 0
    assert f"embeddings to {out}\n" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors"]
    assert np.load(out).shape == (2, 16)


def test_a_path_in_another_encoding_is_printed_back_as_its_bytes(tiny, tmp_path):
    """In a real process: a folder name that is not UTF-8 reaches the command and is printed without a traceback."""
    folder = os.fsencode(tmp_path) + b"/caf\xe9"  # Latin-1
    os.symlink(tiny / "g2p", folder)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "LC_ALL": "C.UTF-8"}
    done = subprocess.run([sys.executable, "-m", "minipt.cli", "inspect", folder, "--depth", "0"], capture_output=True, env=env, timeout=300)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    assert b"G2P from " + folder in done.stdout


def test_features_with_more_channels_than_the_stage_has_shows_and_says_them_all(tiny, tmp_path, capsys):
    import re

    out = tmp_path / "fm.png"
    assert cli.main(["features", str(tiny / "photo.png"), "--model", str(tiny / "resnet"), "--stage", "0", "--channels", "5000", "--out", str(out)]) == 0
    counted = re.search(r"stage 0: (\d+) channels of \d+x\d+, the (\d+) most active", capsys.readouterr().out)
    assert counted and counted[1] == counted[2] and int(counted[1]) < 5000 and out.stat().st_size > 0


def test_an_empty_model_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch, capsys):
    """Path("") is ".": `minipt inspect ""` (an unset shell variable) inspected whatever checkpoint the current folder held."""
    from minipt import cli
    from minipt.models.resnet import resnet18

    resnet18(num_classes=3).save_pretrained(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["inspect", ""]) == 1
    assert "minipt inspect: '' names no checkpoint" in capsys.readouterr().err
