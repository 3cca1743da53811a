"""minipt's ViT against transformers' ViTModel / ViTForImageClassification and torchvision's VisionTransformer on the
same weights, both official formats both ways, interpolated position tables, and ViT's own errors.

Both references run the same torch kernels as minipt (eager attention on transformers' side), so outputs agree to
1e-5 absolute (tests/helpers.py). Checkpoints are random models the references build and save (no ViT weights can be
installed here, ../shared/DATA.md); ``randomize`` makes every parameter random, LayerNorm and biases too, so no
mapping error hides behind a zero or a one.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import torchvision.models.vision_transformer as torchvision_vit  # noqa: E402  (the reference; conftest makes it importable)
from bert_reference import transformers
from helpers import ATOL, max_diff
from minipt import cli
from minipt.checkpoint import Checkpoint, official_state_dict
from minipt.errors import ConfigError, InputError, KeyMismatchError
from minipt.models.resnet import resnet18
from minipt.models.vit import (ViTConfig, ViTForImageClassification, ViTModel, interpolate_positions, pool, vit_b_16, vit_b_32,
                              vit_l_16)
from minipt.reference import layer_diffs
from minipt.registry import model_class_for

CLASSES = {"ViTModel": ViTModel, "ViTForImageClassification": ViTForImageClassification}


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random: LayerNorm scales near 1, everything else near 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_scale = p.dim() == 1 and name.endswith("weight")  # LayerNorm weights are the only 1-d weights in both references
            p.copy_((1.0 if is_scale else 0.0) + 0.1 * torch.randn(p.shape, generator=generator))
    return model


def hf_config(**overrides):
    values = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, image_size=16, patch_size=4,
                  num_channels=3, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    values.update(overrides)
    return transformers.ViTConfig(**values)


def saved(tmp_path, cls_name, config, seed=0):
    """transformers' ``cls_name`` (eager attention) with random weights, saved at ``tmp_path``; returns it in eval mode."""
    reference = randomize(getattr(transformers, cls_name)._from_config(config, attn_implementation="eager"), seed).eval()
    reference.save_pretrained(tmp_path)
    return reference


def images(channels, height, width, batch=2, seed=0):
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def run(model, x, **kwargs):
    with torch.no_grad():
        return model(x, output_hidden_states=True, output_attentions=True, **kwargs)


def everything(out) -> list[torch.Tensor]:
    """Every hidden state, every attention map, and the last output (last_hidden_state or logits)."""
    last = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return [last, *out.hidden_states, *out.attentions]


# -- parity with transformers on random configurations it builds and saves ----------------------------
@st.composite
def vit_configs(draw):
    heads = draw(st.integers(1, 4))
    patch = draw(st.integers(2, 6))
    return hf_config(
        hidden_size=heads * draw(st.integers(2, 8)),
        num_attention_heads=heads,
        num_hidden_layers=draw(st.integers(1, 3)),
        intermediate_size=draw(st.integers(4, 40)),
        patch_size=patch,
        image_size=patch * draw(st.integers(1, 4)),
        num_channels=draw(st.integers(1, 3)),
        num_labels=draw(st.integers(1, 5)),
        hidden_act=draw(st.sampled_from(["gelu", "gelu_new", "relu", "silu"])),
        layer_norm_eps=draw(st.sampled_from([1e-12, 1e-6])),
    )


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=vit_configs(), batch=st.integers(1, 3), rows=st.integers(1, 5), cols=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_random_configs_match_at_every_layer(tmp_path_factory, config, batch, rows, cols, seed):
    """Hidden states of every layer, attention maps, pooled output, logits and loss; then at a grid of rows x cols
    patches through interpolate_pos_encoding."""
    x = images(config.num_channels, config.image_size, config.image_size, batch, seed)
    base, classifier = tmp_path_factory.mktemp("vit"), tmp_path_factory.mktemp("vit_cls")
    theirs = run(saved(base, "ViTModel", config, seed), x)
    ours = run(ViTModel.from_pretrained(base), x)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == config.num_hidden_layers + 1
    assert max_diff(everything(ours) + [ours.pooler_output], everything(theirs) + [theirs.pooler_output]) <= ATOL

    reference = saved(classifier, "ViTForImageClassification", config, seed)
    model = ViTForImageClassification.from_pretrained(classifier)
    labels = torch.randint(0, config.num_labels, (batch,), generator=torch.Generator().manual_seed(seed))
    theirs, ours = run(reference, x, labels=labels), run(model, x, labels=labels)
    assert ours.logits.shape == (batch, config.num_labels) and max_diff(everything(ours), everything(theirs)) <= ATOL
    assert abs(ours.loss.item() - theirs.loss.item()) <= ATOL

    other = images(config.num_channels, rows * config.patch_size, cols * config.patch_size, batch, seed + 1)
    theirs, ours = run(reference, other, interpolate_pos_encoding=True), run(model, other, interpolate_pos_encoding=True)
    assert max_diff(everything(ours), everything(theirs)) <= ATOL


