"""Catalogued checksums are verified once per file version, remembered in the cache, and re-checked when a file changes."""

import hashlib
import json
import os

import pytest

import minipt.hub as hub
from minipt.errors import CheckpointError


@pytest.fixture
def memo_env(tmp_path, monkeypatch):
    """A private cache directory and an empty in-process memo; counts calls to sha256."""
    monkeypatch.setenv("MINIPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "_verified", {})
    calls = []
    real = hub.sha256

    def counting(path):
        calls.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(hub, "sha256", counting)
    return calls


def snapshot(tmp_path, files: dict[str, bytes]) -> tuple:
    folder = tmp_path / "snapshot"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    entry = {"files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    return folder, entry


def test_second_verification_does_not_hash(tmp_path, memo_env):
    folder, entry = snapshot(tmp_path, {"model.bin": b"weights" * 1000, "config.json": b"{}"})
    hub.verify(folder, "demo", entry)
    assert sorted(memo_env) == ["config.json", "model.bin"]
    hub.verify(folder, "demo", entry)
    assert len(memo_env) == 2  # remembered in this process
    memo = json.loads((tmp_path / "cache" / hub.VERIFIED_FILE).read_text())
    assert set(memo) == {str((folder / name).resolve()) for name in entry["files"]}
    assert {record["sha256"] for record in memo.values()} == set(entry["files"].values())


def test_memo_file_carries_over_to_a_new_process(tmp_path, memo_env, monkeypatch):
    folder, entry = snapshot(tmp_path, {"model.bin": b"weights"})
    hub.verify(folder, "demo", entry)
    monkeypatch.setattr(hub, "_verified", {})  # what a fresh process starts with
    hub.verify(folder, "demo", entry)
    assert memo_env == ["model.bin"]


def test_file_changed_after_verification_is_hashed_again_and_refused(tmp_path, memo_env, monkeypatch):
    folder, entry = snapshot(tmp_path, {"model.bin": bytes(range(256)) * 64})
    hub.verify(folder, "demo", entry)
    path = folder / "model.bin"
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, one byte flipped
    with open(path, "r+b") as f:  # rewritten in place: same inode
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert path.stat().st_size == before.st_size and path.stat().st_ino == before.st_ino
    for memo in ({}, hub._verified):  # a fresh process, and this one
        monkeypatch.setattr(hub, "_verified", dict(memo))
        with pytest.raises(CheckpointError, match=r"model\.bin does not match the catalogue"):
            hub.verify(folder, "demo", entry)
    assert memo_env == ["model.bin"] * 3


def test_file_modified_with_its_old_mtime_restored_is_still_hashed(tmp_path, memo_env):
    folder, entry = snapshot(tmp_path, {"model.bin": b"a" * 4096})
    hub.verify(folder, "demo", entry)
    path = folder / "model.bin"
    before = path.stat()
    path.write_bytes(b"b" * 4096)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back: the change time still moves
    with pytest.raises(CheckpointError, match="does not match the catalogue"):
        hub.verify(folder, "demo", entry)


def test_corrupt_or_unreadable_memo_is_ignored(tmp_path, memo_env, monkeypatch):
    folder, entry = snapshot(tmp_path, {"model.bin": b"weights"})
    memo = tmp_path / "cache" / hub.VERIFIED_FILE
    memo.parent.mkdir()
    for content in (b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"x": 3}', b""):
        memo.write_bytes(content)
        monkeypatch.setattr(hub, "_verified", {})
        hub.verify(folder, "demo", entry)  # hashed, and the memo rewritten as valid JSON
        assert json.loads(memo.read_text())[str((folder / "model.bin").resolve())]["sha256"] == entry["files"]["model.bin"]
    assert len(memo_env) == 5
    memo.unlink()
    memo.mkdir()  # a memo path that cannot be read or replaced
    monkeypatch.setattr(hub, "_verified", {})
    hub.verify(folder, "demo", entry)
    assert len(memo_env) == 6


def test_a_tampered_memo_entry_does_not_vouch_for_other_bytes(tmp_path, memo_env, monkeypatch):
    folder, entry = snapshot(tmp_path, {"model.bin": b"weights"})
    hub.verify(folder, "demo", entry)
    changed = dict(entry["files"], **{"model.bin": hashlib.sha256(b"other").hexdigest()})
    monkeypatch.setattr(hub, "_verified", {})
    with pytest.raises(CheckpointError, match="does not match the catalogue"):
        hub.verify(folder, "demo", {"files": changed})  # the memo holds another expected sum: hashed again


def test_catalogued_checkpoint_is_hashed_once_per_process(tmp_path, memo_env):
    from minipt.errors import CheckpointNotFoundError
    from minipt.hub import catalog_entry, resolve

    if catalog_entry("all-MiniLM-L6-v2") is None:
        pytest.skip("the catalogue is not available")
    try:
        resolve("all-MiniLM-L6-v2")
    except CheckpointNotFoundError as err:
        pytest.skip(f"all-MiniLM-L6-v2 is not installed: {err}")
    first = len(memo_env)
    assert first == len(catalog_entry("all-MiniLM-L6-v2")[1]["files"])
    resolve("all-MiniLM-L6-v2")
    assert len(memo_env) == first
