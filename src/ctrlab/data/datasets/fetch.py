"""Download a URL to a file (urllib only): progress bar, resumable, checksum-verified; extract zip/gz.

* :func:`download` writes to ``<dest>.part`` and renames it to ``dest`` only after the whole body
  arrived and its checksum (sha256 or md5) matched. If ``<dest>.part`` already holds bytes from an
  interrupted run, it asks the server for the rest with an HTTP ``Range: bytes=<n>-`` header and
  appends; a server that ignores ranges (``200`` instead of ``206``) makes it start over.
* :func:`verify_file` / :func:`file_hash` check a file already on disk.
* :func:`extract` unpacks a ``.zip`` (refusing members that would land outside the target folder)
  or gunzips a single ``.gz`` file.

Errors: :class:`ChecksumError` names the file, the algorithm, the expected and the actual sums;
:class:`DownloadError` names the URL, the HTTP status (if any) and what to try.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import socket
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

USER_AGENT = "ctrlab-dataset-fetch/0.1 (+urllib)"
CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file's checksum differs from the published one."""

    def __init__(self, path: str | Path, algorithm: str, expected: str, actual: str, note: str = ""):
        self.path = str(path)
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        msg = f"{algorithm} checksum mismatch for {self.path}: expected {expected}, got {actual}"
        if note:
            msg += f". {note}"
        super().__init__(msg)


class DownloadError(OSError):
    """A download failed (HTTP error status, unreachable host, or a connection cut short)."""

    def __init__(self, message: str, url: str, status: int | None = None):
        self.url = url
        self.status = status
        super().__init__(message)


def file_hash(path: str | Path, algorithm: str = "sha256", chunk_size: int = CHUNK) -> str:
    """Hex digest of a file's bytes."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | Path, sha256: str | None = None, md5: str | None = None, note: str = "") -> None:
    """Raise :class:`ChecksumError` unless the file matches every checksum given."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_hash(path, algorithm)
            if actual.lower() != expected.lower():
                raise ChecksumError(path, algorithm, expected.lower(), actual, note)


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200" -> 100
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    resume: bool = True,
    timeout: float = 60.0,
    chunk_size: int = CHUNK,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    An existing ``dest`` that matches the checksum (or any existing ``dest`` when no checksum is
    given) is kept as is. Bytes arrive in ``<dest>.part``; an interrupted download leaves that file
    behind and the next call resumes it. On a checksum mismatch the ``.part`` file is deleted (its
    bytes cannot be trusted) and :class:`ChecksumError` is raised.
    """
    dest = Path(dest)
    if dest.exists():
        if not (sha256 or md5):
            return dest
        try:
            verify_file(dest, sha256, md5)
            return dest
        except ChecksumError:
            dest.unlink()  # stale or corrupt: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if (resume and part.exists()) else 0

    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    complete = False
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            complete = True  # nothing left to send: the .part file already holds the whole body
            response = None
        else:
            hint = {
                404: "the file is not at that address (the dataset may have moved; check the dataset's "
                "docstring for mirrors, or download it by hand into the data directory)",
                401: "the server wants credentials; download the file by hand into the data directory",
                403: "the server refused access; download the file by hand into the data directory",
                429: "the server is rate-limiting; wait and run again (the partial file is kept)",
            }.get(exc.code, "try again later, or download the file by hand into the data directory")
            raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}: {hint}", url, exc.code) from None
    except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"could not reach {url}: {reason}. Check the network (or a proxy via HTTPS_PROXY), then run again"
            + (f"; the {offset} bytes already in {part} will be resumed" if offset else ""),
            url,
        ) from None

    if response is not None:
        with response:
            status = getattr(response, "status", 200)
            start = _content_range_start(response.headers.get("Content-Range"))
            if offset and status == 206 and start == offset:
                mode = "ab"
            else:
                offset, mode = 0, "wb"  # server ignored the range: start over
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None and length.isdigit() else None
            received = offset
            bar = tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
                leave=False,
            )
            try:
                with open(part, mode) as fh:
                    while True:
                        try:
                            block = response.read(chunk_size)
                        except (http.client.IncompleteRead, ConnectionError, socket.timeout, OSError) as exc:
                            raise DownloadError(
                                f"connection to {url} broke after {received} bytes ({type(exc).__name__}); "
                                f"run again to resume from {part}",
                                url,
                                status,
                            ) from None
                        if not block:
                            break
                        fh.write(block)
                        received += len(block)
                        bar.update(len(block))
            finally:
                bar.close()
            if total is not None and received < total:
                raise DownloadError(
                    f"connection to {url} closed after {received} of {total} bytes; run again to resume from {part}",
                    url,
                    status,
                )
    elif not complete:  # pragma: no cover - defensive
        raise DownloadError(f"no response from {url}", url)

    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_hash(part, algorithm)
            if actual.lower() != expected.lower():
                part.unlink(missing_ok=True)
                raise ChecksumError(
                    dest,
                    algorithm,
                    expected.lower(),
                    actual,
                    f"The bytes downloaded from {url} are not the published file; the partial file was deleted. "
                    "Run again to fetch it afresh; if it fails again the upstream file changed",
                )
    os.replace(part, dest)
    return dest


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return not p.is_absolute() and ".." not in p.parts and not (p.parts and ":" in p.parts[0])


def extract(archive: str | Path, dest_dir: str | Path | None = None) -> list[Path]:
    """Unpack ``archive`` into ``dest_dir`` (default: its folder); return the files written.

    ``.zip``: every member (refusing absolute paths and ``..``). ``.gz``: the single file, named
    without ``.gz``. Files are written to a temporary name and renamed, so a crash leaves no
    half-written file under the final name.
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir) if dest_dir is not None else archive.parent
    dest_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if not _safe_member(info.filename):
                    raise ValueError(f"{archive}: refusing to extract {info.filename!r} (it would land outside {dest_dir})")
                target = dest_dir / info.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".extracting")
                with zf.open(info) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                os.replace(tmp, target)
                written.append(target)
        return written
    if archive.name.endswith(".gz") and not archive.name.endswith(".tar.gz"):
        target = dest_dir / archive.name[:-3]
        tmp = target.with_name(target.name + ".extracting")
        try:
            with gzip.open(archive, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        except (OSError, EOFError) as exc:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"{archive}: not a valid gzip file ({exc})") from None
        os.replace(tmp, target)
        return [target]
    raise ValueError(f"{archive}: unsupported archive type (expected .zip or .gz)")
