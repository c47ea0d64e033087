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
from collections.abc import Iterable, Mapping
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


def end_sweep_run(server: MlflowServer, run_id: str, status: str, children: Iterable[str] = (),
                  tags: Optional[Mapping[str, str]] = None) -> None:
    """Adopt `children` (trial run ids; harmless for those already adopted), tag the result, end the run."""
    for child in children:
        server.set_tags(child, {"mlflow.parentRunId": run_id})
    if tags:
        server.set_tags(run_id, tags)
    server.set_status(run_id, status, int(time.time() * 1000))
