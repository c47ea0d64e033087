"""The MLflow tracking server as lanex talks to it: experiments, runs, journal records, sweep parent runs.

Why it exists: one place knows MLflow's client (the pinned `mlflow-skinny`) and its errors; the
sender, `lanex mlflow` and the local sweep use it. It is imported only where tracking is on (the
client takes about a second to import).

Errors are sorted in two: `Unreachable` (no answer, a timeout, a 5xx, refused credentials: try again
later, keep the records) and `Refused` (the server answered that this request can never succeed, e.g.
a parameter whose value changed: skip that record, say so once).

Credentials are MLflow's own environment variables (MLFLOW_TRACKING_TOKEN, or
MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD), read by the client: lanex never holds them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

# The client's own retries block the caller for minutes (7 retries, backoff factor 2, 120 s timeout);
# lanex retries in its background sender instead, so each request tries once and gives up quickly. And
# the client would print the run's URL on stdout when a run ends, among rank 0's progress lines.
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                   "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
# The server's answers that no retry changes (mlflow.protos.databricks_pb2 error codes).
REFUSED_CODES = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
                           "MALFORMED_REQUEST", "RESOURCE_DOES_NOT_EXIST"})
# log_batch limits of the MLflow REST API.
MAX_BATCH_METRICS, MAX_BATCH_PARAMS, MAX_BATCH_TAGS = 1000, 100, 100
SWEEP_ROLE = "sweep"


class Unreachable(RuntimeError):
    """No usable answer from the server (down, slow, 5xx, credentials refused): retry later."""


class Refused(RuntimeError):
    """The server answered that this request can never succeed: skip it."""


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI served by the tracking server."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def link(tracking_uri: str, experiment_id: str, run_id: str) -> dict[str, str]:
    """What `lanex get -o json` and the UI show under `mlflow`."""
    return {"runId": run_id, "experimentId": experiment_id, "url": run_url(tracking_uri, experiment_id, run_id)}


def _classified(error: BaseException) -> RuntimeError:
    code = getattr(error, "error_code", None)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if code in REFUSED_CODES:
        return Refused(f"{code}: {text}")
    return Unreachable(text[:300])


class MlflowServer:
    """One tracking server, through MlflowClient."""

    def __init__(self, tracking_uri: str, client: Any = None) -> None:
        self.tracking_uri = tracking_uri
        if client is None:
            for name, value in CLIENT_DEFAULTS.items():
                os.environ.setdefault(name, value)
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri)
        self.client = client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as error:  # MlflowException, requests' and urllib3's errors, OSError
            raise _classified(error) from error

    # -- experiments and runs --------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created when there is none (two creators at once: both get the one)."""
        found = self._call("get_experiment_by_name", name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self._call("create_experiment", name))
        except Refused:  # RESOURCE_ALREADY_EXISTS: another run created it meanwhile
            found = self._call("get_experiment_by_name", name)
            if found is None:
                raise
            return str(found.experiment_id)

    def create_run(self, experiment_id: str, run_name: Optional[str], tags: Mapping[str, str],
                   start_time_ms: int) -> str:
        run = self._call("create_run", experiment_id, start_time=start_time_ms, tags=dict(tags), run_name=run_name)
        return str(run.info.run_id)

    def find_runs(self, experiment_id: str, tags: Mapping[str, str], limit: int = 1000) -> list[tuple[str, dict]]:
        """The live runs of the experiment that carry every one of `tags`, oldest first, with their tags."""
        condition = " and ".join(f"tags.`{key}` = '{_quoted(value)}'" for key, value in tags.items())
        runs = self._call("search_runs", [experiment_id], filter_string=condition, max_results=limit,
                          order_by=["attributes.start_time ASC"])
        return [(str(run.info.run_id), dict(run.data.tags)) for run in runs]

    def find_run(self, experiment_id: str, tags: Mapping[str, str]) -> Optional[str]:
        """The oldest live run of the experiment that carries every one of `tags`, or None."""
        found = self.find_runs(experiment_id, tags, limit=1)
        return found[0][0] if found else None

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call("log_batch", run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def set_status(self, run_id: str, status: str, end_time_ms: Optional[int] = None) -> None:
        if status == "RUNNING":
            self._call("update_run", run_id, status="RUNNING")
        else:
            self._call("set_terminated", run_id, status=status, end_time=end_time_ms)

    # -- journal records -------------------------------------------------------------------------
    def log_records(self, run_id: str, records: Iterable[Mapping[str, Any]]) -> None:
        """Metrics, params and tags of consecutive records, in as few log_batch calls as the API allows."""
        from mlflow.entities import Metric, Param, RunTag

        limits = {"metrics": MAX_BATCH_METRICS, "params": MAX_BATCH_PARAMS, "tags": MAX_BATCH_TAGS}
        batch: dict[str, list[Any]] = {kind: [] for kind in limits}

        def flush() -> None:
            if any(batch.values()):
                self._call("log_batch", run_id, **{kind: list(items) for kind, items in batch.items()})
            for items in batch.values():
                items.clear()

        for record in records:
            kind = record["kind"]
            if kind not in limits:
                raise ValueError(f"not a batch record: {kind}")
            for key, value in (record.get("values") or {}).items():
                if len(batch[kind]) >= limits[kind]:
                    flush()
                if kind == "metrics":
                    batch[kind].append(Metric(key, float(value), int(record["timestamp"]), int(record["step"])))
                elif kind == "params":
                    batch[kind].append(Param(key, str(value)))
                else:
                    batch[kind].append(RunTag(key, str(value)))
        flush()

    def upload(self, run_id: str, local: Path, artifact_path: Optional[str]) -> bool:
        """Upload a file or a folder; False when it is not there (nothing to upload)."""
        if local.is_dir():
            self._call("log_artifacts", run_id, str(local), artifact_path)
            return True
        if local.is_file():
            self._call("log_artifact", run_id, str(local), artifact_path)
            return True
        return False

    # -- reading back (tests, `lanex mlflow`) ------------------------------------------------------
    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self._call("get_run", run_id).data.tags)


def _quoted(value: str) -> str:
    # A single quote ends an MLflow filter string; the values lanex filters on are names and uids.
    return str(value).replace("'", "")
