"""The download's faults, each against a local HTTP server on 127.0.0.1: a truncated body without Content-Length,
a bad Content-Length, a short body, a 206 for another range, a zip missing a member or holding an oversized one,
and a mapping file that does not match its checksum. None leaves a file that fails every rerun."""

from __future__ import annotations

import io
import zipfile

import pytest

from pipeline import paths
from pipeline.lib import download
from pipeline.lib.config_sections import OFFICIAL_SOURCE
from pipeline.lib.idx import parse_sha256sums, verify_checksums
from pipeline.lib.io import DataError
from tests.test_download import GZ_NAMES, Handler, fake_zip, server, sums  # noqa: F401  (shared fixtures)


class FaultyHandler(Handler):
    """Handler with one fault at a time, set on the server as `fault`."""

    def do_GET(self):
        fault, body = getattr(self.server, "fault", None), self.server.payload
        if fault is None:
            return super().do_GET()
        self.server.fault = None  # the next request is served normally
        self.server.requests.append(self.headers.get("Range"))
        if fault == "wrong range":  # partial content, but from the start instead of the asked offset
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        self.send_response(200)
        if fault == "bad length":
            self.send_header("Content-Length", "lots")
        if fault == "short body":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True


@pytest.fixture
def faulty(server):  # noqa: F811
    server.RequestHandlerClass = FaultyHandler
    return server


def test_a_truncated_body_without_length_is_not_kept(faulty, sums, tmp_path):  # noqa: F811
    faulty.fault = "no length"
    with pytest.raises(DataError, match="corrupt zip archive.*rerun to download again"):
        download.fetch_official(faulty.url, tmp_path, checksums=sums)
    assert list(tmp_path.iterdir()) == []
    verify_checksums(download.fetch_official(faulty.url, tmp_path, checksums=sums), sums)


def test_a_bad_content_length_is_one_line(faulty, sums, tmp_path):  # noqa: F811
    faulty.fault = "bad length"
    with pytest.raises(DataError, match="invalid Content-Length 'lots'"):
        download.fetch_official(faulty.url, tmp_path, checksums=sums)


def test_a_short_body_is_kept_as_part_and_resumed(faulty, sums, tmp_path):  # noqa: F811
    faulty.fault = "short body"
    with pytest.raises(DataError, match="connection dropped"):
        download.fetch_official(faulty.url, tmp_path, checksums=sums)
    verify_checksums(download.fetch_official(faulty.url, tmp_path, checksums=sums), sums)


def test_a_206_for_another_range_restarts_from_scratch(faulty, sums, tmp_path):  # noqa: F811
    (tmp_path / "gzip.zip.part").write_bytes(faulty.payload[:100])
    faulty.fault = "wrong range"
    verify_checksums(download.fetch_official(faulty.url, tmp_path, checksums=sums), sums)
    assert faulty.requests == ["bytes=100-"]


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in members.items():
            zf.writestr(f"gzip/{name}", content)
    return buffer.getvalue()


def test_a_zip_missing_a_member_is_deleted(server, sums, tmp_path):  # noqa: F811
    server.payload = zip_of({GZ_NAMES[0]: b"x"})
    with pytest.raises(DataError, match=f"has no member {GZ_NAMES[1]}; deleted"):
        download.fetch_official(server.url, tmp_path, checksums=sums)
    assert list(tmp_path.iterdir()) == []


def test_an_oversized_member_is_refused(server, sums, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(download, "MAX_MEMBER_BYTES", 1000)
    server.payload = zip_of({name: b"\0" * 5000 for name in GZ_NAMES})
    with pytest.raises(DataError, match="more than a member may hold"):
        download.fetch_official(server.url, tmp_path, checksums=sums)
    assert list(tmp_path.iterdir()) == []


def test_the_mapping_file_is_checksummed(server, sums, tmp_path):  # noqa: F811
    assert download.OFFICIAL_MAPPING in parse_sha256sums(paths.REPO_ROOT / OFFICIAL_SOURCE)
    sums[download.OFFICIAL_MAPPING] = "0" * 64
    with pytest.raises(DataError, match=f"{download.OFFICIAL_MAPPING}: sha256 mismatch"):
        download.fetch_official(server.url, tmp_path, checksums=sums)
