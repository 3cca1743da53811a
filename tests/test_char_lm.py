"""The byte-level LSTM language model: training, generation with a carried state, saving."""

import copy
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from minipt.errors import ConfigError, InputError, KeyMismatchError
from minipt.models.char_lm import CharLM, CharLMConfig

from helpers import assert_error_ratio


pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = (
    "The cat sat on the mat. The dog sat on the log. "
    "A cat and a dog sat on a mat and a log. The end. "
) * 4


def text_generate(model: CharLM, prompt: str, max_new_tokens: int, **kwargs) -> str:
    """Text in, text out: encode, generate on the ids, decode."""
    return model.decode(model.generate(model.encode(prompt)[None], max_new_tokens=max_new_tokens, **kwargs)[0])


def tiny(**overrides) -> CharLM:
    return CharLM(CharLMConfig(**{"embed_size": 16, "hidden_size": 32, "num_layers": 2, "dropout": 0.0, **overrides}))


def with_torch_lstm(model: CharLM, dtype=torch.float32) -> CharLM:
    """The same model with torch.nn.LSTM (loaded from minipt's state dict) in place of minipt's, in ``dtype``."""
    reference = copy.deepcopy(model)
    lstm = model.lstm
    reference.lstm = torch.nn.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers, batch_first=True, dropout=lstm.dropout)
    reference.lstm.load_state_dict(lstm.state_dict())
    return reference.to(dtype).eval()


def test_the_lstm_is_minipts():
    import minipt.nn

    assert type(tiny().lstm) is minipt.nn.LSTM and not isinstance(tiny().lstm, torch.nn.LSTM)


def test_training_lowers_the_loss():
    model = tiny(num_layers=1)
    data = CharLM.encode(TEXT)
    cols = (len(data) - 1) // 8
    inputs, targets = data[: 8 * cols].view(8, cols), data[1 : 8 * cols + 1].view(8, cols)  # 8 windows of ~50 bytes
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        logits, _ = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 5.0  # about ln(256) at initialisation
    assert losses[-1] < 0.6 * losses[0], losses


def test_sampling_is_reproducible_under_a_seed():
    model = tiny().eval()
    first = text_generate(model, "The ", 40, do_sample=True, temperature=1.0, top_k=10, seed=123)
    again = text_generate(model, "The ", 40, do_sample=True, temperature=1.0, top_k=10, seed=123)
    other = text_generate(model, "The ", 40, do_sample=True, temperature=1.0, top_k=10, seed=124)
    assert first == again and first.startswith("The ")
    assert other != first  # 40 draws among 10 bytes from an untrained model: a coincidence is ~impossible
    torch.manual_seed(5)
    a = text_generate(model, "x", 20, do_sample=True)
    torch.manual_seed(5)
    assert text_generate(model, "x", 20, do_sample=True) == a  # the global seed works too


@pytest.mark.parametrize("do_sample, temperature, top_k", [(True, 1.0, None), (True, 0.7, 5), (False, 1.0, None)])
def test_carried_state_equals_recomputing_the_prefix(do_sample, temperature, top_k):
    model = tiny().eval()
    prompt = torch.stack([CharLM.encode("Hello, wor"), CharLM.encode("The cat sa")])  # (2, 10)
    out = model.generate(
        prompt, max_new_tokens=12, do_sample=do_sample, temperature=temperature, top_k=top_k, seed=0, output_logits=True, return_dict_in_generate=True
    )
    ids, step_logits = out.sequences, torch.stack(out.logits, dim=1)
    assert ids.shape == (2, 22) and step_logits.shape == (2, 12, 256)
    assert torch.equal(ids[:, :10], prompt)
    with torch.no_grad():
        full, _ = model(ids[:, :-1])  # the whole prefix recomputed at once: (2, 21, 256)
        expected, _ = with_torch_lstm(model)(ids[:, :-1])
        exact, _ = with_torch_lstm(model, torch.float64)(ids[:, :-1])
    # The two round differently (one LSTM step per byte against the whole sequence): each is held to
    # torch.nn's own float32 error against a float64 run (tests/helpers.py).
    assert_error_ratio(full, expected, exact, what="whole prefix")
    assert_error_ratio(step_logits, expected[:, 9:], exact[:, 9:], what="carried state")


