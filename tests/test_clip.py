"""CLIP against transformers' CLIPModel (eager attention) on random configs it builds and saves, OpenAI's layout
converted here from the same weights, zero-shot classification (and the ``minipt zero-shot`` command), the
contrastive loss, position interpolation, preprocessing and the error paths."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import torchvision.models.vision_transformer as torchvision_vit  # noqa: E402  (conftest makes it importable)
from bert_reference import transformers
from helpers import ATOL, assert_error_ratio, max_diff
from minipt.errors import ConfigError, InputError, KeyMismatchError, MiniptError
from minipt.checkpoint import Checkpoint
from minipt.models.clip import (CLIP_MEAN, CLIP_STD, CLIPConfig, CLIPModel, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel,
                                contrastive_loss, end_of_text, example_inputs, openai_config, tiny_config, zero_shot)
from minipt.nn.backend import use_backend
from minipt import reference, transfer

SEEN = dict(attn_implementation="eager")
RTOL = 1e-4  # layer_diffs' default


def layer_diffs(model, folder, inputs):
    return reference.layer_diffs(model.eval(), folder, inputs, rtol=RTOL)  # through the registry's declaration


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved by noise, so that LayerNorms and biases mapped to the wrong place change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name != "logit_scale":
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def reference_clip(tmp_path, *, text, vision, projection_dim=6, seed=0):
    """transformers' CLIPModel of these sizes with random weights, saved under tmp_path: (model, folder)."""
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim, **SEEN)
    model = randomise(transformers.CLIPModel(config), seed).eval()
    model.save_pretrained(tmp_path)
    return model, tmp_path


def captions(vocab: int, eos: int, lengths: list[int], length: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, length) of captions of ``lengths`` tokens ending in ``eos``, padded with 1 after; their mask.
    The other ids stay below ``vocab - 2`` so that the end-of-text token is also the highest id (OpenAI's rule)."""
    ids = torch.ones(len(lengths), length, dtype=torch.long)
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, : n - 1] = torch.randint(2, vocab - 2, (n - 1,), generator=generator)
        ids[row, n - 1] = eos
        mask[row, :n] = 1
    return ids, mask


TEXT = dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=10,
            bos_token_id=38, eos_token_id=39, pad_token_id=1)
VISION = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=12, patch_size=4)


def tiny_inputs(seed=0, vocab=40, eos=39, image_size=12):
    generator = torch.Generator().manual_seed(seed)
    ids, mask = captions(vocab, eos, [4, 7, 2], 7, generator)
    return ids, mask, torch.randn(2, 3, image_size, image_size, generator=generator)


