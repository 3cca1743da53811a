"""VGG against torchvision's own VGG code, on the same randomised weights and BatchNorm statistics.

Each layout (torchvision's "A", "B", "D", "E": VGG-11/13/16/19, with and without
BatchNorm) is built at a sixteenth of the real widths by torchvision's
``make_layers`` inside its ``VGG`` class (``vgg.reference_model``: torchvision
fixes the classifier at 512 x 7 x 7 -> 4096, so the average pool and
classifier are rebuilt at the small model's sizes, in torchvision's layout),
given random weights, saved as a torchvision ``.pth`` and loaded by minipt
through the production key map, with the architecture read off the file.
Inputs are 2x3x32x32. Both run the same operations in the same order, so they
agree to float32 rounding: 1e-5 relative to the largest value at every point
``compare_with_reference`` names. At full size the key names and shapes are
checked against torchvision's builders on the meta device (no memory).
"""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from minipt import registry, transfer
from minipt.checkpoint import Checkpoint, official_state_dict
from minipt.errors import ConfigError, InputError, KeyMismatchError
from minipt.models import vgg as mv
from minipt.reference import layer_diffs

from helpers import assert_error_ratio, randomise_batch_norm, rel_diff

import torchvision.models.vgg as torchvision_vgg  # noqa: E402  (the reference; conftest makes it importable)

RTOL = 1e-5  # relative to the largest |value|, for the same operations in the same order
VARIANTS = [(depth, batch_norm) for depth in mv.DEPTHS for batch_norm in (False, True)]
NAMES = [f"vgg{depth}{'_bn' if bn else ''}" for depth, bn in VARIANTS]


def small_config(depth: int, batch_norm: bool, num_classes: int = 5) -> mv.VGGConfig:
    """The layout of VGG-``depth`` at a sixteenth of its widths, with a small classifier."""
    stages = tuple(tuple(width // 16 for width in stage) for stage in mv.LAYOUTS[mv.DEPTHS[depth]])
    return mv.VGGConfig(stages, batch_norm, num_classes=num_classes, hidden_size=24, pool_size=2)


def random_reference(config: mv.VGGConfig, seed: int = 0) -> torch.nn.Module:
    """torchvision's VGG for ``config`` with random weights, BatchNorm statistics and biases (eval mode)."""
    reference = mv.reference_model(config).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in reference.state_dict().items():
            if name.endswith("weight") and tensor.dim() > 1:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2 / tensor[0].numel()) ** 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return randomise_batch_norm(reference, seed).eval()


def images(batch=2, size=32, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_same_weights(model: mv.VGG, state: dict) -> None:
    """``model`` holds exactly the tensors of the torchvision state dict ``state``."""
    official = official_state_dict(model, mv.VGG.keymap(model.config))
    assert official.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(official[key], tensor), key


def make_pair(depth: int, batch_norm: bool, tmp_path_factory):
    """(config, torchvision model, minipt model loaded from torchvision's .pth, the .pth path)."""
    config = small_config(depth, batch_norm)
    reference = random_reference(config, seed=depth)
    path = tmp_path_factory.mktemp(f"vgg{depth}") / "vgg.pth"
    torch.save(reference.state_dict(), path)
    return config, reference, mv.VGG.from_pretrained(path), path


@pytest.fixture(scope="module", params=VARIANTS, ids=NAMES)
def pair(request, tmp_path_factory):
    """Every layout, with and without BatchNorm: loading, parity and saving."""
    return make_pair(*request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=[(11, False), (16, True)], ids=["vgg11", "vgg16_bn"])
def some_pair(request, tmp_path_factory):
    """One layout without BatchNorm and one with: the calls that do not depend on the layout."""
    return make_pair(*request.param, tmp_path_factory)


# -- parity ---------------------------------------------------------------------------
def test_parity_at_every_point(pair):
    config, reference, model, path = pair
    assert model.config == config and not model.training  # the layout, read off the file
    assert_same_weights(model, reference.state_dict())
    report = layer_diffs(model, path, images(), rtol=RTOL)
    assert report.first_divergence is None, str(report)
    assert len(report.rows) == sum(len(stage) for stage in config.stages) * (3 if config.batch_norm else 2) + len(config.stages) + 5
    with torch.no_grad():
        assert rel_diff(model(images()), reference(images())) <= RTOL


def test_strict_round_trip_into_torchvision(pair, tmp_path):
    config, reference, model, _ = pair
    directory = model.save_pretrained(tmp_path / "saved")
    state = load_file(directory / "model.safetensors")
    fresh = mv.reference_model(config).to_empty(device="cpu")
    fresh.load_state_dict(state, strict=True)  # torchvision reads minipt's file as its own
    for key, tensor in reference.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], tensor), key
    (directory / "config.json").unlink()  # the torchvision format: the architecture comes from the tensors
    assert_same_weights(mv.VGG.from_pretrained(directory), reference.state_dict())


