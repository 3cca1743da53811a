"""The README's examples, run as they are written.

Every ```python block of README.md is executed statement by statement, in a fresh namespace. Where a block
names a catalogued checkpoint (all-MiniLM-L6-v2, efficientnet_lite0, ...) it runs on the real fetched weights;
where it names a file no package installs here ("path/to/gpt2", "resnet50.pth", ...), the name is replaced by a
file of the same official format written for the test (random weights saved by transformers or torchvision, a
photo from scikit-image, a line drawn with Pillow). Names a block uses without defining (``images``) are given
as the text around it describes them. Then what the block's comments promise (shapes, texts, learning rates)
is checked on the values it computed. A README block without an entry here fails, so an example cannot be
added or changed without being run.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

pytestmark = pytest.mark.usefixtures("one_thread")


def readme_blocks() -> dict[str, list[str]]:
    """The fenced blocks of README.md under each bold example title (``**GPT-2 generation**``): {title: [block]}."""
    blocks: dict[str, list[str]] = {}
    title = None
    for match in re.finditer(r"^\*\*(?P<title>[^*]+)\*\*|^```(?P<lang>\w*)\n(?P<body>.*?)^```$", README.read_text(), re.M | re.S):
        if match["title"]:
            title = match["title"]
        elif title is not None:
            blocks.setdefault(title, []).append(f"{match['lang']}\n{match['body']}")
    return blocks


def python_blocks() -> dict[str, str]:
    return {title: block.split("\n", 1)[1] for title, found in readme_blocks().items() for block in found if block.startswith("python\n")}


def run_block(source: str, namespace: dict) -> list:
    """Execute ``source`` one statement at a time; the values of bare expressions (``out.last_hidden_state``) are
    returned in order, as an interactive session would show them (None is not shown)."""
    shown = []
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), "README.md", "eval"), namespace)
            if value is not None:
                shown.append(value)
        else:
            exec(compile(ast.Module([statement], type_ignores=[]), "README.md", "exec"), namespace)
    return shown


# -- the files a block names that no package installs --------------------------------------------------
def random_gpt2(folder: Path) -> str:
    """A 1-layer GPT-2 on GPT-2's 50,257-token vocabulary, in Hugging Face's format."""
    import transformers

    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


def torchvision_file(builder: str, path: Path) -> str:
    """torchvision's state dict for ``builder`` (the architecture of the file the README names), as a .pth."""
    import torchvision.models

    with torch.device("meta"):
        shapes = getattr(torchvision.models, builder)().state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(value.shape, generator=generator).to(value.dtype) * 0.02 if value.is_floating_point() else torch.zeros(value.shape, dtype=value.dtype)
             for key, value in shapes.items()}
    state.update({key: torch.ones(value.shape) for key, value in shapes.items() if key.endswith("running_var")})
    torch.save(state, path)
    return str(path)


def random_vit(folder: Path) -> str:
    """A small ViTForImageClassification (224 px, patches of 16, 3 labels), in Hugging Face's format."""
    import transformers

    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3)
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    return str(folder)


def chelsea(path: Path) -> str:
    from PIL import Image
    from skimage import data

    Image.fromarray(data.chelsea()).save(path)
    return str(path)


