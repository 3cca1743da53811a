"""minipt.reference.layer_diffs and ``minipt diff``: every family against its reference, point by point.

Every class of every family declared with a reference in ``minipt.registry``
is compared twice on a tiny checkpoint that minipt saved: as loaded (no point
may diverge) and with one parameter in the middle of the model shifted (the
report must name, as the first divergence, the first point that parameter
moves, and that point must belong to the module holding the parameter).
Families whose reference cannot run on a tiny checkpoint are listed, with the
reason, in ``NO_TINY_REFERENCE``. Real weights (BERT's all-MiniLM-L6-v2,
EfficientNet-Lite0, EasyOCR's CRNN, g2p-en) and checkpoints the reference
library saved (BERT, ResNet) are compared in the tests after the generic one.
"""

import copy
import inspect
import re

import pytest
import torch
from torch import nn

from minipt import cli, registry
from minipt.errors import ConfigError, InputError, MiniptError
from minipt.nn.backend import blocks, use_backend
from minipt.probe import capture
from minipt.reference import import_transformers, layer_diffs

from helpers import randomise_batch_norm


def swap_gates(module: nn.Module, suffix: str, first: int, second: int, gates: int) -> None:
    """Swap two gate blocks in every weight and bias of one layer of a torch.nn-layout recurrent module."""
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            param = getattr(module, f"{name}{suffix}")
            blocks = list(param.detach().clone().chunk(gates, 0))
            blocks[first], blocks[second] = blocks[second], blocks[first]
            param.copy_(torch.cat(blocks))


def assert_clean(report):
    assert report.first_divergence is None, str(report)
    assert "no divergence" in str(report)


def assert_first(report, name):
    first = report.first_divergence
    assert first is not None and first.name == name, str(report)
    before = report.rows[: report.rows.index(first)]
    assert before and all(not row.diverged for row in before)
    assert re.search(rf"^  {re.escape(name)} .*<- first divergence", str(report), flags=re.M)


# -- every family, on a tiny checkpoint ------------------------------------------------------
# Families whose reference comparison cannot run on a tiny random checkpoint, and why. The mark is
# strict: once the family's model file lifts the limitation the test passes, fails as XPASS, and the entry goes.
NO_TINY_REFERENCE: dict[str, str] = {"craft": "EasyOCR builds CRAFT only at its one size (VGG16-BN, fc 1024)"}  # model_type -> why
SHIFT_SEED = 1


def reference_cases():
    cases = []
    for family in registry.families():
        if family.reference is None:
            continue
        reason = NO_TINY_REFERENCE.get(family.model_type)
        marks = [pytest.mark.xfail(raises=MiniptError, strict=True, reason=reason)] if reason else []
        cases += [pytest.param(family, cls, marks=marks, id=f"{family.model_type}/{cls.__name__}") for cls in family.classes]
    return cases


def diff_and_call(family, cls, model, path):
    """layer_diffs on the family's default input, and the (args, kwargs) minipt's side was called with.

    Where the default needs more than a random checkpoint holds (BERT's: a tokenizer beside it), the
    class's example batch from the registry is passed instead, keyed by the forward's argument names."""
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
    try:
        try:
            inputs = None
            report = layer_diffs(model, path)
        except InputError:
            args, kwargs = family.inputs(cls)
            inputs = dict(inspect.signature(model.forward).bind(*args, **kwargs).arguments)
            calls.clear()
            report = layer_diffs(model, path, inputs)
    finally:
        hook.remove()
    return report, inputs, calls[0]


@torch.inference_mode()
def point_values(model, names, call) -> dict:
    args, kwargs = call
    with use_backend("math", module=model), capture(model, *names) as seen:
        model(*args, **kwargs)
    return {name: seen[name].double() for name in names}


def relative_change(now: torch.Tensor, before: torch.Tensor) -> float:
    if now.shape != before.shape:
        return float("inf")
    return ((now - before).abs().max() / before.abs().max().clamp_min(1e-12)).item()


def shift(parameter: torch.Tensor) -> None:
    """A visible change: noise on the scale of the tensor's values (0.1 for a tensor of zeros)."""
    noise = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(SHIFT_SEED))
    with torch.no_grad():
        parameter.add_(noise * parameter.abs().mean().clamp_min(0.1))


