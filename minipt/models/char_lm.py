"""A byte-level LSTM language model: the classic recurrent text generator (Karpathy's char-rnn).

Text is read as UTF-8 bytes, so every string can be encoded and the vocabulary
is fixed at 256 symbols:

    bytes (B, T) -> embedding (B, T, E) -> LSTM x num_layers (B, T, H) -> Linear -> logits (B, T, 256)

Generation feeds the prompt once and then one byte at a time, carrying the
LSTM's ``(h, c)`` state forward, so the prefix is never recomputed.

    >>> model = CharLM(CharLMConfig(hidden_size=256))
    >>> ... train (examples/train_char_lm.py) ...
    >>> model.save_pretrained("char_lm")             # config.json + model.safetensors
    >>> CharLM.from_pretrained("char_lm").generate("The ", 200, temperature=0.8, top_k=20, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoint import Pretrained
from ..checks import check_ids
from ..config import Config, count, probability, require
from ..errors import InputError
from ..keymap import KeyMap
from ..nn import LSTM, Linear
from ..registry import register
from ..nn.backend import ChoosesBackend
from ..nn.fuse import InferenceCopy
from ..nn.sampling import check_sampling, choose_next_token

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, B, hidden_size)


@dataclass
class CharLMConfig(Config):
    vocab_size: int = count(256)  # one symbol per byte value
    embed_size: int = count(64)
    hidden_size: int = count(512)
    num_layers: int = count(2)
    dropout: float = probability(0.1)  # between LSTM layers and before the output layer, in training only

    model_type = "char-lm"

    def check(self):
        require(self.dropout < 1, "dropout", self.dropout, "a probability below 1 (1 would drop everything)")


class CharLM(Pretrained, ChoosesBackend, InferenceCopy, nn.Module):
    config_class = CharLMConfig
    checkpoint_fields = {
        "vocab_size": ("embedding.weight", 0),
        "embed_size": ("embedding.weight", 1),
        "hidden_size": ("head.weight", 1),
        "num_layers": "lstm.weight_ih_l",
    }
    # The LSTM's layers share one module (torch.nn.LSTM's layout), so they form one stage; no task head to replace.
    transfer_stages = {"embedding": "embedding", "lstm": "lstm", "head": "head"}  # see minipt.transfer

    def __init__(self, config: CharLMConfig | None = None):
        super().__init__()
        self.config = config = config or CharLMConfig()
        self.embedding = nn.Embedding(config.vocab_size, config.embed_size)
        self.lstm = LSTM(
            config.embed_size,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = Linear(config.hidden_size, config.vocab_size)
        self.set_backend(config.backend)

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Next-byte logits (B, T, vocab) for byte ids (B, T), and the LSTM state after the last step."""
        self.check_ids(ids)
        hidden, state = self.lstm(self.embedding(ids), state)  # (B, T, H)
        return self.head(self.dropout(hidden)), state

    def check_ids(self, ids: torch.Tensor) -> None:
        vocab = self.config.vocab_size
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise InputError(f"CharLM expects integer byte ids of shape (B, T), got {shape}")
        if ids.shape[1] == 0:
            raise InputError("CharLM got an empty sequence (T = 0)")
        check_ids("CharLM ids", ids, vocab)

    # -- text in and out -------------------------------------------------------
    @staticmethod
    def encode(text: str) -> torch.Tensor:
        """UTF-8 bytes of ``text`` as ids (T,)."""
        if not isinstance(text, str):
            raise InputError(f"CharLM encodes text (str), got {type(text).__name__}")
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)

    @staticmethod
    def decode(ids) -> str:
        """Text of byte ids; a byte sequence cut inside a character shows as U+FFFD."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    # -- generation --------------------------------------------------------------
    @torch.no_grad()
    def generate_ids(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        return_logits: bool = False,
        *,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
    ):
        """Continue byte ids (B, T) by ``max_new_tokens`` sampled bytes -> (B, T + max_new_tokens).

        The prompt is run once; each new byte is one LSTM step from the carried
        state. ``temperature=0`` picks the most likely byte; ``top_k`` / ``top_p``
        sample among the k most likely / the nucleus; ``repetition_penalty`` > 1
        makes bytes already in the row less likely (``minipt.nn.sampling``). With
        ``return_logits`` the (B, N, vocab) logits each new byte was drawn from
        (before the penalty) come back too.
        """
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        vocab = self.config.vocab_size
        check_sampling(temperature, top_k, top_p, repetition_penalty, generator, vocab_size=vocab, zero_temperature_is_greedy=True)
        logits, state = self(ids)  # the whole prompt, once
        logits = logits[:, -1]  # (B, vocab): the distribution of the first new byte
        out, seen = [ids], []
        for _ in range(max_new_tokens):
            seen.append(logits)
            so_far = torch.cat(out, dim=1) if repetition_penalty != 1 else None
            next_id = choose_next_token(
                logits, do_sample=temperature != 0, temperature=temperature or 1.0, top_k=top_k, top_p=top_p,
                repetition_penalty=repetition_penalty, input_ids=so_far, generator=generator,
            )[:, None]  # (B, 1)
            out.append(next_id)
            logits, state = self(next_id, state)  # one step from the carried state
            logits = logits[:, -1]
        ids = torch.cat(out, dim=1)
        if return_logits:
            return ids, (torch.stack(seen, dim=1) if seen else logits.new_zeros(ids.shape[0], 0, vocab))
        return ids

    def generate(
        self,
        prompt: str = "",
        max_new_tokens: int = 200,
        temperature: float = 1.0,
        top_k: int | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
    ) -> str:
        """``prompt`` continued by ``max_new_tokens`` sampled bytes, as text (an empty prompt starts a new line).

        ``seed`` (or an explicit ``generator``) makes sampling reproducible; the
        sampling options are ``generate_ids``'.
        """
        ids = self.encode(prompt or "\n")[None].to(self.embedding.weight.device)  # (1, T)
        if generator is None and seed is not None:
            generator = torch.Generator(device=ids.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            ids = self.generate_ids(ids, max_new_tokens, temperature, top_k, generator, top_p=top_p, repetition_penalty=repetition_penalty)
        finally:
            self.train(was_training)
        new = ids[0, ids.shape[1] - max_new_tokens :].tolist() if max_new_tokens else []
        return prompt + self.decode(new)

    # -- saving and loading (config.json + model.safetensors) -----------------------
    @classmethod
    def keymap(cls, config: CharLMConfig | None = None) -> KeyMap:
        return KEYMAP


# The saved names are minipt's own, the LSTM's in torch.nn's layout (weight_ih_l0 ...),
# so a torch.nn.LSTM of the same shape can read them too.
KEYMAP = KeyMap(
    [
        ("embedding.weight", "embedding.weight"),
        ("lstm.{p}", "lstm.{p}"),
        ("head.{p}", "head.{p}"),
    ]
)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One id per row of ``logits`` (B, V) -> (B, 1): greedy at temperature 0, else ``minipt.nn.sampling.choose_next_token``."""
    check_sampling(temperature, top_k, None, 1.0, generator, zero_temperature_is_greedy=True)
    return choose_next_token(logits, do_sample=temperature != 0, temperature=temperature or 1.0, top_k=top_k, generator=generator)[:, None]


