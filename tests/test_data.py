"""The dataset registry and fetcher: resolution order, checksums, atomic downloads, offline errors.

Downloads are exercised for real against an HTTP server on 127.0.0.1 that serves copies of the
shared datasets (plain files and a zip archive), including a server that lies about its length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import os
import threading
import zipfile
from pathlib import Path

import pytest

from scratchlm.data import registry as data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
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
    assert "IncompleteRead" in type(err.value).__name__ or "checksum" in str(err.value)
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