def assert_same_outputs(ours, theirs, reference, ids, mask, pixels):
    """Every value CLIPOutput holds, against transformers' on the same inputs (its towers run on their own for the pooled outputs)."""
    for name in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        assert max_diff(getattr(ours, name), getattr(theirs, name)) <= ATOL, name
    text = reference.text_model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    image = reference.vision_model(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    for mine, official in ((ours.text_model_output, text), (ours.vision_model_output, image)):
        for name in ("last_hidden_state", "pooler_output"):
            assert max_diff(getattr(mine, name), getattr(official, name)) <= ATOL, name
        assert len(mine.hidden_states) == len(official.hidden_states) and max_diff(mine.hidden_states, official.hidden_states) <= ATOL
        assert len(mine.attentions) == len(official.attentions) and max_diff(mine.attentions, official.attentions) <= ATOL


# -- parity on random configs ---------------------------------------------------------------
@st.composite
def clip_sizes(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    text = dict(vocab_size=draw(st.integers(20, 60)), hidden_size=heads * draw(st.sampled_from([4, 8])), num_attention_heads=heads,
                intermediate_size=draw(st.integers(4, 24)), num_hidden_layers=draw(st.integers(1, 3)), max_position_embeddings=draw(st.integers(6, 12)),
                hidden_act=draw(st.sampled_from(["quick_gelu", "gelu"])), pad_token_id=1)
    legacy = draw(st.booleans())  # eos_token_id 2: pool at the highest id (old configs); else at the first eos_token_id
    text.update(eos_token_id=2 if legacy else text["vocab_size"] - 1, bos_token_id=text["vocab_size"] - 2)
    vision_heads = draw(st.sampled_from([1, 2]))
    patch = draw(st.sampled_from([2, 4]))
    vision = dict(hidden_size=vision_heads * draw(st.sampled_from([4, 8])), num_attention_heads=vision_heads, intermediate_size=draw(st.integers(4, 16)),
                  num_hidden_layers=draw(st.integers(1, 3)), patch_size=patch, image_size=patch * draw(st.integers(1, 3)),
                  hidden_act=draw(st.sampled_from(["quick_gelu", "gelu"])))
    lengths = draw(st.lists(st.integers(1, text["max_position_embeddings"]), min_size=1, max_size=3))
    return text, vision, lengths, draw(st.integers(1, 3))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=clip_sizes(), seed=st.integers(0, 2**16))
def test_parity_with_transformers_and_strict_round_trips(tmp_path_factory, sizes, seed):
    text, vision, lengths, images = sizes
    folder = tmp_path_factory.mktemp("clip")
    reference, _ = reference_clip(folder / "hf", text=text, vision=vision, projection_dim=5, seed=seed)
    model = CLIPModel.from_pretrained(folder / "hf")
    generator = torch.Generator().manual_seed(seed)
    ids, mask = captions(text["vocab_size"], text["vocab_size"] - 1, lengths, max(lengths), generator)  # the eos token is the highest id too
    pixels = torch.randn(images, 3, vision["image_size"], vision["image_size"], generator=generator)
    with torch.no_grad():
        ours = model(ids, pixels, mask, output_hidden_states=True, output_attentions=True)
        theirs = reference(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        assert_same_outputs(ours, theirs, reference, ids, mask, pixels)
        assert max_diff(model.get_text_features(ids, mask), reference.get_text_features(input_ids=ids, attention_mask=mask).pooler_output) <= ATOL
        assert max_diff(model.get_image_features(pixels), reference.get_image_features(pixel_values=pixels).pooler_output) <= ATOL
    # minipt's save, read by transformers strictly, computes what transformers computed on its own file (the same kernels)
    model.save_pretrained(folder / "minipt")
    again, info = transformers.CLIPModel.from_pretrained(folder / "minipt", output_loading_info=True, **SEEN)
    assert not any(info.values()), info
    with torch.no_grad():
        assert max_diff(again.eval()(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits_per_image, theirs.logits_per_image) <= ATOL
    assert load_file(folder / "minipt" / "model.safetensors").keys() == {k for k in reference.state_dict() if not k.endswith("position_ids")}


def test_the_two_pooling_rules():
    ids = torch.tensor([[5, 9, 7, 9], [3, 2, 8, 1]])
    assert end_of_text(ids, 9).tolist() == [1, 0]  # the first eos; none in the second row: position 0, as transformers' argmax gives
    assert end_of_text(ids, 2).tolist() == [1, 2]  # legacy configs: the highest id


def test_legacy_and_new_eos_pool_where_transformers_does(tmp_path):
    """Captions whose end-of-text token is not the highest id: the two rules pool at different tokens, each as transformers does."""
    generator = torch.Generator().manual_seed(3)
    ids, mask = captions(40, 20, [5, 3], 6, generator)
    ids[:, 0] = 38  # a higher id than eos 20 in front
    for eos in (2, 20):
        reference, _ = reference_clip(tmp_path / str(eos), text={**TEXT, "eos_token_id": eos}, vision=VISION)
        model = CLIPTextModel.from_pretrained(tmp_path / str(eos))
        with torch.no_grad():
            assert max_diff(model(ids, mask).pooler_output, reference.text_model(input_ids=ids, attention_mask=mask).pooler_output) <= ATOL


def test_towers_load_from_a_full_checkpoint_and_their_own(tmp_path):
    reference, folder = reference_clip(tmp_path / "full", text=TEXT, vision=VISION)
    ids, mask, pixels = tiny_inputs()
    reference.text_model.save_pretrained(tmp_path / "text")  # a tower's own file: its keys without the text_model. prefix
    reference.vision_model.save_pretrained(tmp_path / "vision")
    with torch.no_grad():
        text_expected = reference.text_model(input_ids=ids, attention_mask=mask).pooler_output
        image_expected = reference.vision_model(pixel_values=pixels).pooler_output
        for source in (folder, tmp_path / "text"):
            assert max_diff(CLIPTextModel.from_pretrained(source)(ids, mask).pooler_output, text_expected) <= ATOL
        for source in (folder, tmp_path / "vision"):
            assert max_diff(CLIPVisionModel.from_pretrained(source)(pixels).pooler_output, image_expected) <= ATOL
    for cls, official in ((CLIPTextModel, transformers.CLIPTextModel), (CLIPVisionModel, transformers.CLIPVisionModel)):
        cls.from_pretrained(folder).save_pretrained(tmp_path / cls.__name__)
        _, info = official.from_pretrained(tmp_path / cls.__name__, output_loading_info=True, **SEEN)
        assert not any(info.values()), info


# -- OpenAI's layout ---------------------------------------------------------------------------
def to_openai(state: dict) -> dict:
    """transformers' CLIPModel state dict under OpenAI's names (the layout of OpenAI's and open_clip's files)."""
    layer = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    out = {
        "visual.conv1.weight": state["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": state["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": state["vision_model.embeddings.position_embedding.weight"],
        "visual.proj": state["visual_projection.weight"].t(),
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "text_projection": state["text_projection.weight"].t(),
        "logit_scale": state["logit_scale"],
    }
    for p in ("weight", "bias"):
        out[f"visual.ln_pre.{p}"] = state[f"vision_model.pre_layrnorm.{p}"]
        out[f"visual.ln_post.{p}"] = state[f"vision_model.post_layernorm.{p}"]
        out[f"ln_final.{p}"] = state[f"text_model.final_layer_norm.{p}"]
    for tower, theirs in (("vision_model", "visual.transformer"), ("text_model", "transformer")):
        layers = {key.split(".")[3] for key in state if key.startswith(f"{tower}.encoder.layers.")}
        for i in sorted(layers):
            hf = f"{tower}.encoder.layers.{i}"
            for p in ("weight", "bias"):
                out[f"{theirs}.resblocks.{i}.attn.in_proj_{p}"] = torch.cat([state[f"{hf}.self_attn.{x}_proj.{p}"] for x in "qkv"])
                for mine, name in layer.items():
                    out[f"{theirs}.resblocks.{i}.{name}.{p}"] = state[f"{hf}.{mine}.{p}"]
    return {key: value.contiguous() for key, value in out.items()}


def test_openai_layout_loads_and_saves_back(tmp_path):
    """A file of OpenAI's names without a config: the architecture read off its tensors (heads 64 wide, pooling at the highest id)."""
    text = {**TEXT, "hidden_size": 128, "num_attention_heads": 2, "eos_token_id": 2}
    vision = {**VISION, "hidden_size": 64, "num_attention_heads": 1}
    reference, _ = reference_clip(tmp_path / "hf", text=text, vision=vision)
    state = to_openai({k: v for k, v in reference.state_dict().items() if not k.endswith("position_ids")})
    (tmp_path / "openai").mkdir()
    torch.save({**state, "input_resolution": torch.tensor(12), "context_length": torch.tensor(10)}, tmp_path / "openai" / "ViT-tiny.pt")
    model = CLIPModel.from_pretrained(tmp_path / "openai")
    config = model.config
    assert config.weights_format == "openai" and config.text_config.num_attention_heads == 2 and config.vision_config.num_attention_heads == 1
    assert (config.vision_config.image_size, config.vision_config.patch_size, config.text_config.max_position_embeddings) == (12, 4, 10)
    ids, mask, pixels = tiny_inputs()
    with torch.no_grad():
        ours = model(ids, pixels, mask, output_hidden_states=True, output_attentions=True)
        assert_same_outputs(ours, reference(input_ids=ids, pixel_values=pixels, attention_mask=mask), reference, ids, mask, pixels)
    saved = load_file(model.save_pretrained(tmp_path / "back") / "model.safetensors")
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)
    assert type(CLIPModel.from_pretrained(tmp_path / "back").config) is CLIPConfig


def open_clip_model(seed=0, vocab_size=40, context_length=10, mlp_ratios=(2.0, 1.5), quick_gelu=True, width=64, head_width=64, layers=2):
    """open_clip's own CLIP (ViT image tower, QuickGELU, heads 64 wide as OpenAI's) with every weight moved by noise."""
    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is in the test extra; without it there is no open_clip to compare with")
    torch.manual_seed(seed)
    vision = open_clip.model.CLIPVisionCfg(layers=layers, width=width, head_width=head_width, mlp_ratio=mlp_ratios[0], patch_size=4, image_size=12)
    text = open_clip.model.CLIPTextCfg(context_length=context_length, vocab_size=vocab_size, width=128, heads=2, layers=layers, mlp_ratio=mlp_ratios[1])
    return randomise(open_clip.model.CLIP(6, vision, text, quick_gelu=quick_gelu), seed).eval()


def block_outputs(model, call) -> list[torch.Tensor]:
    """The output of every residual block of open_clip's two transformers (image tower first), batch first."""
    blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    seen = []
    hooks = [block.register_forward_hook(lambda module, args, out: seen.append(out)) for block in blocks]
    try:
        call()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_parity_with_open_clips_own_model_and_a_strict_round_trip(tmp_path):
    """OpenAI's layout as open_clip writes it, read without a config: every block's output and both towers' features against
    open_clip's CLIP (its nn.MultiheadAttention kernels differ from minipt's, so within twice open_clip's own float32 error
    against its float64 run: tests/helpers.assert_error_ratio), and minipt's save loaded by open_clip strictly."""
    reference = open_clip_model()
    (tmp_path / "open_clip").mkdir()
    torch.save(reference.state_dict(), tmp_path / "open_clip" / "ViT-tiny.pt")
    with pytest.warns(UserWarning, match="QuickGELU assumed.*hidden_act='gelu'"):  # open_clip's file may be either
        model = CLIPModel.from_pretrained(tmp_path / "open_clip")
    assert model.config.weights_format == "openai" and model.config.text_config.num_attention_heads == 2
    ids = torch.zeros(3, 10, dtype=torch.long)  # open_clip's tokenizer pads with 0 after <|endoftext|>, the highest id
    for row, n in enumerate((4, 10, 2)):
        ids[row, : n - 1] = torch.randint(1, 38, (n - 1,), generator=torch.Generator().manual_seed(row))
        ids[row, n - 1] = 39
    pixels = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    double = copy.deepcopy(reference).double()
    with torch.no_grad():
        ours = model(ids, pixels, output_hidden_states=True)
        exact = block_outputs(double, lambda: double(pixels.double(), ids))
        theirs = block_outputs(reference, lambda: reference(pixels, ids))
        mine = [*ours.vision_model_output.hidden_states[1:], *ours.text_model_output.hidden_states[1:]]
        pairs = list(zip(mine, theirs, exact))
        pairs += [(model.get_image_features(pixels), reference.encode_image(pixels), double.encode_image(pixels.double())),
                  (model.get_text_features(ids), reference.encode_text(ids), double.encode_text(ids))]
        image, text, scale = reference(pixels, ids)
        pairs.append((ours.logits_per_image, scale * image @ text.t(), None))
    assert len(pairs) == 2 + 2 + 2 + 1
    for i, (a, b, truth) in enumerate(pairs):
        assert max_diff(a, b) <= ATOL, i  # also checks the shapes
        if truth is not None:
            assert_error_ratio(a, b, truth, what=f"pair {i}")
    # minipt's save of the same model is OpenAI's layout again: open_clip loads it strictly and computes the same
    again = open_clip_model(seed=1)
    again.load_state_dict(load_file(model.save_pretrained(tmp_path / "back") / "model.safetensors"), strict=True)
    with torch.no_grad():
        assert max_diff(again.encode_text(ids), reference.encode_text(ids)) == 0
        assert max_diff(again.encode_image(pixels), reference.encode_image(pixels)) == 0


@pytest.mark.parametrize("quick_gelu, width, head_width", [(False, 64, 64), (True, 1280, 80)], ids=["laion-gelu", "vit-h-heads"])
def test_open_clips_gelu_towers_and_wide_heads(tmp_path, quick_gelu, width, head_width):
    """What open_clip's files do not store: the activation (its LAION-trained models use the exact GELU, passed as
    hidden_act='gelu') and the heads of its widest image towers (ViT-H/14: 1280 wide, 16 heads of 80)."""
    reference = open_clip_model(quick_gelu=quick_gelu, width=width, head_width=head_width, layers=1)
    torch.save(reference.state_dict(), tmp_path / "open_clip.pt")
    act = "quick_gelu" if quick_gelu else "gelu"
    model = CLIPModel.from_pretrained(tmp_path / "open_clip.pt", hidden_act=act)
    assert model.config.vision_config.num_attention_heads == width // head_width
    assert model.config.text_config.hidden_act == model.config.vision_config.hidden_act == act
    ids = torch.tensor([[5, 7, 39] + [0] * 7, [3, 39] + [0] * 8])  # open_clip's context: 10 ids, 39 the end of text
    pixels = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for ours, theirs in ((model.get_image_features(pixels), reference.encode_image(pixels)),
                             (model.get_text_features(ids), reference.encode_text(ids))):
            assert max_diff(ours, theirs) <= 1e-4 * max(1.0, theirs.abs().max().item())
    if not quick_gelu:
        with pytest.raises(ConfigError, match="hidden_act is for OpenAI-layout files"):
            CLIPModel.from_pretrained(reference_clip(tmp_path / "hf", text=TEXT, vision=VISION)[1], hidden_act="gelu")


def test_imagenet_templates_are_open_clips():
    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is in the test extra")
    from minipt.models.clip import IMAGENET_TEMPLATES

    assert [t.format("cat") for t in IMAGENET_TEMPLATES] == [template("cat") for template in open_clip.zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES]


# -- zero-shot and preprocessing ---------------------------------------------------------------
def fake_tokenizer(vocab=40, bos=38, eos=39):
    """Captions -> ids of their last 8 letters (below bos), between bos and eos, right-padded with 1: no real vocabulary needed."""
    def tokenize(texts):
        rows = [[bos, *[2 + ord(c) % (bos - 2) for c in text[-8:]], eos] for text in texts]
        length = max(map(len, rows))
        ids = torch.tensor([row + [1] * (length - len(row)) for row in rows])
        return {"input_ids": ids, "attention_mask": torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in rows])}
    return tokenize


def test_zero_shot_is_transformers_similarity_with_prompt_ensembling(tmp_path):
    reference, folder = reference_clip(tmp_path, text=TEXT, vision=VISION)
    model = CLIPModel.from_pretrained(folder)
    tokenize, labels, templates = fake_tokenizer(), ["cat", "dog", "boat"], ("a photo of a {}.", "art of {}")
    pixels = tiny_inputs()[2]
    with torch.no_grad():
        one = zero_shot(pixels, labels, model, tokenize)
        batch = tokenize([f"a photo of a {label}." for label in labels])
        torch.testing.assert_close(one, reference(pixel_values=pixels, **batch).logits_per_image.softmax(-1), rtol=0, atol=ATOL)
        unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
        per_template = [unit(reference.get_text_features(**tokenize([t.format(label) for label in labels])).pooler_output) for t in templates]
        label_embeds = unit(torch.stack(per_template).mean(0))
        image_embeds = unit(reference.get_image_features(pixel_values=pixels).pooler_output)
        expected = (reference.logit_scale.exp() * image_embeds @ label_embeds.t()).softmax(-1)
        ensembled = zero_shot(pixels, labels, model, tokenize, templates)
    torch.testing.assert_close(ensembled, expected, rtol=0, atol=ATOL)
    assert ensembled.shape == (2, 3) and not torch.allclose(ensembled, one)
    with pytest.raises(InputError, match="templates must be"):
        zero_shot(pixels, labels, model, tokenize, templates=("no placeholder",))


def test_preprocess_is_clips_image_processor(tmp_path):
    from PIL import Image

    image = Image.fromarray(torch.randint(0, 256, (30, 45, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy())
    path = tmp_path / "photo.png"
    image.save(path)
    model = CLIPVisionModel(CLIPVisionConfig(image_size=24, patch_size=8))
    ours = model.preprocess([path])
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    theirs = processor(images=[image], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 24, 24)
    assert torch.allclose(CLIP_MEAN, torch.tensor(processor.image_mean)) and torch.allclose(CLIP_STD, torch.tensor(processor.image_std))
    # the same pixels up to one level of 255 where the two bicubic resizes round apart (bilinear, another crop or wrong statistics move many levels)
    assert max_diff(ours, theirs) <= 1.01 / (255 * CLIP_STD.min().item())


# -- the per-layer diff and the transfer stages ------------------------------------------------------
def test_layer_diffs_clean_and_a_planted_change_found(tmp_path):
    _, folder = reference_clip(tmp_path, text=TEXT, vision=VISION)
    model = CLIPModel.from_pretrained(folder)
    ids, mask, pixels = tiny_inputs()
    inputs = {"input_ids": ids, "pixel_values": pixels, "attention_mask": mask}
    report = layer_diffs(model, folder, inputs)
    names = [row.name for row in report.rows]
    assert report.first_divergence is None, str(report)
    assert names[0] == "text_model.embeddings.out" and names[-1] == "similarity.out" and "vision_model.pre_norm.out" in names
    assert names.index("text_model.layers.1.attn.probs") < names.index("text_model.final_norm.out") < names.index("vision_model.embeddings.out")
    planted = copy.deepcopy(model)
    planted.vision_model.layers[1].ffn_norm.eps = 1e-1
    assert layer_diffs(planted, folder, inputs).first_divergence.name == "vision_model.layers.1.ffn_norm.out"
    text_only = layer_diffs(CLIPTextModel.from_pretrained(folder), folder, {"input_ids": ids, "attention_mask": mask})
    assert text_only.first_divergence is None and text_only.rows[-1].name == "final_norm.out"


def test_transfer_stages_follow_both_towers():
    model = CLIPModel(CLIPConfig(text_config=dict(TEXT), vision_config=dict(VISION), projection_dim=6))
    assert transfer.stages(model) == ["text_model.embeddings", "text_model.layers.0", "text_model.layers.1", "text_model.final_norm",
                                      "vision_model.embeddings", "vision_model.layers.0", "vision_model.layers.1", "vision_model.post_norm", "projections"]


# -- bad input ------------------------------------------------------------------------------------
def test_bad_inputs_are_named(tmp_path):
    model = CLIPModel(CLIPConfig(text_config=dict(TEXT), vision_config=dict(VISION), projection_dim=6)).eval()
    ids, mask, pixels = tiny_inputs()
    with pytest.raises(InputError, match=r"position table is for 12x12 images \(image_size\), got 16x16"):
        model(ids, torch.randn(1, 3, 16, 16), mask)
    long = torch.ones(1, 11, dtype=torch.long)
    with pytest.raises(InputError, match=r"a caption of 11 tokens is longer than CLIP's context of 10 \(max_position_embeddings\)"):
        model(long)
    with pytest.raises(InputError, match="needs input_ids, pixel_values or both"):
        model()
    with pytest.raises(ConfigError, match=r"eos_token_id = 40: expected a token id below vocab_size 40"):
        CLIPConfig(text_config={**TEXT, "eos_token_id": 40})


def test_older_configs_with_config_dicts(tmp_path):
    """transformers' older CLIP configs hold text_config_dict / vision_config_dict, which win over text_config / vision_config."""
    _, folder = reference_clip(tmp_path, text=TEXT, vision=VISION)
    written = json.loads((folder / "config.json").read_text())
    written["text_config_dict"], written["text_config"] = written["text_config"], {"hidden_size": 999}
    written["vision_config_dict"] = written.pop("vision_config")
    (folder / "config.json").write_text(json.dumps(written))
    model = CLIPModel.from_pretrained(folder)
    assert model.config.text_config.hidden_size == 16 and model.config.vision_config.image_size == 12


def test_a_checkpoint_missing_a_tower(tmp_path):
    from safetensors.torch import save_file

    _, folder = reference_clip(tmp_path, text=TEXT, vision=VISION)
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("vision_model.")}, folder / "model.safetensors")
    with pytest.raises(KeyMismatchError, match=r"holds no vision_model tensors: a CLIP checkpoint needs both towers \(a file of one tower loads with CLIPVisionModel\)"):
        CLIPModel.from_pretrained(folder)
    assert isinstance(CLIPTextModel.from_pretrained(folder), CLIPTextModel)  # the tower it holds still loads


def test_a_vision_tower_whose_image_size_does_not_fit_its_positions(tmp_path):
    """A tower loaded on its own checks its config against its tensors as CLIPModel checks each tower: an image size
    that makes another number of positions is refused before the model is built (the loader fuzz found 10^12 px
    failing with a TypeError inside torch.zeros)."""
    _, folder = reference_clip(tmp_path, text=TEXT, vision=VISION)
    tower = CLIPVisionModel.from_pretrained(folder)
    tower.save_pretrained(tmp_path / "tower")
    written = json.loads((tmp_path / "tower" / "config.json").read_text())
    for image_size in (24, 10**12):
        (tmp_path / "tower" / "config.json").write_text(json.dumps(written | {"image_size": image_size}))
        with pytest.raises(ConfigError, match=rf"the config of CLIPVisionModel does not match .*: image_size = {image_size} and patch_size = 4 make "
                                              r"\d+ positions, but embeddings.position_embedding.weight has shape \(10, 8\)"):
            CLIPVisionModel.from_pretrained(tmp_path / "tower")


def test_a_torchvision_vit_given_to_clip(tmp_path):
    vit = torchvision_vit.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3)
    (tmp_path / "vit").mkdir()
    torch.save(vit.state_dict(), tmp_path / "vit" / "vit.pth")
    with pytest.raises(MiniptError, match=r"has no config.json, which CLIPModel needs; it looks like a torchvision-format ViT .*ViTForImageClassification"):
        CLIPModel.from_pretrained(tmp_path / "vit")
    with Checkpoint(tmp_path / "vit") as checkpoint, pytest.raises(KeyMismatchError, match=r"is not an OpenAI-format CLIP: it has no visual.conv1.weight"):
        openai_config(checkpoint)


def test_an_openai_file_whose_architecture_tensors_have_the_wrong_rank(tmp_path):
    """The architecture is read off these tensors' shapes, so a damaged shape is named before it is read (found by tests/test_fuzz.py)."""
    text = {**TEXT, "hidden_size": 64, "num_attention_heads": 1, "eos_token_id": 2}
    reference, _ = reference_clip(tmp_path / "hf", text=text, vision={**VISION, "hidden_size": 64, "num_attention_heads": 1})
    state = to_openai({k: v for k, v in reference.state_dict().items() if not k.endswith("position_ids")})
    (tmp_path / "openai").mkdir()
    torch.save({**state, "token_embedding.weight": state["token_embedding.weight"].flatten(), "text_projection": torch.zeros(())},
               tmp_path / "openai" / "ViT-tiny.pt")
    with pytest.raises(KeyMismatchError, match=r"is not an OpenAI-format CLIP: token_embedding.weight has shape \(2560,\), not 2 dimensions; "
                                               r"text_projection has shape \(\), not 2 dimensions"):
        CLIPModel.from_pretrained(tmp_path / "openai")


# -- the protocol (the registry's shared tests check it too) -------------------------------------------------
@pytest.mark.parametrize("cls", [CLIPModel, CLIPTextModel, CLIPVisionModel], ids=lambda c: c.__name__)
def test_save_reload_and_every_backend(cls, tmp_path):
    model = cls(tiny_config()).eval()
    args, kwargs = example_inputs(cls)
    reloaded = cls.from_pretrained(model.save_pretrained(tmp_path))
    assert reloaded.config == model.config and type(model.config).from_dict(model.config.to_dict()) == model.config
    with torch.no_grad():
        expected = model(*args, **kwargs)
        assert max_diff(list(reloaded(*args, **kwargs).to_tuple()[:2]), list(expected.to_tuple()[:2])) == 0
        for backend in ("math", "fused"):
            with use_backend(backend, module=model):
                assert max_diff(list(model(*args, **kwargs).to_tuple()[:2]), list(expected.to_tuple()[:2])) <= ATOL, backend


# -- the contrastive loss ------------------------------------------------------------------------
def test_return_loss_is_transformers_loss_with_the_same_gradients(tmp_path):
    reference, folder = reference_clip(tmp_path, text=TEXT, vision=VISION)
    model = CLIPModel.from_pretrained(folder)
    ids, mask, pixels = tiny_inputs()
    ids, mask = ids[:2], mask[:2]  # two pairs: caption i describes image i
    ours = model(ids, pixels, mask, return_loss=True)
    theirs = reference(input_ids=ids, pixel_values=pixels, attention_mask=mask, return_loss=True)
    assert ours.loss.shape == () and abs(ours.loss.item() - theirs.loss.item()) <= ATOL
    assert ours[0] is ours.loss  # first, as in transformers
    torch.testing.assert_close(contrastive_loss(ours.logits_per_image), ours.loss, rtol=0, atol=0)
    torch.testing.assert_close(contrastive_loss(ours.logits_per_text), ours.loss, rtol=1e-6, atol=1e-7)  # symmetric
    ours.loss.backward()
    theirs.loss.backward()
    for mine, official in ((model.similarity.logit_scale, reference.logit_scale), (model.text_projection.weight, reference.text_projection.weight),
                           (model.vision_model.embeddings.patch.weight, reference.vision_model.embeddings.patch_embedding.weight),
                           (model.text_model.embeddings.token.weight, reference.text_model.embeddings.token_embedding.weight)):
        assert max_diff(mine.grad, official.grad) <= ATOL
    assert model(ids, pixels, mask).loss is None


def test_contrastive_loss_by_hand_and_its_errors():
    logits = torch.tensor([[4.0, 1.0], [0.5, 3.0]])
    by_image = -(logits.log_softmax(dim=1).diagonal()).mean()  # each image over the captions
    by_caption = -(logits.log_softmax(dim=0).diagonal()).mean()  # each caption over the images
    torch.testing.assert_close(contrastive_loss(logits), (by_image + by_caption) / 2)
    with pytest.raises(InputError, match=r"as many captions as images, logits \(B, B\); got \(2, 3\)"):
        contrastive_loss(torch.zeros(2, 3))
    model = CLIPModel(CLIPConfig(text_config=dict(TEXT), vision_config=dict(VISION), projection_dim=6)).eval()
    ids, mask, pixels = tiny_inputs()
    with pytest.raises(InputError, match="return_loss=True needs as many captions as images, got 3 captions and 2 images"):
        model(ids, pixels, mask, return_loss=True)
    with pytest.raises(InputError, match="return_loss=True needs both input_ids and pixel_values"):
        model(ids, attention_mask=mask, return_loss=True)


# -- position interpolation --------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(20, 16), (8, 8), (12, 12)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_interpolate_pos_encoding_is_transformers(tmp_path, size):
    """Images of another size (a 5x4 grid, a 2x2 grid) and of the table's own (3x3), the table resized as transformers resizes it."""
    reference, folder = reference_clip(tmp_path, text=TEXT, vision=VISION)
    model, tower = CLIPModel.from_pretrained(folder), CLIPVisionModel.from_pretrained(folder)
    ids, mask, _ = tiny_inputs()
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model(ids, pixels, mask, interpolate_pos_encoding=True)
        theirs = reference(input_ids=ids, pixel_values=pixels, attention_mask=mask, interpolate_pos_encoding=True)
        for name in ("logits_per_image", "image_embeds"):
            assert max_diff(getattr(ours, name), getattr(theirs, name)) <= ATOL, name
        assert ours.vision_model_output.last_hidden_state.shape == (2, 1 + size[0] * size[1] // 16, 8)
        official = reference.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)
        mine = tower(pixels, interpolate_pos_encoding=True)
        assert max_diff(mine.last_hidden_state, official.last_hidden_state) <= ATOL and max_diff(mine.pooler_output, official.pooler_output) <= ATOL
        features = reference.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output
        assert max_diff(model.get_image_features(pixels, interpolate_pos_encoding=True), features) <= ATOL
        if size == (12, 12):  # the table's own grid: the same as without interpolation
            assert max_diff(mine.pooler_output, tower(pixels).pooler_output) == 0


def test_interpolation_needs_whole_patches():
    model = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    with pytest.raises(InputError, match=r"cuts images into 4x4 patches \(patch_size\); an image of 14x12 pixels is not a whole number of them"):
        model(torch.randn(1, 3, 14, 12), interpolate_pos_encoding=True)
    with pytest.raises(InputError, match="or pass interpolate_pos_encoding=True"):
        model(torch.randn(1, 3, 16, 16))


# -- the zero-shot command -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_tokenizer_folder():
    from minipt import hub
    from minipt.errors import CheckpointNotFoundError

    try:
        return hub.resolve("clip-tokenizer")
    except CheckpointNotFoundError as err:
        pytest.skip(f"CLIP's vocabulary is not built here ({err})")


def real_vocabulary_clip(folder):
    """A random transformers CLIP of CLIP's real vocabulary (49408 ids, <|endoftext|> = 49407 pooled), saved in ``folder``."""
    text = {**TEXT, "vocab_size": 49408, "bos_token_id": 49406, "eos_token_id": 49407, "max_position_embeddings": 16}
    return reference_clip(folder, text=text, vision=VISION)


def saved_images(folder, count=2):
    from PIL import Image

    generator = torch.Generator().manual_seed(7)
    paths = []
    for i in range(count):
        pixels = torch.randint(0, 256, (30 + 5 * i, 40, 3), generator=generator, dtype=torch.uint8).numpy()
        paths.append(folder / f"image{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def printed_probabilities(out: str) -> dict[str, dict[str, float]]:
    """``minipt zero-shot``'s output: an image path, then "  12.34%  label" lines, the most likely label first."""
    table, current = {}, None
    for line in out.splitlines():
        if line.startswith("  "):
            percent, label = line.strip().split("%  ", 1)
            table[current][label] = float(percent) / 100
        else:
            current = line
            table[current] = {}
    return table


def test_zero_shot_command_matches_transformers(tmp_path, clip_tokenizer_folder, capsys, monkeypatch):
    import shutil

    from minipt import cli

    reference, folder = real_vocabulary_clip(tmp_path / "clip")
    images = saved_images(tmp_path)
    labels, templates = ["a cat", "a dog", "a red boat"], ["a photo of {}.", "a drawing of {}, in pencil"]
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(clip_tokenizer_folder))
    # minipt's preprocessing (test_preprocess_is_clips_image_processor checks it): CLIPImageProcessor's bicubic resize
    # rounds some pixels one level apart, which moves these random weights' probabilities by a few 0.01%
    pixels = CLIPModel.from_pretrained(folder).preprocess(images)
    with torch.no_grad():
        image_embeds = unit_rows(reference.get_image_features(pixel_values=pixels).pooler_output)
        label_embeds = [unit_rows(reference.get_text_features(**tokenizer([t.format(label) for label in labels], padding=True, return_tensors="pt")).pooler_output)
                        for t in templates]
        expected = (reference.logit_scale.exp() * image_embeds @ unit_rows(torch.stack(label_embeds).mean(0)).t()).softmax(-1)
    arguments = ["zero-shot", *map(str, images), "--labels", " a cat, a dog ,a red boat", "--model", str(folder), "--templates", *templates]

    def check(argv, how):
        assert cli.main(argv) == 0, how
        table = printed_probabilities(capsys.readouterr().out)
        assert list(table) == [str(path) for path in images]
        for row, path in zip(expected.tolist(), images):
            printed = table[str(path)]
            assert list(printed) == [label for _, label in sorted(zip(row, labels), key=lambda pair: -pair[0])], how  # most likely first
            assert all(abs(printed[label] - p) <= 0.00005 + 1e-9 for label, p in zip(labels, row)), (how, printed, row)  # printed to 0.01%

    check([*arguments, "--tokenizer", str(clip_tokenizer_folder)], "--tokenizer")
    check(arguments, "the catalogue's clip-tokenizer")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(clip_tokenizer_folder / name, folder / name)
    monkeypatch.setenv("MINIPT_WEIGHTS", str(tmp_path / "no weights"))  # no catalogue snapshot: the files beside the model are read
    check(arguments, "beside the model")


def unit_rows(x):
    return x / x.norm(dim=-1, keepdim=True)


def test_inspect_and_diff_commands_on_both_layouts(tmp_path, clip_tokenizer_folder, capsys):
    """minipt diff on captions (through CLIP's tokenizer) and the demo photo; minipt inspect reads either layout's names and counts FLOPs."""
    from minipt import cli

    reference, folder = real_vocabulary_clip(tmp_path / "clip")
    assert cli.main(["diff", str(folder), "--input", "a photo of a cat", "--input", "Café 🙂, naïve"]) == 0
    out = capsys.readouterr().out
    assert "against transformers CLIPModel" in out and "input_ids (2, " in out and "pixel_values (1, 3, 12, 12)" in out and "no divergence: all" in out
    from PIL import Image

    photos = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]  # files among the inputs are photos, not captions
    for name, colour in zip(photos, ("red", "blue")):
        Image.new("RGB", (20, 16), colour).save(name)
    assert cli.main(["diff", str(folder), "--input", photos[0], "--input", "a photo of a cat", "--input", photos[1]]) == 0
    out = capsys.readouterr().out
    assert "input_ids (1, " in out and "pixel_values (2, 3, 12, 12)" in out and "no divergence: all" in out
    assert cli.main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "CLIPModel from" in out and "FLOPs" in out and "-> text_model.layers.0.attn.q_proj.weight" in out
    wide, _ = reference_clip(tmp_path / "wide", text={**TEXT, "hidden_size": 64, "num_attention_heads": 1, "eos_token_id": 2},
                             vision={**VISION, "hidden_size": 64, "num_attention_heads": 1})  # OpenAI's files imply heads 64 wide
    (tmp_path / "openai").mkdir()
    torch.save(to_openai({k: v for k, v in wide.state_dict().items() if not k.endswith("position_ids")}), tmp_path / "openai" / "ViT-tiny.pt")
    assert cli.main(["inspect", str(tmp_path / "openai" / "ViT-tiny.pt")]) == 0
    out = capsys.readouterr().out
    assert "visual.transformer.resblocks.0.attn.in_proj_weight (192, 64) -> vision_model.layers.0.attn.k_proj.weight  [split 2/3 along dim 0]" in out


