"""Every public argument is checked: minipt.checks directly, then a fuzz over the public API's arguments.

The fuzz draws each argument from values of every kind a caller can pass by
mistake (ints small and past 64 bits, floats with nan and inf, bools, None,
strings, lists, tensors of the wrong dtype) and calls the function: it must
return normally or raise a ``MiniptError``, never another exception (a crash
inside torch or the tokenizers library). Generation is bounded by a streamer
that stops it after a few tokens, so a valid but huge ``max_new_tokens`` on
the char LM (which has no context limit) ends at once.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from minipt import Tokenizer, probe, registry, transfer
from minipt.checks import (
    check_bool, check_choice, check_device, check_dtype, check_float, check_int, check_path, check_str, check_tensor,
)
from minipt.errors import InputError, MiniptError
from minipt.models import char_lm, gpt2
from minipt.models.resnet import ResNet, ResNetConfig
from minipt.nn.sampling import check_sampling, choose_next_token
from minipt.quantize import quantize_int8
from minipt.summary import summary
from minipt.tokenizer import ENDOFTEXT, build_bpe_files, bytes_to_unicode, read_tiktoken

FUZZ = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- the checks themselves ------------------------------------------------------------
def test_check_int():
    assert check_int("n", 3) == 3 and type(check_int("n", np.int64(3))) is int
    assert check_int("n", None, optional=True) is None
    for value, message in [
        (True, "n must be an integer, got bool True"),
        (2.0, "n must be an integer, got float 2.0"),
        ("3", "n must be an integer, got str '3'"),
        (None, "n must be an integer, got NoneType None"),
    ]:
        with pytest.raises(InputError, match=message):
            check_int("n", value)
    with pytest.raises(InputError, match="n must be a positive integer, got 0"):
        check_int("n", 0, low=1)
    with pytest.raises(InputError, match="n must be a non-negative integer or None, got -1"):
        check_int("n", -1, low=0, optional=True)
    with pytest.raises(InputError, match=r"id must be a token id in \[0, 9\], got 10"):
        check_int("id", 10, low=0, high=9, noun="a token id")
    with pytest.raises(InputError, match="n must be an integer <= 5, got 6"):
        check_int("n", 6, high=5)


def test_check_float():
    assert check_float("x", 1) == 1.0 and check_float("x", np.float32(0.5)) == 0.5
    assert check_float("x", None, optional=True) is None
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(InputError, match="x must be finite"):
            check_float("x", value)
    for value in (True, "0.5", [0.5], torch.tensor(0.5)):
        with pytest.raises(InputError, match="x must be a real number, got"):
            check_float("x", value)
    with pytest.raises(InputError, match=r"p must be in \(0, 1\] or None, got 0.0"):
        check_float("p", 0.0, low=0, high=1, low_open=True, optional=True)
    assert check_float("p", 1.0, low=0, high=1, low_open=True) == 1.0
    with pytest.raises(InputError, match="t must be > 0, got 0.0"):
        check_float("t", 0, low=0, low_open=True)
    with pytest.raises(InputError, match="t must be < 1, got 1.0"):
        check_float("t", 1, high=1, high_open=True)


def test_check_bool_choice_str_path():
    assert check_bool("b", np.bool_(True)) is True
    for value in (0, 1, "yes", None):
        with pytest.raises(InputError, match="b must be True or False"):
            check_bool("b", value)
    assert check_choice("c", "a", ("a", "b")) == "a" and check_choice("c", True, (True, "x")) is True
    for value in (1, None, ["a"], torch.tensor([1, 2])):  # 1 is not True; unhashable and uncomparable values are refused
        with pytest.raises(InputError, match="c must be one of True, 'x'; got"):
            check_choice("c", value, (True, "x"))
    assert check_str("s", "", empty=True) == ""
    with pytest.raises(InputError, match="s must not be empty"):
        check_str("s", "")
    with pytest.raises(InputError, match="s must be a string, got bytes"):
        check_str("s", b"x")
    assert str(check_path("p", "a/b")) == "a/b"
    for value in (b"a", 3, None):
        with pytest.raises(InputError, match="p must be a path"):
            check_path("p", value)
    for value in ("", "a\0b"):
        with pytest.raises(InputError, match="p must name a file or folder"):
            check_path("p", value)


def test_check_tensor_dtype_device():
    ids = torch.zeros(2, 3, dtype=torch.long)
    assert check_tensor("ids", ids, kind="integer", ndim=2) is ids
    with pytest.raises(InputError, match=r"ids must be a torch.Tensor, got list; convert with torch.as_tensor"):
        check_tensor("ids", [[1]])
    with pytest.raises(InputError, match="ids must hold integer values, got dtype torch.bool"):
        check_tensor("ids", ids.bool(), kind="integer")
    with pytest.raises(InputError, match=r"ids must have 1 or 3 dimensions, got shape \(2, 3\)"):
        check_tensor("ids", ids, ndim=(1, 3))
    assert check_dtype("bfloat16") is torch.bfloat16 and check_dtype("auto") is None and check_dtype(torch.float16) is torch.float16
    for value in ("int8", torch.int64, "Tensor", 3, "no such"):
        with pytest.raises(InputError, match="dtype must be a floating-point torch dtype"):
            check_dtype(value)
    assert check_device("cpu") == torch.device("cpu") and check_device(None) is None
    for value, message in [("meta", "holds no data"), ("nonsense", "is not a torch device"), (True, "must be a torch device"), (1.5, "must be a torch device")]:
        with pytest.raises(InputError, match=message):
            check_device(value)


# -- what the fuzz draws ---------------------------------------------------------------
# past 64 bits, and huge sizes that overflow before anything is allocated (never sizes a machine might try to fill)
HUGE_INTS = st.sampled_from([2**62, 2**63, 2**64, 10**30, -(2**63) - 1, -(10**30)])
INTS = st.one_of(st.integers(-3, 40), HUGE_INTS)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, 1e308, 5e-324]))
TENSORS = st.sampled_from([
    torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), torch.zeros(3, dtype=torch.long),
    torch.zeros(0, dtype=torch.long), torch.tensor(2.5), torch.zeros(1, 2, dtype=torch.complex64), torch.full((1, 2), -1),
])
ANYTHING = st.one_of(
    st.none(), st.booleans(), INTS, FLOATS, st.text(max_size=6), st.sampled_from(["", "auto", "cpu", "max_length", "\ud800"]),
    st.lists(st.integers(-2, 5), max_size=3), TENSORS, st.just(np.int64(3)), st.just(object()),
)


@st.composite
def arguments(draw, valid: dict, required: dict | None = None) -> dict:
    """Keyword arguments: all of ``required``'s and some of ``valid``'s, each drawn from its valid values,
    and at most one of them replaced by anything at all, so each example probes one argument on an
    otherwise valid call."""
    kwargs = draw(st.fixed_dictionaries(required or {}, optional=valid))
    if draw(st.booleans()):
        kwargs[draw(st.sampled_from(sorted({**valid, **(required or {})})))] = draw(ANYTHING)
    return kwargs


def returns_or_refuses(call, *allowed: type[BaseException]):
    """Run ``call``: it returns, or raises a MiniptError (or one of ``allowed``); any other exception fails the test."""
    try:
        found = call()
    except (MiniptError, *allowed) as err:
        event(f"refused: {type(err).__name__}")  # --hypothesis-show-statistics shows how often each outcome came
        return None
    event("returned")
    return found


# -- sampling and generate ---------------------------------------------------------------
SAMPLING = dict(temperature=st.floats(0.1, 3.0), top_k=st.integers(1, 60), top_p=st.floats(0.05, 1.0),
                repetition_penalty=st.floats(0.5, 2.0), generator=st.just(torch.Generator().manual_seed(0)))


@FUZZ
@given(logits=st.one_of(st.just(torch.randn(2, 7)), TENSORS, ANYTHING), kwargs=arguments({"do_sample": st.booleans(), **SAMPLING}))
def test_sampling_arguments(logits, kwargs):
    returns_or_refuses(lambda: check_sampling(**{k: v for k, v in kwargs.items() if k != "do_sample"}))
    returns_or_refuses(lambda: choose_next_token(logits, input_ids=torch.zeros(2, 1, dtype=torch.long), **kwargs))


class Enough(Exception):
    """Raised by the streamer that ends a fuzzed generate after a few tokens."""


class StopAfter:
    def __init__(self, puts: int = 32):
        self.left = puts

    def put(self, token_ids):
        self.left -= 1
        if self.left < 0:
            raise Enough

    def end(self):
        pass


def tiny_lm(module):
    family = next(f for f in registry.families() if f.module == module.__name__)
    cls = gpt2.GPT2LMHeadModel if module is gpt2 else char_lm.CharLM
    return family.tiny_model(cls).eval()


LMS = {"gpt2": tiny_lm(gpt2), "char_lm": tiny_lm(char_lm)}  # vocabularies of 50 and 256; GPT-2's context is 16
GENERATE = dict(
    max_new_tokens=st.one_of(st.integers(1, 6), HUGE_INTS), max_length=st.integers(4, 12), do_sample=st.booleans(),
    eos_token_id=st.integers(0, 49), pad_token_id=st.integers(0, 49), seed=st.integers(-(2**63), 2**64 - 1),
    output_logits=st.booleans(), return_dict_in_generate=st.booleans(), **SAMPLING,
    attention_mask=st.sampled_from([torch.ones(2, 3, dtype=torch.long), torch.tensor([[0, 1, 1], [1, 1, 1]]), torch.ones(1, 5)]),  # GPT-2's only
)
PROMPTS = st.sampled_from([torch.zeros(2, 3, dtype=torch.long), torch.randint(0, 50, (1, 5)), torch.zeros(0, 2, dtype=torch.int32)])


@pytest.mark.parametrize("name", LMS)
@FUZZ
@given(kwargs=arguments(GENERATE, {"input_ids": st.one_of(PROMPTS, TENSORS)}))
def test_generate_arguments(name, kwargs):
    if name == "char_lm":
        kwargs.pop("attention_mask", None)
    kwargs.setdefault("streamer", StopAfter())  # a valid max_new_tokens of 2**62 on the char LM ends after 30 tokens
    if "max_length" not in kwargs:
        kwargs.setdefault("max_new_tokens", 4)  # the default 20 would not fit GPT-2's context of 16
    returns_or_refuses(lambda: LMS[name].generate(**kwargs), Enough)


# -- the tokenizer ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """A tiny byte-level BPE (GPT-2's kind, no padding token) and the same with one."""
    import base64

    order = list(bytes_to_unicode())
    tokens = [bytes([b]) for b in order] + [b"he", b"ll", b"hell", b"hello"]
    data = "\n".join(f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)).encode()
    folder = tmp_path_factory.mktemp("bpe")
    build_bpe_files(read_tiktoken(data), {ENDOFTEXT: 260}, folder)
    padded = Tokenizer.from_pretrained(folder)
    padded.pad_token = ENDOFTEXT
    return [Tokenizer.from_pretrained(folder), padded]


