"""The calls users bring from timm and transformers, the same on every declared model (minipt.registry).

- ``check_inputs(...)`` takes forward's arguments and raises the InputError forward would;
- ``Model.keymap(config=None)`` is the one public key map (no module-level constants);
- every classifier has ``get_classifier()``, ``reset_classifier(n)`` and ``num_classes``; after a reset the
  config says what the head is, so save_pretrained -> from_pretrained builds the same model back;
- the image classifiers split forward as timm does: ``forward_head(forward_features(x))``, with
  ``reset_classifier(0)`` leaving no head (parity with timm's own models: tests/test_resnet.py,
  tests/test_efficientnet.py).
"""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest
import torch
from torch import nn

from minipt import registry
from minipt.checkpoint import model_keys, official_state_dict
from minipt.errors import InputError, TrainingError
from minipt.keymap import KeyMap
from minipt.models.bert import BertForSequenceClassification
from minipt.models.classifier import HasClassifier
from minipt.models.efficientnet import EfficientNet
from minipt.models.resnet import ResNet

FAMILIES = {f.model_type: f for f in registry.families()}
CLASSES = [cls for family in FAMILIES.values() for cls in family.classes]
CLASSIFIERS = [cls for cls in CLASSES if issubclass(cls, HasClassifier)]
MODULES = sorted({family.module for family in FAMILIES.values()})


def tiny(cls):
    family = next(f for f in FAMILIES.values() if cls in f.classes)
    args, kwargs = family.inputs(cls)
    return family.tiny_model(cls), args, kwargs


# -- check_inputs -------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_check_inputs_takes_forwards_arguments(cls):
    model, args, kwargs = tiny(cls)
    assert model.check_inputs(*args, **kwargs) is None
    assert not hasattr(model, "check_input") and not hasattr(model, "_check_inputs")


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_check_inputs_refuses_what_forward_refuses(cls):
    model, args, kwargs = tiny(cls)
    bad = (args[0].float() if not args[0].is_floating_point() else args[0].long(), *args[1:])
    with pytest.raises(InputError) as checked:
        model.check_inputs(*bad, **kwargs)
    with pytest.raises(InputError) as ran:
        model(*bad, **kwargs)
    assert str(checked.value) == str(ran.value)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_inputs_on_another_device_are_named(cls):
    """Token ids or images on the meta device given to a model on the CPU: CharLM and G2P returned numbers computed
    from no data, the others failed inside torch; each names the two devices."""
    model, args, kwargs = tiny(cls)
    moved = (args[0].to("meta"), *args[1:])
    with pytest.raises(InputError, match=r"is a tensor on meta, the model on cpu: move it with \.to\('cpu'\)"):
        model(*moved, **kwargs)


def test_masks_positions_and_labels_on_another_device_are_named():
    """GPT-2's meta position_ids gave NaN logits on the CPU without a word; masks and labels on the meta device
    failed inside torch (Tensor.item() on meta, a device mismatch): each is named."""
    from minipt.models.bert import BertConfig, BertModel
    from minipt.models.gpt2 import GPT2Config, GPT2LMHeadModel
    from minipt.models.t5 import T5Config, T5ForConditionalGeneration

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=24, n_layer=1, n_head=3, bos_token_id=0, eos_token_id=0)).eval()
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)).eval()
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)).eval()
    ids = torch.randint(1, 50, (2, 6))
    meta = lambda x: x.to("meta")  # noqa: E731
    calls = {"attention_mask": [lambda: gpt2(ids, attention_mask=meta(torch.ones_like(ids))), lambda: t5(ids, meta(torch.ones_like(ids)), ids),
                                lambda: bert(ids, attention_mask=meta(torch.ones_like(ids)))],
             "position_ids": [lambda: gpt2(ids, position_ids=meta(torch.arange(6)[None].expand(2, 6)))],
             "labels": [lambda: gpt2(ids, labels=meta(ids)), lambda: t5(ids, labels=meta(ids))],
             "decoder_attention_mask": [lambda: t5(ids, decoder_input_ids=ids, decoder_attention_mask=meta(torch.ones_like(ids)))],
             "decoder_input_ids": [lambda: t5.generate(ids, decoder_input_ids=meta(ids[:, :1]), max_new_tokens=2)],
             "token_type_ids": [lambda: bert(ids, token_type_ids=meta(torch.zeros_like(ids)))]}
    for name, runs in calls.items():
        for run in runs:
            with pytest.raises(InputError, match=rf"^{name} is a tensor on meta, the model on cpu"):
                run()