# -- minipt.reference: where the reference implementation computes the same values ----------
def compare_with_reference(model, path, inputs, rtol):
    """torch.nn's Embedding, LSTM (one layer at a time) and Linear on the same weights, point by point (``minipt.reference.layer_diffs``)."""
    from ..checkpoint import Checkpoint
    from ..reference import lstm_layer, report

    checkpoint = Checkpoint(path)
    state = {key: checkpoint.get(key) for key in checkpoint.keys()}
    text = "The government said on Tuesday that it would" if inputs is None else inputs
    if isinstance(text, torch.Tensor):
        ids, label = text, f"byte ids of shape {tuple(text.shape)}"
    elif isinstance(text, str):
        ids, label = model.encode(text)[None], f"{text!r} ({len(text.encode())} bytes)"
    else:
        raise InputError(f"CharLM compares on a text or byte ids (B, T); got {type(text).__name__}")
    layers = 1 + max(int(key.split("_l")[-1].split("_")[0]) for key in state if key.startswith("lstm.weight_ih_l"))
    theirs = {"embedding.out": nn.functional.embedding(ids, state["embedding.weight"])}
    x = theirs["embedding.out"]
    for k in range(layers):  # torch.nn, one layer at a time, to see each layer's output
        x, _ = lstm_layer(state, "lstm.", k)(x)
        theirs[f"lstm.layers.{k}.h"] = x.transpose(0, 1)  # (T, B, H)
    theirs["head.out"] = nn.functional.linear(x, state["head.weight"], state["head.bias"])
    points = {name: None for name in ["embedding.out", *[f"lstm.layers.{k}.h" for k in range(layers)], "head.out"]}
    return report(model, "torch.nn (Embedding, LSTM per layer, Linear)", label, rtol, points, lambda: model(ids), None, None, theirs)


# -- the family's one declaration (minipt.registry) ------------------------------------------
FAMILY = register(
    "char-lm",
    (CharLM,),
    tiny=lambda: CharLMConfig(embed_size=8, hidden_size=16, num_layers=2),
    inputs=lambda cls: ((torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(1)),), {}),
    reference=compare_with_reference,
)