def test_full_size_names_and_shapes_are_torchvisions():
    """Every builder's model has torchvision's keys and shapes at full size (meta device: nothing allocated),
    and the reference built for a config is torchvision's own builder's model."""
    for name in NAMES:
        with torch.device("meta"):
            model, theirs = getattr(mv, name)(), getattr(torchvision_vgg, name)()
            ours = mv.reference_model(model.config)
        official = {mv.VGG.keymap(model.config).to_official(key)[0]: tuple(t.shape) for key, t in model.state_dict().items()}
        expected = {key: tuple(t.shape) for key, t in theirs.state_dict().items()}
        assert official == expected, name
        assert {key: tuple(t.shape) for key, t in ours.state_dict().items()} == expected, name
        assert str(ours) == str(theirs), name
        assert model.config.describe().startswith(f"{name} (convs ")


@pytest.fixture(scope="module")
def vgg16_bn_pair():
    """A small VGG-16-BN and torchvision's, on the same weights (the minipt one converted by the key map)."""
    config = small_config(16, True)
    reference = random_reference(config, seed=11)
    model = mv.VGG(config).eval()
    model.load_state_dict({mv.VGG.keymap(config).to_minipt(k)[0]: v for k, v in reference.state_dict().items()})
    return reference, model


@settings(max_examples=5, deadline=None)
@given(batch=st.integers(1, 3), height=st.integers(32, 80), width=st.integers(32, 80))
def test_any_image_size(vgg16_bn_pair, batch, height, width):
    reference, model = vgg16_bn_pair
    x = torch.randn(batch, 3, height, width)
    with torch.no_grad():
        assert rel_diff(model(x), reference(x)) <= RTOL


def test_forward_features_and_forward_head(some_pair):
    """forward_features is torchvision's ``features`` (the map after the last max pool); forward_head pools and
    classifies, ``pre_logits=True`` stops after the classifier's hidden layers."""
    config, reference, model, _ = some_pair
    x = images(seed=8)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, 1, 1) and model.num_features == config.stages[-1][-1]
        assert rel_diff(features, reference.features(x)) <= RTOL
        hidden = reference.classifier[:5](torch.flatten(reference.avgpool(reference.features(x)), 1))
        assert rel_diff(model.forward_head(features, pre_logits=True), hidden) <= RTOL
        assert torch.equal(model.forward_head(features), model(x))


def test_fused_and_channels_last(some_pair):
    config, reference, model, _ = some_pair
    x = images(seed=9)
    with torch.no_grad():
        expected, exact = reference(x), copy.deepcopy(reference).double()(x.double())
        fused = model.fuse()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        assert_error_ratio(fused(x), expected, exact, what="BatchNorm folded")
        last = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        assert_error_ratio(last(x_cl), expected, exact, what="channels last")
        assert_error_ratio(last.fuse()(x_cl), expected, exact, what="channels last, BatchNorm folded")


def test_train_step_parity(some_pair):
    """Train-mode outputs (dropout off, BatchNorm on batch statistics) and gradients, against torchvision's."""
    _, reference, model, _ = some_pair
    reference, model = copy.deepcopy(reference).train(), copy.deepcopy(model).train()
    reference.classifier[2].p = reference.classifier[5].p = 0.0
    model.pre_logits.drop1.p = model.pre_logits.drop2.p = 0.0
    x, target = images(batch=4, seed=3), torch.tensor([0, 1, 2, 3])
    grads = []
    for net in (reference, model):
        torch.nn.functional.cross_entropy(net(x), target).backward()
        grads.append({name: p.grad for name, p in net.named_parameters()})
    keymap = mv.VGG.keymap(model.config)
    for name, grad in grads[1].items():
        official = keymap.to_official(name)[0]
        assert rel_diff(grad, grads[0][official]) <= RTOL, official


