"""What every data source of `lanex ui` gives the routes, and the change it reports.

A source keeps the current records in memory and reports what changed since its last scan, so
that the pages are served from memory and one scanner (files) or one watch per resource kind (the
API server) serves any number of open pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol


@dataclass(frozen=True)
class Change:
    """Something about one experiment or sweep changed. `row`: its new home-page row (None: it is gone);
    `row_changed`: whether that row differs from the last one reported; `parts`: what changed
    (`state`, `progress`, `log`), so that a page following the run reads only those files."""

    kind: str  # "experiment" or "sweep"
    name: str
    row: Optional[dict[str, Any]]
    row_changed: bool = True
    parts: frozenset[str] = field(default_factory=frozenset)


class ActionError(Exception):
    """An action the source refuses (not running, not found, ...): shown to the user as it is."""


class Source(Protocol):
    kind: str  # "local" or "cluster"
    where: str  # the workspace or namespace, for the page header

    def home(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]: ...

    def experiment(self, name: str) -> Optional[dict[str, Any]]: ...

    def sweep(self, name: str) -> Optional[dict[str, Any]]: ...

    def compare(self, names: list[str]) -> dict[str, Any]: ...

    def scan(self, timeout: float) -> list[Change]: ...

    def steps(self, name: str, offset: int) -> tuple[list[list[float]], int]: ...

    def log(self, name: str, offset: int, follower: Any) -> tuple[list[str], int]: ...

    def image(self, name: str, path: str) -> Optional[Path]: ...

    def samples(self, name: str) -> list[dict[str, Any]]: ...

    def stop(self, name: str) -> str: ...

    def delete(self, name: str) -> str: ...

    def close(self) -> None: ...
