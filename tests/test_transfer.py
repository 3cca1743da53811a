"""minipt.transfer: stages by name, freezing (BatchNorm and dropout included), new heads, optimiser groups, errors.

The first tests run on every class of every registered family (``minipt.registry``):
a new family is covered here by declaring itself, without an edit to this file.
"""

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from minipt import registry, transfer
from minipt.errors import InputError, MiniptError, StageError, TrainingError
from minipt.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification
from minipt.models.crnn import CRNN, CRNNConfig
from minipt.models.efficientnet import EfficientNet, EfficientNetConfig
from minipt.models.resnet import ResNet, ResNetConfig
from test_protocol import TINY_BERT, model_classes

CLASSES = {cls.__name__: (family, cls) for family in registry.families() for cls in family.classes}


def _tiny(name):
    family, cls = CLASSES[name]
    return family.tiny_model(cls)


def _run(name, model):
    """The model on its family's example input: every floating-point tensor it returns."""
    family, cls = CLASSES[name]
    args, kwargs = family.inputs(cls)
    return [t for t in tree_leaves(model(*args, **kwargs)) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _resnet():
    return ResNet(ResNetConfig("basic", (1, 1, 1, 1), num_classes=5))


def _bert(**fields):
    return BertForSequenceClassification(BertConfig(**{**TINY_BERT, "num_labels": 3, **fields}))


def _stage_modules(model, name):
    return transfer._resolve(model)[name]


# -- every registered class ------------------------------------------------------------
def test_every_model_class_declares_stages():
    missing = [name for name, cls in model_classes().items() if not hasattr(cls, "transfer_stages")]
    assert not missing, f"declare transfer_stages on {missing} (see minipt.transfer)"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_stage_table_covers_every_parameter_once(name):
    model = _tiny(name)
    by_stage = transfer.stage_parameters(model)
    listed = [id(p) for params in by_stage.values() for _, p in params]
    assert len(listed) == len(set(listed)) == len(list(model.parameters()))
    assert all(by_stage.values()), f"a stage of {name} holds no parameters"
    assert list(by_stage) == transfer.stages(model)
    table = transfer.stage_table(model)
    assert [row.stage for row in table] == transfer.stages(model)
    assert sum(row.trainable for row in table) == sum(p.numel() for p in model.parameters()) and not any(row.frozen for row in table)
    assert "total" in str(table)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_freeze_up_to_every_stage(name):
    model = _tiny(name)
    order = transfer.stages(model)
    for cut, stage in enumerate(order):
        transfer.freeze_up_to(model, stage)
        model.train()
        for row in transfer.stage_table(model):
            frozen = order.index(row.stage) <= cut
            assert (row.trainable == 0) == frozen and (row.frozen == 0) == (not frozen), (stage, row)
            assert all(not m.training for m in _stage_modules(model, row.stage)) == frozen, (stage, row.stage)
    transfer.unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(transfer.is_held_in_eval(m) for m in model.modules()) and all(m.training for m in model.modules())


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_frozen_stages_get_no_gradient(name):
    model = _tiny(name)
    order = transfer.stages(model)
    transfer.freeze_up_to(model, order[len(order) // 2 - 1])
    model.train()
    sum(t.sum() for t in _run(name, model)).backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_freeze_and_unfreeze_one_stage_by_name(name):
    model = _tiny(name)
    for stage in transfer.stages(model):
        transfer.freeze(model, stage)
        assert [row.stage for row in transfer.stage_table(model) if row.frozen] == [stage]
        transfer.unfreeze(model, stage)
        assert transfer.trainable_parameters(model) == sum(p.numel() for p in model.parameters())
    with pytest.raises(StageError, match=r"no stage 'no.such.stage'; its stages: " + ", ".join(transfer.stages(model))):
        transfer.freeze(model, "no.such.stage")


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_param_groups_of_every_class(name):
    model = _tiny(name)
    order = transfer.stages(model)
    transfer.freeze(model, order[0])
    groups = transfer.param_groups(model, 1e-3, layer_decay=0.5)
    assert [g["stage"] for g in groups] == order[1:]
    if not getattr(model, "transfer_towers", ()):  # parallel towers (CLIP) count each one's depth: the test below
        assert [g["lr"] for g in groups] == pytest.approx([1e-3 * 0.5**k for k in reversed(range(len(order) - 1))])
    transfer.check_param_groups(model, torch.optim.AdamW(groups))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_reset_classifier_of_every_class(name, tmp_path):
    model = _tiny(name)
    declared = getattr(model, "transfer_head", None)
    if declared is None:
        with pytest.raises(TrainingError, match="no task head"):
            transfer.reset_classifier(model, 3)
        return
    path, field = declared
    if field not in type(model.config).__dataclass_fields__:  # the head's size follows another field (CRNN: the charset)
        with pytest.raises(TrainingError, match="pass the field that decides it"):
            transfer.reset_classifier(model, 3)
        return
    size = transfer.num_classes(model) + 2
    old = model.get_submodule(path).weight.detach().clone()
    transfer.reset_classifier(model, size)
    new = model.get_submodule(path)
    assert new.out_features == size and transfer.num_classes(model) == size and new.weight.requires_grad
    assert not torch.equal(new.weight[: old.shape[0]].detach(), old)
    model.eval()
    assert _run(name, model)  # the model still runs
    reloaded = type(model).from_pretrained(model.save_pretrained(tmp_path))  # the config follows the new head
    torch.testing.assert_close(reloaded.get_submodule(path).weight, new.weight)


# -- the declared stages of particular models -------------------------------------------
def test_stage_names_follow_the_data_flow():
    assert transfer.stages(_bert()) == ["embeddings", "layers.0", "layers.1", "pooler", "head"]
    assert transfer.stages(_resnet()) == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]
    with torch.device("meta"):
        lite0 = EfficientNet(EfficientNetConfig.lite("lite0"))
    names = transfer.stages(lite0)
    assert names == ["stem", *[f"stages.{i}" for i in range(7)], "head", "classifier"]
    blocks = lite0.transfer_stages["stages.5"]  # (4, 5, 2, 6, 112 -> 192): after 1 + 2 + 2 + 3 + 3 blocks
    assert blocks == ("blocks.11", "blocks.12", "blocks.13", "blocks.14")


def test_a_tied_parameter_freezes_with_its_first_stage():
    model = BertForMaskedLM(BertConfig(**TINY_BERT))
    assert model.head.decoder.weight is model.bert.embeddings.token.weight
    transfer.freeze(model, "embeddings")
    assert not model.head.decoder.weight.requires_grad and model.head.decoder.bias.requires_grad
    transfer.unfreeze(model, "head")  # the head's own parameters only: the tied weight stays with the embeddings
    assert not model.head.decoder.weight.requires_grad
    transfer.freeze_up_to(model, "embeddings")
    assert not model.head.decoder.weight.requires_grad and model.head.decoder.bias.requires_grad


# -- freezing ----------------------------------------------------------------------
def test_freeze_up_to_and_unfreeze():
    model = _bert()
    transfer.freeze_up_to(model, "layers.0")
    trainable = {row.stage for row in transfer.stage_table(model) if row.trainable}
    assert trainable == {"layers.1", "pooler", "head"}
    transfer.freeze_up_to(model, "embeddings")  # lower: layers.0 trains again
    assert {row.stage for row in transfer.stage_table(model) if row.trainable} == {"layers.0", "layers.1", "pooler", "head"}
    transfer.unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())
    transfer.freeze(model)
    assert transfer.trainable_parameters(model) == 0


def test_unknown_stage_names_the_known_ones():
    with pytest.raises(StageError, match=r"no stage 'layer.3'.*embeddings, layers.0, layers.1, pooler, head"):
        transfer.freeze_up_to(_bert(), "layer.3")
    with pytest.raises(StageError, match="'encoder'"):
        transfer.freeze(_resnet(), "stem", "encoder")
    assert issubclass(StageError, MiniptError)


def _bn_stats(module):
    return [t.clone() for m in module.modules() if isinstance(m, nn.BatchNorm2d) for t in (m.running_mean, m.running_var)]


def test_frozen_stages_keep_batchnorm_statistics_under_train():
    model = _resnet()
    transfer.freeze_up_to(model, "stages.1")
    model.train()
    frozen_before, free_before = _bn_stats(model.stages[1]), _bn_stats(model.stages[3])
    model(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, _bn_stats(model.stages[1])))
    assert not all(torch.equal(a, b) for a, b in zip(free_before, _bn_stats(model.stages[3])))
    assert not model.stem.bn.training and model.stages[3][0].bn1.training
    transfer.unfreeze(model, "stem")
    assert model.stem.bn.training  # back to the model's mode