# -- the planted change -----------------------------------------------------------------
def test_diff_finds_a_changed_convolution(tmp_path):
    config = small_config(16, True)
    reference = random_reference(config, seed=3)
    torch.save(reference.state_dict(), tmp_path / "good.pth")
    model = mv.VGG.from_pretrained(tmp_path / "good.pth")
    state = reference.state_dict()
    index = mv.flat_layout(config.stages, True)[0][5][2]  # stage 2's second conv
    state[f"features.{index}.weight"] = state[f"features.{index}.weight"] * 1.01
    torch.save(state, tmp_path / "changed.pth")
    report = layer_diffs(model, tmp_path / "changed.pth", images(), rtol=RTOL)
    assert report.first_divergence.name == "stages.2.blocks.1.conv.out"
    assert report.first_divergence.reference == f"features.{index}"
    assert all(not row.diverged for row in report.rows[: report.rows.index(report.first_divergence)])


# -- the head and the stages ------------------------------------------------------------------
def test_reset_classifier_headless_and_back(some_pair, tmp_path):
    config, reference, model, _ = some_pair
    model = copy.deepcopy(model)
    x = images(seed=4)
    with torch.no_grad():
        hidden = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.equal(model.get_classifier().weight, reference.classifier[6].weight) and model.num_classes == 5
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), torch.nn.Identity) and model.config.num_classes == 0
        assert torch.equal(model(x), hidden) and hidden.shape == (2, config.hidden_size)
    directory = model.save_pretrained(tmp_path / "headless")
    state = load_file(directory / "model.safetensors")
    assert not any(key.startswith("classifier.6.") for key in state)
    mv.reference_model(model.config).to_empty(device="cpu").load_state_dict(state, strict=True)
    (directory / "config.json").unlink()
    assert mv.VGG.from_pretrained(directory).num_classes == 0
    model.reset_classifier(7)
    assert model.get_classifier().in_features == config.hidden_size and model(x).shape == (2, 7)


def test_transfer_stages_are_the_blocks_between_poolings():
    model = mv.VGG(small_config(11, True)).eval()
    assert transfer.stages(model) == ["stages.0", "stages.1", "stages.2", "stages.3", "stages.4", "pre_logits", "head"]
    assert [len(stage.blocks) for stage in model.stages] == [1, 1, 2, 2, 2]
    transfer.freeze_up_to(model, "stages.4")  # the convolutions fixed, the classifier trains
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{part}.{p}" for part in ("pre_logits.fc1", "pre_logits.fc2", "head") for p in ("weight", "bias")}


# -- builders and format ---------------------------------------------------------------------
def test_builders_and_their_checkpoints(some_pair):
    _, _, _, path = some_pair
    with torch.device("meta"):
        model = mv.vgg16_bn(num_classes=7)
    assert model.config.describe() == "vgg16_bn (convs 2-2-3-3-3, 7 classes)" and model.head.out_features == 7
    with pytest.raises(KeyMismatchError, match=r"does not fit vgg11 \(convs 1-1-2-2-2, 5 classes\): the checkpoint looks like a VGG of \d+ layers"):
        mv.vgg11(weights=path)


def test_the_format_is_found_from_the_tensors(some_pair):
    _, _, model, path = some_pair
    with Checkpoint(path) as checkpoint:
        assert registry.model_class_for(path, checkpoint) is mv.VGG
    assert registry.family_of(model).model_type == "vgg"


def test_old_and_data_parallel_files(tmp_path):
    """Files saved before PyTorch 0.4.1 have no num_batches_tracked (it starts at 0, as in torch.nn); DataParallel
    saves put module. before every key."""
    config = small_config(11, True)
    state = random_reference(config, seed=2).state_dict()
    old = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    torch.save({"module." + key: value for key, value in old.items()}, tmp_path / "old.pth")
    model = mv.VGG.from_pretrained(tmp_path / "old.pth")
    assert model.config == config
    assert_same_weights(model, {key: torch.tensor(0) if key.endswith("num_batches_tracked") else value for key, value in state.items()})


