"""Byte-level BPE files (``vocab.json`` + ``merges.txt``), rebuilt from the files GPT-2 and CLIP are shipped as.

A tiktoken vocabulary is one ``base64(token bytes) rank`` pair per line; ``tiktoken_to_bpe``
turns it into the two files GPT-2 ships, which is how ``minipt fetch gpt2-tokenizer`` makes
GPT-2's (``minipt.hub`` calls ``build_bpe_files``; ``minipt.tokenizer`` reads the result).

CLIP's vocabulary is a gzipped list of merges (``bpe_simple_vocab_16e6.txt.gz``, in OpenAI's
CLIP and open_clip); ``clip_merges_to_bpe`` numbers its tokens as CLIP does, which is how
``minipt fetch clip-tokenizer`` makes CLIP's (``build_clip_files``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import json
import zlib
from pathlib import Path

from .errors import CheckpointError
from .files import make_directory, write_text

BPE_VOCAB, BPE_MERGES = "vocab.json", "merges.txt"
MERGES_HEADER = "#version: 0.2\n"  # the first line of a merges.txt, which the tokenizers library skips


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, the other 68 get code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(extra)
            extra += 1
    return table


def read_tiktoken(data: bytes) -> dict[bytes, int]:
    """A tiktoken vocabulary: one ``base64(token bytes) rank`` pair per line."""
    ranks = {}
    for number, line in enumerate(data.decode("ascii").splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as err:
            raise CheckpointError(f"tiktoken line {number} is not 'base64 rank': {line[:60]!r}") from err
    return ranks


def tiktoken_to_bpe(ranks: dict[bytes, int], special_tokens: dict[str, int]) -> tuple[dict[str, int], list[str]]:
    """``vocab.json`` and ``merges.txt`` entries equivalent to a tiktoken vocabulary.

    A token's rank is its merge priority. The merge that made a token of rank
    r is found by running BPE on its bytes with only the merges ranked below
    r: that leaves exactly two pieces, the pair merged at rank r.
    """
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise CheckpointError(f"the tiktoken vocabulary lacks the single bytes {missing[:8]}: it is not byte-level")
    to_text = lambda token: "".join(bytes_to_unicode()[b] for b in token)  # noqa: E731
    vocab = {to_text(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        pieces = _bpe(ranks, token, max_rank=rank)
        if len(pieces) != 2:
            raise CheckpointError(f"token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens")
        merges.append(f"{to_text(pieces[0])} {to_text(pieces[1])}")
    for text, rank in special_tokens.items():
        vocab[text] = rank
    if len(set(vocab.values())) != len(vocab):
        raise CheckpointError("the tiktoken vocabulary gives two tokens the same id")
    return vocab, merges


def _bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Byte-pair encoding of ``token``: merge the lowest-ranked adjacent pair until none ranked below ``max_rank`` is left."""
    pieces = [bytes([b]) for b in token]
    while len(pieces) > 1:
        pairs = [(ranks.get(pieces[i] + pieces[i + 1], max_rank), i) for i in range(len(pieces) - 1)]
        rank, i = min(pairs)
        if rank >= max_rank:
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def build_bpe_files(ranks: dict[bytes, int], special_tokens: dict[str, int], directory: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` for a tiktoken vocabulary (byte-for-byte reproducible)."""
    vocab, merges = tiktoken_to_bpe(ranks, special_tokens)
    make_directory(directory)
    write_text(directory / BPE_VOCAB, json.dumps(vocab, ensure_ascii=False))  # each atomically (files.atomic_path)
    write_text(directory / BPE_MERGES, MERGES_HEADER + "".join(merge + "\n" for merge in merges))


# -- CLIP's vocabulary ------------------------------------------------------------
CLIP_VOCAB_SIZE = 49408  # 256 bytes, the same 256 ending a word, 48894 merges, <|startoftext|>, <|endoftext|>
CLIP_MERGES = CLIP_VOCAB_SIZE - 256 * 2 - 2  # CLIP keeps the first 49152 - 256 - 2 merges of the file
END_OF_WORD = "</w>"  # CLIP marks a word's last piece instead of a leading space
STARTOFTEXT, ENDOFTEXT = "<|startoftext|>", "<|endoftext|>"
CLIP_TOKENIZER_CONFIG = {  # what transformers' CLIPTokenizer is configured with for OpenAI's CLIP
    "tokenizer_class": "CLIPTokenizer",
    "bos_token": STARTOFTEXT,
    "eos_token": ENDOFTEXT,
    "unk_token": ENDOFTEXT,
    "pad_token": ENDOFTEXT,  # transformers' CLIP tokenizers pad with <|endoftext|> (open_clip pads with id 0)
    "model_max_length": 77,  # the text tower's context
    "do_lower_case": True,
    "model_input_names": ["input_ids", "attention_mask"],
}


def clip_merges_to_bpe(data: bytes) -> tuple[dict[str, int], list[str]]:
    """``vocab.json`` and ``merges.txt`` entries of CLIP's vocabulary from its gzipped merges file.

    As CLIP's SimpleTokenizer numbers them: the 256 byte characters in GPT-2's table order, the same 256
    with "</w>" (a word's last piece), then each of the first 48894 merges joined into one token (the file's
    first line is a header), then <|startoftext|> and <|endoftext|>: 49408 ids."""
    try:
        lines = gzip.decompress(data).decode("utf-8").rstrip("\n").split("\n")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise CheckpointError(f"CLIP's merges file is not gzipped UTF-8 text ({type(err).__name__}: {err})") from err
    merges = lines[1 : CLIP_MERGES + 1]
    if len(merges) < CLIP_MERGES:
        raise CheckpointError(f"CLIP's merges file holds {len(merges)} merges after its header; CLIP's vocabulary needs {CLIP_MERGES}")
    for number, merge in enumerate(merges, 2):
        if len(merge.split()) != 2 or merge != merge.strip():
            raise CheckpointError(f"line {number} of CLIP's merges file is not two tokens separated by a space: {merge[:60]!r}")
    letters = list(bytes_to_unicode().values())
    tokens = [*letters, *(letter + END_OF_WORD for letter in letters), *(merge.replace(" ", "") for merge in merges), STARTOFTEXT, ENDOFTEXT]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise CheckpointError(f"CLIP's merges give {len(tokens) - len(vocab)} tokens twice: {CLIP_VOCAB_SIZE} ids but {len(vocab)} distinct tokens")
    return vocab, merges


def build_clip_files(data: bytes, directory: Path) -> None:
    """Write CLIP's ``vocab.json``, ``merges.txt`` and a ``tokenizer_config.json`` naming transformers' CLIPTokenizer
    from the gzipped merges file (byte-for-byte reproducible)."""
    vocab, merges = clip_merges_to_bpe(data)
    make_directory(directory)
    write_text(directory / BPE_VOCAB, json.dumps(vocab, ensure_ascii=False))
    write_text(directory / BPE_MERGES, MERGES_HEADER + "".join(merge + "\n" for merge in merges))
    write_text(directory / "tokenizer_config.json", json.dumps(CLIP_TOKENIZER_CONFIG, indent=2) + "\n")