TEXTS = st.one_of(st.text(max_size=20), st.lists(st.text(max_size=10), max_size=3), st.sampled_from(["a\ud800b", ["ok", "\udfff"]]))
CALL = dict(text_pair=TEXTS, padding=st.sampled_from([True, False, "longest", "max_length"]), truncation=st.booleans(),
            max_length=st.one_of(st.integers(1, 12), HUGE_INTS), add_special_tokens=st.booleans(), return_tensors=st.sampled_from(["pt", "np", None]))


@FUZZ
@given(kwargs=arguments(CALL, {"text": TEXTS}), which=st.integers(0, 1))
def test_tokenizer_call_options(tokenizers, kwargs, which):
    returns_or_refuses(lambda: tokenizers[which](**kwargs))


@FUZZ
@given(ids=st.one_of(st.lists(INTS, max_size=4), TENSORS, ANYTHING), kwargs=arguments({"skip_special_tokens": st.booleans()}), which=st.integers(0, 1))
def test_tokenizer_decoding(tokenizers, ids, kwargs, which):
    tok = tokenizers[which]
    returns_or_refuses(lambda: tok.decode(ids, **kwargs))
    returns_or_refuses(lambda: tok.batch_decode(ids, **kwargs))
    returns_or_refuses(lambda: tok.convert_ids_to_tokens(ids, **kwargs))
    returns_or_refuses(lambda: tok.convert_tokens_to_ids(ids))
    returns_or_refuses(lambda: tok.tokenize(ids))
    side = tok.padding_side
    returns_or_refuses(lambda: setattr(tok, "padding_side", ids))
    tok.padding_side = side


