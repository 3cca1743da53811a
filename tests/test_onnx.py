"""ONNX export of every classifier (text and images), run by onnxruntime and compared with minipt's own outputs."""

import pytest
import torch

from minipt.errors import InputError
from minipt.onnx_export import export_onnx
from minipt import registry
from minipt.models.classifier import HasClassifier
from test_protocol import TINY

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'minipt[onnx]')")
pytest.importorskip("onnx", reason="onnx is not installed (pip install 'minipt[onnx]')")


def _close(onnx_out, minipt_out):
    """onnxruntime and torch run different kernels: bound the error by the outputs' magnitude."""
    reference = minipt_out.detach().numpy()
    error = abs(onnx_out - reference).max()
    assert error <= 1e-5 * max(abs(reference).max(), 1e-3), f"max error {error}, outputs up to {abs(reference).max()}"


CLASSIFIERS = [cls for family in registry.families() for cls in family.classes if issubclass(cls, HasClassifier)]
TEXT = [cls.__name__ for cls in CLASSIFIERS if len(registry.family_of(cls).reads.default_size(TINY[cls.__name__][0]()).split("x")) == 2]
IMAGES = [cls.__name__ for cls in CLASSIFIERS if cls.__name__ not in TEXT]


@pytest.mark.parametrize("name", TEXT)
def test_text_classifiers_with_padding_and_other_sizes(name, tmp_path):
    model = TINY[name][0]().eval()
    vocab = model.config.vocab_size
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "text.onnx", length=16)))
    assert not model.training  # the export leaves the model as it found it
    for batch, length in ((2, 16), (3, 9)):  # batch and length are dynamic
        ids = torch.randint(0, vocab, (batch, length))
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[1, length // 2 :] = 0
        (logits,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            _close(logits, model(ids, mask).logits)
    padded = torch.ones(1, 12, dtype=torch.long)
    padded[0, 6:] = 0
    ids = torch.randint(0, vocab, (1, 12))
    masked = session.run(None, {"input_ids": ids.numpy(), "attention_mask": padded.numpy()})[0]
    unmasked = session.run(None, {"input_ids": ids.numpy(), "attention_mask": torch.ones_like(padded).numpy()})[0]
    assert abs(masked - unmasked).max() > 1e-6  # the graph does mask


def test_both_kinds_are_found():
    assert "BertForSequenceClassification" in TEXT and {"ResNet", "EfficientNet"} <= set(IMAGES)


@pytest.mark.parametrize("name", IMAGES)
def test_image_classifiers(name, tmp_path):
    model = TINY[name][0]().eval()
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / f"{name}.onnx", image_size=32)))
    images = torch.randn(3, 3, 32, 32)
    (logits,) = session.run(None, {"x": images.numpy()})
    with torch.no_grad():
        out = model(images)  # a tensor (the CNNs, as torchvision's) or an output with .logits (ViT, as transformers')
        _close(logits, out if isinstance(out, torch.Tensor) else out.logits)


def test_other_models_are_named():
    with pytest.raises(InputError, match="not CharLM"):
        export_onnx(TINY["CharLM"][0](), "unused.onnx")


def test_the_model_itself_is_exported_and_left_in_its_mode(tmp_path):
    """A fuse() copy has no ONNX operators for its packed weights (torch's ConversionError deep in the exporter):
    refused by name. Exporting switched the caller's model to eval mode and left it there."""
    model = TINY["BertForSequenceClassification"][0]()
    with pytest.raises(InputError, match="export_onnx takes the model itself, not a fuse\\(\\) copy"):
        export_onnx(model.fuse(), tmp_path / "fused.onnx")
    assert not (tmp_path / "fused.onnx").exists()
    model.train()
    export_onnx(model, tmp_path / "bert.onnx")
    assert model.training and all(m.training for m in model.modules())


