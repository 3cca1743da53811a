"""Bad input gets a MiniptError that names the problem: tokenizer files and calls, empty batches and
zero-length sequences in every model's forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minipt import Tokenizer
from minipt.errors import CheckpointError, InputError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "a", "b", "##s"]


def write_tokenizer(folder, config: dict | None = None):
    """A small BERT-style WordPiece tokenizer.json (with [CLS] ... [SEP] templates) in ``folder``."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    backend = Backend(WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    backend.add_special_tokens(VOCAB[:4])
    backend.normalizer = normalizers.BertNormalizer()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = write_tokenizer(tmp_path_factory.mktemp("tok"), {"model_max_length": 8, "pad_token": {"content": "[PAD]"}})
    return Tokenizer.from_pretrained(folder)


# -- tokenizer files -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", r"is empty \(0 bytes\)"),
        (b"   \n", r"is empty \(4 bytes\)"),
        (b"hello", "is not valid JSON"),
        (b"\xff\xfe\x00x", "cannot be read as UTF-8"),
        (b"[1, 2]", "holds a JSON list, expected an object"),
        (b"{}", 'has no "model" entry'),
        (b'{"version": "1.0", "added_tokens": []}', 'has no "model" entry'),
        (b'{"version": "1.0", "model": {"type": "NoSuchModel"}}', "is not a valid tokenizers tokenizer file"),
    ],
)
def test_bad_tokenizer_json_names_the_file(tmp_path, content, problem):
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=problem) as caught:
        Tokenizer.from_pretrained(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(caught.value)


@pytest.mark.parametrize("content, problem", [(b"{oops", "is not valid JSON"), (b'"a string"', "holds a JSON str"), (b"", "is empty")])
def test_bad_tokenizer_config_names_the_file(tmp_path, content, problem):
    write_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=problem) as caught:
        Tokenizer.from_pretrained(tmp_path)
    assert "tokenizer_config.json" in str(caught.value)


def test_tokenizer_config_special_tokens_as_objects(tok):
    assert tok.model_max_length == 8 and tok.special_tokens["pad_token"] == "[PAD]" and tok.pad_token_id == 0


@pytest.mark.parametrize("backend", [None, "tokenizer.json", 3, object()])
def test_tokenizer_needs_a_backend(backend):
    with pytest.raises(InputError, match=f"Tokenizer wraps a tokenizers.Tokenizer .*got {type(backend).__name__}"):
        Tokenizer(backend)


# -- tokenizer calls -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, text_pair, problem",
    [
        (5, None, "text must be a string or a list of strings, got int"),
        (None, None, "text must be a string or a list of strings, got NoneType"),
        (b"hello", None, r"got bytes; decode it first"),
        ({"a": 1}, None, "got dict"),
        ([["hello"]], None, r"text\[0\] must be a string, got list.*nested lists"),
        (["hello", 3, "a"], None, r"text\[1\] must be a string, got int: 3"),
        (["hello", None], None, r"text\[1\] must be a string, got NoneType"),
        (("a", b"b"), None, r"text\[1\] must be a string, got bytes"),
        (["a", "b"], ["a", 7], r"text_pair\[1\] must be a string, got int"),
        ("a", 7, "text_pair must be a string or a list of strings, got int"),
        ("a", b"b", "text_pair must be .* got bytes"),
        ("a", ["b"], "text is one string but text_pair is a list"),
        (["a"], "b", "text is a list but text_pair is one string"),
        (["a", "b"], ["c"], "2 texts but 1 text pairs"),
    ],
)
def test_non_text_input_is_named(tok, text, text_pair, problem):
    with pytest.raises(InputError, match=problem):
        tok(text, text_pair)


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"max_length": 0}, "max_length must be a positive integer, got 0"),
        ({"max_length": -3}, "max_length must be a positive integer, got -3"),
        ({"max_length": 2.5}, "max_length must be an integer, got float 2.5"),
        ({"max_length": "8"}, "max_length must be an integer, got str '8'"),
        ({"max_length": True}, "max_length must be an integer, got bool True"),
        ({"max_length": 1}, "max_length 1 leaves no room for the 2 special tokens each text gets"),
        ({"padding": "yes"}, "padding must be one of True, False, 'longest', 'max_length'; got 'yes'"),
        ({"padding": 1}, "padding must be one of .*; got 1"),
        ({"padding": None}, "padding must be one of .*; got None"),
        ({"truncation": "longest"}, "truncation must be True or False"),
        ({"return_tensors": "tf"}, "return_tensors must be one of 'pt', 'np', None; got 'tf'"),
        ({"return_tensors": True}, "return_tensors must be one of .*; got True"),
    ],
)
def test_bad_options_are_named(tok, options, problem):
    with pytest.raises(InputError, match=problem):
        tok(["hello world"], **options)