# -- transfer, summary, probe, loading, quantisation ---------------------------------------------
def tiny_resnet():
    return ResNet(ResNetConfig("basic", (1, 1, 1, 1), num_classes=5))


STAGE_NAMES = st.one_of(st.sampled_from(["stem", "stages.0", "stages.3", "head", "no.such"]), ANYTHING)


@FUZZ
@given(names=st.lists(STAGE_NAMES, max_size=3), freeze=arguments({"bn": st.sampled_from(["eval", "train"])}),
       num_classes=st.one_of(st.integers(0, 9), HUGE_INTS, ANYTHING), lr=st.one_of(st.floats(0, 1), ANYTHING),
       groups=arguments({"layer_decay": st.floats(0.1, 1.0), "weight_decay": st.floats(0, 0.1)}))
def test_transfer_arguments(names, freeze, num_classes, lr, groups):
    model = tiny_resnet()
    returns_or_refuses(lambda: transfer.freeze(model, *names, **freeze))
    returns_or_refuses(lambda: transfer.unfreeze(model, *names[1:]))
    returns_or_refuses(lambda: transfer.freeze_up_to(model, names[0] if names else "stem", **freeze))
    returns_or_refuses(lambda: transfer.param_groups(model, lr, **groups))
    returns_or_refuses(lambda: transfer.reset_classifier(model, num_classes))
    returns_or_refuses(lambda: transfer.check_labels(model, num_classes))


