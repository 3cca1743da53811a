"""Choosing the next token from a batch of logits: the one sampler every language model here uses.

    logits (B, V) -> [repetition penalty] -> greedy argmax
                                          -> / temperature -> top-k -> top-p (nucleus) -> one draw per row

    >>> ids = choose_next_token(logits, do_sample=True, temperature=0.8, top_k=50, top_p=0.95,
    ...                         repetition_penalty=1.2, input_ids=seen, generator=torch.Generator().manual_seed(0))

The order is transformers' ``generate``: the repetition penalty changes the
logits first (so it applies to greedy decoding too), then temperature, top-k
and top-p shape the distribution a sample is drawn from.

``check_generation`` and ``generation_loop`` are the rest of ``generate``, shared
by GPT-2 and the char LM: the model only says how to get the next logits.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from ..checks import check_bool, check_float, check_ids, check_int, check_tensor
from ..errors import InputError
from .output import ModelOutput
from .streamer import check_streamer

__all__ = [
    "choose_next_token", "check_sampling", "apply_repetition_penalty",
    "DEFAULT_MAX_NEW_TOKENS", "DEFAULT_TOP_K", "GenerateOutput", "check_generation", "check_return_sequences", "generation_loop",
]
DEFAULT_MAX_NEW_TOKENS = 20  # generate's length when neither max_new_tokens nor max_length is given
DEFAULT_TOP_K = 50  # generate's top_k when sampling, transformers' default (GenerationConfig); 0 or None: the whole vocabulary


NOT_GENERATION_OPTIONS = ("input_ids", "attention_mask", "decoder_input_ids", "streamer", "generator", "seed")  # per call, never a default


_TRANSFORMERS_DEFAULTS = {"use_cache": True, "typical_p": 1.0, "num_beam_groups": 1, "length_penalty": 1.0, "temperature": 1.0, "top_p": 1.0,
                          "top_k": 50, "repetition_penalty": 1.0, "num_beams": 1, "num_return_sequences": 1, "max_length": 20}


def generation_options(generate: Callable, values: dict) -> tuple[dict, list[str]]:
    """The entries of a ``generation_config.json`` that ``generate`` takes (a one-element eos list as its id), and
    the names of the options it sets that ``generate`` has no argument for."""
    parameters = inspect.signature(generate).parameters
    taken, other = {}, []
    for key, value in values.items():
        if value is None and key != "eos_token_id":  # unset, as transformers reads null (a null eos: no stop)
            continue
        if key in parameters and key not in NOT_GENERATION_OPTIONS:
            taken[key] = value[0] if key == "eos_token_id" and isinstance(value, list) and value else value
        elif not key.startswith("_") and key not in ("transformers_version", "bos_token_id") and value not in (None, False, 0) \
                and _TRANSFORMERS_DEFAULTS.get(key, object()) != value:
            other.append(key)  # an option that changes what transformers generates
    return taken, other


def with_generation_config(generate: Callable) -> Callable:
    """``generate`` whose defaults come from the model's ``generation_config`` (the ``generation_config.json`` beside
    its weights, as transformers reads it) for each option the call does not give; a call's max_new_tokens or
    max_length replaces both of the file's."""
    @functools.wraps(generate)
    def with_defaults(self, *args, **kwargs):
        defaults, _ = generation_options(generate, getattr(self, "generation_config", None) or {})
        vocab_size = getattr(getattr(self, "config", None), "vocab_size", None)
        for key in ("eos_token_id", "pad_token_id"):  # an id past the vocabulary (GPT-2's 50256 on a small one): the config's rule
            if isinstance(defaults.get(key), int) and vocab_size is not None and not 0 <= defaults[key] < vocab_size:
                del defaults[key]
        if "max_new_tokens" in kwargs or "max_length" in kwargs:
            defaults.pop("max_new_tokens", None)
            defaults.pop("max_length", None)
        elif "max_new_tokens" in defaults:  # the file's max_new_tokens wins over its max_length, as in transformers
            defaults.pop("max_length", None)
        return generate(self, *args, **{**defaults, **kwargs})
    return with_defaults