def test_bn_train_lets_frozen_statistics_move():
    model = _resnet()
    transfer.freeze(model, "stem", bn="train")
    model.train()
    before = _bn_stats(model.stem)
    model(torch.randn(2, 3, 32, 32))
    assert not torch.equal(before[0], _bn_stats(model.stem)[0])
    assert not model.stem.conv.weight.requires_grad


def test_frozen_stages_drop_nothing_under_train():
    model = _bert(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    transfer.freeze(model, "embeddings", "layers.0", "layers.1", "pooler")
    model.train()
    ids = torch.randint(0, 50, (2, 6))
    first, second = (model.bert(ids).pooler_output for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # every dropout before the pooler is off
    assert model.dropout.training  # the head's own dropout still trains


def test_bn_mode_is_checked():
    with pytest.raises(InputError, match="bn must be one of 'eval', 'train'; got 'frozen'"):
        transfer.freeze(_resnet(), "stem", bn="frozen")
    with pytest.raises(InputError, match="stage name must be a string, got int 0"):
        transfer.freeze(_resnet(), 0)


def test_reset_classifier_asks_a_model_with_its_own_first():
    model = _resnet()
    transfer.reset_classifier(model, 0)  # ResNet's own reset_classifier: 0 classes is no head, as in timm
    assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0
    transfer.reset_classifier(model, 4)
    assert model.get_classifier().out_features == 4 and model.num_classes == 4


# -- new heads ----------------------------------------------------------------------
def test_reset_classifier_drops_the_old_label_names():
    model = _bert(id2label={0: "neg", 1: "pos"})
    transfer.reset_classifier(model, 5)
    assert model.config.num_labels == 5 and model.config.id2label is None


def test_reset_classifier_names_and_counts_agree():
    import numpy as np

    model = _bert()
    with pytest.raises(TrainingError, match="reset_classifier to 4 classes got id2label with 2 names"):
        transfer.reset_classifier(model, 4, id2label={0: "a", 1: "b"})
    model.reset_classifier(np.int64(4))  # a count from numpy
    assert model.classifier.out_features == model.config.num_labels == 4


def test_reset_classifier_of_crnn_takes_a_charset():
    model = CRNN(CRNNConfig(channels=(4, 8, 8, 16), hidden_size=8, charset="abc"))
    transfer.reset_classifier(model, charset="0123456789")
    assert model.classifier.out_features == 11 and model.config.charset == "0123456789"
    with pytest.raises(TrainingError, match="charset"):
        transfer.reset_classifier(model, 4)


def test_labels_outside_the_head():
    model = _bert()
    transfer.check_labels(model, torch.tensor([0, 2, 1]))
    with pytest.raises(TrainingError, match=r"labels run from 0 to 4.*3 classes \(0..2\).*reset_classifier\(model, 5\)"):
        transfer.check_labels(model, [0, 4, 1])
    with pytest.raises(TrainingError, match="from -1"):
        transfer.check_labels(model, [-1, 0])
    transfer.check_labels(model, [0, -100, 2])  # -100: skipped by the loss, as the model's own check allows
    with pytest.raises(TrainingError, match=r"labels run from 0 to 3"):
        transfer.check_labels(model, [0, -100, 3])
    # the targets of another problem: the model's loss takes them (and checks each batch); so does check_labels
    from minipt.models.bert import BertConfig, BertForSequenceClassification

    for problem, num_labels, targets in (("multi_label_classification", 3, [[0.0, 1.0, 1.0]]), ("regression", 2, [[0.3, -1.2]]), (None, 1, [0.3])):
        head = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                        intermediate_size=32, num_labels=num_labels, problem_type=problem))
        assert head(torch.randint(1, 50, (1, 4)), labels=torch.tensor(targets)).loss.isfinite()
        transfer.check_labels(head, targets)


