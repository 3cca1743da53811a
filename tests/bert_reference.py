"""Helpers shared by the BERT tests: the real snapshot, reference models, random checkpoints."""

from __future__ import annotations

import torch

from minipt.hub import resolve
from minipt.reference import import_transformers

MINILM = "all-MiniLM-L6-v2"

transformers = import_transformers()
if transformers is None:  # the references are part of the test extra: missing them is a set-up error
    raise RuntimeError("the BERT tests need transformers: pip install -e '.[test]' -c .ci/constraints.txt")


def minilm_path():
    return resolve(MINILM)


def reference_bert(path, cls_name="BertModel", attn_implementation="eager"):
    """transformers' model on the same files, in eval mode; eager attention returns attention maps."""
    cls = getattr(transformers, cls_name)
    return cls.from_pretrained(str(path), attn_implementation=attn_implementation).eval()


def tiny_hf_config(**overrides):
    values = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return transformers.BertConfig(**values)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (LayerNorm and biases too), so no mapping error can hide behind a zero or a one."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if name.endswith("LayerNorm.weight") else 0.0  # scales near 1, the rest near 0
            p.copy_(centre + 0.1 * torch.randn(p.shape, generator=generator))
    return model


def random_batch(config, batch=3, length=11, pad=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    if pad and batch > 1:
        for row in range(1, batch):  # every row but the first ends in padding of a different length
            attention_mask[row, length - row * max(1, length // (2 * batch)) :] = 0
    token_type_ids = torch.zeros(batch, length, dtype=torch.long)
    token_type_ids[:, length // 2 :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

