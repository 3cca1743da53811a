"""Saving and loading when things go wrong: a save killed at random points, a full disk, readers
racing a re-save, a checkpoint rewritten under the model loaded from it, an .npz bomb, folders that
cannot be written, the umask.

The savers run in child processes forked from a server that has imported torch once
(multiprocessing's forkserver), so each of the many kills costs milliseconds, not an interpreter.
"""

import io
import itertools
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import stat
import struct
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from minipt.bpe import build_bpe_files
from minipt.checkpoint import SAFETENSORS, Checkpoint, weight_files
from minipt.errors import CheckpointError, SaveError
from minipt.files import TEMPORARY_PREFIX
from minipt.models import bert

KILLS = 30
LOADS = 40  # per reader thread, while a child re-saves
OLD, NEW = 1, 2  # seeds of the model in the folder and of the one saved over it
SERVER = multiprocessing.get_context("forkserver")
# what the server imports once for all its children (those it can: it does not see the tests' folder)
SERVER.set_forkserver_preload(["torch", "numpy", "pytest", "minipt.models.bert", "minipt.bpe"])


def _bert(seed: int, name: str = "BertModel"):
    """A tiny BERT model (the bert family's test size) with the weights of ``seed``."""
    torch.manual_seed(seed)
    return bert.FAMILY.tiny_model(bert.FAMILY.architectures[name])


def _which(model, *candidates) -> int:
    """The index of the candidate whose tensors ``model`` holds exactly; fails on a mix or anything else."""
    state = model.state_dict()
    for index, candidate in enumerate(candidates):
        if all(torch.equal(state[key], value) for key, value in candidate.state_dict().items()):
            return index
    differs = [[key for key, value in c.state_dict().items() if not torch.equal(state[key], value)] for c in candidates]
    raise AssertionError(f"the loaded model is none of the {len(candidates)} saved; tensors that differ from each: {differs}")


def _temporaries(directory: Path) -> list[str]:
    """Hidden files: minipt's temporary files (TEMPORARY_PREFIX) and safetensors' own (.tmp*)."""
    return sorted(f.name for f in directory.rglob(".*"))


# -- child processes ---------------------------------------------------------------------------
def _save_forever(directory, started, saves):
    """Save the new and the old model into ``directory`` in turn until killed."""
    torch.set_num_threads(1)
    models = [_bert(NEW), _bert(OLD)]
    started.set()
    for model in itertools.cycle(models):
        model.save_pretrained(directory)
        with saves.get_lock():
            saves.value += 1


