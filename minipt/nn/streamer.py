"""Streamers: receive the tokens of ``generate`` while it runs.

Both language models' ``generate`` (GPT-2, the char LM) speak the protocol of
transformers' streamers:

    streamer.put(input_ids)   once, with the prompt                 (B, T)
    streamer.put(tokens)      after each step, with the new tokens  (B,)
    streamer.end()            once, when generation stops (also when it fails, even
                              on a refused argument before the first token: ends_streamer)

Three streamers come with minipt:

    >>> model.generate(ids, max_new_tokens=40, streamer=TextStreamer(tokenizer, skip_prompt=True))  # prints as it goes
    >>> streamer = TextIteratorStreamer(tokenizer)    # text pieces, for a consumer in another thread
    >>> streamer = TokenIteratorStreamer()            # the id tensors themselves

Any object with ``put`` and ``end`` methods works as well.
"""

from __future__ import annotations

import functools
import inspect
import queue
import sys
from typing import Callable, Iterator, TextIO

import torch

from ..checks import check_bool, check_float
from ..errors import InputError

__all__ = ["Streamer", "TextStreamer", "TextIteratorStreamer", "TokenIteratorStreamer", "check_streamer", "ends_streamer"]

_PARTIAL = "\ufffd"  # what a decoder shows for a character whose bytes are not all there yet


class Streamer:
    """The protocol: ``put(token_ids)`` with the prompt, then with each new token batch; ``end()`` once at the end."""

    def put(self, token_ids: torch.Tensor) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


def check_streamer(streamer) -> None:
    """``InputError`` unless ``streamer`` is None or has callable ``put`` and ``end`` methods."""
    if streamer is None:
        return
    lacking = [name for name in ("put", "end") if not callable(getattr(streamer, name, None))]
    if lacking:
        raise InputError(
            f"streamer must have put(token_ids) and end() methods (a minipt.nn.streamer.TextStreamer, for one); "
            f"{type(streamer).__name__} lacks {' and '.join(lacking)}"
        )


def ends_streamer(generate: Callable) -> Callable:
    """Decorates a model's ``generate``: its ``streamer`` is ended exactly once however the call ends.

    A refused argument (a bad ``max_new_tokens``, a batch given to a one-sequence streamer) raises before
    the first token; without an ``end()`` a consumer iterating a ``TextIteratorStreamer`` in another thread
    would wait for ever. The streamer reaches ``generate`` wrapped so that a second ``end()`` does nothing.
    """
    signature = inspect.signature(generate)

    @functools.wraps(generate)
    def generate_then_end(*args, **kwargs):
        streamer = kwargs.get("streamer")
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:  # an argument generate does not take: named, once the streamer is ended
            _end(streamer)
            owner = type(args[0]).__name__ if args else generate.__qualname__.split(".")[0]
            hint = " (beam search is T5's: minipt's other language models decode greedily or sample)" if "num_beams" in str(err) else ""
            raise InputError(f"{owner}.generate: {err}{hint}") from None
        streamer = bound.arguments.get("streamer")
        if streamer is None or not callable(getattr(streamer, "put", None)) or not callable(getattr(streamer, "end", None)):
            return generate(*args, **kwargs)  # nothing to end, or check_streamer names what it lacks
        once = bound.arguments["streamer"] = _EndsOnce(streamer)
        try:
            return generate(*bound.args, **bound.kwargs)
        finally:
            once.end()

    return generate_then_end


def _end(streamer) -> None:
    if callable(getattr(streamer, "end", None)):
        streamer.end()


class _EndsOnce(Streamer):
    """A streamer passed on, whose ``end()`` reaches it once."""

    def __init__(self, streamer):
        self.streamer, self.ended = streamer, False

    def put(self, token_ids: torch.Tensor) -> None:
        self.streamer.put(token_ids)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.streamer.end()

    def __repr__(self) -> str:
        return repr(self.streamer)


