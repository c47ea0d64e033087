"""`lanex ui` over HTTP: who may connect (token on a non-loopback bind, loopback Host names only), what
the streams send, and the log and step readers behind the experiment page."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from pathlib import Path

import pytest

from lanex_operator.ui.logs import TerminalText, read_appended, read_steps
from lanex_operator.ui.security import is_loopback
from ui_server import lanex_ui


def request(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET to the server of `url` (a stream is read for its first bytes only)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    body = response.read1(200) if response.getheader("content-type", "").startswith("text/event-stream") \
        else response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def test_a_non_loopback_bind_needs_the_printed_token_on_every_request(tmp_path: Path) -> None:
    (tmp_path / "experiments").mkdir()
    with lanex_ui("--workspace", str(tmp_path), "--host", "0.0.0.0") as (url, lines):
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["token"][0]
        assert len(token) >= 32 and any(token in line and "needs the token" in line for line in lines)
        for path in ("/", "/events", "/experiments/x", "/files/x/worst.png", "/static/app.js", "/api/home"):
            status, _, body = request(url, path)
            assert status == 401 and b"token" in body, path
        status, _, _ = request(url, "/", {"Authorization": "Bearer wrong-" + token})
        assert status == 401
        # the printed URL: its token becomes an HttpOnly cookie and leaves the address bar
        status, headers, _ = request(url, f"/?token={token}")
        assert status == 303 and headers["location"] == "/"
        assert "httponly" in headers["set-cookie"].lower() and token in headers["set-cookie"]
        status, _, body = request(url, "/", {"Cookie": f"lanex_ui_token={token}"})
        assert status == 200 and b"lanex ui" in body
        status, headers, body = request(url, "/events", {"Authorization": f"Bearer {token}"})
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        assert body.startswith(b"event: hello")


def test_a_loopback_server_needs_no_token_but_answers_only_to_loopback_names(tmp_path: Path) -> None:
    (tmp_path / "experiments").mkdir()
    with lanex_ui("--workspace", str(tmp_path)) as (url, lines):
        assert "token" not in url
        port = urllib.parse.urlsplit(url).port
        status, headers, body = request(url, "/", {"Host": f"localhost:{port}"})
        assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
        status, _, _ = request(url, "/", {"Host": f"attacker.example:{port}"})  # DNS rebinding
        assert status == 421
        status, _, body = request(url, "/api/home")
        assert status == 200 and json.loads(body) == {"experiments": [], "sweeps": []}


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                            ("::", False), ("example.com", False)])
def test_which_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_log_reads_as_a_terminal_shows_it(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_bytes(b"start\n 10%|# | step 1/10\r 50%|### | step 5/10\r100%|#####| step 10/10\n"
                    b'LANEX_PROGRESS {"step": 10}\nhalf a li')
    data, offset = read_appended(log, 0)
    assert TerminalText().lines(data) == ["start", "100%|#####| step 10/10"]  # no progress record, last drawing
    assert offset == len(b"start\n 10%|# | step 1/10\r 50%|### | step 5/10\r100%|#####| step 10/10\n"
                         b'LANEX_PROGRESS {"step": 10}\n')
    with log.open("ab") as stream:
        stream.write(b"ne\n")
    data, offset = read_appended(log, offset)
    assert data == b"half a line\n" and offset == log.stat().st_size
    log.write_bytes(b"new run\n")  # shorter than the offset: started over
    assert read_appended(log, offset)[0] == b"new run\n"


def test_steps_read_only_complete_lines_and_skip_torn_ones(tmp_path: Path) -> None:
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "epoch": 0, "loss": 2.0, "lr": 0.1}\n{"step": 2, "ep\n'
                                              '{"step": 3, "epoch": 0, "loss": 1.0, "lr": 0.05}\n{"step": 4')
    points, offset = read_steps(tmp_path, 0)
    assert points == [[1, 2.0, 0.1], [3, 1.0, 0.05]]
    assert read_steps(tmp_path, offset) == ([], offset)
    assert read_steps(None, 0) == ([], 0)


def test_the_mlflow_link_comes_from_status_or_results_and_is_only_ever_http() -> None:
    from lanex_operator.ui.records import mlflow_link

    assert mlflow_link({"phase": "Training"}, None) is None
    run = {"tracking": {"mlflow": {"runId": "abc123", "runUrl": "http://127.0.0.1:5000/#/experiments/1/runs/abc123"}}}
    assert mlflow_link(run) == {"url": "http://127.0.0.1:5000/#/experiments/1/runs/abc123", "text": "abc123"}
    assert mlflow_link(None, {"mlflow": {"runId": "r9"}}) == {"url": "", "text": "MLflow run r9"}
    hostile = {"mlflow": {"runUrl": "javascript:alert(1)", "runId": "x"}}
    assert mlflow_link(hostile) == {"url": "", "text": "MLflow run x"}  # never a script link


def test_the_progress_bar_fraction_reads_steps_and_a_finished_run_is_full() -> None:
    from lanex_operator.ui.records import fraction

    assert fraction({"step": 30, "steps": 120}, "Training") == 0.25
    assert fraction({"step": 500, "steps": 120}, "Training") == 1.0
    assert fraction(None, "Succeeded") == 1.0 and fraction({}, "Pending") == 0.0
