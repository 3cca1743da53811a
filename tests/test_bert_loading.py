"""The variants of the official BERT format found in the wild, and where checkpoints come from."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from bert_reference import MINILM, minilm_path, random_batch, randomize, tiny_hf_config, transformers
from helpers import ATOL, max_diff  # minipt and transformers run the same sdpa kernels here
from minipt.checkpoint import Checkpoint
from minipt.errors import CheckpointError, CheckpointNotFoundError, ConfigError, InputError, KeyMismatchError
from minipt.hub import resolve
from minipt.models.bert import BertForMaskedLM, BertForSequenceClassification, BertModel


@pytest.fixture(scope="module")
def tiny():
    """A random transformers BertModel, its config and its state dict (official names)."""
    config = tiny_hf_config()
    reference = randomize(transformers.BertModel(config)).eval()
    return config, reference, {k: v.clone() for k, v in reference.state_dict().items()}


def write_checkpoint(directory, config, state, fmt="safetensors"):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(config.to_json_string())
    if fmt == "safetensors":
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, directory / "pytorch_model.bin")
    return directory


def assert_same_outputs(model, reference, config):
    batch = random_batch(config)
    with torch.no_grad():
        ours, theirs = model(**batch), reference(**batch)
    assert max_diff(ours.last_hidden_state, theirs.last_hidden_state) <= ATOL
    if ours.pooler_output is not None:
        assert max_diff(ours.pooler_output, theirs.pooler_output) <= ATOL


def test_keys_with_the_bert_prefix(tmp_path, tiny):
    config, reference, state = tiny
    path = write_checkpoint(tmp_path, config, {f"bert.{k}": v for k, v in state.items()})
    assert_same_outputs(BertModel.from_pretrained(path), reference, config)


def test_legacy_gamma_beta_names_in_a_pytorch_bin(tmp_path, tiny):
    config, reference, state = tiny
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in state.items()}
    assert any(k.endswith("gamma") for k in legacy)
    path = write_checkpoint(tmp_path, config, legacy, fmt="bin")
    assert_same_outputs(BertModel.from_pretrained(path), reference, config)


def test_stored_position_ids_buffer(tmp_path, tiny):
    config, reference, state = tiny
    with_buffer = {**state, "embeddings.position_ids": torch.arange(config.max_position_embeddings)[None]}
    path = write_checkpoint(tmp_path, config, with_buffer)
    assert_same_outputs(BertModel.from_pretrained(path), reference, config)


def test_a_pad_token_id_past_the_vocabulary_loads(tmp_path, tiny):
    # transformers saves BertConfig(pad_token_id=...) past a small vocabulary; the id only decides which row
    # gets no gradient, so the file loads and computes what the same weights do.
    config, reference, state = tiny
    past = tiny_hf_config(pad_token_id=config.vocab_size + 10)
    past.save_pretrained(tmp_path)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model = BertModel.from_pretrained(tmp_path)
    assert model.config.pad_token_id == config.vocab_size + 10 and model.embeddings.token.padding_idx is None
    assert_same_outputs(model, reference, config)
    assert BertModel(model.config).embeddings.token.padding_idx is None  # built fresh too
    assert BertModel(model.config.replace(pad_token_id=3)).embeddings.token.weight[3].eq(0).all()  # inside: the zeroed padding row


@pytest.mark.parametrize("kind", ["relative_key", "relative_key_query"])
def test_relative_position_embeddings_are_refused_by_name(tmp_path, tiny, kind):
    # unlike the special ids, these change the attention scores: loading them as absolute would be silently wrong
    config, _, state = tiny
    path = write_checkpoint(tmp_path, tiny_hf_config(position_embedding_type=kind), state)
    with pytest.raises(ConfigError, match=rf"config.json.*position_embedding_type = '{kind}': expected one of 'absolute'"):
        BertModel.from_pretrained(path)


def test_checkpoint_without_pooler(tmp_path):
    config = tiny_hf_config()
    reference = randomize(transformers.BertModel(config, add_pooling_layer=False)).eval()
    reference.save_pretrained(tmp_path)
    model = BertModel.from_pretrained(tmp_path)
    assert model.pooler is None
    out = model(**random_batch(config))
    assert out.pooler_output is None
    assert_same_outputs(model, reference, config)
    with pytest.raises(Exception, match="pooler"):
        BertForSequenceClassification.from_pretrained(tmp_path, init_missing=("classifier",))


def test_old_masked_lm_file_with_decoder_bias_and_weight_stored(tmp_path):
    """Older files carry cls.predictions.decoder.{weight,bias} beside cls.predictions.bias: declared as tied."""
    config = tiny_hf_config()
    reference = randomize(transformers.BertForMaskedLM(config)).eval()
    state = dict(reference.state_dict())
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
    state["cls.seq_relationship.weight"] = torch.randn(2, config.hidden_size)  # a pre-training checkpoint's NSP head
    path = write_checkpoint(tmp_path, config, state, fmt="bin")
    model = BertForMaskedLM.from_pretrained(path)
    batch = random_batch(config)
    with torch.no_grad():
        assert max_diff(model(**batch).logits, reference(**batch).logits) <= ATOL
    # the bare encoder loads the same file, leaving the declared heads aside
    encoder = BertModel.from_pretrained(path)
    with torch.no_grad():
        assert max_diff(encoder(**batch).last_hidden_state, reference.bert(**batch).last_hidden_state) <= ATOL


def test_sharded_safetensors(tmp_path, tiny):
    config, reference, state = tiny
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(config.to_json_string())
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, str(tmp_path / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, part in halves.items() for k in part}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_same_outputs(BertModel.from_pretrained(tmp_path), reference, config)
    assert_same_outputs(BertModel.from_pretrained(tmp_path / "model.safetensors.index.json"), reference, config)  # the index: its shards
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002.safetensors is one shard of a sharded checkpoint .*pass the folder"):
        BertModel.from_pretrained(tmp_path / "model-00001-of-00002.safetensors")
    whole = tmp_path / "whole"  # one shard of one, its index beside it: the file is the whole checkpoint
    whole.mkdir()
    (whole / "config.json").write_text(config.to_json_string())
    save_file(state, str(whole / "model-00001-of-00001.safetensors"), metadata={"format": "pt"})
    (whole / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(state, "model-00001-of-00001.safetensors")}))
    assert_same_outputs(BertModel.from_pretrained(whole / "model-00001-of-00001.safetensors"), reference, config)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_and_device(tmp_path, tiny, dtype):
    config, reference, state = tiny
    path = write_checkpoint(tmp_path, config, state)
    model = BertModel.from_pretrained(path, dtype=dtype, device="cpu")
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    torch.testing.assert_close(model.embeddings.token.weight, state["embeddings.word_embeddings.weight"].to(dtype))


def test_weights_are_memory_mapped_not_copied(tmp_path, tiny):
    """Loading in the checkpoint's dtype hands the memory-mapped tensors to the model: no second copy."""
    config, _, state = tiny
    path = write_checkpoint(tmp_path, config, state)
    model = BertModel.from_pretrained(path)
    size = (path / "model.safetensors").stat().st_size
    weight = model.embeddings.token.weight
    assert not weight.untyped_storage().resizable()  # storage is a view of the file mapping, not an allocation
    assert weight.untyped_storage().nbytes() <= size