def test_head_checks_include_the_labels():
    model, (input_ids, attention_mask), _ = tiny(BertForSequenceClassification)
    with pytest.raises(InputError, match=r"labels must hold one entry per sequence \(2 for input_ids \(2, 5\)\), got \(3,\)"):
        model.check_inputs(input_ids, attention_mask, labels=torch.tensor([0, 1, 0]))


# -- key maps --------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_keymap_is_a_classmethod_of_every_model(cls):
    model, _, _ = tiny(cls)
    keymap = cls.keymap()
    assert isinstance(keymap, KeyMap)
    assert official_state_dict(model, cls.keymap(model.config))  # every tensor has an official name
    for key in model_keys(model):  # a tied tensor counts once
        assert keymap.to_minipt(keymap.to_official(key)[0])[0] == key


@pytest.mark.parametrize("name", MODULES)
def test_no_module_level_key_map(name):
    module = importlib.import_module(name)
    public = [name for name, value in vars(module).items() if not name.startswith("_") and (isinstance(value, KeyMap) or name.endswith("keymap"))]
    assert public == []


# -- classifier heads -----------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSIFIERS, ids=lambda c: c.__name__)
def test_reset_classifier_on_every_classifier(cls, tmp_path):
    model, args, kwargs = tiny(cls)
    field = cls.transfer_head[1]
    assert model.get_classifier() is getattr(model, cls.transfer_head[0]) and model.get_classifier(name_only=True) == cls.transfer_head[0]
    assert model.reset_classifier(3) is None
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 3 and model.num_classes == 3 == getattr(model.config, field)
    with torch.no_grad():
        out = model.eval()(*args, **kwargs)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    assert logits.shape == (2, 3)
    reloaded = cls.from_pretrained(model.save_pretrained(tmp_path / "three"))
    assert reloaded.num_classes == 3 and reloaded.config == model.config
    assert torch.equal(reloaded.get_classifier().weight, head.weight)


def test_bert_reset_forgets_the_old_label_names(tmp_path):
    model, _, _ = tiny(BertForSequenceClassification)
    model.config = model.config.replace(id2label={0: "no", 1: "yes"})
    model.reset_classifier(4)
    assert model.config.id2label is None and model.config.num_labels == 4
    written = json.loads((model.save_pretrained(tmp_path) / "config.json").read_text())
    assert written["num_labels"] == 4 and "id2label" not in written


@pytest.mark.parametrize("cls", [ResNet, EfficientNet], ids=lambda c: c.__name__)
def test_image_classifier_without_a_head(cls, tmp_path):
    model, (x,), _ = tiny(cls)
    with torch.no_grad():
        pooled = model.eval().forward_head(model.forward_features(x), pre_logits=True)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0 and model.config.num_classes == 0
    with torch.no_grad():
        assert torch.equal(model(x), pooled) and pooled.shape == (2, model.num_features)
    directory = model.save_pretrained(tmp_path / "headless")
    reloaded = cls.from_pretrained(directory)
    assert reloaded.num_classes == 0 and isinstance(reloaded.get_classifier(), nn.Identity)
    model.reset_classifier(5)  # a head again, on the same features
    assert model.get_classifier().in_features == model.num_features and model(x).shape == (2, 5)


@pytest.mark.parametrize("cls", [c for c in CLASSIFIERS if "id2label" in c.config_class.__dataclass_fields__], ids=lambda c: c.__name__)
def test_reset_classifier_with_label_names_builds_a_head_where_there_is_none(cls):
    """transfer.reset_classifier with config fields on a headless model read a Linear's in_features off nn.Identity."""
    from minipt import transfer

    model, _, _ = tiny(cls)
    names = {0: "neg", 1: "pos"}
    if model.headless:
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity)
        with pytest.raises(TrainingError, match=r"to 0 classes \(no head\) got id2label"):
            transfer.reset_classifier(model, 0, id2label=names)
    transfer.reset_classifier(model, 2, id2label=names)
    assert model.get_classifier().out_features == 2 and model.config.id2label == names
    assert getattr(model.config, cls.transfer_head[1]) == 2