def test_max_length_below_the_special_tokens_of_a_pair(tok):
    with pytest.raises(InputError, match="max_length 2 leaves no room for the 3 special tokens each pair gets"):
        tok("hello", "world", max_length=2)
    assert tok("hello world", max_length=2)["input_ids"].tolist() == [[2, 3]]  # room for the special tokens only
    assert tok("hello world", max_length=1, add_special_tokens=False)["input_ids"].tolist() == [[4]]


def test_empty_batch_gives_empty_tensors(tok):
    for batch in (tok([]), tok([], [])):
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {k: ((0, 0), torch.long) for k in batch}
    assert tok([], padding="max_length", max_length=5)["input_ids"].shape == (0, 5)
    assert tok([], return_tensors="np")["input_ids"].shape == (0, 0)
    assert tok([], return_tensors=None)["input_ids"] == []
    assert tok("")["input_ids"].tolist() == [[2, 3]]  # an empty text is [CLS] [SEP]


def test_tuples_and_numpy_strings_are_texts(tok):
    expected = tok(["hello", "a b"])["input_ids"]
    assert torch.equal(tok(("hello", "a b"))["input_ids"], expected)
    assert torch.equal(tok(np.array(["hello", "a b"]))["input_ids"], expected)


@pytest.mark.parametrize(
    "ids, problem",
    [
        (None, "decode takes a sequence of token ids, got NoneType"),
        ("hello", "got str"),
        (torch.zeros(2, 3, dtype=torch.long), r"got shape \(2, 3\); use batch_decode"),
        ([4, 1.5], r"ids\[1\] must be an integer token id, got float"),
        ([4, -1], r"ids\[1\] is -1, outside the vocabulary \(valid: 0..8\)"),
        (torch.tensor([4, 99]), r"ids\[1\] is 99, outside the vocabulary"),
    ],
)
def test_decode_names_bad_ids(tok, ids, problem):
    with pytest.raises(InputError, match=problem):
        tok.decode(ids)


def test_decode_accepts_tensors_arrays_and_lists(tok):
    assert tok.decode(torch.tensor([2, 4, 5, 3])) == tok.decode(np.array([2, 4, 5, 3])) == tok.decode([2, 4, 5, 3]) == "hello world"
    assert tok.batch_decode(torch.tensor([[4], [5]])) == ["hello", "world"]


# -- zero-length sequences and empty batches in every model --------------------------------
def tiny_bert_config(**overrides):
    from minipt.models.bert import BertConfig

    values = dict(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)
    return BertConfig(**{**values, **overrides})


def bert_models():
    from minipt.models.bert import BertForMaskedLM, BertForSequenceClassification, BertModel

    return [cls(tiny_bert_config()).eval() for cls in (BertModel, BertForMaskedLM, BertForSequenceClassification)]


@pytest.mark.parametrize("shape", [(2, 0), (0, 0)])
def test_bert_sequences_without_tokens_are_named(shape):
    ids = torch.zeros(shape, dtype=torch.long)
    for model in bert_models():
        for mask in (None, torch.ones(shape, dtype=torch.long)):
            with pytest.raises(InputError, match=rf"input_ids of shape \({shape[0]}, 0\) hold sequences of no tokens"):
                model(ids, mask)