def test_interpolated_positions_are_transformers(tmp_path):
    """The position table at other grids, square and not, larger and smaller: transformers' numbers."""
    config = hf_config(image_size=24, patch_size=4)  # a 6 x 6 grid
    reference = saved(tmp_path, "ViTModel", config)
    ours = ViTModel.from_pretrained(tmp_path)
    for rows, cols in ((6, 6), (9, 9), (3, 3), (8, 5), (6, 10)):
        tokens = torch.zeros(1, 1 + rows * cols, config.hidden_size)
        with torch.no_grad():
            theirs = reference.embeddings.interpolate_pos_encoding(tokens, rows * 4, cols * 4)
            assert torch.equal(interpolate_positions(ours.embeddings.position, rows, cols), theirs)
    x = images(3, 40, 28)
    assert max_diff(everything(run(ours, x, interpolate_pos_encoding=True)), everything(run(reference, x, interpolate_pos_encoding=True))) <= ATOL


def test_features_head_and_pools(tmp_path):
    saved(tmp_path, "ViTForImageClassification", hf_config())
    model = ViTForImageClassification.from_pretrained(tmp_path)
    x = images(3, 16, 16)
    with torch.no_grad():
        features = model.forward_features(x)
        out = model(x, output_hidden_states=True)
        assert features.shape == (2, 1 + 16, 16) and torch.equal(features, model.vit.norm(out.hidden_states[-1]))
        assert torch.equal(model.forward_head(features), out.logits)
        assert torch.equal(model.forward_head(features, pre_logits=True), pool(features, "token")) and torch.equal(pool(features), features[:, 0])
        assert torch.allclose(pool(features, "avg"), features[:, 1:].mean(1))
    with pytest.raises(InputError, match=r"forward_head expects the tokens of forward_features, \(batch, 1 \+ patches, 16\); got \(2, 3, 16, 16\)"):
        model.forward_head(x)
    with pytest.raises(InputError, match="pool kind must be 'token' or 'avg', got 'max'"):
        pool(features, "max")