def plant(model, names, call) -> tuple[str, str]:
    """Shift one parameter in the middle of the model, for good: (its name, the first point it moves).

    Parameters are tried from the middle of the model outwards; the first whose shift moves one point
    clearly (1e-2 relative) and leaves every earlier point untouched (1e-6) is kept. Which point it moves
    is read off minipt's side alone; the report must then find the same point against the reference."""
    before = point_values(model, names, call)
    parameters = list(model.named_parameters())
    middle = len(parameters) // 2
    for index in sorted(range(len(parameters)), key=lambda i: (abs(i - middle), i)):
        name, parameter = parameters[index]
        kept = parameter.detach().clone()
        shift(parameter)
        now = point_values(model, names, call)
        changes = [relative_change(now[point], before[point]) for point in names]
        moved = next((i for i, change in enumerate(changes) if change > 1e-2), None)
        if moved is not None and all(change < 1e-6 for change in changes[:moved]):
            return name, names[moved]
        with torch.no_grad():
            parameter.copy_(kept)
    raise AssertionError(f"no parameter of {type(model).__name__} moves exactly one point first")


def module_of(model, point: str) -> str:
    """The module a diff point reads: ``<module>.out``, or ``<module>.<tap>`` for a tap it declares."""
    modules = dict(model.named_modules())
    parts = point.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
        if prefix in modules and (rest == "out" or rest in getattr(modules[prefix], "taps", {})):
            return prefix
    raise AssertionError(f"{point} names no module output or tap of {type(model).__name__}")


@pytest.mark.parametrize("family, cls", reference_cases())
def test_every_family_matches_its_reference_and_a_shifted_parameter_is_found(family, cls, tmp_path):
    torch.manual_seed(0)
    randomise_batch_norm(family.tiny_model(cls)).save_pretrained(tmp_path)
    model = cls.from_pretrained(tmp_path)
    report, inputs, call = diff_and_call(family, cls, model, tmp_path)
    assert_clean(report)
    names = [row.name for row in report.rows]
    assert len(names) >= 3 and len(set(names)) == len(names)

    parameter, point = plant(model, names, call)
    assert parameter.startswith(module_of(model, point) + "."), f"{parameter} moved {point} first, outside its module"
    assert_first(layer_diffs(model, tmp_path, inputs), point)
    assert 0 < names.index(point) < len(names) - 1  # a middle point: something before agrees, something after is compared


# -- BERT ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    from minipt.models.bert import BertModel

    return BertModel.from_pretrained("all-MiniLM-L6-v2")


def test_bert_as_loaded_matches_transformers(minilm):
    report = layer_diffs(minilm, "all-MiniLM-L6-v2")
    assert_clean(report)
    names = [row.name for row in report.rows]
    assert names[0] == "embeddings.out" and names[-1] == "pooler.out" and len(names) == 2 + 6 * 7
    assert names.index("layers.2.attn.probs") < names.index("layers.2.attn_norm.out") < names.index("layers.2.out")


def test_bert_layer_norm_eps_changed_in_block_2_is_found(minilm):
    planted = copy.deepcopy(minilm)
    planted.layers[2].attn_norm.eps = 1e-2
    assert_first(layer_diffs(planted, "all-MiniLM-L6-v2", ["A man is eating food.", "A monkey is playing drums."]), "layers.2.attn_norm.out")


