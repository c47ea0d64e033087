"""`lanex data download` against a real HTTP server on 127.0.0.1 and real zip/tar archives."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lanex_trainer.data.download import DownloadError, RetryPolicy, download_all

LANEX = Path(sys.executable).with_name("lanex")
FAST = RetryPolicy(attempts=3, backoff_s=0.01, timeout_s=10.0)


@dataclass
class ServerKnobs:
    """What the test server serves and how it misbehaves."""

    files: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)  # path -> forced status
    drop_after: int | None = None  # close the connection after this many body bytes...
    drops_left: int = 0  # ...for this many requests
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(knobs: ServerKnobs) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            with knobs.lock:
                knobs.requests.append((self.path, self.headers.get("Range")))
                drop = knobs.drop_after if knobs.drops_left > 0 else None
                if drop is not None:
                    knobs.drops_left -= 1
            if self.path in knobs.status or self.path not in knobs.files:
                code = knobs.status.get(self.path, 404)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = knobs.files[self.path]
            start = 0
            requested = self.headers.get("Range")
            if requested and not knobs.ignore_range:
                start = int(requested.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if drop is not None:
                self.wfile.write(payload[:drop])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def server():
    knobs = ServerKnobs()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(knobs))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield knobs, base
    httpd.shutdown()
    httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def make_tar(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as bundle:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                bundle.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                bundle.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def make_zip_with_symlink(name: str, target: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        info = zipfile.ZipInfo(name)
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(info, target)
    return buffer.getvalue()


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def leftovers(out: Path) -> list[str]:
    """Temporary extraction folders or partial files left in `out`."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".extract-") or p.name.endswith(".part"))


def test_downloads_verifies_and_extracts_a_zip_and_a_tar_gz_into_one_tree(server, tmp_path):
    knobs, base = server
    train = make_zip({"clips/0313-1/60/20.jpg": b"jpeg-a", "label_data_0313.json": b'{"lanes": []}\n'})
    test = make_tar([("clips/0530/1_0/20.jpg", b"jpeg-b"), ("test_tasks_0627.json", b"{}\n")])
    knobs.files = {"/train_set.zip": train, "/test_set.tar.gz": test, "/test_label.json": b'{"x": 1}\n'}
    out = tmp_path / "data"
    urls = [f"{base}/train_set.zip", f"{base}/test_set.tar.gz", f"{base}/test_label.json"]

    paths = download_all(urls, [sha(train), sha(test), sha(b'{"x": 1}\n')], out, policy=FAST)

    assert paths == [out / "train_set.zip", out / "test_set.tar.gz", out / "test_label.json"]
    assert (out / "train_set.zip").read_bytes() == train
    assert (out / "clips/0313-1/60/20.jpg").read_bytes() == b"jpeg-a"
    assert (out / "clips/0530/1_0/20.jpg").read_bytes() == b"jpeg-b"
    assert (out / "label_data_0313.json").read_bytes() == b'{"lanes": []}\n'
    assert (out / "test_label.json").read_bytes() == b'{"x": 1}\n'
    assert leftovers(out) == []


def test_second_call_makes_no_request_and_does_not_extract_again(server, tmp_path):
    knobs, base = server
    archive = make_tar([("a/b.txt", b"original")], mode="w:bz2")
    knobs.files = {"/pack.tar.bz2": archive}
    out = tmp_path / "data"
    download_all([f"{base}/pack.tar.bz2"], [sha(archive)], out, policy=FAST)
    (out / "a/b.txt").write_bytes(b"edited after extraction")
    requests_before = len(knobs.requests)

    again = download_all([f"{base}/pack.tar.bz2"], [sha(archive)], out, policy=FAST)

    assert again == [out / "pack.tar.bz2"]
    assert len(knobs.requests) == requests_before == 1
    assert (out / "a/b.txt").read_bytes() == b"edited after extraction"


def test_file_placed_by_hand_with_matching_checksum_is_adopted_without_a_request(server, tmp_path):
    knobs, base = server
    archive = make_zip({"a.txt": b"A"})
    knobs.files = {"/pack.zip": archive}
    (tmp_path / "pack.zip").write_bytes(archive)

    download_all([f"{base}/pack.zip"], [sha(archive)], tmp_path, extract=False, policy=FAST)

    assert knobs.requests == []
    assert not (tmp_path / "a.txt").exists()  # extract=False


def test_dropped_connection_is_resumed_with_a_range_request(server, tmp_path):
    knobs, base = server
    body = os.urandom(300_000)
    knobs.files = {"/big.bin": body}
    knobs.drop_after, knobs.drops_left = 100_000, 1

    [path] = download_all([f"{base}/big.bin"], [sha(body)], tmp_path, policy=FAST)

    assert [r for _, r in knobs.requests] == [None, "bytes=100000-"]
    assert sha(path.read_bytes()) == sha(body)
    assert leftovers(tmp_path) == []


