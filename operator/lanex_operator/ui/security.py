"""Who may talk to `lanex ui`.

On a loopback address only this machine can connect; the Host header must then name the loopback
too, so a web page elsewhere cannot reach the app by pointing a DNS name at 127.0.0.1 (DNS
rebinding). On any other address every request, the event streams and images included, must carry
the token printed at start: in the `token` query parameter of the first URL (then kept in an
HttpOnly cookie, and the URL is cleaned), a cookie, or an `Authorization: Bearer` header.
Actions (POST) also need a same-origin request with the `X-Lanex-Action` header, which a form or
image on another site cannot send.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from typing import Optional
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "lanex_ui_token"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


class Guard:
    """ASGI middleware: the checks above, before any route runs."""

    def __init__(self, app: ASGIApp, token: Optional[str]) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refused = self.refusal(request)
        if refused is not None:
            await refused(scope, receive, send)
            return
        if self.token and request.query_params.get("token"):
            # The printed URL's token becomes a cookie, and the address bar loses it.
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, request: Request) -> Optional[Response]:
        if self.token is None:
            if _hostname(request.headers.get("host") or "") not in LOOPBACK_HOSTS:
                return PlainTextResponse("lanex ui: this server answers only to localhost addresses\n", status_code=421)
            return None
        offered = (request.query_params.get("token") or request.cookies.get(COOKIE)
                   or _bearer(request.headers.get("authorization")))
        if not offered or not hmac.compare_digest(offered.encode(), self.token.encode()):
            return PlainTextResponse("lanex ui: a token is required (open the URL printed by `lanex ui`)\n",
                                     status_code=401)
        return None


def _hostname(host_header: str) -> str:
    """`[::1]:8080` -> `[::1]`, `localhost:8080` -> `localhost`."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0]


def _bearer(header: Optional[str]) -> Optional[str]:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def action_allowed(request: Request) -> bool:
    """A POST from the app's own pages: same origin and the custom header."""
    origin = request.headers.get("origin")
    if origin is not None and origin.rstrip("/") != f"{request.url.scheme}://{request.headers.get('host')}":
        return False
    return request.headers.get("x-lanex-action") == "1"