def test_bert_empty_batch_gives_empty_outputs():
    model, mlm, classifier = bert_models()
    ids = torch.zeros(0, 5, dtype=torch.long)
    out = model(ids, torch.ones(0, 5, dtype=torch.long), output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (0, 5, 16) and out.pooler_output.shape == (0, 16)
    assert out.attentions[0].shape == (0, 2, 5, 5)
    assert mlm(ids).logits.shape == (0, 5, len(VOCAB))
    assert classifier(ids).logits.shape == (0, 2)


def test_bert_non_tensor_inputs_and_bad_labels_are_named():
    model, mlm, classifier = bert_models()
    ids = torch.tensor([[2, 4, 3]])
    with pytest.raises(InputError, match="input_ids must be a tensor, got list"):
        model([[2, 4, 3]])
    with pytest.raises(InputError, match="attention_mask must be a tensor, got list"):
        model(ids, [[1, 1, 1]])
    with pytest.raises(InputError, match=r"labels must have the shape of input_ids \(1, 3\).*got \(1, 2\)"):
        mlm(ids, labels=torch.tensor([[4, 5]]))
    with pytest.raises(InputError, match=r"labels must hold one entry per sequence \(1 for input_ids \(1, 3\)\), got \(2,\)"):
        classifier(ids, labels=torch.tensor([0, 1]))
    with pytest.raises(InputError, match="labels must hold one entry per sequence .* got list"):
        classifier(ids, labels=[0])


@pytest.fixture(scope="module")
def sentence_encoder(tok):
    from minipt.models.bert import BertModel
    from minipt.models.sentence import SentenceEncoder

    return SentenceEncoder(BertModel(tiny_bert_config()).eval(), tok).eval()


def test_sentence_encoder_empty_list_and_empty_text(sentence_encoder):
    empty = sentence_encoder.encode([])
    assert empty.shape == (0, 16) and empty.dtype == torch.float32
    blank = sentence_encoder.encode([""])
    assert blank.shape == (1, 16) and torch.isfinite(blank).all()
    assert torch.allclose(blank.norm(dim=-1), torch.ones(1))  # normalised like any other sentence
    assert torch.equal(sentence_encoder.encode(""), blank[0])
    both = sentence_encoder.encode(["hello world", ""])
    assert torch.allclose(both[1], blank[0], atol=1e-6)  # padding in a batch does not change it


@pytest.mark.parametrize(
    "sentences, problem",
    [
        (None, "sentences must be a string or a list of strings, got NoneType"),
        ([3], r"sentences\[0\] must be a string, got int"),
        (["a", b"b"], r"sentences\[1\] must be a string, got bytes"),
        (b"a", "got bytes; decode it first"),
    ],
)
def test_sentence_encoder_non_text_is_named(sentence_encoder, sentences, problem):
    with pytest.raises(InputError, match=problem):
        sentence_encoder.encode(sentences)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, None])
def test_sentence_encoder_bad_batch_size(sentence_encoder, batch_size):
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        sentence_encoder.encode(["a"], batch_size=batch_size)


def image_models():
    from minipt.models.efficientnet import EfficientNet
    from minipt.models.resnet import ResNet, ResNetConfig

    return [ResNet(ResNetConfig(block="basic", layers=(1, 1, 1, 1), num_classes=10)).eval(), EfficientNet().eval()]


def test_image_models_on_an_empty_batch():
    for model in image_models():
        logits = model(torch.zeros(0, 3, 224, 224))
        assert logits.shape == (0, model.config.num_classes)
        assert model.forward_features(torch.zeros(0, 3, 64, 64)).shape == (0, model.num_features, 2, 2)  # the unpooled map, as timm


@pytest.mark.parametrize("shape", [(2, 3, 0, 64), (2, 3, 64, 0), (1, 3, 0, 0), (0, 3, 0, 0)])
def test_image_models_name_images_without_pixels(shape):
    for model in image_models():
        with pytest.raises(InputError, match=rf"{type(model).__name__} got images of shape \({', '.join(map(str, shape))}\): height and width must be at least 1"):
            model(torch.zeros(shape))


def test_image_models_on_one_pixel_images():
    for model in image_models():
        assert torch.isfinite(model(torch.zeros(2, 3, 1, 1))).all()


def test_crnn_empty_batch_and_narrow_images():
    from minipt.models.crnn import CRNN, CRNNConfig

    model = CRNN(CRNNConfig(channels=(4, 4, 8, 8), hidden_size=8)).eval()
    assert model(torch.zeros(0, 1, 64, 32)).shape == (0, 7, model.config.num_classes)
    assert model.read(torch.zeros(0, 1, 64, 32)) == []
    with pytest.raises(InputError, match="got width 0"):
        model(torch.zeros(2, 1, 64, 0))
    with pytest.raises(InputError, match="CRNN.read got no images"):
        model.read([])


