"""The minipt command line on the real snapshot."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from bert_reference import minilm_path, transformers  # noqa: F401  (sets up the reference stack)
from encoder_snapshots import FAMILIES, tiny_encoder_folder
from minipt import SentenceEncoder, cli, registry
from minipt.errors import ConfigError, InputError


def test_demo_prints_similarities_and_matches_transformers(capsys):
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "cosine similarity of 6 sentences" in out
    rows = re.findall(r"^  \[(\d)\] ((?: *-?\d\.\d\d){6})$", out, flags=re.M)
    table = np.array([[float(v) for v in row.split()] for _, row in rows])
    assert table.shape == (6, 6) and np.allclose(np.diag(table), 1.0)
    assert table[0, 1] > 0.5 and table[0, 4] < 0.2  # two sentences about eating are close; eating vs a baby is not
    diffs = [float(v) for v in re.findall(r"^  (?:embeddings|layers\.\d|pooler)\.out +(\S+)$", out, flags=re.M)]
    assert len(diffs) == 8 and max(diffs) <= 1e-4 and "all 44 points within 1e-04" in out
    assert re.search(r"coffee\.png: espresso \d+%", out) and re.search(r"flower\.jpg: daisy \d+%", out)


def test_embed_to_npy(tmp_path, capsys):
    out = tmp_path / "e.npy"
    assert cli.main(["embed", "hello world", "good morning", "--out", str(out)]) == 0
    saved = torch.from_numpy(np.load(out))
    expected = SentenceEncoder.from_pretrained(minilm_path()).encode(["hello world", "good morning"])
    assert saved.shape == (2, 384) and torch.allclose(saved, expected, atol=1e-6)
    assert cli.main(["embed", "hello world"]) == 0
    assert "'hello world': [" in capsys.readouterr().out


def test_inspect_shows_tree_counts_and_key_map(capsys):
    assert cli.main(["inspect", str(minilm_path())]) == 0
    out = capsys.readouterr().out
    assert "BertModel from" in out and "attn (MultiHeadAttention)" in out
    assert "parameters: 22,713,216" in out
    assert "encoder.layer.0.attention.self.query.weight (384, 384) -> layers.0.attn.q_proj.weight" in out
    assert "embeddings.word_embeddings.weight (30522, 384) -> embeddings.token.weight" in out


def test_diff(capsys):
    assert cli.main(["diff", str(minilm_path()), "--input", "one sentence", "--input", "and another, longer one"]) == 0
    out = capsys.readouterr().out
    diffs = [float(v) for v in re.findall(r"^  (?:embeddings|layers\.\d|pooler)\.out +(\S+) +\S+$", out, flags=re.M)]
    assert len(diffs) == 8 and max(diffs) <= 1e-4
    assert "on 2 texts" in out and "no divergence: all 44 points within 1e-04" in out


def test_inspect_config_less_formats(tmp_path, capsys):
    from safetensors.torch import save_file
    from torchvision.models.resnet import resnet18

    torch.save(resnet18().state_dict(), tmp_path / "resnet18.pth")
    assert cli.main(["inspect", str(tmp_path / "resnet18.pth")]) == 0
    out = capsys.readouterr().out
    assert "ResNet from" in out and "parameters: 11,689,512" in out
    assert "conv1.weight (64, 3, 7, 7) -> stem.conv.weight" in out
    assert cli.main(["inspect", "efficientnet_lite0"]) == 0
    assert "_blocks.15._project_conv.weight (320, 1152, 1, 1) -> " in capsys.readouterr().out
    save_file({"mystery.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    assert cli.main(["inspect", str(tmp_path / "other.safetensors")]) == 1
    assert "match none of minipt's config-less formats" in capsys.readouterr().err


# -- the parser itself ----------------------------------------------------------------
def _options(parser):
    """(command, option) for every argument the parser and its subcommands take, except -h."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name}", option) for _, option in _options(sub))
        elif not isinstance(action, argparse._HelpAction):
            yield "minipt", action


def test_the_walk_reaches_every_command():
    import argparse

    taking_arguments = {name for name, (_, _, add) in cli.COMMANDS.items() if add(argparse.ArgumentParser())}  # `info` takes none
    assert "info" not in taking_arguments
    assert {command for command, _ in _options(cli.build_parser())} == taking_arguments | {"minipt"}


