"""Damaged checkpoints end in a MiniptError or a valid load, never anything else (tests/fuzz_checkpoints.py).

One test per snapshot: every class of every family declared in ``minipt.registry``
(a tiny model written by ``save_pretrained``), and each official format that
``save_pretrained`` does not write. Each runs 40 seeded cases;
``MINIPT_FUZZ_CASES`` (cases per snapshot) and ``MINIPT_FUZZ_SEED`` change that,
and ``python tests/fuzz_checkpoints.py --cases 10000`` runs a long campaign.
"""

import os
import re

import pytest

import fuzz_checkpoints

CASES = int(os.environ.get("MINIPT_FUZZ_CASES", "40"))  # per snapshot
SEED = int(os.environ.get("MINIPT_FUZZ_SEED", "0"))

# Defects the fuzzer has found and the model file has not fixed yet: snapshot -> (what is wrong, the failure it explains).
# A case failing any other way still fails the test; once fixed, the snapshot passes and its entry should go.
KNOWN_DEFECTS: dict[str, tuple[str, str]] = {}  # snapshot -> (reason, pattern every failure matches)


@pytest.mark.parametrize("snapshot", fuzz_checkpoints.subjects())
def test_damaged_checkpoints(snapshot, tmp_path):
    counts, failures = fuzz_checkpoints.run(CASES, SEED, tmp_path, only=[snapshot])
    if failures and snapshot in KNOWN_DEFECTS:
        reason, pattern = KNOWN_DEFECTS[snapshot]
        unexplained = [f for f in failures if not re.search(pattern, f)]
        assert not unexplained, f"{len(unexplained)} of {CASES} cases failed; the first:\n" + "\n".join(unexplained[:3])
        pytest.xfail(f"{len(failures)} of {CASES} cases hit a known defect: {reason}")
    assert not failures, f"{len(failures)} of {CASES} cases failed; the first:\n" + "\n".join(failures[:3])
    assert sum(counts.values()) == CASES
    assert {subject for subject, _, _ in counts} == {snapshot}
    refused = sum(n for (_, _, outcome), n in counts.items() if outcome == "error")
    assert refused > 0, counts  # the damage reached the loader: truncated files at least are refused


def test_every_declared_class_is_fuzzed():
    from minipt import registry

    declared = [(family.model_type, cls) for family in registry.families() for cls in family.classes]
    assert [(family.model_type, cls) for family, cls in fuzz_checkpoints.model_subjects().values()] == declared
    assert fuzz_checkpoints.subjects()[-len(fuzz_checkpoints.FORMATS):] == list(fuzz_checkpoints.FORMATS)


def test_a_failure_is_reported(tmp_path, monkeypatch):
    """The harness itself: an exception that is not a MiniptError counts as a failure, named by snapshot and case."""
    snapshot, (family, cls) = next(iter(fuzz_checkpoints.model_subjects().items()))

    def broken(*args, **kwargs):
        raise ZeroDivisionError("integer modulo by zero")

    monkeypatch.setattr(cls, "from_pretrained", broken)
    counts, failures = fuzz_checkpoints.run(4, 0, tmp_path, only=[snapshot])
    assert len(failures) == 4 and not counts
    assert all(f.startswith(f"{snapshot} case {i} (seed 0): ZeroDivisionError") for i, f in enumerate(failures))


def test_a_case_is_the_same_alone_and_in_a_campaign(tmp_path):
    """A failure found in a long run reruns alone: a case's damage depends on its snapshot, number and seed only."""
    snapshot = fuzz_checkpoints.subjects()[1]
    alone, _ = fuzz_checkpoints.run(6, 3, tmp_path / "alone", only=[snapshot])
    together, _ = fuzz_checkpoints.run(6 * 2, 3, tmp_path / "together", only=[fuzz_checkpoints.subjects()[0], snapshot])
    assert alone == {key: n for key, n in together.items() if key[0] == snapshot}