class TextStreamer(Streamer):
    """Prints the decoded text of one sequence as it grows.

    ``decode``: a function from a list of ids to text, or anything with a
    ``decode`` method (a ``minipt.Tokenizer``, a ``CharLM``). ``skip_prompt``
    leaves the prompt out; ``decode_kwargs`` go to every decode call (such as
    ``skip_special_tokens``). A character whose bytes span several tokens is
    held back until its last byte arrives (the decoder shows it as U+FFFD
    until then). The text is printed to ``file`` (default: standard output),
    a newline after the end. A tokenizer that cleans up spaces when it decodes
    (``clean_up_tokenization_spaces``: "Hello ," -> "Hello,") can still remove
    one of the last two spaces once the next token comes, so with one the
    text from the second-to-last space on waits for the next token or the end.
    """

    def __init__(self, decode, *, skip_prompt: bool = False, file: TextIO | None = None, **decode_kwargs):
        decode = getattr(decode, "decode", decode)
        if not callable(decode):
            raise InputError(f"TextStreamer needs a decode function (ids -> text) or an object with a decode method, got {type(decode).__name__}")
        self.decode: Callable[..., str] = decode
        # "do n't", " ' ": decoding more ids can still join the last two spaces of the text into what follows
        self._cleans_up = decode_kwargs.get("clean_up_tokenization_spaces", getattr(getattr(decode, "__self__", None), "clean_up_tokenization_spaces", False)) is True
        self.skip_prompt = check_bool("skip_prompt", skip_prompt)
        self.decode_kwargs = decode_kwargs
        self.file = file
        self._ids: list[int] = []  # the ids since the last line ended
        self._shown = 0  # how many characters of their text have been passed on
        self._at_prompt = True  # the next put is the prompt

    def put(self, token_ids: torch.Tensor) -> None:
        ids = _one_sequence(token_ids, type(self).__name__)
        prompt, self._at_prompt = self._at_prompt, False
        if prompt and self.skip_prompt:
            return
        self._ids.extend(ids)
        text = self.decode(self._ids, **self.decode_kwargs)
        if text.endswith("\n"):  # a finished line: pass it on and start afresh, so decoding stays short
            self.on_text(text[self._shown :])
            self._ids, self._shown = [], 0
            return
        settled = text.rstrip(_PARTIAL)  # hold back a character whose bytes are still arriving
        if self._cleans_up:
            settled = _before_last_two_spaces(settled)
        if len(settled) > self._shown:
            self.on_text(settled[self._shown :])
            self._shown = len(settled)

    def end(self) -> None:
        text = self.decode(self._ids, **self.decode_kwargs) if self._ids else ""
        self.on_text(text[self._shown :], stream_end=True)
        self._ids, self._shown, self._at_prompt = [], 0, True  # ready for the next generate

    def on_text(self, text: str, stream_end: bool = False) -> None:
        """Where the text goes: printed at once (override to send it elsewhere)."""
        if stream_end and not text and self._at_prompt:
            return  # generate ended before its first put (a refused argument): no line was begun, none to end
        print(text, end="\n" if stream_end else "", flush=True, file=self.file if self.file is not None else sys.stdout)


def _before_last_two_spaces(text: str) -> str:
    """``text`` up to (not including) its second-to-last whitespace character; "" when it has fewer than two."""
    found = 0
    for i in range(len(text) - 1, -1, -1):
        if text[i].isspace():
            found += 1
            if found == 2:
                return text[:i]
    return ""


class TextIteratorStreamer(TextStreamer):
    """``TextStreamer``'s text pieces as an iterator, for a consumer in another thread than ``generate``.

        >>> streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        >>> threading.Thread(target=model.generate, args=(ids,), kwargs={"max_new_tokens": 40, "streamer": streamer}).start()
        >>> for piece in streamer: print(piece, end="")

    ``timeout`` (seconds): how long one ``next`` waits before raising ``queue.Empty`` (None: for ever).
    """

    def __init__(self, decode, *, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs):
        super().__init__(decode, skip_prompt=skip_prompt, **decode_kwargs)
        self._queue: queue.Queue = queue.Queue()
        self.timeout = check_float("timeout", timeout, low=0, optional=True)

    def on_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._queue.put(text)
        if stream_end:
            self._queue.put(_END)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        item = self._queue.get(timeout=self.timeout)
        if item is _END:
            raise StopIteration
        return item


class TokenIteratorStreamer(Streamer):
    """The token tensors ``generate`` puts, as an iterator: the prompt (B, T) unless ``skip_prompt``, then each step's (B,).

    Iterate in another thread than ``generate`` to see the tokens as they come,
    or after it returns to replay them. ``timeout`` as ``TextIteratorStreamer``'s.
    """

    def __init__(self, *, skip_prompt: bool = False, timeout: float | None = None):
        self.skip_prompt = check_bool("skip_prompt", skip_prompt)
        self.timeout = check_float("timeout", timeout, low=0, optional=True)
        self._queue: queue.Queue = queue.Queue()
        self._at_prompt = True

    def put(self, token_ids: torch.Tensor) -> None:
        prompt, self._at_prompt = self._at_prompt, False
        if not (prompt and self.skip_prompt):
            self._queue.put(token_ids)

    def end(self) -> None:
        self._queue.put(_END)
        self._at_prompt = True

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        item = self._queue.get(timeout=self.timeout)
        if item is _END:
            raise StopIteration
        return item


_END = object()  # what end() queues: the iterator stops there


def _one_sequence(token_ids, who: str) -> list[int]:
    """The ids of a put that holds one sequence: a prompt (1, T) or one new token (1,)."""
    if not isinstance(token_ids, torch.Tensor) or token_ids.dim() not in (1, 2) or token_ids.is_floating_point() or token_ids.is_complex():
        shape = f"{tuple(token_ids.shape)} {token_ids.dtype}" if isinstance(token_ids, torch.Tensor) else type(token_ids).__name__
        raise InputError(f"{who}.put takes token ids, the prompt (1, T) or a new token (1,); got {shape}")
    batch = token_ids.shape[0]
    if batch != 1:
        raise InputError(f"{who} shows one sequence; got a batch of {batch} (use a TokenIteratorStreamer for batches)")
    return token_ids.reshape(-1).tolist()