@pytest.mark.parametrize("cls", CLASSIFIERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("value", [-1, 1.5, True, "3", None])
def test_reset_classifier_names_a_bad_size(cls, value):
    model, _, _ = tiny(cls)
    with pytest.raises(TrainingError, match=rf"{cls.__name__}.reset_classifier takes {cls.transfer_head[1]} as"):
        model.reset_classifier(value)


def test_bert_head_needs_a_class():
    model, _, _ = tiny(BertForSequenceClassification)
    with pytest.raises(TrainingError, match=r"takes num_labels as a positive integer, got 0"):
        model.reset_classifier(0)


@pytest.mark.parametrize("cls", [ResNet, EfficientNet], ids=lambda c: c.__name__)
def test_forward_head_names_features_that_are_not_a_feature_map(cls):
    model, (x,), _ = tiny(cls)
    features = model.forward_features(x)
    pooled = features.mean((2, 3))
    for bad, message in [
        (pooled, rf"expects the feature map of forward_features, \(batch, {model.num_features}, height, width\); got \(2, {model.num_features}\)"),
        (x, rf"\(batch, {model.num_features}, height, width\); got \(2, 3, 32, 32\)"),
        (features[:, :, :0], "nothing to pool"),
        (features.long(), "floating-point features"),
    ]:
        with pytest.raises(InputError, match=rf"{cls.__name__}.forward_head .*" + message):
            model.forward_head(bad)


def test_top_classes_needs_imagenet_logits():
    from minipt.models.imagenet import top_classes

    with pytest.raises(InputError, match=r"logits of shape \(batch, 1000\), got \(2, 1280\)"):
        top_classes(torch.zeros(2, 1280))


# -- freezing ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_model_frozen_whole_computes_as_in_evaluation_under_train(cls):
    """Every dropout and BatchNorm belongs to a stage, so freezing every stage holds all of them (T5's stacks
    applied a dropout outside every stage)."""
    from minipt import transfer

    model, args, kwargs = tiny(cls)
    for module in model.modules():  # make any dropout that is left out visible
        if isinstance(module, nn.Dropout) or type(module).__name__ == "Dropout":
            module.p = 0.5
    for name, module in model.named_modules():
        for attribute in ("dropout", "attention_dropout", "dropout_rate"):
            if isinstance(getattr(module, attribute, None), float) and name:
                setattr(module, attribute, 0.5)
    transfer.freeze(model, *transfer.stages(model))  # first: frozen weights may take other kernels (G2P's GRU)
    with torch.no_grad():
        expected = model.eval()(*args, **kwargs)
        got = model.train()(*args, **kwargs)
    torch.testing.assert_close(tensors(got), tensors(expected), rtol=0, atol=0)


def tensors(out) -> list[torch.Tensor]:
    """The tensors of a model's output, whatever its kind (a tensor, a tuple, an output dataclass)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if dataclasses.is_dataclass(out):
        out = [getattr(out, field.name) for field in dataclasses.fields(out)]
    elif isinstance(out, dict):
        out = list(out.values())
    return [t for value in out if value is not None for t in tensors(value)] if isinstance(out, (list, tuple)) else []


@pytest.mark.parametrize("cls", [c for c in CLASSES if "labels" in __import__("inspect").signature(c.forward).parameters
                                 and c.__name__ != "T5Model"], ids=lambda c: c.__name__)  # T5Model: labels shift into decoder inputs, no loss
def test_int32_labels_give_the_int64_loss(cls):
    """Class ids from numpy are often int32: torch's cross_entropy refused them deep inside the loss."""
    model, args, kwargs = tiny(cls)
    model.eval()
    with torch.no_grad():
        logits = model(*args, **kwargs).logits
        labels = torch.randint(0, 2, logits.shape[:1] if logits.dim() == 2 else logits.shape[:2], dtype=torch.int32)
        assert torch.equal(model(*args, **kwargs, labels=labels).loss, model(*args, **kwargs, labels=labels.long()).loss)
