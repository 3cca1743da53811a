"""CRAFT against EasyOCR's own CRAFT module (``easyocr/craft.py`` and ``easyocr/model/modules.py``), on the
real craft_mlt_25k weights and on random ones.

The reference is EasyOCR's code itself, imported without ``easyocr/__init__``
(``craft.reference_module``), built on the meta device and given the same
tensors: the official file's for the real weights, minipt's written out through
the production key map for random ones. Both run the same operations in the same
order, so they agree to float32 rounding: region and affinity scores within 1e-4
absolute (they lie in about 0..1), the decoder's feature map and the backbone's
maps within 1e-4 of their largest value. The photo is scikit-image's ``text()``,
prepared by EasyOCR's own ``imgproc`` (pad to multiples of 32, ImageNet
normalisation), which ``craft.preprocess`` must reproduce.
"""

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from minipt import registry
from minipt.checkpoint import Checkpoint, official_state_dict
from minipt.errors import ConfigError, InputError, KeyMismatchError, MiniptError
from minipt.hub import resolve
from minipt.models import craft as mc
from minipt.models import vgg as mv

from helpers import assert_error_ratio, randomise_batch_norm, rel_diff

SCORE_ATOL = 1e-4  # region and affinity scores, absolute (values in about 0..1)
RTOL = 1e-4  # feature maps, relative to their largest |value|

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the reference ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def easyocr():
    """EasyOCR's craft module; the parity tests skip, saying why, where easyocr is not installed (the test extra has it)."""
    try:
        return mc.reference_module()
    except MiniptError as err:
        pytest.skip(f"EasyOCR's CRAFT is the reference and cannot be imported: {err}")


def reference_on(easyocr, state: dict) -> torch.nn.Module:
    """EasyOCR's CRAFT holding ``state`` (official names, without DataParallel's prefix), in eval mode."""
    with torch.device("meta"):  # its torchvision VGG16-BN, classifier included, costs nothing there
        reference = easyocr.CRAFT(pretrained=False, freeze=False)
    reference.load_state_dict(state, strict=True, assign=True)
    return reference.eval()


def assert_same_as_reference(model, reference, x):
    """Scores, decoder features and every backbone map the decoder reads, against EasyOCR's on ``x``."""
    read, captured = [], {}  # what each UpConv block is given (fc7 or the block before, the skip); basenet's outputs
    hooks = [block.register_forward_pre_hook(lambda module, args: read.append([a.clone() for a in args])) for block in model.decoder]
    hooks.append(reference.basenet.register_forward_hook(lambda module, args, out: captured.update(basenet=[t.clone() for t in out])))
    try:
        with torch.no_grad():
            ours = model(x)
            scores, features = reference(x)  # (B, H/2, W/2, 2), (B, 32, H/2, W/2)
    finally:
        for hook in hooks:
            hook.remove()
    fc7, taps = read[0][0], [skip for _, skip in read]  # the backbone's maps, deepest first
    for name, got, expected in zip(("fc7", "relu5_3", "relu4_3", "relu3_2", "relu2_2"), (fc7, *taps), captured["basenet"]):
        assert got.shape == expected.shape and rel_diff(got, expected) <= RTOL, name
    assert ours.region.shape == scores.shape[:3] and ours.features.shape == features.shape
    assert (ours.region - scores[..., 0]).abs().max() <= SCORE_ATOL
    assert (ours.affinity - scores[..., 1]).abs().max() <= SCORE_ATOL
    assert rel_diff(ours.features, features) <= RTOL
    return ours