def line_of_text(path: Path) -> str:
    """'Hello World 2024' in Pillow's default font, as the README's comment reads it."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (160, 24), 255)
    ImageDraw.Draw(image).text((4, 6), "Hello World 2024", fill=0)
    image.save(path)
    return str(path)


def page(path: Path) -> str:
    from PIL import Image
    from skimage import data

    Image.fromarray(data.page()).save(path)
    return str(path)


def small_char_lm(folder: Path) -> str:
    """What ``examples/train_char_lm.py --quick`` writes (its training is tested in test_char_lm.py), untrained."""
    from minipt.models.char_lm import CharLM, CharLMConfig

    CharLM(CharLMConfig(embed_size=16, hidden_size=32, num_layers=2)).save_pretrained(folder)
    return str(folder)


# -- what each block promises -----------------------------------------------------------------------
def check_bert(ns: dict, shown: list) -> None:
    assert shown[0].shape == (2, ns["out"].last_hidden_state.shape[1], 384)
    assert ns["vectors"].shape == (1, 384) and torch.allclose(ns["vectors"].norm(dim=-1), torch.ones(1))
    ids = ns["tok"](["a first sentence"])
    with torch.no_grad():
        expected = ns["model"](**ids).last_hidden_state
        assert torch.allclose(ns["fast"](**ids).last_hidden_state, expected, atol=1e-4)
        assert torch.nn.functional.cosine_similarity(ns["half"](**ids).last_hidden_state.float().flatten(), expected.flatten(), dim=0) > 0.99


def check_gpt2(ns: dict, shown: list) -> None:
    prompt = ns["ids"].shape[1]
    assert ns["out"].shape == (1, prompt + 40) and torch.equal(ns["out"][:, :prompt], ns["ids"])


def check_resnet(ns: dict, shown: list) -> None:
    assert ns["features"].shape == (2, 2048, 2, 2)  # (B, 2048, H/32, W/32) for 64 x 64 images
    with torch.no_grad():
        assert torch.allclose(ns["fast"](ns["images"]), ns["model"].eval()(ns["images"]), atol=1e-4)


def check_vgg_vit(ns: dict, shown: list) -> None:
    vgg = ns["vgg"]
    assert vgg.get_classifier().out_features == 1000
    vgg.reset_classifier(10)  # "for a new task"
    with torch.no_grad():
        assert vgg.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert ns["out"].logits.shape == (1, 3)


def check_classify(ns: dict, shown: list) -> None:
    (top,) = shown[0]
    assert len(top) == 5 and top[0][0] in CATS and all(0 < p < 1 for _, p in top)


CATS = {"tabby", "tiger cat", "Egyptian cat"}  # what the README's comment shows for its cat photo


def check_rnn(ns: dict, shown: list) -> None:
    assert ns["output"].shape == (8, 100, 1024) and ns["h_n"].shape == ns["c_n"].shape == (4, 8, 512)


def check_ocr(ns: dict, shown: list) -> None:
    assert shown[0] == "Hello World 2024"
    assert "Region-based segmentation" in shown[1][0]


def check_char_lm(ns: dict, shown: list) -> None:
    assert ns["ids"].shape == (1, len("The government ") + 300)


def check_transfer(ns: dict, shown: list) -> None:
    frozen = {name for name, p in ns["model"].named_parameters() if not p.requires_grad}
    assert frozen and all(not name.startswith(("bert.layers.4", "bert.layers.5", "bert.pooler", "classifier")) for name in frozen)
    rates = sorted({group["lr"] for group in ns["optimizer"].param_groups}, reverse=True)
    assert rates[:2] == pytest.approx([1e-4, 8e-5])  # head 1e-4, pooler 8e-5, ...


def check_probe(ns: dict, shown: list) -> None:
    assert shown[0] == (2, 12, 9, 9)


@dataclass
class Example:
    check: Callable[[dict, list], None]
    files: dict[str, Callable[[Path], str]] = field(default_factory=dict)  # name in the block -> writes a stand-in
    given: Callable[[], dict] = dict  # names the block uses without defining them


EXAMPLES = {
    "BERT and sentence embeddings": Example(check_bert),
    "GPT-2 generation": Example(check_gpt2, {"path/to/gpt2": lambda tmp: random_gpt2(tmp / "gpt2")}),
    "ResNet": Example(check_resnet, {"resnet50.pth": lambda tmp: torchvision_file("resnet50", tmp / "resnet50.pth")},
                      lambda: {"images": torch.randn(2, 3, 64, 64)}),
    "VGG and ViT": Example(check_vgg_vit, {"vgg16_bn-6c64b313.pth": lambda tmp: torchvision_file("vgg16_bn", tmp / "vgg16_bn.pth"),
                                           "path/to/vit": lambda tmp: random_vit(tmp / "vit")},
                           lambda: {"images_384": torch.randn(1, 3, 384, 384)}),
    "EfficientNet-Lite: classify photos": Example(check_classify, {"cat.png": lambda tmp: chelsea(tmp / "cat.png")}),
    "RNN, LSTM, GRU: drop-ins for torch.nn": Example(check_rnn),
    "CRNN and CRAFT: read text in images": Example(check_ocr, {"line.png": lambda tmp: line_of_text(tmp / "line.png"),
                                                             "page.png": lambda tmp: page(tmp / "page.png")}),
    "A byte-level LSTM language model": Example(check_char_lm, {"runs/char_lm": lambda tmp: small_char_lm(tmp / "char_lm")}),
    "Transfer learning and fine-tuning": Example(check_transfer),
    "Looking inside: probe and diff": Example(check_probe),
}


def test_every_python_block_has_an_entry():
    assert set(python_blocks()) == set(EXAMPLES), "each README example is run here: add (or rename) its entry in EXAMPLES"


@pytest.mark.parametrize("title", sorted(EXAMPLES))
def test_example_runs_as_written(title, tmp_path, monkeypatch):
    source = python_blocks()[title]
    example = EXAMPLES[title]
    for name, write in example.files.items():
        assert f'"{name}"' in source, f"the README's {title!r} example no longer names {name!r}"
        source = source.replace(f'"{name}"', repr(write(tmp_path)))
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme", **example.given()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fuse(torch.bfloat16) warns on CPUs without bfloat16 instructions
        shown = run_block(source, namespace)
    example.check(namespace, shown)


def test_g2p_example_prints_what_the_readme_shows():
    (block,) = readme_blocks()["G2P: words to phonemes"]
    command, *expected = block.split("\n", 1)[1].strip().splitlines()
    args = command.removeprefix("$ python ").split()
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert [line.split() for line in result.stdout.strip().splitlines()] == [line.split() for line in expected]