def test_bert_with_a_head_and_the_backend_kept(tmp_path):
    transformers = import_transformers()
    from minipt.models.bert import BertForSequenceClassification

    config = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, num_labels=3)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).eval().save_pretrained(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path)
    model.set_backend("fused")
    batch = {"input_ids": torch.randint(0, 60, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    report = layer_diffs(model, tmp_path, batch)
    assert_clean(report)
    assert report.rows[-1].name == "classifier.out" and report.rows[0].name == "bert.embeddings.out"
    assert all(block.backend == "fused" for block in blocks(model))  # restored after


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
def test_text_models_compare_on_an_id_tensor_and_a_batch(model_type, tmp_path):
    family = next(f for f in registry.families() if f.model_type == model_type)
    cls = family.classes[0]
    torch.manual_seed(0)
    family.tiny_model(cls).save_pretrained(tmp_path)
    model = cls.from_pretrained(tmp_path)
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    report = layer_diffs(model, tmp_path, ids)
    assert_clean(report)
    assert "on token ids of shape (2, 7)" in str(report)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    assert [row.max_abs for row in layer_diffs(model, tmp_path, batch).rows] == [row.max_abs for row in report.rows]
    encoding = import_transformers().BatchEncoding(batch)  # a tokenizer's batch: a Mapping, not a dict
    assert [row.max_abs for row in layer_diffs(model, tmp_path, encoding).rows] == [row.max_abs for row in report.rows]
    with pytest.raises(InputError, match=r"a tokenised batch holds input_ids \(a tensor\); got the keys \['ids'\]"):
        layer_diffs(model, tmp_path, {"ids": ids})
    if model_type == "gpt2":  # transformers' GPT-2 forward counts positions from 0 on every row: padded rows would differ
        with pytest.raises(InputError, match="rows without padding"):
            layer_diffs(model, tmp_path, {**batch, "attention_mask": torch.tensor([[0] + [1] * 6, [1] * 7])})


# -- ResNet ------------------------------------------------------------------------------
def torchvision_resnet(block: str, path):
    from torchvision.models import resnet as tv

    torch.manual_seed(0)
    reference = tv.ResNet(tv.Bottleneck if block == "bottleneck" else tv.BasicBlock, [1, 1, 1, 1], num_classes=10)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):  # statistics away from identity, so a misplaced BatchNorm shows
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    torch.save(reference.state_dict(), path)
    return path


def test_resnet_from_torchvision_matches_and_a_stride_moved_to_the_first_conv_is_found(tmp_path):
    """A torchvision-saved .pth (no config.json) with bottleneck blocks: the official layout the tiny checkpoints do not cover."""
    from minipt.models.resnet import ResNet

    path = torchvision_resnet("bottleneck", tmp_path / "resnet.pth")
    model, x = ResNet.from_pretrained(path), torch.randn(1, 3, 64, 64)
    report = layer_diffs(model, path, x)
    assert_clean(report)
    assert "stages.3.0.shortcut.out" in [row.name for row in report.rows]
    block = model.stages[2][0]
    block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)  # the paper's V1 layout in one block
    report = layer_diffs(model, path, x)
    assert_first(report, "stages.2.0.conv1.out")
    assert report.first_divergence.shapes == ((1, 256, 4, 4), (1, 256, 8, 8))


# -- EfficientNet-Lite0 (official weights) -------------------------------------------------------
def test_efficientnet_matches_timm_and_a_changed_batchnorm_is_found():
    from minipt.models.efficientnet import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet_lite0")
    x = torch.randn(1, 3, 96, 96)
    assert_clean(layer_diffs(model, "efficientnet_lite0", x))
    planted = copy.deepcopy(model)
    planted.blocks[5].depthwise.bn.eps = 0.5
    assert_first(layer_diffs(planted, "efficientnet_lite0", x), "blocks.5.depthwise.out")


# -- recurrent -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crnn():
    from minipt.models.crnn import CRNN

    return CRNN.from_pretrained("easyocr-english-g2")


def test_crnn_matches_a_torch_nn_rebuild(crnn):
    report = layer_diffs(crnn, "easyocr-english-g2")
    assert_clean(report)
    assert report.input.startswith("'Hello World 2024' rendered")
    assert "sequence.1.lstm.layers.0.reverse.h" in [row.name for row in report.rows]


def test_crnn_swapped_gates_in_the_second_bilstm_are_found(crnn):
    planted = copy.deepcopy(crnn)
    swap_gates(planted.sequence[1].lstm, "_l0", 0, 1, gates=4)  # input and forget gates of the forward direction
    assert_first(layer_diffs(planted, "easyocr-english-g2", "minipt 0.1"), "sequence.1.lstm.layers.0.h")


def test_g2p_matches_torch_nn_and_swapped_decoder_gates_are_found():
    from minipt.models.g2p import G2P

    model = G2P.from_pretrained("g2p-en")
    report = layer_diffs(model, "g2p-en")
    assert_clean(report)
    assert [row.name for row in report.rows] == ["letter_embedding.out", "encoder.layers.0.h", "phoneme_embedding.out", "decoder.layers.0.h", "classifier.out"]
    planted = copy.deepcopy(model)
    swap_gates(planted.decoder, "_l0", 0, 1, gates=3)  # reset and update gates
    assert_first(layer_diffs(planted, "g2p-en", "hello"), "decoder.layers.0.h")


