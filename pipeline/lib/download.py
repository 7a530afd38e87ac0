"""The official EMNIST download: NIST's gzip.zip (resumable), the Balanced files extracted and sha256-verified."""

from __future__ import annotations

import os
import shutil
import zipfile
import zlib
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from pipeline.lib.idx import verify_checksums
from pipeline.lib.io import CHUNK, DataError

OFFICIAL_SHA256 = {
    "emnist-balanced-train-images-idx3-ubyte.gz": "74295e75e4e9fa2c102147460ee7eb763653d5132d883a84fb88932bfb8d2db4",
    "emnist-balanced-train-labels-idx1-ubyte.gz": "b46d41e5156a0a8aaaa4d18979fdd1588850fa8571018acffd5d93b325a7d6ed",
    "emnist-balanced-test-images-idx3-ubyte.gz": "117fc12b015e37ea98bfb2cbba3f77c3782c056cdbd219b87abfc8661d7135db",
    "emnist-balanced-test-labels-idx1-ubyte.gz": "a67cac948379b67270b9a4d0a01c8ec661598accf2f2b1964340b7c83cb175cd",
}
OFFICIAL_MAPPING = "emnist-balanced-mapping.txt"


def fetch_official(url: str, raw_dir: Path, checksums: dict[str, str] = OFFICIAL_SHA256) -> Path:
    """Download NIST's gzip.zip (resumable), extract the Balanced files and verify their sha256.

    Returns the directory with the verified files. Nothing that is incomplete ever carries a final name.
    """
    target = raw_dir / "emnist-balanced"
    if _verified(target, checksums):
        return target
    archive = raw_dir / "gzip.zip"
    if not archive.exists():
        download(url, archive)
    _extract(archive, target, [*checksums, OFFICIAL_MAPPING])
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


def download(url: str, dest: Path, timeout: float = 30) -> None:
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
            return download(url, dest, timeout)
        raise DataError(f"{url}: download failed: HTTP {err.code} {err.reason}") from None
    except (URLError, OSError) as err:
        raise DataError(
            f"{url}: cannot download ({getattr(err, 'reason', err)}). Offline? Point the "
            "pipeline at a local copy instead: make repro DATA=/path/to/emnist-idx-dir "
            "(or set data.source in params.yaml)"
        ) from None
    with response:
        if start and response.status != 206:
            start = 0  # server ignored the Range header: restart from scratch
        length = response.headers.get("Content-Length")
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
            except OSError:  # connection reset mid-body: keep what we have, report below
                break
            if not block:
                break
            out.write(block)
            bar.update(len(block))


def _extract(archive: Path, target: Path, names: list[str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {Path(m).name: m for m in zf.namelist()}
            for name in names:
                if name not in members:
                    if name == OFFICIAL_MAPPING:
                        continue
                    raise DataError(f"{archive}: has no member {name}")
                tmp = target / (name + ".tmp")
                with zf.open(members[name]) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                os.replace(tmp, target / name)
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:  # zlib.error: a damaged deflated member
        archive.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)  # no half-extracted leftovers
        raise DataError(f"{archive}: corrupt zip archive ({err}); deleted, rerun to download again") from None
