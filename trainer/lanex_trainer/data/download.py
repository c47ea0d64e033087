"""Resumable, checksum-verified downloads of dataset archives, and their safe extraction.

TuSimple's original S3 links are gone, so the dataset job takes any http(s)://, file:// URL or
local path. Archives are large and links flaky: a transfer streams into `<name>.part`, resumes with
an HTTP Range request (restarting from zero when the server ignores it), and is renamed to its final
name only once its size and SHA-256 check out. A JSON state file in the output folder records what
is complete and what was extracted, so a re-run makes no request and rehashes nothing. Archives are
extracted into a temporary folder inside the output folder, refusing any member that would land
outside it, and merged into place only when the whole archive extracted cleanly.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse
from urllib.request import Request, url2pathname, urlopen

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from tqdm import tqdm

log = logging.getLogger(__name__)

STATE_FILE = ".lanex-download-state.json"
CHUNK_BYTES = 1 << 20
USER_AGENT = "lanex-data-download/1"
# Statuses worth retrying: the server or a proxy is busy or restarting.
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
_COMPRESSION_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


class DownloadError(RuntimeError):
    """A download or an extraction failed; the message names the URL or file and the reason."""


class TransientDownloadError(DownloadError):
    """A failure that a retry (resuming from the .part file) may cure."""


@dataclass(frozen=True)
class Source:
    """One thing to fetch: where from, its expected checksum, and its file name in `out`."""

    url: str
    sha256: str | None
    filename: str


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts per file, first back-off delay (doubling), socket timeout."""

    attempts: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 60.0


# ---------------------------------------------------------------------------------------------
# Inputs


def filename_for(url: str) -> str:
    """The file name a URL or path is saved under: the last path component, unquoted."""
    parsed = urlparse(url)
    path = unquote(parsed.path) if parsed.scheme in ("http", "https", "file") else url
    name = PurePosixPath(path.replace("\\", "/")).name
    if name in ("", ".", ".."):
        raise DownloadError(f"{url}: cannot derive a file name from the URL path")
    return name


def build_sources(urls: list[str], sha256: list[str]) -> list[Source]:
    """Pair URLs with checksums (none, or one per URL) and check the names do not collide."""
    if not urls:
        raise DownloadError("no URL given")
    if sha256 and len(sha256) != len(urls):
        raise DownloadError(f"got {len(sha256)} --sha256 values for {len(urls)} --url values: give none or one per URL")
    for position, digest in enumerate(sha256, start=1):
        if not _SHA256.match(digest):
            raise DownloadError(f"--sha256 #{position} {digest!r} is not a SHA-256 (64 hex digits)")
    sources = [Source(url, sha256[i].lower() if sha256 else None, filename_for(url)) for i, url in enumerate(urls)]
    seen: dict[str, str] = {}
    for source in sources:
        if source.filename in seen:
            raise DownloadError(f"{source.url} and {seen[source.filename]} would both be saved as {source.filename}")
        seen[source.filename] = source.url
    return sources


# ---------------------------------------------------------------------------------------------
# State: what is complete and what was extracted