def test_diff_of_an_openai_file_against_open_clip(tmp_path, clip_tokenizer_folder, capsys, monkeypatch):
    """OpenAI's layout is compared with open_clip's CLIP built from the same file: clean as loaded, and a change planted
    in one image block is named where it is made."""
    from minipt import cli

    reference = open_clip_model(vocab_size=49408, context_length=16, mlp_ratios=(4.0, 4.0))  # open_clip's reader assumes 4 x width
    torch.save(reference.state_dict(), tmp_path / "ViT-tiny.pt")
    assert cli.main(["diff", str(tmp_path / "ViT-tiny.pt"), "--input", "a photo of a cat", "--input", "Café 🙂, naïve"]) == 0
    out = capsys.readouterr().out
    assert "minipt CLIPModel against open_clip CLIP" in out and "no divergence: all" in out
    model = CLIPModel.from_pretrained(tmp_path / "ViT-tiny.pt")
    batch = {"input_ids": torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]]), "pixel_values": torch.randn(2, 3, 12, 12)}
    report = layer_diffs(model, tmp_path / "ViT-tiny.pt", batch)
    names = [row.name for row in report.rows]
    assert report.first_divergence is None and names[-3:] == ["vision_model.post_norm.out", "visual_projection.out", "similarity.out"]
    assert len(names) == 2 * 6 + 1 + 1 + 1 + 2 * 6 + 1 + 1 + 1  # six points per block, final norm, projection; pre-norm; logits
    model.vision_model.layers[1].ffn_norm.eps = 0.1
    assert layer_diffs(model, tmp_path / "ViT-tiny.pt", batch).first_divergence.name == "vision_model.layers.1.ffn_norm.out"
    mlp = open_clip_model(mlp_ratios=(2.0, 1.5))
    torch.save(mlp.state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(ConfigError, match=r"open_clip cannot build .*narrow.pt \(it assumes feed-forward layers 4 times the width\)"):
        layer_diffs(CLIPModel.from_pretrained(tmp_path / "narrow.pt"), tmp_path / "narrow.pt", {"input_ids": torch.tensor([[5, 39]]), "pixel_values": batch["pixel_values"]})
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "open_clip" else find_spec(name, *args))
    with pytest.raises(MiniptError, match=r"comparing a CLIP in OpenAI's layout needs open_clip \(pip install open_clip_torch\)"):
        layer_diffs(model, tmp_path / "ViT-tiny.pt", batch)


