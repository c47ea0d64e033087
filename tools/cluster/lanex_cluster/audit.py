"""Reading kube-apiserver's audit log (JSON lines, written with apiserver.py's policy).

Tests use it to check every call the operator made against the chart's RBAC, the benchmark to time
the operator's reactions; both read the same completed calls the same way.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any


def event_time(event: dict[str, Any]) -> float:
    """When the apiserver finished the call (microsecond stageTimestamp), as a Unix time."""
    return datetime.datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()


def completed_calls(audit_log: Path, user: str | None = None) -> list[dict[str, Any]]:
    """The audit events of finished calls (stage ResponseComplete), oldest first; only `user`'s when given."""
    events = (json.loads(line) for line in audit_log.read_text().splitlines() if line)
    calls = [e for e in events if e.get("stage") == "ResponseComplete"
             and (user is None or (e.get("user") or {}).get("username") == user)]
    return sorted(calls, key=event_time)