def check_sampling(
    temperature=1.0,
    top_k=None,
    top_p=None,
    repetition_penalty=1.0,
    generator=None,
    *,
    zero_temperature_is_greedy: bool = False,
) -> None:
    """Raise ``InputError`` naming the first argument that is not a valid sampling setting.

    ``temperature``: a finite real > 0 (or exactly 0 where ``zero_temperature_is_greedy``);
    ``top_k``: an integer >= 0 or None (0 and None: no top-k filter; more than the vocabulary: all of it);
    ``top_p``: a real in (0, 1] or None; ``repetition_penalty``: a finite real > 0 (1.0 = off);
    ``generator``: a ``torch.Generator`` or None. Bools and strings are never numbers here.
    """
    check_float("temperature", temperature, low=0, low_open=not zero_temperature_is_greedy)
    check_int("top_k", top_k, low=0, optional=True)
    check_float("top_p", top_p, low=0, high=1, low_open=True, optional=True)
    check_float("repetition_penalty", repetition_penalty, low=0, low_open=True)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator or None, got {type(generator).__name__} {generator!r:.60}")


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
    restricted to the ``top_k`` most likely tokens (0 or None: no limit) and then to
    the smallest set of most likely tokens whose probability reaches ``top_p`` (the
    most likely token always stays). ``generate`` samples with transformers' default
    ``top_k=50`` (``DEFAULT_TOP_K``); here it is given explicitly. ``repetition_penalty`` != 1 needs ``input_ids`` (B, T), the ids
    so far (``attention_mask`` (B, T): 0 on padding, which is not penalised).
    ``generator`` makes the draw reproducible.
    """
    check_bool("do_sample", do_sample)
    check_sampling(temperature, top_k, top_p, repetition_penalty, generator)
    check_tensor("logits", logits, kind="floating", ndim=2)
    if logits.shape[-1] == 0:
        raise InputError(f"logits must be a float tensor of shape (batch, vocab) with vocab >= 1, got {tuple(logits.shape)}")
    given = logits
    if repetition_penalty != 1:
        if input_ids is None:
            raise InputError("repetition_penalty needs input_ids, the (batch, seq_len) ids generated so far")
        check_tensor("input_ids", input_ids, kind="integer", ndim=2)
        if input_ids.shape[0] != logits.shape[0]:
            raise InputError(f"input_ids must be integer ids of shape ({logits.shape[0]}, seq_len) for logits {tuple(logits.shape)}, got {tuple(input_ids.shape)}")
        check_ids("input_ids", input_ids, logits.shape[-1])
        if attention_mask is not None and check_tensor("attention_mask", attention_mask).shape != input_ids.shape:
            raise InputError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
        logits = apply_repetition_penalty(logits, input_ids.long(), float(repetition_penalty), attention_mask)
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if not bool(torch.isfinite(logits.amax(-1)).all()):  # a NaN, +inf or a row of -inf: multinomial's RuntimeError otherwise
        raise InputError(_not_finite(given, temperature, repetition_penalty))
    if top_k and top_k < logits.shape[-1]:
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


def _not_finite(logits: torch.Tensor, temperature: float, repetition_penalty: float) -> str:
    """Why the logits (as given, before the repetition penalty) a sample is drawn from are not a distribution."""
    top = logits.float().amax(-1)  # (B,): NaN where a row holds one
    rows = (~torch.isfinite(top)).nonzero().flatten().tolist()[:5]
    if rows:
        return f"the logits of rows {rows} hold NaN, +inf or only -inf: no token can be sampled from them (is the model's output finite?)"
    if repetition_penalty != 1:
        return f"repetition_penalty={repetition_penalty!r} or temperature={temperature!r} makes the logits overflow float32 (a logit divided by it is infinite)"
    return f"temperature={temperature!r} is so small that logits / temperature overflow float32; use do_sample=False for the most likely token"


# -- generate: the checks and the loop both language models share ------------------------
@dataclass
class GenerateOutput(ModelOutput):
    """What ``generate(..., return_dict_in_generate=True)`` returns, as transformers' generate output."""

    sequences: torch.Tensor  # (B, T + new): the prompts and what was generated
    logits: tuple[torch.Tensor, ...] | None = None  # with output_logits: each step's (B, vocab), before any processing


def check_return_sequences(num_return_sequences, do_sample: bool, num_beams: int = 1) -> int:
    """How many sequences ``generate`` returns per prompt, as transformers allows it: several samples of each
    prompt (rows ``i * n .. i * n + n - 1`` are prompt ``i``'s), or the ``n`` best of beam search's hypotheses;
    greedy decoding has one."""
    n = check_int("num_return_sequences", num_return_sequences, low=1)
    if n > 1 and not do_sample and num_beams == 1:
        raise InputError(f"greedy decoding gives one sequence per prompt; num_return_sequences={n} needs do_sample=True (or beam search with num_beams >= {n})")
    if num_beams > 1 and n > num_beams:
        raise InputError(f"num_return_sequences ({n}) must be at most num_beams ({num_beams}): beam search keeps num_beams hypotheses per prompt")
    return n


