"""An HTTPS emulator of the Azure Resource Manager endpoints that a pool change uses.

It speaks what the real azure-mgmt-netapp client sends: GET a volume, GET the account's capacity
pools, POST `.../volumes/<v>/poolChange` (answered 202 with `Azure-AsyncOperation` and `Location`),
and GET of the async operation (`InProgress`, then `Succeeded` or `Failed` with an ARM error) and
of its Location. Volumes really move between pools when an operation succeeds, so the volume's ID
and `serviceLevel` change like in Azure. Knobs make it misbehave (403 on an action, queued error
answers, an operation that fails or never ends), and it records every request it receives.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from azure.core.credentials import AccessToken

from .certs import TlsFiles

API_VERSION = "2026-08-01"
_ACCOUNT = (r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.NetApp"
            r"/netAppAccounts/(?P<account>[^/]+)")
ROUTES = [
    ("GET", "volume", re.compile(_ACCOUNT + r"/capacityPools/(?P<pool>[^/]+)/volumes/(?P<volume>[^/]+)$", re.I)),
    ("GET", "pools", re.compile(_ACCOUNT + r"/capacityPools$", re.I)),
    ("POST", "poolChange", re.compile(_ACCOUNT + r"/capacityPools/(?P<pool>[^/]+)/volumes/(?P<volume>[^/]+)"
                                      r"/poolChange$", re.I)),
    ("POST", "token", re.compile(r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token$", re.I)),
    ("GET", "operation", re.compile(r"/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.NetApp/locations/"
                                    r"(?P<location>[^/]+)/operationResults/(?P<op>[^/]+)$", re.I)),
]


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One request as the emulator received it."""

    method: str
    path: str
    api_version: Optional[str]
    query: dict[str, list[str]]
    body: Any
    authorization: Optional[str]
    route: str


@dataclasses.dataclass(frozen=True)
class ArmError:
    """An ARM error answer."""

    status: int
    code: str
    message: str


@dataclasses.dataclass
class Operation:
    """A pool change in flight."""

    op_id: str
    volume: str
    source_pool: str
    target_pool: str
    polls_left: int
    outcome: str  # Succeeded | Failed | Never
    error: Optional[ArmError]
    started: str
    status: str = "InProgress"


@dataclasses.dataclass
class ArmState:
    """The emulated NetApp account and the knobs of the test in progress."""

    subscription: str = "11111111-2222-3333-4444-555555555555"
    resource_group: str = "rg-lanex"
    account: str = "anf-lanex"
    location: str = "westeurope"
    token: str = "lanex-test-token"
    # Workload identity: the token endpoint hands out `token` for this client and federated token.
    tenant_id: str = "tenant-lanex"
    client_id: str = "client-lanex-operator"
    federated_token: str = "projected-service-account-token"
    pools: dict[str, str] = dataclasses.field(default_factory=dict)  # pool -> service level
    volumes: dict[str, str] = dataclasses.field(default_factory=dict)  # volume -> pool
    operations: dict[str, Operation] = dataclasses.field(default_factory=dict)
    requests: list[Recorded] = dataclasses.field(default_factory=list)
    # Knobs.
    denied_actions: set[str] = dataclasses.field(default_factory=set)  # route names answered 403
    pool_change_errors: collections.deque[ArmError] = dataclasses.field(default_factory=collections.deque)
    lro_outcome: str = "Succeeded"  # Succeeded | Failed | Never
    lro_polls: int = 2  # InProgress answers before the outcome
    lro_error: ArmError = ArmError(200, "PoolChangeFailed", "Pool change failed: the target pool has too little "
                                   "free capacity for the volume")

    def pool_id(self, pool: str) -> str:
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/"
                f"Microsoft.NetApp/netAppAccounts/{self.account}/capacityPools/{pool}")

    def volume_id(self, volume: str) -> str:
        return f"{self.pool_id(self.volumes[volume])}/volumes/{volume}"

    def volume_json(self, volume: str) -> dict[str, Any]:
        pool = self.volumes[volume]
        return {"id": self.volume_id(volume), "name": f"{self.account}/{pool}/{volume}",
                "type": "Microsoft.NetApp/netAppAccounts/capacityPools/volumes", "location": self.location,
                "properties": {"serviceLevel": self.pools[pool], "creationToken": volume,
                               "usageThreshold": 107374182400, "provisioningState": "Succeeded",
                               "protocolTypes": ["NFSv3"], "fileSystemId": str(uuid.uuid5(uuid.NAMESPACE_URL, volume)),
                               "subnetId": f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/"
                                           "providers/Microsoft.Network/virtualNetworks/vnet/subnets/anf"}}

    def pool_json(self, pool: str) -> dict[str, Any]:
        return {"id": self.pool_id(pool), "name": f"{self.account}/{pool}", "location": self.location,
                "type": "Microsoft.NetApp/netAppAccounts/capacityPools",
                "properties": {"serviceLevel": self.pools[pool], "size": 4398046511104, "qosType": "Auto",
                               "provisioningState": "Succeeded", "poolId": str(uuid.uuid5(uuid.NAMESPACE_URL, pool))}}

    def of(self, route: str) -> list[Recorded]:
        """The recorded requests of one route, in order."""
        return [r for r in self.requests if r.route == route]


