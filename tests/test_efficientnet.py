"""EfficientNet-Lite: the official ImageNet weights, and parity against timm's TensorFlow-ported Lite models.

timm's ``tf_efficientnet_lite0..4`` (TensorFlow "same" padding, BatchNorm eps
1e-3, ReLU6) are the reference. Their tensors come in the same order as the
official checkpoint's, so a timm state dict is renamed to the official names
position by position (every shape checked) and loaded through minipt's key map.
minipt's blocks run the same operations as timm's (TensorFlow "same" padding
as an explicit pad before the convolution, BatchNorm, ReLU6), so the two agree
to float32 rounding: max abs difference <= 1e-5 relative to the largest value.
"""

import json

import pytest
import torch

from minipt.checkpoint import Checkpoint, official_state_dict
from minipt.errors import ConfigError, InputError, KeyMismatchError
from minipt.hub import resolve
from minipt.models import efficientnet as en
from minipt.nn import Conv2dSame

from helpers import randomise_batch_norm, rel_diff

RTOL = 1e-5  # relative to the largest |value|, for the same operations in the same order (see above)
VARIANTS = ["lite0", "lite1", "lite2", "lite3", "lite4"]


@pytest.fixture(scope="module")
def official_path():
    return resolve("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0(official_path):
    return en.EfficientNet.from_pretrained(official_path)


# -- the official checkpoint --------------------------------------------------------
def test_official_checkpoint_loads_as_lite0(lite0, official_path):
    assert lite0.config == en.EfficientNetConfig.lite("lite0")
    assert not lite0.training
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008
    assert len(lite0.blocks) == 16 and lite0.blocks[0].expand is None
    checkpoint = Checkpoint(next(official_path.glob("*.pth")))
    state = official_state_dict(lite0, en.EfficientNet.keymap())  # every tensor, read back under its official name
    assert state.keys() == set(checkpoint.keys())
    for key in checkpoint.keys():
        assert torch.equal(state[key], checkpoint.get(key)), key


def test_keymap_is_readable_both_ways():
    assert en.EfficientNet.keymap().to_minipt("_blocks.15._project_conv.weight")[0] == "blocks.15.project.conv.weight"
    assert en.EfficientNet.keymap().to_minipt("_blocks.3._bn1.running_var")[0] == "blocks.3.depthwise.bn.running_var"
    assert en.EfficientNet.keymap().to_official("head.bn.weight")[0] == "_bn1.weight"
    assert en.EfficientNet.keymap().to_official("classifier.bias")[0] == "_fc.bias"


def test_save_pretrained_round_trip(lite0, tmp_path):
    directory = lite0.save_pretrained(tmp_path / "lite0")
    reloaded = en.EfficientNet.from_pretrained(directory)
    for key, tensor in lite0.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert rel_diff(reloaded(x), lite0(x)) <= RTOL  # same weights; convolution kernels may differ by alignment


def test_same_padding_is_tensorflows():
    """Stride 2 on an even size pads 0 top/left and 1 bottom/right; output size is ceil(size / stride)."""
    conv = Conv2dSame(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.ones(1, 1, 4, 5)
    y = conv(x)
    assert y.shape == (1, 1, 2, 3)  # ceil(4/2), ceil(5/2)
    # 4 rows: total padding 1 -> bottom only, so the first output row sees rows 0-2 (3 rows), the last rows 2-3 + padding.
    # 5 columns: total padding 2 -> one each side.
    expected = torch.tensor([[[[6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]]])
    assert torch.equal(y, expected)


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_same_padding_matches_timm_for_every_kernel_and_stride(kernel, stride):
    """An even kernel at stride 1 was padded symmetrically by (k - 1) // 2: one pixel short (7x7 -> 6x6)."""
    from timm.layers import Conv2dSame as TimmConv2dSame

    torch.manual_seed(0)
    ours = Conv2dSame(3, 4, kernel, stride)
    theirs = TimmConv2dSame(3, 4, kernel, stride, bias=False)
    theirs.load_state_dict(ours.state_dict())
    for size in ((7, 7), (8, 9), (1, 1), (2, 3)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            got, expected = ours(x), theirs(x)
        assert got.shape[-2:] == tuple(-(-n // stride) for n in size)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_a_path_dropped_always_is_zeros():
    from minipt.nn.conv import drop_path

    assert torch.equal(drop_path(torch.ones(4, 2, 1, 1), 1.0, training=True), torch.zeros(4, 2, 1, 1))  # was 0/0: NaN
    with pytest.raises(ConfigError, match="kernel must be a positive integer, got 0"):
        Conv2dSame(3, 4, 0)


def test_an_even_kernel_pickled_with_symmetric_padding_runs_as_tensorflows_same():
    import pickle

    import numpy as np

    conv = Conv2dSame(3, 4, np.int64(4))  # a numpy count is a count
    expected = conv(torch.randn(1, 3, 8, 8))
    conv.padding = (1, 1)  # as it was built before even kernels were padded per input
    again = pickle.loads(pickle.dumps(conv))
    assert again.padding == (0, 0) and again(torch.randn(1, 3, 8, 8)).shape == expected.shape == (1, 4, 8, 8)


def test_a_width_multiplier_past_any_model_is_named():
    with pytest.raises(ConfigError, match=r"width = 1e\+30: expected a channel multiplier giving at most 65536 channels"):
        en.EfficientNetConfig(width=1e30)  # was an overflow inside torch.empty


@pytest.mark.parametrize("name, repeats, widths", [
    ("lite0", [1, 2, 2, 3, 3, 4, 1], [16, 24, 40, 80, 112, 192, 320]),
    ("lite4", [1, 4, 4, 6, 6, 8, 1], [24, 32, 56, 112, 160, 272, 448]),
])
def test_lite_scaling(name, repeats, widths):
    stages = en.EfficientNetConfig.lite(name).scaled_stages()
    assert [s.repeats for s in stages] == repeats
    assert [s.out_channels for s in stages] == widths
    assert stages[0].in_channels == 32  # the stem is not scaled in the Lite family


# -- parity with timm --------------------------------------------------------------
def timm_to_official(timm_state: dict, official_keys: list, official_shapes: dict) -> dict:
    timm_state = {k: v for k, v in timm_state.items()}
    assert len(timm_state) == len(official_keys)
    renamed = {}
    for (timm_key, tensor), key in zip(timm_state.items(), official_keys):
        assert tuple(tensor.shape) == official_shapes[key], (timm_key, key)
        renamed[key] = tensor
    return renamed


def official_layout(config):
    with torch.device("meta"):
        model = en.EfficientNet(config)
    keys = [en.EfficientNet.keymap().to_official(k)[0] for k in model.state_dict()]
    shapes = {en.EfficientNet.keymap().to_official(k)[0]: tuple(t.shape) for k, t in model.state_dict().items()}
    return keys, shapes


@pytest.fixture(scope="module")
def timm():
    import timm  # the reference: timm's tf_efficientnet_lite* models (part of the test extra)

    return timm


def test_official_weights_match_timm(timm, lite0, official_path):
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    keys, shapes = official_layout(lite0.config)
    official = Checkpoint(next(official_path.glob("*.pth")))
    timm_keys = list(reference.state_dict())
    reference.load_state_dict({t: official.get(k) for t, k in zip(timm_keys, keys)}, strict=True)
    assert timm_to_official(reference.state_dict(), keys, shapes).keys() == set(official.keys())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert rel_diff(lite0(x), reference(x)) <= RTOL


@pytest.mark.parametrize("name", VARIANTS)
def test_every_lite_variant_matches_timm(timm, name, tmp_path):
    torch.manual_seed(0)
    reference = randomise_batch_norm(timm.create_model(f"tf_efficientnet_{name}", pretrained=False, num_classes=10)).eval()
    config = en.EfficientNetConfig.lite(name, num_classes=10)
    keys, shapes = official_layout(config)
    torch.save(timm_to_official(reference.state_dict(), keys, shapes), tmp_path / f"{name}.pth")
    model = en.EfficientNet.from_pretrained(tmp_path / f"{name}.pth")  # the variant is read off the shapes
    assert model.config == config
    for size in [(2, 3, 64, 64), (1, 3, 57, 71)]:  # odd sizes exercise the asymmetric "same" padding
        x = torch.randn(size)
        with torch.no_grad():
            assert rel_diff(model(x), reference(x)) <= RTOL


def test_timm_head_calls_on_the_same_weights(timm, tmp_path):
    """forward_features (after the head conv), forward_head (with and without pre_logits), get_classifier and
    reset_classifier (0: no classifier, then a new one) against timm's tf_efficientnet_lite0 on the same weights."""
    torch.manual_seed(0)
    reference = randomise_batch_norm(timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)).eval()
    keys, shapes = official_layout(en.EfficientNetConfig.lite("lite0", num_classes=10))
    torch.save(timm_to_official(reference.state_dict(), keys, shapes), tmp_path / "lite0.pth")
    model = en.EfficientNet.from_pretrained(tmp_path / "lite0.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features, theirs = model.forward_features(x), reference.forward_features(x)
        assert features.shape == theirs.shape == (2, 1280, 2, 2) and rel_diff(features, theirs) <= RTOL
        for pre_logits in (True, False):
            assert rel_diff(model.forward_head(features, pre_logits=pre_logits), reference.forward_head(theirs, pre_logits=pre_logits)) <= RTOL
        assert torch.equal(model.get_classifier().weight, reference.get_classifier().weight)
        assert model.num_classes == reference.num_classes == 10 and model.num_features == reference.num_features
        model.reset_classifier(0), reference.reset_classifier(0)
        assert model.num_classes == reference.num_classes == 0
        assert isinstance(model.get_classifier(), torch.nn.Identity) and isinstance(reference.get_classifier(), torch.nn.Identity)
        assert rel_diff(model(x), reference(x)) <= RTOL  # both give the pooled features
        model.reset_classifier(4), reference.reset_classifier(4)
        assert model(x).shape == reference(x).shape == (2, 4)


def test_headless_file_without_config(timm, lite0, tmp_path):
    """Saved after reset_classifier(0): no _fc tensors, read back as a Lite variant without a classifier,
    and loadable by timm's headless tf_efficientnet_lite0 in the same tensor order."""
    import copy

    model = copy.deepcopy(lite0)
    model.reset_classifier(0)
    state = official_state_dict(model, en.EfficientNet.keymap())
    assert not any(key.startswith("_fc.") for key in state)
    torch.save(state, tmp_path / "headless.pth")
    loaded = en.EfficientNet.from_pretrained(tmp_path / "headless.pth")
    assert loaded.config == en.EfficientNetConfig.lite("lite0", num_classes=0) and isinstance(loaded.classifier, torch.nn.Identity)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    keys, _ = official_layout(loaded.config)
    reference.load_state_dict({t: state[k] for t, k in zip(reference.state_dict(), keys)}, strict=True)


def test_train_mode_matches_timm(timm, lite0):
    """Training-mode outputs, gradients and running statistics (dropout and stochastic depth off on both sides)."""
    import copy

    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False, drop_rate=0.0, drop_path_rate=0.0, bn_momentum=0.01)
    model = copy.deepcopy(lite0)
    model.dropout.p = 0.0
    for block in model.blocks:
        block.drop_rate = 0.0
    keys, _ = official_layout(model.config)
    minipt_state = official_state_dict(model, en.EfficientNet.keymap())
    timm_keys = list(reference.state_dict())
    reference.load_state_dict({t: minipt_state[k].clone() for t, k in zip(timm_keys, keys)})
    reference.train(), model.train()
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    outputs = []
    for net in (reference, model):
        logits = net(x)
        torch.nn.functional.cross_entropy(logits, target).backward()
        outputs.append(logits.detach())
    assert rel_diff(outputs[1], outputs[0]) <= RTOL
    after = official_state_dict(model, en.EfficientNet.keymap())
    timm_after = dict(zip(keys, reference.state_dict().values()))
    grads = dict(zip([k for k in keys if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))], [p.grad for p in reference.parameters()]))
    for name, parameter in model.named_parameters():
        official = en.EfficientNet.keymap().to_official(name)[0]
        # absolute (fp32 1e-5, scaled up for large gradients): some BatchNorm biases get gradients of ~1e-7 whose
        # exact value is rounding noise (a per-channel shift that the next training-mode BatchNorm removes)
        tolerance = RTOL * max(1.0, grads[official].abs().max().item())
        assert (parameter.grad - grads[official]).abs().max().item() <= tolerance, official
    for key in keys:
        if key.endswith(("running_mean", "running_var")):
            assert rel_diff(after[key], timm_after[key]) <= RTOL, key


# -- bad input ------------------------------------------------------------------------
def test_wrong_input_shape(lite0):
    with pytest.raises(InputError, match=r"3 input channels; got a tensor of shape \(1, 1, 64, 64\)"):
        lite0(torch.zeros(1, 1, 64, 64))
    with pytest.raises(InputError, match=r"shaped \(batch, 3, height, width\); got \(3, 64, 64\)"):
        lite0(torch.zeros(3, 64, 64))


def test_resnet_checkpoint_is_refused(tmp_path):
    from minipt.models.resnet import resnet18

    resnet18().save_pretrained(tmp_path / "r18")
    with pytest.raises(ConfigError, match=r"describes a 'resnet' model, not 'efficientnet-lite': load it with minipt.models.resnet.ResNet"):
        en.EfficientNet.from_pretrained(tmp_path / "r18")
    (tmp_path / "r18" / "config.json").unlink()  # the bare torchvision-format file
    with pytest.raises(KeyMismatchError, match=r"not an official-format EfficientNet: it has no _conv_stem.weight \(its first keys: "):
        en.EfficientNet.from_pretrained(tmp_path / "r18")


def test_wrong_variant(official_path):
    with pytest.raises(ConfigError, match=r"num_blocks = 30, but the checkpoint holds 16 \(such as _blocks.0"):
        en.EfficientNet.from_pretrained(official_path, **en.LITE["lite4"])
    with pytest.raises(ConfigError, match="unknown EfficientNet-Lite variant 'lite9'"):
        en.EfficientNetConfig.lite("lite9")


def test_checkpoint_of_no_lite_variant(lite0, tmp_path):
    state = official_state_dict(lite0, en.EfficientNet.keymap())
    del state["_blocks.15._project_conv.weight"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(KeyMismatchError, match=r"(?s)missing \(1\):\n    _blocks.15._project_conv.weight \(320, 1152, 1, 1\).*matches no EfficientNet-Lite variant"):
        en.EfficientNet.from_pretrained(tmp_path / "cut.pth")


def test_blocks_are_the_shared_conv_pieces(lite0):
    """The model is built from minipt.nn's ConvBNAct, with the config's BatchNorm settings and unchanged keys."""
    from minipt.nn import ConvBNAct

    assert isinstance(lite0.stem, ConvBNAct) and isinstance(lite0.stem.conv, Conv2dSame)
    assert lite0.stem.bn.eps == lite0.config.bn_eps and lite0.stem.bn.momentum == lite0.config.bn_momentum
    assert {"stem.conv.weight", "stem.bn.running_mean", "head.conv.weight"} <= set(lite0.state_dict())


def test_preprocess_method_uses_the_models_config(lite0, tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (300, 260), (10, 200, 90)).save(path)
    x = lite0.preprocess([path])
    assert x.shape == (1, 3, lite0.config.crop, lite0.config.crop)
    assert torch.equal(x, en.preprocess([path], lite0.config))


def test_a_width_that_makes_sizes_torch_cannot_hold(tmp_path):
    """The width multiplier scales channel counts that no tensor is checked against before the model is built: one
    that takes them past int64 is refused naming the file and the class, where torch's TypeError escaped before
    (found by the loader fuzz)."""
    config = en.EfficientNetConfig(stages=(en.Stage(1, 3, 1, 1, 8, 8),), stem_channels=8, head_channels=16, num_classes=3)
    folder = en.EfficientNet(config).save_pretrained(tmp_path / "tiny")
    written = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(written | {"width": 1e19}))
    with pytest.raises(ConfigError, match=r"tiny/config.json: width = 1e\+19: expected a channel multiplier giving at most 65536 channels"):
        en.EfficientNet.from_pretrained(folder)
