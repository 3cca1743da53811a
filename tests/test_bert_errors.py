"""Bad input: every case raises a minipt error whose message names the problem."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from bert_reference import random_batch, tiny_hf_config, transformers
from minipt import cli
from minipt.errors import CheckpointError, CheckpointNotFoundError, ConfigError, InputError, KeyMismatchError, MiniptError
from minipt.models.bert import BertConfig, BertModel


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    transformers.BertModel(tiny_hf_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(saved):
    return BertModel.from_pretrained(saved)


def _copy_config(saved, target):
    target.mkdir(exist_ok=True)
    (target / "config.json").write_text((saved / "config.json").read_text())
    return target


def test_nonexistent_path():
    with pytest.raises(CheckpointNotFoundError, match="/no/such/dir"):
        BertModel.from_pretrained("/no/such/dir")


def test_directory_without_weights(saved, tmp_path):
    _copy_config(saved, tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="holds no weights.*model.safetensors"):
        BertModel.from_pretrained(tmp_path)


def test_directory_without_config(saved, tmp_path):
    (tmp_path / "model.safetensors").symlink_to(saved / "model.safetensors")
    with pytest.raises(ConfigError, match="no config.json"):
        BertModel.from_pretrained(tmp_path)


def test_config_of_another_architecture(saved, tmp_path):
    (tmp_path / "model.safetensors").symlink_to(saved / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(ConfigError, match="'gpt2' model, not 'bert'"):
        BertModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("family, module", [("Roberta", "roberta"), ("DistilBert", "distilbert"), ("Albert", "albert")])
def test_checkpoint_of_another_encoder_family(family, module, tmp_path):
    """RoBERTa's tensors carry BERT's very names, so config.json is what tells them apart; each BERT class names the class to use."""
    from minipt.models.bert import BertForMaskedLM, BertForSequenceClassification

    config = getattr(transformers, f"{family}Config")(vocab_size=40, max_position_embeddings=24, **(
        dict(dim=16, n_layers=1, n_heads=2, hidden_dim=16) if family == "DistilBert" else
        dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)))
    getattr(transformers, f"{family}ForSequenceClassification")(config).save_pretrained(tmp_path)
    for cls in (BertModel, BertForMaskedLM, BertForSequenceClassification):
        with pytest.raises(ConfigError, match=rf"describes a '{module}' model, not 'bert': load it with minipt.models.{module}.{family}ForSequenceClassification"):
            cls.from_pretrained(tmp_path)


def test_unsupported_config_values():
    with pytest.raises(ConfigError, match="num_attention_heads = 4: expected a divisor of hidden_size 30"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ConfigError, match="position_embedding_type = 'relative_key': expected one of 'absolute'"):
        BertConfig(position_embedding_type="relative_key")
    with pytest.raises(ConfigError, match="hidden_act = 'mish': expected one of 'gelu'"):
        BertConfig(hidden_act="mish")
    with pytest.raises(ConfigError, match="is_decoder"):
        BertConfig.from_dict({"model_type": "bert", "is_decoder": True})
    with pytest.raises(ConfigError, match=r"unknown BertConfig field\(s\): hidden_sise"):
        BertConfig.from_dict({}, hidden_sise=3)


def test_missing_extra_and_misshaped_tensors_in_one_error(saved, tmp_path):
    from safetensors import safe_open

    with safe_open(str(saved / "model.safetensors"), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    del state["encoder.layer.1.output.dense.weight"]  # missing
    state["encoder.layer.1.output.dense.extra"] = torch.zeros(3)  # unexpected
    state["pooler.dense.bias"] = torch.zeros(7)  # wrong shape
    save_file(state, str(_copy_config(saved, tmp_path) / "model.safetensors"))
    with pytest.raises(KeyMismatchError) as info:
        BertModel.from_pretrained(tmp_path)
    message = str(info.value)
    assert "missing (1):" in message and "encoder.layer.1.output.dense.weight (32, 37)" in message
    assert "unexpected (1):" in message and "encoder.layer.1.output.dense.extra (3,)" in message
    assert "wrong shape (1):" in message and "pooler.dense.bias: checkpoint has (7,), BertModel expects (32,)" in message


def test_checkpoint_of_a_bigger_model(saved, tmp_path):
    config = tiny_hf_config(num_hidden_layers=3)
    transformers.BertModel(config).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((saved / "config.json").read_text())  # config says 2 layers
    # refused from the names and shapes alone, before any module is built
    with pytest.raises(ConfigError, match=r"num_hidden_layers = 2, but the checkpoint holds 3 \(such as embeddings|num_hidden_layers = 2, but the checkpoint holds 3 \(such as encoder\.layer\.0\."):
        BertModel.from_pretrained(tmp_path)


def test_truncated_safetensors(saved, tmp_path):
    data = (saved / "model.safetensors").read_bytes()
    (_copy_config(saved, tmp_path) / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated or corrupted"):
        BertModel.from_pretrained(tmp_path)


def test_corrupted_safetensors_header(saved, tmp_path):
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[8:40] = b"\xff" * 32  # garbage where the JSON header starts
    (_copy_config(saved, tmp_path) / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        BertModel.from_pretrained(tmp_path)


def test_truncated_pytorch_bin(saved, tmp_path):
    target = _copy_config(saved, tmp_path)
    from safetensors.torch import load_file

    torch.save(load_file(str(saved / "model.safetensors")), target / "pytorch_model.bin")
    data = (target / "pytorch_model.bin").read_bytes()
    (target / "pytorch_model.bin").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is truncated or corrupted"):
        BertModel.from_pretrained(target)


@pytest.mark.parametrize("content, said", [
    (b"\x89PNG\r\n\x1a\n" + bytes(32), "it is a PNG image"),
    (b'{"model_type": "bert"}', r"it is JSON text \(a config\?\)"),
    (b"hello, world", r"torch.save writes a zip archive or a pickle, and it begins with b'hello, w'"),
])
def test_a_file_that_is_no_torch_checkpoint_is_named_for_what_it_is(saved, tmp_path, content, said):
    """Not "holds objects other than tensors; minipt only loads with weights_only=True", which sent users looking
    for pickled objects in a photo or a config."""
    target = _copy_config(saved, tmp_path)
    (target / "pytorch_model.bin").write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"pytorch_model\.bin is not a checkpoint: {said}"):
        BertModel.from_pretrained(target)


def test_config_that_is_not_json(saved, tmp_path):
    (tmp_path / "model.safetensors").symlink_to(saved / "model.safetensors")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        BertModel.from_pretrained(tmp_path)


def test_token_ids_outside_the_vocabulary(model):
    batch = random_batch(model.config)
    batch["input_ids"][1, 2] = 99  # vocab_size is 99
    with pytest.raises(InputError, match="input_ids holds 99, outside the table of 99 entries"):
        model(**batch)
    batch["input_ids"][1, 2] = -1
    with pytest.raises(InputError, match="input_ids holds -1"):
        model(**batch)


def test_token_type_outside_its_table(model):
    batch = random_batch(model.config)
    batch["token_type_ids"][0, 0] = 2
    with pytest.raises(InputError, match="token_type_ids holds 2, outside the table of 2 entries"):
        model(**batch)


def test_sequence_longer_than_the_position_table(model):
    with pytest.raises(InputError, match="sequence length 65 exceeds the position table \\(64 positions\\)"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_input_of_the_wrong_rank_or_type(model):
    with pytest.raises(InputError, match=r"shape \(batch, seq_len\), got torch.int64 \(5,\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(InputError, match="integer token ids"):
        model(torch.zeros(1, 5))


def test_mask_of_the_wrong_shape(model):
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(InputError, match=r"attention_mask has shape \(2, 4\), input_ids \(2, 5\)"):
        model(ids, attention_mask=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(InputError, match=r"a 4-D mask must be an additive float mask .* not torch.bool"):
        model(ids, attention_mask=torch.ones(2, 1, 5, 5, dtype=torch.bool))


def test_unknown_backend(model):
    with pytest.raises(ConfigError, match="unknown backend 'flash'"):
        model.set_backend("flash")
    model.set_backend("fused")  # minipt.ops: available on every device
    model.set_backend(None)


def test_every_error_is_a_minipt_error():
    for error in (CheckpointError, CheckpointNotFoundError, ConfigError, InputError, KeyMismatchError):
        assert issubclass(error, MiniptError)


def test_cli_reports_errors_without_a_traceback(capsys):
    assert cli.main(["inspect", "/no/such/checkpoint"]) == 1
    assert "minipt inspect: /no/such/checkpoint: no such file or directory" in capsys.readouterr().err
