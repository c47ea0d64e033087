"""Resumable, checksum-verified downloads of dataset archives, and their safe extraction.

TuSimple's original S3 links are gone, so the dataset job takes any http(s)://, file:// URL or
local path. Archives are large and links flaky: a transfer streams into `<name>.part`, resumes with
an HTTP Range request (restarting from zero when the server ignores it), and is renamed to its final
name only once its size and SHA-256 check out. A JSON state file in the output folder records what
is complete and what was extracted, so a re-run makes no request and rehashes nothing. Archives are
extracted into a temporary folder inside the output folder, refusing any member that would land
outside it, and merged into place only when the whole archive extracted cleanly.

Private copies: a source may come with `Credentials` read from a mounted Secret (`load_credentials`):
HTTP headers (e.g. `Authorization`) and/or a SAS query string. Azure Blob URLs (`az://ACCOUNT/CONTAINER/
PATH`, `https://ACCOUNT.blob.core.windows.net/...`) are read with azure-storage-blob, with the SAS or
else `DefaultAzureCredential` (workload identity), resumed and checksummed like HTTP. No message of
this module holds a query string or a secret value: URLs are shown through `redact_url`, and every
error leaving `download_all` is scrubbed of the credentials' values.
"""

from __future__ import annotations

import errno
import filecmp
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
from urllib.request import HTTPRedirectHandler, Request, build_opener, url2pathname

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from tqdm import tqdm

from lanex_trainer.data.urls import REDACTED, redact_url

log = logging.getLogger(__name__)