def test_the_loss_names_labels_it_cannot_take():
    """In forward, before cross-entropy's IndexError (a device assert on a GPU): a class id outside the head, labels
    of another shape; -100 is skipped, as by transformers' loss."""
    from minipt.errors import InputError

    model = _bert().eval()
    ids = torch.randint(1, 50, (3, 4))
    assert model(ids, labels=torch.tensor([0, -100, 2])).loss.isfinite()
    with pytest.raises(InputError, match=r"labels hold 3, outside the head's 3 classes \(0..2; -100 is skipped\); reset_classifier\(4\)"):
        model(ids, labels=torch.tensor([0, 3, 1]))
    with pytest.raises(InputError, match=r"labels hold -1, outside the head's 3 classes \(0..2; -100 is skipped\)$"):
        model(ids, labels=torch.tensor([0, -1, 1]))
    with pytest.raises(InputError, match=r"must be 3 integer class ids, one per sequence; got torch.int64 \(3, 4\)"):
        model(ids, labels=ids)
    with pytest.raises(InputError, match=r"multi-label classification must have the logits' shape \(3, 3\)"):
        model(ids, labels=torch.ones(3))
    with pytest.raises(InputError, match=r"regression must hold 2 target\(s\) per sequence"):
        _bert(num_labels=2, problem_type="regression")(ids, labels=torch.ones(3))