SIZES = st.one_of(st.lists(st.one_of(st.integers(1, 6), HUGE_INTS), min_size=1, max_size=4), st.sampled_from(["1x8", "2x3", (2, 3), "1x", "0x4"]))


SUMMARY = {"example_inputs": st.sampled_from([torch.zeros(2, 3), torch.zeros(1, 5, dtype=torch.long)]), "input_size": SIZES, "depth": st.integers(0, 4)}


@FUZZ
@given(kwargs=arguments(SUMMARY), which=st.sampled_from(["gpt2", "linear"]))
def test_summary_arguments(kwargs, which):
    model = LMS["gpt2"] if which == "gpt2" else torch.nn.Linear(3, 2)
    found = returns_or_refuses(lambda: summary(model, **kwargs))
    if found is not None:
        returns_or_refuses(lambda: found.table(kwargs.get("depth")))


PATTERNS = st.lists(st.one_of(st.sampled_from(["*", "transformer.layers.0.out", "transformer.layers.*.attn.heads", "lm_head.out", "nothing"]), ANYTHING), max_size=3)
EDITS = st.dictionaries(st.sampled_from(["transformer.layers.0.out", "lm_head.out", "nothing"]),
                        st.one_of(st.just(lambda value: value * 0), st.just(torch.zeros(1, 3, 16)), ANYTHING), max_size=2)


