"""SentenceEncoder against sentence-transformers on the real all-MiniLM-L6-v2 snapshot."""

from __future__ import annotations

import pytest
import torch

from bert_reference import minilm_path, transformers  # noqa: F401  (transformers: the reference stack is set up)
from helpers import ATOL, rel_diff
from minipt import SentenceEncoder
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
