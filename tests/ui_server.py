"""`lanex ui` as the tests start it: a real `lanex ui` process on a free port, its URL read from what
it prints, stopped (and waited for) when the block ends."""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

LANEX = str(Path(sys.executable).parent / "lanex")
URL_LINE = re.compile(r"at (http://\S+)")


@contextlib.contextmanager
def lanex_ui(*args: str, patience: float = 30.0) -> Iterator[tuple[str, list[str]]]:
    """(the URL it printed, every line it printed so far) while `lanex ui ARGS --port 0` runs."""
    process = subprocess.Popen([LANEX, "ui", "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    url: Optional[str] = None
    deadline = time.monotonic() + patience
    try:
        assert process.stdout is not None
        while url is None:
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = process.stdout.readline() if ready else ""
            if not line:
                raise AssertionError(f"lanex ui printed no URL: {lines}, exit {process.poll()}")
            lines.append(line.rstrip("\n"))
            found = URL_LINE.search(line)
            url = found.group(1) if found else None
        if "token" in url:  # a second line tells the token: read it too
            lines.append(process.stdout.readline().rstrip("\n"))
        wait_until_serving(url)
        yield url, lines
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_serving(url: str, patience: float = 20.0) -> None:
    base = url.split("?")[0]
    deadline = time.monotonic() + patience
    while True:
        try:
            urllib.request.urlopen(base + "static/app.css", timeout=2).read()
            return
        except urllib.error.HTTPError:
            return  # it answers (a token server refuses without the token)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