def test_greedy_is_top_k_1():
    model = tiny().eval()
    assert text_generate(model, "ab", 15) == text_generate(model, "ab", 15, do_sample=True, top_k=1, seed=0)  # greedy unless do_sample


def test_max_length_counts_the_prompt_and_eos_stops_a_row():
    model = tiny().eval()
    prompt = torch.stack([CharLM.encode("abc"), CharLM.encode("xyz")])
    assert torch.equal(model.generate(prompt, max_length=10), model.generate(prompt, max_new_tokens=7))
    free = model.generate(prompt, max_new_tokens=30, do_sample=True, seed=3)
    eos = int(free[0, 3])  # the first row's first new byte: it stops there
    stopped = model.generate(prompt, max_new_tokens=30, do_sample=True, seed=3, eos_token_id=eos, pad_token_id=0)
    assert int(stopped[0, 3]) == eos and (stopped[0, 4:] == 0).all()


def test_text_streamer_prints_the_generated_text():
    from minipt.nn.streamer import TextStreamer

    model = tiny().eval()
    printed = io.StringIO()
    ids = model.generate(model.encode("naïve ☕")[None], max_new_tokens=25, streamer=TextStreamer(model, file=printed))
    assert printed.getvalue() == model.decode(ids[0]) + "\n"


def test_save_and_load_round_trip(tmp_path):
    model = tiny(num_layers=1).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["hidden_size"] == 32 and (tmp_path / "model.safetensors").is_file()
    loaded = CharLM.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for (name, saved), reloaded in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(saved, reloaded), name
    ids = CharLM.encode("round trip")[None]
    with torch.no_grad():  # same weights; memory-mapped tensors may take another BLAS path: fp32 rounding only
        assert (loaded(ids)[0] - model(ids)[0]).abs().max().item() <= 1e-6
    assert text_generate(loaded, "ab", 10, do_sample=True, seed=1) == text_generate(model, "ab", 10, do_sample=True, seed=1)
    from safetensors.torch import load_file

    assert "lstm.weight_ih_l0" in load_file(tmp_path / "model.safetensors")  # torch.nn.LSTM's own names


def test_weights_of_another_size_are_named(tmp_path):
    tiny(hidden_size=48).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_size"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"config.json does not match|hidden_size = 32, but head.weight has shape \(256, 48\)"):
        CharLM.from_pretrained(tmp_path)