def test_fresh_head_on_a_pretrained_encoder(tmp_path, tiny):
    config, reference, state = tiny
    path = write_checkpoint(tmp_path, config, state)
    with pytest.raises(KeyMismatchError, match=r"classifier\.weight"):
        BertForSequenceClassification.from_pretrained(path)
    model = BertForSequenceClassification.from_pretrained(path, init_missing=("classifier",), num_labels=5)
    assert model.classifier.weight.shape == (5, config.hidden_size)
    assert not model.classifier.weight.is_meta and torch.isfinite(model.classifier.weight).all()
    assert_same_outputs(model.bert, reference, config)


def test_torch_load_is_weights_only(tmp_path, tiny):
    config, _, state = tiny
    # any class outside torch's allow-list: full unpickling would import and build it
    path = write_checkpoint(tmp_path, config, {**state, "extra": argparse.Namespace(epoch=3)}, fmt="bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        Checkpoint(path)


def test_hub_repo_id_through_the_offline_cache(tmp_path, tiny):
    """A repo id resolves through huggingface_hub's cache layout with HF_HUB_OFFLINE=1."""
    config, reference, state = tiny
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--minipt-test--tiny-bert"
    write_checkpoint(repo / "snapshots" / revision, config, state)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    legacy = tmp_path / "hub" / "models--tiny-bert-uncased"  # the hub's first models have no owner (gpt2, bert-base-uncased)
    write_checkpoint(legacy / "snapshots" / revision, config, state)
    (legacy / "refs").mkdir()
    (legacy / "refs" / "main").write_text(revision)
    script = (
        "import torch; from minipt.models.bert import BertModel\n"
        "m = BertModel.from_pretrained('minipt-test/tiny-bert')\n"
        "assert torch.equal(BertModel.from_pretrained('tiny-bert-uncased').embeddings.token.weight, m.embeddings.token.weight)\n"
        "print(m.embeddings.token.weight.sum().item())\n"
        "from minipt.hub import resolve\n"
        "try:\n    resolve('minipt-test/not-cached')\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    total, error = result.stdout.strip().splitlines()
    assert abs(float(total) - state["embeddings.word_embeddings.weight"].sum().item()) < 1e-3
    assert error.startswith("CheckpointNotFoundError") and "HF_HUB_OFFLINE" in error and "minipt-test/not-cached" in error


def test_catalogue_name_resolves_and_is_verified(tmp_path, monkeypatch):
    real = minilm_path()
    assert resolve(MINILM) == real
    assert resolve("sentence-transformers/all-MiniLM-L6-v2") == real  # the hub id of a catalogued checkpoint
    with monkeypatch.context() as unfetched:  # not fetched, and the hub out of reach: the catalogue entry is named
        unfetched.setenv("MINIPT_WEIGHTS", str(tmp_path / "empty"))
        with pytest.raises(CheckpointNotFoundError, match=rf"sentence-transformers/all-MiniLM-L6-v2: catalogued as {MINILM} but not fetched "
                                                          rf"\(no .*; `minipt fetch {MINILM}` places it\), and could not get it from the Hugging Face hub"):
            resolve("sentence-transformers/all-MiniLM-L6-v2")
    # a snapshot whose config.json differs from the catalogued one is refused, naming the file
    snapshot = tmp_path / MINILM
    snapshot.mkdir()
    for item in real.iterdir():
        if item.name != "config.json":
            (snapshot / item.name).symlink_to(item)
    config = json.loads((real / "config.json").read_text())
    config["num_hidden_layers"] = 5
    (snapshot / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("MINIPT_WEIGHTS", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"config\.json.*does not match the catalogue"):
        resolve(MINILM)
    with pytest.raises(CheckpointError, match="does not match the catalogue"):
        BertModel.from_pretrained(snapshot)  # named by its path, a catalogued snapshot is verified too
    with pytest.raises(CheckpointError, match="does not match the catalogue"):
        BertModel.from_pretrained(snapshot / "model.safetensors")  # and by the path of a file in it


def test_unknown_name_is_not_found():
    with pytest.raises(CheckpointNotFoundError, match="no-such-model: no such file or directory, not a catalogued name, and could not"):
        resolve("no-such-model")
    with pytest.raises(CheckpointNotFoundError, match="runs/gpt2: no such file or directory, not a catalogued name, and could not"):
        resolve("runs/gpt2")  # a folder not made yet, which could be a repo id too
    for mistyped in ("runs/model.safetensors", "weights/model.bin"):  # files are never hub repo ids
        with pytest.raises(CheckpointNotFoundError, match=f"{mistyped}: no such file or directory, and not a catalogued name or a hub repo id"):
            resolve(mistyped)
    with pytest.raises(InputError, match="got int 3"):
        BertModel.from_pretrained(3)


def test_sharded_pytorch_bin(tmp_path, tiny):
    """transformers 4's sharded .bin layout (pytorch_model.bin.index.json and its shards), and a key that two shards
    hold, which is refused by name whichever the index points at."""
    config, reference, state = tiny
    keys = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2], "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :]}
    (tmp_path / "config.json").write_text(config.to_json_string())
    for name, part in halves.items():
        torch.save({k: state[k] for k in part}, tmp_path / name)
    index = {"metadata": {}, "weight_map": {k: name for name, part in halves.items() for k in part}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert_same_outputs(BertModel.from_pretrained(tmp_path), reference, config)
    doubled = keys[0]
    torch.save({k: state[k] for k in halves["pytorch_model-00002-of-00002.bin"]} | {doubled: state[doubled] + 1}, tmp_path / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(KeyMismatchError, match=f"{doubled} is in two of its files, pytorch_model-00001-of-00002.bin and pytorch_model-00002"):
        BertModel.from_pretrained(tmp_path)


def test_init_missing_starts_afresh_only_what_the_file_lacks(tmp_path, tiny):
    """A module named in init_missing that the file fills in part keeps what the file holds; bad names are named."""
    config, reference, state = tiny
    lost = "encoder.layer.1.output.dense.bias"
    write_checkpoint(tmp_path, config, {k: v for k, v in state.items() if k != lost})
    for name in ("layers.1", "layers.1.ffn_down", "layers"):
        model = BertModel.from_pretrained(tmp_path, init_missing=(name,))
        assert torch.equal(model.layers[1].ffn_down.weight, state["encoder.layer.1.output.dense.weight"]), name
        assert torch.equal(model.layers[0].ffn_down.bias, state["encoder.layer.0.output.dense.bias"]), name
        assert torch.equal(model.layers[1].ffn_down.bias, torch.zeros_like(model.layers[1].ffn_down.bias)), name  # BERT's init
    with pytest.raises(InputError, match=r"init_missing must be a tuple of module names, got str 'pooler' \(one module: init_missing=\('pooler',\)\)"):
        BertModel.from_pretrained(tmp_path, init_missing="pooler")
    with pytest.raises(InputError, match="init_missing names 'poler', which is no submodule of BertModel"):
        BertModel.from_pretrained(tmp_path, init_missing=("poler",))


def test_a_new_head_on_a_half_precision_file_takes_its_dtype(tmp_path, tiny):
    """Built in float32 beside the file's float16 tensors, the head failed inside torch at the first forward."""
    from minipt.models.bert import BertForSequenceClassification

    config, reference, state = tiny
    write_checkpoint(tmp_path, config, {k: v.half() for k, v in state.items()})
    model = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3, init_missing=("classifier",))
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert model(torch.tensor([[1, 2, 3]])).logits.dtype == torch.float16
    assert BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3, init_missing=("classifier",), dtype=torch.float32).classifier.weight.dtype == torch.float32


def test_a_pretraining_checkpoint_under_a_new_classifier(tmp_path):
    """bert-base-uncased's layout (BertForPreTraining: the pooler, the masked-LM and next-sentence heads): the
    classifier fine-tuned from it loads the encoder and pooler and ignores the pre-training heads, as transformers does."""
    config = tiny_hf_config()
    reference = randomize(transformers.BertForPreTraining(config)).eval()
    reference.save_pretrained(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3, init_missing=("classifier",))
    assert_same_outputs(model.bert, reference.bert, config)
    assert model.num_classes == 3


def test_a_pretraining_checkpoint_as_a_masked_lm_has_no_pooler(tmp_path):
    """BertForMaskedLM, as transformers builds it, has no pooler (its loss never reads one, and DDP refuses a
    parameter without a gradient): bert-base-uncased's pooler and next-sentence head are ignored, the logits equal."""
    config = tiny_hf_config()
    reference = randomize(transformers.BertForPreTraining(config)).eval()
    reference.save_pretrained(tmp_path)
    model = BertForMaskedLM.from_pretrained(tmp_path).eval()
    assert model.bert.pooler is None and not any("pooler" in name for name in model.state_dict())
    ids = torch.randint(0, config.vocab_size, (2, 7))
    assert max_diff(model(ids).logits, reference(ids).prediction_logits) < ATOL
    ids[0, 3] = -100
    labels = torch.where(torch.rand(2, 7) < 0.5, ids.clamp(min=0), torch.full_like(ids, -100))
    model.train()(ids.clamp(min=0), labels=labels).loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # every parameter trains: DDP needs no find_unused_parameters


def test_a_masked_lm_checkpoint_under_a_new_classifier_needs_a_fresh_pooler(tmp_path):
    """transformers' BertForMaskedLM saves no pooler, which the classifier reads: the loader names it missing and
    says which init_missing starts it afresh (transformers does so with a warning)."""
    config = tiny_hf_config()
    reference = randomize(transformers.BertForMaskedLM(config)).eval()
    reference.save_pretrained(tmp_path)
    with pytest.raises(KeyMismatchError, match=r"(?s)bert\.pooler\.dense\.weight .*init_missing=\('classifier', 'bert\.pooler'\)"):
        BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3, init_missing=("classifier",))
    model = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3, init_missing=("classifier", "bert.pooler"))
    batch = random_batch(config)
    with torch.no_grad():
        assert max_diff(model.bert(**batch).last_hidden_state, reference.bert(**batch).last_hidden_state) <= ATOL
        assert model(**batch).logits.shape == (batch["input_ids"].shape[0], 3)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "albert"])