# -- the real weights ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def official():
    return torch.load(resolve("craft_mlt_25k") / "craft_mlt_25k.pth", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model():
    return mc.CRAFT.from_pretrained("craft_mlt_25k")


def photo() -> np.ndarray:
    """scikit-image's text photo (172 x 448, grayscale) as RGB, as EasyOCR's reader converts a grayscale array."""
    from skimage import data

    return np.repeat(data.text()[:, :, None], 3, axis=2)


def easyocr_input(easyocr, image: np.ndarray, canvas_size: int = mc.CANVAS_SIZE) -> tuple[torch.Tensor, float]:
    """The detector's input as EasyOCR's detection.test_net prepares it."""
    import importlib

    import cv2

    imgproc = importlib.import_module(easyocr.__name__.rpartition(".")[0] + ".imgproc")
    resized, ratio, _ = imgproc.resize_aspect_ratio(image, canvas_size, interpolation=cv2.INTER_LINEAR, mag_ratio=1.0)
    return torch.from_numpy(np.transpose(imgproc.normalizeMeanVariance(resized), (2, 0, 1))[None]), ratio


def test_real_weights_on_a_photo_match_easyocr(easyocr, official, model):
    assert model.config == mc.CRAFTConfig() and not model.training  # the widths, read off the file
    image = photo()
    x, ratio = mc.preprocess(image)
    expected, their_ratio = easyocr_input(easyocr, image)
    assert x.shape == expected.shape == (1, 3, 192, 448) and ratio == their_ratio == 1.0
    assert torch.equal(x, expected)  # padded to 32, normalised: the same floats
    reference = reference_on(easyocr, {key.removeprefix("module."): value for key, value in official.items()})
    ours = assert_same_as_reference(model, reference, x)
    assert ours.region.max() > 0.5 and ours.affinity.max() > 0.3  # the photo holds words, and CRAFT finds them


def test_scaling_down_as_easyocr_does(easyocr):
    """An image longer than the canvas is scaled down (bilinear) before padding; pixel values within one grey level
    of OpenCV's fixed-point resize."""
    image = photo()
    x, ratio = mc.preprocess(image, canvas_size=300)
    expected, their_ratio = easyocr_input(easyocr, image, canvas_size=300)
    assert ratio == their_ratio and x.shape == expected.shape == (1, 3, 128, 320)
    one_level = 1 / (255 * 0.224)  # a grey level after normalisation (the smallest std)
    assert (x - expected).abs().max() <= one_level + 1e-6


def test_round_trip_writes_the_official_tensors(official, model, tmp_path):
    """The written file holds the official keys, in order, and values; DataParallel's ``module.`` is left out
    (loading accepts it either way)."""
    bare = {key.removeprefix("module."): value for key, value in official.items()}
    assert all(key.startswith("module.") for key in official)
    state = official_state_dict(model, mc.CRAFT.keymap())
    assert list(state) == list(bare)
    assert all(torch.equal(state[key], value) for key, value in bare.items())
    directory = model.save_pretrained(tmp_path / "saved")
    written = load_file(directory / "model.safetensors")
    assert written.keys() == bare.keys() and all(torch.equal(written[key], value) for key, value in bare.items())
    again = mc.CRAFT.from_pretrained(directory)
    assert again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_the_format_is_found_from_the_tensors(official):
    path = resolve("craft_mlt_25k") / "craft_mlt_25k.pth"
    with Checkpoint(path) as checkpoint:
        assert registry.model_class_for(path, checkpoint) is mc.CRAFT
        assert "EasyOCR's CRAFT text detector (it holds basenet.slice5.1.weight)" in registry.describe(path, checkpoint)


def test_the_backbone_key_map_is_vggs():
    """Each official basenet key is torchvision's features.N of VGG16-BN, mapped where minipt's VGG maps it."""
    keymap, vgg = mc.CRAFT.keymap(), mv.VGG.keymap(mv.VGGConfig(mc.BACKBONE))
    with torch.device("meta"):
        model = mc.CRAFT()
    backbone = [key for key in model.state_dict() if key.startswith("stages.")]
    assert len(backbone) == 12 * 7  # 12 convs (VGG16's 13 without conv5_3), each with a BatchNorm
    for key in backbone:
        official = keymap.to_official(key)[0]
        _, slice_name, index, rest = official.split(".", 3)
        assert vgg.to_official(key)[0] == f"features.{index}.{rest}"
        assert slice_name == f"slice{1 + sum(int(index) >= end for end in (12, 19, 29))}"  # CRAFT's slice boundaries


# -- random weights ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_pair(easyocr):
    """minipt's CRAFT at full width with random weights and BatchNorm statistics, and EasyOCR's on the same tensors."""
    torch.manual_seed(0)
    model = randomise_batch_norm(mc.CRAFT()).eval()
    return model, reference_on(easyocr, official_state_dict(model, mc.CRAFT.keymap()))


@pytest.mark.parametrize("shape", [(2, 3, 64, 96), (1, 3, 72, 104), (1, 3, 16, 16)], ids=["64x96", "72x104-odd-maps", "16x16"])
def test_random_weights_match_easyocr(random_pair, shape):
    """Sizes that are not multiples of 32 give odd maps (72: 36, 18, 9, 4): each upsampling meets its skip's size."""
    model, reference = random_pair
    assert_same_as_reference(model, reference, torch.randn(shape, generator=torch.Generator().manual_seed(2)))


@pytest.fixture
def tiny():
    torch.manual_seed(1)
    return randomise_batch_norm(mc.FAMILY.tiny_model(), seed=1)


def test_fused_and_channels_last(tiny, tmp_path):
    """fuse() folds every BatchNorm (the backbone's and the decoder's) into its conv and keeps the weights in
    channels-last; both agree with the unfused model to within float32 rounding (error ratio against float64)."""
    from helpers import assert_inference_only

    x = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, exact = tiny(x), copy.deepcopy(tiny).double()(x.double())
        fused = tiny.fuse()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in fused.modules() if isinstance(m, torch.nn.Conv2d))
        assert_error_ratio(fused(x), expected, exact, what="BatchNorm folded")
        x_cl = x.contiguous(memory_format=torch.channels_last)
        assert_error_ratio(fused(x_cl), expected, exact, what="channels last, BatchNorm folded")
    assert_inference_only(tiny, fused, tmp_path)