_NO_HELP_YET: dict[str, str] = {}  # command -> why its arguments still lack help lines (none do now)


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=_NO_HELP_YET[c])) if c in _NO_HELP_YET else c for c in ["minipt", *cli.COMMANDS]],
)
def test_every_option_has_a_help_line(command):
    options = [action for name, action in _options(cli.build_parser()) if name == command]
    missing = ["/".join(action.option_strings) or action.dest for action in options if not (action.help or "").strip()]
    assert not missing, f"give these arguments of {command} a help line: {', '.join(missing)}"


# generate's sampling options: checked by generate's own check_sampling, called before the model loads
_CHECKED_BY_THE_API = {"temperature", "top_k", "top_p", "repetition_penalty"}


def test_every_number_and_output_file_is_checked_before_the_work():
    unchecked = [
        f"{command} {'/'.join(action.option_strings) or action.dest}"
        for command, action in _options(cli.build_parser())
        if (action.type in (int, float) or action.dest in ("out", "plot")) and action.dest not in _CHECKED_BY_THE_API
        and (None, action.dest) not in cli.ARGUMENT_CHECKS and (command, action.dest) not in cli.ARGUMENT_CHECKS
    ]
    assert not unchecked, f"add these to cli.ARGUMENT_CHECKS: {', '.join(unchecked)}"


def test_version(capsys):
    import importlib.metadata

    import minipt

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"minipt {cli.version()}" == f"minipt {importlib.metadata.version('minipt')}"
    assert cli.version() == minipt.__version__  # pyproject.toml and the package say the same


# -- the text encoder families: tiny random checkpoints with their tokenizer snapshots --------------
ENCODERS = [family for family in registry.families() if family.model_type in FAMILIES]  # all three: test_encoder_tokenizers checks


@pytest.fixture(scope="module")
def encoder_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {family.model_type: tiny_encoder_folder(family, root / family.model_type) for family in ENCODERS}


@pytest.mark.parametrize("family", ENCODERS, ids=lambda family: family.model_type)
def test_inspect_and_diff_a_text_encoder(encoder_folders, family, capsys):
    folder = encoder_folders[family.model_type]
    model = family.classes[0].from_pretrained(folder)
    assert cli.main(["inspect", str(folder), "--input-size", "2x16"]) == 0
    out = capsys.readouterr().out
    assert f"{family.classes[0].__name__} from {folder}" in out
    assert f"parameters: {sum(p.numel() for p in model.parameters()):,}" in out
    assert f"embeddings.word_embeddings.weight ({model.config.vocab_size}, " in out and "-> embeddings.token.weight" in out
    assert "MISSING" not in out and "UNEXPECTED" not in out
    assert cli.main(["diff", str(folder), "--input", "Café 🙂 ÀÉ", "--input", "a second,   longer text 日本"]) == 0
    out = capsys.readouterr().out
    assert f"against transformers {family.classes[0].__name__} on 2 texts" in out and "no divergence: all" in out


@pytest.mark.parametrize("family", ENCODERS, ids=lambda family: family.model_type)
def test_embed_a_text_encoder_as_sentence_transformers_does(encoder_folders, family, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    folder, texts = encoder_folders[family.model_type], ["hello world", "Café 🙂, naïve", "日本語"]
    assert cli.main(["embed", *texts, "--model", str(folder), "--out", str(tmp_path / "e.npy")]) == 0
    saved = torch.from_numpy(np.load(tmp_path / "e.npy"))
    expected = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)  # a plain model: mean pooling
    assert saved.shape == (3, family.tiny().hidden_size) and not torch.allclose(saved[0], saved[1])
    assert torch.allclose(saved, expected, atol=1e-5)


def test_embed_refuses_what_it_cannot_pool(encoder_folders, tmp_path, capsys):
    gpt2 = next(family for family in registry.families() if family.model_type == "gpt2")
    gpt2.tiny_model().save_pretrained(tmp_path / "gpt2")
    assert cli.main(["embed", "text", "--model", str(tmp_path / "gpt2")]) == 1
    assert f"holds a {gpt2.classes[0].__name__} checkpoint; SentenceEncoder pools the token vectors of a text encoder (albert, bert" in capsys.readouterr().err


# -- classify: texts through any encoder family's sequence classifier ----------------
@pytest.fixture(scope="module")
def text_classifier(tmp_path_factory):
    """A tiny BERT sentiment classifier with named labels, saved with all-MiniLM-L6-v2's tokenizer."""
    from minipt import Tokenizer
    from minipt.models.bert import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        id2label={0: "negative", 1: "neutral", 2: "positive"})
    BertForSequenceClassification(config).save_pretrained(folder)
    Tokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return folder


