"""Sentence embeddings in the sentence-transformers layout: encoder -> pooling -> (normalise).

A sentence-transformers snapshot holds a text encoder's checkpoint (BERT, RoBERTa,
DistilBERT, ALBERT: any family built on ``minipt.models.text_encoder``, found through
``minipt.registry`` from its ``config.json``) plus a few small files that say how to turn
token vectors into one vector per sentence:

- ``modules.json``: the pipeline (Transformer, Pooling, optionally Normalize);
- ``1_Pooling/config.json`` (the Pooling module's folder): which pooling;
- ``sentence_bert_config.json``: ``max_seq_length``, the truncation length.

A folder without them is a plain checkpoint, embedded as sentence-transformers embeds one:
mean pooling, no normalisation, truncation at the longest input both the model and the
tokenizer take.

    encoder = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")
    vectors = encoder.encode(["A man is eating food.", "A man is riding a horse."])  # (2, 384)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Checkpoint
from ..errors import ConfigError, InputError
from ..files import make_directory, read_json, write_json
from ..hub import resolve
from ..registry import families, family_of, model_class_for
from ..tokenizer import Tokenizer, as_texts
from .text_encoder import TextEncoder, model_inputs

# pooling mode -> its flag in a sentence-transformers Pooling config
POOLING_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}
POOLING_MODES = tuple(POOLING_FLAGS)
KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")  # the sentence-transformers modules SentenceEncoder runs


def pool(token_vectors: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per sentence from (B, T, H) token vectors, ignoring padding."""
    mask = attention_mask.unsqueeze(-1).to(token_vectors.dtype)  # (B, T, 1)
    if mode == "cls":
        return token_vectors[:, 0]
    if mode == "max":
        return token_vectors.masked_fill(mask == 0, -1e9).amax(dim=1)
    summed = (token_vectors * mask).sum(dim=1)  # (B, H)
    counts = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    return summed / (counts if mode == "mean" else counts.sqrt())


