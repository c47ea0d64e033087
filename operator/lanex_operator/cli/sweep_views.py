"""How a LaneSweep is shown: the trials table (live leaderboard locally, `lanex describe` on the cluster),
the one-line summary of `lanex get`, and the compare view of several runs.

Why it exists: local sweeps and the cluster's write the same status (`api.sweep.LaneSweepStatus`,
camelCase), so one set of functions presents both. Pure: dicts in, rows or rich tables out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

TRIAL_HEADERS = ("TRIAL", "PARAMETERS", "PHASE", "PROGRESS", "VAL", "OBJECTIVE", "SNAPSHOT")


def number(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def parameters_text(parameters: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in parameters.items()) or "-"


def trial_rows(status: Mapping[str, Any]) -> list[list[str]]:
    """One row per trial of `status.trials`, best trial marked with `*`."""
    best = (status.get("bestTrial") or {}).get("name")
    rows = []
    for trial in status.get("trials") or []:
        phase = trial.get("phase") or "Pending"
        if trial.get("reason") and phase in ("Stopped", "Failed"):
            phase += f" ({trial['reason']})"
        if trial.get("deleted"):
            phase += ", deleted"
        rows.append([("* " if trial.get("name") == best else "  ") + str(trial.get("name")),
                     parameters_text(trial.get("parameters") or {}), phase, trial.get("progress") or "-",
                     number(trial.get("valMetric")), number(trial.get("objective")), trial.get("snapshot") or "-"])
    return rows


def leaderboard(status: Mapping[str, Any], title: Optional[str] = None) -> Any:
    """The trials table as a rich Table (the live leaderboard of `lanex run sweep.yaml`)."""
    from rich.table import Table

    counts = status.get("counts") or {}
    caption = ", ".join(f"{counts[k]} {k}" for k in ("pending", "running", "succeeded", "failed", "stopped")
                        if counts.get(k))
    table = Table(title=title, caption=caption or None, box=None, header_style="bold")
    for header in TRIAL_HEADERS:
        table.add_column(header, no_wrap=True)
    for row in trial_rows(status):
        table.add_row(*row)
    return table


def best_line(status: Mapping[str, Any], metric: str) -> str:
    best = status.get("bestTrial") or {}
    if not best:
        return "best trial: none (no trial succeeded)"
    return (f"best trial: {best['name']} ({parameters_text(best.get('parameters') or {})}), "
            f"test {metric} {number(best.get('objective'))}" + (f", snapshot {best['snapshot']}" if best.get("snapshot") else ""))


def run_dict(run: Any) -> dict[str, Any]:
    """A `lanex.ComparedRun` in the shape `compare_rows` (and the dashboard's compare page) reads."""
    return {"name": run.name, "phase": run.phase, "parameters": run.parameters, "training": run.training,
            "results": run.results.model_dump(), "history": [h.model_dump() for h in run.history]}


def compare_rows(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Parameters and metrics side by side: one column per run, one row per parameter or metric.

    Each run: {"name", "parameters": {...}, "results": {"accuracy", "fp", "fn"}, "history": [...]}
    """
    headers = ["", *(str(run["name"]) for run in runs)]
    keys: list[str] = []
    for run in runs:
        keys += [key for key in run.get("parameters") or {} if key not in keys]
    rows = [[key, *(str((run.get("parameters") or {}).get(key, "-")) for run in runs)] for key in keys]
    for metric in ("accuracy", "fp", "fn"):
        rows.append([f"test {metric}", *(number((run.get("results") or {}).get(metric)) for run in runs)])
    rows.append(["best val accuracy", *(number(max((h.get("accuracy") for h in run.get("history") or []
                                                    if isinstance(h.get("accuracy"), (int, float))), default=None))
                                        for run in runs)])
    rows.append(["epochs validated", *(str(len(run.get("history") or [])) for run in runs)])
    rows.append(["phase", *(str(run.get("phase") or "-") for run in runs)])
    return headers, rows


# --- the cluster's sweeps: `lanex get`, `lanex describe` ----------------------------------------

SWEEP_HEADERS = ("NAME", "PHASE", "TRIALS", "RUNNING", "BEST", "OBJECTIVE", "AGE")


def sweep_row(obj: Mapping[str, Any], now: Any) -> list[str]:
    """The printer columns of `kubectl get lxs`."""
    from lanex_operator.cli.views import age

    status = obj.get("status") or {}
    best = status.get("bestTrial") or {}
    return [obj["metadata"]["name"], status.get("phase") or "-", str(status.get("trialCount") or "-"),
            str((status.get("counts") or {}).get("running", 0)), best.get("name") or "-", number(best.get("objective")),
            age(obj["metadata"].get("creationTimestamp"), now)]


def sweep_describe_lines(cluster: Any, obj: Mapping[str, Any], now: Any) -> list[str]:
    """`lanex describe` of a LaneSweep: spec summary, status, dataset, trials table, best trial, Events."""
    from lanex_operator.cli.views import _condition_rows, _event_time, _events_for, _section, _time_lines, age

    meta, status, spec = obj["metadata"], obj.get("status") or {}, obj.get("spec") or {}
    out = [f"Name:          {meta['name']}", f"Namespace:     {meta.get('namespace', cluster.namespace)}",
           "Kind:          LaneSweep", f"Phase:         {status.get('phase') or '-'}"]
    out += [f"{label + ':':15}{status[key]}" for key, label in (("reason", "Reason"), ("message", "Message"))
            if status.get(key)]
    algorithm = spec.get("algorithm") or {}
    out += ["Spec:", "  Parameters:  " + "; ".join(
        f"{p.get('path')}={p['values']}" if "values" in p else f"{p.get('path')} in [{p.get('min')}, {p.get('max')}]"
        f" ({p.get('scale', 'linear')})" for p in spec.get("parameters") or []),
        f"  Algorithm:   {algorithm.get('type', 'grid')}"
        + (f" (seed {algorithm.get('seed', 0)}, {algorithm['maxTrials']} trials)" if algorithm.get("maxTrials") else ""),
        f"  Parallelism: {spec.get('parallelism', 1)}",
        f"  Objective:   {(spec.get('objective') or {}).get('metric', 'accuracy')} on the test split"]
    if spec.get("earlyStopping"):
        stopping = spec["earlyStopping"]
        out.append(f"  Early stop:  median rule on validation {spec.get('valMetric', 'accuracy')} from epoch "
                   f"{stopping.get('minEpochs', 2)} ({stopping.get('minTrials', 2)} other trials at least)")
    out += _section("Conditions", ("TYPE", "STATUS", "REASON", "LAST TRANSITION", "MESSAGE"), _condition_rows(status))
    out += ["Dataset:", f"  Claim:       {status.get('datasetClaim') or '-'}",
            f"  Prepare Job: {status.get('prepareJob') or '-'}",
            f"  Snapshot:    {status.get('datasetSnapshot') or '-'}"]
    out += _section("Trials", TRIAL_HEADERS, trial_rows(status))
    out.append(best_line(status, (spec.get("objective") or {}).get("metric", "accuracy")))
    out += _time_lines(status, now)
    involved = {("LaneSweep", meta["name"])}
    rows = [[age(_event_time(e), now), e.get("type", ""), e.get("reason", ""),
             f"{(e.get('involvedObject') or {}).get('kind')}/{(e.get('involvedObject') or {}).get('name')}",
             (e.get("message") or "").replace("\n", " ")] for e in _events_for(cluster, involved)]
    out += _section("Events", ("AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"), rows)
    return out


# --- compare ---------------------------------------------------------------------------------------


def differing_training(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per run, the training fields (dotted camelCase) whose values differ between the runs compared."""
    def flat(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            elif not isinstance(value, list):
                out[f"{prefix}{key}"] = value
        return out

    flattened = {name: flat(training) for name, training in specs.items()}
    keys = sorted({key for values in flattened.values() for key in values})
    differ = [key for key in keys if len({repr(values.get(key)) for values in flattened.values()}) > 1]
    if len(flattened) == 1:
        differ = [key for key in ("learningRate", "batchSize", "epochs", "backbone", "workers") if key in keys]
    return {name: {key: values.get(key) for key in differ} for name, values in flattened.items()}