def test_a_tiny_model_saves_and_reloads(tiny, tmp_path):
    """The widths come back from the tensors alone (no config.json, as in the official format), DataParallel's prefix or not."""
    state = official_state_dict(tiny, mc.CRAFT.keymap())
    x = torch.randn(1, 3, 32, 32)
    for name, saved in (("plain.pth", state), ("parallel.pth", {"module." + k: v for k, v in state.items()})):
        torch.save(saved, tmp_path / name)
        loaded = mc.CRAFT.from_pretrained(tmp_path / name)
        assert loaded.config == tiny.config
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(loaded(x), tiny(x)))


# -- bad input -----------------------------------------------------------------------------------
def test_a_craft_file_given_to_vgg():
    with pytest.raises(KeyMismatchError, match=r"craft_mlt_25k is not a torchvision-format VGG: it has no features.0.weight .*"
                                               r"it looks like EasyOCR's CRAFT text detector .*load it with minipt.models.craft.CRAFT"):
        mv.VGG.from_pretrained(resolve("craft_mlt_25k"))


def test_a_vgg_file_given_to_craft(tmp_path):
    config = mv.VGGConfig(tuple(tuple(w // 16 for w in stage) for stage in mv.LAYOUTS["D"]), True, num_classes=5, hidden_size=8, pool_size=1)
    torch.save(official_state_dict(mv.VGG(config), mv.VGG.keymap(config)), tmp_path / "vgg16_bn.pth")
    with pytest.raises(KeyMismatchError, match=r"vgg16_bn.pth is not a CRAFT text detector in EasyOCR's format: it has no 4-d kernel "
                                               r"basenet.slice1.0.weight, .* it looks like a torchvision-format VGG .*minipt.models.vgg.VGG"):
        mc.CRAFT.from_pretrained(tmp_path / "vgg16_bn.pth")


def test_a_file_with_a_tensor_missing_or_a_config_against_it(tiny, tmp_path):
    state = official_state_dict(tiny, mc.CRAFT.keymap())
    torch.save({k: v for k, v in state.items() if k != "upconv2.conv.1.running_var"}, tmp_path / "cut.pth")
    with pytest.raises(KeyMismatchError, match=r"missing \(1\):\n    upconv2.conv.1.running_var \(8,\)"):
        mc.CRAFT.from_pretrained(tmp_path / "cut.pth")
    torch.save(state, tmp_path / "whole.pth")
    with pytest.raises(KeyMismatchError, match=r"fc_channels = 32, but the checkpoint has 16"):
        mc.CRAFT.from_pretrained(tmp_path / "whole.pth", fc_channels=32)
    with pytest.raises(ConfigError, match=r"stages = .*: expected five stages of 2, 2, 3, 3, 2 conv widths"):
        mc.CRAFTConfig(stages=mv.LAYOUTS["D"])


def test_a_dilation_beyond_int64_is_refused_by_name(tiny, tmp_path):
    """fc6's dilation is in config.json but in no tensor's shape: past 2^63 torch's conv2d would fail with a TypeError
    at the first forward (a case the loader fuzz found), so the config refuses it."""
    with pytest.raises(ConfigError, match=r"CRAFTConfig.dilation = 9223372036854775808: expected a positive integer below 2\^63"):
        mc.CRAFTConfig(dilation=1 << 63)
    assert mc.CRAFTConfig(dilation=(1 << 63) - 1).dilation == (1 << 63) - 1
    tiny.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "dilation": 1 << 64}))
    with pytest.raises(ConfigError, match=r"dilation = 18446744073709551616: expected a positive integer below 2\^63"):
        mc.CRAFT.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "shape, dtype, message",
    [((1, 3, 0, 32), torch.float32, r"height and width must be at least 1 pixel"),
     ((1, 3, 1, 1), torch.float32, r"images need at least 16x16 pixels .*got a tensor of shape \(1, 3, 1, 1\)"),
     ((1, 1, 32, 32), torch.float32, r"3 input channels; got a tensor of shape \(1, 1, 32, 32\)"),
     ((1, 3, 32, 32), torch.uint8, r"floating-point images, got torch.uint8")],
)
def test_bad_images(tiny, shape, dtype, message):
    for entry in (tiny, tiny.forward_backbone, tiny.fuse()):
        with pytest.raises(InputError, match=message):
            entry(torch.zeros(shape, dtype=dtype))