STATE_FILE = ".lanex-download-state.json"
CHUNK_BYTES = 1 << 20
USER_AGENT = "lanex-data-download/1"
# Statuses worth retrying: the server or a proxy is busy or restarting.
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
# A full SHA-256: a prefix (torchvision names its files after 8 hex digits) is no integrity check for a download.
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
SAS_KEY = "sas"
"""The Secret key holding a SAS query string; every other key is an HTTP header name."""
BLOB_ENDPOINT_VARIABLE = "LANEX_BLOB_ENDPOINT"
"""Blob endpoint template for az:// URLs, `{account}` replaced (another cloud, or Azurite in tests)."""
DEFAULT_BLOB_ENDPOINT = "https://{account}.blob.core.windows.net"
_BLOB_HOST = re.compile(r"^[a-z0-9]{3,24}\.blob\.core\.windows\.net$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
_COMPRESSION_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


class DownloadError(RuntimeError):
    """A download or an extraction failed; the message names the URL or file and the reason."""


class TransientDownloadError(DownloadError):
    """A failure that a retry (resuming from the .part file) may cure."""


class DownloadUsageError(DownloadError):
    """The arguments or credentials are wrong (a bad URL, checksum or Secret key); nothing was fetched.
    `lanex data download` exits 2 for these, 1 for downloads that failed."""


SUPPORTED_SCHEMES = ("http", "https", "file", "az")


@dataclass(frozen=True)
class Credentials:
    """What a mounted Secret supplies for a source: HTTP headers, and/or a SAS query string."""

    headers: tuple[tuple[str, str], ...] = ()
    sas: str | None = None
    name: str = ""  # the Secret's (its folder's) name, for messages

    def values(self) -> list[str]:
        """Every secret value, for scrubbing messages (longest first, so no partial leaks)."""
        values = [value for _, value in self.headers] + ([self.sas] if self.sas else [])
        return sorted((value for value in values if value), key=len, reverse=True)


@dataclass(frozen=True)
class Source:
    """One thing to fetch: where from, its expected checksum, and its file name in `out`."""

    url: str
    sha256: str | None
    filename: str
    credentials: Credentials | None = None

    @property
    def shown(self) -> str:
        """The URL as messages show it (no query string, no user:password)."""
        return redact_url(self.url)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts per file, first back-off delay (doubling), socket timeout."""

    attempts: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 60.0


# ---------------------------------------------------------------------------------------------
# Inputs


def scrub(text: str, credentials: list[Credentials | None]) -> str:
    """`text` with every credential value replaced by <redacted>."""
    for entry in credentials:
        for value in entry.values() if entry else ():
            text = text.replace(value, REDACTED)
    return text


def load_credentials(folder: Path) -> Credentials:
    """Read a mounted Secret (one file per key): key `sas` is a SAS query string, others HTTP headers.

    Files starting with a dot (Kubernetes' `..data` links) are skipped. Errors name the key, never its value.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DownloadUsageError(f"credentials folder {folder} does not exist (is the Secret mounted?)")
    headers: list[tuple[str, str]] = []
    sas: str | None = None
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        try:
            value = entry.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise DownloadUsageError(f"credentials {folder}: key {entry.name} is unreadable ({type(error).__name__})") from None
        if not value:
            raise DownloadUsageError(f"credentials {folder}: key {entry.name} is empty")
        if "\n" in value or "\r" in value:
            raise DownloadUsageError(f"credentials {folder}: key {entry.name} holds a line break; one line expected")
        if entry.name.lower() == SAS_KEY:
            sas = value.lstrip("?")
        elif _HEADER_NAME.fullmatch(entry.name):
            headers.append((entry.name, value))
        else:
            raise DownloadUsageError(f"credentials {folder}: key {entry.name!r} is neither {SAS_KEY!r} nor an HTTP header name")
    if not headers and sas is None:
        raise DownloadUsageError(f"credentials {folder}: no keys (expected {SAS_KEY!r} or HTTP header names such as Authorization)")
    return Credentials(tuple(headers), sas, folder.name)


def _check_blob_credentials(source: Source) -> None:
    """Azure Blob reads send a SAS or an Azure identity's token, never a Secret's HTTP headers: a header Secret
    would be ignored in favour of DefaultAzureCredential, so it is refused, naming the keys (never the values)."""
    credentials = source.credentials
    if credentials is None or not credentials.headers or blob_address(source.url) is None:
        return
    keys = ", ".join(name for name, _ in credentials.headers)
    secret = f"Secret {credentials.name!r}" if credentials.name else "the credentials"
    instead = ("its sas key is used; remove them" if credentials.sas else
               "put a SAS under key 'sas' into it, or drop secretRef to read with the pod's Azure identity "
               "(workload identity: spec.dataset.prepareServiceAccountName; DefaultAzureCredential)")
    raise DownloadUsageError(f"{source.shown}: an Azure Blob URL, but {secret} of its secretRef holds HTTP header key(s) "
                        f"{keys}, which Blob reads never send: {instead}")


def filename_for(url: str) -> str:
    """The file name a URL or path is saved under: the last path component, unquoted."""
    parsed = urlparse(url)
    path = unquote(parsed.path) if parsed.scheme in ("http", "https", "file", "az") else url
    name = PurePosixPath(path.replace("\\", "/")).name
    if name in ("", ".", ".."):
        raise DownloadUsageError(f"{redact_url(url)}: cannot derive a file name from the URL path")
    return name


def build_sources(
    urls: list[str],
    sha256: list[str],
    credentials: Credentials | None = None,
    filenames: list[str] | None = None,
) -> list[Source]:
    """Pair URLs with checksums (none, or one per URL) and check the names do not collide.

    `filenames` (one per URL) overrides the names taken from the URLs.
    """
    if not urls:
        raise DownloadUsageError("no URL given")
    for url in urls:
        scheme = urlparse(url).scheme
        if "://" in url and scheme not in SUPPORTED_SCHEMES:
            raise DownloadUsageError(f"{redact_url(url)}: unsupported URL scheme {scheme!r} "
                                     f"(expected {', '.join(SUPPORTED_SCHEMES)} or a local path)")
    if sha256 and len(sha256) != len(urls):
        raise DownloadUsageError(f"got {len(sha256)} --sha256 values for {len(urls)} --url values: give none or one per URL")
    for position, digest in enumerate(sha256, start=1):
        if not _SHA256.fullmatch(digest):
            raise DownloadUsageError(
                f"--sha256 #{position} {digest!r} is not a SHA-256 (all 64 hex digits: a prefix is no integrity check)"
            )
    if filenames is not None and len(filenames) != len(urls):
        raise DownloadUsageError(f"got {len(filenames)} file names for {len(urls)} URLs: give one per URL")
    for name in filenames or ():
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise DownloadUsageError(f"--save-as {name!r} must be a plain file name")
    sources = [
        Source(url, sha256[i].lower() if sha256 else None, filenames[i] if filenames else filename_for(url), credentials)
        for i, url in enumerate(urls)
    ]
    for source in sources:
        _check_blob_credentials(source)
    seen: dict[str, str] = {}
    for source in sources:
        if source.filename in seen:
            raise DownloadUsageError(f"{source.shown} and {seen[source.filename]} would both be saved as {source.filename}")
        seen[source.filename] = source.shown
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
            return str(record.get("sha256", "")).startswith(source.sha256)
        return record.get("url") == source.shown

    def record_file(self, source: Source, path: Path, digest: str) -> None:
        info = path.stat()
        self.data["files"][source.filename] = {
            "url": source.shown,  # the state file is on the shared volume: no query string
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


class _KeepCredentialsOnHost(HTTPRedirectHandler):
    """Follow redirects, but never send a Secret's headers to another host (as curl and requests do)."""

    def __init__(self, secret_headers: tuple[str, ...]) -> None:
        super().__init__()
        self.secret_headers = secret_headers

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlparse(newurl).netloc != urlparse(req.full_url).netloc:
            for name in self.secret_headers:
                new.remove_header(name.capitalize())
        return new


def _with_sas(url: str, sas: str | None) -> str:
    if not sas:
        return url
    return url + ("&" if urlparse(url).query else "?") + sas


def _open_http(source: Source, offset: int, timeout_s: float):
    credentials = source.credentials or Credentials()
    headers = {"User-Agent": USER_AGENT, **dict(credentials.headers)}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    opener = build_opener(_KeepCredentialsOnHost(tuple(name for name, _ in credentials.headers)))
    shown = source.shown
    try:
        return opener.open(Request(_with_sas(source.url, credentials.sas), headers=headers), timeout=timeout_s)
    except HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            raise _RangeNotSatisfiable(_content_range(error.headers.get("Content-Range"))[1]) from None
        message = f"{shown}: HTTP {error.code} {error.reason}"
        if error.code in (401, 403):
            given = "the credentials of its secretRef were refused" if source.credentials else "it needs credentials"
            message += f" ({given}: see spec...secretRef)"
        if error.code in TRANSIENT_HTTP:
            raise TransientDownloadError(message) from None
        raise DownloadError(message) from None
    except URLError as error:
        if isinstance(error.reason, ConnectionRefusedError):
            raise TransientDownloadError(f"{shown}: connection refused") from None
        if isinstance(error.reason, OSError):
            raise TransientDownloadError(f"{shown}: cannot connect ({error.reason})") from None
        raise DownloadError(f"{shown}: {error.reason}") from None
    except (OSError, HTTPException) as error:
        raise TransientDownloadError(f"{shown}: {type(error).__name__}: {error}") from None


def _fetch_http_once(source: Source, part: Path, timeout_s: float) -> "hashlib._Hash":
    """One attempt: resume `part` if present; returns the SHA-256 of the whole file."""
    offset = part.stat().st_size if part.exists() else 0
    shown = source.shown
    try:
        response = _open_http(source, offset, timeout_s)
    except _RangeNotSatisfiable as error:
        if error.total == offset:  # the .part already holds every byte
            return _hash_prefix(part)
        part.unlink()
        raise TransientDownloadError(f"{shown}: HTTP 416 for a resume at byte {offset}; restarting") from error
    with response:
        length = response.headers.get("Content-Length")
        if offset and response.status == 206:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != offset:
                raise DownloadError(f"{shown}: asked for bytes {offset}- but got Content-Range from {first}")
        else:
            if offset:
                log.warning("%s: server ignored Range (HTTP %d); restarting from zero", shown, response.status)
                offset = 0
            total = int(length) if length is not None else None
        digest = _copy_stream(response.read, part, offset, total, source.filename)
    _check_size(source, part, total)
    return digest


def _check_size(source: Source, part: Path, total: int | None) -> None:
    size = part.stat().st_size
    if total is not None and size < total:
        raise TransientDownloadError(
            f"{source.shown}: truncated transfer, got {size} of {total} bytes; "
            f"{part} is kept and the next attempt resumes from it"
        )
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(f"{source.shown}: received {size} bytes, more than the announced {total}; discarded")


# ---------------------------------------------------------------------------------------------
# Azure Blob Storage


@dataclass(frozen=True)
class BlobAddress:
    """Where a blob is: the account's endpoint, the container and the blob's name."""

    account_url: str
    container: str
    blob: str


def blob_address(url: str) -> BlobAddress | None:
    """The blob an `az://` or `https://ACCOUNT.blob.core.windows.net/` URL names; None for other URLs."""
    parsed = urlparse(url)
    if parsed.scheme == "az":
        account = parsed.netloc
        endpoint = (os.environ.get(BLOB_ENDPOINT_VARIABLE) or DEFAULT_BLOB_ENDPOINT).format(account=account)
    elif parsed.scheme == "https" and _BLOB_HOST.fullmatch(parsed.hostname or ""):
        account, endpoint = parsed.hostname, f"https://{parsed.netloc}"
    else:
        return None
    container, _, blob = unquote(parsed.path).lstrip("/").partition("/")
    if not account or not container or not blob:
        raise DownloadUsageError(f"{redact_url(url)}: expected az://ACCOUNT/CONTAINER/PATH or "
                            f"https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH")
    return BlobAddress(endpoint.rstrip("/"), container, blob)


class _ChunkReader:
    """`read(n)` over the blob downloader's chunks, turning SDK errors into resumable ones."""

    def __init__(self, chunks, shown: str) -> None:  # noqa: ANN001 (the SDK's chunk iterator)
        self.chunks, self.shown = chunks, shown

    def read(self, _size: int) -> bytes:
        from azure.core.exceptions import AzureError

        try:
            return next(self.chunks, b"")
        except AzureError as error:
            raise TransientDownloadError(f"{self.shown}: transfer broken ({type(error).__name__})") from None


def _blob_error(source: Source, error: Exception) -> DownloadError:
    """A DownloadError for an SDK error: retryable or not, naming the status, never the response body."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    shown = source.shown
    if isinstance(error, ResourceNotFoundError):
        return DownloadError(f"{shown}: no such blob or container (HTTP 404)")
    status = getattr(error, "status_code", None)
    if isinstance(error, ClientAuthenticationError) or status in (401, 403):
        how = ("the SAS of its secretRef was refused" if source.credentials and source.credentials.sas
               else "give urls[].secretRef with a 'sas' key, or run the prepare Job with an Azure workload identity"
                    " allowed to read it (spec.dataset.prepareServiceAccountName)")
        return DownloadError(f"{shown}: not authorised{f' (HTTP {status})' if status else ''}: {how}")
    if isinstance(error, HttpResponseError):
        code = error.status_code
        reason = getattr(getattr(error, "error_code", None), "value", None) or error.error_code or error.reason
        if code in TRANSIENT_HTTP:
            return TransientDownloadError(f"{shown}: HTTP {code} {reason}")
        return DownloadError(f"{shown}: HTTP {code} {reason}")
    if isinstance(error, (ServiceRequestError, ServiceResponseError)):
        return TransientDownloadError(f"{shown}: cannot reach the blob endpoint ({type(error).__name__})")
    return DownloadError(f"{shown}: {type(error).__name__}")


def _blob_credential(source: Source):
    if source.credentials is not None and source.credentials.sas:
        return source.credentials.sas
    from azure.identity import DefaultAzureCredential

    try:
        return DefaultAzureCredential()  # workload identity in the prepare pod, az login on a laptop
    except ValueError as error:  # e.g. AZURE_CLIENT_ID set but empty
        raise DownloadError(f"{source.shown}: cannot set up DefaultAzureCredential from the AZURE_* environment"
                            f" variables: {error}") from None


def _fetch_blob_once(source: Source, address: BlobAddress, part: Path, timeout_s: float) -> "hashlib._Hash":
    """One attempt at a blob: resume `part` with a ranged read; returns the SHA-256 of the whole file."""
    from azure.core.exceptions import AzureError
    from azure.storage.blob import BlobClient

    # The SDK logs requests and, from DefaultAzureCredential, a page per failed credential: our error says it once.
    logging.getLogger("azure").setLevel(logging.ERROR)
    client = BlobClient(address.account_url, address.container, address.blob, credential=_blob_credential(source),
                        retry_total=2, connection_timeout=timeout_s, read_timeout=timeout_s)
    try:
        with client:
            total = client.get_blob_properties().size
            offset = part.stat().st_size if part.exists() else 0
            if offset > total:
                part.unlink()
                offset = 0
            if offset == total and offset:
                return _hash_prefix(part)
            downloader = (client.download_blob(offset=offset, length=total - offset) if offset
                          else client.download_blob())
            reader = _ChunkReader(iter(downloader.chunks()), source.shown)
            digest = _copy_stream(reader.read, part, offset, total, source.filename)
    except AzureError as error:
        raise _blob_error(source, error) from None
    _check_size(source, part, total)
    return digest


def _local_path(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DownloadUsageError(f"{url}: file:// URLs must be local (no host)")
        return Path(url2pathname(parsed.path))
    return Path(url)


def _fetch_local(source: Source, part: Path) -> "hashlib._Hash":
    """Copy a local file (file:// URL or path) into `part`, resuming like HTTP does."""
    origin = _local_path(source.url)
    if not origin.is_file():
        raise DownloadUsageError(f"{source.shown}: no such file {origin}")
    total = origin.stat().st_size
    offset = part.stat().st_size if part.exists() else 0
    if offset > total:
        offset = 0
    with origin.open("rb") as handle:
        handle.seek(offset)
        return _copy_stream(handle.read, part, offset, total, source.filename)


def _is_http(url: str) -> bool:
    return urlparse(url).scheme in ("http", "https")


def _retrying(policy: RetryPolicy) -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(TransientDownloadError),
        stop=stop_after_attempt(max(1, policy.attempts)),
        wait=wait_exponential(multiplier=policy.backoff_s, max=30.0),
        before_sleep=lambda state_: log.warning("%s; retrying", state_.outcome.exception()),
        reraise=True,
    )


def fetch(source: Source, out: Path, state: DownloadState, policy: RetryPolicy) -> Path:
    """Make `out/<filename>` the verified content of `source`, downloading only what is missing."""
    final = out / source.filename
    if state.completed(source, final):
        return final
    if final.is_file() and source.sha256 is not None:
        # placed by hand, or restored from a snapshot with other timestamps: adopt it if it is right
        actual = _hash_prefix(final).hexdigest()
        if actual.startswith(source.sha256):
            state.record_file(source, final, actual)
            return final
    part = out / f"{source.filename}.part"
    blob = blob_address(source.url)
    if blob is not None:
        digest = _retrying(policy)(_fetch_blob_once, source, blob, part, policy.timeout_s)
    elif _is_http(source.url):
        digest = _retrying(policy)(_fetch_http_once, source, part, policy.timeout_s)
    else:
        digest = _fetch_local(source, part)
    actual = digest.hexdigest()
    if source.sha256 is not None and not actual.startswith(source.sha256):
        corrupt = out / f"{source.filename}.corrupt"
        os.replace(part, corrupt)
        raise DownloadError(
            f"{source.shown}: checksum mismatch, expected sha256 {source.sha256}, got {actual}; kept as {corrupt}"
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


def _merge_into(source: Path, destination: Path, archive: Path) -> None:
    """Move the extracted tree into `destination`, merging with folders already there.

    TuSimple's train and test archives both hold `clips/0531` and `clips/0601`: they merge. A file
    that replaces a different one from an earlier archive is logged, so an overlap cannot go unseen.
    """
    destination.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        place = destination / entry.name
        if entry.is_dir() and not entry.is_symlink() and place.is_dir() and not place.is_symlink():
            _merge_into(entry, place, archive)
        elif place.is_dir() and not place.is_symlink():
            raise DownloadError(f"cannot place {entry.name}: {place} is a folder")
        else:
            if place.is_file() and not place.is_symlink() and not filecmp.cmp(entry, place, shallow=False):
                log.warning("%s: %s replaces a different file of an earlier download", archive.name, place)
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
        _merge_into(staging, out, archive)
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
    credentials: Credentials | None = None,
    filenames: list[str] | None = None,
) -> list[Path]:
    """Fetch every URL into `out` (verified, resumable, idempotent) and extract archives there.

    `sha256` is empty or holds one expected digest (or digest prefix) per URL; `credentials` apply
    to every URL; `filenames` name the saved files instead of the URLs. Returns the files' paths.
    Raises DownloadError with the (redacted) URL or file and the reason, never a secret value.
    """
    try:
        return _download_all(urls, sha256, out, extract, policy, credentials, filenames)
    except DownloadError as error:
        # `from None`: a chained exception could carry a request URL with its SAS into a traceback.
        raise type(error)(scrub(str(error), [credentials])) from None


def _download_all(
    urls: list[str],
    sha256: list[str],
    out: Path,
    extract: bool,
    policy: RetryPolicy | None,
    credentials: Credentials | None,
    filenames: list[str] | None,
) -> list[Path]:
    sources = build_sources(list(urls), list(sha256), credentials, filenames)
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
