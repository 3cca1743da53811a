"""Text to token ids and back, over the ``tokenizers`` library's ``tokenizer.json``.

    tok = Tokenizer.from_pretrained("all-MiniLM-L6-v2")
    batch = tok(["a sentence", "another one"])          # input_ids, attention_mask, token_type_ids
    batch = tok(["question?"], ["the passage"])          # sentence pairs: [CLS] a [SEP] b [SEP]
    tok.decode(batch["input_ids"][0])

The folder is a snapshot as transformers saves it: ``tokenizer.json`` (the tokenizers
library's pipeline), ``tokenizer_config.json`` and, in older snapshots,
``special_tokens_map.json``. As transformers does, the settings in the config win over
the pipeline's: ``add_prefix_space`` (RoBERTa's byte-level BPE, ALBERT's "▁"),
``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars`` (WordPiece) and
``keep_accents`` (SentencePiece); ``clean_up_tokenization_spaces`` joins "do n't ." back
into "don't." when decoding (not for byte-level BPE). The inputs returned are the model's
``model_input_names``: for RoBERTa, DistilBERT, ALBERT and T5 no ``token_type_ids``, as
their tokenizers in transformers return none (the family named by ``tokenizer_class``, or
by the ``model_type`` of a ``config.json`` beside it).

A folder may hold ``tokenizer.json``, or a byte-level BPE vocabulary as GPT-2
ships it: ``vocab.json`` (token -> id) and ``merges.txt`` (the merges in rank
order); ``minipt.bpe`` rebuilds that pair from a tiktoken file. Where the folder is
RoBERTa's (its config's ``tokenizer_class``, or config.json's ``model_type``), the same files
get RoBERTa's special tokens and ``<s> a </s></s> b </s>``. Where it is CLIP's (``tokenizer_class``
CLIPTokenizer, ``model_type`` clip, or a vocabulary of "</w>" word ends, as ``minipt fetch
clip-tokenizer`` builds it), the text is read as transformers' CLIPTokenizer reads it: NFC,
runs of whitespace made one space, lower case, CLIP's split into words, numbers digit by digit
and punctuation runs, each word's last piece ending in "</w>", ``<|startoftext|> ... <|endoftext|>``
around each text, padded with <|endoftext|> to at most 77 tokens; decoding turns "</w>" back into spaces.

As in transformers, the special tokens and the padding side can be set after
loading; GPT-2 has no padding token, and a batch of prompts to generate from
is padded on the left with its end-of-text token:

    tok = Tokenizer.from_pretrained("gpt2-tokenizer")
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    batch = tok(["Hello, my name is", "The"])               # the shorter row padded on the left
"""

from __future__ import annotations

import json
import numbers
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch

from .checks import check_bool, check_choice, check_int, check_path, check_str
from .errors import CheckpointError, CheckpointNotFoundError, InputError
from .ops._register import register_dict_pytree
from .bpe import BPE_MERGES, BPE_VOCAB, build_bpe_files, bytes_to_unicode, read_tiktoken, tiktoken_to_bpe  # noqa: F401 (re-exported)
from .bpe import CLIP_TOKENIZER_CONFIG, END_OF_WORD
from .files import atomic_path, make_directory, read_json, write_json
from .hub import resolve
from .registry import CONFIG

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"  # older snapshots: the special tokens, over tokenizer_config.json's
ENDOFTEXT = "<|endoftext|>"  # GPT-2's one special token: end of a document, also used to start one
PADDING = (True, False, "longest", "max_length")
PADDING_SIDES = ("right", "left")
# the special tokens a tokenizer knows by role, and the spellings looked for when tokenizer_config.json names none
SPECIAL_ROLES = {
    "bos": ("<s>",), "eos": ("[SEP]", "</s>"), "unk": ("[UNK]", "<unk>"), "pad": ("[PAD]", "<pad>"),
    "cls": ("[CLS]", "<s>"), "sep": ("[SEP]", "</s>"), "mask": ("[MASK]", "<mask>"),
}
MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # what a tokenizer returns unless its model takes fewer
# transformers' tokenizer classes whose model_input_names hold no token_type_ids, and the class a config.json's model_type implies
WITHOUT_TOKEN_TYPES = {"RobertaTokenizer", "DistilBertTokenizer", "AlbertTokenizer", "GPT2Tokenizer", "CLIPTokenizer", "T5Tokenizer"}
ADDED_ORDER = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")  # transformers adds absent special tokens in this order
ROBERTA_SPECIAL_TOKENS = {  # transformers' RobertaTokenizer's, added in this order where vocab.json lacks them
    "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>",
}
TOKENIZER_CLASSES = {
    "bert": "BertTokenizer", "roberta": "RobertaTokenizer", "distilbert": "DistilBertTokenizer", "albert": "AlbertTokenizer", "gpt2": "GPT2Tokenizer",
    "clip": "CLIPTokenizer", "clip_text_model": "CLIPTokenizer", "t5": "T5Tokenizer",
}
# transformers' CLIPTokenizer's special tokens (bos, eos, unk, pad) and its split of lower-cased text into words: the
# special tokens, contractions, letter runs, single digits, runs of other non-space characters (spaces are dropped)
CLIP_SPECIAL_TOKENS = {key: value for key, value in CLIP_TOKENIZER_CONFIG.items() if key.endswith("_token")}
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
RETURN_TENSORS = ("pt", "np", None)
# what clean_up_tokenization_spaces joins in decoded text, in transformers' order
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
MAX_PADDED_LENGTH = 1 << 20  # padding="max_length" pads a text to at most this many ids
# what Tokenizer calls on its backend (a tokenizers.Tokenizer)
_BACKEND_METHODS = (
    "encode", "encode_batch", "decode", "token_to_id", "id_to_token", "get_vocab_size", "num_special_tokens_to_add",
    "enable_padding", "no_padding", "enable_truncation", "no_truncation",
)