def test_empty_and_one_pixel_images(tiny):
    """An image without pixels is refused by name; a one-pixel image is padded to 32x32, as EasyOCR pads it, and runs."""
    for empty in (np.zeros((0, 5, 3), np.uint8), np.zeros((4, 0), np.uint8)):
        with pytest.raises(InputError, match=r"CRAFT got an empty image"):
            mc.preprocess(empty)
    with pytest.raises(InputError, match=r"expected an \(H, W\) or \(H, W, 3\) uint8 image array, got shape \(2, 2, 2\)"):
        mc.preprocess(np.zeros((2, 2, 2), np.uint8))
    region, affinity, ratio = tiny.detect(np.full((1, 1, 3), 255, np.uint8))
    assert region.shape == affinity.shape == (16, 16) and ratio == 1.0 and torch.isfinite(region).all()


# -- minipt diff ----------------------------------------------------------------------------------
def test_layer_diffs_on_the_real_weights(easyocr, model):
    """Every conv, BatchNorm and ReLU of the backbone, fc6/fc7, each UpConv and the head, against EasyOCR's modules."""
    from minipt.reference import layer_diffs

    report = layer_diffs(model, "craft_mlt_25k", torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5)), rtol=RTOL)
    assert report.first_divergence is None, str(report)
    assert len(report.rows) == 12 * 3 - 1 + 2 + 4 * 5 + 5  # conv5_2's ReLU does not run


def test_layer_diffs_finds_a_changed_convolution(easyocr, random_pair, tmp_path):
    from minipt.reference import layer_diffs

    model, _ = random_pair
    state = official_state_dict(model, mc.CRAFT.keymap())
    state["upconv2.conv.3.weight"] = state["upconv2.conv.3.weight"] * 1.01
    torch.save(state, tmp_path / "changed.pth")
    report = layer_diffs(model, tmp_path / "changed.pth", torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6)), rtol=RTOL)
    assert report.first_divergence.name == "decoder.1.conv2.out" and report.first_divergence.reference == "upconv2.conv.3"
    assert all(not row.diverged for row in report.rows[: report.rows.index(report.first_divergence)])


def test_layer_diffs_refuses_other_widths(tiny, tmp_path):
    from minipt.reference import layer_diffs

    torch.save(official_state_dict(tiny, mc.CRAFT.keymap()), tmp_path / "tiny.pth")
    with pytest.raises(ConfigError, match=r"EasyOCR builds CRAFT only at the widths of craft_mlt_25k"):
        layer_diffs(tiny, tmp_path / "tiny.pth")
