"""Damaged checkpoints end in a MiniptError or a valid load, never anything else (tests/fuzz_checkpoints.py).

CI runs 2,000 seeded cases; ``MINIPT_FUZZ_CASES=10000`` (and ``MINIPT_FUZZ_SEED``)
runs more, as does ``python tests/fuzz_checkpoints.py --cases 10000``.
"""

import os

import fuzz_checkpoints


def test_damaged_checkpoints(tmp_path):
    cases = int(os.environ.get("MINIPT_FUZZ_CASES", "2000"))
    seed = int(os.environ.get("MINIPT_FUZZ_SEED", "0"))
    counts, failures = fuzz_checkpoints.run(cases, seed, tmp_path)
    assert not failures, f"{len(failures)} of {cases} cases failed; the first:\n" + "\n".join(failures[:3])
    assert sum(counts.values()) == cases
    kinds = {kind.split(":")[0] for kind, _ in counts}
    assert kinds == {"safetensors", "config", "bin", "tokenizer", "pth", "npz"}, kinds
    outcomes = {outcome for _, outcome in counts}
    assert outcomes == {"error", "loaded"}, outcomes  # damage that leaves a valid file loads; the rest is refused


def test_a_failure_is_reported(tmp_path, monkeypatch):
    """The harness itself: an exception that is not a MiniptError counts as a failure."""
    from minipt.models.bert import BertModel

    def broken(*args, **kwargs):
        raise ZeroDivisionError("integer modulo by zero")

    monkeypatch.setattr(BertModel, "from_pretrained", broken)
    monkeypatch.setattr(fuzz_checkpoints, "damage_config", lambda path, rng: "config:none")
    counts, failures = fuzz_checkpoints.run(12, 0, tmp_path)
    assert failures and all("ZeroDivisionError" in f for f in failures)