# -- Hugging Face's format both ways ----------------------------------------------------------------
@pytest.mark.parametrize("cls_name", list(CLASSES))
def test_transformers_loads_minipt_saves_strictly(tmp_path, cls_name):
    config = hf_config()
    saved(tmp_path / "theirs", cls_name, config)
    model = CLASSES[cls_name].from_pretrained(tmp_path / "theirs")
    model.save_pretrained(tmp_path / "ours")
    reference, info = getattr(transformers, cls_name).from_pretrained(tmp_path / "ours", attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    x = images(3, 16, 16)
    assert max_diff(everything(run(model, x)), everything(run(reference.eval(), x))) <= ATOL
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["model_type"] == "vit" and written["architectures"] == [cls_name] and "weights_format" not in written


def test_another_number_of_labels_says_how_to_get_a_new_head(tmp_path):
    """A classifier's file asked for other labels: the ConfigError names the way to a new head, which then trains."""
    from minipt.errors import ConfigError

    saved(tmp_path, "ViTForImageClassification", hf_config())
    with pytest.raises(ConfigError, match=r"num_labels = 10, but classifier.weight has shape \(3, 16\) \(for a new head of 10: "
                                          r"load the file as it is, then reset_classifier\(10\)\)"):
        ViTForImageClassification.from_pretrained(tmp_path, num_labels=10, init_missing=("classifier",))
    model = ViTForImageClassification.from_pretrained(tmp_path)
    model.reset_classifier(10)
    assert model(images(3, 16, 16)).logits.shape == (2, 10)


def test_classifier_without_a_head(tmp_path):
    """reset_classifier(0): the logits are the [CLS] features, as transformers' num_labels = 0; saved, transformers builds it back."""
    saved(tmp_path / "theirs", "ViTForImageClassification", hf_config())
    model = ViTForImageClassification.from_pretrained(tmp_path / "theirs")
    x = images(3, 16, 16)
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model.config.id2label is None and torch.equal(model(x).logits, features)
    model.save_pretrained(tmp_path / "ours")
    reference, info = transformers.ViTForImageClassification.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and isinstance(reference.classifier, torch.nn.Identity)
    assert ViTForImageClassification.from_pretrained(tmp_path / "ours").num_classes == 0
    model.reset_classifier(4)
    assert model(x).logits.shape == (2, 4)


def test_encoder_files_with_and_without_the_prefix(tmp_path):
    """A ViTModel file (no vit. prefix, with the pooler) under a new classifier head; a classifier's file as a bare encoder."""
    config = hf_config()
    saved(tmp_path / "bare", "ViTModel", config)
    reference = saved(tmp_path / "head", "ViTForImageClassification", config)
    encoder = ViTModel.from_pretrained(tmp_path / "bare")
    classifier = ViTForImageClassification.from_pretrained(tmp_path / "bare", init_missing=("classifier",))
    assert encoder.pooler is not None and torch.equal(classifier.vit.layers[1].ffn_up.weight, encoder.layers[1].ffn_up.weight)
    headless = ViTModel.from_pretrained(tmp_path / "head")  # vit. stripped, the classifier left out
    assert headless.pooler is None
    x = images(3, 16, 16)
    with torch.no_grad():
        assert max_diff(headless(x).last_hidden_state, reference.vit(x).last_hidden_state) <= ATOL


# -- torchvision's format both ways ------------------------------------------------------------------
def torchvision_model(seed=0, **sizes):
    values = dict(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=24, num_classes=5)
    values.update(sizes)
    return randomize(torchvision_vit.VisionTransformer(**values), seed).eval(), values


@pytest.mark.parametrize("sizes", [{}, dict(image_size=24, patch_size=8, num_layers=3, num_heads=4, hidden_dim=32, mlp_dim=20, num_classes=3)])
def test_torchvision_parity_and_round_trip(tmp_path, sizes):
    reference, values = torchvision_model(**sizes)
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    model = ViTForImageClassification.from_pretrained(tmp_path / "vit.pth", num_attention_heads=values["num_heads"])
    assert model.config.weights_format == "torchvision" and model.config.layer_norm_eps == 1e-6
    assert model.config.image_size == values["image_size"] and model.num_classes == values["num_classes"]
    x = images(3, values["image_size"], values["image_size"], batch=3)
    with torch.no_grad():
        encoded = {}
        reference.encoder.ln.register_forward_hook(lambda module, args, out: encoded.setdefault("tokens", out))
        assert max_diff(model(x).logits, reference(x)) <= ATOL
        assert max_diff(model.forward_features(x), encoded["tokens"]) <= ATOL
    assert layer_diffs(model, tmp_path / "vit.pth", x).first_divergence is None
    assert layer_diffs(model, tmp_path / "vit.pth", {"pixel_values": x}).first_divergence is None  # a processor's batch
    assert layer_diffs(model, tmp_path / "vit.pth", transformers.BatchFeature({"pixel_values": x})).first_divergence is None  # not a dict
    with pytest.raises(InputError, match=r"holds one tensor of images \(pixel_values\); got the keys \['mask', 'pixel_values'\]"):
        layer_diffs(model, tmp_path / "vit.pth", {"pixel_values": x, "mask": x})

    directory = model.save_pretrained(tmp_path / "ours")  # torchvision's names, in_proj whole
    state = load_file(directory / "model.safetensors")
    fresh = torchvision_vit.VisionTransformer(**values)
    fresh.load_state_dict(state, strict=True)
    assert all(torch.equal(state[key], value) for key, value in reference.state_dict().items())
    reloaded = ViTForImageClassification.from_pretrained(directory)  # config.json says what the file is
    assert reloaded.config == model.config
    encoder = ViTModel.from_pretrained(tmp_path / "vit.pth", num_attention_heads=values["num_heads"])  # heads.head left out
    with torch.no_grad():
        assert torch.equal(encoder(x).last_hidden_state, model.forward_features(x))


def test_torchvision_file_without_a_config(tmp_path, capsys):
    """Found by its class_token; the head count is that of torchvision's builder of its width (vit_b: 768 wide,
    12 heads; vit_l and vit_h: 16 heads), or must be passed: vit_h_14's 1280 are 16 heads 80 wide, not 20 of 64."""
    reference, values = torchvision_model(hidden_dim=768, num_heads=12, num_layers=1, mlp_dim=32)
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    assert model_class_for(tmp_path / "vit.pth", Checkpoint(tmp_path / "vit.pth")) is ViTForImageClassification  # with its head
    model = ViTForImageClassification.from_pretrained(tmp_path / "vit.pth")
    assert model.config.num_attention_heads == 12
    x = images(3, 16, 16)
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) <= ATOL
    assert cli.main(["inspect", str(tmp_path / "vit.pth")]) == 0
    shown = capsys.readouterr().out
    assert "ViTForImageClassification from" in shown and "heads.head.weight (5, 768) -> classifier.weight" in shown
    assert "self_attention.in_proj_weight (2304, 768) -> vit.layers.0.attn.k_proj.weight  [split 2/3 along dim 0]" in shown
    huge, _ = torchvision_model(hidden_dim=1280, num_heads=16, num_layers=1, mlp_dim=8, image_size=8, patch_size=8)
    torch.save(huge.state_dict(), tmp_path / "h.pth")
    assert ViTForImageClassification.from_pretrained(tmp_path / "h.pth").config.num_attention_heads == 16  # vit_h_14's
    reference, _ = torchvision_model()  # hidden 16: no builder of that width
    torch.save({"module." + key: value for key, value in reference.state_dict().items()}, tmp_path / "ddp.pth")
    with pytest.raises(ConfigError, match=r"hidden size 16, none of torchvision's builders' \(768: 12 heads.*pass num_attention_heads="):
        ViTForImageClassification.from_pretrained(tmp_path / "ddp.pth")
    assert ViTForImageClassification.from_pretrained(tmp_path / "ddp.pth", num_attention_heads=2).num_classes == 5


