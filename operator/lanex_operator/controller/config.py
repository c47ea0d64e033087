"""Timing settings of the operator, in one typed place.

Why it exists: production wants patient intervals (minutes), tests and the benchmark want the same
code to move in fractions of a second. Every interval is a field with its unit and purpose, read
once from `LANEX_OPERATOR_*` environment variables at start-up.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

ENV_PREFIX = "LANEX_OPERATOR_"


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """Intervals and timeouts in seconds, and the request budget of progress reads."""

    # Re-check an experiment at least this often even without any event (missed events, timeouts).
    resync_seconds: float = 30.0
    # Re-run a failed preflight check (a missing storage class may be installed later).
    preflight_retry_seconds: float = 60.0
    # Fail with DatasetFailed when the dataset PVC is not Bound within this time.
    dataset_bound_timeout_seconds: float = 1800.0
    # Fail with TrainingFailed when the MPIJob has no condition this long after its creation: its
    # controller refused it (a ValidationError Event, quoted) or no mpi-operator runs.
    mpijob_condition_timeout_seconds: float = 600.0
    # Fail the step when one of its pods stays this long in ImagePullBackOff, ErrImagePull,
    # CreateContainerConfigError or Unschedulable (the reason is shown in the step's condition at once).
    # Generous by default: a cluster autoscaler may take minutes to add a GPU node for an Unschedulable pod.
    pod_stuck_timeout_seconds: float = 1800.0
    # Fail the step when a container of one of its pods is in CrashLoopBackOff after this many restarts
    # (the kubelet's back-off doubles from 10 s: 5 restarts are about 5 minutes of crashing).
    crash_loop_restarts: float = 5.0
    # Fail with TrainingFailed when an admitted MPIJob has a condition but never ran (its launcher never
    # started, e.g. workers that never become Ready under WaitForWorkersReady) this long after creation.
    training_start_timeout_seconds: float = 1800.0
    # Fail at Preflight when what the experiment uses (classes, APIs, Secrets, a LocalQueue) is still
    # missing or not opted in this long after the experiment was created.
    preflight_timeout_seconds: float = 3600.0
    # At most one read of a waiting step's pods, or of a pending claim's Events, per child in this
    # interval; the first read waits until the step has been waiting this long.
    stuck_check_seconds: float = 20.0
    # Delay before retrying after a retryable API error (5xx, 409, 429, connection errors).
    retry_delay_seconds: float = 5.0
    # How long a successful existence check (storage class, snapshot class, APIs) is trusted.
    preflight_cache_seconds: float = 10.0
    # Timeout of one API request made by the reconciler.
    request_timeout_seconds: float = 30.0
    # While Kueue holds an MPIJob suspended, the Queued condition's waiting time moves in steps of this
    # size (one status write per step at most, however long the queue).
    queued_message_seconds: float = 30.0
    # kopf: watch-stream server timeout and backoffs between API retries (comma-separated).
    watch_server_timeout_seconds: float = 300.0
    api_error_backoffs: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    # Read each training experiment's progress (the launcher's log tail) this often.
    progress_interval_seconds: float = 30.0
    # All progress reads and writes together, across experiments: at most this many API requests per
    # second (a token bucket holding as many tokens); under load each experiment is simply read less often.
    progress_requests_per_second: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read `LANEX_OPERATOR_<FIELD>` (upper case) for each field; errors name the variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            variable = ENV_PREFIX + field.name.upper()
            raw = environ.get(variable)
            if raw is None:
                continue
            try:
                if field.name == "api_error_backoffs":
                    values[field.name] = tuple(float(part) for part in raw.split(",") if part.strip())
                else:
                    values[field.name] = float(raw)
            except ValueError as exc:
                raise ValueError(f"{variable}={raw!r}: expected a number of seconds") from exc
            if field.name != "api_error_backoffs" and float(values[field.name]) <= 0:  # type: ignore[arg-type]
                raise ValueError(f"{variable}={raw!r}: must be > 0")
        return cls(**values)  # type: ignore[arg-type]
