"""minipt.nn.streamer: the put/end protocol of generate's streamers, against transformers' TextStreamer."""

from __future__ import annotations

import threading

import pytest
import torch

from minipt import Tokenizer
from minipt.errors import InputError
from minipt.models.char_lm import CharLM, CharLMConfig
from minipt.nn.streamer import TextIteratorStreamer, TextStreamer, TokenIteratorStreamer, check_streamer
from minipt.reference import import_transformers
from minipt.tokenizer import ENDOFTEXT, build_bpe_files, bytes_to_unicode, read_tiktoken
from test_gpt2_tokenizer import tiny_tiktoken

BYTE_ID = {b: i for i, b in enumerate(bytes_to_unicode())}  # the tiny vocabulary numbers single bytes in GPT-2's order
TEXT = " wo🙂rld, ☕ naïve\nnext line 日本"  # multi-byte characters split over byte tokens, and a line break


class Recorder(TextStreamer):
    """A TextStreamer that keeps the pieces it would print."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pieces: list[tuple[str, bool]] = []

    def on_text(self, text, stream_end=False):
        self.pieces.append((text, stream_end))


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe")
    build_bpe_files(read_tiktoken(tiny_tiktoken([b"he", b"ll", b"hell", b"hello", b" w", b" wo", b"or"])), {ENDOFTEXT: 263}, folder)
    return folder


def feed(streamer, prompt: list[int], new: list[int]) -> None:
    """What generate does for one sequence: the prompt (1, T), each new token (1,), then end()."""
    streamer.put(torch.tensor([prompt]))
    for token in new:
        streamer.put(torch.tensor([token]))
    streamer.end()


def byte_tokens(text: str) -> list[int]:
    return [BYTE_ID[b] for b in text.encode("utf-8")]


def test_a_character_is_held_back_until_its_last_byte(tokenizer_folder):
    tok = Tokenizer.from_pretrained(tokenizer_folder)
    prompt = tok("hello", padding=False, return_tensors=None)["input_ids"]
    streamer = Recorder(tok)
    feed(streamer, prompt, byte_tokens(TEXT))
    assert all("\ufffd" not in text for text, _ in streamer.pieces)
    assert "".join(text for text, _ in streamer.pieces) == "hello" + TEXT
    assert [end for _, end in streamer.pieces] == [False] * (len(streamer.pieces) - 1) + [True]
    assert len(streamer.pieces) > 10  # the text came piece by piece, not all at the end


def test_same_text_as_transformers_text_streamer(tokenizer_folder, capsys):
    transformers = import_transformers()
    if transformers is None:
        pytest.skip("transformers is not installed")
    tok = Tokenizer.from_pretrained(tokenizer_folder)
    reference = transformers.GPT2TokenizerFast.from_pretrained(str(tokenizer_folder))  # the same vocab.json + merges.txt
    prompt = tok("hello", padding=False, return_tensors=None)["input_ids"]
    new = byte_tokens(TEXT) + [263]  # and the end-of-text token, which decode skips
    for skip_prompt in (False, True):
        feed(TextStreamer(tok, skip_prompt=skip_prompt), prompt, new)
        ours = capsys.readouterr().out
        feed(transformers.TextStreamer(reference, skip_prompt=skip_prompt, skip_special_tokens=True), prompt, new)
        assert ours == capsys.readouterr().out == ("" if skip_prompt else "hello") + TEXT + "\n"


def test_text_streamers_show_one_sequence_and_need_a_decoder():
    streamer = TextStreamer(CharLM.decode)
    with pytest.raises(InputError, match="shows one sequence; got a batch of 2"):
        streamer.put(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(InputError, match=r"takes token ids, the prompt \(1, T\) or a new token \(1,\); got list"):
        streamer.put([1, 2])
    with pytest.raises(InputError, match="needs a decode function"):
        TextStreamer(42)
    with pytest.raises(InputError, match="skip_prompt must be True or False"):
        TokenIteratorStreamer(skip_prompt="yes")
    with pytest.raises(InputError, match="lacks put and end"):
        check_streamer(print)
    with pytest.raises(InputError, match="lacks end"):
        check_streamer(type("OnlyPut", (), {"put": lambda self, ids: None})())


def test_iterating_streamers_follow_generate_in_another_thread():
    model = CharLM(CharLMConfig(embed_size=8, hidden_size=16, num_layers=1, dropout=0.0)).eval()
    prompt = model.encode("The cat ")[None]
    expected = model.generate(prompt, max_new_tokens=30, do_sample=True, seed=0)
    text, tokens = TextIteratorStreamer(model, skip_prompt=True), TokenIteratorStreamer(skip_prompt=True)
    for streamer in (text, tokens):
        run = threading.Thread(target=model.generate, args=(prompt,), kwargs=dict(max_new_tokens=30, do_sample=True, seed=0, streamer=streamer))
        run.start()
        received = list(streamer)  # ends when generate calls streamer.end()
        run.join()
        if streamer is text:
            assert "".join(received) == model.decode(expected[0, 8:])
        else:
            assert torch.equal(torch.stack(received, dim=1), expected[:, 8:])


def test_end_is_called_when_generate_fails():
    model = CharLM(CharLMConfig(embed_size=8, hidden_size=16, num_layers=1, dropout=0.0)).eval()
    streamer = TokenIteratorStreamer()

    def failing_step(*args, **kwargs):
        raise RuntimeError("the model broke")

    model.head.forward = failing_step
    with pytest.raises(RuntimeError, match="the model broke"):
        model.generate(model.encode("ab")[None], max_new_tokens=3, streamer=streamer)
    assert [tuple(t.shape) for t in streamer] == [(1, 2)]  # the prompt, then end(): an iterator does not wait for ever


def tiny_generators():
    """A char LM, a GPT-2 and a T5 of a few parameters, minipt's own (no reference needed)."""
    from minipt.models.gpt2 import GPT2Config, GPT2LMHeadModel
    from minipt.models.t5 import T5Config, T5ForConditionalGeneration

    return {"char_lm": CharLM(CharLMConfig(embed_size=8, hidden_size=16, num_layers=1, dropout=0.0)).eval(),
            "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval(),
            "t5": T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).eval()}


