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
