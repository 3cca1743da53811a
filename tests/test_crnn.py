"""The CRNN text recogniser on EasyOCR's official English weights.

References: text rendered with Pillow (the ground truth is the string drawn),
torch.nn.LSTM on the same LSTM weights, and EasyOCR's network rebuilt from
torch.nn under its official names and loaded strictly from the same file.
minipt's LSTM loop and torch.nn's kernels round differently, so numbers are
held to an error ratio against the torch.nn reference run in float64
(tests/helpers.py), not to a fixed absolute bound.
"""

import json
import sys

import pytest
import torch
from torch import nn

from minipt.checkpoint import official_state_dict
from minipt.errors import ConfigError, InputError, KeyMismatchError
from minipt.hub import resolve
from minipt.models.crnn import CRNN, ENGLISH_CHARSET, OFFICIAL_FILE, english_g2, preprocess, read_text
from PIL import Image, ImageDraw, ImageFont  # pillow renders the test images (a test dependency)

from helpers import assert_error_ratio


pytestmark = pytest.mark.usefixtures("one_thread")

def render(text: str, size: int | None = None, margin: int = 4) -> Image.Image:
    font = ImageFont.load_default() if size is None else ImageFont.load_default(size=size)
    _, _, right, bottom = font.getbbox(text)
    image = Image.new("L", (right + 2 * margin, bottom + 2 * margin), 255)
    ImageDraw.Draw(image).text((margin, margin), text, fill=0, font=font)
    return image


@pytest.fixture(scope="module")
def model():
    return english_g2()  # the instance read_text() uses


@pytest.fixture(scope="module")
def official():
    return torch.load(resolve("easyocr-english-g2") / OFFICIAL_FILE, map_location="cpu", weights_only=True)


def test_reads_pillow_default_font():
    assert read_text(render("Hello World 2024")) == "Hello World 2024"


@pytest.mark.parametrize("text", ["The quick brown fox", "minipt 0.1.0!", "Hello World 2024"])
def test_reads_larger_text(model, text):
    assert model.read(render(text, size=32)) == [text]


def test_reads_a_file(model, tmp_path):
    path = tmp_path / "line.png"
    render("Hello World 2024").save(path)
    assert model.read([path, str(path)]) == ["Hello World 2024"] * 2


def test_charset_is_easyocr_english():
    assert len(ENGLISH_CHARSET) == 96 and ENGLISH_CHARSET[:10] == "0123456789" and ENGLISH_CHARSET.endswith("xyz")
    assert ENGLISH_CHARSET[42:44] == " €" and ENGLISH_CHARSET[44] == "A"


def test_greedy_ctc_merges_repeats_and_drops_blanks(model):
    h, i = 1 + ENGLISH_CHARSET.index("H"), 1 + ENGLISH_CHARSET.index("i")
    path = [0, h, h, 0, i, i, 0, 0, i, i]  # "H", "i", blank-separated "i": "Hii"
    logits = torch.nn.functional.one_hot(torch.tensor([path]), 97).float()
    assert model.decode(logits) == ["Hii"]


def _torch_lstm(official: dict, layer: int, dtype=torch.float32) -> nn.LSTM:
    lstm = nn.LSTM(256, 256, bidirectional=True, batch_first=True, dtype=dtype)
    prefix = f"module.SequenceModeling.{layer}.rnn."
    lstm.load_state_dict({k[len(prefix) :]: v for k, v in official.items() if k.startswith(prefix)})
    return lstm.eval()


def test_the_recurrent_layers_are_minipts(model):
    import minipt.nn

    for block in model.sequence:
        assert type(block.lstm) is minipt.nn.LSTM and not isinstance(block.lstm, nn.LSTM)


@torch.no_grad()
def test_lstms_match_torch_nn_on_the_official_weights(model, official):
    images = torch.cat([preprocess(render("Hello World 2024").resize((280, 64))), preprocess(render("minipt 0.1.0!").resize((280, 64)))])
    x = model.features(images).mean(dim=2).transpose(1, 2)  # (2, T, 256): the real input of the first BiLSTM
    for layer, block in enumerate(model.sequence):
        out, (h, c) = block.lstm(x)
        ref_out, (ref_h, ref_c) = _torch_lstm(official, layer)(x)
        exact_out, (exact_h, exact_c) = _torch_lstm(official, layer, torch.float64)(x.double())
        # output and h_n lie in (-1, 1), the cell state is unbounded (|c| reaches ~36 on this line); the gates
        # work at magnitude 1 whatever the outputs' size, so the floor is counted in ulps at 1 or more
        assert_error_ratio([out, h, c], [ref_out, ref_h, ref_c], [exact_out, exact_h, exact_c], scale=1.0, what=f"BiLSTM {layer} (output, h_n, c_n)")
        x = block(x)