@FUZZ
@given(patterns=PATTERNS, kwargs=arguments({"edit": EDITS, "detach": st.booleans()}))
def test_probe_arguments(patterns, kwargs):
    model = LMS["gpt2"]

    def run():
        with probe.capture(model, *patterns, **kwargs) as seen:
            model(torch.zeros(1, 3, dtype=torch.long))
        return dict(seen)

    returns_or_refuses(run)
    assert not any(m._forward_hooks for m in model.modules())  # nothing left behind, whatever happened


@pytest.fixture(scope="module")
def saved_gpt2(tmp_path_factory):
    return LMS["gpt2"].save_pretrained(tmp_path_factory.mktemp("gpt2"))


LOADING = {"dtype": st.sampled_from([torch.float16, torch.int8, "bfloat16", "float64", "auto", "torch.float32", None]),
           "device": st.sampled_from(["cpu", "meta", "cuda:7", "cpu:0", torch.device("cpu"), -1, None])}


@FUZZ
@given(kwargs=arguments(LOADING))
def test_from_pretrained_dtype_and_device(saved_gpt2, kwargs):
    returns_or_refuses(lambda: gpt2.GPT2LMHeadModel.from_pretrained(saved_gpt2, **kwargs))


@settings(FUZZ, max_examples=10)
@given(model=st.one_of(st.just("model"), ANYTHING), kwargs=arguments({"lstm": st.booleans()}))
def test_quantize_arguments(model, kwargs):
    pytest.importorskip("torchao")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4)) if model == "model" else model
    returns_or_refuses(lambda: quantize_int8(model, **kwargs))


NOT_PATHS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, st.just(b"bytes"), st.lists(st.integers(0, 3), max_size=2), TENSORS, st.just(object()))


@FUZZ
@given(where=NOT_PATHS, dpi=st.one_of(st.integers(10, 40), INTS, ANYTHING), which=st.integers(0, 1))
def test_file_arguments(tokenizers, tmp_path_factory, where, dpi, which):
    """Where a path is asked for, anything else is refused before any file is touched (no strings drawn here:
    a string is a path, and the fuzz must not write into the working directory)."""
    tok = tokenizers[which]
    with pytest.raises(MiniptError):
        tok.save_pretrained(where)
    with pytest.raises(MiniptError):
        Tokenizer.from_pretrained(where)
    plot = pytest.importorskip("minipt.plot")
    pytest.importorskip("matplotlib")
    figure = plot.layer_diff([("layer 0", 1e-6)])
    with pytest.raises(MiniptError):
        plot.save_png(figure, where)
    folder = tmp_path_factory.mktemp("png")
    returns_or_refuses(lambda: plot.save_png(figure, folder / "x.png", dpi=dpi))


PICTURES = {
    "layers": st.one_of(st.integers(-1, 2), st.lists(st.integers(-1, 2), max_size=2)), "heads": st.sampled_from([None, 0, [0, 1], "mean"]),
    "sequence": st.integers(-1, 1),
}


@settings(FUZZ, max_examples=20)
@given(kwargs=arguments(PICTURES), channels=st.one_of(st.integers(-1, 5), st.lists(st.integers(-1, 4), max_size=2), ANYTHING),
       tolerance=st.one_of(FLOATS, ANYTHING), rows=st.one_of(st.just([("layer 0", 1e-6), ("layer 1", 0.0)]), ANYTHING))
def test_picture_arguments(kwargs, channels, tolerance, rows):
    plot = pytest.importorskip("minipt.plot")
    pytest.importorskip("matplotlib")
    probs = torch.softmax(torch.randn(1, 2, 3, 3), -1)  # one layer: (B, heads, T, T)
    returns_or_refuses(lambda: plot.attention_maps(probs, ["a", "b", "c"], **kwargs))
    returns_or_refuses(lambda: plot.feature_maps(torch.rand(4, 5, 5), channels=channels))
    returns_or_refuses(lambda: plot.layer_diff(rows, tolerance))
