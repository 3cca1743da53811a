"""minipt.summary: parameter counts against the reference models, FLOPs against FlopCounterMode on
the reference models and against counts by hand, meta against real tensors, and ``minipt inspect``."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bert_reference import minilm_path, tiny_hf_config, transformers
from minipt import cli
from minipt.checkpoint import Checkpoint
from minipt.errors import InputError
from minipt.hub import resolve
from minipt.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel
from minipt.models.char_lm import CharLM, CharLMConfig
from minipt.models.crnn import CRNN
from minipt.models.efficientnet import EfficientNet, EfficientNetConfig
from minipt.models.g2p import G2P
from minipt.models.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model
from minipt.models.resnet import resnet18, resnet50
from minipt.summary import count_flops, example_inputs, parse_size, summary


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() yields a tied tensor once


def reference_flops(model: nn.Module, *inputs) -> int:
    """FlopCounterMode on a whole reference model, no help from minipt."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops()


def bert_config(hf_config) -> BertConfig:
    return BertConfig.from_dict(hf_config.to_dict())


# -- parameters ------------------------------------------------------------------
def test_bert_and_heads_count_the_parameters_transformers_does():
    hf = tiny_hf_config()
    assert summary(BertModel(bert_config(hf)), torch.zeros(1, 8, dtype=torch.long)).total_params == n_params(transformers.BertModel(hf))
    config = bert_config(hf)
    config.add_pooling_layer = False  # transformers' masked-LM model has no pooler
    mlm = summary(BertForMaskedLM(config), torch.zeros(1, 8, dtype=torch.long))
    assert mlm.total_params == n_params(transformers.BertForMaskedLM(hf))  # the tied decoder weight once
    assert ("bert.embeddings.token.weight", "head.decoder.weight") in mlm.tied
    rows = {row.name: row for row in mlm.rows}
    assert rows["head"].params + rows["bert"].params - mlm.total_params == hf.vocab_size * hf.hidden_size  # shown in both rows


def test_real_minilm_parameters_on_meta():
    path = minilm_path()
    config = BertModel.load_config(path, Checkpoint(path))  # the header only
    with torch.device("meta"):
        model = BertModel(config)
    report = summary(model, example_inputs(model))
    assert report.device == "meta" and report.total_params == 22_713_216
    assert report.total_params == n_params(transformers.BertModel.from_pretrained(str(path)))


def test_gpt2_counts_the_parameters_transformers_does():
    hf = transformers.GPT2Config(vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=100, eos_token_id=100)
    config = GPT2Config.from_dict(hf.to_dict())
    ids = torch.zeros(1, 8, dtype=torch.long)
    assert summary(GPT2Model(config), ids).total_params == n_params(transformers.GPT2Model(hf))
    assert summary(GPT2LMHeadModel(config), ids).total_params == n_params(transformers.GPT2LMHeadModel(hf))  # lm_head tied


@pytest.mark.parametrize("ours, theirs", [(resnet18, "resnet18"), (resnet50, "resnet50")])
def test_resnet_matches_torchvision(ours, theirs):
    import torchvision.models.resnet as tv

    with torch.device("meta"):
        model, reference = ours(), getattr(tv, theirs)()
    x = torch.zeros(2, 3, 224, 224, device="meta")
    report = summary(model, x)
    assert report.total_params == n_params(reference)
    assert report.total_flops == reference_flops(reference, x)


def test_efficientnet_lite0_matches_timm():
    import timm

    with torch.device("meta"):
        model, reference = EfficientNet(EfficientNetConfig.lite("lite0")), timm.create_model("tf_efficientnet_lite0", pretrained=False)
    x = torch.zeros(1, 3, 224, 224, device="meta")
    report = summary(model, x)
    assert report.total_params == n_params(reference) == 4_652_008
    assert report.total_flops == reference_flops(reference, x)


