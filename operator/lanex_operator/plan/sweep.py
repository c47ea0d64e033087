"""The decisions of a sweep, defined once for the operator and `lanex run`: early stopping, the best trial.

Why it exists: the sweep controller (cluster) and the local sweep runner see their trials
differently (LaneExperiment status versus files in a workspace) but must decide the same way.
Both reduce what they see to `TrialView`s (name, phase, validation history, objective value)
and ask this module. Everything here is pure.

Median stopping rule (as in Google Vizier and Katib): a running trial whose validation metric at
epoch e (e >= minEpochs) is worse than the median of the other trials' values at the same epoch
is stopped. e is the trial's newest epoch that at least `minTrials` other trials have reached, so
a trial is judged as soon as there is something to compare it with, and only on its newest data.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Protocol, TypeVar

from lanex_operator.api.models import MAX_WORKERS, LaneExperimentSpec
from lanex_operator.api.sweep import (
    MAX_TRIALS,
    MLFLOW_PARENT_ANNOTATION,
    SWEEP_KIND,
    SWEEP_LABEL,
    EarlyStoppingSpec,
    LaneSweepSpec,
    dataset_snapshot_name,
    mlflow_job_name,
    natural_goal,
    trial_name,
)
from lanex_operator.plan.steps import (TERMINATION_LOG, ContainerRun, DerivedName, TrackingContext, derived_names,
                                       mlflow_secret_env)

FINAL_PHASES = ("Succeeded", "Failed", "Stopped")


class Ranked(Protocol):
    """What ranking needs of a trial."""

    @property
    def name(self) -> str: ...
    @property
    def phase(self) -> Optional[str]: ...
    @property
    def objective(self) -> Optional[float]: ...


RankedT = TypeVar("RankedT", bound=Ranked)


@dataclasses.dataclass(frozen=True)
class TrialView:
    """What a sweep knows about one trial."""

    name: str
    parameters: Mapping[str, Any]
    phase: Optional[str]  # None: not created yet
    history: tuple[Mapping[str, Any], ...] = ()  # validationHistory entries: {"epoch", "accuracy", "fp", "fn"}
    objective: Optional[float] = None  # the objective metric on the test split, once known
    snapshot: Optional[str] = None

    @property
    def final(self) -> bool:
        return self.phase in FINAL_PHASES

    @property
    def started(self) -> bool:
        return self.phase is not None


def value_at(history: Iterable[Mapping[str, Any]], epoch: int, metric: str) -> Optional[float]:
    """The newest value of `metric` recorded for `epoch` (a resumed run may validate an epoch twice)."""
    found = None
    for entry in history:
        if entry.get("epoch") == epoch and isinstance(entry.get(metric), (int, float)):
            found = float(entry[metric])
    return found


def latest(history: Sequence[Mapping[str, Any]], metric: str) -> Optional[float]:
    for entry in reversed(history):
        if isinstance(entry.get(metric), (int, float)):
            return float(entry[metric])
    return None


def _worse(value: float, median: float, goal: str) -> bool:
    return value < median if goal == "maximize" else value > median


@dataclasses.dataclass(frozen=True)
class StopDecision:
    trial: str
    epoch: int
    value: float
    median: float
    compared: int

    def message(self, metric: str) -> str:
        return (f"validation {metric} {self.value:.4f} at epoch {self.epoch} is worse than the median "
                f"{self.median:.4f} of {self.compared} other trial(s) at that epoch (median stopping rule)")


def median_stop(trial: TrialView, others: Sequence[TrialView], rule: EarlyStoppingSpec,
                metric: str) -> Optional[StopDecision]:
    """Whether the median rule stops `trial` now (None: keep it running)."""
    if trial.final or not trial.history:
        return None
    goal = natural_goal(metric)
    epochs = sorted({int(e["epoch"]) for e in trial.history if isinstance(e.get("epoch"), int)}, reverse=True)
    for epoch in epochs:
        if epoch < rule.min_epochs:
            break
        value = value_at(trial.history, epoch, metric)
        if value is None:
            continue
        peers = [v for v in (value_at(o.history, epoch, metric) for o in others if o.name != trial.name)
                 if v is not None]
        if len(peers) < rule.min_trials:
            continue  # not enough to compare at this epoch yet; an earlier epoch may have enough
        median = statistics.median(peers)
        if _worse(value, median, goal):
            return StopDecision(trial.name, epoch, value, median, len(peers))
        return None  # judged on its newest comparable epoch: it keeps running
    return None


def to_stop(spec: LaneSweepSpec, trials: Sequence[TrialView]) -> list[StopDecision]:
    """Every running trial the sweep's early stopping stops now, in trial order."""
    if spec.early_stopping is None:
        return []
    running = [t for t in trials if t.started and not t.final]
    decisions = (median_stop(t, trials, spec.early_stopping, spec.val_metric) for t in running)
    return [d for d in decisions if d is not None]


