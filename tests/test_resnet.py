"""ResNet against torchvision's own ResNet code, on the same randomised weights and BatchNorm statistics.

Every variant is built by torchvision, given random BatchNorm affine parameters
and running statistics, saved as a torchvision ``.pth`` and loaded by minipt's
builder through the production key map. Inputs are small (2x3x32x32; the
hypothesis test varies the size). minipt's ResNet runs the same operations as
torchvision's (convolution, BatchNorm, ReLU, pooling, linear), so the two agree
to float32 rounding: max abs difference <= 1e-5 relative to the largest value
(``max|a - b| / max|b|``, logits reach ~10-100 with random BatchNorm). A model
with BatchNorm folded into its convolutions, or run in channels-last memory
format, computes differently (other weights, other convolution kernels): it is
held to an error ratio against torchvision's model in float64 (tests/helpers.py).
"""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from minipt.checkpoint import official_state_dict
from minipt.errors import ConfigError, InputError, KeyMismatchError
from minipt.models import resnet as mr

from helpers import assert_error_ratio, randomise_batch_norm, rel_diff

import torchvision.models.resnet as torchvision_resnet  # noqa: E402  (the reference; conftest makes it importable)

VARIANTS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2"]
RTOL = 1e-5  # relative to the largest |value|, for the same operations in the same order (see above)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BatchNorm affine parameters and running statistics, and a random classifier (the convs keep
    their random He init)."""
    randomise_batch_norm(model, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=generator) * 0.05)
        model.fc.bias.copy_(torch.randn(model.fc.bias.shape, generator=generator) * 0.05)
    return model


def images(batch=2, size=32, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=VARIANTS)
def pair(request, tmp_path_factory):
    """(name, torchvision model, minipt model loaded from torchvision's .pth, the .pth path), both in eval mode."""
    torch.manual_seed(0)
    name = request.param
    reference = randomise(getattr(torchvision_resnet, name)()).eval()
    path = tmp_path_factory.mktemp(name) / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = getattr(mr, name)(weights=path)
    return name, reference, model, path


@pytest.fixture(scope="module")
def expected(pair):
    """torchvision's eval-mode logits for ``images()``, computed once per variant."""
    with torch.no_grad():
        return pair[1](images())


@pytest.fixture(scope="module")
def exact(pair):
    """The same logits from torchvision's model in float64."""
    with torch.no_grad():
        return copy.deepcopy(pair[1]).double()(images().double())


def assert_same_weights(model: mr.ResNet, state: dict) -> None:
    """``model`` holds exactly the tensors of the torchvision state dict ``state``."""
    official = official_state_dict(model, mr.ResNet.keymap())
    assert official.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(official[key], tensor), key


def test_eval_parity(pair, expected):
    name, reference, model, _ = pair
    assert not model.training
    with torch.no_grad():
        assert rel_diff(model(images()), expected) <= RTOL


def test_from_pretrained_infers_the_architecture(pair):
    name, reference, model, path = pair
    loaded = mr.ResNet.from_pretrained(path)
    assert loaded.config == model.config and not loaded.training
    assert loaded.config.describe().startswith(name + " ")
    assert_same_weights(loaded, reference.state_dict())  # same tensors as the model whose outputs are checked above


def test_train_step_parity(pair):
    """Train-mode outputs, gradients, running statistics and parameters after one SGD step."""
    _, reference, model, _ = pair
    reference, model = copy.deepcopy(reference).train(), copy.deepcopy(model).train()
    x, target = images(batch=4, seed=3), torch.randint(0, 1000, (4,))  # 4 samples per channel at stage 4 (1x1)
    results = []
    for net in (reference, model):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in net.named_parameters()}
        optimizer.step()
        results.append((logits.detach(), grads))
    (ref_logits, ref_grads), (logits, grads) = results
    assert rel_diff(logits, ref_logits) <= RTOL
    for name, grad in grads.items():
        official = mr.ResNet.keymap().to_official(name)[0]
        assert rel_diff(grad, ref_grads[official]) <= RTOL, official
    after, ref_after = official_state_dict(model, mr.ResNet.keymap()), reference.state_dict()
    assert after.keys() == ref_after.keys()
    for key, tensor in ref_after.items():  # parameters after the step, running_mean/var, num_batches_tracked
        if tensor.is_floating_point():
            assert rel_diff(after[key], tensor) <= RTOL, key
        else:
            assert torch.equal(after[key], tensor), key