def test_char_lm_against_torch_nn_lstm_and_by_hand():
    config = CharLMConfig(embed_size=16, hidden_size=32, num_layers=2)
    model = CharLM(config)
    reference = nn.ModuleList([nn.Embedding(256, 16), nn.LSTM(16, 32, num_layers=2), nn.Linear(32, 256)])
    B, T, I, H = 2, 10, 16, 32
    report = summary(model, torch.zeros(B, T, dtype=torch.long))
    assert report.total_params == n_params(reference)
    # each LSTM layer: one (B, in) x (in, 4H) and one (B, H) x (H, 4H) multiply per step; then the head
    by_hand = 2 * T * B * 4 * H * (I + H) + 2 * T * B * 4 * H * (H + H) + 2 * B * T * H * 256
    assert report.total_flops == by_hand
    with torch.device("meta"):  # torch.nn.LSTM's CPU kernel has no FLOP formula; on meta it decomposes into matmuls
        lstm = nn.LSTM(16, 32, num_layers=2)
    assert reference_flops(lstm, torch.zeros(T, B, I, device="meta")) == by_hand - 2 * B * T * H * 256


# -- FLOPs ------------------------------------------------------------------------
def test_one_layer_bert_flops_by_hand():
    B, T, H, I, heads = 2, 12, 32, 48, 4
    D = H // heads
    model = BertModel(BertConfig(vocab_size=50, hidden_size=H, num_hidden_layers=1, num_attention_heads=heads, intermediate_size=I))
    report = summary(model, torch.zeros(B, T, dtype=torch.long))
    projections = 2 * B * T * (4 * H * H + 2 * H * I)  # q, k, v, out (H x H each); feed-forward up and down (H x I)
    attention = 2 * 2 * B * heads * T * T * D  # q k^T and probs v, per head
    pooler = 2 * B * H * H  # dense on the [CLS] token
    assert report.total_flops == projections + attention + pooler
    rows = {row.name: row for row in report.rows}
    assert rows["layers.0.attn"].flops == 2 * B * T * 4 * H * H + attention
    assert rows["layers"].flops == rows["layers.0"].flops == projections + attention  # a ModuleList: the sum of its layers
    assert rows[""].flops == report.total_flops


def test_bert_and_gpt2_flops_match_transformers_on_cpu_and_meta():
    hf = tiny_hf_config(num_hidden_layers=2, attn_implementation="eager")
    ours, theirs = BertModel(bert_config(hf)), transformers.BertModel(hf).eval()
    assert theirs.config._attn_implementation == "eager"
    ids = torch.randint(0, hf.vocab_size, (2, 16))
    expected = reference_flops(theirs, ids)  # eager attention: plain matmuls that FlopCounterMode counts
    assert summary(ours, ids).total_flops == count_flops(ours, ids) == expected  # CPU: torch's attention kernel
    with torch.device("meta"):
        on_meta = BertModel(bert_config(hf))
    assert summary(on_meta, ids.to("meta")).total_flops == expected

    hf2 = transformers.GPT2Config(vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=100, eos_token_id=100, attn_implementation="eager")
    gpt2, reference = GPT2Model(GPT2Config.from_dict(hf2.to_dict())), transformers.GPT2Model(hf2).eval()
    ids = torch.randint(0, 101, (1, 20))
    assert summary(gpt2, ids).total_flops == reference_flops(reference, ids)


def test_vit_flops_by_hand_and_as_transformers_counts_them():
    """The patch embedding is a convolution (one matmul per patch), then BERT's layer over the patches and [CLS]."""
    from minipt.models.vit import ViTConfig, ViTForImageClassification

    B, H, I, heads, side, patch, labels = 2, 32, 48, 4, 24, 8, 5
    N = (side // patch) ** 2 + 1  # patches and [CLS]
    config = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=heads, intermediate_size=I, image_size=side, patch_size=patch, num_labels=labels)
    pixels = torch.randn(B, 3, side, side)
    report = summary(ViTForImageClassification(ViTConfig(**config)), pixels)
    patches = 2 * B * (N - 1) * (3 * patch * patch) * H
    layer = 2 * B * N * (4 * H * H + 2 * H * I) + 2 * 2 * B * N * N * H  # projections and feed-forward; q k^T and probs v over all heads
    assert report.total_flops == patches + 2 * layer + 2 * B * H * labels
    reference = transformers.ViTForImageClassification(transformers.ViTConfig(**config, attn_implementation="eager")).eval()
    assert report.total_flops == reference_flops(reference, pixels)