def test_zero_shot_command_errors_are_one_line(tmp_path, clip_tokenizer_folder, capsys):
    from minipt import cli

    reference, folder = real_vocabulary_clip(tmp_path / "clip")
    reference.text_model.save_pretrained(tmp_path / "text")
    image = saved_images(tmp_path, 1)[0]
    (tmp_path / "bad.png").write_text("not an image")
    tokenizer = ["--tokenizer", str(clip_tokenizer_folder)]
    cases = {
        "missing labels": (["zero-shot", str(image), "--model", str(folder), *tokenizer], "--labels: give the labels to choose between"),
        "empty labels": (["zero-shot", str(image), "--labels", " , ", "--model", str(folder), *tokenizer], "--labels: give the labels"),
        "a text tower": (["zero-shot", str(image), "--labels", "a,b", "--model", str(tmp_path / "text"), *tokenizer],
                         "holds a CLIPTextModel checkpoint; zero-shot classification needs a CLIP model"),
        "no model": (["zero-shot", str(image), "--labels", "a,b", "--model", str(tmp_path / "nothing"), *tokenizer], "no such file or directory"),
        "bad image": (["zero-shot", str(tmp_path / "bad.png"), "--labels", "a,b", "--model", str(folder), *tokenizer], "cannot be decoded as an image"),
        "missing image": (["zero-shot", str(tmp_path / "gone.png"), "--labels", "a,b", "--model", str(folder), *tokenizer], "no such image file"),
        "bad template": (["zero-shot", str(image), "--labels", "a,b", "--model", str(folder), *tokenizer, "--templates", "no slot"], "holding '{}'"),
        "bad tokenizer": (["zero-shot", str(image), "--labels", "a,b", "--model", str(folder), "--tokenizer", str(tmp_path)], "has no tokenizer.json"),
    }
    for name, (argv, message) in cases.items():
        assert cli.main(argv) == 1, name
        err = capsys.readouterr().err
        assert err.startswith("minipt zero-shot: ") and message in err and "Traceback" not in err and err.count("\n") == 1, (name, err)