def test_legacy_torchvision_mlp_names(tmp_path):
    """torchvision's files from before MLPBlock was a Sequential call the linears linear_1 / linear_2."""
    reference, values = torchvision_model()
    state = {key.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): value for key, value in reference.state_dict().items()}
    torch.save(state, tmp_path / "old.pth")
    model = ViTForImageClassification.from_pretrained(tmp_path / "old.pth", num_attention_heads=2)
    x = images(3, 16, 16)
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) <= ATOL


def test_builders_are_torchvisions_architectures(tmp_path):
    for builder, name in ((vit_b_16, "vit_b_16"), (vit_b_32, "vit_b_32"), (vit_l_16, "vit_l_16")):
        with torch.device("meta"):
            ours = builder(num_classes=10)
            theirs = getattr(torchvision_vit, name)(num_classes=10)
        shapes = {key: tuple(value.shape) for key, value in theirs.state_dict().items()}
        assert {key: tuple(value.shape) for key, value in official_state_dict(ours, ours.keymap(ours.config)).items()} == shapes
    reference, _ = torchvision_model()
    torch.save(reference.state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ConfigError, match=r"hidden_size = 768, but class_token has shape \(1, 1, 16\)"):
        vit_b_16(weights=tmp_path / "tiny.pth")


def test_preprocess_follows_the_format(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    white = PIL.new("RGB", (40, 30), (255, 255, 255))
    hf = ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=16, patch_size=8))
    assert hf.preprocess([white]).shape == (1, 3, 16, 16) and torch.allclose(hf.preprocess(white), torch.ones(1, 3, 16, 16))  # (1 - 0.5) / 0.5
    tv = ViTForImageClassification(hf.config.replace(weights_format="torchvision"))
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(tv.preprocess(white), expected[None, :, None, None].expand(1, 3, 16, 16))