def test_clip_flops_as_transformers_counts_them():
    from minipt.models.clip import CLIPConfig, CLIPModel

    text = dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=10,
                bos_token_id=38, eos_token_id=39, pad_token_id=1)
    vision = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=12, patch_size=4)
    ids, pixels = torch.randint(2, 38, (3, 7)), torch.randn(2, 3, 12, 12)
    ids[:, -1] = 39  # each caption ends with its end-of-text token, where the text tower pools
    ours = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=6))
    theirs = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=6, attn_implementation="eager")).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        theirs(input_ids=ids, pixel_values=pixels)
    assert summary(ours, (ids, pixels)).total_flops == counter.get_total_flops() > 0


def test_meta_and_cpu_give_the_same_rows():
    model = CRNN()
    on_cpu = summary(model, example_inputs(model, "1x1x64x64"))
    with torch.device("meta"):
        meta_model = CRNN()
    on_meta = summary(meta_model, example_inputs(meta_model, "1x1x64x64"))
    as_tuples = lambda report: [(r.name, r.output_shape, r.params, r.flops, r.calls) for r in report.rows]  # noqa: E731
    assert as_tuples(on_cpu) == as_tuples(on_meta)
    assert on_cpu.total_flops > 0 and on_meta.device == "meta"
    rows = {row.name: row for row in on_meta.rows}
    assert rows["sequence.0.lstm"].flops > 0  # the recurrent multiplies are counted


def test_rows_follow_the_data():
    model = resnet18()
    report = summary(model, example_inputs(model, "1x3x64x64"))
    names = [row.name for row in report.rows if row.depth == 1]
    assert names == ["stem", "stages", "pool", "head"]
    block = [row.name for row in report.rows if row.name.startswith("stages.1.0.")]
    assert block[:3] == ["stages.1.0.shortcut", "stages.1.0.shortcut.conv", "stages.1.0.shortcut.bn"]  # the identity path runs first
    relu = next(row for row in report.rows if row.name == "stages.0.0.relu")
    assert relu.calls == 2 and "x2" in report.table(depth=None)
    assert report.rows[0].output_shape == (1, 1000)
    shallow, deep = report.table(depth=1), report.table(depth=None)
    assert "stem (Stem)" in shallow and "conv (Conv2d)" not in shallow and "conv1 (Conv2d)" in deep


def test_example_inputs_for_every_family():
    for model, size in [
        (BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)), "1x6"),
        (CharLM(CharLMConfig(embed_size=4, hidden_size=8, num_layers=1)), "2x5"),
        (G2P.from_pretrained(resolve("g2p-en")), "1x7"),
    ]:
        assert summary(model, example_inputs(model, size)).total_flops > 0
    g2p = G2P.from_pretrained(resolve("g2p-en"))
    assert summary(g2p, example_inputs(g2p)).total_params == 834_890  # DATA.md: g2p-en's parameter count


def test_bad_sizes_are_named():
    assert parse_size("1x3x224x224") == (1, 3, 224, 224)
    for bad in ("", "1x", "axb", "1x0", "-1x3"):
        with pytest.raises(InputError, match="input size"):
            parse_size(bad)
    model = resnet18()
    with pytest.raises(InputError, match="4 dimensions"):
        example_inputs(model, "1x128")
    with pytest.raises(InputError, match="no default inputs"):
        example_inputs(nn.Linear(2, 2))
    with pytest.raises(InputError, match="torch.nn.Module"):
        summary("resnet", torch.zeros(1))