def test_the_bare_encoder_of_a_fine_tuned_classifier(tmp_path, family):
    """A checkpoint of a sequence classifier loads as the bare encoder, its head ignored, as transformers does
    (minipt attention and embed take such checkpoints)."""
    import importlib

    prefix = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert", "albert": "Albert"}[family]
    sizes = dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64) if family == "distilbert" else \
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, embedding_size=16)
    config = transformers.AutoConfig.for_model(family, vocab_size=120, max_position_embeddings=64, num_labels=3, **sizes)
    reference = randomize(getattr(transformers, prefix + "ForSequenceClassification")(config)).eval()
    reference.save_pretrained(tmp_path)
    model = getattr(importlib.import_module(f"minipt.models.{family}"), prefix + "Model").from_pretrained(tmp_path)
    ids = torch.randint(3, 120, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert max_diff(model(ids).last_hidden_state, getattr(reference, reference.base_model_prefix)(ids).last_hidden_state) <= ATOL


def test_what_transformers_files_carry_and_what_a_head_keeps(tmp_path):
    """transformers loads files with an embeddings.token_type_ids buffer into all four families, minipt only into
    ALBERT; num_labels equal to the file's head dropped its label names; a masked-LM head's labels were checked for
    shape only (float labels or ids past the vocabulary reached torch's RuntimeError and IndexError)."""
    import safetensors.torch

    from minipt.errors import InputError
    from minipt.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel

    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        id2label={0: "neg", 1: "neu", 2: "pos"})
    folder = BertForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    weights = safetensors.torch.load_file(folder / "model.safetensors")
    weights["bert.embeddings.token_type_ids"] = torch.zeros(1, 512, dtype=torch.long)
    safetensors.torch.save_file(weights, folder / "model.safetensors")
    BertModel.from_pretrained(folder)
    assert BertForSequenceClassification.from_pretrained(folder, num_labels=3).config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    encoder = BertModel.from_pretrained(folder).save_pretrained(tmp_path / "encoder")  # the same names, without the head
    (encoder / "config.json").write_text((folder / "config.json").read_text().replace('"BertForSequenceClassification"', '"BertModel"'))
    assert BertForSequenceClassification.from_pretrained(encoder, num_labels=2, init_missing=("classifier",)).config.id2label is None
    # transformers' fine-tuning call passes both maps; label2id reads as transformers' config gives it
    names = {0: "a", 1: "b"}
    both = BertForSequenceClassification.from_pretrained(encoder, num_labels=2, id2label=names, label2id={"a": 0, "b": 1}, init_missing=("classifier",))
    assert both.config.id2label == names and both.config.label2id == {"a": 0, "b": 1}
    assert BertForSequenceClassification.from_pretrained(encoder, num_labels=2, init_missing=("classifier",)).config.label2id == {"LABEL_0": 0, "LABEL_1": 1}
    with pytest.raises(ConfigError, match=r"label2id \{'a': 1\} must be the inverse of id2label"):
        BertForSequenceClassification.from_pretrained(encoder, num_labels=2, id2label=names, label2id={"a": 1}, init_missing=("classifier",))
    mlm = BertForMaskedLM(config).eval()
    ids = torch.randint(0, 60, (2, 5))
    for labels, message in ((ids.float(), "labels must be integer token ids"), (torch.full((2, 5), 60), "labels holds 60, not a token id in \\[0, 59\\]"),
                            (torch.full((2, 5), -5), "labels holds -5")):
        with pytest.raises(InputError, match=message):
            mlm(ids, labels=labels)
    assert mlm(ids, labels=torch.where(ids > 30, ids, torch.full_like(ids, -100))).loss is not None