def test_part_file_from_an_interrupted_run_is_resumed(server, tmp_path):
    knobs, base = server
    body = os.urandom(50_000)
    knobs.files = {"/big.bin": body}
    (tmp_path / "big.bin.part").write_bytes(body[:20_000])

    [path] = download_all([f"{base}/big.bin"], [], tmp_path, policy=FAST)

    assert knobs.requests == [("/big.bin", "bytes=20000-")]
    assert path.read_bytes() == body


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    knobs, base = server
    body = os.urandom(50_000)
    knobs.files = {"/big.bin": body}
    knobs.ignore_range = True
    (tmp_path / "big.bin.part").write_bytes(body[:20_000])

    [path] = download_all([f"{base}/big.bin"], [sha(body)], tmp_path, policy=FAST)

    assert knobs.requests == [("/big.bin", "bytes=20000-")]
    assert path.read_bytes() == body


def test_part_already_complete_gets_416_and_is_accepted(server, tmp_path):
    knobs, base = server
    body = os.urandom(10_000)
    knobs.files = {"/big.bin": body}
    (tmp_path / "big.bin.part").write_bytes(body)

    [path] = download_all([f"{base}/big.bin"], [sha(body)], tmp_path, policy=FAST)

    assert knobs.requests == [("/big.bin", "bytes=10000-")]
    assert path.read_bytes() == body


def test_connection_dropping_every_time_ends_in_a_truncation_error_keeping_the_part(server, tmp_path):
    knobs, base = server
    body = os.urandom(100_000)
    knobs.files = {"/big.bin": body}
    knobs.drop_after, knobs.drops_left = 10_000, 100

    with pytest.raises(DownloadError, match=r"truncated transfer, got 30000 of 100000 bytes"):
        download_all([f"{base}/big.bin"], [], tmp_path, policy=FAST)

    assert len(knobs.requests) == 3
    assert (tmp_path / "big.bin.part").read_bytes() == body[:30_000]
    assert not (tmp_path / "big.bin").exists()


def test_bad_checksum_is_refused_and_the_file_quarantined(server, tmp_path):
    knobs, base = server
    knobs.files = {"/data.zip": make_zip({"x.txt": b"x"})}
    wrong = "0" * 64

    with pytest.raises(DownloadError) as caught:
        download_all([f"{base}/data.zip"], [wrong], tmp_path, policy=FAST)

    message = str(caught.value)
    assert "checksum mismatch" in message and wrong in message and sha(knobs.files["/data.zip"]) in message
    assert (tmp_path / "data.zip.corrupt").exists()
    assert not (tmp_path / "data.zip").exists() and not (tmp_path / "x.txt").exists()
    assert leftovers(tmp_path) == []


def test_http_404_names_url_and_status_without_retrying(server, tmp_path):
    knobs, base = server

    with pytest.raises(DownloadError, match=r"/missing\.zip: HTTP 404"):
        download_all([f"{base}/missing.zip"], [], tmp_path, policy=FAST)

    assert len(knobs.requests) == 1


def test_http_503_is_retried_then_reported(server, tmp_path):
    knobs, base = server
    knobs.status = {"/busy.zip": 503}

    with pytest.raises(DownloadError, match=r"/busy\.zip: HTTP 503"):
        download_all([f"{base}/busy.zip"], [], tmp_path, policy=FAST)

    assert len(knobs.requests) == FAST.attempts