def test_a_tower_with_an_initializer_range_of_zero_builds():
    """A tower's own initializer_range of 0 was read as missing and looked up in a full CLIP's text_config, which a
    tower's config does not have (an AttributeError the loader fuzz found)."""
    from minipt.models.clip import CLIPTextConfig

    model = CLIPTextModel(CLIPTextConfig(**TEXT, initializer_range=0.0))
    projections = [p for name, p in model.named_parameters() if name.endswith("proj.weight")]  # N(0, 0): zeros
    assert len(projections) == 8 and all(float(p.abs().max()) == 0.0 for p in projections)


def test_a_caption_without_its_end_of_text_token_is_named():
    """The text tower pools at the end-of-text token; a caption without one (another tokenizer's ids) pooled at
    position 0, the start token, which sees only itself under the causal mask: every such caption gave the same
    features and zero-shot said 50/50 silently."""
    from minipt.models.clip import tiny_config

    model = CLIPTextModel(tiny_config().text_config).eval()
    ids = torch.tensor([[48, 5, 17, 49, 1], [48, 30, 2, 44, 9]])  # the second has no 49
    with pytest.raises(InputError, match=r"caption 1 holds no end-of-text token \(id 49\), where CLIP's text tower pools"):
        model(ids)


def test_photos_are_prepared_as_transformers_clip_processor_does():
    """Shorter side to the image size (bicubic, the longer side truncated as torchvision's Resize does), centre crop,
    CLIP's mean and std: within one grey level of CLIPImageProcessor (it rounded the longer side: 0.78 apart on chelsea)."""
    from PIL import Image
    from skimage import data

    from minipt.models.clip import clip_preprocess

    processor = transformers.CLIPImageProcessor()
    for photo in (data.chelsea(), data.coffee(), data.astronaut()):
        image = Image.fromarray(photo)
        expected = processor(images=image, return_tensors="pt")["pixel_values"]
        assert (clip_preprocess([image], 224) - expected).abs().max() <= 1 / 255 / 0.26 + 1e-6  # one level over CLIP's smallest std


