"""minipt.plot and the commands that write its pictures: figures for small inputs, PNG files of plausible
size, one-line errors for bad input, and a clear error without matplotlib."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from bert_reference import minilm_path  # noqa: F401  (sets up the reference stack)
from minipt import cli
from minipt.errors import InputError, MiniptError, MissingDependencyError, SaveError
from minipt.plot import attention_maps, cross_attention, feature_maps, layer_diff, patch_attention, save_png

PNG = b"\x89PNG\r\n\x1a\n"
CHELSEA = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data" / "chelsea.png"


def written(path: Path, low=5_000, high=300_000) -> int:
    """The size of a PNG file, checked to be a PNG of a plausible size for a small picture."""
    assert path.read_bytes()[:8] == PNG
    size = path.stat().st_size
    assert low <= size <= high, size
    return size


def panels(figure) -> list:
    return [ax for ax in figure.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def test_attention_maps(tmp_path):
    probs = tuple(torch.softmax(torch.randn(2, 3, 5, 5), dim=-1) for _ in range(4))  # 4 layers, 3 heads, 5 tokens
    tokens = ["[CLS]", "a", "small", "test", "[SEP]"]
    fig = attention_maps(probs, tokens, layers=2)
    maps = panels(fig)
    assert [ax.get_title() for ax in maps] == ["layer 2, head 0", "layer 2, head 1", "layer 2, head 2"]  # counted from 0, as layers.2
    assert [t.get_text() for t in maps[0].get_xticklabels()] == tokens
    shown = maps[1].get_images()[0].get_array()
    assert torch.allclose(torch.as_tensor(shown.data), probs[2][0, 1])  # the first sequence's head 1 of layers.2, as given
    assert len(panels(attention_maps(probs, tokens, layers=[0, 3], heads=[0, 2]))) == 4  # one row per layer
    assert panels(attention_maps(probs, tokens, heads="mean", sequence=1))[0].get_title() == "layer 0, mean of 3 heads"
    save_png(fig, tmp_path / "attention.png")
    written(tmp_path / "attention.png")


def test_attention_maps_bad_input():
    probs = (torch.rand(1, 2, 4, 4),)
    with pytest.raises(InputError, match="3 tokens for attention over 4 positions"):
        attention_maps(probs, ["a", "b", "c"])
    with pytest.raises(InputError, match=r"layer 1 does not exist: the model has layers 0..0"):
        attention_maps(probs, list("abcd"), layers=1)
    with pytest.raises(InputError, match=r"head 2 does not exist: the model has heads 0..1"):
        attention_maps(probs, list("abcd"), heads=[0, 2])
    with pytest.raises(InputError, match="head -1 does not exist"):
        attention_maps(probs, list("abcd"), heads=[-1])
    with pytest.raises(InputError, match="shaped \\(batch, heads, T, T\\)"):
        attention_maps(torch.rand(2, 4, 4), list("abcd"))
    with pytest.raises(InputError, match=r"layer 1 has shape \(1, 3, 4, 4\), layer 0 \(1, 2, 4, 4\)"):
        attention_maps([probs[0], torch.rand(1, 3, 4, 4)], list("abcd"))
    with pytest.raises(InputError, match="tokens must be the 4 token labels"):
        attention_maps(probs, None)
    assert attention_maps(iter(probs), list("abcd")) is not None  # any iterable of layers


def test_feature_maps(tmp_path):
    maps = torch.zeros(1, 6, 8, 8)
    maps[0, 4] = 3.0  # the most active channel comes first
    maps[0, 2] = 2.0
    fig = feature_maps(maps, channels=3, image=torch.randint(0, 256, (3, 32, 32)).float(), title="stage")
    assert [ax.get_title() for ax in panels(fig)][:3] == ["input", "channel 4", "channel 2"] and len(panels(fig)) == 4
    assert [ax.get_title() for ax in panels(feature_maps(maps[0], channels=[5, 0]))] == ["channel 5", "channel 0"]
    save_png(fig, tmp_path / "fm.png")
    written(tmp_path / "fm.png", low=2_000)
    with pytest.raises(InputError, match="channel 6 does not exist"):
        feature_maps(maps, channels=[6])
    with pytest.raises(InputError, match="one image's maps"):
        feature_maps(torch.zeros(2, 6, 8, 8))
    with pytest.raises(InputError, match=r"maps of shape \(0, 8, 8\): no channel or no pixel"):
        feature_maps(torch.zeros(0, 8, 8))
    with pytest.raises(InputError, match=r"image must be a picture.*got shape \(2, 7, 7\)"):
        feature_maps(maps, image=torch.zeros(2, 7, 7))
    assert panels(feature_maps(maps, channels=1, image=str(CHELSEA)))[0].get_title() == "input"  # a path is read


def test_layer_diff(tmp_path):
    report = [("embeddings", 0.0), ("layer 1", 3e-7), ("layer 2", 2e-5), ("pooler", 1e-6)]
    fig = layer_diff(report, tolerance=1e-5)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_title() == "1 of 4 places above the tolerance, 1 exactly equal"
    assert [t.get_text() for t in ax.get_xticklabels()] == [place for place, _ in report]
    assert any(line.get_ydata()[0] == 1e-5 for line in ax.get_lines())  # the tolerance line
    save_png(fig, tmp_path / "diff.png")
    written(tmp_path / "diff.png", low=2_000)
    for bad in ([], [("layer 1", -1.0)], [("layer 1",)], "layer 1"):
        with pytest.raises(InputError):
            layer_diff(bad)
    # a point that went NaN or inf (a diff that blew up) is drawn, marked at the top: when a picture is wanted most
    ax = layer_diff([("layer 1", 1e-6), ("layer 2", float("nan")), ("layer 3", float("inf"))]).axes[0]
    assert "not finite (NaN or inf)" in [t.get_text() for t in ax.get_legend().get_texts()]
    # a DiffReport's point whose shape differs (a stride moved) is drawn and counted, not left out
    from minipt.reference import DiffReport, DiffRow

    diverged = DiffReport("minipt ResNet", "torchvision ResNet", "x", 1e-5, [
        DiffRow("stem.out", "stem", 0.0, 0.0), DiffRow("stages.2.0.conv1.out", "layer3.0.conv1", math.inf, math.inf, ((1, 8, 4, 4), (1, 8, 2, 2)), True),
        DiffRow("head.out", "fc", 1e-7, 1e-7)])
    ax = layer_diff(diverged).axes[0]
    assert ax.get_title() == "1 of 3 places above the tolerance, 1 exactly equal"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stem.out", "stages.2.0.conv1.out", "head.out"]
    assert "another shape" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_save_png_names_an_unwritable_path(tmp_path):
    fig = layer_diff([("layer 1", 1e-6)])
    with pytest.raises(SaveError, match="cannot write"):
        save_png(fig, tmp_path / "no" / "such" / "dir" / "x.png")


def test_without_matplotlib_the_error_says_how_to_install_it(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"minipt\[plot\]"):
        layer_diff([("layer 1", 1e-6)])
    assert issubclass(MissingDependencyError, MiniptError)


# -- the commands --------------------------------------------------------------------------
def test_attention_command(tmp_path, capsys):
    out = tmp_path / "attn.png"
    assert cli.main(["attention", str(minilm_path()), "The cat sat on the mat.", "--layer", "2", "--heads", "1,2", "--out", str(out)]) == 0
    assert "attention of 9 tokens" in capsys.readouterr().out  # [CLS] the cat sat on the mat . [SEP]
    written(out)


def test_attention_command_says_where_it_cut_a_long_text(tmp_path, capsys):
    out = tmp_path / "attn.png"
    assert cli.main(["attention", str(minilm_path()), " ".join(["word"] * 600), "--layer", "0", "--heads", "mean", "--out", str(out)]) == 0
    assert "attention of 512 tokens (the text's first 510 of 600 tokens: the tokenizer cuts at 512 with its special tokens)" in capsys.readouterr().out
    written(out)


def test_features_command(tmp_path, capsys):
    out = tmp_path / "fm.png"
    assert cli.main(["features", str(CHELSEA), "--stage", "1", "--channels", "7", "--out", str(out)]) == 0
    assert "24 channels of 56x56" in capsys.readouterr().out
    written(out)


def test_features_command_on_a_resnet(tmp_path, capsys):
    """A ResNet checkpoint (random weights, minipt's official layout): its stages are layer1..layer4."""
    from minipt.models.resnet import resnet18

    torch.manual_seed(0)
    resnet18().save_pretrained(tmp_path / "r18")
    out = tmp_path / "fm.png"
    assert cli.main(["features", str(CHELSEA), "--model", str(tmp_path / "r18"), "--stage", "2", "--channels", "5", "--out", str(out)]) == 0
    assert "ResNet stage 2: 256 channels of 14x14" in capsys.readouterr().out  # layer3 of a 224-pixel crop
    written(out)
    assert cli.main(["features", str(CHELSEA), "--model", str(tmp_path / "r18"), "--stage", "4"]) == 1
    assert "--stage 4 does not exist: ResNet has stages 0..3" in capsys.readouterr().err


def test_diff_plot(tmp_path, capsys):
    out = tmp_path / "diff.png"
    assert cli.main(["diff", str(minilm_path()), "--input", "one sentence", "--plot", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    written(out, low=2_000)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["attention", "{minilm}", "text", "--layer", "6"], "layer 6 does not exist: the model has layers 0..5"),
        (["attention", "{minilm}", "text", "--heads", "0,12"], "head 12 does not exist: the model has heads 0..11"),
        (["attention", "{minilm}", "text", "--heads", "x"], "--heads 'x': give numbers"),
        (["attention", "efficientnet_lite0", "text"], "attention maps are drawn for BERT encoders"),
        (["features", "{chelsea}", "--stage", "9"], "--stage 9 does not exist: EfficientNet has stages 0..6"),
        (["features", "{missing}"], "no such image file"),
        (["features", "{chelsea}", "--model", "{minilm}"], "feature maps are drawn for ResNet and EfficientNet"),
        (["attention", "{minilm}", "text", "--out", "{unwritable}"], "cannot write the picture"),
    ],
)
def test_bad_input_gives_one_line(argv, message, tmp_path, capsys):
    places = dict(minilm=str(minilm_path()), chelsea=str(CHELSEA), missing=str(tmp_path / "no.png"), unwritable=str(tmp_path / "no" / "a.png"))
    assert cli.main([arg.format(**places) for arg in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


def test_patch_attention_over_a_vit_image(tmp_path):
    from minipt.models.vit import ViTConfig, ViTModel

    model = ViTModel(ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32)).eval()
    image = torch.randint(0, 256, (3, 16, 16)).float()
    with torch.no_grad():
        probs = model(image[None] / 255, output_attentions=True).attentions  # 2 x (1, 2, 17, 17)
    fig = patch_attention(probs, image, layers=[0, 1], rollout=True)
    shown = panels(fig)
    assert [ax.get_title() for ax in shown] == ["layer 0, mean of heads", "layer 1, mean of heads", "rollout over 2 layers"]
    expected = probs[1][0].mean(0)[0, 1:].reshape(4, 4)  # what [CLS] looks at in layer 1, over the 4x4 patches
    assert torch.allclose(torch.as_tensor(shown[1].images[-1].get_array().data), expected)
    assert panels(patch_attention(probs, heads=1, query=5))[0].get_title() == "layer 0, head 1"
    save_png(fig, tmp_path / "patches.png")
    written(tmp_path / "patches.png")


def test_rollout_of_attention_to_itself_stays_on_the_class_token():
    """Every token attending only to itself: the rollout keeps [CLS] on [CLS], nothing on the patches."""
    probs = [torch.eye(5).expand(1, 2, 5, 5)] * 3
    rollout = panels(patch_attention(probs, rollout=True))[-1].images[-1].get_array().data
    assert float(abs(rollout).max()) == 0.0
    probs = [torch.rand(1, 2, 5, 5).softmax(-1) for _ in range(2)]  # two layers: (0.5 A1 + 0.5 I)(0.5 A0 + 0.5 I), row 0
    step = [0.5 * p[0].mean(0) + 0.5 * torch.eye(5) for p in probs]
    expected = (step[1] @ step[0])[0, 1:].reshape(2, 2)
    shown = panels(patch_attention(probs, rollout=True))[-1].images[-1].get_array().data
    assert torch.allclose(torch.as_tensor(shown), expected, atol=1e-6)


def test_patch_attention_bad_input():
    with pytest.raises(InputError, match="1 \\+ g\\*g"):
        patch_attention(torch.rand(1, 2, 6, 6))
    with pytest.raises(InputError, match="head 3 does not exist"):
        patch_attention(torch.rand(1, 2, 5, 5), heads=3)
    with pytest.raises(InputError, match="query"):
        patch_attention(torch.rand(1, 2, 5, 5), query=5)


def test_cross_attention_of_generated_tokens(tmp_path):
    """A T5's cross-attention while it wrote each generated token, read back by teacher forcing on what generate returned."""
    from minipt.models.t5 import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=30, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                                relative_attention_num_buckets=8, relative_attention_max_distance=16)).eval()
    ids = torch.randint(2, 30, (1, 6))
    sequences = model.generate(ids, max_new_tokens=4, eos_token_id=None)  # (1, 5): the start token, then 4
    with torch.no_grad():
        probs = model(ids, None, sequences[:, :-1], output_attentions=True).cross_attentions  # 2 x (1, 2, 4, 6)
    letters, written_tokens = [f"i{t}" for t in ids[0].tolist()], [f"o{t}" for t in sequences[0, 1:].tolist()]
    fig = cross_attention(probs, letters, written_tokens)
    shown = panels(fig)
    assert [ax.get_title() for ax in shown] == ["layer 0, mean of 2 heads", "layer 1, mean of 2 heads"]
    assert [t.get_text() for t in shown[1].get_xticklabels()] == letters
    assert [t.get_text() for t in shown[1].get_yticklabels()] == written_tokens
    assert torch.allclose(torch.as_tensor(shown[1].get_images()[0].get_array().data), probs[1][0].mean(0))
    assert panels(cross_attention(probs, letters, written_tokens, layers=1, heads=0))[0].get_title() == "layer 1, head 0"
    save_png(fig, tmp_path / "cross.png")
    written(tmp_path / "cross.png")


