"""Tokenizer snapshots of the text encoder families, as transformers saves them, built from files installed here.

No pretrained RoBERTa, DistilBERT or ALBERT tokenizer installs here, so each is built by the
tokenizer class transformers ships for it and written with ``save_pretrained``:

- RoBERTa: byte-level BPE over GPT-2's ``vocab.json``/``merges.txt`` (the catalogue's
  ``gpt2-tokenizer``; where it is not built, a small byte-level vocabulary made the same way),
  with <s> </s> <pad> <unk> <mask> added after it;
- DistilBERT: WordPiece over all-MiniLM-L6-v2's ``vocab.txt`` (BERT's uncased vocabulary);
- ALBERT: a Unigram model trained by the ``tokenizers`` library on gensim's English news text
  (``lee_background.cor``; else the text of transformers' own ALBERT tokenizer file), with
  <pad> <unk> [CLS] [SEP] [MASK] first, as ALBERT's SentencePiece model numbers them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from bert_reference import minilm_path, transformers
from minipt.bpe import BPE_MERGES, BPE_VOCAB, build_bpe_files, read_tiktoken
from minipt.errors import CheckpointNotFoundError
from minipt.hub import resolve
from test_gpt2_tokenizer import tiny_tiktoken

FAMILIES = ("roberta", "distilbert", "albert")
ALBERT_SPECIAL_TOKENS = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, as in ALBERT's spiece.model


def gpt2_files(scratch: Path) -> Path:
    """A folder with GPT-2's vocab.json and merges.txt: the real ones where built, else a small byte-level vocabulary."""
    try:
        return resolve("gpt2-tokenizer")
    except CheckpointNotFoundError:
        merged = [b"he", b"ll", b"hell", b"hello", b" w", b" wo", b"or", b"ld", b" t", b"th", b" th", b"the"]
        build_bpe_files(read_tiktoken(tiny_tiktoken(merged)), {"<|endoftext|>": 256 + len(merged)}, scratch)
        return scratch


def _training_lines() -> list[str]:
    gensim = importlib.util.find_spec("gensim")
    if gensim is not None:
        corpus = Path(list(gensim.submodule_search_locations)[0]) / "test" / "test_data" / "lee_background.cor"
        if corpus.is_file():
            return corpus.read_text(encoding="utf-8", errors="replace").splitlines()
    return Path(transformers.models.albert.tokenization_albert.__file__).read_text(encoding="utf-8").splitlines()


def unigram_vocabulary(vocab_size: int = 1000) -> list[tuple[str, float]]:
    """(piece, log probability) pairs of a Unigram model trained on English text, lower-cased and without accents."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    trained = Tokenizer(models.Unigram())
    trained.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=ALBERT_SPECIAL_TOKENS, unk_token="<unk>", show_progress=False)
    trained.train_from_iterator(_training_lines(), trainer)
    return [tuple(piece) for piece in json.loads(trained.to_str())["model"]["vocab"]]


def save_snapshot(family: str, directory: Path) -> Path:
    """Write ``family``'s tokenizer snapshot (tokenizer.json, tokenizer_config.json) into ``directory`` with transformers."""
    if family == "roberta":
        files = gpt2_files(directory.parent / "gpt2-files")
        tokenizer = transformers.RobertaTokenizerFast(vocab=str(files / BPE_VOCAB), merges=str(files / BPE_MERGES))
    elif family == "distilbert":
        tokenizer = transformers.DistilBertTokenizerFast(vocab=str(minilm_path() / "vocab.txt"))
    elif family == "albert":
        tokenizer = transformers.AlbertTokenizerFast(vocab=unigram_vocabulary())
    else:
        raise ValueError(f"no snapshot recipe for {family!r}; known: {FAMILIES}")
    tokenizer.save_pretrained(str(directory))
    return directory


def tiny_encoder_folder(family, directory: Path, cls=None, **fields) -> Path:
    """A checkpoint of ``family`` (a minipt.registry.Family) with random weights and its tokenizer snapshot beside it:
    the family's small config, with the tokenizer's vocabulary, room for 64 positions and ``fields``, as ``cls``
    (default: the family's bare encoder)."""
    import dataclasses

    from minipt import Tokenizer

    save_snapshot(family.model_type, directory)
    tokenizer = Tokenizer.from_pretrained(directory)
    config = dataclasses.replace(family.tiny(), vocab_size=tokenizer.vocab_size, max_position_embeddings=64, **fields)
    (cls or family.classes[0])(config).save_pretrained(directory)
    return directory