def test_inspect_and_diff_on_the_command_line(some_pair, capsys):
    """``minipt inspect`` and ``minipt diff`` find VGG from a torchvision .pth through the registry."""
    from minipt import cli

    config, _, model, path = some_pair
    assert cli.main(["inspect", str(path), "--input-size", "1x3x32x32"]) == 0
    out = capsys.readouterr().out
    assert f"VGG from {path}" in out and f"parameters: {sum(p.numel() for p in model.parameters()):,}" in out
    assert f"features.0.weight ({config.stages[0][0]}, 3, 3, 3) -> stages.0.blocks.0.conv.weight" in out
    assert "classifier.6.weight (5, 24) -> head.weight" in out and "MISSING" not in out and "UNEXPECTED" not in out
    assert cli.main(["diff", str(path)]) == 0  # torchvision's VGG on the demo photo, at 224x224
    out = capsys.readouterr().out
    assert "against torchvision VGG" in out and "no divergence" in out and "stages.4.out" in out


# -- bad input ----------------------------------------------------------------------------------
def test_a_resnet_checkpoint(tmp_path):
    from minipt.models.resnet import ResNet, ResNetConfig

    model = ResNet(ResNetConfig("basic", (1, 1, 1, 1), num_classes=5))
    torch.save(official_state_dict(model, ResNet.keymap()), tmp_path / "resnet.pth")
    with pytest.raises(KeyMismatchError, match=r"resnet.pth is not a torchvision-format VGG: it has no features.0.weight .*conv1.weight \(64, 3, 7, 7\)"):
        mv.VGG.from_pretrained(tmp_path / "resnet.pth")


def test_a_missing_or_extra_convolution(tmp_path):
    config = small_config(11, False)
    state = random_reference(config).state_dict()  # A: convs at 0, 3, 6, 8, 11, 13, 16, 18
    cut = {key: value for key, value in state.items() if not key.startswith("features.6.")}
    torch.save(cut, tmp_path / "cut.pth")
    with pytest.raises(KeyMismatchError, match=r"the convolution after features.3.weight is features.8.weight; a conv-ReLU block puts the next one at features.5"):
        mv.VGG.from_pretrained(tmp_path / "cut.pth")
    torch.save({**state, "features.9.weight": torch.zeros(8, 8, 3, 3)}, tmp_path / "extra.pth")
    with pytest.raises(KeyMismatchError, match=r"features.9.weight"):
        mv.VGG.from_pretrained(tmp_path / "extra.pth")
    torch.save({**state, "features.6.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "channels.pth")
    with pytest.raises(KeyMismatchError, match=r"features.6.weight has shape \(8, 3, 3, 3\): it reads 3 channels, but the layer before gives 8"):
        mv.VGG.from_pretrained(tmp_path / "channels.pth")
    torch.save({k: v for k, v in state.items() if k != "features.6.bias"}, tmp_path / "bias.pth")
    with pytest.raises(KeyMismatchError, match=r"missing \(1\):\n    features.6.bias"):
        mv.VGG.from_pretrained(tmp_path / "bias.pth")


def test_a_config_that_contradicts_the_tensors(some_pair, tmp_path):
    config, _, model, _ = some_pair
    directory = model.save_pretrained(tmp_path / "saved")
    with pytest.raises(KeyMismatchError, match="does not fit"):
        mv.VGG.from_pretrained(directory, batch_norm=not config.batch_norm)
    with pytest.raises(ConfigError, match=r"stages = \(\): expected one or more stages"):
        mv.VGGConfig(())


@pytest.mark.parametrize(
    "shape, dtype, message",
    [((2, 1, 32, 32), torch.float32, r"3 input channels; got a tensor of shape \(2, 1, 32, 32\) with 1"),
     ((3, 32, 32), torch.float32, r"shaped \(batch, 3, height, width\); got \(3, 32, 32\)"),
     ((2, 3, 32, 31), torch.float32, r"images need at least 32x32 pixels; got a tensor of shape \(2, 3, 32, 31\)"),
     ((2, 3, 32, 32), torch.uint8, "floating-point images, got torch.uint8")],
)
def test_bad_images(shape, dtype, message):
    model = mv.VGG(small_config(11, True)).eval()
    for entry in (model, model.forward_features, model.fuse()):
        with pytest.raises(InputError, match=message):
            entry(torch.zeros(shape, dtype=dtype))
