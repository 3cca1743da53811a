"""minipt.reference.layer_diffs and ``minipt diff``: every family against its reference, point by point.

Each family is compared twice on the same checkpoint: as loaded (no point may
diverge) and with one deliberate change planted in one layer of a copy (the
report must name exactly that layer as the first divergence). Random-weight
GPT-2 and ResNet checkpoints are built with the reference's own classes and
saved; BERT, EfficientNet-Lite0, CRNN and G2P run on their real weights.
"""

import copy
import re

import pytest
import torch
from torch import nn

from minipt import cli
from minipt.errors import ConfigError, InputError
from minipt.nn.backend import blocks
from minipt.reference import import_transformers, layer_diffs


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


def test_bert_masked_lm_with_a_pooler_is_compared_without_it(tmp_path):
    """minipt keeps the pooler a checkpoint holds; transformers' BertForMaskedLM has none, so there is no point to compare."""
    from minipt.models.bert import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)).eval()
    assert model.bert.pooler is not None
    model.save_pretrained(tmp_path)
    batch = {"input_ids": torch.randint(0, 50, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    report = layer_diffs(model, tmp_path, batch)
    assert_clean(report)
    assert report.rows[-1].name == "head.out" and not any("pooler" in row.name for row in report.rows)


# -- GPT-2 -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    transformers = import_transformers()
    from minipt.models.gpt2 import GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=3, n_head=4, bos_token_id=63, eos_token_id=63)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(path)
    return GPT2LMHeadModel.from_pretrained(path), path


def test_gpt2_matches_and_a_changed_attention_scale_is_found(gpt2):
    model, path = gpt2
    report = layer_diffs(model, path)
    assert_clean(report)
    assert "random token ids" in report.input and report.rows[-1].name == "lm_head.out"
    planted = copy.deepcopy(model)
    planted.transformer.layers[1].attn.scale *= 1.5
    assert_first(layer_diffs(planted, path), "transformer.layers.1.attn.probs")


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


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_resnet_matches_torchvision(block, tmp_path):
    from minipt.models.resnet import ResNet

    path = torchvision_resnet(block, tmp_path / "resnet.pth")
    report = layer_diffs(ResNet.from_pretrained(path), path, torch.randn(1, 3, 64, 64))
    assert_clean(report)
    assert "stages.3.0.shortcut.out" in [row.name for row in report.rows]


def test_resnet_stride_moved_to_the_first_conv_is_found(tmp_path):
    from minipt.models.resnet import ResNet

    path = torchvision_resnet("bottleneck", tmp_path / "resnet.pth")
    planted = ResNet.from_pretrained(path)
    block = planted.stages[2][0]
    block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)  # the paper's V1 layout in one block
    report = layer_diffs(planted, path, torch.randn(1, 3, 64, 64))
    assert_first(report, "stages.2.0.conv1.out")
    assert report.first_divergence.shapes == ((1, 256, 4, 4), (1, 256, 8, 8))


def test_resnet_default_input_is_a_real_photo(tmp_path):
    from minipt.models.resnet import ResNet

    path = torchvision_resnet("basic", tmp_path / "resnet.pth")
    report = layer_diffs(ResNet.from_pretrained(path), path)
    assert report.input == "chelsea.png as (1, 3, 224, 224)"
    assert_clean(report)


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


def test_char_lm_matches_torch_nn_and_swapped_gates_in_layer_1_are_found(tmp_path):
    from minipt.models.char_lm import CharLM, CharLMConfig

    torch.manual_seed(0)
    CharLM(CharLMConfig(embed_size=8, hidden_size=16, num_layers=3)).save_pretrained(tmp_path)
    model = CharLM.from_pretrained(tmp_path)
    assert_clean(layer_diffs(model, tmp_path))
    swap_gates(model.lstm, "_l1", 2, 3, gates=4)  # cell candidate and output gate
    assert_first(layer_diffs(model, tmp_path, "Hello, world"), "lstm.layers.1.h")


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