def test_hugging_face_checkpoints_see_photos_as_transformers_prepares_them():
    """transformers' ViTImageProcessor resizes the whole photo to the square (bilinear, nothing cropped); minipt cropped
    the centre of non-square photos, up to 1.66 apart in normalised pixels. Now within one grey level (1/127.5)."""
    from skimage import data

    PIL = pytest.importorskip("PIL.Image")
    model = ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
    processor = transformers.ViTImageProcessor()
    for photo in (data.chelsea(), data.coffee(), data.astronaut()):
        image = PIL.fromarray(photo)
        expected = processor(images=image, return_tensors="pt")["pixel_values"]
        assert (model.preprocess(image) - expected).abs().max() <= 1 / 127.5 + 1e-6


# -- the per-layer diff -------------------------------------------------------------------------------
def test_fine_tuning_stages_and_layer_wise_learning_rates():
    """The stages the ViT fine-tuning recipe decays the learning rate over, from the patch embedding up to the head."""
    from minipt import transfer

    model = ViTForImageClassification(ViTConfig.from_dict(hf_config(num_hidden_layers=3).to_dict()))
    assert transfer.stages(model) == ["patch_embed", "layers.0", "layers.1", "layers.2", "norm", "head"]
    groups = transfer.param_groups(model, 1e-3, layer_decay=0.65)
    assert [g["stage"] for g in groups] == transfer.stages(model)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * 0.65**k for k in (5, 4, 3, 2, 1, 0)])
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.vit.embeddings.parameters()}  # patches, [CLS], positions
    assert transfer.reset_classifier(model, 7).classifier.out_features == 7


def test_layer_diffs_find_a_planted_change(tmp_path):
    config = hf_config(num_hidden_layers=3)
    saved(tmp_path, "ViTModel", config)
    model = ViTModel.from_pretrained(tmp_path)
    x = images(3, 16, 16)
    report = layer_diffs(model, tmp_path, x)
    assert report.first_divergence is None, str(report)
    names = [row.name for row in report.rows]
    assert names[0] == "embeddings.out" and names[-2:] == ["norm.out", "pooler.out"] and len(names) == 3 + 3 * 8
    planted = copy.deepcopy(model)
    planted.layers[1].ffn_norm.eps = 1e-1
    assert layer_diffs(planted, tmp_path, x).first_divergence.name == "layers.1.ffn_norm.out"
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.embeddings.position[0, 3] += 0.5
    assert layer_diffs(shifted, tmp_path, x).first_divergence.name == "embeddings.out"


def test_inspect_and_diff_commands_on_a_transformers_file(tmp_path, capsys):
    saved(tmp_path, "ViTForImageClassification", hf_config())
    assert cli.main(["diff", str(tmp_path)]) == 0  # the demo photo, preprocessed as the format says
    out = capsys.readouterr().out
    assert "against transformers ViTForImageClassification" in out and "(1, 3, 16, 16)" in out and "no divergence: all" in out
    assert cli.main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ViTForImageClassification from" in out and "FLOPs" in out
    assert "vit.encoder.layer.0.attention.attention.query.weight (16, 16) -> vit.layers.0.attn.q_proj.weight" in out


def test_layer_diffs_of_the_classifier(tmp_path):
    saved(tmp_path, "ViTForImageClassification", hf_config())
    report = layer_diffs(ViTForImageClassification.from_pretrained(tmp_path), tmp_path, images(3, 16, 16))
    assert report.first_divergence is None, str(report)
    assert report.rows[0].name == "vit.embeddings.out" and report.rows[-1].name == "classifier.out"


# -- bad input ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_classifier():
    return ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=16, patch_size=8)).eval()


def test_image_of_another_size(tiny_classifier):
    with pytest.raises(InputError, match=r"position table is for 16x16 images \(image_size\), got 24x24; pass interpolate_pos_encoding=True"):
        tiny_classifier(images(3, 24, 24))
    assert tiny_classifier(images(3, 24, 24), interpolate_pos_encoding=True).logits.shape == (2, 2)


def test_image_not_a_whole_number_of_patches(tiny_classifier):
    with pytest.raises(InputError, match=r"8x8 patches \(patch_size\); an image of 20x16 pixels is not a whole number of them"):
        tiny_classifier(images(3, 20, 16), interpolate_pos_encoding=True)


def test_wrong_channel_count(tiny_classifier):
    with pytest.raises(InputError, match=r"expects 3 input channels; got a tensor of shape \(2, 1, 16, 16\) with 1"):
        tiny_classifier(images(1, 16, 16))


