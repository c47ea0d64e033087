"""A small asynchronous Kubernetes client for the operator's own reads and writes.

Why it exists: kopf's API client is private, and the official `kubernetes` client is synchronous
(a blocking call per request would stall kopf's event loop or pin a thread per experiment). This
client speaks plain JSON over aiohttp, authenticates with the same `kopf.ConnectionInfo` that kopf
itself logs in with, and turns HTTP failures into two kinds of errors the reconciler acts on:
retryable (5xx, 409 Conflict, 429, timeouts, connection errors) and permanent (everything else).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from lanex_operator import __version__

USER_AGENT = f"lanex-operator/{__version__}"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


class KubeError(Exception):
    """An API request that failed; `retryable` says whether trying again can help."""

    def __init__(self, method: str, path: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.method = method
        self.path = path
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status == 0 or self.status >= 500 or self.status in (409, 429)

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"


def object_path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
                subresource: str | None = None) -> str:
    """The REST path of a resource collection or object: `/apis/batch/v1/namespaces/ns/jobs/name`."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [base]
    if namespace:
        parts.append(f"namespaces/{quote(namespace)}")
    parts.append(plural)
    if name:
        parts.append(quote(name))
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def _ssl_context(info: Any) -> ssl.SSLContext | bool:
    if getattr(info, "insecure", False):
        return False
    if not str(info.server).startswith("https"):
        return True
    context = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None,
        cadata=info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data,
    )
    if info.certificate_path and info.private_key_path:
        context.load_cert_chain(str(info.certificate_path), str(info.private_key_path))
    return context


class Kube:
    """JSON requests against one apiserver; one aiohttp session shared by all experiments."""

    def __init__(self, server: str, headers: Mapping[str, str], ssl_context: ssl.SSLContext | bool = True,
                 request_timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **headers}
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0  # total requests sent, for the metrics and the benchmark

    def set_user_agent(self, agent: str) -> None:
        """Name this client differently in the apiserver's audit log (before its first request)."""
        self._headers["User-Agent"] = agent

    @classmethod
    def from_connection_info(cls, info: Any, request_timeout: float = 30.0) -> Kube:
        """Build from the `kopf.ConnectionInfo` returned by a kopf login function."""
        return cls(info.server, info.as_http_headers(), _ssl_context(info), request_timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=32)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout, connector=connector)
        return self._session

    async def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                      params: Mapping[str, str] | None = None, accept: str | None = None) -> dict[str, Any]:
        url = self.server + path + (f"?{urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        self.requests += 1
        try:
            async with self._client().request(method, url, data=data, headers=headers) as response:
                text = await response.text()
                payload = _loads(text)
                if response.status >= 400:
                    raise KubeError(method, path, response.status, str(payload.get("reason") or response.reason),
                                    str(payload.get("message") or text[:300]))
                return payload
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise KubeError(method, path, 0, type(exc).__name__, str(exc) or "connection failed") from exc

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def text(self, path: str, params: Mapping[str, str] | None = None) -> str:
        """A plain-text GET (a pod's log), with the same errors as `request`."""
        url = self.server + path + (f"?{urlencode(params)}" if params else "")
        self.requests += 1
        try:
            async with self._client().get(url, headers={"Accept": "*/*"}) as response:
                text = await response.text(errors="replace")
                if response.status >= 400:
                    payload = _loads(text)
                    raise KubeError("GET", path, response.status, str(payload.get("reason") or response.reason),
                                    str(payload.get("message") or text[:300]))
                return text
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise KubeError("GET", path, 0, type(exc).__name__, str(exc) or "connection failed") from exc

    async def metadata_or_none(self, path: str) -> dict[str, Any] | None:
        """An object's metadata only (the apiserver's PartialObjectMetadata: a Secret's values are never sent),
        or None when it does not exist. Whatever else a server sends is dropped here."""
        try:
            found = await self.request("GET", path, accept=PARTIAL_METADATA)
        except KubeError as exc:
            if exc.not_found:
                return None
            raise
        return dict(found.get("metadata") or {})

    async def get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.get(path)
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    async def list(self, path: str, label_selector: str | None = None,
                   field_selector: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        return list((await self.request("GET", path, params=params or None)).get("items") or [])

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, dict(body))

    async def patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, dict(patch), content_type=MERGE_PATCH)

    async def json_patch(self, path: str, operations: list[Mapping[str, Any]]) -> dict[str, Any]:
        """A JSON patch (RFC 6902): unlike a merge patch, it can write a null value."""
        return await self.request("PATCH", path, [dict(op) for op in operations], content_type=JSON_PATCH)

    async def delete(self, path: str, propagation: str = "Background") -> dict[str, Any] | None:
        try:
            return await self.request("DELETE", path, {"apiVersion": "v1", "kind": "DeleteOptions",
                                                       "propagationPolicy": propagation})
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    async def api_served(self, api_version: str, plural: str) -> bool:
        """Whether discovery lists `plural` under `api_version` (the CRD is installed and served)."""
        try:
            listing = await self.get(f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}")
        except KubeError as exc:
            if exc.not_found:
                return False
            raise
        return any(resource.get("name") == plural for resource in listing.get("resources") or [])


def _loads(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {"message": text[:300]}
    return value if isinstance(value, dict) else {"items": value}