# -- bad requests and the command line ----------------------------------------------------------
def test_a_model_without_a_reference_family_is_refused(tmp_path):
    from minipt.models.char_lm import CharLM, CharLMConfig

    CharLM(CharLMConfig(embed_size=4, hidden_size=8, num_layers=1)).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no reference comparison for Linear"):
        layer_diffs(nn.Linear(2, 2), tmp_path)
    with pytest.raises(InputError, match="CharLM compares on a text or byte ids"):
        layer_diffs(CharLM.from_pretrained(tmp_path), tmp_path, 42)


def test_cli_diff_any_family(tmp_path, capsys):
    from minipt.models.char_lm import CharLM, CharLMConfig

    path = torchvision_resnet("basic", tmp_path / "resnet.pth")
    assert cli.main(["diff", str(path)]) == 0
    out = capsys.readouterr().out
    assert "minipt ResNet against torchvision ResNet on chelsea.png" in out and "no divergence" in out
    CharLM(CharLMConfig(embed_size=4, hidden_size=8, num_layers=2)).save_pretrained(tmp_path / "lm")
    assert cli.main(["diff", str(tmp_path / "lm"), "--input", "Once upon a time"]) == 0
    assert re.search(r"^  lstm\.layers\.1\.h +\S+ +\S+$", capsys.readouterr().out, flags=re.M)
    assert cli.main(["diff", str(tmp_path / "lm"), "--input", "one", "--input", "two"]) == 1
    assert "compares a CharLM on one --input, got 2" in capsys.readouterr().err


def test_a_checkpoint_without_the_models_head_or_of_another_family_is_refused(tmp_path):
    """transformers initialises a head the checkpoint lacks at random: a BertForSequenceClassification compared with a
    base encoder's file reported classifier.out diverging (a masked-LM head at relative 1.47), and a checkpoint of
    another family reached transformers' bare OSError. Both are named now, as is an rtol that is no tolerance."""
    from minipt.models.bert import BertConfig, BertForSequenceClassification, BertModel
    from minipt.models.resnet import resnet18

    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    encoder = BertModel(config).save_pretrained(tmp_path / "encoder")
    classifier = BertForSequenceClassification(config.replace(num_labels=3)).eval()
    ids = torch.randint(1, 60, (2, 6))
    with pytest.raises(ConfigError, match=r"encoder lacks 2 of transformers' BertForSequenceClassification weights \(classifier.bias, "
                                          r"classifier.weight\), which transformers would initialise at random"):
        layer_diffs(classifier, encoder, ids)
    assert_clean(layer_diffs(classifier, classifier.save_pretrained(tmp_path / "classifier"), ids))
    image_model = resnet18(num_classes=3).save_pretrained(tmp_path / "resnet")
    with pytest.raises(ConfigError, match=r"holds a checkpoint of the 'resnet' family; BertModel is compared with one of its own family's \('bert'\)"):
        layer_diffs(BertModel(config), image_model, ids)
    for rtol, message in ((-1.0, "rtol must be >= 0"), (float("nan"), "rtol must be finite"), ("1e-4", "rtol must be a real number")):
        with pytest.raises(InputError, match=message):
            layer_diffs(classifier, tmp_path / "classifier", ids, rtol=rtol)


def test_a_model_of_other_sizes_than_the_checkpoint_is_named(tmp_path):
    """A BERT cut to fewer layers than its checkpoint's was compared point by point and blamed pooler.out; the sizes
    the checkpoint fixes are checked first now, each named."""
    from minipt.models.bert import BertConfig, BertModel

    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    folder = BertModel(config).save_pretrained(tmp_path / "two_layers")
    with pytest.raises(ConfigError, match=r"num_hidden_layers = 1, but the checkpoint holds 2"):
        layer_diffs(BertModel(config.replace(num_hidden_layers=1)), folder, torch.randint(1, 60, (1, 5)))
    with pytest.raises(ConfigError, match=r"intermediate_size = 24, but"):
        layer_diffs(BertModel(config.replace(intermediate_size=24)), folder, torch.randint(1, 60, (1, 5)))