def test_char_lm_empty_batch_and_empty_sequences():
    from minipt.models.char_lm import CharLM, CharLMConfig

    model = CharLM(CharLMConfig(embed_size=8, hidden_size=16, num_layers=2)).eval()
    logits, (h, c) = model(torch.zeros(0, 5, dtype=torch.long))
    assert logits.shape == (0, 5, 256) and h.shape == c.shape == (2, 0, 16)
    assert model.generate(torch.zeros(0, 3, dtype=torch.long), max_new_tokens=4).shape == (0, 7)
    for shape in [(2, 0), (0, 0)]:
        with pytest.raises(InputError, match=r"CharLM got an empty sequence \(T = 0\)"):
            model(torch.zeros(shape, dtype=torch.long))
    with pytest.raises(InputError, match=r"prompts of shape \(batch, seq_len\) with seq_len >= 1, got \(1, 0\)"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=3)  # generate takes ids; an empty prompt has none


def test_g2p_empty_batch_and_empty_sequences():
    from minipt.models.g2p import G2P, G2PConfig

    config = G2PConfig(graphemes=["<pad>", "<unk>", "</s>", "a", "b"], phonemes=["<pad>", "<unk>", "<s>", "</s>", "AA0"], embed_size=8, hidden_size=8)
    model = G2P(config).eval()
    assert model(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long)).shape == (0, 2, 5)
    with pytest.raises(InputError, match=r"letter_ids of shape \(2, 0\) hold sequences of no tokens"):
        model(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(InputError, match=r"phoneme_ids of shape \(2, 0\) hold sequences of no tokens"):
        model(torch.full((2, 3), 2), torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(InputError, match="letter_ids as a tensor of integer ids .* got list"):
        model([[3, 2]], torch.zeros(1, 1, dtype=torch.long))
    for word in ("", None):
        with pytest.raises(InputError, match="G2P expects a non-empty word"):
            model.phonemize(word)


@pytest.mark.parametrize("backend", ["math", "torch"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_recurrent_layers_on_an_empty_batch_match_torch_nn(kind, backend):
    import minipt.nn

    for batch_first in (True, False):
        ours = getattr(minipt.nn, kind)(4, 3, num_layers=2, bidirectional=True, batch_first=batch_first)
        minipt.nn.set_backend(backend, module=ours)
        theirs = getattr(torch.nn, kind)(4, 3, num_layers=2, bidirectional=True, batch_first=batch_first)
        x = torch.zeros((0, 5, 4) if batch_first else (5, 0, 4), requires_grad=True)
        out, state = ours(x)
        ref_out, ref_state = theirs(x.detach())
        assert out.shape == ref_out.shape
        states = state if kind == "LSTM" else (state,)
        ref_states = ref_state if kind == "LSTM" else (ref_state,)
        assert [s.shape for s in states] == [s.shape for s in ref_states]
        out.sum().backward()  # the backward of the fused path runs on an empty batch too
        assert x.grad.shape == x.shape


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_recurrent_layers_name_zero_length_sequences(kind):
    import minipt.nn

    # torch.nn raises "Expected sequence length to be larger than 0"; minipt names the shape
    for batch_first, shape in ((True, (2, 0, 4)), (False, (0, 2, 4)), (False, (0, 4))):
        layer = getattr(minipt.nn, kind)(4, 3, batch_first=batch_first)
        with pytest.raises(InputError, match=rf"{kind} got an empty sequence \(seq_len 0"):
            layer(torch.zeros(shape))



# -- the command line: a bad path or file is one line on stderr and a non-zero exit ------------
def one_line_error(capsys, *argv: str) -> str:
    from minipt import cli

    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"minipt {argv[0]}: ")
    return lines[0]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """A text file, a truncated safetensors file, a folder with a config but no weights, an empty folder, a CharLM checkpoint."""
    from safetensors.torch import save_file

    from minipt.models.char_lm import CharLM, CharLMConfig

    root = tmp_path_factory.mktemp("bad")
    (root / "notes.txt").write_text("not weights, not an image\n")
    save_file({"embeddings.word_embeddings.weight": torch.zeros(64, 64)}, str(root / "whole.safetensors"))
    (root / "cut.safetensors").write_bytes((root / "whole.safetensors").read_bytes()[:100])
    (root / "no-weights").mkdir()
    (root / "no-weights" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (root / "empty").mkdir()
    CharLM(CharLMConfig(embed_size=4, hidden_size=8, num_layers=1)).save_pretrained(root / "char-lm")
    return root


def test_cli_inspect_bad_paths(capsys, bad_files):
    assert "/no/such: no such file or directory" in one_line_error(capsys, "inspect", "/no/such")
    assert str(bad_files / "notes.txt") in one_line_error(capsys, "inspect", str(bad_files / "notes.txt"))
    line = one_line_error(capsys, "inspect", str(bad_files / "cut.safetensors"))
    assert str(bad_files / "cut.safetensors") in line and "truncated or corrupted" in line
    for folder in ("no-weights", "empty"):
        assert f"{bad_files / folder} holds no weights" in one_line_error(capsys, "inspect", str(bad_files / folder))


def test_cli_diff_bad_paths(capsys, bad_files):
    assert "/no/such: no such file or directory" in one_line_error(capsys, "diff", "/no/such")
    assert "compares a CharLM on one --input, got 2" in one_line_error(capsys, "diff", str(bad_files / "char-lm"), "--input", "a", "--input", "b")
    assert str(bad_files / "notes.txt") in one_line_error(capsys, "diff", str(bad_files / "notes.txt"))


def test_cli_embed_bad_model(capsys, bad_files):
    assert "/bad: no such file or directory" in one_line_error(capsys, "embed", "hello", "--model", "/bad")
    assert str(bad_files / "cut.safetensors") in one_line_error(capsys, "embed", "hello", "--model", str(bad_files / "cut.safetensors"))


def test_cli_embed_unwritable_output(capsys, bad_files):
    from minipt.errors import CheckpointNotFoundError
    from minipt.hub import resolve

    try:
        resolve("all-MiniLM-L6-v2")
    except CheckpointNotFoundError as err:
        pytest.skip(f"needs the catalogued all-MiniLM-L6-v2 weights: {err}")
    line = one_line_error(capsys, "embed", "hello", "--out", str(bad_files / "no" / "such" / "e.npy"))
    assert f"--out {bad_files / 'no' / 'such' / 'e.npy'}: cannot write it" in line


def test_cli_classify_bad_model_and_images(capsys, bad_files):
    from minipt.errors import CheckpointNotFoundError
    from minipt.hub import resolve

    assert "/bad: no such file or directory" in one_line_error(capsys, "classify", str(bad_files / "notes.txt"), "--model", "/bad")
    assert str(bad_files / "notes.txt") in one_line_error(capsys, "classify", "x.png", "--model", str(bad_files / "notes.txt"))
    try:
        resolve("efficientnet_lite0")
    except CheckpointNotFoundError as err:
        pytest.skip(f"the image checks need the catalogued efficientnet_lite0 weights: {err}")
    assert "/no/such.jpg: no such image file" in one_line_error(capsys, "classify", "/no/such.jpg")
    line = one_line_error(capsys, "classify", str(bad_files / "notes.txt"))
    assert f"{bad_files / 'notes.txt'} cannot be decoded as an image" in line
    assert f"{bad_files} is a directory, not an image file" in one_line_error(capsys, "classify", str(bad_files))


def test_cli_fetch_unknown_name(capsys):
    assert "'nosuchname' is not in the catalogue; known: " in one_line_error(capsys, "fetch", "nosuchname")
    assert "name a catalogued checkpoint or pass --all" in one_line_error(capsys, "fetch")


def test_cli_error_in_a_real_process(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "MINIPT_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "minipt.cli", "inspect", str(tmp_path / "missing")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"minipt inspect: {tmp_path / 'missing'}: no such file or directory, and not a catalogued name or a hub repo id"]


def _model_classes():
    from minipt import registry

    return {f"{family.model_type}/{cls.__name__}": (family, cls) for family in registry.families() for cls in family.classes}


@pytest.mark.parametrize("subject", sorted(_model_classes()))
def test_a_first_input_of_another_dtype_is_refused_by_name(subject):
    """Token ids of a dtype torch's embedding does not take (uint8, bool), and images of another float dtype than the
    model's (numpy's float64): an InputError naming the dtype, where torch's RuntimeError from deep inside escaped
    (an input fuzz over every family found them)."""
    family, cls = _model_classes()[subject]
    torch.manual_seed(0)
    model = family.tiny_model(cls).eval()
    args, kwargs = family.inputs(cls)
    first = args[0]
    if first.is_floating_point():
        wrong, message = [first.double(), first.half()], r"computes in torch.float32; got images of torch.float(64|16) \(convert them with .to\(torch.float32\)\)"
    else:
        wrong, message = [first.to(torch.uint8), first.bool()], r"(int64 \(or int32\)|integer) .*ids.*torch.(uint8|bool)"
    for bad in wrong:
        with torch.no_grad(), pytest.raises(InputError, match=message):
            model(bad, *args[1:], **kwargs)


def test_a_text_encoder_without_input_ids_and_gpt2_with_a_mask_of_other_values():
    from minipt import registry

    families = {family.model_type: family for family in registry.families()}
    bert = families["bert"].tiny_model()
    with pytest.raises(InputError, match=r"needs input_ids, the token ids \(batch, seq_len\); got None"):
        bert(None)
    gpt2_family = families["gpt2"]
    gpt2 = gpt2_family.tiny_model().eval()
    (ids, mask), kwargs = gpt2_family.inputs(type(gpt2))
    with pytest.raises(InputError, match=r"attention_mask must hold 0 and 1 \(1 = a real token\), found 1000000"):
        gpt2(ids, mask * 1_000_000, **kwargs)


def _classes_with_a_padding_mask():
    import inspect

    return {subject: (family, cls) for subject, (family, cls) in _model_classes().items()
            if "attention_mask" in inspect.signature(cls.forward).parameters}


@pytest.mark.parametrize("subject", sorted(_classes_with_a_padding_mask()))
def test_a_float_padding_mask_means_what_its_integer_mask_means(subject):
    """A (B, T) mask of 0.0 and 1.0 is a padding mask, as transformers reads it; it was taken for an additive
    bias (adding 1 to the real tokens' scores, masking nothing): silently other numbers. Values other than 0
    and 1 are refused by name."""
    import inspect

    family, cls = _classes_with_a_padding_mask()[subject]
    torch.manual_seed(0)
    model = family.tiny_model(cls).eval()
    args, kwargs = family.inputs(cls)
    where = list(inspect.signature(cls.forward).parameters).index("attention_mask") - 1  # its place after self
    mask = args[where].clone()
    mask[0, 0] = 0  # the first row left-padded by one token
    call = lambda m: model(*args[:where], m, *args[where + 1 :], **kwargs)  # noqa: E731
    with torch.no_grad():
        expected = [t for t in call(mask).to_tuple() if isinstance(t, torch.Tensor)]
        produced = [t for t in call(mask.float()).to_tuple() if isinstance(t, torch.Tensor)]
        assert len(produced) == len(expected) >= 1 and all(torch.equal(a, b) for a, b in zip(produced, expected))
        with pytest.raises(InputError, match=r"attention_mask must hold 0 and 1 \(1 = a real token\), found 0.5"):
            call(torch.full(mask.shape, 0.5))


@pytest.mark.parametrize("subject", sorted(s for s, (f, c) in _model_classes().items() if not f.inputs(c)[0][0].is_floating_point()))
def test_sequences_of_no_tokens_are_named_in_every_family(subject):
    """Token ids of shape (B, 0) (an empty text tokenised without special tokens: GPT-2 adds none) are an InputError,
    or give outputs where the family defines them (the char LM's state); GPT-2's attention failed inside torch."""
    from minipt.errors import MiniptError

    family, cls = _model_classes()[subject]
    torch.manual_seed(0)
    model = family.tiny_model(cls).eval()
    args, kwargs = family.inputs(cls)
    first = args[0]
    emptied = [torch.zeros(a.shape[0], 0, dtype=a.dtype) if isinstance(a, torch.Tensor) and a.shape == first.shape else a for a in args]
    try:
        with torch.no_grad():
            model(*emptied, **kwargs)
    except MiniptError as error:
        assert "(2, 0)" in str(error) or "no tokens" in str(error) or "empty" in str(error), str(error)