def test_bad_configs_are_named(tmp_path):
    with pytest.raises(ConfigError, match="CharLMConfig.hidden_size = 0: expected a positive integer"):
        CharLMConfig(hidden_size=0)
    with pytest.raises(ConfigError, match="dropout"):
        CharLMConfig(dropout=1.5)
    with pytest.raises(ConfigError, match=r"unknown CharLMConfig field\(s\): hiden_size"):
        CharLMConfig.from_dict({}, hiden_size=3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(torch.zeros(5, dtype=torch.long)), r"shape \(B, T\), got torch.int64 \(5,\)"),
        (lambda m: m(torch.zeros(1, 3)), r"int64 \(or int32\) byte ids of shape \(B, T\), got torch.float32 \(1, 3\)"),
        (lambda m: m(torch.full((1, 3), 256)), r"CharLM ids holds 256, outside the table of 256 entries \(valid: 0..255\)"),
        (lambda m: m(torch.zeros(1, 0, dtype=torch.long)), "empty sequence"),
        (lambda m: m(torch.zeros(1, 3, dtype=torch.long), (torch.zeros(2, 1, 32),)), r"state must be the LSTM's \(h, c\)"),
        (lambda m: m(torch.zeros(1, 3, dtype=torch.long), (torch.zeros(2, 2, 32), torch.zeros(2, 2, 32))), r"\(num_layers, B, hidden_size\) = \(2, 1, 32\)"),
        (lambda m: m.generate(torch.zeros(1, 2, dtype=torch.long), temperature=-1), "temperature must be > 0"),
        (lambda m: m.generate(torch.zeros(1, 2, dtype=torch.long), top_k=-1), "top_k must be a non-negative integer"),
        (lambda m: m.generate(torch.zeros(1, 2, dtype=torch.long), max_new_tokens=-1), "max_new_tokens must be a positive integer"),
        (lambda m: m.generate(torch.zeros(1, 2, dtype=torch.long), max_new_tokens=3, max_length=9), "not both"),
        (lambda m: m.generate(torch.full((1, 2), 300), max_new_tokens=3), "input_ids holds 300"),
        (lambda m: m.generate("a"), r"takes byte ids \(B, T\), not text: pass model.encode\(text\)\[None\]"),
        (lambda m: m.generate(torch.zeros(1, 0, dtype=torch.long)), "seq_len >= 1"),
        (lambda m: m.encode(b"bytes"), "encodes text"),
        (lambda m: m.decode(torch.zeros(2, 3, dtype=torch.long)), "use batch_decode"),
        (lambda m: m.decode([65, 256]), r"ids\[1\] is 256, not a byte id"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(InputError, match=message):
        call(tiny())


def test_unicode_prompts_round_trip():
    text = "naïve café ☕"
    assert CharLM.decode(CharLM.encode(text)) == text
    assert CharLM.batch_decode(CharLM.encode(text)[None].repeat(2, 1)) == [text, text]
    assert text_generate(tiny(), text, 1).startswith(text)


def test_training_example_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("train_char_lm", Path(__file__).parent.parent / "examples" / "train_char_lm.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = ["--steps", "4", "--batch-size", "4", "--seq-len", "16", "--hidden-size", "16", "--num-layers", "1", "--threads", "1"]
    assert example.main(argv + ["--eval-every", "2", "--sample-length", "20", "--out", str(tmp_path)]) == 0
    for name in ("config.json", "model.safetensors", "loss.png", "samples.txt", "results.md"):
        assert (tmp_path / name).is_file(), name
    assert CharLM.from_pretrained(tmp_path).config.hidden_size == 16
    float_row, int8_row = (line.split("|") for line in (tmp_path / "results.md").read_text().splitlines()[2:])
    assert float_row[1].strip() == "float32" and int8_row[1].strip().startswith("int8")
    assert float(int8_row[5]) < float(float_row[5])  # int8 weights take less space
    assert abs(float(int8_row[2]) - float(float_row[2])) < 0.5  # and predict nearly as well


def test_several_samples_per_prompt():
    model = CharLM(CharLMConfig(embed_size=8, hidden_size=16, num_layers=1, dropout=0.0)).eval()
    prompt = model.encode("ab")[None]
    out = model.generate(prompt, max_new_tokens=12, do_sample=True, num_return_sequences=3, seed=0)
    assert out.shape == (3, 14) and torch.equal(out[:, :2], prompt.expand(3, -1))
    assert len({tuple(row) for row in out[:, 2:].tolist()}) > 1


def test_training_example_checks_its_options_before_training(tmp_path, capsys):
    """--steps 0 trained the --quick default of 400 steps (an explicit 0 read as "not given"), --temperature 0 failed with
    a traceback after the whole run, and --out onto a file too: each is a usage error before any work now."""
    spec = importlib.util.spec_from_file_location("train_char_lm", Path(__file__).parent.parent / "examples" / "train_char_lm.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    (tmp_path / "a_file").write_text("")
    for argv, message in ((["--steps", "0"], "--steps must be a positive integer, got 0"), (["--hidden-size", "0"], "--hidden-size must be"),
                          (["--temperature", "0"], "--temperature must be > 0"), (["--top-k", "-1"], "--top-k must be a non-negative"),
                          (["--out", str(tmp_path / "a_file")], "is a file: the run writes a folder there")):
        with pytest.raises(SystemExit) as stopped:
            example.main(["--quick", *argv])
        assert stopped.value.code == 2 and message in capsys.readouterr().err, argv
    assert not (tmp_path / "a_file.d").exists()