def _save_on_a_full_disk(directory, limit, result):
    """save_pretrained with files limited to ``limit`` bytes, as a full disk would stop them."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        _bert(NEW).save_pretrained(directory)
        result.send("saved")
    except SaveError as err:
        result.send(f"SaveError: {err}")


def _start_saver(directory):
    started, saves = SERVER.Event(), SERVER.Value("i", 0)
    saver = SERVER.Process(target=_save_forever, args=(directory, started, saves))
    saver.start()
    while not started.wait(0.05):
        assert saver.is_alive(), f"the saver exited with {saver.exitcode}"
    return saver, saves


# -- saving ------------------------------------------------------------------------------------
def test_a_save_killed_at_any_point_leaves_the_old_or_the_new_model(tmp_path):
    old, new = _bert(OLD), _bert(NEW)
    old.save_pretrained(tmp_path)
    rng = random.Random(0)
    completed = 0
    for kill in range(KILLS):
        saver, saves = _start_saver(tmp_path)
        while kill % 5 == 0 and saves.value == 0 and saver.is_alive():  # every fifth kill comes after a finished save
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.03))  # a tiny model's save takes a few ms (two fsynced files): kills land all through it
        saver.kill()
        saver.join()
        completed += saves.value
        assert _which(type(old).from_pretrained(tmp_path), old, new) in (0, 1)
        # each killed writer leaves at most its own temporary file per target; the next save removes the dead ones
        assert len([name for name in _temporaries(tmp_path) if name.startswith(TEMPORARY_PREFIX)]) <= 2
    assert completed > 0
    old.save_pretrained(tmp_path)
    assert not [name for name in _temporaries(tmp_path) if name.startswith(TEMPORARY_PREFIX)]


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    """Only the temporary files of writers on this machine whose process is gone are removed by the next save."""
    import minipt.files as files

    target = tmp_path / "x.bin"
    live = tmp_path / f"{TEMPORARY_PREFIX}x.bin.{files._HOST}.{os.getppid()}.abc"  # the parent process: alive
    elsewhere = tmp_path / f"{TEMPORARY_PREFIX}x.bin.another-host.1.abc"
    other_file = tmp_path / f"{TEMPORARY_PREFIX}y.bin.{files._HOST}.999999999.abc"
    for name in (live, elsewhere, other_file):
        name.write_bytes(b"partial")
    files.write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole" and live.exists() and elsewhere.exists() and other_file.exists()


def test_a_full_disk_leaves_the_previous_files_and_no_temporary_ones(tmp_path):
    old = _bert(OLD)
    old.save_pretrained(tmp_path)
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    assert (tmp_path / SAFETENSORS).stat().st_size > 16_384
    receive, send = SERVER.Pipe(duplex=False)
    child = SERVER.Process(target=_save_on_a_full_disk, args=(tmp_path, 16_384, send))
    child.start()
    child.join()
    assert child.exitcode == 0
    message = receive.recv()
    assert message.startswith("SaveError: cannot write") and str(tmp_path / SAFETENSORS) in message, message
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before
    assert _temporaries(tmp_path) == []
    assert _which(type(old).from_pretrained(tmp_path), old) == 0


def test_readers_racing_a_resave_see_the_old_or_the_new_model(tmp_path):
    old, new = _bert(OLD), _bert(NEW)
    old.save_pretrained(tmp_path)
    failures, seen = [], []

    def read():
        for _ in range(LOADS):
            try:
                seen.append(_which(type(old).from_pretrained(tmp_path), old, new))
            except Exception as err:  # a torn file, a spurious error or a mix: all failures
                failures.append(err)

    saver, saves = _start_saver(tmp_path)
    try:
        readers = [threading.Thread(target=read) for _ in range(2)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
    finally:
        saver.kill()
        saver.join()
    assert not failures, failures[:3]
    assert len(seen) == 2 * LOADS and saves.value > 0


@pytest.mark.parametrize("mmap", [False, True])
def test_saving_into_the_folder_of_a_loaded_model_leaves_it_unchanged(tmp_path, mmap):
    old, new = _bert(OLD), _bert(NEW)
    old.save_pretrained(tmp_path)
    loaded = type(old).from_pretrained(tmp_path, mmap=mmap)
    new.save_pretrained(tmp_path)  # a new file renamed over the old one, whose pages the mapped model keeps
    assert _which(loaded, old, new) == 0
    assert _which(type(old).from_pretrained(tmp_path), old, new) == 1


def test_save_into_a_folder_that_cannot_be_written_names_it(tmp_path):
    model = _bert(OLD)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SaveError, match=re.escape(f"cannot create directory {blocker / 'model'}: Not a directory")):
        model.save_pretrained(blocker / "model")
    with pytest.raises(SaveError, match=re.escape("directory /proc/self is not writable")):  # even as root
        model.save_pretrained("/proc/self")
    assert model.save_pretrained(tmp_path / "missing" / "parents") == tmp_path / "missing" / "parents"  # made, as mkdir -p


def test_saved_files_follow_the_umask(tmp_path):
    from bert_reference import minilm_path
    from minipt.models.bert import BertModel
    from minipt.models.sentence import SentenceEncoder
    from minipt.tokenizer import Tokenizer

    encoder = SentenceEncoder(BertModel(BertModel.config_class(vocab_size=30522, hidden_size=16, num_hidden_layers=1,
                                                               num_attention_heads=2, intermediate_size=16)),
                              Tokenizer.from_pretrained(minilm_path()))
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256}
    for umask, mode in ((0o027, 0o640), (0o002, 0o664)):
        previous = os.umask(umask)
        try:
            encoder.save_pretrained(tmp_path / oct(umask) / "sentence")
            build_bpe_files(ranks, {}, tmp_path / oct(umask) / "bpe")
        finally:
            os.umask(previous)
        files = [f for f in (tmp_path / oct(umask)).rglob("*") if f.is_file()]
        assert {"model.safetensors", "config.json", "modules.json", "sentence_bert_config.json", "vocab.json", "merges.txt"} <= {f.name for f in files}
        assert {f.relative_to(tmp_path): oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.relative_to(tmp_path): oct(mode) for f in files}


def test_export_onnx_moves_the_weights_file_in_before_the_graph(tmp_path, monkeypatch):
    """Past 2 GB the exporter writes ``<name>.data`` beside the graph and names it inside; a failed export
    leaves the previous files. (A fake exporter: the real one takes seconds; tests/test_onnx.py runs it.)"""
    from minipt.onnx_export import export_onnx

    model = _bert(OLD, "BertForSequenceClassification")
    replace, moved = os.replace, []

    def recording_replace(source, target):
        moved.append(Path(source).name)
        replace(source, target)

    def exporter(module, example, destination, **options):
        Path(destination + ".data").write_bytes(b"weights")
        Path(destination).write_bytes(b"graph naming " + Path(destination + ".data").name.encode())
        os.chmod(destination, 0o600)

    monkeypatch.setattr(torch.onnx, "export", exporter)
    monkeypatch.setattr(os, "replace", recording_replace)
    export_onnx(model, tmp_path / "bert.onnx")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["bert.onnx", "bert.onnx.data"]
    assert (tmp_path / "bert.onnx").read_bytes() == b"graph naming bert.onnx.data"
    assert [name for name in moved if not name.startswith(TEMPORARY_PREFIX)] == ["bert.onnx.data", "bert.onnx"]
    assert stat.S_IMODE((tmp_path / "bert.onnx").stat().st_mode) == 0o666 & ~_umask()

    def failing(module, example, destination, **options):
        Path(destination).write_bytes(b"part of a graph")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", failing)
    with pytest.raises(SaveError, match=re.escape(f"cannot write {tmp_path / 'bert.onnx'}: No space left on device")):
        export_onnx(model, tmp_path / "bert.onnx")
    assert (tmp_path / "bert.onnx").read_bytes() == b"graph naming bert.onnx.data" and _temporaries(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- loading -----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["overwritten", "truncated"])
def test_a_loaded_model_owns_its_weights(tmp_path, damage):
    old, new = _bert(OLD), _bert(NEW)
    old.save_pretrained(tmp_path / "old")
    new.save_pretrained(tmp_path / "new")
    loaded = type(old).from_pretrained(tmp_path / "old")
    file = tmp_path / "old" / SAFETENSORS
    if damage == "overwritten":
        shutil.copyfile(tmp_path / "new" / SAFETENSORS, file)  # in place, as cp does
    else:
        os.truncate(file, 0)  # a mapped model would die of SIGBUS reading its weights
    assert _which(loaded, old) == 0
    with torch.no_grad():
        loaded(torch.tensor([[1, 2, 3]]))


def test_mmap_true_keeps_the_weights_in_the_file(tmp_path):
    """The aliasing from_pretrained's docstring warns of: an in-place rewrite shows through."""
    old, new = _bert(OLD), _bert(NEW)
    old.save_pretrained(tmp_path / "old")
    new.save_pretrained(tmp_path / "new")
    mapped = type(old).from_pretrained(tmp_path / "old", mmap=True)
    shutil.copyfile(tmp_path / "new" / SAFETENSORS, tmp_path / "old" / SAFETENSORS)
    assert _which(mapped, old, new) == 1


