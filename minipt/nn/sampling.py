"""Choosing the next token from a batch of logits: the one sampler every language model here uses.

    logits (B, V) -> [repetition penalty] -> greedy argmax
                                          -> / temperature -> top-k -> top-p (nucleus) -> one draw per row

    >>> ids = choose_next_token(logits, do_sample=True, temperature=0.8, top_k=50, top_p=0.95,
    ...                         repetition_penalty=1.2, input_ids=seen, generator=torch.Generator().manual_seed(0))

The order is transformers' ``generate``: the repetition penalty changes the
logits first (so it applies to greedy decoding too), then temperature, top-k
and top-p shape the distribution a sample is drawn from.
"""

from __future__ import annotations

import math
import numbers

import torch

from ..errors import InputError

__all__ = ["choose_next_token", "check_sampling", "apply_repetition_penalty"]


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_sampling(
    temperature=1.0,
    top_k=None,
    top_p=None,
    repetition_penalty=1.0,
    generator=None,
    *,
    vocab_size: int | None = None,
    zero_temperature_is_greedy: bool = False,
) -> None:
    """Raise ``InputError`` naming the first argument that is not a valid sampling setting.

    ``temperature``: a finite real > 0 (or exactly 0 where ``zero_temperature_is_greedy``);
    ``top_k``: a positive integer (at most ``vocab_size`` when given) or None;
    ``top_p``: a real in (0, 1] or None; ``repetition_penalty``: a finite real > 0 (1.0 = off);
    ``generator``: a ``torch.Generator`` or None. Bools and strings are never numbers here.
    """
    floor = ">= 0 (0 = greedy)" if zero_temperature_is_greedy else "> 0"
    lowest_ok = (lambda t: t >= 0) if zero_temperature_is_greedy else (lambda t: t > 0)
    if not (_is_real(temperature) and math.isfinite(temperature) and lowest_ok(temperature)):
        raise InputError(f"temperature must be {floor}, a finite real number; got {temperature!r}")
    if top_k is not None:
        integer = isinstance(top_k, numbers.Integral) and not isinstance(top_k, bool)
        if vocab_size is not None and not (integer and 1 <= top_k <= vocab_size):
            raise InputError(f"top_k must be an integer in [1, {vocab_size}] or None, got {top_k!r}")
        if not (integer and top_k >= 1):
            raise InputError(f"top_k must be at least 1 (a positive integer or None), got {top_k!r}")
    if top_p is not None and not (_is_real(top_p) and 0 < top_p <= 1):
        raise InputError(f"top_p must be in (0, 1] (a real number or None), got {top_p!r}")
    if not (_is_real(repetition_penalty) and math.isfinite(repetition_penalty) and repetition_penalty > 0):
        raise InputError(f"repetition_penalty must be > 0, a finite real number (1.0 = off); got {repetition_penalty!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator or None, got {type(generator).__name__} {generator!r}")


def apply_repetition_penalty(logits: torch.Tensor, input_ids: torch.Tensor, penalty: float, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``logits`` (B, V) with every id already in its row of ``input_ids`` (B, T) penalised (a new tensor).

    transformers' ``RepetitionPenaltyLogitsProcessor``: a positive logit is divided
    by ``penalty``, a negative one multiplied, so ``penalty > 1`` makes any repeat
    less likely whatever its sign. Each id counts once however often it occurs;
    positions where ``attention_mask`` (B, T) is 0 (padding) do not count.
    """
    if penalty == 1:
        return logits
    V = logits.shape[-1]
    if attention_mask is not None:
        input_ids = input_ids.masked_fill(attention_mask == 0, V)  # padding: one extra column, dropped below
    padded = torch.nn.functional.pad(logits, (0, 1))  # (B, V + 1)
    seen = padded.gather(-1, input_ids)  # (B, T)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return padded.scatter(-1, input_ids, seen)[:, :V]


def choose_next_token(
    logits: torch.Tensor,
    *,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V) -> (B,) int64.

    ``do_sample=False``: the most likely token (argmax; temperature, top-k and
    top-p change nothing). Otherwise a draw from ``softmax(logits / temperature)``
    restricted to the ``top_k`` most likely tokens and then to the smallest set of
    most likely tokens whose probability reaches ``top_p`` (the most likely token
    always stays). ``repetition_penalty`` != 1 needs ``input_ids`` (B, T), the ids
    so far (``attention_mask`` (B, T): 0 on padding, which is not penalised).
    ``generator`` makes the draw reproducible.
    """
    check_sampling(temperature, top_k, top_p, repetition_penalty, generator)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[-1] == 0 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(f"logits must be a float tensor of shape (batch, vocab), got {shape}")
    if repetition_penalty != 1:
        if input_ids is None:
            raise InputError("repetition_penalty needs input_ids, the (batch, seq_len) ids generated so far")
        if (
            not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != logits.shape[0]
            or input_ids.dtype not in (torch.int32, torch.int64)
        ):
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise InputError(f"input_ids must be integer ids of shape ({logits.shape[0]}, seq_len) for logits {tuple(logits.shape)}, got {shape}")
        if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
            raise InputError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {shape}")
        logits = apply_repetition_penalty(logits, input_ids.long(), float(repetition_penalty), attention_mask)
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        # nucleus: the smallest set of most likely tokens whose probability reaches top_p
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability of the tokens ranked above each one
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))  # the top token always stays
        logits = logits.scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