def check_generation(
    input_ids,
    *,
    vocab_size: int,
    context: int | None = None,
    max_new_tokens=None,
    max_length=None,
    do_sample=False,
    temperature=1.0,
    top_k=None,
    top_p=None,
    repetition_penalty=1.0,
    eos_token_id=None,
    pad_token_id=None,
    seed=None,
    generator=None,
    streamer=None,
    output_logits=False,
    return_dict_in_generate=False,
) -> tuple[int, torch.Generator | None]:
    """Check ``generate``'s arguments (``InputError`` naming the first bad one); return how many tokens to add and the generator.

    ``max_length`` counts the prompt, ``max_new_tokens`` does not; give one or
    neither (``DEFAULT_MAX_NEW_TOKENS`` new tokens). ``context``: the most
    positions the model can see, prompt and new tokens together (None: no limit).
    ``seed`` makes a generator on the prompt's device; give it or ``generator``.
    """
    check_tensor("input_ids", input_ids, kind="integer", ndim=2)
    if input_ids.shape[1] == 0:
        raise InputError(f"input_ids must be integer prompts of shape (batch, seq_len) with seq_len >= 1, got {tuple(input_ids.shape)}")
    T = input_ids.shape[1]
    if context is not None and T > context:
        raise InputError(f"the prompt has {T} tokens, more than the context of {context} positions")
    if max_new_tokens is not None and max_length is not None:
        raise InputError(f"give max_new_tokens ({max_new_tokens!r:.40}) or max_length ({max_length!r:.40}), not both: max_length counts the prompt, max_new_tokens does not")
    if max_length is not None:
        if check_int("max_length", max_length) <= T:
            raise InputError(f"max_length counts the prompt: it must be an integer above the prompt's {T} tokens, got {max_length}")
        new = max_length - T
    elif max_new_tokens is not None:
        new = check_int("max_new_tokens", max_new_tokens, low=1)
    else:
        new = DEFAULT_MAX_NEW_TOKENS
    if context is not None and T + new > context:
        what = f"max_length {max_length}" if max_length is not None else f"max_new_tokens {new}"
        raise InputError(f"{T} prompt tokens + {what} exceed the context of {context} positions; at most {context - T} new tokens fit")
    for name, value in (("do_sample", do_sample), ("output_logits", output_logits), ("return_dict_in_generate", return_dict_in_generate)):
        check_bool(name, value)
    check_sampling(temperature, top_k, top_p, repetition_penalty, generator)
    for name, value in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        check_int(name, value, low=0, high=vocab_size - 1, optional=True, noun="a token id")
    if seed is not None:
        seed = check_int("seed", seed, low=-(2**63), high=2**64 - 1)  # what a torch.Generator takes
        if generator is not None:
            raise InputError("give seed or generator, not both")
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    check_streamer(streamer)
    check_ids("input_ids", input_ids, vocab_size)
    return new, generator


@torch.no_grad()  # not inference_mode: what it returns may enter a computation with gradients
def generation_loop(
    next_logits: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    streamer=None,
    output_logits: bool = False,
    return_dict_in_generate: bool = False,
):
    """The prompts ``input_ids`` (B, T) followed by up to ``new_tokens`` chosen ones, (B, T + new); arguments checked by ``check_generation``.

    ``next_logits(tokens)`` runs the model on the prompt (first call) or on the
    last chosen tokens (B, 1), keeping its own state (a cache), and returns the
    next-token logits (B, vocab). A row that chose ``eos_token_id`` is padded
    from then on (``pad_token_id``, else eos), and the loop ends once every row
    has. ``repetition_penalty`` counts the row's ids so far, prompt included,
    except where ``attention_mask`` (B, T) marks left padding.
    """
    B, T = input_ids.shape
    if B == 0:  # an empty batch: nothing to run, every row as long as the longest generation
        if streamer is not None:
            streamer.end()
        sequences = input_ids.new_zeros(0, T + new_tokens)
        return GenerateOutput(sequences, () if output_logits else None) if return_dict_in_generate else sequences
    pad_token_id = eos_token_id if pad_token_id is None else pad_token_id
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    seen = seen_mask = None  # the ids so far, kept only for the repetition penalty
    if repetition_penalty != 1:
        seen = torch.empty(B, T + min(new_tokens, 64), dtype=torch.long, device=input_ids.device)  # grows as tokens come
        seen[:, :T] = input_ids
        if attention_mask is not None:
            seen_mask = torch.ones_like(seen)
            seen_mask[:, :T] = attention_mask
    chosen, step_logits = [], []
    if streamer is not None:
        streamer.put(input_ids.cpu())
    try:
        logits = next_logits(input_ids)  # (B, vocab): the whole prompt, once
        for step in range(new_tokens):
            if output_logits:
                step_logits.append(logits)
            token = choose_next_token(
                logits, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                repetition_penalty=repetition_penalty, input_ids=None if seen is None else seen[:, : T + step],
                attention_mask=None if seen_mask is None else seen_mask[:, : T + step], generator=generator,
            )  # (B,)
            if eos_token_id is not None:
                token = token.masked_fill(finished, pad_token_id)
                finished |= token == eos_token_id
            if seen is not None:
                if T + step == seen.shape[1]:  # full: twice the room (new_tokens may be far more than will come before eos)
                    seen = torch.cat([seen, torch.empty_like(seen)], dim=1)
                    seen_mask = None if seen_mask is None else torch.cat([seen_mask, torch.ones_like(seen_mask)], dim=1)
                seen[:, T + step] = token
            chosen.append(token)
            if streamer is not None:
                streamer.put(token.cpu())
            if (eos_token_id is not None and bool(finished.all())) or step + 1 == new_tokens:
                break
            logits = next_logits(token[:, None])  # one step from the model's kept state
    finally:
        if streamer is not None:
            streamer.end()
    sequences = torch.cat([input_ids, *(token[:, None] for token in chosen)], dim=1)
    if return_dict_in_generate:
        return GenerateOutput(sequences, tuple(step_logits) if output_logits else None)
    return sequences