def test_labels_of_the_wrong_shape(tiny_classifier):
    with pytest.raises(InputError, match=r"labels must hold one entry per image \(2 for pixel_values \(2, 3, 16, 16\)\), got \(3,\)"):
        tiny_classifier(images(3, 16, 16), labels=torch.tensor([0, 1, 0]))


def test_position_table_that_is_not_a_square_grid(tmp_path):
    with pytest.raises(ConfigError, match="holds 6 patch positions, not a square grid: it cannot be interpolated"):
        interpolate_positions(torch.zeros(1, 7, 4), 3, 3)
    reference, _ = torchvision_model()
    state = reference.state_dict()
    state["encoder.pos_embedding"] = state["encoder.pos_embedding"][:, :7]  # [CLS] + 6 patches
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(KeyMismatchError, match=r"encoder.pos_embedding \(1, 7, 16\) holds 6 patch positions, not a square grid"):
        ViTForImageClassification.from_pretrained(tmp_path / "odd.pth", num_attention_heads=2)


def test_a_torchvision_file_whose_architecture_tensors_have_the_wrong_rank(tmp_path):
    """The architecture is read off these tensors' shapes, so a damaged shape is named before it is read (found by tests/test_fuzz.py)."""
    state = torchvision_model()[0].state_dict()
    for key, shape, message in [("conv_proj.weight", (16, 48), r"is not a torchvision-format ViT: conv_proj.weight has shape \(16, 48\), not 4 dimensions"),
                                ("heads.head.weight", (80,), r"is not a torchvision-format ViT: heads.head.weight has shape \(80,\), not 2 dimensions"),
                                ("encoder.pos_embedding", (1, 0, 16), r"encoder.pos_embedding \(1, 0, 16\) holds 0 patch positions, not a square grid")]:
        torch.save({**state, key: torch.zeros(shape)}, tmp_path / "damaged.pth")
        with pytest.raises(KeyMismatchError, match=message):
            ViTForImageClassification.from_pretrained(tmp_path / "damaged.pth", num_attention_heads=2)


@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", 32, r"hidden_size = 32, but vit.embeddings.cls_token has shape \(1, 1, 16\)"),
    ("num_hidden_layers", 3, r"num_hidden_layers = 3, but the checkpoint holds 2"),
    ("image_size", 20, r"image_size = 20 and patch_size = 4 make 5x5 patches \+ \[CLS\] = 26 positions, but vit.embeddings.position_embeddings has shape \(1, 17, 16\)"),
    ("patch_size", 8, r"patch_size = 8, but vit.embeddings.patch_embeddings.projection.weight has shape \(16, 3, 4, 4\)"),
])
def test_config_that_contradicts_the_tensors(tmp_path, field, value, message):
    saved(tmp_path, "ViTForImageClassification", hf_config())
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        ViTForImageClassification.from_pretrained(tmp_path)


def test_unsupported_config_fields_are_named():
    with pytest.raises(ConfigError, match="qkv_bias = False"):
        ViTConfig(qkv_bias=False)
    with pytest.raises(ConfigError, match=r"image_size = \[224, 160\]: expected one side"):
        ViTConfig.from_dict({"model_type": "vit", "image_size": [224, 160]})
    with pytest.raises(ConfigError, match="image_size = 30: expected a multiple of patch_size 8"):
        ViTConfig(image_size=30, patch_size=8)


def test_checkpoints_of_other_families_are_named(tmp_path):
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
    bert.save_pretrained(tmp_path / "bert")
    for cls in CLASSES.values():
        with pytest.raises(ConfigError, match=r"describes a 'bert' model, not 'vit': load it with minipt.models.bert.BertModel"):
            cls.from_pretrained(tmp_path / "bert")
    torch.save(official_state_dict(resnet := resnet18(num_classes=4), resnet.keymap()), tmp_path / "resnet.pth")
    for cls in CLASSES.values():
        with pytest.raises(ConfigError, match=r"has no config.json, which .* needs; it looks like a torchvision-format ResNet"):
            cls.from_pretrained(tmp_path / "resnet.pth")


