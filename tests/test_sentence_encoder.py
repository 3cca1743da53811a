"""SentenceEncoder against sentence-transformers: on the real all-MiniLM-L6-v2 snapshot, and on random models of
every other text encoder family (RoBERTa, DistilBERT, ALBERT) that transformers builds."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from bert_reference import minilm_path, randomize, transformers
from encoder_snapshots import FAMILIES, save_snapshot
from helpers import ATOL, rel_diff
from minipt import SentenceEncoder, Tokenizer, registry, transfer
from minipt.errors import ConfigError
from minipt.models.sentence import pool

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "words " * 400,  # longer than max_seq_length (256): truncated like the reference
]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def reference():
    import sentence_transformers  # the reference (part of the test extra)

    return sentence_transformers.SentenceTransformer(str(minilm_path()), device="cpu")


def test_reads_the_snapshot_pipeline(encoder):
    assert encoder.pooling == "mean" and encoder.normalize and encoder.max_seq_length == 256


@pytest.mark.parametrize("normalize", [True, False])
def test_embeddings_match_sentence_transformers(encoder, reference, normalize):
    ours = encoder.encode(SENTENCES, batch_size=4, normalize=normalize)
    if not normalize:  # the reference pipeline without its Normalize module
        reference = type(reference)(modules=[reference[0], reference[1]], device="cpu")
    theirs = torch.from_numpy(reference.encode(SENTENCES, batch_size=4))
    assert normalize == torch.allclose(theirs.norm(dim=-1), torch.ones(()))
    assert ours.shape == (len(SENTENCES), 384)
    assert (ours - theirs).abs().max() <= ATOL  # both run transformers' kernels (sdpa attention) on the same weights


def test_single_sentence_and_order(encoder):
    batch = encoder.encode(SENTENCES[:3], batch_size=1)
    assert encoder.encode(SENTENCES[1]).shape == (384,)
    # Batches of other sizes pad and mask differently, so the matmuls and attention run on other shapes and
    # round differently: 1e-5 relative to the largest component (a few float32 ulps of the unit vector's
    # largest entry); a sentence paired with another's embedding would differ by the values' own size.
    assert rel_diff(encoder.encode(SENTENCES[1]), batch[1]) <= 1e-5
    assert rel_diff(encoder.encode(SENTENCES[:3], batch_size=2), batch) <= 1e-5


def test_pooling_modes():
    vectors = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])  # the third token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool(vectors, mask, "mean"), torch.tensor([[2.0, 4.0]]))
    assert torch.equal(pool(vectors, mask, "max"), torch.tensor([[3.0, 6.0]]))
    assert torch.equal(pool(vectors, mask, "cls"), torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(pool(vectors, mask, "mean_sqrt_len"), torch.tensor([[4.0, 8.0]]) / 2**0.5)


def test_unknown_pooling(encoder):
    with pytest.raises(ConfigError, match="pooling 'weighted'"):
        SentenceEncoder(encoder.encoder, encoder.tokenizer, pooling="weighted")


# -- every text encoder family: random models transformers builds, in sentence-transformers folders ------------
ENCODER_FAMILIES = [family for family in registry.families() if family.model_type in FAMILIES]  # RoBERTa, DistilBERT, ALBERT
MAX_SEQ_LENGTH = 24
TEXTS = ["hello world", "Café 🙂, naïve ÀÉ", "日本語", "a much longer sentence, " * 12, ""]  # the fourth is truncated


@pytest.fixture(scope="module")
def encoder_folders(tmp_path_factory):
    """model_type -> a folder holding a random transformers model of the family (every parameter random) and the
    family's tokenizer snapshot, as ``save_pretrained`` writes them; no sentence-transformers files yet."""
    root = tmp_path_factory.mktemp("text-encoders")
    folders = {}
    for seed, family in enumerate(ENCODER_FAMILIES):
        folder = save_snapshot(family.model_type, root / family.model_type)
        fields = dataclasses.replace(family.tiny(), vocab_size=Tokenizer.from_pretrained(folder).vocab_size, max_position_embeddings=64).to_dict()
        config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)  # the official config.json fields
        randomize(transformers.AutoModel.from_config(config), seed).save_pretrained(str(folder))
        folders[family.model_type] = folder
    return folders


