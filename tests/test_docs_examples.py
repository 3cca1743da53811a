"""The examples of docs/*.md, run as they are written (README.md's are test_readme.py's).

Each page's ```python blocks run in order in one namespace, as a reader would type them (a block may use what
an earlier one on the page defined: BERT's ``model`` and ``batch``). Names of files that no package installs
here are replaced by files of the same official format written for the test (random weights saved by
transformers or torchvision, photos from scikit-image); names a block takes from the prose around it
(``input_ids``, ``train_loader``) are given under the block's heading. One block is a sketch, not a program
(``dynamic_shapes=...``): it is listed in SKETCHES with why, and must keep its ellipsis. A block under a heading
with no entry here still runs; a failure names the page, heading and line.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from test_readme import REPO, chelsea, line_of_text, page, random_gpt2, random_vit, run_block, small_char_lm, torchvision_file

pytestmark = pytest.mark.usefixtures("one_thread")

PAGES = ["models.md", "backends.md", "looking_inside.md", "transfer.md"]
SKETCHES = {("models.md", "T5", 1): "exporting the encoder and one decoder step: shapes and dynamic_shapes elided (tests/test_t5.py runs it)"}


def blocks(name: str) -> list[tuple[str, int, int, str]]:
    """(heading, index under the heading, line, source) of each python block of docs/``name``."""
    found, heading, counts = [], None, {}
    text = (REPO / "docs" / name).read_text()
    for match in re.finditer(r"^(?P<level>#+) (?P<heading>[^\n]+)$|^```python\n(?P<body>.*?)^```$", text, re.M | re.S):
        if match["heading"]:
            heading = match["heading"].strip()
        else:
            index = counts[heading] = counts.get(heading, -1) + 1
            found.append((heading, index, text[: match.start()].count("\n") + 1, match["body"]))
    return found


# -- stand-ins for files no package installs -------------------------------------------------------
def _transformers():
    from minipt.reference import import_transformers

    return import_transformers()


def masked_lm(kind: str):
    def write(folder: Path) -> str:
        transformers = _transformers()
        sizes = dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64) if kind == "distilbert" else \
            dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, embedding_size=16)
        config = transformers.AutoConfig.for_model(kind, vocab_size=120, max_position_embeddings=64, **sizes)
        transformers.AutoModelForMaskedLM.from_config(config).save_pretrained(folder)  # what the hub's base checkpoints are
        return str(folder)
    return write


def vit_encoder(folder: Path) -> str:
    """A ViTModel without a classifier, as google/vit-base-patch16-224-in21k: a new head is fine-tuned on it."""
    transformers = _transformers()
    transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    return str(folder)


def clip(folder: Path) -> str:
    transformers = _transformers()
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16),
        projection_dim=16)
    transformers.CLIPModel(config).save_pretrained(folder)
    return str(folder)


def t5(folder: Path) -> str:
    transformers = _transformers()
    config = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2, feed_forward_proj="gated-gelu",
                                   tie_word_embeddings=False, decoder_start_token_id=0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(folder)
    return str(folder)


FILES = {  # a name in a block -> writes its stand-in under the given file name
    "path/to/roberta-base": ("roberta", masked_lm("roberta")),
    "path/to/albert-base-v2": ("albert", masked_lm("albert")),
    "path/to/distilbert-base-uncased": ("distilbert", masked_lm("distilbert")),
    "path/to/gpt2": ("gpt2", random_gpt2),
    "path/to/flan-t5-small": ("t5", t5),
    "resnet50.pth": ("resnet50.pth", lambda path: torchvision_file("resnet50", path)),
    "path/to/vit-base-patch16-224": ("vit-classifier", random_vit),
    "path/to/vit": ("vit-encoder", vit_encoder),
    "vit_b_16-c867db91.pth": ("vit_b_16.pth", lambda path: torchvision_file("vit_b_16", path)),
    "path/to/clip-vit-base-patch32": ("clip", clip),
    "cat.jpg": ("cat.jpg", chelsea),
    "cat.png": ("cat.png", chelsea),
    "line.png": ("line.png", line_of_text),
    "page.png": ("page.png", page),
    "sign.jpg": ("sign.jpg", page),
    "runs/char_lm": ("char_lm", small_char_lm),
}


def _ids(vocab: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(3, vocab, (2, 7), generator=generator), "attention_mask": torch.ones(2, 7, dtype=torch.long)}


def _fit_inputs(ns: dict) -> dict:
    """What the prose around fit's example describes: a loader of the classifier's batches, a held-out metric, a schedule."""
    batch = {**_ids(100), "labels": torch.tensor([0, 6])}
    return {"train_loader": [batch], "held_out_accuracy": lambda model: 0.5,
            "scheduler": torch.optim.lr_scheduler.LinearLR(ns["optimizer"], total_iters=10)}


GIVEN = {  # (page, heading) -> names its blocks use that the prose describes; a function of the namespace so far
    ("models.md", "RoBERTa"): lambda ns: _ids(120),
    ("models.md", "ALBERT"): lambda ns: _ids(120),
    ("models.md", "DistilBERT"): lambda ns: _ids(120),
    ("models.md", "T5"): lambda ns: {"input_ids": _ids(100)["input_ids"], "mask": torch.ones(2, 7, dtype=torch.long),
                                     "prompt": torch.zeros(2, 2, dtype=torch.long)},
    ("models.md", "ResNet"): lambda ns: {"images": torch.randn(2, 3, 64, 64)},
    ("models.md", "ViT"): lambda ns: {"images_384": torch.randn(2, 3, 384, 384), "labels": torch.tensor([1, 7])},
    ("models.md", "RNN, LSTM, GRU"): lambda ns: {"x": torch.randn(3, 10, 256), "lengths": torch.tensor([10, 4, 7])},
    ("models.md", "CRNN: reading a line of text"): lambda ns: {"images": torch.rand(2, 1, 64, 120) * 2 - 1},
    ("backends.md", "`fuse()`: inference copies for the CPU"): lambda ns: {"batch": _ids(1000)},
    ("transfer.md", "Freezing, heads, learning rates"): lambda ns: {"labels": torch.tensor([0, 6, 3])},
    ("transfer.md", "Training loop: `fit`"): _fit_inputs,
}


@pytest.mark.parametrize("name", PAGES)
def test_a_pages_examples_run_as_written(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs"}
    ran = 0
    for heading, index, line, source in blocks(name):
        if (name, heading, index) in SKETCHES:
            assert "..." in source, f"docs/{name}:{line} is listed as a sketch but has no ellipsis: run it"
            continue
        for placeholder, (file_name, write) in FILES.items():
            if f'"{placeholder}"' in source:
                target = tmp_path / "files" / file_name
                if not target.exists():
                    target.parent.mkdir(exist_ok=True)
                    write(target)
                source = source.replace(f'"{placeholder}"', repr(str(target)))
        namespace.update(GIVEN.get((name, heading), lambda ns: {})(namespace))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fuse(torch.bfloat16) warns on CPUs without bfloat16 instructions
                run_block(source, namespace)
        except Exception as error:
            raise AssertionError(f"docs/{name}:{line} (under {heading!r}) fails: {type(error).__name__}: {error}") from error
        ran += 1
    assert ran >= 1


def test_every_sketch_and_given_entry_names_a_block():
    present = {(name, heading) for name in PAGES for heading, _, _, _ in blocks(name)}
    assert {(name, heading) for name, heading, _ in SKETCHES} <= present
    assert set(GIVEN) <= present, set(GIVEN) - present


def github_anchors(text: str) -> set[str]:
    """The fragment each heading of a Markdown page gets on GitHub: lower case, punctuation other than - and _ dropped,
    spaces made hyphens, a repeated one numbered (-1, -2, ...)."""
    anchors: set[str] = set()
    inside_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            inside_code = not inside_code
        match = None if inside_code else re.match(r"#+ (.+)$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower().replace("`", "")).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in anchors:
                n += 1
                anchor = f"{slug}-{n}"
            anchors.add(anchor)
    return anchors


def test_every_link_between_pages_reaches_its_file_and_heading():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for source in pages:
        for target, fragment in re.findall(r"\]\((?!https?:)([^)#\s]*)(?:#([^)\s]+))?\)", source.read_text()):
            linked = (source.parent / target).resolve() if target else source
            if not linked.exists():
                broken.append(f"{source.name}: {target} does not exist")
            elif fragment and linked.suffix == ".md" and fragment not in github_anchors(linked.read_text()):
                broken.append(f"{source.name}: {target or source.name}#{fragment} names no heading")
    assert not broken, broken
