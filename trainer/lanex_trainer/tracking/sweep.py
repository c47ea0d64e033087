"""A sweep's MLflow parent run: its trials' runs are its children (tag `mlflow.parentRunId`).

Why it exists: exactly one party creates the parent run, so that parallel trials never race to make
two: the local sweep runner, or on a cluster a Job the operator starts with the sweep (`lanex mlflow
sweep-run`; the operator itself never holds the Secret with the server's credentials). The parent is
tagged with the sweep's uid (`lanex.sweepUid`), so creating it again (a Job retried, a sweep run again)
finds the one that exists. A trial that starts before the parent exists looks it up by that uid in
the background (`tracking.sender`), and the sweep adopts the trials it knows at its end.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Optional

from lanex_trainer.tracking.run import flat_params
from lanex_trainer.tracking.server import SWEEP_ROLE, MlflowServer, link


def start_sweep_run(server: MlflowServer, experiment_name: str, sweep: str, sweep_uid: str,
                    params: Mapping[str, Any], tags: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Find or create the parent run of sweep `sweep` (namespace/name) with uid `sweep_uid`; its link."""
    experiment_id = server.experiment_id(experiment_name)
    run_id = server.find_run(experiment_id, {"lanex.role": SWEEP_ROLE, "lanex.sweepUid": sweep_uid})
    if run_id is None:
        all_tags = {**(tags or {}), "lanex.role": SWEEP_ROLE, "lanex.sweepUid": sweep_uid, "lanex.sweep": sweep}
        run_id = server.create_run(experiment_id, sweep.rsplit("/", 1)[-1], all_tags, int(time.time() * 1000))
        server.log_records(run_id, [{"kind": "params", "values": flat_params(params)}])
    else:
        server.set_status(run_id, "RUNNING")
    return link(server.tracking_uri, experiment_id, run_id)


def find_sweep_run(server: MlflowServer, experiment_name: str, sweep_uid: str) -> Optional[dict[str, str]]:
    """The link of the sweep's parent run, or None when there is none (yet)."""
    experiment_id = server.experiment_id(experiment_name)
    run_id = server.find_run(experiment_id, {"lanex.role": SWEEP_ROLE, "lanex.sweepUid": sweep_uid})
    return None if run_id is None else link(server.tracking_uri, experiment_id, run_id)


def end_sweep_run(server: MlflowServer, parent: Mapping[str, str], sweep_uid: str, status: str,
                  tags: Optional[Mapping[str, str]] = None) -> list[str]:
    """Adopt every trial run of the sweep (tag `lanex.sweepUid`) that has no parent yet, tag the result, end the
    parent run; the runs adopted."""
    adopted = []
    for run_id, run_tags in server.find_runs(parent["experimentId"], {"lanex.sweepUid": sweep_uid}):
        if run_id != parent["runId"] and run_tags.get("mlflow.parentRunId") != parent["runId"]:
            server.set_tags(run_id, {"mlflow.parentRunId": parent["runId"]})
            adopted.append(run_id)
    if tags:
        server.set_tags(parent["runId"], tags)
    server.set_status(parent["runId"], status, int(time.time() * 1000))
    return adopted
