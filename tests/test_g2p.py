"""The grapheme-to-phoneme GRU encoder-decoder on g2p-en's official checkpoint.

References on the same arrays: g2p-en's own numpy decoder (its ``G2p.predict``,
run from its source by g2p_en_reference.py without importing the package),
torch.nn.GRU (the GRUs themselves and a greedy decoder built on them).
minipt's GRU loop and torch.nn's kernels round differently, so numbers are
held to an error ratio against the torch.nn reference run in float64
(tests/helpers.py), not to a fixed absolute bound.
"""

import numpy as np
import pytest
import torch
from torch import nn

from minipt.checkpoint import official_state_dict
from minipt.errors import CheckpointError, ConfigError, InputError, KeyMismatchError
from minipt.hub import resolve
from minipt.models.g2p import G2P, OFFICIAL_FILE, g2p_en, phonemize, read_vocabularies

from g2p_en_reference import reference_g2p
from helpers import assert_error_ratio

WORDS = ["activationist", "hello", "recurrent", "phoneme", "tensor", "Zyzzyva", "a", "supercalifragilistic"]


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def model():
    return g2p_en()


@pytest.fixture(scope="module")
def arrays():
    with np.load(resolve("g2p-en") / OFFICIAL_FILE, allow_pickle=False) as npz:
        return {k: torch.from_numpy(npz[k]) for k in npz.files}


def _torch_gru(arrays, side: str, dtype=torch.float32) -> nn.GRU:
    gru = nn.GRU(256, 256, batch_first=True, dtype=dtype)
    names = {"weight_ih_l0": "w_ih", "weight_hh_l0": "w_hh", "bias_ih_l0": "b_ih", "bias_hh_l0": "b_hh"}
    gru.load_state_dict({torch_name: arrays[f"{side}_{name}"] for torch_name, name in names.items()})
    return gru.eval()


@torch.no_grad()
def _torch_teacher_forced_logits(arrays, letter_ids, phoneme_ids, dtype=torch.float32) -> torch.Tensor:
    """The decoder's logits (B, S, 74) for given inputs, by torch.nn.GRU and plain matmuls on the official arrays."""
    arrays = {k: v.to(dtype) for k, v in arrays.items()}
    _, hidden = _torch_gru(arrays, "enc", dtype)(arrays["enc_emb"][letter_ids])
    output, _ = _torch_gru(arrays, "dec", dtype)(arrays["dec_emb"][phoneme_ids], hidden)
    return output @ arrays["fc_w"].T + arrays["fc_b"]


@pytest.fixture(scope="module")
def reference():
    return reference_g2p()


def test_reference_pronunciations():
    # Produced by g2p-en 2.1.0's own decoder (G2p.predict, greedy): `python tests/g2p_en_reference.py`;
    # the same two are recorded in the project's data notes.
    assert phonemize("activationist") == "AE2 K T IH0 V EY1 SH AH0 N IH0 S T".split()
    assert phonemize("hello") == "HH EH1 L OW0".split()


@pytest.mark.parametrize("word", WORDS + ["pytorch", "minipt", "grapheme", "x", "qwertyuiopasdfghjklzxcvbnm", "don't", "rock-n-roll"])
def test_words_match_g2p_ens_own_decoder(model, reference, word):
    """Apostrophes and hyphens inside a word are <unk>, as g2p-en's predict reads them."""
    assert model.phonemize(word) == reference.predict(word.lower())


def test_vocabularies_read_from_the_source_text():
    graphemes, phonemes = read_vocabularies(resolve("g2p-en") / "g2p.py")
    assert graphemes == ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")
    assert len(phonemes) == 74 and phonemes[:4] == ["<pad>", "<unk>", "<s>", "</s>"] and phonemes[-1] == "ZH"


def test_the_recurrent_layers_are_minipts(model):
    import minipt.nn

    for gru in (model.encoder, model.decoder):
        assert type(gru) is minipt.nn.GRU and not isinstance(gru, nn.GRU)


@torch.no_grad()
def test_grus_match_torch_nn_on_the_official_weights(model, arrays):
    letters = torch.stack([model.encode_letters(w) for w in ("recurrent", "Phonetics", "baltimore")])  # (3, 10)
    x = model.letter_embedding(letters)
    h0 = torch.randn(1, 3, 256)
    for ours, side in ((model.encoder, "enc"), (model.decoder, "dec")):
        reference, reference64 = _torch_gru(arrays, side), _torch_gru(arrays, side, torch.float64)
        for state in (None, h0):
            exact = reference64(x.double(), None if state is None else state.double())
            # the gates work at magnitude 1, whatever the size of the outputs: the floor is counted in ulps at 1
            assert_error_ratio(ours(x, state), reference(x, state), exact, scale=1.0, what=side)


@torch.no_grad()
def _reference_phonemize(arrays, phonemes, letter_ids: torch.Tensor) -> list[str]:
    """Greedy decoding with torch.nn.GRU/Embedding/Linear on the official arrays."""
    encoder, decoder = _torch_gru(arrays, "enc"), _torch_gru(arrays, "dec")
    _, hidden = encoder(arrays["enc_emb"][letter_ids][None])
    previous, out = phonemes.index("<s>"), []
    for _ in range(20):
        output, hidden = decoder(arrays["dec_emb"][[previous]][None], hidden)
        previous = int((output[0, -1] @ arrays["fc_w"].T + arrays["fc_b"]).argmax())
        if phonemes[previous] == "</s>":
            break
        out.append(phonemes[previous])
    return out


