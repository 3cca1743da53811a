"""Text to token ids and back, over the ``tokenizers`` library's ``tokenizer.json``.

    tok = Tokenizer.from_pretrained("all-MiniLM-L6-v2")
    batch = tok(["a sentence", "another one"])          # input_ids, attention_mask, token_type_ids
    batch = tok(["question?"], ["the passage"])          # sentence pairs: [CLS] a [SEP] b [SEP]
    tok.decode(batch["input_ids"][0])
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

from .errors import CheckpointNotFoundError, InputError
from .hub import resolve

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    def __init__(self, backend, *, model_max_length: int | None = None, special_tokens: dict | None = None, name: str = ""):
        self.backend = backend  # a tokenizers.Tokenizer
        self.model_max_length = model_max_length  # the default truncation length
        self.special_tokens = special_tokens or {}  # {"pad_token": "[PAD]", ...} from tokenizer_config.json
        self.name = name
        self.pad_token_id = self._special_id("pad_token", "[PAD]", "<pad>")
        self._pad_token = backend.id_to_token(self.pad_token_id) if self.pad_token_id is not None else None

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> "Tokenizer":
        from tokenizers import Tokenizer as Backend  # imported here: keeps `import minipt` light

        path = resolve(name_or_path)
        directory = path if path.is_dir() else path.parent
        if not (directory / TOKENIZER_FILE).is_file():
            raise CheckpointNotFoundError(f"{directory} has no {TOKENIZER_FILE}")
        backend = Backend.from_file(str(directory / TOKENIZER_FILE))
        backend.no_padding()  # the file may carry its own settings; each call sets them
        backend.no_truncation()
        settings = _read_json(directory / "tokenizer_config.json")
        max_length = settings.get("model_max_length")
        if not isinstance(max_length, int) or max_length > 1_000_000:  # HF writes 1e30 for "no limit"
            max_length = None
        special = {k: v for k, v in settings.items() if k.endswith("_token") and isinstance(v, str)}
        return cls(backend, model_max_length=max_length, special_tokens=special, name=str(name_or_path))

    def _special_id(self, field: str, *candidates: str) -> int | None:
        for token in (self.special_tokens.get(field), *candidates):
            if token is not None and self.backend.token_to_id(token) is not None:
                return self.backend.token_to_id(token)
        return None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        return_tensors: str | None = "pt",
    ) -> dict:
        """Encode one text or a batch (optionally paired with a second batch).

        ``padding``: True/"longest" pads to the longest in the batch,
        "max_length" to ``max_length``, False not at all. ``truncation`` cuts
        to ``max_length`` (default: the model's limit from tokenizer_config.json),
        the longer of a pair first. ``return_tensors``: "pt", "np" or None (lists).
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise InputError(f"{len(texts)} texts but {len(pairs)} text pairs")
            inputs = list(zip(texts, pairs))
        else:
            inputs = texts
        if not all(isinstance(t, str) for t in texts):
            raise InputError("texts must be strings")
        limit = max_length if max_length is not None else self.model_max_length
        if truncation and limit is not None:
            self.backend.enable_truncation(limit, strategy="longest_first")
        else:
            self.backend.no_truncation()
        if padding in (True, "longest"):
            self._enable_padding(None)
        elif padding == "max_length":
            if limit is None:
                raise InputError("padding='max_length' needs max_length")
            self._enable_padding(limit)
        else:
            self.backend.no_padding()
        encodings = self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        batch = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        if return_tensors is None:
            return {k: v[0] for k, v in batch.items()} if single else batch
        lengths = {len(ids) for ids in batch["input_ids"]}
        if len(lengths) > 1:
            raise InputError(f"sequences have different lengths {sorted(lengths)}; pass padding=True to make a tensor")
        if return_tensors == "pt":
            return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        if return_tensors == "np":
            import numpy as np

            return {k: np.asarray(v, dtype=np.int64) for k, v in batch.items()}
        raise InputError(f"return_tensors must be 'pt', 'np' or None, not {return_tensors!r}")

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (the length limit and special tokens)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / TOKENIZER_FILE))
        settings = {**self.special_tokens, **({"model_max_length": self.model_max_length} if self.model_max_length else {})}
        (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
        return directory

    def _enable_padding(self, length: int | None) -> None:
        if self.pad_token_id is None:
            raise InputError(f"tokenizer {self.name} has no padding token")
        self.backend.enable_padding(pad_id=self.pad_token_id, pad_token=self._pad_token, length=length)

    def tokenize(self, text: str) -> list[str]:
        return self.backend.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int | None]:
        return [self.backend.token_to_id(t) for t in tokens]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