def _special_token(role: str) -> tuple[property, property]:
    """The ``<role>_token`` and ``<role>_token_id`` properties: read and set, each keeping the other in step."""

    def token(self) -> str | None:
        token_id = self._special_ids[role]
        return None if token_id is None else self.backend.id_to_token(token_id)

    def set_token(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise InputError(f"{role}_token must be a token (str) or None, got {type(value).__name__}: {value!r:.60}")
        token_id = None if value is None else self._lookup(value)
        if value is not None and token_id is None:
            raise InputError(f"{role}_token {value!r} is not in the vocabulary of tokenizer {self.name or '(unnamed)'}")
        self._set_special(role, token_id)

    def token_id(self) -> int | None:
        return self._special_ids[role]

    def set_token_id(self, value: int | None) -> None:
        self._set_special(role, check_int(f"{role}_token_id", value, low=0, high=self.vocab_size - 1, optional=True, noun="a token id"))

    return property(token, set_token, doc=f"The {role} token's text (None: none); settable."), property(token_id, set_token_id)


def _template_tokens_without_entry(processor) -> list[str]:
    """The special tokens a ``TemplateProcessing`` post-processor (alone or inside a ``Sequence``) places in its
    single or pair template without defining them in its ``special_tokens``."""
    if not isinstance(processor, dict):
        return []
    if processor.get("type") == "Sequence":
        return [token for inner in processor.get("processors") or [] for token in _template_tokens_without_entry(inner)]
    if processor.get("type") != "TemplateProcessing":
        return []
    defined = processor.get("special_tokens") if isinstance(processor.get("special_tokens"), dict) else {}
    used = [piece["SpecialToken"].get("id") for key in ("single", "pair") for piece in processor.get(key) or []
            if isinstance(piece, dict) and isinstance(piece.get("SpecialToken"), dict)]
    return list(dict.fromkeys(token for token in used if token not in defined))


@register_dict_pytree
class Encoding(dict):
    """What a tokenizer call returns: a dict of the model's inputs (``model(**batch)``) that also reads them as
    attributes (``batch.input_ids``) and moves its tensors with ``batch.to(device)``, as transformers' BatchEncoding."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the encoding holds {', '.join(self) or 'nothing'}, not {name!r}") from None

    def to(self, device) -> "Encoding":
        if isinstance(device, torch.dtype):  # ids past 2048 do not survive float16: as BatchEncoding, a device only
            raise InputError(f"Encoding.to takes a device, not the dtype {device}: token ids stay integers")
        return Encoding({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


class Tokenizer:
    def __init__(
        self, backend, *, model_max_length: int | None = None, special_tokens: dict | None = None, name: str = "", padding_side: str = "right",
        model_input_names: Sequence[str] = MODEL_INPUT_NAMES, clean_up_tokenization_spaces: bool = False,
    ):
        lacking = [m for m in _BACKEND_METHODS if not callable(getattr(backend, m, None))]
        if lacking:
            which = "" if len(lacking) == len(_BACKEND_METHODS) else f", which lacks {', '.join(lacking)}"
            raise InputError(f"Tokenizer wraps a tokenizers.Tokenizer (or use Tokenizer.from_pretrained); got {type(backend).__name__}{which}")
        if special_tokens is not None and not (isinstance(special_tokens, Mapping) and all(isinstance(v, str) for v in special_tokens.values())):
            raise InputError(f"special_tokens must map roles to tokens ({{'pad_token': '[PAD]'}}) or be None, got {special_tokens!r:.80}")
        self.backend = backend  # a tokenizers.Tokenizer
        self.model_max_length = check_int("model_max_length", model_max_length, low=1, optional=True)  # the default truncation length
        self.special_tokens = dict(special_tokens or {})  # {"pad_token": "[PAD]", ...} from tokenizer_config.json
        self.name = check_str("name", name, empty=True)
        self._special_ids = {role: self._special_id(f"{role}_token", *spellings) for role, spellings in SPECIAL_ROLES.items()}
        self.padding_side = padding_side
        self.model_input_names = _input_names(model_input_names)  # the keys __call__ returns
        # decode joins "do n't ." back to "don't." as transformers does (not for BPE, whose text keeps its own spaces)
        self.clean_up_tokenization_spaces = check_bool("clean_up_tokenization_spaces", clean_up_tokenization_spaces)

    bos_token, bos_token_id = _special_token("bos")
    eos_token, eos_token_id = _special_token("eos")
    unk_token, unk_token_id = _special_token("unk")
    pad_token, pad_token_id = _special_token("pad")  # tok.pad_token = tok.eos_token gives GPT-2 a padding token
    cls_token, cls_token_id = _special_token("cls")
    sep_token, sep_token_id = _special_token("sep")
    mask_token, mask_token_id = _special_token("mask")  # what a masked language model fills in

    def _set_special(self, role: str, token_id: int | None) -> None:
        self._special_ids[role] = token_id
        if token_id is None:
            self.special_tokens.pop(f"{role}_token", None)
        else:
            self.special_tokens[f"{role}_token"] = self.backend.id_to_token(token_id)  # save_pretrained writes it

    @property
    def padding_side(self) -> str:
        """Where padding goes: "right" (the default) or "left" (prompts to generate from)."""
        return self._padding_side

    @padding_side.setter
    def padding_side(self, side: str) -> None:
        self._padding_side = check_choice("padding_side", side, PADDING_SIDES)

    @property
    def truncation_side(self) -> str:
        """Which end truncation cuts: "right" (the default: a text's end) or "left" (its start, as a config may say)."""
        return getattr(self, "_truncation_side", "right")

    @truncation_side.setter
    def truncation_side(self, side: str) -> None:
        self._truncation_side = check_choice("truncation_side", side, PADDING_SIDES)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> "Tokenizer":
        from tokenizers import Tokenizer as Backend  # imported here: keeps `import minipt` light

        path = resolve(check_path("name_or_path", name_or_path))
        directory = path if path.is_dir() else path.parent
        settings = read_json(directory / TOKENIZER_CONFIG, default={})
        special_map = read_json(directory / SPECIAL_TOKENS_MAP, default={})
        settings = settings | {k: v for k, v in special_map.items() if k.endswith("_token")}  # as transformers reads an older snapshot
        file = directory / TOKENIZER_FILE
        kind = _tokenizer_class(settings, directory)  # transformers' class the files are for, where they say
        if file.is_file():
            pipeline = read_json(file)  # raises itself for a file that is empty, not JSON or not an object
            if "model" not in pipeline:
                raise CheckpointError(f"{file} has no \"model\" entry (WordPiece, BPE, ...): not a tokenizers tokenizer file")
            model = pipeline["model"]
            if isinstance(model, dict) and model.get("type") == "WordPiece" and isinstance(model.get("vocab"), dict) \
                    and model.get("unk_token", "[UNK]") not in model["vocab"]:  # tokenizers loads it, then fails on each unknown word
                raise CheckpointError(f"{file}: the WordPiece model's unknown-word token {model.get('unk_token', '[UNK]')!r} is not in its vocabulary")
            missing = _template_tokens_without_entry(pipeline.get("post_processor"))
            if missing:  # tokenizers loads such a template, then panics (aborting the call) at the first encode
                raise CheckpointError(f"{file}: the post-processor's template uses {', '.join(map(repr, missing))}, "
                                      "which its special_tokens do not define")
            if isinstance(model, dict) and model.get("type") == "BPE" and isinstance(model.get("vocab"), dict) and isinstance(model.get("merges"), list):
                _check_merges(model["vocab"], [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]], file,
                              model.get("continuing_subword_prefix") or "")
            # transformers' T5 tokenizer leaves a tokenizer.json's "▁" step as it is whatever add_prefix_space says
            applied = {k: v for k, v in settings.items() if k != "add_prefix_space"} if kind == "T5Tokenizer" else settings
            try:
                backend = Backend.from_str(json.dumps(_configured(pipeline, applied)))
            except Exception as err:  # the tokenizers library raises a bare Exception for every kind of bad file
                raise CheckpointError(f"{file} is not a valid tokenizers tokenizer file: {err}") from err
            except BaseException as err:  # a Rust panic (merges making a token the vocabulary lacks): pyo3's PanicException
                if isinstance(err, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                    raise
                raise CheckpointError(f"{file} is not a valid tokenizers tokenizer file: the library failed reading it ({err})") from None
            outside = _template_ids_outside(pipeline.get("post_processor"), backend.get_vocab_size(with_added_tokens=True))
            if outside:
                raise CheckpointError(f"{file}: the post-processor's template puts {', '.join(outside)}, outside the vocabulary of "
                                      f"{backend.get_vocab_size(with_added_tokens=True)} ids")
        elif (directory / BPE_VOCAB).is_file() and (directory / BPE_MERGES).is_file():
            if _is_clip(settings, directory):  # CLIP's files: "</w>" word ends, its normalisation and split
                settings, kind = CLIP_SPECIAL_TOKENS | settings, "CLIPTokenizer"
                backend = _clip_bpe(directory, settings)
            elif kind == "RobertaTokenizer":  # RoBERTa's files: GPT-2's BPE, its own special tokens
                settings = ROBERTA_SPECIAL_TOKENS | settings
                backend = _byte_level_bpe(directory, settings)
            else:  # GPT-2's files (a folder without a config is GPT-2's: no token types, as its tokenizer returns)
                kind = kind or "GPT2Tokenizer"
                backend = _byte_level_bpe(directory, add_prefix_space=settings.get("add_prefix_space") is True)
        else:
            raise CheckpointNotFoundError(f"{directory} has no {TOKENIZER_FILE}, nor a byte-level BPE vocabulary ({BPE_VOCAB} + {BPE_MERGES})")
        if kind == "GPT2Tokenizer" and backend.token_to_id(ENDOFTEXT) is not None:  # GPT-2's: bos = eos = unk = <|endoftext|>
            settings = {f"{role}_token": ENDOFTEXT for role in ("bos", "eos", "unk")} | settings
            if settings.get("add_bos_token") is True and not file.is_file():  # GPT2Tokenizer over vocab.json + merges.txt puts
                # <|endoftext|> before each text then (a tokenizer.json's own post-processor decides, in transformers too)
                bos = _token_text(settings["bos_token"])
                _put_bos_first(backend, bos, file if file.is_file() else directory / TOKENIZER_CONFIG)
        # the file's own padding and truncation directions, where tokenizer_config.json does not say (as transformers)
        blocks = pipeline if file.is_file() else {}
        sides = {f"{what}_side": blocks[what].get("direction", "Right").lower() for what in ("padding", "truncation")
                 if isinstance(blocks.get(what), dict) and isinstance(blocks[what].get("direction"), str)}
        settings = sides | settings
        backend.no_padding()  # the file may carry its own settings; each call sets them
        backend.no_truncation()
        max_length = settings.get("model_max_length")
        if not isinstance(max_length, int) or max_length > 1_000_000:  # HF writes 1e30 for "no limit"
            max_length = None
        special = {k: _token_text(v) for k, v in settings.items() if k.endswith("_token") and _token_text(v) is not None}
        ordered = [special[f"{role}_token"] for role in ADDED_ORDER if f"{role}_token" in special] + list(special.values())
        absent = [token for token in dict.fromkeys(ordered) if backend.token_to_id(token) is None]  # in transformers' order
        if absent:  # a special token the vocabulary lacks: added after it, as transformers adds it
            from tokenizers import AddedToken

            backend.add_special_tokens([AddedToken(token, special=True) for token in absent])
        for what in ("padding_side", "truncation_side"):
            if not isinstance(settings.get(what, "right"), str) or settings.get(what, "right") not in PADDING_SIDES:
                raise CheckpointError(f"{directory / TOKENIZER_CONFIG}: {what} is {settings[what]!r}, expected 'right' or 'left'")
        side = settings.get("padding_side", "right")
        names = settings["model_input_names"] if "model_input_names" in settings else _model_input_names(kind)
        model_type = read_json(directory / CONFIG, default={}).get("model_type")
        if "model_input_names" not in settings and isinstance(model_type, str) and TOKENIZER_CLASSES.get(model_type) in WITHOUT_TOKEN_TYPES:
            names = tuple(name for name in names if name != "token_type_ids")  # the model beside takes none (BERT's files beside DistilBERT)
        try:
            names = _input_names(names)
        except InputError as err:
            raise CheckpointError(f"{directory / TOKENIZER_CONFIG}: {err}") from None
        clean_up = settings.get("clean_up_tokenization_spaces", False)
        if not isinstance(clean_up, bool):
            raise CheckpointError(f"{directory / TOKENIZER_CONFIG}: clean_up_tokenization_spaces is {clean_up!r}, expected true or false")
        tokenizer = cls(backend, model_max_length=max_length, special_tokens=special, name=str(name_or_path), padding_side=side,
                        model_input_names=names, clean_up_tokenization_spaces=clean_up)
        tokenizer.truncation_side = settings.get("truncation_side", "right")
        tokenizer.tokenizer_class = kind  # transformers' class the files are for ("BertTokenizer"), or None; save_pretrained writes it
        for role in SPECIAL_ROLES:  # "pad_token": null says there is none (no stand-in of the usual spelling)
            if f"{role}_token" in settings and settings[f"{role}_token"] is None:
                tokenizer._special_ids[role] = None
        return tokenizer

    def _special_id(self, field: str, *candidates: str) -> int | None:
        for token in (self.special_tokens.get(field), *candidates):
            if token is not None and self._lookup(token) is not None:
                return self._lookup(token)
        return None

    def _lookup(self, token: str) -> int | None:
        """The id of ``token``, None where the vocabulary has no such token."""
        try:
            return self.backend.token_to_id(token)
        except UnicodeEncodeError:  # a lone surrogate cannot be any token
            return None

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer gives, its added tokens included: what transformers calls ``len(tokenizer)`` (its
        ``vocab_size`` leaves the added tokens out)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        """As transformers' ``len(tokenizer)``: every id, added tokens included (``vocab_size``)."""
        return self.vocab_size

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
        padding_side: str | None = None,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_token_type_ids: bool | None = None,
    ) -> "Encoding":
        """Encode one text or a batch (optionally paired with a second batch) into the model's inputs
        (``model_input_names``: input_ids, attention_mask and, for models that take them, token_type_ids).

        ``padding``: True/"longest" pads to the longest in the batch,
        "max_length" to ``max_length``, False not at all. ``truncation`` cuts
        to ``max_length`` (default: the model's limit from tokenizer_config.json),
        the longer of a pair first. ``return_tensors``: "pt", "np" or None (lists).
        ``padding_side`` ("right"/"left") overrides the tokenizer's for this call;
        ``pad_to_multiple_of`` rounds the padded length up to a multiple of it (never past the
        length it truncates at: ``model_max_length`` where ``max_length`` is not given).
        ``return_attention_mask``/``return_token_type_ids``: True or False adds or
        leaves out that input whatever ``model_input_names`` says (as transformers).
        A padding token is needed only where a row is shorter than the others
        (or than ``max_length``): one text, or texts of one length, need none.

        Encoding takes time and memory linear in the text's length, about 1 µs a
        character on one CPU core with or without spaces (measured on 1e6 characters
        with GPT-2's BPE and BERT's WordPiece); nothing bounds it, so cut untrusted
        text to a length first. Text that is not valid Unicode (a lone surrogate
        such as ``"\\ud800"``) raises ``InputError`` naming the text.
        """
        texts, single = as_texts("text", text)
        inputs, pairs = texts, []
        if isinstance(text_pair, str) and text_pair == "" and single:
            text_pair = None  # one text with an empty pair is one text, as transformers reads it (in a batch, pairs stay pairs)
        if text_pair is not None:
            pairs, single_pair = as_texts("text_pair", text_pair)
            if single != single_pair:
                raise InputError(f"text is {_kind(single)} but text_pair is {_kind(single_pair)}; pass both as strings or both as lists")
            if len(pairs) != len(texts):
                raise InputError(f"{len(texts)} texts but {len(pairs)} text pairs")
            inputs = list(zip(texts, pairs))
        check_choice("padding", padding, PADDING)
        check_bool("truncation", truncation)
        check_bool("add_special_tokens", add_special_tokens)
        check_choice("return_tensors", return_tensors, RETURN_TENSORS)
        side = self.padding_side if padding_side is None else check_choice("padding_side", padding_side, PADDING_SIDES)
        multiple = check_int("pad_to_multiple_of", pad_to_multiple_of, low=1, high=MAX_PADDED_LENGTH, optional=True)
        names = set(self.model_input_names)
        for name, wanted in (("attention_mask", return_attention_mask), ("token_type_ids", return_token_type_ids)):
            if wanted is not None:
                names = names | {name} if check_bool(f"return_{name}", wanted) else names - {name}
        limit = self.model_max_length if max_length is None else check_int("max_length", max_length, low=1, high=sys.maxsize)  # the tokenizers library's usize
        if truncation and limit is not None:
            specials = self.backend.num_special_tokens_to_add(text_pair is not None) if add_special_tokens else 0
            if limit < specials:
                raise InputError(f"max_length {limit} leaves no room for the {specials} special tokens each {'pair' if text_pair is not None else 'text'} gets")
            self.backend.enable_truncation(limit, strategy="longest_first", direction=self.truncation_side)
        else:
            self.backend.no_truncation()
        if padding == "max_length" and limit is None:
            raise InputError("padding='max_length' needs max_length")
        if padding == "max_length" and limit > MAX_PADDED_LENGTH:
            raise InputError(f"padding='max_length' would make every text {limit:,} ids long; at most {MAX_PADDED_LENGTH:,} (or pad to the longest: padding=True)")
        if multiple is not None and padding is not False and truncation and max_length is not None and limit % multiple:
            raise InputError(f"max_length {limit} (the truncation length) is not a multiple of pad_to_multiple_of {multiple}")
        self.backend.no_padding()  # padded below, and only where a row is short
        with _unicode_named(texts, pairs):
            encodings = self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        every = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings], "token_type_ids": [e.type_ids for e in encodings]}
        batch = {key: every[key] for key in MODEL_INPUT_NAMES if key in names}
        width = None
        if padding is not False:
            width = limit if padding == "max_length" else max(map(len, batch["input_ids"]), default=0)
            if multiple is not None:  # rounded up, but never past the model's limit it truncates at (CLIP's 77)
                width = -(-width // multiple) * multiple
                if truncation and limit is not None and width > limit:
                    width = limit
            self._pad(batch, width, side)
        if return_tensors is None:
            return Encoding({k: v[0] for k, v in batch.items()} if single else batch)
        lengths = {len(ids) for ids in batch["input_ids"]}
        if len(lengths) > 1:
            raise InputError(f"sequences have different lengths {sorted(lengths)}; pass padding=True to make a tensor")
        width = len(batch["input_ids"][0]) if texts else width or 0  # an empty batch: (0, width)
        if return_tensors == "pt":
            return Encoding({k: torch.tensor(v, dtype=torch.long).reshape(len(v), width) for k, v in batch.items()})
        import numpy as np

        return Encoding({k: np.asarray(v, dtype=np.int64).reshape(len(v), width) for k, v in batch.items()})

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (the length limit and special tokens), each atomically."""
        directory = make_directory(check_path("directory", directory), "directory")
        with atomic_path(directory / TOKENIZER_FILE) as temporary:
            self.backend.save(str(temporary))
        settings = {**self.special_tokens, **({"model_max_length": self.model_max_length} if self.model_max_length else {}), "padding_side": self.padding_side,
                    "truncation_side": self.truncation_side}
        for role, spellings in SPECIAL_ROLES.items():  # a role set to none, which reading would otherwise give the usual spelling
            if self._special_ids[role] is None and self._special_id(f"{role}_token", *spellings) is not None:
                settings[f"{role}_token"] = None
        kind = getattr(self, "tokenizer_class", None)
        if kind:  # which of transformers' classes reads the files (BERT's token types, CLIP's "</w>" decoding)
            settings["tokenizer_class"] = kind
        if self.model_input_names != _model_input_names(kind):
            settings["model_input_names"] = list(self.model_input_names)
        if self.clean_up_tokenization_spaces:
            settings["clean_up_tokenization_spaces"] = True
        write_json(directory / TOKENIZER_CONFIG, settings)
        return directory

    def _pad(self, batch: dict, width: int, side: str) -> None:
        """Pad every row of ``batch`` shorter than ``width`` on ``side``: ids with the padding token, the masks with 0."""
        if all(len(ids) >= width for ids in batch["input_ids"]):
            return
        if self.pad_token_id is None:
            hint = f" (as transformers: tok.pad_token = tok.eos_token, {self.eos_token!r})" if self.eos_token is not None else ""
            raise InputError(f"tokenizer {self.name} has no padding token; set one{hint}")
        fills = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        for key, rows in batch.items():
            fill = fills[key]
            for i, row in enumerate(rows):
                padding = [fill] * (width - len(row))
                rows[i] = row + padding if side == "right" else padding + row

    def tokenize(self, text: str) -> list[str]:
        """The tokens of one text, without special tokens (all of them: never truncated, as transformers' tokenize)."""
        check_str("text", text, empty=True)
        self.backend.no_truncation()  # a call before may have left the backend truncating
        with _unicode_named([text], []):
            return self.backend.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list[int | None]:
        """The id of one token (str) or of each in a list; a token outside the vocabulary gets the unknown token's id (None without one)."""
        if isinstance(tokens, str):
            token_id = self._lookup(tokens)
            return self.unk_token_id if token_id is None else token_id
        if isinstance(tokens, (bytes, Mapping, torch.Tensor)) or not _iterable(tokens):  # a tensor holds ids, not tokens
            raise InputError(f"convert_tokens_to_ids takes a token (str) or a list of them, got {type(tokens).__name__}")
        tokens = list(tokens)
        for i, token in enumerate(tokens):
            if not isinstance(token, str):
                raise InputError(f"tokens[{i}] must be a token (str), got {type(token).__name__}: {token!r:.60}")
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> str | list[str]:
        """The token (str) of one id, or the tokens of a list or 1-D tensor of ids (``skip_special_tokens`` drops the special ones from a list)."""
        if isinstance(ids, numbers.Integral) and not isinstance(ids, bool):
            return self.backend.id_to_token(self._check_ids([ids], "convert_ids_to_tokens")[0])
        ids = self._check_ids(ids, "convert_ids_to_tokens")
        special = self._all_special_ids() if check_bool("skip_special_tokens", skip_special_tokens) else set()
        return [self.backend.id_to_token(i) for i in ids if i not in special]

    def _all_special_ids(self) -> set[int]:
        """The special tokens' ids: those the file adds as special ([CLS], <|endoftext|> ...) and those given a role."""
        added = getattr(self.backend, "get_added_tokens_decoder", dict)()
        return {i for i, token in added.items() if getattr(token, "special", False)} | {i for i in self._special_ids.values() if i is not None}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of one sequence of token ids (a list, or a 1-D tensor or array). Special tokens ([CLS], </s>, padding)
        are left out unless ``skip_special_tokens=False``: the text of what a model read or wrote. (transformers keeps
        them by default; pass ``skip_special_tokens=False`` for its output.)"""
        text = self.backend.decode(self._check_ids(ids), skip_special_tokens=check_bool("skip_special_tokens", skip_special_tokens))
        suffix = getattr(getattr(self.backend, "model", None), "end_of_word_suffix", None)
        if suffix:  # CLIP's "</w>" word ends: spaces again, as transformers' CLIPTokenizer decodes
            text = text.replace(suffix, " ").strip()
        if self.clean_up_tokenization_spaces and type(self.backend.model).__name__ != "BPE":
            for spaced, joined in CLEAN_UP:
                text = text.replace(spaced, joined)
        return text

    def _check_ids(self, ids, who: str = "decode") -> list[int]:
        if hasattr(ids, "tolist") and hasattr(ids, "shape"):  # a tensor or a numpy array
            if len(ids.shape) != 1:
                raise InputError(f"{who} takes one sequence of ids (1-D), got shape {tuple(ids.shape)}; use batch_decode for a batch")
            ids = ids.tolist()
        if isinstance(ids, (str, bytes, Mapping)) or not hasattr(ids, "__iter__"):
            raise InputError(f"{who} takes a sequence of token ids, got {type(ids).__name__}")
        ids = list(ids)
        size = self.vocab_size
        for i, token_id in enumerate(ids):
            if not isinstance(token_id, numbers.Integral) or isinstance(token_id, bool):
                raise InputError(f"ids[{i}] must be an integer token id, got {type(token_id).__name__}: {token_id!r:.60}")
            if not 0 <= token_id < size:
                raise InputError(f"ids[{i}] is {token_id}, outside the vocabulary (valid: 0..{size - 1})")
        return [int(token_id) for token_id in ids]

    def batch_decode(self, batch, skip_special_tokens: bool = True) -> list[str]:
        """The text of each sequence of ids in ``batch`` (a list of sequences, or a 2-D tensor or array)."""
        if isinstance(batch, (str, bytes, Mapping)) or not hasattr(batch, "__iter__") or getattr(batch, "ndim", 2) != 2:
            shape = f"shape {tuple(batch.shape)}" if hasattr(batch, "shape") else type(batch).__name__
            raise InputError(f"batch_decode takes a batch of id sequences (a list of lists, or a 2-D tensor), got {shape}")
        return [self.decode(ids, skip_special_tokens) for ids in batch]


def as_texts(argument: str, value) -> tuple[list[str], bool]:
    """The texts of a ``text``/``text_pair`` argument and whether it was one string; names any item that is not a string."""
    if isinstance(value, str):
        return [value], True
    if isinstance(value, (bytes, bytearray)):
        raise InputError(f"{argument} must be a string or a list of strings, got {type(value).__name__}; decode it first (value.decode('utf-8'))")
    if isinstance(value, (Mapping, torch.Tensor)) or not _iterable(value):
        raise InputError(f"{argument} must be a string or a list of strings, got {type(value).__name__}")
    texts = list(value)
    for i, item in enumerate(texts):
        if not isinstance(item, str):
            hint = " (one list of strings per call; nested lists are not a batch)" if isinstance(item, (list, tuple)) else ""
            raise InputError(f"{argument}[{i}] must be a string, got {type(item).__name__}: {item!r:.60}{hint}")
    return texts, False


def _iterable(value) -> bool:
    """``value`` can be iterated over (a 0-d numpy array has ``__iter__`` yet cannot)."""
    return hasattr(value, "__iter__") and getattr(value, "ndim", 1) != 0


@contextmanager
def _unicode_named(texts: list[str], pairs: list[str]) -> Iterator[None]:
    """Turn the tokenizers library's TypeError for text it cannot write as UTF-8 (a lone surrogate)
    into an InputError naming the text and the position, and its bare Exception for a text its model cannot
    encode into an InputError saying why."""
    try:
        yield
    except TypeError as err:
        for argument, items in (("text", texts), ("text_pair", pairs)):
            for i, item in enumerate(items):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError as bad:
                    raise InputError(f"{argument}[{i}] is not valid Unicode: {bad.reason} at position {bad.start} ({item[bad.start:bad.end]!r})") from err
        raise
    except Exception as err:  # the library's bare Exception: a text its model cannot encode (a Unigram without unk_id meeting an unknown character)
        raise InputError(f"the tokenizer cannot encode these texts: {err}") from err


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an added-token object with its "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _input_names(names) -> tuple[str, ...]:
    """``model_input_names`` checked: input_ids and any of the attention mask and token types, in minipt's order."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(name, str) for name in names):
        raise InputError(f"model_input_names must be a list of input names, got {names!r:.80}")
    unknown = [name for name in names if name not in MODEL_INPUT_NAMES]
    if unknown or "input_ids" not in names:
        problem = f"has {', '.join(map(repr, unknown))}, which a tokenizer does not make" if unknown else "lacks 'input_ids'"
        raise InputError(f"model_input_names {list(names)} {problem}; valid: {', '.join(MODEL_INPUT_NAMES)}")
    return tuple(name for name in MODEL_INPUT_NAMES if name in names)


def _tokenizer_class(settings: dict, directory: Path) -> str | None:
    """transformers' tokenizer class for a folder ("RobertaTokenizer"): its config's ``tokenizer_class``, else the one
    the model_type of ``config.json`` beside it implies; None where neither says."""
    name = settings.get("tokenizer_class")
    if not isinstance(name, str):
        model_type = read_json(directory / CONFIG, default={}).get("model_type")
        name = TOKENIZER_CLASSES.get(model_type) if isinstance(model_type, str) else None
    return name.removesuffix("Fast") if name else None


def _model_input_names(tokenizer_class: str | None) -> tuple[str, ...]:
    """The inputs transformers' tokenizer class returns."""
    if tokenizer_class in WITHOUT_TOKEN_TYPES:
        return tuple(name for name in MODEL_INPUT_NAMES if name != "token_type_ids")
    return MODEL_INPUT_NAMES


def _configured(pipeline: dict, settings: dict) -> dict:
    """``tokenizer.json``'s pipeline (changed in place) with ``tokenizer_config.json``'s settings applied over it, as transformers applies them:
    ``add_prefix_space`` to byte-level BPE and to SentencePiece's "▁"; ``do_lower_case``, ``strip_accents`` and
    ``tokenize_chinese_chars`` to WordPiece's BertNormalizer; ``do_lower_case`` and ``keep_accents`` to a Unigram model's
    normalizers (NFKD + StripAccents, then Lowercase, before any precompiled SentencePiece map)."""
    flags = {key: settings[key] for key in ("add_prefix_space", "do_lower_case", "keep_accents", "tokenize_chinese_chars") if isinstance(settings.get(key), bool)}
    if "strip_accents" in settings and (settings["strip_accents"] is None or isinstance(settings["strip_accents"], bool)):
        flags["strip_accents"] = settings["strip_accents"]  # None: strip accents where lower-casing, as BERT does
    for component, parts in (("normalizer", "normalizers"), ("pre_tokenizer", "pretokenizers"), ("decoder", "decoders"), ("post_processor", "processors")):
        node = pipeline.get(component)
        for step in node.get(parts, [node]) if isinstance(node, dict) else ():
            if not isinstance(step, dict):
                continue
            if "add_prefix_space" in flags and step.get("type") in ("ByteLevel", "RobertaProcessing"):
                step["add_prefix_space"] = flags["add_prefix_space"]
            if "add_prefix_space" in flags and step.get("type") == "Metaspace":
                step["prepend_scheme"] = "always" if flags["add_prefix_space"] else "never"
            if step.get("type") == "BertNormalizer":
                for flag, field in (("do_lower_case", "lowercase"), ("strip_accents", "strip_accents"), ("tokenize_chinese_chars", "handle_chinese_chars")):
                    if flag in flags:
                        step[field] = flags[flag]
    model = pipeline.get("model")
    if isinstance(model, dict) and model.get("type") == "Unigram" and {"do_lower_case", "keep_accents"} & flags.keys():
        pipeline["normalizer"] = _unigram_normalizer(pipeline.get("normalizer"), flags)
    return pipeline


def _unigram_normalizer(normalizer: dict | None, flags: dict) -> dict:
    """A SentencePiece-style normalizer sequence with its accent and case steps set by ``keep_accents`` and ``do_lower_case``."""
    steps = normalizer.get("normalizers", [normalizer]) if isinstance(normalizer, dict) else []
    types = [step.get("type") if isinstance(step, dict) else None for step in steps]
    strips_accents = not flags["keep_accents"] if "keep_accents" in flags else "StripAccents" in types
    lowers = flags["do_lower_case"] if "do_lower_case" in flags else "Lowercase" in types
    kept = [step for step, kind in zip(steps, types) if kind not in ("NFKD", "StripAccents", "Lowercase")]
    at = next((i for i, step in enumerate(kept) if isinstance(step, dict) and step.get("type") == "Precompiled"), len(kept))
    added = [{"type": "NFKD"}, {"type": "StripAccents"}] * strips_accents + [{"type": "Lowercase"}] * lowers
    return {"type": "Sequence", "normalizers": kept[:at] + added + kept[at:]}


def _kind(single: bool) -> str:
    return "one string" if single else "a list"


def _byte_level_bpe(directory: Path, roberta: dict | None = None, *, add_prefix_space: bool = False):
    """A ``tokenizers`` backend for GPT-2-style files: bytes mapped to printable characters, then BPE merges.
    ``roberta``: the settings of RoBERTa's tokenizer over the same files (its special tokens, ``add_prefix_space``),
    which puts <s> ... </s> around a text and </s></s> between a pair, as transformers' RobertaTokenizer does.
    ``add_prefix_space``: GPT-2's setting, a space put before the first word."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors

    try:
        vocab, merges = models.BPE.read_file(str(directory / BPE_VOCAB), str(directory / BPE_MERGES))
    except Exception as err:  # tokenizers raises plain Exceptions from Rust
        raise CheckpointError(f"{directory}: {BPE_VOCAB}/{BPE_MERGES} cannot be read as a BPE vocabulary ({err})") from err
    _check_merges(vocab, merges, directory / BPE_MERGES)
    backend = Backend(models.BPE(vocab, merges))
    # GPT-2's split: contractions, letter runs, digit runs, punctuation, whitespace; a space stays with the next word
    prefix_space = add_prefix_space or (roberta is not None and roberta.get("add_prefix_space") is True)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    backend.decoder = decoders.ByteLevel()  # printable characters back to the bytes, so decode round-trips
    if roberta is not None:
        from tokenizers import AddedToken

        bad = [role for role in ROBERTA_SPECIAL_TOKENS if _token_text(roberta.get(role)) is None]
        if bad:
            raise CheckpointError(f"{directory}: RoBERTa's {', '.join(bad)} is {roberta[bad[0]]!r:.40} in its config, not a token")
        added = {}
        for role in ROBERTA_SPECIAL_TOKENS:  # with the flags the config gives (<mask> takes the space before it: lstrip)
            value = roberta[role]
            flags = {flag: value[flag] for flag in ("lstrip", "rstrip", "single_word", "normalized") if isinstance(value, dict) and isinstance(value.get(flag), bool)}
            added.setdefault(_token_text(value), AddedToken(_token_text(value), special=True, **flags))
        backend.add_special_tokens(list(added.values()))  # new ones after the vocabulary
        sep, cls = _token_text(roberta["sep_token"]), _token_text(roberta["cls_token"])
        backend.post_processor = processors.RobertaProcessing((sep, backend.token_to_id(sep)), (cls, backend.token_to_id(cls)), add_prefix_space=prefix_space)
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    if roberta is None and backend.token_to_id(ENDOFTEXT) is not None:
        backend.add_special_tokens([ENDOFTEXT])  # "<|endoftext|>" in text is the one token, never split
    return backend


def _check_merges(vocab: dict, merges: list, where: Path, prefix: str = "") -> None:
    """Every BPE merge makes a token of the vocabulary: one that does not makes the tokenizers library panic (a Rust
    abort, not an exception) at the first text that needs it. ``prefix``: the model's continuing_subword_prefix, which
    a merge drops from its second part."""
    for number, pair in enumerate(merges):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
            raise CheckpointError(f"{where}: merge {number} is {pair!r:.60}, not a pair of tokens")
        joined = pair[0] + pair[1][len(prefix):]  # the library drops the prefix's length from the second part
        if joined not in vocab or pair[0] not in vocab or pair[1] not in vocab:
            absent = next(t for t in (pair[0], pair[1], joined) if t not in vocab)
            raise CheckpointError(f"{where}: merge {number} ({pair[0]!r} + {pair[1]!r}) needs {absent!r}, which the vocabulary lacks")


def _put_bos_first(backend, bos: str | None, where: Path) -> None:
    """``add_bos_token``: every text begins with ``bos`` (a pair: each side), as transformers' GPT2Tokenizer does."""
    from tokenizers import processors

    if bos is None or backend.token_to_id(bos) is None:
        raise CheckpointError(f"{where}: add_bos_token is true but the bos_token {bos!r} is not in the vocabulary")
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, backend.token_to_id(bos))])