# -- input_size (torchinfo's argument) ---------------------------------------------
def test_input_size_builds_the_inputs_a_model_reads():
    bert = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
    ids = torch.zeros(2, 6, dtype=torch.long)
    by_size = summary(bert, input_size=(2, 6))
    assert by_size.inputs == {"input_ids": (2, 6)} and by_size.total_flops == summary(bert, ids).total_flops
    assert summary(bert, input_size="2x6").total_flops == summary(bert, input_size=[(2, 6)]).total_flops == by_size.total_flops
    assert summary(bert).inputs == {"input_ids": (1, 128)}  # a minipt model without inputs: its family's default
    model = resnet18()
    assert summary(model, input_size=torch.Size([1, 3, 64, 64])).total_flops == summary(model, torch.zeros(1, 3, 64, 64)).total_flops
    g2p = G2P.from_pretrained(resolve("g2p-en"))
    assert summary(g2p, input_size=[(1, 7), (1, 4)]).inputs == {"letter_ids": (1, 7), "phoneme_ids": (1, 4)}


def test_input_size_of_any_module_gives_floats_of_its_dtype():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).to(torch.float64)
    report = summary(mlp, input_size=(3, 4))
    assert report.total_flops == 2 * 3 * (4 * 8 + 8 * 2) and report.rows[0].output_shape == (3, 2)  # float64 ran: no dtype error
    two = summary(nn.Bilinear(4, 5, 3), input_size=[(2, 4), (2, 5)])
    assert two.inputs == {"input1": (2, 4), "input2": (2, 5)} and two.rows[0].output_shape == (2, 3)


def test_flops_are_labelled_as_twice_the_multiply_adds():
    report = summary(nn.Linear(4, 8, bias=False), input_size=(3, 4))
    text = str(report)
    assert text.splitlines()[0].split()[-2:] == ["FLOPs", "(2xMACs)"]
    assert report.total_flops == 2 * 3 * 4 * 8 and f"forward FLOPs: {2 * 96} " in text and "96 MACs" in text


@pytest.mark.parametrize(
    "bad, message",
    [
        ((1, 0, 3), "every dimension must be at least 1"),
        ((1.5, 3), "give one shape with the batch dimension"),
        ([(1, 2), "x"], "input size .x.: write it"),
        ([(1, 2), 3], "give one shape"),
        ([], "give one shape"),
        ((True, 2), "give one shape"),
        ("1x", "write it as positive integers"),
    ],
)
def test_bad_input_size_is_named(bad, message):
    with pytest.raises(InputError, match=message):
        summary(nn.Linear(2, 2), input_size=bad)


def test_input_size_errors_of_minipt_models():
    model = resnet18()
    with pytest.raises(InputError, match="4 dimensions"):
        summary(model, input_size=(1, 128))
    with pytest.raises(InputError, match=r"ResNet reads images .* one input size such as 1x3x224x224, not 2"):
        summary(model, input_size=[(1, 3, 8, 8), (1, 3, 8, 8)])
    with pytest.raises(InputError, match="example_inputs or input_size, not both"):
        summary(model, torch.zeros(1, 3, 8, 8), input_size=(1, 3, 8, 8))
    with pytest.raises(InputError, match=r"no default inputs for Linear; pass example_inputs \(tensors\) or input_size"):
        summary(nn.Linear(2, 2))