def test_classify_texts_as_transformers_pipeline_does(text_classifier, capsys):
    from transformers import pipeline

    from minipt.models.text_encoder import classify_texts

    texts = ["A wonderful film.", "Terrible service, never again!"]
    ours = classify_texts(texts, model=text_classifier, top=3)
    theirs = pipeline("text-classification", model=str(text_classifier), top_k=3, device="cpu")(texts)
    for row, expected in zip(ours, theirs):
        assert [label for label, _ in row] == [e["label"] for e in expected]
        assert np.allclose([p for _, p in row], [e["score"] for e in expected], atol=1e-5)
    assert cli.main(["classify", *texts, "--model", str(text_classifier), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == texts[0] and lines[3] == texts[1] and len(lines) == 6
    assert lines[1].split()[-1] == ours[0][0][0] and f"{ours[0][0][1]:7.2%}" in lines[1]


@pytest.mark.parametrize("family", ENCODERS, ids=lambda family: family.model_type)
def test_classify_texts_with_each_encoder_familys_classifier(family, tmp_path, capsys):
    """Each family's sequence classifier with its own tokenizer, as transformers' text-classification pipeline reads it."""
    from transformers import pipeline

    cls = next(c for c in family.classes if c.__name__.endswith("ForSequenceClassification"))
    torch.manual_seed(0)
    folder = tiny_encoder_folder(family, tmp_path, cls, id2label={0: "business", 1: "sport", 2: "tech"})
    texts = ["Shares fell 3% on Monday.", "Café 🙂 — the naïve   striker scored twice!"]
    theirs = pipeline("text-classification", model=str(folder), top_k=3, device="cpu")(texts)
    assert cli.main(["classify", *texts, "--model", str(folder), "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [lines[0], lines[4]] == texts and len(lines) == 8
    for shown, expected in zip((lines[1:4], lines[5:8]), theirs):
        assert [line.split()[-1] for line in shown] == [e["label"] for e in expected]
        assert [float(line.split()[0].rstrip("%")) / 100 for line in shown] == pytest.approx([e["score"] for e in expected], abs=1e-4)
    assert len({line.split()[-1] for line in lines[1:4]}) == 3  # every label, each once


def test_classify_refuses_a_model_that_does_not_classify_texts(text_classifier, encoder_folders, capsys):
    from minipt.models.text_encoder import classify_texts

    with pytest.raises(ConfigError, match="holds a RobertaModel checkpoint; classifying texts needs a sequence classifier"):
        classify_texts(["text"], model=encoder_folders["roberta"])
    with pytest.raises(InputError, match="texts\\[1\\] must be a string"):
        classify_texts(["text", 3], model=text_classifier)
    with pytest.raises(InputError, match="top"):
        classify_texts(["text"], model=text_classifier, top=0)


def test_classify_as_the_pipeline_scores_each_problem_type(text_classifier, tmp_path, capsys):
    """classify applied a softmax to a multi-label head (0.335 where the pipeline gives 0.953 per label) and a sigmoid
    to a regression head's score (printed as 95.27% for 3.0025); a classifier whose config.json lacks "architectures"
    went down the image path ("describes a 'bert' model, not 'efficientnet-lite'")."""
    import json
    import shutil

    from transformers import pipeline

    from minipt.models.text_encoder import classify_texts

    texts = ["A wonderful film.", "Terrible service, never again!"]
    for problem, labels in (("multi_label_classification", 3), ("regression", 1)):
        folder = shutil.copytree(text_classifier, tmp_path / problem)
        config = json.loads((folder / "config.json").read_text())
        if labels == 1:
            config = {k: v for k, v in config.items() if k not in ("id2label", "label2id")} | {"num_labels": 1}
            import safetensors.torch

            weights = safetensors.torch.load_file(folder / "model.safetensors")
            weights["classifier.weight"], weights["classifier.bias"] = weights["classifier.weight"][:1] * 40, weights["classifier.bias"][:1] + 3
            safetensors.torch.save_file(weights, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(config | {"problem_type": problem}))
        theirs = pipeline("text-classification", model=str(folder), top_k=labels, device="cpu")(texts)
        ours = classify_texts(texts, model=folder, top=labels)
        for row, expected in zip(ours, theirs):
            assert [label for label, _ in row] == [e["label"] for e in expected]
            assert np.allclose([p for _, p in row], [e["score"] for e in expected], atol=1e-5), (problem, row, expected)
        assert cli.main(["classify", texts[0], "--model", str(folder), "--top", str(labels)]) == 0
        shown = capsys.readouterr().out.splitlines()[1]
        assert shown.split()[0] == (f"{ours[0][0][1]:.4f}" if labels == 1 else f"{ours[0][0][1]:.2%}")
    bare = shutil.copytree(text_classifier, tmp_path / "no_architectures")
    config = json.loads((bare / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "architectures"}))
    assert cli.main(["classify", texts[0], "--model", str(bare), "--top", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-1] in ("negative", "neutral", "positive")


# -- generate with a text-to-text model: a small random T5 with a T5 tokenizer snapshot beside it ---------------------
@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    from t5_snapshot import tiny_t5_folder

    torch.manual_seed(0)  # v1.1's untied head: T5's initialisation of a tiny tied model writes only <pad>
    return tiny_t5_folder(tmp_path_factory.mktemp("t5"), feed_forward_proj="gated-gelu", tie_word_embeddings=False)


@pytest.mark.parametrize("options, argv", [
    (dict(), []),
    (dict(do_sample=True, top_k=20, seed=3), ["--top-k", "20", "--seed", "3"]),
    (dict(num_beams=3), ["--num-beams", "3"]),
])
def test_generate_with_t5_prints_the_decoders_text(t5_folder, capsys, options, argv):
    """The prompt is the encoder's input; what is printed is the decoder's text, as model.generate and the tokenizer give it."""
    from minipt import Tokenizer
    from minipt.models.t5 import T5ForConditionalGeneration

    prompt = "translate English to German: The café is open 🙂"
    tokenizer, model = Tokenizer.from_pretrained(t5_folder), T5ForConditionalGeneration.from_pretrained(t5_folder)
    sequence = model.generate(tokenizer(prompt, padding=False)["input_ids"], max_new_tokens=8, **options)[0]
    expected = tokenizer.decode(sequence)
    assert len(expected.split()) >= 2  # the random model writes a few words before it stops, if it stops
    assert cli.main(["generate", "--model", str(t5_folder), prompt, "--max-new-tokens", "8", *argv]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_generate_streams_a_t5_whose_folder_asks_for_beams(t5_folder, tmp_path, capsys):
    """generation_config.json's num_beams reached the streaming call, which beam search refuses: --num-beams decides."""
    import json
    import shutil

    folder = shutil.copytree(t5_folder, tmp_path / "beams")
    (folder / "generation_config.json").write_text(json.dumps({"num_beams": 4, "decoder_start_token_id": 0}))
    assert cli.main(["generate", "--model", str(folder), "hello", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("argv, message", [
    (["--num-beams", "0"], "--num-beams must be a positive integer, got 0"),
    (["--num-beams", "2", "--top-k", "5"], "beam search (num_beams=2) takes no do_sample"),
    (["--num-beams", "5000"], "num_beams must be at most the vocabulary's 1100 tokens, got 5000"),
    (["--seed", "3"], "--seed seeds sampling, and no sampling option"),
])
def test_generate_with_t5_refuses_bad_options_in_one_line(t5_folder, capsys, argv, message):
    assert cli.main(["generate", "--model", str(t5_folder), "a prompt", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minipt generate: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_generate_names_what_a_text_to_text_checkpoint_lacks(t5_folder, tmp_path, capsys):
    import shutil

    from minipt.models.t5 import T5Model

    bare = shutil.copytree(t5_folder, tmp_path / "bare")
    T5Model.from_pretrained(t5_folder).save_pretrained(bare)  # config.json now says T5Model: no head
    assert cli.main(["generate", "--model", str(bare), "a prompt"]) == 1
    assert "is a T5Model checkpoint, which has no language-model head to generate with" in capsys.readouterr().err
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(t5_folder / name, alone / name)
    assert cli.main(["generate", "--model", str(alone), "a prompt"]) == 1
    assert "has no tokenizer beside it (tokenizer.json)" in capsys.readouterr().err
    gpt2 = next(family for family in registry.families() if family.model_type == "gpt2")
    gpt2.tiny_model().save_pretrained(tmp_path / "gpt2")
    assert cli.main(["generate", "--model", str(tmp_path / "gpt2"), "a prompt", "--num-beams", "2"]) == 1
    assert "--num-beams is for text-to-text models (T5)" in capsys.readouterr().err