class DownloadState:
    """The JSON record in `out` of completed downloads and extracted archives."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path = path
        self.data = data

    @classmethod
    def load(cls, out: Path) -> "DownloadState":
        path = out / STATE_FILE
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            log.warning("%s is unreadable; starting with an empty download record", path)
            data = {}
        data.setdefault("files", {})
        data.setdefault("extracted", {})
        return cls(path, data)

    def save(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        os.replace(temporary, self.path)

    def completed(self, source: Source, path: Path) -> bool:
        """True if `path` is the recorded, unchanged result of this source (no rehash)."""
        record = self.data["files"].get(source.filename)
        if record is None or not path.is_file():
            return False
        info = path.stat()
        if record.get("size") != info.st_size or record.get("mtime_ns") != info.st_mtime_ns:
            return False
        if source.sha256 is not None:
            return record.get("sha256") == source.sha256
        return record.get("url") == source.url

    def record_file(self, source: Source, path: Path, digest: str) -> None:
        info = path.stat()
        self.data["files"][source.filename] = {
            "url": source.url,
            "sha256": digest,
            "size": info.st_size,
            "mtime_ns": info.st_mtime_ns,
        }
        self.save()

    def extracted(self, filename: str) -> bool:
        record = self.data["files"].get(filename)
        marker = self.data["extracted"].get(filename)
        return record is not None and marker is not None and marker.get("sha256") == record.get("sha256")

    def record_extraction(self, filename: str) -> None:
        self.data["extracted"][filename] = {"sha256": self.data["files"][filename]["sha256"]}
        self.save()


# ---------------------------------------------------------------------------------------------
# Transfer


def _hash_prefix(path: Path) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest


def _check_free_space(out: Path, needed: int | None, target: Path) -> None:
    if needed is None:
        return
    free = shutil.disk_usage(out).free
    if free < needed:
        raise DownloadError(f"not enough space for {target}: needs {needed} more bytes, {free} free in {out}")


def _copy_stream(
    stream: Callable[[int], bytes], part: Path, offset: int, total: int | None, label: str
) -> "hashlib._Hash":
    """Append `stream` to `part` from byte `offset`, hashing the whole file; returns the hash."""
    digest = _hash_prefix(part) if offset else hashlib.sha256()
    needed = None if total is None else total - offset
    _check_free_space(part.parent, needed, part)
    written = offset
    try:
        with part.open("ab" if offset else "wb") as handle, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=label, file=sys.stderr, mininterval=1.0, leave=False,
        ) as progress:
            while True:
                try:
                    block = stream(CHUNK_BYTES)
                except (OSError, HTTPException) as error:
                    message = f"{label}: transfer broken after {written} bytes ({error!r})"
                    raise TransientDownloadError(message) from error
                if not block:
                    break
                handle.write(block)
                written += len(block)
                digest.update(block)
                progress.update(len(block))
    except DownloadError:
        raise
    except OSError as error:
        if error.errno == errno.ENOSPC:
            needs = f"{needed} bytes in all" if needed is not None else "an unknown amount (no Content-Length)"
            raise DownloadError(f"no space left on device writing {part}: the download needs {needs}") from error
        raise DownloadError(f"writing {part}: {error}") from error
    return digest


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of `Content-Range: bytes a-b/total` (or `bytes */total` on a 416)."""
    match = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not match:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    return first, None if match.group(2) == "*" else int(match.group(2))


class _RangeNotSatisfiable(Exception):
    """HTTP 416 on a resume; `total` is the size the server reports, if any."""

    def __init__(self, total: int | None) -> None:
        super().__init__(total)
        self.total = total


