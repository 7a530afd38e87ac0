"""The official download (pipeline.lib.download: fetch_official, download) against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import io
import re
import shutil
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from pipeline import paths
from pipeline.lib import download
from pipeline.lib.config import parse_params
from pipeline.lib.idx import read_idx, verify_checksums
from pipeline.lib.io import DataError, sha256_file
from pipeline.lib.prepared import load_manifest, load_split
from pipeline.stages import prepare as stage
from pipeline.tools import plan_downloads
from tests.conftest import TINY_SPEC
from tests.fakedata import make_emnist_dir

PREFIX = "emnist-balanced-"
GZ_NAMES = [f"{PREFIX}{s}-{k}-ubyte.gz" for s in ("train", "test") for k in ("images-idx3", "labels-idx1")]


@pytest.fixture(scope="module")
def fake_zip(tmp_path_factory) -> tuple[bytes, dict[str, str]]:
    """A small gzip.zip laid out like NIST's, and the sha256 of its four Balanced .gz members."""
    src = make_emnist_dir(tmp_path_factory.mktemp("src"), n_train=94, n_test=47, prefix=PREFIX, sha256sums=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in GZ_NAMES:
            zf.write(src / name, f"gzip/{name}")
        zf.write(src / "mapping.txt", f"gzip/{download.OFFICIAL_MAPPING}")
        zf.writestr("gzip/emnist-letters-train-labels-idx1-ubyte.gz", b"not wanted")
    return buffer.getvalue(), {name: sha256_file(src / name) for name in GZ_NAMES}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append(self.headers.get("Range"))
        if srv.status != 200:
            return self.send_error(srv.status)
        body, start = srv.payload, 0
        if srv.ranges and self.headers.get("Range"):
            start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"])[1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if srv.drops:  # fault: promise the whole body, send half of it, hang up
            srv.drops -= 1
            chunk = chunk[: len(chunk) // 2]
            self.close_connection = True
        self.wfile.write(chunk)


@pytest.fixture
def server(fake_zip):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.payload, httpd.status, httpd.drops, httpd.ranges, httpd.requests = fake_zip[0], 200, 0, True, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/EMNIST/gzip.zip"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def sums(fake_zip) -> dict[str, str]:
    return dict(fake_zip[1])


def test_success_verifies_extracts_and_caches(server, sums, tmp_path):
    target = download.fetch_official(server.url, tmp_path, checksums=sums)
    assert target == tmp_path / "emnist-balanced"
    assert sorted(p.name for p in target.iterdir()) == sorted([*GZ_NAMES, download.OFFICIAL_MAPPING])
    for name, digest in sums.items():
        assert sha256_file(target / name) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emnist-balanced"]  # zip (and .part) removed
    assert server.requests == [None]
    assert download.fetch_official(server.url, tmp_path, checksums=sums) == target
    assert len(server.requests) == 1  # the verified files are the cache: no second request


def test_http_404_is_reported(server, sums, tmp_path):
    server.status = 404
    with pytest.raises(DataError, match=r"download failed: HTTP 404") as err:
        download.fetch_official(server.url, tmp_path, checksums=sums)
    assert server.url in str(err.value)
    assert not (tmp_path / "gzip.zip").exists() and not (tmp_path / "emnist-balanced").exists()


def test_dropped_connection_keeps_part_and_resumes_with_range(server, sums, tmp_path):
    server.drops = 1
    size = len(server.payload)
    with pytest.raises(DataError, match=rf"connection dropped after {size // 2} of {size} bytes"):
        download.fetch_official(server.url, tmp_path, checksums=sums)
    part = tmp_path / "gzip.zip.part"
    assert not (tmp_path / "gzip.zip").exists() and part.stat().st_size == size // 2
    assert not (tmp_path / "emnist-balanced").exists()
    target = download.fetch_official(server.url, tmp_path, checksums=sums)
    assert server.requests == [None, f"bytes={size // 2}-"]  # the retry resumed with a Range request
    assert not part.exists() and not (tmp_path / "gzip.zip").exists()
    verify_checksums(target, sums)


def test_server_ignoring_range_restarts_from_scratch(server, sums, tmp_path):
    server.drops, server.ranges = 1, False
    with pytest.raises(DataError, match="connection dropped"):
        download.fetch_official(server.url, tmp_path, checksums=sums)
    target = download.fetch_official(server.url, tmp_path, checksums=sums)  # 200 instead of 206: rewrite the .part
    assert len(server.requests) == 2 and server.requests[1] is not None
    verify_checksums(target, sums)


def test_wrong_checksum_names_file_and_leaves_nothing(server, sums, tmp_path):
    bad = GZ_NAMES[1]
    sums[bad] = "0" * 64
    with pytest.raises(DataError, match="sha256 mismatch") as err:
        download.fetch_official(server.url, tmp_path, checksums=sums)
    assert str(tmp_path / "emnist-balanced" / bad) in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the archive nor unverified extracted files


def test_unreachable_server_is_reported_with_local_copy_hint(sums, tmp_path):
    with socket.socket() as sock:  # a port that was just free and is now closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError) as err:
        download.fetch_official(f"http://127.0.0.1:{port}/gzip.zip", tmp_path, checksums=sums)
    message = str(err.value)
    assert "cannot download" in message and "DATA=" in message and "data.source" in message
    assert not (tmp_path / "gzip.zip").exists() and not (tmp_path / "gzip.zip.part").exists()


def _damage_member(skip: int, length: int):
    """Overwrite with 0xFF `length` bytes of the first member's deflate data, `skip` bytes in."""

    def damage(payload: bytes) -> bytes:
        raw = bytearray(payload)
        offset = payload.index(GZ_NAMES[0].encode()) + len(GZ_NAMES[0]) + skip
        raw[offset : offset + length] = b"\xff" * length
        return bytes(raw)

    return damage


CORRUPT_ZIPS = {  # id: damage to the served archive
    "not-a-zip": lambda payload: b"<html>maintenance</html>" + payload[:100],
    "member-crc": _damage_member(200, 64),  # inflates, but to the wrong bytes
    "member-deflate": _damage_member(0, 1),  # invalid deflate block type: zlib.error
}


@pytest.mark.parametrize("corrupt", CORRUPT_ZIPS.values(), ids=CORRUPT_ZIPS.keys())
def test_corrupt_zip_is_deleted(server, sums, tmp_path, corrupt):
    server.payload = corrupt(server.payload)
    with pytest.raises(DataError, match="corrupt zip archive") as err:
        download.fetch_official(server.url, tmp_path, checksums=sums)
    assert str(tmp_path / "gzip.zip") in str(err.value)
    assert list(tmp_path.iterdir()) == []  # archive deleted, no half-extracted files


def test_the_plan_says_prepare_downloads_exactly_when_it_does(server, sums, fake_zip, project_root):
    """The plan's line (pipeline.tools.plan_downloads) against fetch_official: with nothing here it downloads; with
    its verified files kept, or the whole archive downloaded before, it does not."""
    (project_root / "official.sha256").write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    params = parse_params({"variants": {"m": TINY_SPEC}, "data": {"source": "official.sha256", "url": server.url}})
    said, downloaded = [], []
    for state in ("nothing", "its verified files", "the archive"):
        if state == "the archive":
            shutil.rmtree(paths.raw_dir() / plan_downloads.KEPT_DIR)
            (paths.raw_dir() / plan_downloads.ARCHIVE).write_bytes(fake_zip[0])
        said.append(bool(plan_downloads.download_lines(params, ["prepare"])))
        requests = len(server.requests)
        assert download.fetch_official(server.url, paths.raw_dir(), sums) == paths.raw_dir() / plan_downloads.KEPT_DIR
        downloaded.append(len(server.requests) > requests)
    assert said == downloaded == [True, False, False]


def test_prepare_stage_end_to_end_from_official_url(server, sums, project_root):
    """The prepare stage with data.source a SHA-256 listing downloads the files it names from data.url into
    <root>/data/raw and prepares from there."""
    listing = project_root / "official.sha256"
    listing.write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    data = {"source": "official.sha256", "url": server.url, "val_fraction": 0.2, "seed": 1}
    params = parse_params({"variants": {"m": TINY_SPEC}, "data": data})
    message = stage.prepare(params)
    prepared, raw = project_root / "data" / "prepared", project_root / "data" / "raw"
    assert str(prepared) in message
    manifest = load_manifest(prepared)
    assert manifest["source"] == "official.sha256"
    assert manifest["counts"] == {
        "train": 94 - sum(manifest["per_class"]["val"]),
        "val": sum(manifest["per_class"]["val"]),
        "test": 47,
    }
    assert manifest["inputs"] == sums
    images, labels = load_split(prepared, "test")
    np.testing.assert_array_equal(labels, read_idx(raw / "emnist-balanced" / GZ_NAMES[3], "labels"))
    np.testing.assert_array_equal(images, read_idx(raw / "emnist-balanced" / GZ_NAMES[2], "images").transpose(0, 2, 1))
    assert len(server.requests) == 1