def test_torchvision_weights_are_prepared_as_their_transforms():
    """Each torchvision ViT weight's own transforms (resize, interpolation, crop) against what preprocess does for a
    file of that architecture: the ImageNet weights of vit_l_16 resize to 242, the SWAG ones to the crop's size,
    bicubic; minipt resized every one to 256 / 224 of the crop, bilinear (up to 2.9 apart in normalised pixels)."""
    from minipt.models.vit import torchvision_resize

    checked = 0
    for builder, architecture in (("vit_b_16", (768, 16)), ("vit_b_32", (768, 32)), ("vit_l_16", (1024, 16)),
                                  ("vit_l_32", (1024, 32)), ("vit_h_14", (1280, 14))):
        for weights in torchvision_vit.__dict__[f"{builder.upper().replace('VIT', 'ViT')}_Weights"]:
            transforms = weights.transforms()
            image_size = transforms.crop_size[0]
            config = ViTConfig(hidden_size=architecture[0], num_attention_heads=16, patch_size=architecture[1], image_size=image_size)
            resize, resample = torchvision_resize(config)
            if "SWAG_LINEAR" in weights.name and builder != "vit_h_14":  # the ImageNet weights' shapes: preprocess(resize=224, resample="bicubic")
                assert (resize, resample) != (transforms.resize_size[0], transforms.interpolation.value)
                continue
            assert (resize, resample) == (transforms.resize_size[0], transforms.interpolation.value), weights
            checked += 1
    assert checked == 8  # 10 weights, the 2 SWAG "linear" ones of the ImageNet shapes aside


def test_torchvision_preprocess_is_the_weights_transforms_on_a_photo(tmp_path):
    from PIL import Image

    image = Image.fromarray(torch.randint(0, 256, (427, 640, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).numpy())
    with torch.device("meta"):
        large = ViTForImageClassification(ViTConfig(hidden_size=1024, num_hidden_layers=1, num_attention_heads=16, intermediate_size=8,
                                                    num_labels=3, weights_format="torchvision"))
    expected = torchvision_vit.ViT_L_16_Weights.IMAGENET1K_V1.transforms()(image)
    assert max_diff(large.preprocess(image)[0], expected) < 1e-5
    swag = torchvision_vit.ViT_L_16_Weights.IMAGENET1K_SWAG_LINEAR_V1.transforms()(image)
    assert max_diff(large.preprocess(image, resize=224, resample="bicubic")[0], swag) < 1e-5


def test_a_folders_preprocessor_config_is_followed_and_saved(tmp_path):
    """A fine-tuned ViT whose preprocessor_config.json says ImageNet statistics and bicubic: transformers'
    AutoImageProcessor follows it, minipt squeezed with mean = std = 0.5 (1.06 apart). Now the file's settings are
    used (within the two libraries' bicubic rounding), written back by save_pretrained, and a setting minipt does
    not follow is named when images are prepared, not when weights load."""
    from PIL import Image

    folder = tmp_path / "vit"
    transformers.ViTForImageClassification(transformers.ViTConfig(**hf_config().to_dict())).save_pretrained(folder)
    settings = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 16, "width": 16}, "resample": 3,
                "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_rescale": True,
                "rescale_factor": 1 / 255}
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    image = Image.fromarray(torch.randint(0, 256, (30, 45, 3), generator=torch.Generator().manual_seed(2), dtype=torch.uint8).numpy())
    expected = transformers.AutoImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt")["pixel_values"]
    model = ViTForImageClassification.from_pretrained(folder)
    assert max_diff(model.preprocess(image), expected) <= 2.01 / (255 * 0.224)  # bicubic rounding; the 0.5 statistics were 1.06 apart
    again = ViTForImageClassification.from_pretrained(model.save_pretrained(tmp_path / "again"))
    assert json.loads((tmp_path / "again" / "preprocessor_config.json").read_text()) == settings
    assert torch.equal(again.preprocess(image), model.preprocess(image))
    (folder / "preprocessor_config.json").write_text(json.dumps(settings | {"image_processor_type": "DeiTImageProcessor", "do_center_crop": True}))
    model = ViTForImageClassification.from_pretrained(folder)  # the weights load
    with pytest.raises(InputError, match="preprocessor_config.json .*follows ViTImageProcessor, not 'DeiTImageProcessor'"):
        model.preprocess(image)