def test_the_centre_crop_sits_where_each_layouts_reference_puts_it(tmp_path):
    """Where the resized image's margin is 3 mod 4, open_clip's preprocess (torchvision's CenterCrop) and transformers'
    CLIPImageProcessor cut squares one pixel apart; minipt cut transformers' for both layouts (2.46 apart in
    normalised pixels from open_clip's on a 640 x 427 photo)."""
    from PIL import Image

    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is in the test extra")
    image = Image.fromarray(torch.randint(0, 256, (30, 49, 3), generator=torch.Generator().manual_seed(3), dtype=torch.uint8).numpy())
    (tmp_path / "open_clip").mkdir()
    torch.save(open_clip_model().state_dict(), tmp_path / "open_clip" / "ViT-tiny.pt")
    with pytest.warns(UserWarning, match="QuickGELU assumed"):
        openai = CLIPModel.from_pretrained(tmp_path / "open_clip")  # 12 x 12 images: 30 x 49 resized to 12 x 19, margin 7
    theirs = open_clip.transform.image_transform(12, is_train=False)(image)
    assert max_diff(openai.preprocess([image])[0], theirs) <= 1e-5
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 12}, crop_size={"height": 12, "width": 12})
    hugging_face = CLIPVisionModel(CLIPVisionConfig(image_size=12, patch_size=4))
    expected = processor(images=[image], return_tensors="pt")["pixel_values"]
    assert max_diff(hugging_face.preprocess([image]), expected) <= 1.01 / (255 * CLIP_STD.min().item())
    assert max_diff(openai.preprocess([image]), expected) > 0.5  # a column apart


