"""The official EMNIST download: NIST's gzip.zip (resumable), the Balanced files extracted and sha256-verified."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from pipeline.lib.idx import verify_checksums
from pipeline.lib.io import CHUNK, DataError, atomic_write, sha256_file

OFFICIAL_MAPPING = "emnist-balanced-mapping.txt"
MAX_MEMBER_BYTES = 2**30  # no official member comes near 1 GiB (the Balanced train images: 28 MB)


def fetch_official(url: str, raw_dir: Path, checksums: dict[str, str]) -> Path:
    """Download NIST's gzip.zip (resumable), extract the files named in checksums (the Balanced ones) and verify them.

    Returns the directory with the verified files. Nothing that is incomplete ever carries a final name.
    """
    target = raw_dir / "emnist-balanced"
    if _verified(target, checksums):
        return target
    archive = raw_dir / "gzip.zip"
    if not archive.exists():
        download(url, archive)
    _extract(archive, target, list(dict.fromkeys([*checksums, OFFICIAL_MAPPING])))
    try:
        verify_checksums(target, checksums)
    except DataError:
        archive.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        raise
    archive.unlink()  # the verified extracted files are the cache from now on
    return target


def _verified(directory: Path, checksums: dict[str, str]) -> bool:
    try:
        verify_checksums(directory, checksums)
        return True
    except DataError:
        return False


def fetch_verified(base_url: str, checksums: dict[str, str], directory: Path, offline_hint: str) -> Path:
    """Each file named in checksums from <base_url>/<name> into directory, unless it is there with its SHA-256
    already; a download that does not match is deleted. Returns the directory."""
    for name, want in checksums.items():
        dest = directory / name
        if dest.exists() and sha256_file(dest) == want:
            continue
        download(f"{base_url}/{name}", dest, offline_hint=offline_hint)
        got = sha256_file(dest)
        if got != want:
            dest.unlink()
            raise DataError(f"{base_url}/{name}: sha256 {got} is not the pinned {want}; the download was deleted")
    return directory


DATA_HINT = "Point the pipeline at a local copy instead: make repro DATA=/path/to/emnist-idx-dir (or set data.source)"


def download(url: str, dest: Path, timeout: float = 30, offline_hint: str = DATA_HINT) -> None:
    """Download url to dest through dest.part, resuming a previous partial download with a Range request."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urlopen(request, timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and start:  # the partial file is not a prefix we can extend: start again
            part.unlink()
            return download(url, dest, timeout, offline_hint)
        raise DataError(f"{url}: download failed: HTTP {err.code} {err.reason}") from None
    except (URLError, OSError) as err:
        raise DataError(f"{url}: cannot download ({getattr(err, 'reason', err)}). Offline? {offline_hint}") from None
    with response:
        if start and (response.status != 206 or not _resumes_at(response, start)):
            start = 0  # the server ignored the Range header or sent another range: restart from scratch
        length = response.headers.get("Content-Length")
        if length is not None and not length.strip().isdigit():
            raise DataError(f"{url}: invalid Content-Length {length!r}; rerun to try again")
        total = start + int(length) if length is not None else None
        _stream(response, part, start, total, dest.name)
    size = part.stat().st_size
    if total is not None and size != total:
        raise DataError(f"{url}: connection dropped after {size} of {total} bytes; rerun to resume ({part} is kept)")
    os.replace(part, dest)


def _stream(response, part: Path, start: int, total: int | None, label: str) -> None:
    with (
        open(part, "ab" if start else "wb") as out,
        tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=f"download {label}") as bar,
    ):
        while True:
            try:
                block = response.read(CHUNK)
            except (OSError, http.client.HTTPException):  # reset or short body: keep what we have, report below
                break
            if not block:
                break
            out.write(block)
            bar.update(len(block))


def _resumes_at(response, start: int) -> bool:
    """A 206 response's Content-Range starts where the partial file ends."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    return match is not None and int(match[1]) == start


def _extract(archive: Path, target: Path, names: list[str]) -> None:
    """Extract `names` (the mapping file only if present, unless it is among the checksummed names); an archive
    that is corrupt, lacks a member or holds an oversized one is deleted, so that a rerun downloads it again."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {Path(m.filename).name: m for m in zf.infolist()}
            for name in names:
                if name not in members and name == OFFICIAL_MAPPING and names.count(name) == 1:
                    continue
                if name not in members:
                    raise DataError(f"{archive}: has no member {name}; deleted, rerun to download again")
                _extract_member(zf, members[name], target / name)
    except (zipfile.BadZipFile, EOFError, zlib.error, DataError) as err:  # zlib.error: a damaged deflated member
        archive.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)  # no half-extracted leftovers
        if isinstance(err, DataError):
            raise
        raise DataError(f"{archive}: corrupt zip archive ({err}); deleted, rerun to download again") from None


def _extract_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, out: Path) -> None:
    """One member, copied with a size cap (its header's size is the archive's word, not a promise)."""
    if member.file_size > MAX_MEMBER_BYTES:
        raise DataError(
            f"{member.filename}: {member.file_size} bytes, more than a member may hold ({MAX_MEMBER_BYTES})"
        )

    def copy(tmp: Path) -> None:
        copied = 0
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while block := src.read(CHUNK):
                copied += len(block)
                if copied > MAX_MEMBER_BYTES:
                    raise DataError(f"{member.filename}: more than {MAX_MEMBER_BYTES} bytes when extracted")
                dst.write(block)

    atomic_write(out, copy)
