"""The pages, their JSON, their event streams, the experiment images and (with --allow-actions) the
actions of `lanex ui`.

Every page is rendered on the server from the data source's records (Jinja2 with autoescaping:
names, messages, log lines and spec values are always text); the data its charts draw travels in
a JSON script block (`tojson` escapes `<`, `>`, `&` and quotes), and its live updates in
server-sent events that the page's script writes with `textContent`, never as HTML.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Optional

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from lanex_operator.ui import records
from lanex_operator.ui.live import Hub, event, stream
from lanex_operator.ui.logs import TerminalText
from lanex_operator.ui.security import action_allowed
from lanex_operator.ui.source import ActionError, Change, Source

STATIC_DIR = Path(__file__).parent / "static"
MAX_COMPARED = 4
NO_STORE = {"Cache-Control": "no-store"}
# Only the app's own scripts run, whatever a page shows (uPlot sizes its elements with inline styles).
PAGE_HEADERS = {**NO_STORE, "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
                "style-src 'self' 'unsafe-inline'; img-src 'self'; object-src 'none'; base-uri 'none'; "
                "frame-ancestors 'none'", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def templates() -> Environment:
    env = Environment(loader=PackageLoader("lanex_operator.ui", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.globals["experiment_columns"] = records.EXPERIMENT_COLUMNS
    env.globals["sweep_columns"] = records.SWEEP_COLUMNS
    return env


class Pages:
    """The routes, bound to one data source and hub."""

    def __init__(self, source: Source, hub: Hub, allow_actions: bool) -> None:
        self.source, self.hub, self.allow_actions = source, hub, allow_actions
        self.env = templates()

    def routes(self) -> list:
        # {name:path}: with -A an object is `namespace/name`
        routes = [
            Route("/", self.home), Route("/experiments/{name:path}", self.experiment_page),
            Route("/sweeps/{name:path}", self.sweep_page), Route("/compare", self.compare_page),
            Route("/api/home", self.home_json), Route("/api/experiments/{name:path}", self.experiment_json),
            Route("/api/sweeps/{name:path}", self.sweep_json),
            Route("/events", self.home_events), Route("/events/experiments/{name:path}", self.experiment_events),
            Route("/events/sweeps/{name:path}", self.sweep_events),
            Route("/files/{name}/{path:path}", self.image),
            Mount("/static", app=StaticFiles(directory=str(STATIC_DIR)), name="static"),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
        ]
        if self.allow_actions:  # read-only servers have no action endpoints at all
            routes.append(Route("/actions/{action}/{name:path}", self.action, methods=["POST"]))
        return routes

    # -- rendering ------------------------------------------------------------------------------
    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("data", None)
        page = self.env.get_template(template).render(where=self.source.where, source_kind=self.source.kind,
                                                      allow_actions=self.allow_actions, **context)
        return HTMLResponse(page, status_code=status_code, headers=PAGE_HEADERS)

    def not_found(self, what: str) -> HTMLResponse:
        return self.render("missing.html", status_code=404, what=what)

    async def unknown_page(self, request: Request, error: Exception) -> Response:
        return self.not_found(f"page {request.url.path}")

    # -- pages ----------------------------------------------------------------------------------
    async def home(self, request: Request) -> Response:
        experiments, sweeps = self.source.home()
        return self.render("home.html", experiments=experiments, sweeps=sweeps)  # the rows are the data

    async def experiment_page(self, request: Request) -> Response:
        name = request.path_params["name"]
        detail = await asyncio.to_thread(self._experiment_data, name)
        if detail is None:
            return self.not_found(f"experiment {name}")
        return self.render("experiment.html", e=detail, data=detail)

    def _experiment_data(self, name: str) -> Optional[dict[str, Any]]:
        detail = self.source.experiment(name)
        if detail is None:
            return None
        steps, steps_offset = self.source.steps(name, 0)
        log, log_offset = self.source.log(name, -1, TerminalText())
        return {**detail, "steps": steps, "stepsOffset": steps_offset, "log": log, "logOffset": log_offset,
                "samples": self.source.samples(name)}

    async def sweep_page(self, request: Request) -> Response:
        name = request.path_params["name"]
        detail = await asyncio.to_thread(self.source.sweep, name)
        if detail is None:
            return self.not_found(f"sweep {name}")
        return self.render("sweep.html", s=detail, data=detail)

    async def compare_page(self, request: Request) -> Response:
        names = [n for n in request.query_params.getlist("name") if n][:MAX_COMPARED]
        if len(names) < 2:
            return self.render("compare.html", c=None, names=names, data=None,
                               problem="Pick two to four experiments on the home page (the boxes of their rows).")
        try:
            compared = await asyncio.to_thread(self.source.compare, names)
        except ActionError as error:
            return self.render("compare.html", status_code=404, c=None, names=names, data=None, problem=str(error))
        return self.render("compare.html", c=compared, names=names, data=compared, problem=None)

    # -- JSON ----------------------------------------------------------------------------------
    async def home_json(self, request: Request) -> Response:
        experiments, sweeps = self.source.home()
        return JSONResponse({"experiments": experiments, "sweeps": sweeps}, headers=NO_STORE)

    async def experiment_json(self, request: Request) -> Response:
        detail = await asyncio.to_thread(self.source.experiment, request.path_params["name"])
        if detail is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse(detail, headers=NO_STORE)

    async def sweep_json(self, request: Request) -> Response:
        detail = await asyncio.to_thread(self.source.sweep, request.path_params["name"])
        if detail is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse(detail, headers=NO_STORE)

    # -- event streams ---------------------------------------------------------------------------
    def _sse(self, first: list[bytes], on_change) -> StreamingResponse:
        async def body():
            with self.hub.subscription() as queue:
                async for chunk in stream(queue, first, on_change):
                    yield chunk

        return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def home_events(self, request: Request) -> Response:
        async def on_change(changes: list[Change]) -> list[bytes]:
            out = []
            for change in changes:
                if change.row is None:
                    out.append(event("remove", {"kind": change.kind, "name": change.name}))
                elif change.row_changed:
                    out.append(event("row", {"kind": change.kind, "name": change.name, "row": change.row}))
            return out

        return self._sse([event("hello", {"listeners": self.hub.listeners})], on_change)

    async def experiment_events(self, request: Request) -> Response:
        name = request.path_params["name"]
        offsets = {"steps": _offset(request, "steps"), "log": _offset(request, "log")}
        follower = TerminalText()

        def delta() -> list[bytes]:
            detail = self.source.experiment(name)
            if detail is None:
                return [event("remove", {"name": name})]
            steps, offsets["steps"] = self.source.steps(name, offsets["steps"])
            lines, offsets["log"] = self.source.log(name, offsets["log"], follower)
            samples = self.source.samples(name)
            detail.pop("record", None)
            out = [event("detail", {**detail, "sample": samples[-1] if samples else None})]
            if steps:
                out.append(event("steps", steps))
            if lines:
                out.append(event("log", lines))
            return out

        async def on_change(changes: list[Change]) -> list[bytes]:
            if not any(c.kind == "experiment" and c.name == name for c in changes):
                return []
            return await asyncio.to_thread(delta)

        return self._sse(await asyncio.to_thread(delta), on_change)

    async def sweep_events(self, request: Request) -> Response:
        name = request.path_params["name"]

        def detail() -> list[bytes]:
            found = self.source.sweep(name)
            return [event("sweep", found) if found is not None else event("remove", {"name": name})]

        async def on_change(changes: list[Change]) -> list[bytes]:
            found = self.source.sweep(name)
            trials = {t["name"] for t in (found or {}).get("trials") or []}
            if any((c.kind == "sweep" and c.name == name) or (c.kind == "experiment" and c.name in trials)
                   for c in changes):
                return await asyncio.to_thread(detail)
            return []

        return self._sse([], on_change)

    # -- images ------------------------------------------------------------------------------------
    async def image(self, request: Request) -> Response:
        path = self.source.image(request.path_params["name"], request.path_params["path"])
        if path is None:
            return self.not_found("image")
        return FileResponse(path, headers=NO_STORE)

    # -- actions -------------------------------------------------------------------------------------
    async def action(self, request: Request) -> Response:
        if not action_allowed(request):
            return JSONResponse({"error": "actions must come from the app's own pages"}, status_code=403)
        action, name = request.path_params["action"], request.path_params["name"]
        if action not in ("stop", "delete"):
            return JSONResponse({"error": f"no action {action}"}, status_code=404)
        try:
            message = await asyncio.to_thread(getattr(self.source, action), name)
        except ActionError as error:
            return JSONResponse({"error": str(error)}, status_code=409)
        return JSONResponse({"message": message})


def _offset(request: Request, key: str) -> int:
    try:
        return int(request.query_params.get(key, "-1"))
    except ValueError:
        return -1
