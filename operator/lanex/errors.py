"""The errors the `lanex` API raises, in one place: each says what went wrong and what to do.

- `InvalidSpecError`: a spec, file or argument that cannot be used; the message names the field
  (`spec.training.workers: must be >= 1 (got 0)`). Nothing ran. `ExperimentFileError` is the one
  about a file.
- `RunRefused`: a local run that cannot start (a secret is missing, the workspace holds a run of
  another spec under that name); nothing ran. `ExperimentBusy`: another run of it is going on.
- `LocalRunError`: a local step failed; running it again continues from that step.
  `Interrupted`: the run was stopped (Ctrl-C, `RunHandle.stop`); running it again resumes.
- `ClusterError`: an API request failed (`.status` has the HTTP code, `.not_found`, ...);
  `NoClusterConfig`: no kubeconfig to connect with; `WaitTimeout`: a bounded wait ran out;
  `NotReached`: a wait ended in another phase, which the experiment will never leave.
- `SnapshotError`, `SecretSourceError`: a local snapshot or `--secret` source that cannot be used.
"""

from __future__ import annotations

from typing import Any, Optional

from lanex_operator.api.files import ExperimentFileError
from lanex_operator.api.models import InvalidSpecError
from lanex_operator.client.cluster import ClusterError, NoClusterConfig, WaitTimeout
from lanex_operator.local.runner import ExperimentBusy, Interrupted, LocalRunError
from lanex_operator.local.secrets import SecretSourceError
from lanex_operator.local.snapshots import SnapshotError


class RunRefused(LocalRunError):
    """A local run that cannot start as asked; nothing ran (the CLI's exit code 2)."""


class NotReached(ClusterError):
    """A wait that ended because the experiment (or sweep) is in another phase for good, or was deleted."""

    def __init__(self, message: str, phase: Optional[str] = None, record: Optional[Any] = None) -> None:
        super().__init__(message)
        self.phase = phase
        self.record = record


__all__ = [
    "ClusterError",
    "ExperimentBusy",
    "ExperimentFileError",
    "Interrupted",
    "InvalidSpecError",
    "LocalRunError",
    "NoClusterConfig",
    "NotReached",
    "RunRefused",
    "SecretSourceError",
    "SnapshotError",
    "WaitTimeout",
]
