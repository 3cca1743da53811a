"""A T5 tokenizer snapshot, as transformers saves one, built from text installed here, and a small T5 beside it.

No pretrained T5 tokenizer installs here (no ``spiece.model`` in any package; see DATA.md), so the
snapshot is made the way T5's is: a SentencePiece Unigram model (here trained by the ``tokenizers``
library on gensim's English news text, cased, NFKC) with ``<pad>`` ``</s>`` ``<unk>`` as ids 0, 1, 2
and the 100 sentinels ``<extra_id_99>`` ... ``<extra_id_0>`` after the pieces, given to transformers'
own ``T5Tokenizer``, which sets the rest (Metaspace pre-tokenizer and decoder, ``</s>`` appended to
every text, no token types) and writes ``tokenizer.json`` and ``tokenizer_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from bert_reference import transformers
from encoder_snapshots import _training_lines

T5_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2: T5's pad (also the decoder's start), end and unknown
SENTINELS = 100  # <extra_id_0> ... <extra_id_99>, numbered from the end of the vocabulary as in T5's spiece.model


def t5_vocabulary(pieces: int = 1000) -> list[tuple[str, float]]:
    """(piece, log probability): a cased Unigram model of ``pieces`` pieces, the special tokens first, then the sentinels in reverse."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    trained = Tokenizer(models.Unigram())
    trained.normalizer = normalizers.NFKC()
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=pieces, special_tokens=T5_SPECIAL_TOKENS, unk_token="<unk>", show_progress=False)
    trained.train_from_iterator(_training_lines(), trainer)
    vocabulary = [tuple(piece) for piece in json.loads(trained.to_str())["model"]["vocab"]]
    return vocabulary + [(f"<extra_id_{i}>", 0.0) for i in reversed(range(SENTINELS))]


def save_t5_snapshot(directory: Path) -> Path:
    """Write a T5 tokenizer snapshot (tokenizer.json, tokenizer_config.json) into ``directory`` with transformers' T5Tokenizer."""
    transformers.T5Tokenizer(vocab=t5_vocabulary(), extra_ids=SENTINELS).save_pretrained(str(directory))
    return directory


def tiny_t5_folder(directory: Path, **fields) -> Path:
    """A T5ForConditionalGeneration with random weights (the T5 family's small config, the snapshot's vocabulary and ``fields``)
    and the tokenizer snapshot beside it."""
    import dataclasses

    from minipt import Tokenizer
    from minipt.models.t5 import T5ForConditionalGeneration
    from minipt.registry import families

    save_t5_snapshot(directory)
    tiny = next(family for family in families() if family.model_type == "t5").tiny()
    config = dataclasses.replace(tiny, vocab_size=Tokenizer.from_pretrained(directory).vocab_size, **fields)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    return directory