@pytest.mark.parametrize("word", WORDS)
def test_words_match_a_torch_nn_decoder(model, arrays, word):
    assert model.phonemize(word) == _reference_phonemize(arrays, model.config.phonemes, model.encode_letters(word))


@torch.no_grad()
def test_teacher_forcing_equals_step_by_step(arrays, model):
    """The whole phoneme sequence at once and one step at a time give the same logits (of magnitude ~9).

    The two round differently (one input projection for all steps against one per step), so each is held
    to torch.nn's own float32 error against the same decoder in float64."""
    letters = model.encode_letters("activationist")[None]
    phonemes = model.config.phonemes
    inputs = torch.tensor([[phonemes.index(p) for p in ["<s>"] + phonemize("activationist")]])
    logits = model(letters, inputs)  # (1, S, 74)
    hidden = model.encode(letters)
    steps = []
    for t in range(inputs.shape[1]):
        step, hidden = model.decode_step(inputs[:, t], hidden)
        steps.append(step)
    expected = _torch_teacher_forced_logits(arrays, letters, inputs)
    exact = _torch_teacher_forced_logits(arrays, letters, inputs, torch.float64)
    assert_error_ratio(logits, expected, exact, what="teacher forcing")
    assert_error_ratio(torch.stack(steps, dim=1), expected, exact, what="step by step")


@torch.no_grad()
def test_padded_batches_need_their_lengths(model):
    """Words of several lengths padded into one batch (pad_sequence): with letter_lengths each row's logits are its
    own word's alone; without them the padding runs through the encoder."""
    words = ["hello", "activationist", "a"]
    phonemes = model.config.phonemes
    letters = [model.encode_letters(w) for w in words]
    targets = [torch.tensor([phonemes.index(p) for p in ["<s>"] + phonemize(w)]) for w in words]
    letter_ids = nn.utils.rnn.pad_sequence(letters, batch_first=True, padding_value=model.letter_index["<pad>"])
    phoneme_ids = nn.utils.rnn.pad_sequence(targets, batch_first=True)
    lengths = torch.tensor([len(x) for x in letters])
    batched = model(letter_ids, phoneme_ids, letter_lengths=lengths)
    for row, (x, y) in enumerate(zip(letters, targets)):
        torch.testing.assert_close(batched[row, : len(y)], model(x[None], y[None])[0], atol=1e-5, rtol=1e-5)
    unpacked = model(letter_ids, phoneme_ids)  # without lengths the padding is read: "a" is not "a" alone
    assert (unpacked[2, :2] - model(letters[2][None], targets[2][None])[0]).abs().max() > 1e-3
    with pytest.raises(InputError, match=r"letter_lengths must lie in \[1, 14\]"):
        model(letter_ids, phoneme_ids, letter_lengths=lengths + 20)
    with pytest.raises(InputError, match=r"letter_lengths must be integer lengths \(B,\) = \(3,\)"):
        model(letter_ids, phoneme_ids, letter_lengths=lengths.float())


def test_official_names_round_trip(model, arrays):
    state = official_state_dict(model, G2P.keymap())
    assert set(state) == set(arrays)
    assert all(torch.equal(state[k], arrays[k]) for k in arrays)


@pytest.mark.parametrize("word, message", [("R2D2", r"'2'"), ("", "non-empty"), ("café", "é"), (None, "non-empty"),
                                           ("İstanbul", r"\['İ'\]"), ("'", "holds no letter"), ("--", "holds no letter")])
def test_words_with_unknown_characters_are_refused(model, word, message):
    with pytest.raises(InputError, match=message):
        model.phonemize(word)


def test_bad_ids_are_named(model):
    with pytest.raises(InputError, match=r"letter_ids as integer ids \(B, T\), got shape \(5,\)"):
        model(torch.zeros(5, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(InputError, match=r"phoneme_ids holds 74, outside the table of 74 entries \(valid: 0\.\.73\)"):
        model(torch.zeros(1, 5, dtype=torch.long), torch.full((1, 2), 74))
    with pytest.raises(InputError, match="2 letter sequences but 1 phoneme"):
        model(torch.zeros(2, 5, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))


def test_another_checkpoint_is_refused(tmp_path, arrays):
    folder = tmp_path / "g2p"
    folder.mkdir()
    (folder / "g2p.py").write_text((resolve("g2p-en") / "g2p.py").read_text())
    other = {k: v.numpy() for k, v in arrays.items() if k != "fc_b"}
    other["enc_w_hh"] = np.zeros((384, 128), np.float32)  # a hidden-128 model
    np.savez(folder / OFFICIAL_FILE, **other)
    with pytest.raises(ConfigError, match=r"hidden_size = 256, but enc_w_hh has shape \(384, 128\)"):
        G2P.from_pretrained(folder)
    other["enc_w_hh"] = arrays["enc_w_hh"].numpy()
    np.savez(folder / OFFICIAL_FILE, **other)
    with pytest.raises(KeyMismatchError, match=r"(?s)missing \(1\):\n    fc_b \(74,\)"):
        G2P.from_pretrained(folder)


def test_vocabulary_file_problems_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="g2p.py"):
        read_vocabularies(tmp_path / "g2p.py")
    (tmp_path / "g2p.py").write_text("class G2p:\n    def __init__(self):\n        self.graphemes = ['a']\n")
    with pytest.raises(CheckpointError, match="no phonemes"):
        read_vocabularies(tmp_path / "g2p.py")