def as_pipeline(folder: Path, directory: Path, pooling: str, normalize: bool) -> Path:
    """A copy of ``folder`` made a sentence-transformers pipeline: Transformer -> Pooling (``pooling``) -> Normalize."""
    pipeline = shutil.copytree(folder, directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (pipeline / "2_Normalize").mkdir()
    flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
             "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}  # sentence-transformers' Pooling arguments
    width = json.loads((folder / "config.json").read_text())
    width = width.get("hidden_size", width.get("dim"))
    (pipeline / "1_Pooling").mkdir()
    (pipeline / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": width, **{f: mode == pooling for mode, f in flags.items()}}))
    (pipeline / "modules.json").write_text(json.dumps(modules))
    (pipeline / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False}))
    return pipeline


def sentence_transformers_encode(folder: Path) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer  # the reference (part of the test extra)

    return torch.from_numpy(SentenceTransformer(str(folder), device="cpu").encode(TEXTS, batch_size=2))


# each family twice, each pooling mode at least once (the pooling itself is one function for every encoder: test_pooling_modes)
PIPELINES = [("roberta", "mean", True), ("roberta", "cls", False), ("distilbert", "max", True), ("distilbert", "mean_sqrt_len", False),
             ("albert", "mean", False), ("albert", "max", True)]


@pytest.mark.parametrize("model_type, pooling, normalize", PIPELINES)
def test_every_encoder_family_embeds_as_sentence_transformers(encoder_folders, model_type, pooling, normalize, tmp_path):
    family = next(family for family in ENCODER_FAMILIES if family.model_type == model_type)
    pipeline = as_pipeline(encoder_folders[model_type], tmp_path / "pipeline", pooling, normalize)
    encoder = SentenceEncoder.from_pretrained(pipeline)
    assert type(encoder.encoder) is family.classes[0]  # the family's bare model, found from config.json
    assert (encoder.pooling, encoder.normalize, encoder.max_seq_length) == (pooling, normalize, MAX_SEQ_LENGTH)
    ours, theirs = encoder.encode(TEXTS, batch_size=2), sentence_transformers_encode(pipeline)
    assert ours.shape == (len(TEXTS), family.tiny().hidden_size) and not torch.allclose(ours[0], ours[1])
    assert (ours - theirs).abs().max() <= ATOL


@pytest.mark.parametrize("family", ENCODER_FAMILIES, ids=lambda family: family.model_type)
def test_every_encoder_family_saves_its_pipeline(encoder_folders, family, tmp_path):
    encoder = SentenceEncoder.from_pretrained(as_pipeline(encoder_folders[family.model_type], tmp_path / "pipeline", "mean_sqrt_len", True))
    saved = encoder.save_pretrained(tmp_path / "saved")
    reloaded = SentenceEncoder.from_pretrained(saved)
    assert type(reloaded.encoder) is family.classes[0] and (reloaded.pooling, reloaded.normalize) == ("mean_sqrt_len", True)
    assert torch.equal(reloaded.encode(TEXTS), encoder.encode(TEXTS))
    assert (reloaded.encode(TEXTS, batch_size=2) - sentence_transformers_encode(saved)).abs().max() <= ATOL
    assert transfer.stages(encoder) == transfer.stages(encoder.encoder)  # the encoder's stages, under encoder.
    transfer.freeze(encoder, "embeddings")
    assert not encoder.encoder.embeddings.token.weight.requires_grad
    assert all(p.requires_grad for name, p in encoder.encoder.named_parameters() if not name.startswith(("embeddings.", "encoder.mapping_in.")))


def test_a_plain_checkpoint_embeds_as_sentence_transformers_builds_one(encoder_folders):
    """No pipeline files: mean pooling, no normalisation, truncation at the longest input the model and tokenizer take."""
    folder = encoder_folders["roberta"]
    encoder = SentenceEncoder.from_pretrained(folder)
    assert (encoder.pooling, encoder.normalize, encoder.max_seq_length) == ("mean", False, 62)  # 64 positions, from pad_token_id + 1
    short = TEXTS[:3]
    from sentence_transformers import SentenceTransformer

    theirs = torch.from_numpy(SentenceTransformer(str(folder), device="cpu").encode(short, batch_size=2))
    assert (encoder.encode(short, batch_size=2) - theirs).abs().max() <= ATOL


def test_a_checkpoint_of_another_model_is_named(tmp_path):
    gpt2 = next(family for family in registry.families() if family.model_type == "gpt2")
    gpt2.tiny_model().save_pretrained(tmp_path / "gpt2")
    message = rf"holds a {gpt2.classes[0].__name__} checkpoint; SentenceEncoder pools the token vectors of a text encoder \(albert, bert, distilbert, roberta\)"
    with pytest.raises(ConfigError, match=message):
        SentenceEncoder.from_pretrained(tmp_path / "gpt2")