def test_zero_shot_command_runs_open_clips_gelu_weights(tmp_path, clip_tokenizer_folder, capsys):
    """open_clip's LAION-trained weights use GELU and their OpenAI-layout file does not say so: the command had no way to
    ask for it and printed QuickGELU's probabilities; --hidden-act gelu gives what open_clip computes."""
    from minipt import cli

    reference = open_clip_model(vocab_size=49408, context_length=16, quick_gelu=False)
    (tmp_path / "open_clip").mkdir()
    torch.save(reference.state_dict(), tmp_path / "open_clip" / "ViT-tiny.pt")
    images = saved_images(tmp_path)
    labels = ["a cat", "a dog", "a red boat"]
    from minipt.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(clip_tokenizer_folder)
    open_clip = pytest.importorskip("open_clip")
    from PIL import Image

    pixels = torch.stack([open_clip.transform.image_transform(12, is_train=False)(Image.open(p)) for p in images])
    ids = tokenizer([f"a photo of {label}." for label in labels], padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        image, text, scale = reference(pixels, ids)
        expected = (scale * image @ text.t()).softmax(-1)
    arguments = ["zero-shot", *map(str, images), "--labels", ",".join(labels), "--model", str(tmp_path / "open_clip"),
                 "--templates", "a photo of {}.", "--tokenizer", str(clip_tokenizer_folder)]
    with pytest.warns(UserWarning, match=r"--hidden-act gelu"):
        assert cli.main(arguments) == 0
    quick = printed_probabilities(capsys.readouterr().out)
    assert cli.main([*arguments, "--hidden-act", "gelu"]) == 0
    table = printed_probabilities(capsys.readouterr().out)
    for row, path in zip(expected.tolist(), images):
        assert all(abs(table[str(path)][label] - p) <= 0.00005 + 1e-9 for label, p in zip(labels, row)), (table, row)
    assert any(abs(quick[str(path)][label] - p) > 0.0002 for row, path in zip(expected.tolist(), images) for label, p in zip(labels, row))