class EasyOCRReference(nn.Module):
    """EasyOCR's english_g2 network from torch.nn, named as in its checkpoint (an nn.Sequential by position)."""

    def __init__(self):
        super().__init__()
        conv = lambda i, o, bias=True: nn.Conv2d(i, o, 3, 1, 1, bias=bias)  # noqa: E731
        self.FeatureExtraction = nn.Module()
        self.FeatureExtraction.ConvNet = nn.Sequential(
            conv(1, 32), nn.ReLU(), nn.MaxPool2d(2, 2),
            conv(32, 64), nn.ReLU(), nn.MaxPool2d(2, 2),
            conv(64, 128), nn.ReLU(), conv(128, 128), nn.ReLU(), nn.MaxPool2d((2, 1), (2, 1)),
            conv(128, 256, False), nn.BatchNorm2d(256), nn.ReLU(),
            conv(256, 256, False), nn.BatchNorm2d(256), nn.ReLU(), nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(256, 256, 2, 1, 0), nn.ReLU(),
        )  # fmt: skip
        self.SequenceModeling = nn.ModuleList()
        for _ in range(2):
            block = nn.Module()
            block.rnn, block.linear = nn.LSTM(256, 256, bidirectional=True, batch_first=True), nn.Linear(512, 256)
            self.SequenceModeling.append(block)
        self.Prediction = nn.Linear(256, 97)

    def forward(self, x):
        features = self.FeatureExtraction.ConvNet(x)  # (B, 256, 3, T)
        x = nn.functional.adaptive_avg_pool2d(features.permute(0, 3, 1, 2), (None, 1)).squeeze(3)  # (B, T, 256)
        for block in self.SequenceModeling:
            x = block.linear(block.rnn(x)[0])
        return self.Prediction(x)


@torch.no_grad()
def test_whole_model_matches_a_torch_nn_reference(model, official):
    reference = EasyOCRReference().eval()
    reference.load_state_dict({k.removeprefix("module."): v for k, v in official.items()}, strict=True)
    reference64 = EasyOCRReference().double().eval()
    reference64.load_state_dict(reference.state_dict(), strict=True)
    images = torch.cat([preprocess(render("Hello World 2024").resize((200, 64))), torch.rand(1, 1, 64, 200) * 2 - 1])
    # fp32 through 7 convolutions and 2 BiLSTMs (logits of magnitude ~10-30): an error ratio against float64
    assert_error_ratio(model(images), reference(images), reference64(images.double()), what="logits")


def test_official_names_round_trip(model, official):
    state = official_state_dict(model, CRNN.keymap())
    assert {"module." + k for k in state} == set(official)
    for key, tensor in state.items():
        assert torch.equal(tensor, official["module." + key]), key


def test_a_checkpoint_of_another_model_is_refused(tmp_path, official):
    damaged = dict(official)
    del damaged["module.Prediction.bias"]
    damaged["module.Prediction.weight"] = torch.zeros(37, 256)  # a 36-character model
    torch.save(damaged, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=r"num_classes = 97, but module.Prediction.weight has shape \(37, 256\)"):
        CRNN.from_pretrained(tmp_path / "other.pth")
    del damaged["module.Prediction.weight"]
    torch.save(damaged, tmp_path / "other.pth")
    with pytest.raises(KeyMismatchError, match=r"(?s)missing \(2\):.*Prediction.weight \(97, 256\)"):
        CRNN.from_pretrained(tmp_path / "other.pth")


def test_a_stage_width_that_disagrees_with_its_convolution_is_refused(tmp_path):
    from minipt.models.crnn import CRNNConfig

    tiny = CRNN(CRNNConfig(channels=(4, 4, 8, 8), hidden_size=8, charset="abcd")).save_pretrained(tmp_path / "tiny")
    config = json.loads((tiny / "config.json").read_text())
    config["channels"] = [4, 4, 8, 2**40]  # built as given, this stage alone would need terabytes
    (tiny / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"channels\[3\] = 1099511627776, but FeatureExtraction.ConvNet.11.weight has shape \(8, 8, 3, 3\)"):
        CRNN.from_pretrained(tiny)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(1, 64, 100), "rank 4"),
        (torch.zeros(1, 1, 32, 100), "height 32"),
        (torch.zeros(1, 3, 64, 100), "3 channel"),
        (torch.zeros(1, 1, 64, 4), "at least 8 pixels wide"),
        (torch.zeros(1, 1, 64, 100, dtype=torch.uint8), "float"),
    ],
)
def test_bad_images_are_named(model, images, message):
    with pytest.raises(InputError, match=message):
        model(images)


def test_bad_preprocess_inputs_are_named(tmp_path):
    with pytest.raises(InputError, match="no such image file"):
        preprocess(tmp_path / "missing.png")
    with pytest.raises(InputError, match="2-D uint8"):
        preprocess(torch.zeros(3, 64, 100, dtype=torch.uint8))
    with pytest.raises(InputError, match="PIL image"):
        preprocess(42)


def test_without_pillow_reading_an_image_names_the_package(monkeypatch):
    from minipt.errors import MissingDependencyError

    for name in ("PIL", "PIL.Image", "PIL.ImageDraw", "PIL.ImageFont"):
        monkeypatch.setitem(sys.modules, name, None)  # as if Pillow were not installed
    with pytest.raises(MissingDependencyError, match=r"needs Pillow \(PIL\): pip install pillow"):
        preprocess(torch.zeros(64, 100, dtype=torch.uint8))


def test_a_16_bit_line_reads_as_its_8_bit_self(model, tmp_path):
    """Pillow's convert("L") clips 16-bit grey levels at 255: the line became white and read as ''."""
    import numpy as np

    line = np.asarray(render("Hello World 2024"))
    sixteen = Image.fromarray(line.astype(np.uint16) * 257)
    sixteen.save(tmp_path / "line16.png")
    assert Image.open(tmp_path / "line16.png").mode.startswith("I")
    assert torch.equal(preprocess(sixteen), preprocess(Image.fromarray(line)))
    assert read_text(tmp_path / "line16.png") == "Hello World 2024"