def _template_ids_outside(processor, size: int) -> list[str]:
    """The special tokens a ``TemplateProcessing`` post-processor (alone or in a ``Sequence``) defines with ids past the
    vocabulary's ``size`` ("'[CLS]' = 999999"): tokenizers puts them in every encoding, which no model can embed."""
    if not isinstance(processor, dict):
        return []
    if processor.get("type") == "Sequence":
        return [found for inner in processor.get("processors") or [] for found in _template_ids_outside(inner, size)]
    if processor.get("type") != "TemplateProcessing" or not isinstance(processor.get("special_tokens"), dict):
        return []
    return [f"{token!r} = {i}" for token, entry in processor["special_tokens"].items() if isinstance(entry, dict)
            for i in entry.get("ids") or [] if isinstance(i, int) and not 0 <= i < size]


def _is_clip(settings: dict, directory: Path) -> bool:
    """A vocab.json + merges.txt folder is CLIP's: its tokenizer_class (or config.json's model_type) says so, or
    its merges end words with "</w>" (the first merges of CLIP's file join a word's last letters)."""
    if _tokenizer_class(settings, directory) == "CLIPTokenizer":
        return True
    if _tokenizer_class(settings, directory) is not None:
        return False
    try:
        with open(directory / BPE_MERGES, encoding="utf-8") as merges:
            head = [line for _, line in zip(range(1000), merges)]
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{directory / BPE_MERGES} cannot be read as text ({err})") from err
    return any(line.rstrip("\n").endswith(END_OF_WORD) for line in head)