# -- the command line ---------------------------------------------------------------
def test_inspect_prints_the_summary_and_key_map(capsys):
    assert cli.main(["inspect", str(minilm_path()), "--input-size", "2x64", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "BertModel from" in out and "input: input_ids (2, 64) on meta" in out
    assert re.search(r"^BertModel +\[2, 64, 384\] +22,713,216 ", out, flags=re.M)
    assert re.search(r"^    0 \(EncoderLayer\) +\[2, 64, 384\]", out, flags=re.M) and "q_proj (Linear)" not in out
    H, I, B, T = 384, 1536, 2, 64
    expected = 6 * (2 * B * T * (4 * H * H + 2 * H * I) + 2 * 2 * B * 12 * T * T * 32) + 2 * B * H * H
    assert f"forward FLOPs: {expected:,}" in out
    assert "encoder.layer.0.attention.self.query.weight (384, 384) -> layers.0.attn.q_proj.weight" in out


def test_inspect_bad_input_size(capsys):
    assert cli.main(["inspect", str(minilm_path()), "--input-size", "1x3x224x224"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "BertModel reads token ids" in err
    assert cli.main(["inspect", str(minilm_path()), "--input-size", "1x9999"]) == 1
    assert "exceeds the position table" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["efficientnet_lite0", "easyocr-english-g2", "g2p-en"])
def test_official_checkpoints_hold_the_parameters_counted(name, capsys):
    """The parameters counted on the meta model = the checkpoint's tensors, less BatchNorm's running statistics."""
    checkpoint = Checkpoint(resolve(name))
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    stored = sum(torch.Size(checkpoint.shape(k)).numel() for k in checkpoint.keys() if not k.endswith(buffers))
    assert cli.main(["inspect", name, "--depth", "1"]) == 0
    assert f"parameters: {stored:,} " in capsys.readouterr().out


def test_g2p_gru_flops_by_hand():
    model = G2P.from_pretrained(resolve("g2p-en"))
    B, T, E, H, P = 1, 9, 256, 256, len(model.config.phonemes)
    gru = 2 * T * B * 3 * H * (E + H)  # per step: (B, E) x (E, 3H) and (B, H) x (H, 3H), gates r, z, n
    assert summary(model, example_inputs(model, f"{B}x{T}")).total_flops == 2 * gru + 2 * B * T * H * P


@pytest.mark.parametrize("family", __import__("minipt").registry.families(), ids=lambda f: f.model_type)
def test_every_family_says_what_it_reads_and_summary_runs_on_its_default_size(family):
    assert family.reads is not None, f"{family.module}'s register(...) declares no reads=Reads(...)"
    for cls in family.classes:
        model = family.tiny_model(cls)
        size = family.reads.default_size(model)
        if len(size.split("x")) == 2:  # token ids: a length the tiny model's position table holds
            size = "1x8"
        table = summary(model, input_size=size)
        assert table.rows and table.total_params == sum(p.numel() for p in model.parameters())


def test_a_clip_model_runs_both_towers_by_default():
    """From a size alone (minipt inspect), a CLIPModel gets blank images of its tower's size beside the captions, so
    the image tower's FLOPs are counted too (it showed none)."""
    from minipt.models.clip import CLIPModel, tiny_config

    report = summary(CLIPModel(tiny_config()))
    rows = {row.name: row for row in report.rows}
    assert rows["vision_model"].flops > 0 and rows["text_model"].flops > 0
    assert report.inputs == {"input_ids": (1, 12), "pixel_values": (1, 3, 16, 16)}
    sized = summary(CLIPModel(tiny_config()), input_size="2x5")
    assert sized.inputs == {"input_ids": (2, 5), "pixel_values": (2, 3, 16, 16)}


def test_every_module_keeps_its_mode():
    """summary runs in eval mode, then puts every module back in its own mode: a model training with frozen
    stages (BatchNorm held in eval) kept only its top-level flag, and each BatchNorm came back training."""
    from minipt import transfer
    from minipt.models.resnet import ResNet, ResNetConfig

    model = ResNet(ResNetConfig("basic", (1, 1, 1, 1), num_classes=5)).train()
    transfer.freeze_up_to(model, "stages.1")
    modes = {name: module.training for name, module in model.named_modules()}
    assert not all(modes.values()) and any(modes.values())
    summary(model, input_size="1x3x32x32")
    assert {name: module.training for name, module in model.named_modules()} == modes


def test_a_module_its_parent_calls_piece_by_piece_counts_what_is_inside_it():
    """CRAFT's stages are called block by block: their rows showed 0 FLOPs and the top-level rows added up to 3.8M of
    7.35M (12.8G of 46.6G on the real detector). Every row now holds what the modules inside it count, and the
    children of the model add up to the total."""
    from minipt.models.craft import CRAFT
    from minipt.registry import family_of

    with torch.device("meta"):
        model = CRAFT(family_of(CRAFT).tiny())
    report = summary(model, torch.zeros(1, 3, 64, 64, device="meta"), depth=None)
    rows = {row.name: row for row in report.rows}
    assert sum(row.flops for row in report.rows if row.depth == 1) == report.total_flops
    assert sum(row.flops for row in report.rows if row.kind == "Conv2d") == report.total_flops
    for row in report.rows:
        children = [r for r in report.rows if r.depth == row.depth + 1 and r.name.startswith(row.name + ".") and "." not in r.name[len(row.name) + 1:]]
        if children and row.calls == 0:
            assert row.flops == sum(child.flops for child in children), row.name
    assert rows["stages.1"].flops > 0


def test_a_fused_copy_is_refused_by_name():
    """A fuse() copy's packed weights are no parameters and its oneDNN products count 0 FLOPs (the first call counted
    the kernel choice's timing runs instead: 23.4G for MiniLM's 0.69G): summary and count_flops name it."""
    from minipt.errors import ConfigError

    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).eval()
    ids = torch.randint(0, 50, (1, 8))
    with pytest.raises(ConfigError, match="BertModel is or holds a fuse\\(\\) copy.*count the model before fuse\\(\\)"):
        summary(model.fuse(), ids)
    with pytest.raises(ConfigError, match=r"count_flops .* holds a fuse\(\) copy \(at '0'\)"):
        count_flops(nn.Sequential(model.fuse()), ids)
    assert count_flops(model, ids) > 0


def test_every_row_counts_the_flops_of_the_modules_inside_it():
    """A row's FLOPs include those of every module inside it, also one its parent calls outside its own call (T5's
    decoder stack computes each layer's cross-attention keys and values once: they counted in no layer's row), and
    the model's row is the total; on a tiny model of every registered class."""
    from minipt import registry

    for family in registry.families():
        for cls in family.classes:
            torch.manual_seed(0)
            model = family.tiny_model(cls)
            args, kwargs = family.inputs(cls)
            report = summary(model, (*args, kwargs) if kwargs else args, depth=None)
            assert report.rows[0].flops == report.total_flops > 0, cls.__name__
            for row in report.rows:
                prefix = row.name + "." if row.name else ""
                children = [r for r in report.rows if r.depth == row.depth + 1 and r.name.startswith(prefix)]
                assert sum(child.flops for child in children) <= row.flops, (cls.__name__, row.name)


def test_every_text_model_counts_the_same_on_the_meta_device():
    """A text model built on the meta device counts what it counts on the CPU, on its family's example inputs (padding
    masks included: BERT's and T5's attention read the mask's values, which meta tensors do not have)."""
    from minipt import registry

    for family in registry.families():
        for cls in family.classes:
            args, kwargs = family.inputs(cls)
            if args[0].is_floating_point():  # images
                continue
            inputs = (*args, kwargs) if kwargs else args
            torch.manual_seed(0)
            expected = summary(family.tiny_model(cls), inputs).total_flops
            with torch.device("meta"):
                model = family.tiny_model(cls)
            assert summary(model, inputs).total_flops == expected > 0, cls.__name__
    with torch.device("meta"):  # labels too: their values are not read on meta
        model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    ids = torch.randint(0, 50, (2, 6))
    assert summary(model, {"input_ids": ids, "labels": ids}).total_flops > 0
    assert summary(model, {"input_ids": ids[:, :1], "attention_mask": torch.ones(2, 1, dtype=torch.long)}).total_flops > 0  # one token
    with torch.device("meta"):
        classifier = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                              intermediate_size=32, num_labels=3))
    assert summary(classifier, {"input_ids": ids, "labels": torch.tensor([0, 2])}).total_flops > 0
