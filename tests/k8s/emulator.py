"""A Kubernetes API server emulator over real HTTP, for testing the operator with the real kopf runtime.

Why it exists: there is no kube-apiserver on the test machines. kmock (from kopf's author) serves the
HTTP surface, request parsing and API discovery, but its object store is a plain JSON dict: no
resourceVersion/uid/generation, no status subresource, no selectors, no PUT, no garbage collection, no
watch resumption. `ClusterEmulator` keeps kmock's server, parsing and discovery and replaces the object
semantics with the parts of the apiserver that kopf and the operator rely on:

* metadata: uid, resourceVersion (one global counter), creationTimestamp, generation (bumped when
  anything but metadata/status changes), default namespace from the URL, generateName;
* the status subresource: PATCH/PUT to `/status` changes only status; writes to the main resource
  never change status; no-op writes change nothing and emit no watch event;
* merge, JSON and (approximated as merge) strategic-merge patches, PUT, optimistic concurrency
  (409 on a stale resourceVersion, 422 on a failed JSON-patch `test`, which kopf relies on);
* finalizers (deletionTimestamp, removal once the last finalizer goes) and background owner-reference
  garbage collection;
* LIST (items carry kind/apiVersion) and WATCH with label and field selectors, resumption from a
  resourceVersion (410 Gone when too old), timeoutSeconds, bookmarks;
* a request log (`calls`) in RBAC terms, for the RBAC test, and fault injection (`faults`);
* for CRDs registered with `validate=True` (the LaneExperiment CRD, the upstream MPIJob and
  VolumeSnapshot CRDs): the apiserver's admission of every write over HTTP (`k8s.schema_check`:
  structural schema, unknown fields per `fieldValidation` (Strict: 400 BadRequest `strict decoding
  error` on POST/PUT, 422 Invalid on PATCH, as its handlers answer), defaults, CEL rules,
  ratcheting). Writes
  that tests make straight into the store skip it, as objects "from before the CRD" would.
* metadata-only reads (`Accept: ...;as=PartialObjectMetadata;g=meta.k8s.io`, as the operator reads the
  opt-in label of a Secret without its values);
* server-side printing (`Accept: ...;as=Table;g=meta.k8s.io`, what `kubectl get` asks for) of custom
  resources with `additionalPrinterColumns`: GET, LIST and WATCH answer meta.k8s.io/v1 Tables whose
  cells follow the columns' JSONPaths (null when a path finds nothing, `date` columns as an age), as
  the apiextensions-apiserver's table convertor does.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import datetime
import functools
import json
import random
import re
import string
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import rendering

from k8s.schema_check import CrdSchema, UnknownFields

Resource = tuple[str, str, str]  # (group, version, plural); group '' is the core API
ObjectKey = tuple[Resource, str | None, str]  # (resource, namespace or None, name)

SYSTEM_USER_AGENT = "lanex-cluster-sim"
_NAMESPACE_URL = re.compile(r"/api/v1/namespaces(?:/(?P<name>[^/]+)(?:/(?P<sub>status|finalize))?)?/?")


# --------------------------------------------------------------------------------------------
# Resource registry


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    """What the emulator must know about a resource to serve it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: frozenset[str] = frozenset()
    short_names: frozenset[str] = frozenset()
    # additionalPrinterColumns as (name, type, jsonPath, description, priority), for server-side tables
    printer_columns: tuple[tuple[str, str, str, str, int], ...] = ()

    @property
    def key(self) -> Resource:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


BUILTIN_RESOURCES: tuple[ResourceSpec, ...] = (
    ResourceSpec("kubeflow.org", "v2beta1", "mpijobs", "MPIJob", True, frozenset({"status"}), frozenset({"mpij"})),
    ResourceSpec("snapshot.storage.k8s.io", "v1", "volumesnapshots", "VolumeSnapshot", True,
                 frozenset({"status"}), frozenset({"vs"})),
    ResourceSpec("snapshot.storage.k8s.io", "v1", "volumesnapshotcontents", "VolumeSnapshotContent", False,
                 frozenset({"status"}), frozenset({"vsc"})),
    ResourceSpec("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses", "VolumeSnapshotClass", False,
                 frozenset(), frozenset({"vsclass"})),
    ResourceSpec("kueue.x-k8s.io", "v1beta2", "localqueues", "LocalQueue", True, frozenset({"status"}),
                 frozenset({"queue", "queues", "lq"})),
)

CORE_PLURALS = (
    ("", "v1", "persistentvolumeclaims"), ("", "v1", "persistentvolumes"), ("", "v1", "pods"),
    ("", "v1", "events"), ("", "v1", "namespaces"), ("", "v1", "configmaps"), ("", "v1", "secrets"),
    ("", "v1", "serviceaccounts"), ("batch", "v1", "jobs"), ("storage.k8s.io", "v1", "storageclasses"),
    ("events.k8s.io", "v1", "events"), ("apiextensions.k8s.io", "v1", "customresourcedefinitions"),
    ("coordination.k8s.io", "v1", "leases"),
)


