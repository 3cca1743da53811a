"""Grapheme-to-phoneme: a GRU encoder-decoder from letters to ARPAbet phonemes.

The model is g2p-en's (Park & Kim), loaded from its official ``checkpoint20.npz``:

    letters + </s>  -> embedding (256) -> GRU encoder   -> final hidden state h
    <s>             -> embedding (256) -> GRU decoder (starting from h)
                                       -> Linear(256 -> 74) -> best phoneme, fed back
    ... until </s>, or 20 phonemes.

    >>> from minipt.models.g2p import G2P
    >>> G2P.from_pretrained().phonemize("hello")
    ['HH', 'EH1', 'L', 'OW0']

The vocabularies live in g2p-en's ``g2p.py`` as two list expressions; they are
read from its text with ``ast`` (importing g2p_en would download NLTK data).
"""

from __future__ import annotations

import ast
import functools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import Checkpoint, Pretrained
from ..checks import check_ids, tracing
from ..config import Config, count, require
from ..errors import CheckpointError, InputError
from ..keymap import KeyMap
from ..nn import GRU, Linear
from ..registry import Reads, register
from ..nn.backend import ChoosesBackend
from ..nn.fuse import InferenceCopy

BOS, EOS = "<s>", "</s>"
PAD, UNK = "<pad>", "<unk>"
WORD_MARKS = "'-"  # inside a word, read as <unk> as g2p-en does


@dataclass
class G2PConfig(Config):
    graphemes: list[str] = field(default_factory=list)  # input vocabulary: <pad> <unk> </s> a..z
    phonemes: list[str] = field(default_factory=list)  # output vocabulary: <pad> <unk> <s> </s> AA0 ... ZH
    embed_size: int = count(256)
    hidden_size: int = count(256)
    max_phonemes: int = count(20)  # greedy decoding stops here if </s> never comes

    model_type = "g2p"

    def check(self):
        for name, vocab, needed in (("graphemes", self.graphemes, (EOS,)), ("phonemes", self.phonemes, (BOS, EOS))):
            valid = isinstance(vocab, list) and all(isinstance(t, str) for t in vocab) and len(set(vocab)) == len(vocab)
            require(valid, name, vocab, "a list of distinct strings")
            missing = [t for t in needed if t not in vocab]
            require(not missing, name, vocab, f"a vocabulary holding the special token(s) {needed}")

    @property
    def num_graphemes(self) -> int:
        return len(self.graphemes)

    @property
    def num_phonemes(self) -> int:
        return len(self.phonemes)


