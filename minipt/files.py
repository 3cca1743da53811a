"""Files: reading the JSON of checkpoints, tokenizers and pipelines (one reader, one set of errors),
and writing every file minipt writes atomically (``atomic_path``: a temporary file beside the target,
fsynced, then renamed over it).
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import CheckpointError, MiniptError, SaveError

_ABSENT = object()


def read_json(path: Path, expected: type = dict, *, default: Any = _ABSENT, what: str = "an object",
              error: type[MiniptError] = CheckpointError) -> Any:
    """The JSON value in ``path``, of type ``expected``; ``default`` for an absent file when one is
    given. A file that cannot be read, is empty, is not UTF-8 or not JSON, or holds another type of
    value raises ``error`` naming the file and the problem (``what`` describes the value expected)."""
    path = Path(path)
    if not path.is_file():
        if default is not _ABSENT:
            return default
        raise error(f"{path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path} cannot be read as UTF-8 text: {err}") from None
    except OSError as err:
        raise error(f"{path} cannot be read: {err}") from None
    if not text.strip():
        raise error(f"{path} is empty ({len(text)} bytes); expected {what}")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise error(f"{path} is not valid JSON: {err}") from None
    if not isinstance(value, expected):
        raise error(f"{path} holds a JSON {type(value).__name__}, expected {what}")
    return value


# -- writing: every file minipt writes goes through atomic_path ---------------
TEMPORARY_PREFIX = ".minipt-partial-"  # loaders skip files named so; the next save removes a killed writer's


def _umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a directory that cannot be opened (Windows): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_directory(directory: str | os.PathLike, name: str = "folder") -> Path:
    """``directory``, created with its parents where missing; ``SaveError`` names it (as ``name``) when it
    is a file, cannot be created or cannot be written into."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SaveError(f"{name} {directory} is a file, not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SaveError(f"cannot create {name} {directory}: {err.strerror or err}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SaveError(f"{name} {directory} is not writable")
    return directory


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write in full; on success it is flushed to disk, given the
    permissions a new file gets under the umask, and renamed over ``path``, so readers see the old file
    or the new one and never part of one. On any failure the temporary file is removed and ``path`` is
    untouched. A missing folder or a path that cannot be written raises ``SaveError`` naming it.

    A symbolic link keeps being one: the file it points to is replaced. A path that is not a regular
    file (``/dev/null``, ``/dev/stdout``, a named pipe) is written through, not renamed over: a rename
    would put a plain file in the place of the device or the pipe."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file() and not path.is_dir():
        try:
            yield path
        except OSError as err:  # /dev/full: no space left
            raise SaveError(f"cannot write {path}: {err.strerror or err}") from err
        return
    mine = f"{TEMPORARY_PREFIX}{path.name}.{_HOST}."  # + the writer's pid: whose it is, checked by the next writer
    _remove_orphans(path.parent, mine)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{mine}{os.getpid()}.")
    except OSError as err:
        raise SaveError(f"cannot write {path}: {err.strerror or err}") from None
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException as err:
        temporary.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise SaveError(f"cannot write {path}: {err.strerror or err}") from err
        raise
    _fsync_directory(path.parent)


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _remove_orphans(folder: Path, prefix: str) -> None:
    """Delete the temporary files of earlier writers of the same file on this machine whose process is gone
    (killed mid-save: each left a file the size of what it wrote). Another machine's, or a live writer's, stay."""
    try:
        found = [entry for entry in os.scandir(folder) if entry.name.startswith(prefix)]
    except OSError:
        return
    for entry in found:
        pid = entry.name[len(prefix):].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: does the process exist?
        except ProcessLookupError:
            Path(entry.path).unlink(missing_ok=True)
        except (PermissionError, OverflowError, OSError):
            continue  # alive under another user, or not a pid: not ours to remove


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (``atomic_path``)."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Write ``value`` as indented JSON to ``path`` atomically (``atomic_path``)."""
    return write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