@pytest.mark.parametrize("model_name, streamer_class, arguments", [
    ("char_lm", TokenIteratorStreamer, dict(max_new_tokens=-1)),
    ("char_lm", TextIteratorStreamer, dict(input_ids=torch.ones(2, 3, dtype=torch.long))),  # the streamer's put refuses a batch
    ("gpt2", TokenIteratorStreamer, dict(max_new_tokens=0)),
    ("gpt2", TokenIteratorStreamer, dict(top_p=2.0)),
    ("gpt2", TokenIteratorStreamer, dict(num_beams=2)),  # not an argument of generate: named
    ("t5", TokenIteratorStreamer, dict(num_beams=2)),  # beam search takes no streamer
])
def test_end_is_called_when_an_argument_is_refused(model_name, streamer_class, arguments):
    """A consumer iterating the streamer in another thread must not wait for ever when generate refuses an
    argument before the first token: the streamer is ended once. (timeout=0: an iterator left without end()
    raises queue.Empty here instead of blocking.)"""
    model = tiny_generators()[model_name]
    streamer = streamer_class(model.decode, timeout=0) if streamer_class is TextIteratorStreamer else streamer_class(timeout=0)
    arguments = {"input_ids": torch.ones(1, 3, dtype=torch.long), **arguments}
    with pytest.raises(InputError):
        model.generate(streamer=streamer, **arguments)
    list(streamer)  # ends at once: end() was called
    assert streamer._queue.empty()  # and only once: a second end would stop the next generate's consumer at once


@pytest.mark.parametrize("model_name", ["char_lm", "gpt2", "t5"])
def test_end_is_called_once_when_generate_succeeds(model_name):
    model = tiny_generators()[model_name]
    streamer = TokenIteratorStreamer(skip_prompt=True, timeout=0)
    out = model.generate(torch.ones(1, 3, dtype=torch.long), max_new_tokens=4, eos_token_id=None, streamer=streamer)
    assert torch.equal(torch.stack(list(streamer), dim=1), out[:, -4:])
    assert streamer._queue.empty()


def test_a_refused_generate_prints_nothing(capsys):
    """generate ends its streamer also when it refuses an argument; a TextStreamer then has no line to end."""
    model = tiny_generators()["char_lm"]
    with pytest.raises(InputError):
        model.generate(model.encode("ab")[None], max_new_tokens=0, streamer=TextStreamer(model))
    assert capsys.readouterr().out == ""


def test_a_tokenizer_that_cleans_up_spaces_streams_its_decoded_text(tmp_path):
    """clean_up_tokenization_spaces joins "The ," into "The," once the comma comes, after the space was printed:
    TextStreamer printed "The  said" for "The, said." Now the text from the second-to-last space waits, and every
    stream of random pieces equals decode, line for line."""
    import io
    import random

    from t5_snapshot import tiny_t5_folder

    tokenizer = Tokenizer.from_pretrained(tiny_t5_folder(tmp_path / "t5"))
    tokenizer.clean_up_tokenization_spaces = True  # as a tokenizer_config.json saying so sets it
    pieces = ["▁The", "▁", ",", "▁said", ".", "'", "▁'", "s", "▁n", "'", "t", "▁?", "!", "▁I", "m"]
    vocabulary = [i for i in tokenizer.convert_tokens_to_ids(pieces) if i != tokenizer.unk_token_id]
    assert len(vocabulary) >= 8
    rng = random.Random(0)
    for trial in range(200):
        ids = [rng.choice(vocabulary) for _ in range(rng.randint(1, 12))]
        out = io.StringIO()
        streamer = TextStreamer(tokenizer, skip_prompt=True, file=out)
        streamer.put(torch.tensor([[0]]))
        for i in ids:
            streamer.put(torch.tensor([i]))
        streamer.end()
        assert out.getvalue() == tokenizer.decode(ids) + "\n", (trial, tokenizer.convert_ids_to_tokens(ids))