def test_leftovers_of_killed_saves_are_not_weights(tmp_path):
    (tmp_path / "resnet.pth").write_bytes(b"")
    for leftover in (f"{TEMPORARY_PREFIX}resnet.pth.k2j3h4g5", ".tmpQ1w2E3", ".resnet.pth"):  # minipt's, safetensors', a hidden copy
        (tmp_path / leftover).write_bytes(b"")
    assert weight_files(tmp_path) == [tmp_path / "resnet.pth"]


def _npy_header(dtype: str, shape: tuple) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    return header.getvalue()


def _npz_bomb(path: Path, size: int = 2 << 30) -> None:
    """An .npz of ~2 MB whose one member, float32 zeros, inflates to ``size`` bytes: one deflate block of
    16 MiB of zeros repeated (full flushes make the blocks byte-identical), so it is built in milliseconds.
    Its CRC is left 0: a reader finds out only after inflating all of it."""
    header, zeros = _npy_header("<f4", (size // 4,)), bytes(16 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as zip stores it
    data = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    data += block * (size // len(zeros)) + compressor.flush()
    name, total = b"w.npy", len(header) + size
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, 0, len(data), total, len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, 0, len(data), total, len(name), 0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)


def test_an_npz_bomb_is_refused_before_it_is_decompressed(tmp_path):
    _npz_bomb(tmp_path / "bomb.npz")
    assert (tmp_path / "bomb.npz").stat().st_size < 3 << 20
    with zipfile.ZipFile(tmp_path / "bomb.npz") as archive, archive.open("w.npy") as member:  # a real 2 GiB of zeros inside
        assert member.read(1 << 20)[128:] == bytes((1 << 20) - 128)
    with pytest.raises(CheckpointError, match=r"declares 2,147,483,776 bytes of arrays in 2,\d{3},\d{3} bytes of archive"):
        Checkpoint(tmp_path / "bomb.npz")


def test_an_npz_member_whose_header_claims_more_than_it_holds_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "liar.npz", "w") as archive:
        archive.writestr("w.npy", _npy_header("<f4", (10**9,)) + bytes(16))  # 4 GB announced, 16 bytes there
    with pytest.raises(CheckpointError, match=r"member 'w.npy' declares 144 bytes, but its header describes 4,000,000,128"):
        Checkpoint(tmp_path / "liar.npz")
    with zipfile.ZipFile(tmp_path / "objects.npz", "w") as archive:
        archive.writestr("w.npy", _npy_header("|O", (2,)) + bytes(16))
    with pytest.raises(CheckpointError, match="holds objects other than arrays"):
        Checkpoint(tmp_path / "objects.npz")


def test_a_symbolic_link_stays_one_and_its_target_is_replaced(tmp_path):
    from minipt.files import write_bytes

    (tmp_path / "real.bin").write_bytes(b"old")
    (tmp_path / "link.bin").symlink_to("real.bin")
    write_bytes(tmp_path / "link.bin", b"new")
    assert (tmp_path / "link.bin").is_symlink() and (tmp_path / "real.bin").read_bytes() == b"new"
    assert not any(p.name.startswith(TEMPORARY_PREFIX) for p in tmp_path.iterdir())


def test_a_named_pipe_is_written_through_not_replaced(tmp_path):
    """A rename over a device or a pipe would put a plain file in its place (as root, even over /dev/null): such
    a path is written through. The reader is opened first, without blocking, so a wrong rename fails the test
    instead of hanging it."""
    from minipt.files import write_bytes

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_bytes(pipe, b"through the pipe")
        assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)