class SentenceEncoder(nn.Module):
    """A text encoder's bare model (``BertModel``, ``RobertaModel``, ``DistilBertModel``, ``AlbertModel``), its
    tokenizer, and the pooling of its token vectors into one (unit) vector per sentence."""

    def __init__(self, encoder: nn.Module, tokenizer: Tokenizer, *, pooling: str = "mean", normalize: bool = True, max_seq_length: int | None = None,
                 do_lower_case: bool = False):
        """``max_seq_length``: the truncation length (None: the longest input the encoder takes); ``do_lower_case``:
        texts are lower-cased before the tokenizer reads them (sentence_bert_config.json's setting)."""
        super().__init__()
        self.do_lower_case = do_lower_case
        if pooling not in POOLING_MODES:
            raise ConfigError(f"pooling {pooling!r} is not supported; supported: {', '.join(POOLING_MODES)}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_seq_length = max_seq_length or encoder.config.longest_input

    @property
    def transfer_stages(self) -> dict:
        """The encoder's stages (see minipt.transfer), under ``encoder.``."""
        stages = {}
        for name, where in self.encoder.transfer_stages.items():  # a module path, or a tuple of them
            stages[name] = "encoder." + where if isinstance(where, str) else tuple("encoder." + path for path in where)
        return stages

    @classmethod
    def from_pretrained(cls, name_or_path, *, dtype: torch.dtype | None = None, device=None) -> "SentenceEncoder":
        """A sentence-transformers folder (or a plain text encoder's checkpoint) from a local path, catalogued name or hub repo id;
        a checkpoint of any other model is a ConfigError naming it."""
        path = resolve(name_or_path)
        modules = read_json(path / "modules.json", list, default=[], what="a list")
        if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str) and isinstance(m.get("path", ""), str) for m in modules):
            raise ConfigError(f"{path / 'modules.json'} must be a list of objects with a 'type' and a 'path', found {str(modules)[:80]}")
        kinds = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
        unknown = [m["type"] for m in modules if m["type"].rsplit(".", 1)[-1] not in KNOWN_MODULES]
        if unknown:  # a Dense projection after the pooling (LaBSE, distiluse-*): leaving it out gives other vectors
            raise ConfigError(f"{path / 'modules.json'} has {', '.join(unknown)}, which SentenceEncoder does not run (it runs "
                              f"{', '.join(KNOWN_MODULES)}): its vectors would not be the snapshot's")
        pooling = "mean"
        if "Pooling" in kinds:
            pooling = _pooling_mode(read_json(path / kinds["Pooling"].get("path", "") / "config.json", default={}))
        normalize = "Normalize" in kinds
        # the encoder's own folder (0_Transformer/ in some snapshots, the root in most), with its sentence settings
        where = path / kinds["Transformer"].get("path", "") if "Transformer" in kinds else path
        settings = read_json(where / "sentence_bert_config.json", default=None) or read_json(path / "sentence_bert_config.json", default={})
        encoder = encoder_class(where).from_pretrained(where, dtype=dtype, device=device)
        tokenizer = Tokenizer.from_pretrained(where)
        longest = encoder.config.longest_input
        max_seq_length = settings.get("max_seq_length") or min(longest, tokenizer.model_max_length or longest)  # sentence-transformers' default
        lower = settings.get("do_lower_case", False)
        if not isinstance(lower, bool):
            raise ConfigError(f"{where / 'sentence_bert_config.json'}: do_lower_case is {lower!r}, expected true or false")
        return cls(encoder, tokenizer, pooling=pooling, normalize=normalize, max_seq_length=max_seq_length, do_lower_case=lower).eval()

    def save_pretrained(self, directory) -> Path:
        """Write the sentence-transformers layout: the encoder's checkpoint, the tokenizer and the pipeline files, each atomically."""
        directory = self.encoder.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        pooling = {"word_embedding_dimension": self.encoder.config.hidden_size, **{flag: mode == self.pooling for mode, flag in POOLING_FLAGS.items()}}
        make_directory(directory / "1_Pooling")
        for path, value in (
            ("modules.json", modules),
            ("1_Pooling/config.json", pooling),
            ("sentence_bert_config.json", {"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case}),
        ):
            write_json(directory / path, value)
        return directory

    def check_inputs(self, input_ids, attention_mask, token_type_ids=None) -> None:
        """The encoder's checks (its ``check_inputs``), and a 0/1 attention mask shaped like ``input_ids`` to pool over."""
        self.encoder.check_inputs(input_ids, attention_mask, token_type_ids)
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
            raise InputError(f"SentenceEncoder pools over the attention mask: it must be a (batch, seq_len) tensor like input_ids {tuple(input_ids.shape)}, got {shape}")

    def forward(self, input_ids, attention_mask, token_type_ids=None, normalize: bool | None = None) -> torch.Tensor:
        self.check_inputs(input_ids, attention_mask, token_type_ids)
        token_vectors = self.encoder(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, H)
        sentence = pool(token_vectors, attention_mask, self.pooling)  # (B, H)
        normalize = self.normalize if normalize is None else normalize
        return F.normalize(sentence, p=2, dim=-1) if normalize else sentence

    @torch.no_grad()  # not inference_mode: what it returns may enter a computation with gradients
    def encode(self, sentences: str | Sequence[str], *, batch_size: int = 32, normalize: bool | None = None) -> torch.Tensor:
        """Embed sentences: (N, H) float32 on the CPU (a single string gives (H,)).

        Sentences are sorted by length before batching, so each batch pads little;
        the result is in the input order. An empty list gives a (0, H) tensor, so
        code that embeds whatever a filter left keeps working; an empty string is
        embedded like any text (its vector comes from the special tokens the tokenizer adds, BERT's [CLS] and [SEP]).
        """
        sentences, single = as_texts("sentences", sentences)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        device = next(self.encoder.parameters()).device
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        out = [None] * len(sentences)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            texts = [sentences[i].lower() if self.do_lower_case else sentences[i] for i in chunk]
            batch = model_inputs(self.encoder, self.tokenizer, texts, max_length=self.max_seq_length)
            vectors = self(**{k: v.to(device) for k, v in batch.items()}, normalize=normalize).float().cpu()
            for i, vector in zip(chunk, vectors):
                out[i] = vector
        embeddings = torch.stack(out) if out else torch.empty(0, self.encoder.config.hidden_size)
        return embeddings[0] if single else embeddings


def encoder_class(path) -> type:
    """The bare model of the text encoder family whose checkpoint is at ``path`` (``minipt.registry``: from its
    ``config.json``); a ConfigError names the model any other checkpoint holds."""
    with Checkpoint(path) as checkpoint:  # names and shapes only
        found = model_class_for(path, checkpoint)
    family = family_of(found)
    if family is None or not issubclass(family.classes[0], TextEncoder):
        encoders = ", ".join(sorted(f.model_type for f in families() if issubclass(f.classes[0], TextEncoder)))
        raise ConfigError(f"{path} holds a {found.__name__} checkpoint; SentenceEncoder pools the token vectors of a text encoder ({encoders})")
    return family.classes[0]


def _pooling_mode(config: dict) -> str:
    """The one pooling a Pooling config selects: sentence-transformers 6's ``"pooling_mode": "mean"``, or the older
    ``pooling_mode_*_tokens`` flags; a mode minipt does not pool by (weightedmean, lasttoken) is named."""
    if isinstance(config.get("pooling_mode"), str):
        mode = {"mean_sqrt_len_tokens": "mean_sqrt_len"}.get(config["pooling_mode"], config["pooling_mode"])
        if mode not in POOLING_MODES:
            raise ConfigError(f"pooling config {config}: pooling_mode {config['pooling_mode']!r} is not supported; minipt pools by {', '.join(POOLING_MODES)}")
        return mode
    chosen = [mode for mode, flag in POOLING_FLAGS.items() if config.get(flag)]
    others = sorted(key for key, value in config.items() if key.startswith("pooling_mode_") and value is True and key not in POOLING_FLAGS.values())
    if others:
        raise ConfigError(f"pooling config {config} selects {', '.join(others)}, which minipt does not pool by; supported: {', '.join(POOLING_MODES)}")
    if len(chosen) != 1:
        raise ConfigError(f"pooling config {config} selects {chosen or 'no'} mode; minipt supports exactly one of {POOLING_MODES}")
    return chosen[0]
