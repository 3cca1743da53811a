"""A byte-level LSTM language model: the classic recurrent text generator (Karpathy's char-rnn).

Text is read as UTF-8 bytes, so every string can be encoded and the vocabulary
is fixed at 256 symbols:

    bytes (B, T) -> embedding (B, T, E) -> LSTM x num_layers (B, T, H) -> Linear -> logits (B, T, 256)

Generation feeds the prompt once and then one byte at a time, carrying the
LSTM's ``(h, c)`` state forward, so the prefix is never recomputed.

    >>> model = CharLM(CharLMConfig(hidden_size=256))
    >>> ... train (examples/train_char_lm.py) ...
    >>> model.save_pretrained("char_lm")             # config.json + model.safetensors
    >>> model = CharLM.from_pretrained("char_lm")
    >>> ids = model.generate(model.encode("The ")[None], max_new_tokens=200, do_sample=True, temperature=0.8, top_k=20, seed=0)
    >>> model.decode(ids[0])

``generate`` takes and returns byte ids, as GPT-2's does; ``encode`` and
``decode`` turn text into ids and back, as a tokenizer would.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoint import Pretrained
from ..checks import check_ids
from ..config import Config, count, probability, require
from ..errors import InputError
from ..keymap import KeyMap
from ..nn import Dropout, LSTM, Linear
from ..registry import Reads, register
from ..nn.backend import ChoosesBackend
from ..nn.fuse import InferenceCopy
from ..nn.sampling import DEFAULT_TOP_K, GenerateOutput, check_generation, check_return_sequences, generation_loop
from ..nn.streamer import Streamer, ends_streamer

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
    transfer_stages = {"embedding": "embedding", "lstm": "lstm", "head": ("dropout", "head")}  # see minipt.transfer
    # An LSTM has no context to bound generate, as GPT-2's n_positions does: this cap does (64 KiB of text
    # per call). Asking for more is an InputError before any step runs; set it on a model to go further.
    max_generate_tokens: int = 65536

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
        self.dropout = Dropout(config.dropout)
        self.head = Linear(config.hidden_size, config.vocab_size)
        self.set_backend(config.backend)

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Next-byte logits (B, T, vocab) for byte ids (B, T), and the LSTM state after the last step."""
        self.check_inputs(ids, state)
        hidden, state = self.lstm(self.embedding(ids), state)  # (B, T, H)
        return self.head(self.dropout(hidden)), state

    def check_inputs(self, ids: torch.Tensor, state: State | None = None) -> None:
        """``InputError`` naming the first of forward's arguments that does not fit this model."""
        config = self.config
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
            shape = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise InputError(f"CharLM expects int64 (or int32) byte ids of shape (B, T), got {shape}")
        if ids.shape[1] == 0:
            raise InputError("CharLM got an empty sequence (T = 0)")
        if state is not None:
            expected = (config.num_layers, ids.shape[0], config.hidden_size)
            if not (isinstance(state, (tuple, list)) and len(state) == 2 and all(isinstance(s, torch.Tensor) and tuple(s.shape) == expected for s in state)):
                found = [tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__ for s in state] if isinstance(state, (tuple, list)) else type(state).__name__
                raise InputError(f"state must be the LSTM's (h, c), each of shape (num_layers, B, hidden_size) = {expected}; got {found}")
        check_ids("CharLM ids", ids, config.vocab_size, device=self.embedding.weight.device)

    # -- text in and out, as a tokenizer ---------------------------------------------
    @staticmethod
    def encode(text: str) -> torch.Tensor:
        """UTF-8 bytes of ``text`` as ids (T,); ``encode(text)[None]`` is a batch of one for ``generate``."""
        if not isinstance(text, str):
            raise InputError(f"CharLM encodes text (str), got {type(text).__name__}")
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)

    @staticmethod
    def decode(ids) -> str:
        """Text of one sequence of byte ids (a list or 1-D tensor); a byte sequence cut inside a character shows as U+FFFD."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise InputError(f"CharLM.decode takes one sequence of byte ids (1-D), got shape {tuple(ids.shape)}; use batch_decode for a batch")
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise InputError(f"CharLM.decode takes a sequence of byte ids, got {type(ids).__name__}")
        ids = list(ids)
        bad = next((i for i, b in enumerate(ids) if not (isinstance(b, numbers.Integral) and not isinstance(b, bool) and 0 <= b < 256)), None)
        if bad is not None:
            raise InputError(f"CharLM.decode: ids[{bad}] is {ids[bad]!r:.40}, not a byte id (0..255)")
        return bytes(int(b) for b in ids).decode("utf-8", errors="replace")

    @classmethod
    def batch_decode(cls, ids) -> list[str]:
        """``decode`` of each row of a batch (B, T)."""
        return [cls.decode(row) for row in ids]

    # -- generation --------------------------------------------------------------
    @ends_streamer
    @torch.no_grad()  # not inference_mode: what it returns may enter a computation with gradients
    def generate(
        self,
        input_ids: torch.Tensor,  # (B, T) byte ids: model.encode(text)[None] for one text
        *,
        max_new_tokens: int | None = None,  # bytes to add; or max_length, which counts the prompt too (neither: 20 new)
        max_length: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = DEFAULT_TOP_K,  # when sampling: the k most likely tokens, transformers' default 50 (0 or None: all)
        top_p: float | None = None,
        repetition_penalty: float = 1.0,  # > 1 makes bytes already in the row less likely (1.0 = off)
        eos_token_id: int | None = None,  # a row stops at this byte (b"\n"[0] stops at the end of a line; None: never)
        pad_token_id: int | None = None,  # what fills a stopped row (None: eos)
        seed: int | None = None,
        generator: torch.Generator | None = None,
        streamer: Streamer | None = None,  # put(prompt), put(each new (B,) byte batch), end(): minipt.nn.streamer
        output_logits: bool = False,
        return_dict_in_generate: bool = False,
        num_return_sequences: int = 1,  # samples per prompt (do_sample): rows i n .. i n + n - 1 are prompt i's
    ) -> torch.Tensor | GenerateOutput:
        """Byte ids (B, T) followed by the generated bytes, ``(B, T + new)``: GPT-2's ``generate``, on an LSTM.

        The prompt is run once; each new byte is one LSTM step from the carried
        ``(h, c)`` state. Greedy unless ``do_sample``; ``seed`` or ``generator``
        make sampling reproducible; the options are
        ``minipt.nn.sampling.choose_next_token``'s. At most
        ``max_generate_tokens`` new bytes per call. Only the state and the chosen
        bytes are kept from step to step; each step's logits are kept only with
        ``output_logits`` (and returned with ``return_dict_in_generate``). Text in and out:
        ``model.decode(model.generate(model.encode(text)[None], ...)[0])``, or a
        ``TextStreamer(model)`` to print it as it grows.
        """
        if isinstance(input_ids, (str, bytes)):
            raise InputError("CharLM.generate takes byte ids (B, T), not text: pass model.encode(text)[None] and read the result with model.decode")
        new, generator = check_generation(
            input_ids, vocab_size=self.config.vocab_size, max_new_tokens=max_new_tokens, max_length=max_length,
            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
            eos_token_id=eos_token_id, pad_token_id=pad_token_id, seed=seed, generator=generator, streamer=streamer,
            output_logits=output_logits, return_dict_in_generate=return_dict_in_generate,
        )
        limit = self.max_generate_tokens
        if new > limit:
            asked = f"max_length {max_length} asks for {new} new bytes" if max_length is not None else f"max_new_tokens {new} is"
            raise InputError(f"{asked} more than CharLM generates in one call: max_generate_tokens = {limit} (a model attribute; raise it for longer runs)")
        input_ids = input_ids.repeat_interleave(check_return_sequences(num_return_sequences, do_sample), dim=0)  # (B n, T)
        state = None

        def next_logits(ids: torch.Tensor) -> torch.Tensor:  # the prompt (B, T), then one byte (B, 1)
            nonlocal state
            hidden, state = self.lstm(self.embedding(ids), state)  # (B, T, H)
            return self.head(self.dropout(hidden[:, -1])).float()  # (B, vocab): the last position's only

        return generation_loop(
            next_logits, input_ids, new, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            generator=generator, streamer=streamer, output_logits=output_logits, return_dict_in_generate=return_dict_in_generate,
        )

    # -- saving and loading (config.json + model.safetensors) -----------------------
    @classmethod
    def keymap(cls, config: CharLMConfig | None = None) -> KeyMap:
        return _KEYMAP


# The saved names are minipt's own, the LSTM's in torch.nn's layout (weight_ih_l0 ...),
# so a torch.nn.LSTM of the same shape can read them too.
_KEYMAP = KeyMap(
    [
        ("embedding.weight", "embedding.weight"),
        ("lstm.{p}", "lstm.{p}"),
        ("head.{p}", "head.{p}"),
    ]
)


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
    reads=Reads("byte ids (batch x bytes)", "1x128"),
)
