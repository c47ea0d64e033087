"""Assembling and serving `lanex ui`: the routes behind the guard, the watcher started with the server.

`serve` binds the socket itself (so `--port 0` works and the printed address is the real one) and
runs uvicorn on it until interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Callable, Optional

from starlette.applications import Starlette

from lanex_operator.ui.live import Hub, watch
from lanex_operator.ui.routes import Pages
from lanex_operator.ui.security import Guard, is_loopback, new_token
from lanex_operator.ui.source import Source


def build_app(source: Source, *, allow_actions: bool = False, token: Optional[str] = None,
              interval_s: float = 0.5) -> Guard:
    hub = Hub()
    pages = Pages(source, hub, allow_actions)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        watcher = asyncio.create_task(watch(source, hub, interval_s))
        try:
            yield
        finally:
            watcher.cancel()
            source.close()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    app = Starlette(routes=pages.routes(), lifespan=lifespan, exception_handlers={404: pages.unknown_page})
    app.state.hub = hub
    return Guard(app, token)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(source: Source, host: str, port: int, allow_actions: bool, echo: Callable[[str], None],
          interval_s: float = 0.5) -> None:
    """Serve until Ctrl-C. A non-loopback address gets a fresh token, printed in the URL to open."""
    import uvicorn

    token = None if is_loopback(host) else new_token()
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{bound_port}/" + (f"?token={token}" if token else "")
    echo(f"lanex ui: serving {source.kind} {source.where} at {url}"
         + (" (actions allowed)" if allow_actions else " (read-only)"))
    if token:
        echo(f"lanex ui: every request needs the token {token} (the URL above sets it)")
    app = build_app(source, allow_actions=allow_actions, token=token, interval_s=interval_s)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