def test_clip_text_and_image_features(tmp_path):
    """CLIPModel as one graph of both towers: the projected features of captions (padded, other counts and lengths) and images."""
    from minipt.models.clip import CLIPModel, tiny_config

    model = CLIPModel(tiny_config()).eval()
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "clip.onnx", length=8)))
    assert [o.name for o in session.get_outputs()] == ["text_embeds", "image_embeds"]
    text = model.config.text_config
    for captions, length, images in ((2, 8, 3), (3, 12, 1)):  # caption and image counts, and the length, are dynamic
        ids = torch.randint(0, text.vocab_size - 1, (captions, length))
        ids[:, length // 2] = text.eos_token_id  # each caption ends halfway, then padding
        mask = torch.ones(captions, length, dtype=torch.long)
        mask[:, length // 2 + 1 :] = 0
        pixels = torch.randn(images, 3, 16, 16)
        text_embeds, image_embeds = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "pixel_values": pixels.numpy()})
        with torch.no_grad():
            _close(text_embeds, model.get_text_features(ids, mask))
            _close(image_embeds, model.get_image_features(pixels))


def test_an_example_of_one_token_still_exports_a_dynamic_length(tmp_path):
    """torch.export fixes a dimension it meets at 1: ALBERT exported at length=1 declared a dynamic length, and
    onnxruntime failed at any other ("broadcast ... 3 by 21"). The example is traced at 2 at least."""
    model = TINY["AlbertForSequenceClassification"][0]().eval()
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "albert.onnx", batch=1, length=1)))
    for batch, length in ((1, 1), (3, 7)):
        ids = torch.randint(0, model.config.vocab_size, (batch, length))
        mask = torch.ones(batch, length, dtype=torch.long)
        (logits,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            _close(logits, model(ids, mask).logits)


def test_arguments_and_examples_the_model_refuses_are_named(tmp_path):
    """Bad sizes reached randint's TypeError or torch.export's errors; the default image size was 224 whatever the
    model's; float64 and bfloat16 models wrote files onnxruntime could not load; the "fused" backend's minipt ops
    had no ONNX conversion."""
    from minipt.models.bert import BertConfig, BertForSequenceClassification
    from minipt.models.vit import ViTConfig, ViTForImageClassification

    bert = TINY["BertForSequenceClassification"][0]().eval()
    for name, value, message in (("batch", 0, "batch must be a positive integer, got 0"), ("length", -1, "length must be a positive integer"),
                                 ("batch", "2", "batch must be an integer, got str '2'"), ("image_size", 0, "image_size must be a positive integer or None")):
        with pytest.raises(InputError, match=message):
            export_onnx(bert, tmp_path / "bad.onnx", **{name: value})
    short = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                                     max_position_embeddings=8)).eval()
    with pytest.raises(InputError, match=r"export_onnx's example inputs \(input_ids \(2, 16\), .*length=.*: sequence length 16 exceeds the position table"):
        export_onnx(short, tmp_path / "short.onnx")
    export_onnx(short, tmp_path / "short.onnx", length=8)
    for dtype in (torch.float64, torch.bfloat16):
        with pytest.raises(InputError, match=f"export_onnx writes a float32 graph; BertForSequenceClassification holds {dtype} weights"):
            export_onnx(TINY["BertForSequenceClassification"][0]().to(dtype), tmp_path / "wide.onnx")
    vit = ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=32,
                                              patch_size=8, num_labels=3)).eval()
    session = ort.InferenceSession(str(export_onnx(vit, tmp_path / "vit.onnx")))  # at its own 32 x 32
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(session.run(None, {"x": images.numpy()})[0], vit(images).logits)
    bert.set_backend("fused")
    session = ort.InferenceSession(str(export_onnx(bert, tmp_path / "fused_backend.onnx")))
    assert {block.backend for block in bert.modules() if hasattr(block, "backend")} == {"fused"}  # restored
    ids, mask = torch.randint(0, bert.config.vocab_size, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        _close(session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0], bert(ids, mask).logits)