class ArmEmulator:
    """The HTTPS server; `state` is replaced by `reset()` between tests."""

    def __init__(self, tls: TlsFiles) -> None:
        self.state = ArmState()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls.server_cert), str(tls.server_key))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="arm-emulator", daemon=True)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ArmEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def operator_env(self, tls: TlsFiles, token_file: Path, *, poll_interval_seconds: float = 0.05,
                     retry_delay_seconds: float = 0.05) -> dict[str, str]:
        """Environment for a real operator process using this emulator (writes the federated token file).

        The production path runs unchanged: `DefaultAzureCredential` picks workload identity from
        the AZURE_* variables, requests trusts the test CA through REQUESTS_CA_BUNDLE, and the
        LANEX_ANF_POOL_* variables name this account's pools by their service level.
        """
        state = self.state
        token_file.write_text(state.federated_token)
        env = {"AZURE_AUTHORITY_HOST": self.base_url, "AZURE_TENANT_ID": state.tenant_id,
               "AZURE_CLIENT_ID": state.client_id, "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
               "REQUESTS_CA_BUNDLE": str(tls.ca_cert), "LANEX_ANF_ARM_ENDPOINT": self.base_url,
               "LANEX_ANF_POLL_INTERVAL_SECONDS": str(poll_interval_seconds),
               "LANEX_ANF_RETRY_DELAY_SECONDS": str(retry_delay_seconds),
               "LANEX_ANF_RETRY_MAX_DELAY_SECONDS": str(retry_delay_seconds * 4)}
        for pool, level in state.pools.items():
            env.setdefault(f"LANEX_ANF_POOL_{level.upper()}", state.pool_id(pool))
        return env

    def reset(self, **changes: Any) -> ArmState:
        with self._lock:
            self.state = ArmState(**changes)
            return self.state

    # --- request handling (called from handler threads) -------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, Any]:
        split = urlsplit(raw_path)
        query = parse_qs(split.query)
        try:
            parsed_body: Any = json.loads(body) if body else None
        except ValueError:
            parsed_body = parse_qs(body.decode(errors="replace"))  # the token endpoint's form body
        route, match = next(((name, m) for verb, name, pattern in ROUTES
                             if verb == method and (m := pattern.match(split.path))), ("unknown", None))
        with self._lock:
            state = self.state
            state.requests.append(Recorded(method, split.path, (query.get("api-version") or [None])[0], query,
                                           parsed_body, headers.get("authorization"), route))
            if route == "token":
                return self._token(state, match, parsed_body)
            if headers.get("authorization") != f"Bearer {state.token}":
                return _error(ArmError(401, "AuthenticationFailed", "Authentication failed: missing or wrong "
                                                                    "bearer token."))
            if not query.get("api-version"):
                return _error(ArmError(400, "MissingApiVersionParameter",
                                       "The api-version query parameter (?api-version=) is required."))
            if match is None:
                return _error(ArmError(404, "NoRouteFound", f"No route for {method} {split.path} in the emulator."))
            if route in state.denied_actions:
                return _error(ArmError(403, "AuthorizationFailed",
                                       f"The client 'lanex-operator' does not have authorization to perform action "
                                       f"'Microsoft.NetApp/.../{route}' over scope '{split.path}' or the scope is "
                                       "invalid."))
            if (match["sub"].lower() != state.subscription.lower()
                    or (route != "operation" and (match["rg"].lower() != state.resource_group.lower()
                                                  or match["account"].lower() != state.account.lower()))):
                return _error(ArmError(404, "ResourceGroupNotFound" if route != "operation" else "NotFound",
                                       f"{split.path} is not in the emulated account."))
            return getattr(self, f"_{route}")(state, match, query, parsed_body)

    def _token(self, state: ArmState, match: re.Match, form: Any) -> tuple[int, dict, Any]:
        form = form if isinstance(form, dict) else {}
        field = lambda name: (form.get(name) or [None])[0]  # noqa: E731
        if (match["tenant"] != state.tenant_id or field("client_id") != state.client_id
                or field("client_assertion") != state.federated_token
                or field("grant_type") != "client_credentials"):
            return 401, {}, {"error": "invalid_client", "error_description": "AADSTS700016: unknown client, tenant "
                                                                             "or federated token."}
        return 200, {}, {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600,
                         "access_token": state.token}

    def _volume(self, state: ArmState, match: re.Match, query: dict, body: Any) -> tuple[int, dict, Any]:
        volume, pool = match["volume"], match["pool"]
        if state.volumes.get(volume, "").lower() != pool.lower():
            return _error(ArmError(404, "ResourceNotFound", f"The Resource 'Microsoft.NetApp/netAppAccounts/"
                                   f"{state.account}/capacityPools/{pool}/volumes/{volume}' under resource group "
                                   f"'{state.resource_group}' was not found."))
        return 200, {}, state.volume_json(volume)

    def _pools(self, state: ArmState, match: re.Match, query: dict, body: Any) -> tuple[int, dict, Any]:
        return 200, {}, {"value": [state.pool_json(pool) for pool in state.pools]}

    def _poolChange(self, state: ArmState, match: re.Match, query: dict, body: Any) -> tuple[int, dict, Any]:
        volume, pool = match["volume"], match["pool"]
        if state.pool_change_errors:
            return _error(state.pool_change_errors.popleft())
        if state.volumes.get(volume, "").lower() != pool.lower():
            return _error(ArmError(404, "ResourceNotFound", f"The Resource 'Microsoft.NetApp/netAppAccounts/"
                                   f"{state.account}/capacityPools/{pool}/volumes/{volume}' was not found."))
        target = (body or {}).get("newPoolResourceId") if isinstance(body, dict) else None
        if not target:
            return _error(ArmError(400, "InvalidRequestBody", "newPoolResourceId is required."))
        target_pool = next((p for p in state.pools if state.pool_id(p).lower() == str(target).lower()), None)
        if target_pool is None:
            return _error(ArmError(404, "ResourceNotFound", f"The Resource '{target}' was not found: "
                                   "the target capacity pool does not exist."))
        if any(op.volume == volume and op.status == "InProgress" for op in state.operations.values()):
            return _error(ArmError(409, "Conflict", f"Another operation is in progress on volume {volume}."))
        op = Operation(op_id=str(uuid.uuid4()), volume=volume, source_pool=pool, target_pool=target_pool,
                       polls_left=state.lro_polls, outcome=state.lro_outcome, error=state.lro_error,
                       started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        state.operations[op.op_id] = op
        return 202, self._operation_headers(state, op), None

    def _operation_headers(self, state: ArmState, op: Operation) -> dict[str, str]:
        url = (f"{self.base_url}/subscriptions/{state.subscription}/providers/Microsoft.NetApp/locations/"
               f"{state.location}/operationResults/{op.op_id}?api-version={API_VERSION}")
        return {"Azure-AsyncOperation": url, "Location": f"{url}&operationResultResponseType=Location"}

    def _operation(self, state: ArmState, match: re.Match, query: dict, body: Any) -> tuple[int, dict, Any]:
        op = state.operations.get(match["op"])
        if op is None:
            return _error(ArmError(404, "NotFound", f"Operation {match['op']} was not found."))
        if op.status == "InProgress":
            if op.outcome == "Never" or op.polls_left > 0:
                op.polls_left -= 1
            elif op.outcome == "Succeeded":
                op.status = "Succeeded"
                state.volumes[op.volume] = op.target_pool
            else:
                op.status = "Failed"
        if (query.get("operationResultResponseType") or [""])[0] == "Location":
            if op.status == "InProgress":
                return 202, self._operation_headers(state, op), None
            if op.status == "Succeeded":
                return 200, {}, state.volume_json(op.volume)
            return _error(op.error or ArmError(500, "InternalServerError", "failed"))
        answer: dict[str, Any] = {"id": f"/subscriptions/{state.subscription}/providers/Microsoft.NetApp/locations/"
                                        f"{state.location}/operationResults/{op.op_id}",
                                  "name": op.op_id, "status": op.status, "startTime": op.started,
                                  "percentComplete": 100.0 if op.status != "InProgress" else 50.0}
        if op.status == "Failed" and op.error is not None:
            answer["error"] = {"code": op.error.code, "message": op.error.message}
        return 200, {}, answer


def _error(error: ArmError) -> tuple[int, dict, Any]:
    return error.status, {}, {"error": {"code": error.code, "message": error.message}}


def _handler_for(emulator: ArmEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, extra, payload = emulator.handle(self.command, self.path, headers, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logs
            return

    return Handler


class FakeCredential:
    """A TokenCredential for tests: hands out one fixed token and records the scopes asked for."""

    def __init__(self, token: str = "lanex-test-token") -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, claims: Optional[str] = None, tenant_id: Optional[str] = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)