def test_encoded_sentences_train_a_head(encoder):
    """encode() runs without gradients but not in inference mode: its vectors are features a head trains on."""
    vectors = encoder.encode(["a sentence", "another one"])
    assert not vectors.is_inference()
    head = torch.nn.Linear(vectors.shape[-1], 2)
    torch.nn.functional.cross_entropy(head(vectors), torch.tensor([0, 1])).backward()
    assert head.weight.grad is not None


def test_snapshot_settings_that_were_ignored(encoder_folders, tmp_path):
    """do_lower_case (vectors up to 0.80 apart on RoBERTa's cased tokenizer), sentence-transformers 6's
    "pooling_mode": "mean" (refused as selecting no mode), the Transformer module's own folder (refused as holding no
    weights), a Dense module after the pooling (skipped: (2, 384) vectors where the snapshot gives (2, 128)): each as
    sentence-transformers reads it, or named."""
    lower = as_pipeline(encoder_folders["roberta"], tmp_path / "lower", "mean", True)
    (lower / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": True}))
    ours = SentenceEncoder.from_pretrained(lower)
    assert rel_diff(ours.encode(TEXTS), sentence_transformers_encode(lower)) < ATOL
    assert torch.equal(ours.encode("Hello World"), ours.encode("hello world"))
    assert json.loads((ours.save_pretrained(tmp_path / "again") / "sentence_bert_config.json").read_text())["do_lower_case"] is True
    new_style = as_pipeline(encoder_folders["albert"], tmp_path / "new_style", "mean", False)
    (new_style / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "mean"}))
    assert SentenceEncoder.from_pretrained(new_style).pooling == "mean"
    for mode in ("weightedmean", "lasttoken"):
        (new_style / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": mode}))
        with pytest.raises(ConfigError, match=f"pooling_mode '{mode}' is not supported"):
            SentenceEncoder.from_pretrained(new_style)
    (new_style / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(ConfigError, match="selects pooling_mode_weightedmean_tokens, which minipt does not pool by"):
        SentenceEncoder.from_pretrained(new_style)
    nested = tmp_path / "nested"
    shutil.copytree(encoder_folders["distilbert"], nested / "0_Transformer")
    (nested / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
                                                     {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (nested / "1_Pooling").mkdir()
    (nested / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    assert rel_diff(SentenceEncoder.from_pretrained(nested).encode(TEXTS), sentence_transformers_encode(nested)) < ATOL
    dense = as_pipeline(encoder_folders["distilbert"], tmp_path / "dense", "mean", True)
    modules = json.loads((dense / "modules.json").read_text())
    (dense / "modules.json").write_text(json.dumps(modules[:2] + [{"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(ConfigError, match="has sentence_transformers.models.Dense, which SentenceEncoder does not run"):
        SentenceEncoder.from_pretrained(dense)


def test_a_distilbert_folder_with_berts_tokenizer_embeds_and_classifies(encoder_folders, tmp_path):
    """A BertTokenizer (tokenizer_class) beside DistilBERT returns token_type_ids, which DistilBERT refuses: encode,
    classify_texts and the CLI failed where sentence-transformers and transformers' pipeline work."""
    from minipt.models.distilbert import DistilBertForSequenceClassification
    from minipt.models.text_encoder import classify_texts

    folder = shutil.copytree(encoder_folders["distilbert"], tmp_path / "distilbert")
    settings = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").exists() else {}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings | {"tokenizer_class": "BertTokenizer", "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}))
    assert "token_type_ids" in Tokenizer.from_pretrained(folder)("a text")
    assert rel_diff(SentenceEncoder.from_pretrained(folder).encode(TEXTS), sentence_transformers_encode(folder)) < ATOL
    classifier = DistilBertForSequenceClassification.from_pretrained(folder, num_labels=2, init_missing=("pre_classifier", "classifier"))
    assert len(classify_texts(TEXTS, model=classifier, tokenizer=Tokenizer.from_pretrained(folder))) == len(TEXTS)  # "" too, as the pipeline


def test_a_compiled_encoder_still_gets_its_inputs(encoder):
    """The inputs were chosen by the forward's signature, and a compiled model's is (*args, **kwargs): none was kept."""
    compiled = SentenceEncoder(torch.compile(encoder.encoder, backend="eager"), encoder.tokenizer, pooling=encoder.pooling,
                               normalize=encoder.normalize, max_seq_length=encoder.max_seq_length)
    assert torch.allclose(compiled.encode(["hello world", "a second text"]), encoder.encode(["hello world", "a second text"]), atol=1e-6)