def test_cross_attention_bad_input():
    probs = (torch.rand(1, 2, 3, 4),)
    with pytest.raises(InputError, match="4 input and 2 output tokens for cross-attention over 4 inputs from 3 outputs"):
        cross_attention(probs, list("abcd"), ["x", "y"])
    with pytest.raises(InputError, match="head 2 does not exist"):
        cross_attention(probs, list("abcd"), list("xyz"), heads=2)
    with pytest.raises(InputError, match="layer 1 does not exist"):
        cross_attention(probs, list("abcd"), list("xyz"), layers=[1])
    with pytest.raises(InputError, match="one tensor per decoder layer"):
        cross_attention((torch.rand(1, 2, 3, 4), torch.rand(1, 2, 3, 5)), list("abcd"), list("xyz"))


def test_long_inputs_draw_panels_of_a_bounded_size():
    """Panels grew 0.16 inch per token: one layer's heads at 512 tokens made a 33,208 x 24,846-pixel figure (3.1 GiB)
    and `minipt attention` ran for minutes. Past 24 tokens the labels thin out and the panels stop growing; a
    picture past MAX_PIXELS is refused, naming how to draw fewer panels."""
    pytest.importorskip("matplotlib")
    from minipt.plot import MAX_PIXELS

    T = 512
    probs = [torch.full((1, 12, T, T), 1.0 / T)]
    figure = attention_maps(probs, [f"t{i}" for i in range(T)])
    width, height = figure.get_size_inches()
    assert width * height * 100 * 100 <= MAX_PIXELS and width <= 4 * 6.0 + 0.8 and height <= 3 * 6.0
    many = [torch.full((1, 16, 64, 64), 1.0 / 64)] * 40  # 40 layers x 16 heads: 16 panels of 6 inches across, 40 down
    with pytest.raises(InputError, match=r"the picture would be .* pixels .*: draw fewer panels \(attention_maps\(layers=..., heads=...\)"):
        attention_maps(many, [f"t{i}" for i in range(64)])
    assert attention_maps(many, [f"t{i}" for i in range(64)], layers=[0, 39], heads=[0, 1]) is not None
