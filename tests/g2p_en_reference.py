"""g2p-en's own numpy decoder, run as the reference for minipt's G2P.

g2p-en's module-level code imports NLTK and downloads its data, so the package
is never imported. Instead the methods of its ``G2p`` class that predict a
pronunciation (``sigmoid``, ``grucell``, ``gru``, ``encode``, ``predict``) are
taken from the installed ``g2p_en/g2p.py`` with ``ast`` and executed unchanged
on the arrays of ``checkpoint20.npz``; nothing else of the file runs.

    python tests/g2p_en_reference.py activationist hello

prints the reference pronunciations (the expected strings in test_g2p.py come
from this script).
"""

from __future__ import annotations

import ast
import sys
import warnings
from pathlib import Path

import numpy as np

from minipt.hub import resolve
from minipt.models.g2p import OFFICIAL_FILE, VOCAB_FILE, read_vocabularies

METHODS = ("sigmoid", "grucell", "gru", "encode", "predict")


def reference_g2p(folder: Path | None = None):
    """An object whose ``predict(word)`` is g2p-en's greedy decoder on its checkpoint."""
    folder = Path(folder or resolve("g2p-en"))
    with warnings.catch_warnings():  # the file's regexes have escapes newer Pythons warn about
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        tree = ast.parse((folder / VOCAB_FILE).read_text(encoding="utf-8"))
    source_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "G2p")
    methods = [n for n in source_class.body if isinstance(n, ast.FunctionDef) and n.name in METHODS]
    missing = set(METHODS) - {m.name for m in methods}
    if missing:
        raise RuntimeError(f"{folder / VOCAB_FILE} no longer defines G2p.{sorted(missing)}")
    module = ast.Module(body=[ast.ClassDef(name="G2pDecoder", bases=[], keywords=[], body=methods, decorator_list=[])], type_ignores=[])
    namespace = {"np": np}
    exec(compile(ast.fix_missing_locations(module), str(folder / VOCAB_FILE), "exec"), namespace)

    decoder = namespace["G2pDecoder"]()
    decoder.graphemes, decoder.phonemes = read_vocabularies(folder / VOCAB_FILE)
    decoder.g2idx = {g: i for i, g in enumerate(decoder.graphemes)}
    decoder.idx2p = dict(enumerate(decoder.phonemes))
    with np.load(folder / OFFICIAL_FILE, allow_pickle=False) as arrays:  # what G2p.load_variables sets
        for name in arrays.files:
            setattr(decoder, name, arrays[name])
    return decoder


if __name__ == "__main__":
    reference = reference_g2p()
    for word in sys.argv[1:] or ["activationist", "hello"]:
        print(f"{word}: {' '.join(reference.predict(word))}")