def test_fused_model(pair, expected, exact):
    _, reference, model, _ = pair
    fused = model.fuse()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with torch.no_grad():
        assert_error_ratio(fused(images()), expected, exact, what="BatchNorm folded")


def test_save_load_round_trip(pair, tmp_path):
    name, reference, model, _ = pair
    directory = model.save_pretrained(tmp_path / name)
    state = load_file(directory / "model.safetensors")
    fresh = getattr(torchvision_resnet, name)()
    fresh.load_state_dict(state, strict=True)  # torchvision reads minipt's file as its own
    for key, tensor in reference.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], tensor), key
    assert_same_weights(mr.ResNet.from_pretrained(directory), reference.state_dict())


# -- one architecture, more checks ---------------------------------------------------
@pytest.fixture(scope="module")
def resnet50_pair(tmp_path_factory):
    torch.manual_seed(0)
    reference = randomise(torchvision_resnet.resnet50(), seed=7).eval()
    path = tmp_path_factory.mktemp("r50") / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


def test_stride_sits_on_the_3x3_conv():
    model = mr.resnet50()
    first = model.stages[1][0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2) and first.shortcut.conv.stride == (2, 2)


def test_safetensors_weights_and_module_prefix(resnet50_pair, tmp_path):
    reference, _ = resnet50_pair
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(tmp_path / "r50.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "ddp.pth")
    for path in (tmp_path / "r50.safetensors", tmp_path / "ddp.pth"):
        assert_same_weights(mr.resnet50(weights=path), state)


def test_checkpoint_without_batch_counts(resnet50_pair, tmp_path):
    """Files saved before PyTorch 0.4.1 have no num_batches_tracked; torch.nn (and minipt) start them at 0."""
    reference, _ = resnet50_pair
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    model = mr.resnet50(weights=tmp_path / "old.pth")
    assert all(m.num_batches_tracked.item() == 0 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert_same_weights(model, {**reference.state_dict(), **{k: torch.tensor(0) for k in reference.state_dict() if k.endswith("num_batches_tracked")}})
    del state["layer1.0.bn1.running_mean"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(KeyMismatchError, match=r"missing \(1\):\n    layer1.0.bn1.running_mean \(64,\)"):
        mr.resnet50(weights=tmp_path / "cut.pth")


def test_forward_features_are_the_last_stage_and_forward_head_pools(resnet50_pair):
    """timm's split: forward_features is torchvision's network up to layer4, forward_head its avgpool and fc."""
    reference, path = resnet50_pair
    model = mr.resnet50(weights=path)
    trunk = torch.nn.Sequential(*list(copy.deepcopy(reference).children())[:-2])  # conv1 ... layer4
    pooled = copy.deepcopy(reference)
    pooled.fc = torch.nn.Identity()
    x = images(seed=8)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 2048, 1, 1) and model.num_features == 2048
        assert rel_diff(features, trunk(x)) <= RTOL
        assert rel_diff(model.forward_head(features, pre_logits=True), pooled(x)) <= RTOL
        assert torch.equal(model.forward_head(features), model(x))


@pytest.fixture(scope="module")
def timm_resnet():
    import timm  # the reference for the head calls (part of the test extra)

    return timm


def test_timm_head_calls_on_the_same_weights(timm_resnet, tmp_path):
    """forward_features, forward_head (with and without pre_logits), get_classifier and reset_classifier
    (0: no head, then a new one) against timm's resnet18 on the same file (timm and torchvision share key names)."""
    reference = randomise(timm_resnet.create_model("resnet18", pretrained=False, num_classes=5), seed=5).eval()
    torch.save(reference.state_dict(), tmp_path / "timm18.pth")
    model = mr.ResNet.from_pretrained(tmp_path / "timm18.pth")
    x = images(seed=4)
    with torch.no_grad():
        features, theirs = model.forward_features(x), reference.forward_features(x)
        assert features.shape == theirs.shape == (2, 512, 1, 1) and rel_diff(features, theirs) <= RTOL
        for pre_logits in (True, False):
            assert rel_diff(model.forward_head(features, pre_logits=pre_logits), reference.forward_head(theirs, pre_logits=pre_logits)) <= RTOL
        assert torch.equal(model.get_classifier().weight, reference.get_classifier().weight)
        assert model.num_classes == reference.num_classes == 5 and model.num_features == reference.num_features
        model.reset_classifier(0), reference.reset_classifier(0)
        assert model.num_classes == reference.num_classes == 0
        assert isinstance(model.get_classifier(), torch.nn.Identity) and isinstance(reference.get_classifier(), torch.nn.Identity)
        assert rel_diff(model(x), reference(x)) <= RTOL  # both give the pooled features
        model.reset_classifier(7), reference.reset_classifier(7)
        assert model(x).shape == reference(x).shape == (2, 7)


def test_headless_file_without_config(timm_resnet, tmp_path):
    """A model saved after reset_classifier(0) has no fc tensors: the architecture read off the file has no head,
    and timm's headless resnet18 loads the file strictly."""
    model = mr.resnet18(num_classes=0)
    state = official_state_dict(model, mr.ResNet.keymap())
    assert not any(key.startswith("fc.") for key in state)
    torch.save(state, tmp_path / "headless.pth")
    loaded = mr.ResNet.from_pretrained(tmp_path / "headless.pth")
    assert loaded.num_classes == 0 and loaded.config.describe() == "resnet18 (basic blocks 2-2-2-2, no classifier)"
    timm_resnet.create_model("resnet18", pretrained=False, num_classes=0).load_state_dict(state, strict=True)


def test_channels_last(resnet50_pair):
    reference, path = resnet50_pair
    model = mr.resnet50(weights=path).to(memory_format=torch.channels_last)
    x = images(seed=9)
    with torch.no_grad():
        expected, exact = reference(x), copy.deepcopy(reference).double()(x.double())
        x_cl = x.contiguous(memory_format=torch.channels_last)
        assert_error_ratio(model(x_cl), expected, exact, what="channels last")
        fused = model.fuse()
        assert fused.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert_error_ratio(fused(x_cl), expected, exact, what="channels last, BatchNorm folded")


def test_num_classes_from_checkpoint_and_override(tmp_path):
    reference = torchvision_resnet.resnet18(num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    assert mr.resnet18(weights=tmp_path / "r18.pth").head.out_features == 10
    assert mr.resnet18(num_classes=7).head.out_features == 7
    with pytest.raises(KeyMismatchError, match=r"does not fit resnet18 \(basic blocks 2-2-2-2, 1000 classes\): the checkpoint looks like resnet18 \(basic blocks 2-2-2-2, 10 classes\)"):
        mr.resnet18(weights=tmp_path / "r18.pth", num_classes=1000)


@pytest.fixture(scope="module")
def small_pair():
    torch.manual_seed(0)
    reference = randomise(torchvision_resnet.resnet18(num_classes=5), seed=1).eval()
    model = mr.ResNet(mr.ResNetConfig("basic", (2, 2, 2, 2), num_classes=5))
    model.load_state_dict({mr.ResNet.keymap().to_minipt(k)[0]: v for k, v in reference.state_dict().items()})
    return reference, model


@settings(max_examples=6, deadline=None)
@given(batch=st.integers(1, 3), height=st.integers(17, 72), width=st.integers(17, 72))
def test_any_image_size(small_pair, batch, height, width):
    reference, model = small_pair
    x = torch.randn(batch, 3, height, width)
    with torch.no_grad():
        assert rel_diff(model.eval()(x), reference(x)) <= RTOL


# -- bad input ------------------------------------------------------------------------
def test_checkpoint_of_another_depth(resnet50_pair):
    _, path = resnet50_pair
    with pytest.raises(KeyMismatchError) as err:
        mr.resnet18(weights=path)
    message = str(err.value)  # refused from the names and shapes alone, before any module is built
    assert "does not fit resnet18 (basic blocks 2-2-2-2, 1000 classes): the checkpoint looks like resnet50 (bottleneck blocks 3-4-6-3" in message


def test_resnext_checkpoint_into_plain_resnet50(tmp_path):
    torch.save(torchvision_resnet.resnext50_32x4d().state_dict(), tmp_path / "x.pth")
    with pytest.raises(KeyMismatchError, match=r"does not fit resnet50 \(bottleneck blocks 3-4-6-3, 1000 classes\): the checkpoint looks like resnext50_32x4d"):
        mr.resnet50(weights=tmp_path / "x.pth")


def test_checkpoint_of_another_architecture(tmp_path):
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_fc.weight": torch.zeros(1000, 1280)}, tmp_path / "effnet.pth")
    with pytest.raises(KeyMismatchError, match=r"not a torchvision-format ResNet: it has no conv1.weight.*_conv_stem.weight \(32, 3, 3, 3\)"):
        mr.ResNet.from_pretrained(tmp_path / "effnet.pth")
    with pytest.raises(KeyMismatchError, match="not a torchvision-format ResNet"):
        mr.resnet18(weights=tmp_path / "effnet.pth")
    from minipt.models.vgg import VGG, VGGConfig

    from minipt.checkpoint import official_state_dict

    vgg = VGG(VGGConfig(stages=((8,), (8,)), hidden_size=16, pool_size=1, num_classes=3))
    torch.save(official_state_dict(vgg, vgg.keymap(vgg.config)), tmp_path / "vgg.pth")  # torchvision's VGG: a family minipt has, named
    with pytest.raises(KeyMismatchError, match=r"not a torchvision-format ResNet.*load it with minipt\.models\.vgg\.VGG"):
        mr.ResNet.from_pretrained(tmp_path / "vgg.pth")
    damaged = torchvision_resnet.resnet18().state_dict()
    del damaged["conv1.weight"]  # a ResNet missing a tensor: no hint that sends it back to ResNet
    torch.save(damaged, tmp_path / "damaged.pth")
    with pytest.raises(KeyMismatchError, match=r"it has no conv1\.weight \(its first keys: [^;]*\)$"):
        mr.ResNet.from_pretrained(tmp_path / "damaged.pth")


@pytest.mark.parametrize(
    "shape, dtype, message",
    [((3, 32, 32), torch.float32, r"shaped \(batch, 3, height, width\); got \(3, 32, 32\)"),
     ((2, 1, 32, 32), torch.float32, r"3 input channels; got a tensor of shape \(2, 1, 32, 32\) with 1"),
     ((2, 32, 32, 3), torch.float32, r"3 input channels; got a tensor of shape \(2, 32, 32, 3\)"),
     ((1, 2, 3, 32, 32), torch.float32, r"got \(1, 2, 3, 32, 32\)"),
     ((2, 3, 32, 32), torch.uint8, "floating-point images, got torch.uint8")],
)
def test_bad_input(shape, dtype, message):
    model = mr.resnet18().eval()
    for entry in (model, model.forward_features, model.fuse()):
        with pytest.raises(InputError, match=message):
            entry(torch.zeros(shape, dtype=dtype))


def test_fused_model_cannot_be_saved(tmp_path):
    with pytest.raises(ConfigError, match="fused"):
        mr.resnet18().fuse().save_pretrained(tmp_path)


def test_bad_config():
    with pytest.raises(ConfigError, match=r"groups/width_per_group = \(32, 64\): expected \(1, 64\) for BasicBlock"):
        mr.resnet18(groups=32)
    with pytest.raises(ConfigError, match="four stages"):
        mr.ResNet(mr.ResNetConfig("basic", (2, 2, 2)))


def test_preprocess_is_torchvisions(tmp_path):
    """resize 256, centre crop 224, 0..1, ImageNet mean/std: what the transforms of torchvision's weights give
    (ResNet50_Weights.IMAGENET1K_V1.transforms(): bilinear, the longer side truncated), on a photo whose longer
    side 256 * 451 / 300 = 384.85 rounds otherwise (minipt resized bicubic and rounded: pixels up to 0.77 apart)."""
    from PIL import Image
    from torchvision import transforms
    from torchvision.transforms._presets import ImageClassification

    generator = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (300, 451, 3), dtype=torch.uint8, generator=generator).numpy()
    image = Image.fromarray(pixels)
    path = tmp_path / "photo.png"
    image.save(path)
    model = mr.resnet18(num_classes=3)
    x = model.preprocess([path])
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    reference = transforms.Compose([
        transforms.Resize(256, transforms.InterpolationMode.BILINEAR), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])(image)
    assert (x[0] - reference).abs().max() < 1e-5  # the same PIL resampling and arithmetic
    assert (x[0] - ImageClassification(crop_size=224, resize_size=256)(image)).abs().max() < 1e-5


def test_shared_conv_pieces_keep_the_keys():
    from minipt.nn import conv1x1, conv3x3

    model = mr.resnet50(num_classes=3)
    block = model.stages[1][0]
    assert block.conv2.kernel_size == (3, 3) and block.conv2.bias is None
    assert conv3x3(4, 8, bias=True).bias is not None and conv1x1(4, 8).bias is None
    assert "stages.1.0.shortcut.conv.weight" in model.state_dict()