def ranked(spec: LaneSweepSpec, trials: Sequence[TrialView]) -> list[TrialView]:
    """Succeeded trials with an objective value, best first (ties: the earlier trial first)."""
    return ranked_by(spec.objective.direction(), trials)


def ranked_by(goal: str, trials: Sequence[RankedT]) -> list[RankedT]:
    """`ranked` for a goal (maximize or minimize) and any trials with a name, phase and objective
    (the sweep's views, or the rows of `status.trials` that the Python API ranks)."""
    scored = [t for t in trials if t.phase == "Succeeded" and t.objective is not None]
    order = {t.name: i for i, t in enumerate(trials)}
    return sorted(scored, key=lambda t: ((-t.objective if goal == "maximize" else t.objective), order[t.name]))  # type: ignore[operator]


def best_trial(spec: LaneSweepSpec, trials: Sequence[TrialView]) -> Optional[TrialView]:
    ranking = ranked(spec, trials)
    return ranking[0] if ranking else None


def retained(spec: LaneSweepSpec, trials: Sequence[TrialView]) -> set[str]:
    """Names of the trials that retention keeps (all of them when keepBest is unset)."""
    keep = spec.retention.keep_best
    if keep is None:
        return {t.name for t in trials}
    return {t.name for t in ranked(spec, trials)[:keep]}


def unfinished(trials: Sequence[TrialView]) -> int:
    return sum(1 for t in trials if t.started and not t.final)


def counts(trials: Sequence[TrialView], running_phases: Optional[set[str]] = None) -> dict[str, int]:
    """`status.counts`: pending (not created, or not yet training), running, succeeded, failed, stopped."""
    result = {"pending": 0, "running": 0, "succeeded": 0, "failed": 0, "stopped": 0}
    for trial in trials:
        if trial.phase in FINAL_PHASES:
            result[str(trial.phase).lower()] += 1
        elif trial.phase is None or trial.phase == "Pending":
            result["pending"] += 1
        else:
            result["running"] += 1
    return result


def next_trials(spec: LaneSweepSpec, trials: Sequence[TrialView]) -> list[TrialView]:
    """The not-yet-created trials to start now so that at most `parallelism` are unfinished (in order)."""
    room = spec.parallelism - unfinished(trials)
    return [t for t in trials if not t.started][:max(0, room)]


def tracking_context(meta: Mapping[str, Any]) -> TrackingContext:
    """A LaneExperiment's sweep as its metadata tells it (label lanex.dev/sweep, the LaneSweep owning it, the
    parent run annotation), for its MLflow run; empty for an experiment of its own."""
    sweep = (meta.get("labels") or {}).get(SWEEP_LABEL)
    if not sweep:
        return TrackingContext()
    owner = next((ref for ref in meta.get("ownerReferences") or []
                  if ref.get("kind") == SWEEP_KIND and ref.get("name") == sweep), {})
    return TrackingContext(sweep=sweep, sweep_uid=owner.get("uid"),
                           parent_run_id=(meta.get("annotations") or {}).get(MLFLOW_PARENT_ANNOTATION))


