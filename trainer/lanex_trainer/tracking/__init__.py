"""MLflow tracking of training runs and sweeps, never at the cost of training.

- `run.RunTracker`: rank 0 of `lanex train` logs parameters, metrics per step and epoch, test results,
  artifacts and tags through it; every call only journals a record (`journal`), a background thread
  (`sender`) sends them, and what the server did not take is sent later (`run.replay`).
- `sweep`: a sweep's parent run, found or created once by the sweep's single creator (the local sweep,
  or the operator's Job `lanex mlflow sweep-run`), and its trials adopted as children.
- `server`: the one module that talks to MLflow's client.

Nothing here imports MLflow's client until a server is contacted.
"""

from lanex_trainer.tracking.run import RunTracker, add_tags, replay, run_link

__all__ = ["RunTracker", "add_tags", "replay", "run_link"]