def _clip_bpe(directory: Path, settings: dict):
    """A ``tokenizers`` backend for CLIP's files, the pipeline of transformers' CLIPTokenizer: NFC, whitespace runs
    made one space, lower case; CLIP's split (``CLIP_SPLIT``), then bytes as printable characters; BPE whose word ends
    carry "</w>"; ``<|startoftext|> text <|endoftext|>`` (RoBERTa's post-processor, as transformers uses it for CLIP)."""
    from tokenizers import Regex
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

    bos, eos, unk = (_token_text(settings.get(f"{role}_token")) for role in ("bos", "eos", "unk"))
    try:
        vocab, merges = models.BPE.read_file(str(directory / BPE_VOCAB), str(directory / BPE_MERGES))
        bpe = models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD, fuse_unk=False, unk_token=unk)
    except Exception as err:  # tokenizers raises plain Exceptions from Rust
        raise CheckpointError(f"{directory}: {BPE_VOCAB}/{BPE_MERGES} cannot be read as a BPE vocabulary ({err})") from err
    missing = [token for token in dict.fromkeys((bos, eos, unk)) if token is None or token not in vocab]
    if missing:
        raise CheckpointError(f"{directory / BPE_VOCAB} lacks CLIP's special token(s) {', '.join(map(repr, missing))}")
    backend = Backend(bpe)
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()  # Tokenizer.decode turns the "</w>" left in the text into spaces
    backend.add_special_tokens(list(dict.fromkeys(_token_text(v) for k, v in settings.items() if k.endswith("_token") and _token_text(v) in vocab)))
    backend.post_processor = processors.RobertaProcessing((eos, vocab[eos]), (bos, vocab[bos]), trim_offsets=False, add_prefix_space=False)
    return backend