def mlflow_sweep_run(namespace: str, sweep: str, sweep_uid: str, spec: LaneSweepSpec, image: str,
                     image_pull_policy: str, end: Optional[str] = None, tags: Optional[Mapping[str, str]] = None,
                     termination_log: Optional[str] = TERMINATION_LOG, wait_seconds: Optional[float] = None,
                     ) -> ContainerRun:
    """What the sweep's MLflow Job runs (and `lanex run` locally): `lanex mlflow sweep-run`, finding or creating the
    parent run (or, with `end`, ending it), with the server's credentials from credentialsSecretRef. None of it is
    secret."""
    mlflow = spec.template.tracking.mlflow if spec.template.tracking is not None else None
    if mlflow is None:
        raise ValueError(f"sweep {sweep}: spec.template.tracking.mlflow is not set")
    params = {"parameters": [p.model_dump(mode="json", by_alias=True, exclude_none=True) for p in spec.parameters],
              "algorithm": spec.algorithm.model_dump(mode="json", by_alias=True, exclude_none=True),
              "objective": spec.objective.model_dump(mode="json", by_alias=True, exclude_none=True),
              "parallelism": spec.parallelism, "valMetric": spec.val_metric}
    command = ["lanex", "mlflow", "sweep-run", "--tracking-uri", mlflow.tracking_uri,
               "--experiment-name", mlflow.experiment_name, "--sweep", f"{namespace}/{sweep}", "--sweep-uid", sweep_uid,
               "--params", json.dumps(params, sort_keys=True, separators=(",", ":")),
               "--tags", json.dumps({"lanex.image": image, **(tags or {})}, sort_keys=True, separators=(",", ":"))]
    if termination_log is not None:
        command += ["--termination-log", termination_log]
    if wait_seconds is not None:
        command += ["--wait-seconds", f"{wait_seconds:g}"]
    if end is not None:
        command += ["--end", end]
    return ContainerRun(image, image_pull_policy, tuple(command), (), (), secret_env=mlflow_secret_env(spec.template))


# --- names: everything derived from a sweep's name ------------------------------------------------


def sweep_derived_names(name: str, template: Optional[LaneExperimentSpec] = None,
                        trials: int = MAX_TRIALS, workers: int = MAX_WORKERS) -> tuple[DerivedName, ...]:
    """Every name derived from sweep `name`, with the strictest rule each must follow: the sweep and its label,
    the last of `trials` trials `<name>-NNN` with every name derived from it at `workers` workers, and the
    experiment plan of its dataset `<name>-dataset` (its PVC, prepare Job and pods, the dataset snapshot) with
    every name derived from that, since the operator plans the dataset as an experiment of that name."""
    spec = template if template is not None else LaneExperimentSpec.model_validate({"dataset": {"synthetic": {}}})
    found = [DerivedName(SWEEP_KIND, name, "DNS-1035 label"), DerivedName(f"label {SWEEP_LABEL}", name, "label value"),
             DerivedName("dataset VolumeSnapshot", dataset_snapshot_name(name), "DNS-1123 subdomain")]
    for end in (False, True):  # the MLflow parent run's Jobs (their pods' job-name label) and pods
        job = mlflow_job_name(name, end)
        found += [DerivedName("MLflow Job", job, "DNS-1123 label"),
                  DerivedName("MLflow Job's pod", f"{job}-xxxxx", "DNS-1123 label")]
    last = trial_name(name, trials - 1)
    found += [DerivedName(f"trial {last}: {item.what}", item.value, item.rule)
              for item in derived_names(last, spec, workers=workers)]
    dataset = dataset_snapshot_name(name)
    found += [DerivedName(f"dataset plan {dataset}: {item.what}", item.value, item.rule)
              for item in derived_names(dataset, spec, workers=workers)]
    return tuple(found)


def longest_valid_sweep_name_length() -> int:
    """The longest sweep name whose derived names all follow their rules at the most trials and workers the API
    allows (the API's MAX_SWEEP_NAME_LENGTH must equal it: a test checks)."""
    length = 1
    while all(item.problem() is None for item in sweep_derived_names("a" * (length + 1))):
        length += 1
    return length