class G2P(Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    config_class = G2PConfig
    default_checkpoint = "g2p-en"
    weights_file = "checkpoint20.npz"
    checkpoint_fields = {
        "num_graphemes": ("letter_embedding.weight", 0),
        "embed_size": ("letter_embedding.weight", 1),
        "num_phonemes": ("phoneme_embedding.weight", 0),
        "hidden_size": ("encoder.weight_hh_l0", 1),
    }
    transfer_stages = {"encoder": ("letter_embedding", "encoder"), "decoder": ("phoneme_embedding", "decoder"), "head": "classifier"}

    def __init__(self, config: G2PConfig):
        super().__init__()
        self.config = config
        self.letter_embedding = nn.Embedding(len(config.graphemes), config.embed_size)
        self.encoder = GRU(config.embed_size, config.hidden_size, batch_first=True)
        self.phoneme_embedding = nn.Embedding(len(config.phonemes), config.embed_size)
        self.decoder = GRU(config.embed_size, config.hidden_size, batch_first=True)
        self.classifier = Linear(config.hidden_size, len(config.phonemes))
        self.letter_index = {g: i for i, g in enumerate(config.graphemes)}
        self.set_backend(config.backend)

    def encode_letters(self, word: str) -> torch.Tensor:
        """Letter ids of one word followed by </s>: (T + 1,). An apostrophe or a hyphen inside a word ("o'clock",
        "rock-n-roll") is <unk>, as g2p-en's own predict() reads it; other characters are refused by name."""
        if not isinstance(word, str) or not word:
            raise InputError(f"G2P expects a non-empty word, got {word!r}")
        unknown = sorted({ch for ch in word if ch not in WORD_MARKS and any(c not in self.letter_index for c in ch.lower())})
        if unknown:
            known = "".join(g for g in self.config.graphemes if not g.startswith("<"))
            raise InputError(f"G2P cannot spell {word!r}: characters {unknown} are not among its letters {known!r} (or ' and -)")
        if all(ch in WORD_MARKS for ch in word):
            raise InputError(f"G2P cannot spell {word!r}: it holds no letter")
        unk = self.letter_index.get(UNK)
        return torch.tensor([self.letter_index.get(ch, unk) for ch in word.lower()] + [self.letter_index[EOS]])

    def encode(self, letter_ids: torch.Tensor, letter_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's final hidden state (1, B, hidden) for letter ids (B, T); ``letter_lengths`` (B,): how many
        ids of each row are letters (and </s>), the rest padding, which the encoder then never reads."""
        embedded = self.letter_embedding(letter_ids)  # (B, T, embed)
        if letter_lengths is not None:
            embedded = nn.utils.rnn.pack_padded_sequence(embedded, letter_lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = self.encoder(embedded)  # (1, B, hidden)
        return hidden

    def decode_step(self, phoneme_ids: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder step: previous phonemes (B,) and state (1, B, hidden) -> logits (B, P), new state."""
        output, hidden = self.decoder(self.phoneme_embedding(phoneme_ids)[:, None], hidden)  # (B, 1, hidden)
        return self.classifier(output[:, 0]), hidden

    @torch.no_grad()
    def phonemize(self, word: str) -> list[str]:
        """ARPAbet phonemes of one word by greedy decoding."""
        phonemes = self.config.phonemes
        bos, eos = phonemes.index(BOS), phonemes.index(EOS)
        device = self.classifier.weight.device
        hidden = self.encode(self.encode_letters(word)[None].to(device))
        previous = torch.tensor([bos], device=device)
        out = []
        for _ in range(self.config.max_phonemes):
            logits, hidden = self.decode_step(previous, hidden)  # the state carries the prefix
            previous = logits.argmax(dim=-1)
            if previous.item() == eos:
                break
            out.append(phonemes[previous.item()])
        return out

    def check_inputs(self, letter_ids: torch.Tensor, phoneme_ids: torch.Tensor, letter_lengths: torch.Tensor | None = None) -> None:
        """Raise an InputError unless both are integer id batches (B, T) of the same B, every id inside its vocabulary,
        and ``letter_lengths``, where given, are lengths of those rows."""
        for name, ids, vocab in (("letter_ids", letter_ids, self.config.graphemes), ("phoneme_ids", phoneme_ids, self.config.phonemes)):
            if not isinstance(ids, torch.Tensor):
                raise InputError(f"G2P.forward expects {name} as a tensor of integer ids (B, T), got {type(ids).__name__}")
            if ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
                raise InputError(f"G2P.forward expects {name} as integer ids (B, T), got shape {tuple(ids.shape)} of {ids.dtype}")
            if ids.shape[1] == 0:  # an empty batch (B = 0) is fine
                raise InputError(f"G2P.forward: {name} of shape {tuple(ids.shape)} hold sequences of no tokens; each needs at least one (</s> or <s>)")
            check_ids(f"G2P.forward: {name}", ids, len(vocab), device=self.letter_embedding.weight.device)
        if letter_ids.shape[0] != phoneme_ids.shape[0]:
            raise InputError(f"G2P.forward: {letter_ids.shape[0]} letter sequences but {phoneme_ids.shape[0]} phoneme sequences")
        if letter_lengths is None:  # every id is read, <pad> too: a padded batch needs its lengths
            return
        if not isinstance(letter_lengths, torch.Tensor) or letter_lengths.shape != (letter_ids.shape[0],) or letter_lengths.is_floating_point():
            raise InputError(f"G2P.forward: letter_lengths must be integer lengths (B,) = ({letter_ids.shape[0]},), got {letter_lengths!r:.80}")
        if len(letter_lengths) and not tracing() and not bool(((letter_lengths >= 1) & (letter_lengths <= letter_ids.shape[1])).all()):
            raise InputError(f"G2P.forward: letter_lengths must lie in [1, {letter_ids.shape[1]}], got {letter_lengths.tolist()}")

    def forward(self, letter_ids: torch.Tensor, phoneme_ids: torch.Tensor, letter_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, S, P): letters (B, T) with </s>, decoder inputs (B, S) starting with <s>;
        ``letter_lengths`` (B,) where the letters are padded (``pad_sequence``), which the encoder then skips; without
        them every id is read, <pad> included, so a word's encoding would change with its batch."""
        self.check_inputs(letter_ids, phoneme_ids, letter_lengths)
        hidden = self.encode(letter_ids, letter_lengths)
        output, _ = self.decoder(self.phoneme_embedding(phoneme_ids), hidden)  # (B, S, hidden)
        return self.classifier(output)

    # -- official weights --------------------------------------------------
    @classmethod
    def keymap(cls, config: G2PConfig | None = None) -> KeyMap:
        """g2p-en's array names <-> minipt's."""
        return _KEYMAP

    @classmethod
    def config_from_checkpoint(cls, path, checkpoint: Checkpoint) -> G2PConfig:
        """The vocabularies live in g2p-en's source beside the arrays, read as text; the sizes come from the arrays."""
        folder = path if path.is_dir() else path.parent
        graphemes, phonemes = read_vocabularies(folder / VOCAB_FILE)
        embedding = checkpoint.shape("enc_emb") if "enc_emb" in checkpoint else ()
        sizes = dict(embed_size=embedding[1]) if len(embedding) == 2 and embedding[1] >= 1 else {}
        return G2PConfig(graphemes=graphemes, phonemes=phonemes, **sizes)


OFFICIAL_FILE = G2P.weights_file
VOCAB_FILE = "g2p.py"

# g2p-en's array names -> minipt's; the GRU weights keep torch.nn.GRU's layout (gates r, z, n).
_KEYMAP = KeyMap(
    [
        ("enc_emb", "letter_embedding.weight"),
        ("enc_w_ih", "encoder.weight_ih_l0"),
        ("enc_w_hh", "encoder.weight_hh_l0"),
        ("enc_b_ih", "encoder.bias_ih_l0"),
        ("enc_b_hh", "encoder.bias_hh_l0"),
        ("dec_emb", "phoneme_embedding.weight"),
        ("dec_w_ih", "decoder.weight_ih_l0"),
        ("dec_w_hh", "decoder.weight_hh_l0"),
        ("dec_b_ih", "decoder.bias_ih_l0"),
        ("dec_b_hh", "decoder.bias_hh_l0"),
        ("fc_w", "classifier.weight"),
        ("fc_b", "classifier.bias"),
    ]
)


# -- vocabularies from g2p-en's source text ----------------------------------------
def read_vocabularies(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """The ``graphemes`` and ``phonemes`` lists assigned in g2p-en's ``g2p.py``, read without running it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: g2p-en's g2p.py (which holds the vocabularies) is missing")
    with warnings.catch_warnings():  # the file's own regexes have escapes newer Pythons warn about
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr in ("graphemes", "phonemes"):
                    found[target.attr] = _list_value(node.value, path)
    missing = [name for name in ("graphemes", "phonemes") if name not in found]
    if missing:
        raise CheckpointError(f"{path} assigns no {' or '.join(missing)} list")
    return found["graphemes"], found["phonemes"]


def _list_value(node: ast.expr, path: Path) -> list[str]:
    """A list of strings written as literals, ``list("abc")`` and ``+``; nothing is executed."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _list_value(node.left, path) + _list_value(node.right, path)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "list" and len(node.args) == 1:
        return list(ast.literal_eval(node.args[0]))
    try:
        value = ast.literal_eval(node)
    except ValueError as err:
        raise CheckpointError(f"{path}: a vocabulary is not a literal list ({ast.unparse(node)[:60]}...)") from err
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"{path}: a vocabulary is not a list of strings")
    return value


@functools.cache
def g2p_en() -> G2P:
    """g2p-en's model, loaded once."""
    return G2P.from_pretrained("g2p-en")


def phonemize(word: str) -> list[str]:
    """ARPAbet phonemes of one English word, spelt with the letters a-z."""
    return g2p_en().phonemize(word)


# -- minipt.reference: where the reference implementation computes the same values ----------
def _default_word(config: G2PConfig) -> str:
    """"activationist" where the model's letters spell it, else as many of its own letters in turn."""
    letters = [g for g in config.graphemes if not g.startswith("<")]
    if not letters:
        raise InputError("this G2P model has no letters among its graphemes to compare on")
    word = "activationist"
    return word if set(word) <= set(letters) else "".join(letters[i % len(letters)] for i in range(len(word)))


def compare_with_reference(model, path, inputs, rtol):
    """torch.nn's Embedding, GRU and Linear on g2p-en's arrays, point by point (``minipt.reference.layer_diffs``)."""
    from ..reference import report

    checkpoint = G2P.open_checkpoint(path)
    array = lambda key: torch.as_tensor(checkpoint.get(key)).float()  # noqa: E731
    word = _default_word(model.config) if inputs is None else inputs
    if not isinstance(word, str):
        raise InputError(f"G2P compares on a word; got {type(word).__name__}")
    letters = model.encode_letters(word)[None]  # (1, T)
    phonemes = model.config.phonemes
    spoken = [phonemes.index(BOS)] + [phonemes.index(p) for p in model.phonemize(word)]
    decoder_in = torch.tensor([spoken])  # (1, S): teacher forcing on minipt's own pronunciation
    gru = {}
    for side in ("enc", "dec"):
        module = nn.GRU(array(f"{side}_w_ih").shape[1], array(f"{side}_w_hh").shape[1], batch_first=True)
        module.load_state_dict({f"{kind}_l0": array(f"{side}_{short}") for kind, short in
                                (("weight_ih", "w_ih"), ("weight_hh", "w_hh"), ("bias_ih", "b_ih"), ("bias_hh", "b_hh"))})
        gru[side] = module.eval()
    theirs = {"letter_embedding.out": nn.functional.embedding(letters, array("enc_emb"))}
    encoded, state = gru["enc"](theirs["letter_embedding.out"])
    theirs["encoder.layers.0.h"] = encoded.transpose(0, 1)
    theirs["phoneme_embedding.out"] = nn.functional.embedding(decoder_in, array("dec_emb"))
    decoded, _ = gru["dec"](theirs["phoneme_embedding.out"], state)
    theirs["decoder.layers.0.h"] = decoded.transpose(0, 1)
    theirs["classifier.out"] = nn.functional.linear(decoded, array("fc_w"), array("fc_b"))
    points = {name: None for name in theirs}
    label = f"{word!r} ({letters.shape[1]} letters with </s>; the decoder fed <s> and minipt's {len(spoken) - 1} phonemes)"
    return report(model, "torch.nn (Embedding, GRU, Linear) on g2p-en's arrays", label, rtol, points, lambda: model(letters, decoder_in), None, None, theirs)


# -- the family's one declaration (minipt.registry) ------------------------------------------
def _example_inputs(cls):
    generator = torch.Generator().manual_seed(1)
    return (torch.randint(1, 5, (2, 3), generator=generator), torch.randint(0, 6, (2, 2), generator=generator)), {}


FAMILY = register(
    "g2p",
    (G2P,),
    tiny=lambda: G2PConfig(graphemes=["<pad>", "<unk>", "</s>", "a", "b"], phonemes=["<pad>", "<unk>", "<s>", "</s>", "A", "B"], embed_size=8, hidden_size=8),
    inputs=_example_inputs,
    signature=("enc_emb", "g2p-en's grapheme-to-phoneme model"),
    reference=compare_with_reference,
    reads=Reads("letter ids and as many phoneme ids (batch x length)", "1x16", count=2),
)
