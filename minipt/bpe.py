"""GPT-2's byte-level BPE files (``vocab.json`` + ``merges.txt``), rebuilt from a tiktoken file.

A tiktoken vocabulary is one ``base64(token bytes) rank`` pair per line; ``tiktoken_to_bpe``
turns it into the two files GPT-2 ships, which is how ``minipt fetch gpt2-tokenizer`` makes
GPT-2's (``minipt.hub`` calls ``build_bpe_files``; ``minipt.tokenizer`` reads the result).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from pathlib import Path

from .errors import CheckpointError
from .files import make_directory, write_text

BPE_VOCAB, BPE_MERGES = "vocab.json", "merges.txt"


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
    write_text(directory / BPE_MERGES, "#version: 0.2\n" + "".join(merge + "\n" for merge in merges))