@functools.cache
def bundled_resources() -> kmock.ResourcesArray:
    """kmock's bundled discovery data of the built-in resources (read once per process)."""
    bundled = kmock.ResourcesArray()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # kmock uses importlib.resources.read_binary
        bundled.load_bundled()
    return bundled


def resource_specs_from_crd(crd: Mapping[str, Any]) -> list[ResourceSpec]:
    """The served versions of a CustomResourceDefinition as emulator resources."""
    spec = crd["spec"]
    names = spec["names"]
    return [
        ResourceSpec(
            group=spec["group"], version=version["name"], plural=names["plural"], kind=names["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            subresources=frozenset((version.get("subresources") or {}).keys()),
            short_names=frozenset(names.get("shortNames") or ()),
            printer_columns=tuple((c["name"], c["type"], c["jsonPath"], c.get("description", ""),
                                   int(c.get("priority", 0))) for c in version.get("additionalPrinterColumns") or ()),
        )
        for version in spec["versions"]
        if version.get("served", True)
    ]


# --------------------------------------------------------------------------------------------
# Request log and fault injection


@dataclasses.dataclass(frozen=True)
class ApiCall:
    """One request as an RBAC rule sees it."""

    method: str
    path: str
    verb: str  # get, list, watch, create, update, patch, delete (RBAC verbs)
    group: str
    resource: str  # plural, with "/subresource" when one was addressed
    namespace: str | None
    name: str | None
    user_agent: str
    status: int = 0
    at: float = 0.0  # time.monotonic() when the request arrived
    metadata_only: bool = False  # asked as PartialObjectMetadata (a Secret's values are not sent)


@dataclasses.dataclass
class FaultPlan:
    """A share of requests answered with 500, 409, 403 or after a delay.

    `applies` selects the requests eligible for faults (by default: everything but the cluster
    simulation's own traffic and watch streams). 409 is only given to writes that can conflict
    (PATCH, PUT, DELETE), as a real apiserver would; other picks for 409 become 500.
    """

    error_rate: float = 0.0
    conflict_rate: float = 0.0
    slow_rate: float = 0.0
    forbidden_rate: float = 0.0  # 403: a permanent error (the RBAC role lacks a rule)
    slow_seconds: float = 0.3
    seed: int = 0
    applies: Callable[[ApiCall], bool] | None = None
    injected: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    _rng: random.Random = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def eligible(self, call: ApiCall) -> bool:
        if call.verb == "watch" or call.user_agent.startswith(SYSTEM_USER_AGENT):
            return False
        return self.applies(call) if self.applies is not None else True

    def pick(self, call: ApiCall) -> str | None:
        """Decide the fault for one request: "error", "conflict", "slow" or None."""
        if not self.eligible(call):
            return None
        draw = self._rng.random()
        if draw < self.error_rate:
            fault = "error"
        elif draw < self.error_rate + self.conflict_rate:
            fault = "conflict" if call.method in ("PATCH", "PUT", "DELETE") else "error"
        elif draw < self.error_rate + self.conflict_rate + self.slow_rate:
            fault = "slow"
        elif draw < self.error_rate + self.conflict_rate + self.slow_rate + self.forbidden_rate:
            fault = "forbidden"
        else:
            return None
        self.injected[fault] += 1
        return fault


class ApiError(Exception):
    """An apiserver error answered as a Kubernetes `Status` object."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": self.code, "reason": self.reason, "message": self.message}


# --------------------------------------------------------------------------------------------
# Pure helpers: merge patches, selectors, timestamps


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (returns a new value; lists are replaced, null deletes)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def parse_label_selector(selector: str) -> list[Callable[[Mapping[str, str]], bool]]:
    """Parse `a=b,c!=d,e,!f,g in (x,y),h notin (z)` into predicates over a label dict."""
    predicates: list[Callable[[Mapping[str, str]], bool]] = []
    for part in _split_selector(selector):
        match = _REQUIREMENT.match(part)
        if match is None:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        key, op, value = match["key"], match["op"], match["value"]
        if match["neg"]:
            predicates.append(lambda labels, k=key: k not in labels)
        elif match["setop"]:
            values = {v.strip() for v in match["values"].split(",") if v.strip()}
            if match["setop"] == "in":
                predicates.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                predicates.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif op in ("=", "=="):
            predicates.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            predicates.append(lambda labels, k=key, v=value: labels.get(k) != v)
        else:
            predicates.append(lambda labels, k=key: k in labels)
    return predicates


def _split_selector(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [p for p in parts if p.strip()]


def parse_field_selector(selector: str) -> list[Callable[[Mapping[str, Any]], bool]]:
    """Field selectors `a.b=v`, `a.b==v`, `a.b!=v` on any dotted path (metadata.name, involvedObject.name, ...)."""
    predicates: list[Callable[[Mapping[str, Any]], bool]] = []
    for part in _split_selector(selector):
        negate = "!=" in part
        field, _, value = part.partition("!=" if negate else "=")
        field, value = field.strip(), value.strip().lstrip("=")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*", field):
            raise ApiError(400, "BadRequest", f"field label not supported: {field}")
        predicates.append(lambda obj, f=field, v=value, n=negate: (_field(obj, f) == v) != n)
    return predicates


def _field(obj: Mapping[str, Any], dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return "" if value is None else str(value)


def _strip_system(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object without metadata and status: what `generation` tracks."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


# --------------------------------------------------------------------------------------------
# The emulator


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the apiserver semantics that kopf and the operator need."""

    strict_namespaces: bool = True  # reject creations in namespaces that do not exist, like the apiserver
    gc_delay: float = 0.02  # background owner-reference garbage collection, seconds after the owner goes
    history_size: int = 20000  # watch events kept per resource for resumption; older -> 410 Gone
    calls: list[ApiCall] = attrs.field(factory=list)
    faults: FaultPlan | None = None
    # fieldValidation of a write that names none. The real apiserver's default is Warn (drop the field,
    # warn); Strict here makes an undeclared field that the operator sends a test failure, not a loss.
    default_field_validation: str = "Strict"
    schemas: dict[Resource, CrdSchema] = attrs.field(factory=dict)
    _admitting: str | None = attrs.field(default=None, init=False)  # fieldValidation of the HTTP write in progress
    _admitting_patch: bool = attrs.field(default=False, init=False)  # ... and whether it is a PATCH

    _specs: dict[Resource, ResourceSpec] = attrs.field(factory=dict, init=False)
    _store: dict[ObjectKey, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _rv: int = attrs.field(default=1000, init=False)
    _history: dict[Resource, collections.deque[tuple[int, dict[str, Any]]]] = attrs.field(factory=dict, init=False)
    _watchers: dict[Resource, set[asyncio.Queue[dict[str, Any] | None]]] = attrs.field(
        factory=lambda: collections.defaultdict(set), init=False)
    _compacted: dict[Resource, int] = attrs.field(factory=dict, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    # What each container printed, by (namespace, pod, container): written by the simulated kubelet.
    _pod_logs: dict[tuple[str, str, str], bytearray] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        bundled = bundled_resources()
        for group, version, plural in CORE_PLURALS:
            info = bundled[kmock.resource(group, version, plural)]
            self.register(ResourceSpec(group, version, plural, info.kind or plural.capitalize(),
                                       bool(info.namespaced), frozenset(info.subresources) & {"status"},
                                       frozenset(info.shortnames)))
        for spec in BUILTIN_RESOURCES:
            self.register(spec)

    # ---- registry

    def register(self, spec: ResourceSpec) -> None:
        """Serve a resource: discovery (kmock) and objects (here)."""
        self._specs[spec.key] = spec
        self._history.setdefault(spec.key, collections.deque(maxlen=self.history_size))
        self.resources[kmock.resource(*spec.key)] = kmock.ResourceInfo(
            namespaced=spec.namespaced, kind=spec.kind, singular=spec.kind.lower(),
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            shortnames=set(spec.short_names), subresources=set(spec.subresources),
        )

    def register_crd(self, crd: Mapping[str, Any], validate: bool = False) -> None:
        """Serve a CRD's versions; with `validate`, admit writes over HTTP with its schema and CEL rules."""
        for spec in resource_specs_from_crd(crd):
            self.register(spec)
            if validate:
                self.schemas[spec.key] = CrdSchema(crd, spec.version)

    def _admit(self, spec: ResourceSpec, old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
        """The apiserver's validation of an HTTP write (pruned, defaulted), or its 400/422 error."""
        schema = self.schemas.get(spec.key)
        if schema is None:
            return new
        if self._admitting is None:
            return schema.defaulted(new)  # the apiserver defaults what it reads from storage too
        try:
            admitted, problems = schema.admit(new, old, self._admitting)
        except UnknownFields as error:
            if self._admitting_patch:  # the apiserver's jsonPatcher: 422 on the patched object
                shown = json.dumps(new, separators=(",", ":")).replace('"', '\\"')
                raise ApiError(422, "Invalid", f' "" is invalid: patch: Invalid value: "{shown}": strict decoding '
                                               f"error: {error}") from None
            raise ApiError(400, "BadRequest", f'{spec.kind} in version "{spec.version}" cannot be handled as a '
                                              f"{spec.kind}: strict decoding error: {error}") from None
        if problems:
            raise ApiError(422, "Invalid", schema.invalid_message((new.get("metadata") or {}).get("name", ""),
                                                                  problems))
        return admitted

    def unregister(self, group: str, version: str, plural: str) -> None:
        """Make an API disappear (for preflight tests)."""
        self._specs.pop((group, version, plural), None)
        del self.resources[kmock.resource(group, version, plural)]

    def spec_for(self, api_version: str, kind: str) -> ResourceSpec:
        for spec in self._specs.values():
            if spec.api_version == api_version and spec.kind == kind:
                return spec
        raise KeyError(f"no resource served for apiVersion={api_version!r} kind={kind!r}")

    # ---- discovery fix: kmock reports the core API's groupVersion as "/v1"

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and payload.get("groupVersion", "").startswith("/"):
            payload["groupVersion"] = payload["groupVersion"].lstrip("/")
        for entry in payload.get("resources") or [] if isinstance(payload, dict) else []:
            if "/" in entry.get("name", ""):  # subresources have no short names or categories (kubectl warns)
                entry.update(shortNames=[], categories=[], singularName="")
        return payload

    # ---- HTTP entry

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's URL parser reads `/api/v1/namespaces[/NAME]` as a namespace without a resource
        # (and crashes on the bare collection); parse the Namespace resource's own URLs here.
        match = _NAMESPACE_URL.fullmatch(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        request = rendering.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=raw_request.method,
            params=dict(raw_request.query), headers=dict(raw_request.headers), cookies=dict(raw_request.cookies),
            data=data, body=body, text=body.decode("utf-8", "replace"),
            resource=kmock.resource("", "v1", "namespaces"), namespace=None, name=match["name"],
            subresource=match["sub"],
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as exc:
            return await self._render_error(exc)


    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or not res.plural or (res.group, res.version, res.plural) not in self._specs:
            if res is not None and res.plural and res.version:
                return _json(ApiError(404, "NotFound", f"the server could not find the requested resource "
                                                        f"({res.group}/{res.version}/{res.plural})").status(), 404)
            return await super()._handle(request)  # discovery and anything non-resource: kmock
        spec = self._specs[(res.group, res.version, res.plural)]
        call = self._describe(request, spec)
        fault = self.faults.pick(call) if self.faults is not None else None
        try:
            if fault == "error":
                raise ApiError(500, "InternalError", "injected fault: etcdserver: request timed out")
            if fault == "conflict":
                raise ApiError(409, "Conflict", "injected fault: the object has been modified; "
                                                "please apply your changes to the latest version and try again")
            if fault == "forbidden":
                raise ApiError(403, "Forbidden", f"injected fault: {call.user_agent} cannot {call.verb} "
                                                 f"resource \"{call.resource}\" in API group \"{call.group}\"")
            if fault == "slow":
                await asyncio.sleep(self.faults.slow_seconds if self.faults else 0)
            if call.verb == "watch":
                self.calls.append(dataclasses.replace(call, status=200))
                return await self._stream_watch(request, spec)
            if call.resource == "pods/log" and call.verb == "get":
                key = self._log_key(request, spec)
                self._log_window(b"", request.params)  # refuse bad options before answering
                self.calls.append(dataclasses.replace(call, status=200))
                return await self._serve_log(request, key)
            payload, status = self._dispatch(request, spec, call)
            if call.verb in ("get", "list") and status == 200 and self._wants_table(request, spec):
                payload = self._table(spec, payload.get("items", [payload]) if call.verb == "list" else [payload],
                                      (payload.get("metadata") or {}).get("resourceVersion", ""), request.params)
            elif call.verb == "get" and status == 200 and call.metadata_only:
                payload = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                           "metadata": payload.get("metadata") or {}}
        except ApiError as exc:
            self.calls.append(dataclasses.replace(call, status=exc.code))
            return _json(exc.status(), exc.code)
        self.calls.append(dataclasses.replace(call, status=status))
        return _json(payload, status)

    def _describe(self, request: rendering.Request, spec: ResourceSpec) -> ApiCall:
        method = request.method.value if hasattr(request.method, "value") else str(request.method)
        params = request.params
        if method == "GET":
            verb = "watch" if params.get("watch") in ("true", "1") else ("get" if request.name else "list")
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete" if request.name else "deletecollection"}.get(method, method.lower())
        plural = spec.plural + (f"/{request.subresource}" if request.subresource else "")
        name = request.name
        if name is None and verb == "create" and isinstance(request.data, dict):
            name = (request.data.get("metadata") or {}).get("name")  # what a create names, for the request log
        accept = request.headers.get("Accept", "")
        return ApiCall(method=method, path=request.url.path, verb=verb, group=spec.group, resource=plural,
                       namespace=request.namespace, name=name,
                       user_agent=request.headers.get("User-Agent", ""), at=time.monotonic(),
                       metadata_only="as=PartialObjectMetadata" in accept and "g=meta.k8s.io" in accept)

    def _dispatch(self, request: rendering.Request, spec: ResourceSpec, call: ApiCall) -> tuple[Any, int]:
        if request.subresource not in (None, "status") or (
                request.subresource == "status" and "status" not in spec.subresources):
            raise ApiError(404, "NotFound", f"subresource {request.subresource!r} of {spec.plural} is not served")
        namespace = request.namespace if spec.namespaced else None
        if spec.namespaced is False and request.namespace:
            raise ApiError(404, "NotFound", f"{spec.plural} is cluster-scoped")
        body = request.data if isinstance(request.data, (dict, list)) else None
        if call.verb in ("create", "update", "patch"):
            self._admitting = request.params.get("fieldValidation") or self.default_field_validation
            self._admitting_patch = call.verb == "patch"
            try:
                return self._write(request, spec, call, namespace, body)
            finally:
                self._admitting, self._admitting_patch = None, False
        if call.verb == "get":
            return self._visible(self.get_object(spec, namespace, request.name or "")), 200
        if call.verb == "list":
            return self.list_objects(spec, namespace, request.params.get("labelSelector", ""),
                                     request.params.get("fieldSelector", "")), 200
        if call.verb == "delete":
            return self.delete_object(spec, namespace, request.name or "", body if isinstance(body, dict) else {}), 200
        raise ApiError(405, "MethodNotAllowed", f"{call.method} is not supported on {call.path}")

    def _write(self, request: rendering.Request, spec: ResourceSpec, call: ApiCall, namespace: str | None,
               body: Any) -> tuple[Any, int]:
        if call.verb == "create":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the request body must be a JSON object")
            return self.create_object(spec, namespace, body), 201
        if call.verb == "update":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the request body must be a JSON object")
            return self.replace_object(spec, namespace, request.name or "", body,
                                       status_only=request.subresource == "status"), 200
        if call.verb == "patch":
            content_type = request.headers.get("Content-Type", "application/merge-patch+json").split(";")[0]
            return self.patch_object(spec, namespace, request.name or "", body, content_type,
                                     status_only=request.subresource == "status"), 200
        raise ApiError(405, "MethodNotAllowed", f"{call.method} is not supported on {call.path}")

    # ---- object operations (synchronous on the server loop: atomic with respect to other requests)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _key(self, spec: ResourceSpec, namespace: str | None, name: str) -> ObjectKey:
        return (spec.key, namespace if spec.namespaced else None, name)

    def _visible(self, obj: dict[str, Any]) -> dict[str, Any]:
        return copy.deepcopy(obj)

    def get_object(self, spec: ResourceSpec, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._store.get(self._key(spec, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{spec.plural}.{spec.group or "core"} "{name}" not found')
        return obj

    def list_objects(self, spec: ResourceSpec, namespace: str | None, label_selector: str = "",
                     field_selector: str = "") -> dict[str, Any]:
        items = [self._visible(obj) for obj in self._matching(spec, namespace, label_selector, field_selector)]
        return {"apiVersion": spec.api_version, "kind": f"{spec.kind}List",
                "metadata": {"resourceVersion": str(self._rv), "continue": ""}, "items": items}

    def _matching(self, spec: ResourceSpec, namespace: str | None, label_selector: str,
                  field_selector: str) -> list[dict[str, Any]]:
        label_preds = parse_label_selector(label_selector) if label_selector else []
        field_preds = parse_field_selector(field_selector) if field_selector else []
        return [
            obj for (res, ns, _), obj in sorted(self._store.items(), key=lambda kv: (kv[0][1] or "", kv[0][2]))
            if res == spec.key and (namespace is None or ns == namespace)
            if all(p(obj.get("metadata", {}).get("labels") or {}) for p in label_preds)
            if all(p(obj) for p in field_preds)
        ]

    def create_object(self, spec: ResourceSpec, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if spec.namespaced:
            body_ns = meta.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise ApiError(400, "BadRequest", f"the namespace of the provided object ({body_ns}) does not "
                                                  f"match the namespace sent on the request ({namespace})")
            namespace = namespace or body_ns or "default"
            meta["namespace"] = namespace
            if self.strict_namespaces and (("", "v1", "namespaces"), None, namespace) not in self._store:
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
        else:
            meta.pop("namespace", None)
            namespace = None
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise ApiError(422, "Invalid", f"{spec.kind}: metadata.name: Required value: name or "
                                               f"generateName is required")
            meta["name"] = prefix + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        key = self._key(spec, namespace, meta["name"])
        if key in self._store:
            raise ApiError(409, "AlreadyExists", f'{spec.plural}.{spec.group or "core"} "{meta["name"]}" '
                                                 f"already exists")
        obj["apiVersion"], obj["kind"] = spec.api_version, spec.kind
        if "status" in spec.subresources:
            obj.pop("status", None)  # status is written through the subresource only
        for system_field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(system_field, None)
        obj = self._admit(spec, None, obj)
        meta = obj["metadata"]
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_rv(), creationTimestamp=now_rfc3339(),
                    generation=1)
        self._store[key] = obj
        self._emit(spec, "ADDED", obj)
        return self._visible(obj)

    def replace_object(self, spec: ResourceSpec, namespace: str | None, name: str, body: dict[str, Any],
                       status_only: bool = False) -> dict[str, Any]:
        old = self.get_object(spec, namespace, name)
        self._check_precondition(spec, old, body)
        if status_only:
            new = copy.deepcopy(old)
            new["status"] = copy.deepcopy(body.get("status"))
            if new["status"] is None:
                new.pop("status")
        else:
            new = copy.deepcopy(body)
            new["metadata"] = {**copy.deepcopy(body.get("metadata") or {})}
            if "status" in spec.subresources or "status" not in new:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        return self._commit(spec, old, new)

    def patch_object(self, spec: ResourceSpec, namespace: str | None, name: str, patch: Any,
                     content_type: str, status_only: bool = False) -> dict[str, Any]:
        old = self.get_object(spec, namespace, name)
        if content_type == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            try:
                patched = jsonpatch.apply_patch(copy.deepcopy(old), patch)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise ApiError(422, "Invalid", f"the server rejected our request: test failed: {exc}") from exc
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise ApiError(422, "Invalid", f"the JSON patch cannot be applied: {exc}") from exc
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json",
                              "application/json"):
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            self._check_precondition(spec, old, patch)
            patched = merge_patch(old, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the patch type {content_type!r} is not supported")
        if status_only:
            new = copy.deepcopy(old)
            if "status" in patched:
                new["status"] = patched["status"]
            else:
                new.pop("status", None)
        else:
            new = patched
            if "status" in spec.subresources:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        return self._commit(spec, old, new)

    def _check_precondition(self, spec: ResourceSpec, old: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {spec.plural}.{spec.group or "core"} '
                                            f'"{old["metadata"]["name"]}": the object has been modified; please '
                                            f"apply your changes to the latest version and try again")

    def _commit(self, spec: ResourceSpec, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """Store a new version: keep the system fields, bump what the apiserver bumps, emit the event."""
        old_meta, meta = old["metadata"], new.setdefault("metadata", {})
        for fixed in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation",
                      "resourceVersion"):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
            else:
                meta.pop(fixed, None)
        new["apiVersion"], new["kind"] = spec.api_version, spec.kind
        new = self._admit(spec, old, new)
        meta = new["metadata"]
        if new == old:
            return self._visible(old)  # no-op: no new resourceVersion, no watch event
        if _strip_system(new) != _strip_system(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        meta["resourceVersion"] = self._next_rv()
        key = self._key(spec, meta.get("namespace"), meta["name"])
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(spec, key, new)
        self._store[key] = new
        self._emit(spec, "MODIFIED", new)
        return self._visible(new)

    def delete_object(self, spec: ResourceSpec, namespace: str | None, name: str,
                      options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        obj = self.get_object(spec, namespace, name)
        options = options or {}
        precondition = (options.get("preconditions") or {})
        if precondition.get("uid") and precondition["uid"] != obj["metadata"]["uid"]:
            raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: {precondition['uid']}")
        if precondition.get("resourceVersion") and precondition["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "Precondition failed: resourceVersion in precondition")
        key = self._key(spec, namespace, name)
        orphan = options.get("propagationPolicy") == "Orphan" or options.get("orphanDependents") is True
        if obj["metadata"].get("finalizers"):
            if obj["metadata"].get("deletionTimestamp"):
                return self._visible(obj)
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._store[key] = new
            self._emit(spec, "MODIFIED", new)
            return self._visible(new)
        return self._remove(spec, key, copy.deepcopy(obj), orphan=orphan)

    def _remove(self, spec: ResourceSpec, key: ObjectKey, last: dict[str, Any], orphan: bool = False) -> dict[str, Any]:
        self._store.pop(key, None)
        last["metadata"]["resourceVersion"] = self._next_rv()
        self._emit(spec, "DELETED", last)
        uid = last["metadata"]["uid"]
        if orphan:
            self._orphan_dependents(uid)
        else:
            self._schedule_gc(uid)
        return self._visible(last)

    # ---- garbage collection (background propagation)

    def _schedule_gc(self, owner_uid: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._collect(owner_uid)
            return
        loop.call_later(self.gc_delay, self._collect, owner_uid)

    def _collect(self, owner_uid: str) -> None:
        live_uids = {obj["metadata"]["uid"] for obj in self._store.values()}
        for (res, ns, name), obj in list(self._store.items()):
            owners = obj.get("metadata", {}).get("ownerReferences") or []
            if any(ref.get("uid") == owner_uid for ref in owners):
                if not any(ref.get("uid") in live_uids for ref in owners):
                    if (res, ns, name) in self._store:
                        self.delete_object(self._specs[res], ns, name)

    def _orphan_dependents(self, owner_uid: str) -> None:
        for (res, ns, name), obj in list(self._store.items()):
            owners = obj.get("metadata", {}).get("ownerReferences") or []
            if any(ref.get("uid") == owner_uid for ref in owners):
                kept = [ref for ref in owners if ref.get("uid") != owner_uid]
                self.patch_object(self._specs[res], ns, name, {"metadata": {"ownerReferences": kept or None}},
                                  "application/merge-patch+json")

    # ---- watching

    def _emit(self, spec: ResourceSpec, event_type: str, obj: dict[str, Any]) -> None:
        event = {"type": event_type, "object": copy.deepcopy(obj)}
        history = self._history[spec.key]
        if len(history) == history.maxlen:
            self._compacted[spec.key] = history[0][0]
        history.append((int(obj["metadata"]["resourceVersion"]), event))
        for queue in list(self._watchers[spec.key]):
            queue.put_nowait(event)

    async def _stream_watch(self, request: rendering.Request, spec: ResourceSpec) -> aiohttp.web.StreamResponse:
        params = request.params
        namespace = request.namespace if spec.namespaced else None
        label_preds = parse_label_selector(params.get("labelSelector", "")) if params.get("labelSelector") else []
        field_selector = params.get("fieldSelector", "")
        if request.name:
            field_selector = ",".join(filter(None, [field_selector, f"metadata.name={request.name}"]))
        field_preds = parse_field_selector(field_selector) if field_selector else []

        def visible(obj: Mapping[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            return ((namespace is None or meta.get("namespace") == namespace)
                    and all(p(meta.get("labels") or {}) for p in label_preds)
                    and all(p(obj) for p in field_preds))

        since = params.get("resourceVersion", "")
        initial: list[dict[str, Any]] = []
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        if since in ("", "0"):
            initial = [{"type": "ADDED", "object": self._visible(o)}
                       for o in self._matching(spec, namespace, params.get("labelSelector", ""), field_selector)]
            if params.get("sendInitialEvents") == "true":
                initial.append({"type": "BOOKMARK", "object": {
                    "apiVersion": spec.api_version, "kind": spec.kind,
                    "metadata": {"resourceVersion": str(self._rv),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}})
        else:
            history = self._history[spec.key]
            compacted = self._compacted.get(spec.key, 0)
            if not since.isdigit() or int(since) < compacted:
                initial = [{"type": "ERROR", "object": ApiError(410, "Expired", f"too old resource version: "
                                                                                f"{since} ({compacted})").status()}]
                queue = None  # type: ignore[assignment]
            else:
                initial = [event for rv, event in history if rv > int(since) and visible(event["object"])]
        if queue is not None:
            self._watchers[spec.key].add(queue)

        as_table = self._wants_table(request, spec)

        def encoded(event: dict[str, Any]) -> bytes:
            if as_table and event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                obj = event["object"]
                event = {"type": event["type"], "object": self._table(
                    spec, [obj], (obj.get("metadata") or {}).get("resourceVersion", ""), params)}
            return json.dumps(event).encode() + b"\n"

        assert request._raw_request is not None
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        deadline = asyncio.get_running_loop().time() + timeout if timeout else None
        try:
            for event in initial:
                await response.write(encoded(event))
            while queue is not None and not self._closing:
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=min(remaining or 1.0, 1.0))
                except asyncio.TimeoutError:
                    continue
                if event is None:
                    break
                if visible(event["object"]):
                    await response.write(encoded(event))
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            if queue is not None:
                self._watchers[spec.key].discard(queue)
        return response

    # ---- server-side printing (kubectl get)

    @staticmethod
    def _wants_table(request: rendering.Request, spec: ResourceSpec) -> bool:
        accept = request.headers.get("Accept", "")
        return bool(spec.printer_columns) and "as=Table" in accept and "g=meta.k8s.io" in accept

    @staticmethod
    def _cell(obj: Mapping[str, Any], column: tuple[str, str, str, str, int]) -> Any:
        _, type_, path, _, _ = column
        value: Any = obj
        for part in re.findall(r"[^.\[\]]+", path):
            if isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            elif isinstance(value, Mapping) and part in value:
                value = value[part]
            else:
                return None
        if value is None or isinstance(value, (dict, list)) and type_ != "string":
            return None
        if type_ == "date":
            from lanex_operator.cli.views import age  # the apiserver prints dates as kubectl's AGE

            return age(str(value))
        if type_ == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
        if type_ == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        return value if not isinstance(value, (dict, list)) else json.dumps(value)

    def _table(self, spec: ResourceSpec, objects: list[dict[str, Any]], resource_version: str,
               params: Mapping[str, str]) -> dict[str, Any]:
        """A meta.k8s.io/v1 Table of `objects`: Name, then the printer columns (Age is one of them)."""
        columns = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name must be unique within a namespace."}]
        columns += [{"name": name, "type": type_, "format": "", "description": description, "priority": priority}
                    for name, type_, _, description, priority in spec.printer_columns]
        include = params.get("includeObject", "Metadata")
        rows = []
        for obj in objects:
            row: dict[str, Any] = {"cells": [obj["metadata"]["name"], *(self._cell(obj, c) for c in spec.printer_columns)]}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                 "metadata": obj["metadata"]}
            rows.append(row)
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
                "columnDefinitions": columns, "rows": rows}

    # ---- pods/log: what the kubelet would serve

    def write_pod_log(self, namespace: str, pod: str, container: str, text: str) -> None:
        """Append to a container's log (the simulated kubelet's part)."""
        self._pod_logs.setdefault((namespace, pod, container), bytearray()).extend(text.encode())

    def _log_key(self, request: rendering.Request, spec: ResourceSpec) -> tuple[str, str, str]:
        """(namespace, pod, container) of a log request, with the apiserver's errors for a bad one."""
        namespace, name = request.namespace or "", request.name or ""
        pod = self.get_object(spec, namespace, name)
        containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        container = request.params.get("container") or (containers[0] if len(containers) == 1 else None)
        if container is None:
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, "
                                              f"choose one of: {containers}")
        if container not in containers:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        return namespace, name, container

    def _container_ended(self, key: tuple[str, str, str]) -> bool:
        namespace, name, container = key
        pod = self._store.get(self._key(self._specs[("", "v1", "pods")], namespace, name))
        if pod is None:
            return True
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return True
        return any(s.get("name") == container and "terminated" in (s.get("state") or {})
                   for s in (pod.get("status") or {}).get("containerStatuses") or [])

    async def _serve_log(self, request: rendering.Request, key: tuple[str, str, str]) -> aiohttp.web.StreamResponse:
        """The log so far; with follow=true, streamed (chunked) as it grows until the container ends."""
        if request.params.get("follow") not in ("true", "1"):
            return aiohttp.web.Response(body=self._log_window(bytes(self._pod_logs.get(key, b"")), request.params),
                                        content_type="text/plain")
        assert request._raw_request is not None
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        await response.prepare(request._raw_request)
        sent = 0
        try:
            while not self._closing:
                log = self._pod_logs.get(key, b"")
                if len(log) > sent:
                    await response.write(bytes(log[sent:]))
                    sent = len(log)
                elif self._container_ended(key):
                    break
                else:
                    await asyncio.sleep(0.02)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError, RuntimeError):
            pass
        return response

    @staticmethod
    def _log_window(log: bytes, params: Mapping[str, str]) -> bytes:
        """`tailLines` and `limitBytes` as the kubelet applies them: the last N lines, then at most
        `limitBytes` bytes from the start of those (so a cut removes the newest end); bad values: 400."""
        for option in ("tailLines", "limitBytes"):
            value = params.get(option)
            if value is not None and (not value.lstrip("-").isdigit() or int(value) < (0 if option == "tailLines" else 1)):
                raise ApiError(400, "BadRequest", f"{option}: Invalid value: {value!r}: must be "
                                                  f"{'greater than or equal to 0' if option == 'tailLines' else 'greater than 0'}")
        if params.get("tailLines") is not None:
            lines = log.splitlines(keepends=True)
            count = int(params["tailLines"])
            log = b"".join(lines[max(0, len(lines) - count):])
        if params.get("limitBytes") is not None:
            log = log[: int(params["limitBytes"])]
        return log

    def compact(self) -> None:
        """Forget all watch history, like etcd compaction: older resourceVersions get 410 Gone."""
        for key, history in self._history.items():
            history.clear()
            self._compacted[key] = self._rv

    def close_watches(self) -> None:
        """End every open watch stream (clients reconnect with their last resourceVersion)."""
        for queues in self._watchers.values():
            for queue in list(queues):
                queue.put_nowait(None)

    def shutdown(self) -> None:
        self._closing = True
        self.close_watches()

    # ---- direct access for tests and the cluster simulation (same code paths, same events)

    def find_spec(self, api_version: str | None = None, kind: str | None = None,
                  plural: str | None = None) -> ResourceSpec:
        for spec in self._specs.values():
            if plural is not None and spec.plural == plural and (api_version is None or spec.api_version == api_version):
                return spec
            if kind is not None and spec.kind == kind and (api_version is None or spec.api_version == api_version):
                return spec
        raise KeyError(f"no resource served for apiVersion={api_version!r} kind={kind!r} plural={plural!r}")

    def objects(self, plural: str, namespace: str | None = None, api_version: str | None = None,
                label_selector: str = "") -> list[dict[str, Any]]:
        spec = self.find_spec(api_version=api_version, plural=plural)
        return [self._visible(o) for o in self._matching(spec, namespace, label_selector, "")]

    def requests_of(self, user_agent_prefix: str) -> list[ApiCall]:
        return [c for c in self.calls if c.user_agent.startswith(user_agent_prefix)]


def _json(payload: Any, status: int) -> aiohttp.web.Response:
    return aiohttp.web.json_response(payload, status=status)

