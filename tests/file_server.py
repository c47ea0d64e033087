"""A real HTTP file server on 127.0.0.1 for download tests: serves bytes, can demand headers.

The download tests of private sources need a server that refuses a request without the right
`Authorization` header and records what each request carried, to show that secrets go where they
should (the header) and nowhere else (the URL, a redirect to another host).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


@dataclass
class Served:
    """What the server serves, what it demands, and what it was asked."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    required_headers: dict[str, str] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)  # path -> absolute URL to redirect to
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (path, headers)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            with served.lock:
                served.requests.append((self.path, dict(self.headers.items())))
            if self.path in served.redirects:
                self._reply(302, headers={"Location": served.redirects[self.path]})
                return
            for name, value in served.required_headers.items():
                if self.headers.get(name) != value:
                    self._reply(401, b"unauthorised", {"WWW-Authenticate": "Bearer"})
                    return
            path = self.path.split("?", 1)[0]
            if path not in served.files:
                self._reply(404)
                return
            body = served.files[path]
            requested = self.headers.get("Range")
            if requested:
                start = int(requested.removeprefix("bytes=").split("-")[0])
                self._reply(206, body[start:], {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
                return
            self._reply(200, body)

    return Handler


@contextmanager
def file_server(served: Served | None = None) -> Iterator[Served]:
    """Serve `served.files` on 127.0.0.1 (a free port) until the block ends."""
    served = served or Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