def _open_http(url: str, offset: int, timeout_s: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urlopen(Request(url, headers=headers), timeout=timeout_s)
    except HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            raise _RangeNotSatisfiable(_content_range(error.headers.get("Content-Range"))[1]) from error
        message = f"{url}: HTTP {error.code} {error.reason}"
        if error.code in TRANSIENT_HTTP:
            raise TransientDownloadError(message) from error
        raise DownloadError(message) from error
    except URLError as error:
        if isinstance(error.reason, ConnectionRefusedError):
            raise TransientDownloadError(f"{url}: connection refused") from error
        if isinstance(error.reason, OSError):
            raise TransientDownloadError(f"{url}: cannot connect ({error.reason})") from error
        raise DownloadError(f"{url}: {error.reason}") from error
    except (OSError, HTTPException) as error:
        raise TransientDownloadError(f"{url}: {error!r}") from error


def _fetch_http_once(source: Source, part: Path, timeout_s: float) -> "hashlib._Hash":
    """One attempt: resume `part` if present; returns the SHA-256 of the whole file."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open_http(source.url, offset, timeout_s)
    except _RangeNotSatisfiable as error:
        if error.total == offset:  # the .part already holds every byte
            return _hash_prefix(part)
        part.unlink()
        raise TransientDownloadError(f"{source.url}: HTTP 416 for a resume at byte {offset}; restarting") from error
    with response:
        length = response.headers.get("Content-Length")
        if offset and response.status == 206:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != offset:
                raise DownloadError(f"{source.url}: asked for bytes {offset}- but got Content-Range from {first}")
        else:
            if offset:
                log.warning("%s: server ignored Range (HTTP %d); restarting from zero", source.url, response.status)
                offset = 0
            total = int(length) if length is not None else None
        digest = _copy_stream(response.read, part, offset, total, source.filename)
    size = part.stat().st_size
    if total is not None and size < total:
        raise TransientDownloadError(
            f"{source.url}: truncated transfer, got {size} of {total} bytes (Content-Length); "
            f"{part} is kept and the next attempt resumes from it"
        )
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(f"{source.url}: received {size} bytes, more than the announced {total}; discarded")
    return digest


def _local_path(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(f"{url}: file:// URLs must be local (no host)")
        return Path(url2pathname(parsed.path))
    return Path(url)


def _fetch_local(source: Source, part: Path) -> "hashlib._Hash":
    """Copy a local file (file:// URL or path) into `part`, resuming like HTTP does."""
    origin = _local_path(source.url)
    if not origin.is_file():
        raise DownloadError(f"{source.url}: no such file {origin}")
    total = origin.stat().st_size
    offset = part.stat().st_size if part.exists() else 0
    if offset > total:
        offset = 0
    with origin.open("rb") as handle:
        handle.seek(offset)
        return _copy_stream(handle.read, part, offset, total, source.filename)


def _is_http(url: str) -> bool:
    return urlparse(url).scheme in ("http", "https")


def fetch(source: Source, out: Path, state: DownloadState, policy: RetryPolicy) -> Path:
    """Make `out/<filename>` the verified content of `source`, downloading only what is missing."""
    final = out / source.filename
    if state.completed(source, final):
        return final
    if final.is_file() and source.sha256 is not None:
        actual = _hash_prefix(final).hexdigest()  # placed or touched by hand: adopt it if it is right
        if actual == source.sha256:
            state.record_file(source, final, actual)
            return final
    part = out / f"{source.filename}.part"
    if _is_http(source.url):
        retrying = Retrying(
            retry=retry_if_exception_type(TransientDownloadError),
            stop=stop_after_attempt(max(1, policy.attempts)),
            wait=wait_exponential(multiplier=policy.backoff_s, max=30.0),
            before_sleep=lambda state_: log.warning("%s; retrying", state_.outcome.exception()),
            reraise=True,
        )
        digest = retrying(_fetch_http_once, source, part, policy.timeout_s)
    else:
        digest = _fetch_local(source, part)
    actual = digest.hexdigest()
    if source.sha256 is not None and actual != source.sha256:
        corrupt = out / f"{source.filename}.corrupt"
        os.replace(part, corrupt)
        raise DownloadError(
            f"{source.url}: checksum mismatch, expected sha256 {source.sha256}, got {actual}; kept as {corrupt}"
        )
    os.replace(part, final)
    state.record_file(source, final, actual)
    return final


# ---------------------------------------------------------------------------------------------
# Extraction


def archive_kind(path: Path) -> str | None:
    """'zip', 'tar' or None, from the file's magic bytes, falling back on its name."""
    with path.open("rb") as handle:
        head = handle.read(512)
    name = path.name.lower()
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    if head.startswith(_COMPRESSION_MAGIC):
        if name.endswith(_TAR_SUFFIXES):
            return "tar"
        try:
            return "tar" if tarfile.is_tarfile(path) else None
        except (OSError, EOFError, tarfile.TarError):
            return None
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    return None


def _unsafe_reason(name: str) -> str | None:
    """Why an archive member name could escape the target folder, or None if it cannot."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        return "absolute path"
    if ".." in PurePosixPath(normalised).parts:
        return "path with '..'"
    return None


def _link_escapes(member_name: str, target: str, relative_to_member: bool) -> bool:
    """Whether a link target leaves the archive root (symlinks: relative to the member's folder)."""
    if _unsafe_reason(target) == "absolute path":
        return True
    base = PurePosixPath(member_name.replace("\\", "/")).parent if relative_to_member else PurePosixPath()
    depth = len([part for part in base.parts if part not in ("", ".")])
    for part in PurePosixPath(target.replace("\\", "/")).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _refuse(archive: Path, member: str, reason: str) -> DownloadError:
    return DownloadError(f"{archive}: refusing member {member!r}: {reason} escapes the extraction folder")


def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    reason = _unsafe_reason(member.name)
    if reason:
        raise _refuse(archive, member.name, reason)
    if member.issym() and _link_escapes(member.name, member.linkname, relative_to_member=True):
        raise _refuse(archive, member.name, f"symlink to {member.linkname!r}")
    if member.islnk() and (_unsafe_reason(member.linkname) or _link_escapes(member.name, member.linkname, False)):
        raise _refuse(archive, member.name, f"hard link to {member.linkname!r}")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise DownloadError(f"{archive}: refusing member {member.name!r}: special file (device or FIFO)")


def _extract_tar(archive: Path, target: Path) -> None:
    """Check each member as it streams past, then extract it (single pass over the archive)."""
    with tarfile.open(archive, "r:*") as bundle:
        for member in bundle:
            _check_tar_member(archive, member)
            bundle.extract(member, target, filter="data")


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _extract_zip(archive: Path, target: Path) -> None:
    """Check every member (names, symlink targets) before writing anything, then extract."""
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        for info in members:
            reason = _unsafe_reason(info.filename)
            if reason:
                raise _refuse(archive, info.filename, reason)
            if _zip_is_symlink(info):
                link = bundle.read(info).decode("utf-8", "replace")
                if _link_escapes(info.filename, link, relative_to_member=True):
                    raise _refuse(archive, info.filename, f"symlink to {link!r}")
        _check_free_space(target, sum(info.file_size for info in members), target)
        for info in members:
            bundle.extract(info, target)


def _merge_into(source: Path, destination: Path) -> None:
    """Move the extracted tree into `destination`, merging with folders already there."""
    destination.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        place = destination / entry.name
        if entry.is_dir() and not entry.is_symlink() and place.is_dir() and not place.is_symlink():
            _merge_into(entry, place)
        elif place.is_dir() and not place.is_symlink():
            raise DownloadError(f"cannot place {entry.name}: {place} is a folder")
        else:
            os.replace(entry, place)


def extract_archive(archive: Path, out: Path) -> bool:
    """Extract a zip or tar archive into `out`; False if `archive` is not an archive."""
    kind = archive_kind(archive)
    if kind is None:
        return False
    staging = Path(tempfile.mkdtemp(prefix=f".extract-{archive.name}-", dir=out))
    try:
        if kind == "zip":
            _extract_zip(archive, staging)
        else:
            _extract_tar(archive, staging)
        _merge_into(staging, out)
    except DownloadError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, ValueError, OSError) as error:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise DownloadError(f"no space left on device extracting {archive} into {out}") from error
        if isinstance(error, tarfile.FilterError):
            raise DownloadError(f"{archive}: refusing member {error.tarinfo.name!r}: {error}") from error
        reason = f"{type(error).__name__}: {error}"
        raise DownloadError(f"{archive}: corrupt or truncated {kind} archive ({reason})") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


# ---------------------------------------------------------------------------------------------
# Entry point


def download_all(
    urls: list[str],
    sha256: list[str],
    out: Path,
    extract: bool = True,
    *,
    policy: RetryPolicy | None = None,
) -> list[Path]:
    """Fetch every URL into `out` (verified, resumable, idempotent) and extract archives there.

    `sha256` is empty or holds one expected digest per URL. Returns the downloaded files' paths.
    Raises DownloadError with the URL or file and the reason.
    """
    sources = build_sources(list(urls), list(sha256))
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"cannot create output folder {out}: {error}") from error
    state = DownloadState.load(out)
    policy = policy or RetryPolicy()
    results = []
    for source in sources:
        path = fetch(source, out, state, policy)
        if extract and not state.extracted(source.filename):
            if extract_archive(path, out):
                state.record_extraction(source.filename)
        results.append(path)
    return results