# -- optimiser groups -----------------------------------------------------------------
def test_param_groups_decay_from_the_head_down():
    model = _bert()
    transfer.freeze(model, "embeddings")
    groups = transfer.param_groups(model, 1e-3, layer_decay=0.5)
    assert [g["stage"] for g in groups] == ["layers.0", "layers.1", "pooler", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([1.25e-4, 2.5e-4, 5e-4, 1e-3])
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(grouped) == len(set(grouped))
    optimizer = torch.optim.AdamW(groups)
    transfer.check_param_groups(model, optimizer)


def test_param_groups_count_each_tower_of_clip_from_the_projections_down():
    """The text tower sat below the whole image tower: its top layer trained slower than the image embeddings."""
    from minipt.models.clip import CLIPConfig, CLIPModel

    tower = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    model = CLIPModel(CLIPConfig(text_config=dict(tower, vocab_size=50, max_position_embeddings=8, eos_token_id=2),
                                 vision_config=dict(tower, image_size=16, patch_size=8), projection_dim=8))
    rates = {g["stage"]: g["lr"] for g in transfer.param_groups(model, 1.0, layer_decay=0.5)}
    assert rates["projections"] == 1.0
    for prefix, top in (("text_model.", "final_norm"), ("vision_model.", "post_norm")):
        assert [rates[prefix + stage] for stage in ("embeddings", "layers.0", "layers.1", top)] == [0.0625, 0.125, 0.25, 0.5]


def test_a_fresh_head_on_a_frozen_model_trains_with_its_dropout():
    """The dropout before the classifier belongs to the head's stage: freezing the whole model held it, and the new
    head of a linear probe then trained without it."""
    model = _bert()
    transfer.freeze(model)
    transfer.reset_classifier(model, 4)
    model.train()
    assert model.dropout.training and not transfer.is_held_in_eval(model.dropout)
    assert not model.bert.layers[0].training  # the frozen encoder stays held
    head = next(row for row in transfer.stage_table(model) if row.stage == "head")
    assert head.mode == "train" and head.frozen == 0 and all(p.requires_grad for p in model.classifier.parameters())


def test_optimiser_groups_that_miss_or_repeat_a_parameter():
    model = _bert()
    params = list(model.parameters())
    with pytest.raises(TrainingError, match=r"2 trainable parameter\(s\) in no group: classifier.weight, classifier.bias"):
        transfer.check_param_groups(model, [{"params": params[:-2]}])
    with pytest.raises(TrainingError, match=r"in more than one group: classifier.bias"):
        transfer.check_param_groups(model, [{"params": params}, {"params": params[-1:]}])
    with pytest.raises(TrainingError, match="not BertForSequenceClassification's"):
        transfer.check_param_groups(model, [{"params": params + [nn.Parameter(torch.zeros(1))]}])
    with pytest.raises(InputError, match=r"layer_decay must be in \(0, 1\], got 1.5"):
        transfer.param_groups(model, 1e-3, layer_decay=1.5)
    with pytest.raises(InputError, match="lr must be finite, got nan"):
        transfer.param_groups(model, float("nan"))
    transfer.freeze(model)
    with pytest.raises(TrainingError, match="every parameter .* is frozen"):
        transfer.param_groups(model, 1e-3)


def test_stage_table_counts():
    model = _resnet()
    transfer.freeze_up_to(model, "stages.2")
    rows = transfer.stage_table(model)
    assert sum(r.trainable + r.frozen for r in rows) == sum(p.numel() for p in model.parameters())
    assert sum(r.trainable for r in rows) == transfer.trainable_parameters(model) == sum(p.numel() for p in [*model.stages[3].parameters(), *model.head.parameters()])
    text = str(rows)
    assert "stages.3" in text and "eval (held)" in text and "total" in text


# -- quantised models ---------------------------------------------------------------------
def test_a_quantised_model_cannot_train():
    from minipt.quantize import quantize_int8

    model = quantize_int8(_bert())
    assert transfer.is_quantized(model)
    for call in (lambda: transfer.param_groups(model, 1e-3), lambda: transfer.freeze(model, "head"), lambda: transfer.check_trainable(model)):
        with pytest.raises(TrainingError, match="quantised .* train the float model and quantise it afterwards"):
            call()


def test_wrapped_models_are_unwrapped_and_returned_as_given():
    """transfer's functions take a torch.compile wrapper (and DDP's, in test_distributed.py) as the model."""
    model = ResNet(ResNetConfig("basic", (1, 1, 1, 1), num_classes=3))
    compiled = torch.compile(model)  # nothing compiles until it is called
    assert transfer.stages(compiled) == transfer.stages(model)
    assert transfer.freeze(compiled, "stem") is compiled and not model.stem.conv.weight.requires_grad
    groups = transfer.param_groups(compiled, lr=0.1)
    transfer.check_param_groups(compiled, groups)
    assert [row.stage for row in transfer.stage_table(compiled)] == transfer.stages(model)
    assert transfer.unfreeze(compiled) is compiled and model.stem.conv.weight.requires_grad


def test_bad_models_and_groups_are_named():
    model = ResNet(ResNetConfig("basic", (1, 1, 1, 1), num_classes=3))
    for call in (lambda: transfer.param_groups(None, lr=0.1), lambda: transfer.freeze(None), lambda: transfer.stages("resnet")):
        with pytest.raises(InputError, match="expected a model"):
            call()
    transfer.check_param_groups(model, model.parameters())  # an iterable of parameters, as torch.optim takes
    for groups, message in [(5, "an optimiser or a list of its groups"), ([{"lr": 1}], "a dict with 'params'"), ([3], "a dict with 'params'")]:
        with pytest.raises(InputError, match=message):
            transfer.check_param_groups(model, groups)