def test_connection_refused_is_reported(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(DownloadError, match=rf"127\.0\.0\.1:{port}/x\.zip: connection refused"):
        download_all([f"http://127.0.0.1:{port}/x.zip"], [], tmp_path, policy=FAST)


@pytest.mark.parametrize(
    ("archive_name", "archive", "member"),
    [
        ("slip.zip", make_zip({"ok.txt": b"fine", "../evil": b"owned"}), "../evil"),
        ("abs.tar", make_tar([("ok.txt", b"fine"), ("/tmp/lanex-abs-evil", b"owned")], mode="w"), "/tmp/lanex-abs-evil"),
        ("link.tgz", make_tar([("ok.txt", b"fine"), symlink("escape", "../../outside"), ("escape/evil", b"x")]), "escape"),
        ("abslink.tar.xz", make_tar([symlink("etc", "/etc")], mode="w:xz"), "etc"),
        ("ziplink.zip", make_zip_with_symlink("sub/up", "../../.."), "sub/up"),
    ],
)
def test_member_escaping_the_target_is_refused_and_nothing_is_written(server, tmp_path, archive_name, archive, member):
    knobs, base = server
    knobs.files = {f"/{archive_name}": archive}
    out = tmp_path / "nest" / "data"
    out.mkdir(parents=True)
    before_outside = sorted(p.name for p in tmp_path.rglob("*") if out not in p.parents)

    with pytest.raises(DownloadError) as caught:
        download_all([f"{base}/{archive_name}"], [], out, policy=FAST)

    assert archive_name in str(caught.value) and f"refusing member {member!r}" in str(caught.value)
    assert sorted(p.name for p in out.iterdir()) == sorted([archive_name, ".lanex-download-state.json"])
    assert sorted(p.name for p in tmp_path.rglob("*") if out not in p.parents) == before_outside
    assert not Path("/tmp/lanex-abs-evil").exists()


def test_hard_link_to_a_path_outside_is_refused(server, tmp_path):
    knobs, base = server
    link = tarfile.TarInfo("hard")
    link.type = tarfile.LNKTYPE
    link.linkname = "../../etc/passwd"
    knobs.files = {"/hard.tar": make_tar([link], mode="w")}

    with pytest.raises(DownloadError, match=r"hard\.tar: refusing member 'hard'"):
        download_all([f"{base}/hard.tar"], [], tmp_path, policy=FAST)


def test_truncated_tar_gz_is_refused_with_nothing_extracted(server, tmp_path):
    knobs, base = server
    archive = make_tar([(f"clips/{i}.bin", os.urandom(20_000)) for i in range(6)])
    knobs.files = {"/cut.tar.gz": archive[: len(archive) // 2]}

    with pytest.raises(DownloadError, match=r"cut\.tar\.gz: corrupt or truncated tar archive"):
        download_all([f"{base}/cut.tar.gz"], [], tmp_path, policy=FAST)

    assert not (tmp_path / "clips").exists()
    assert leftovers(tmp_path) == []


def test_file_url_and_plain_path_are_copied_and_extracted(tmp_path):
    source_dir = tmp_path / "mirror"
    source_dir.mkdir()
    archive = make_zip({"inside/a.txt": b"A"})
    (source_dir / "pack.zip").write_bytes(archive)
    (source_dir / "test_label.json").write_bytes(b"{}\n")
    out = tmp_path / "out"

    urls = [(source_dir / "pack.zip").as_uri(), str(source_dir / "test_label.json")]

    paths = download_all(urls, [sha(archive), sha(b"{}\n")], out, policy=FAST)

    assert paths == [out / "pack.zip", out / "test_label.json"]
    assert (out / "inside/a.txt").read_bytes() == b"A"
    assert (out / "test_label.json").read_bytes() == b"{}\n"


def test_full_disk_is_reported_with_the_path(server, tmp_path):
    if not Path("/dev/full").exists():
        pytest.fail("/dev/full is needed to produce a real ENOSPC")
    knobs, base = server
    knobs.files = {"/big.bin": os.urandom(10_000)}
    (tmp_path / "big.bin.part").symlink_to("/dev/full")  # every write fails with ENOSPC

    with pytest.raises(DownloadError, match=r"no space left on device writing .*big\.bin\.part: the download needs 10000 bytes"):
        download_all([f"{base}/big.bin"], [], tmp_path, policy=FAST)


def test_mismatched_sha256_count_and_bad_digest_are_rejected(tmp_path):
    with pytest.raises(DownloadError, match="got 1 --sha256 values for 2 --url values"):
        download_all(["file:///a.zip", "file:///b.zip"], ["0" * 64], tmp_path)
    with pytest.raises(DownloadError, match=r"--sha256 #1 'xyz' is not a SHA-256"):
        download_all(["file:///a.zip"], ["xyz"], tmp_path)
    # a prefix (torchvision's 8 hex digits) is no integrity check, and a trailing newline is no digest
    for partial in ("6c64b313", "0" * 64 + "\n"):
        with pytest.raises(DownloadError, match=r"is not a SHA-256 \(all 64 hex digits"):
            download_all(["file:///a.zip"], [partial], tmp_path)


def test_cli_reports_404_and_exits_1(server, tmp_path):
    _, base = server

    result = subprocess.run(
        [str(LANEX), "data", "download", "--url", f"{base}/gone.zip", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 1
    assert f"error: {base}/gone.zip: HTTP 404" in result.stderr


def test_cli_downloads_and_prints_the_file(server, tmp_path):
    knobs, base = server
    archive = make_zip({"a.txt": b"A"})
    knobs.files = {"/pack.zip": archive}

    result = subprocess.run(
        [str(LANEX), "data", "download", "--url", f"{base}/pack.zip", "--sha256", sha(archive), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "pack.zip")
    assert (tmp_path / "a.txt").read_bytes() == b"A"


def test_archive_overwriting_a_different_file_of_an_earlier_one_is_logged(server, tmp_path, caplog):
    knobs, base = server
    knobs.files["/train_set.zip"] = make_zip({"clips/0531/1/20.jpg": b"train frame"})
    knobs.files["/test_set.zip"] = make_zip({"clips/0531/1/20.jpg": b"test frame", "clips/0531/2/20.jpg": b"x"})
    with caplog.at_level("WARNING", logger="lanex_trainer.data.download"):
        download_all([f"{base}/train_set.zip", f"{base}/test_set.zip"], [], tmp_path, policy=FAST)
    assert (tmp_path / "clips/0531/1/20.jpg").read_bytes() == b"test frame"
    assert [record.getMessage() for record in caplog.records] == [
        f"test_set.zip: {tmp_path / 'clips/0531/1/20.jpg'} replaces a different file of an earlier download"]
