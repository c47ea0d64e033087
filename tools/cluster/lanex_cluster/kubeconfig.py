"""Kubeconfig files with the certificates embedded, so one file is all a client needs."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from .certs import KeyPair

CONTEXT = "lanex-cluster"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig_for(server: str, ca_cert: Path, user: KeyPair | None = None, token: str | None = None,
                   namespace: str = "default") -> dict[str, Any]:
    """A kubeconfig for `server` as a client certificate's identity or a bearer token's."""
    credentials: dict[str, str] = {}
    if user is not None:
        credentials = {"client-certificate-data": _b64(user.cert), "client-key-data": _b64(user.key)}
    elif token is not None:
        credentials = {"token": token}
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": CONTEXT, "preferences": {},
        "clusters": [{"name": CONTEXT, "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}],
        "users": [{"name": CONTEXT, "user": credentials}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace}}],
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
