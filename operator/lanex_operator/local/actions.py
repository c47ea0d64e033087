"""Stopping and deleting local experiments: `lanex stop NAME --workspace` and `lanex delete NAME --workspace`
(and the same actions in `lanex ui --allow-actions`, which call these functions).

Stop asks the experiment's `lanex run` to stop the way Ctrl-C in its terminal does (SIGINT to the
runner recorded in state.json): training checkpoints its step and ends, and running the same file
again resumes. Delete removes the experiment's state and logs and applies its retention: the
volume goes only when it created it and `retention.dataset` is Delete, its snapshots only when
`retention.snapshots` is Delete (the defaults keep both, as on the cluster).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Optional

from lanex_operator.local.runner import STATE_FILE, LocalRunError, Workspace, runner_alive
from lanex_operator.local.sweep import SWEEPS_DIR, workspace_sweeps


def _state(space: Workspace, name: str) -> dict[str, Any]:
    path = space.experiment_dir(name) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LocalRunError(f"no local experiment {name} in workspace {space.root}") from None
    except ValueError as error:
        raise LocalRunError(f"{path}: not valid JSON ({error})") from None


def _sweep_of(workspace: Path, name: str) -> Optional[str]:
    for sweep in workspace_sweeps(workspace):
        if any(row.get("name") == name for row in sweep.get("trials") or []):
            return sweep.get("name")
    return None


def _interrupt(state: dict[str, Any], what: str) -> str:
    pid = (state.get("runner") or {}).get("pid")
    try:
        os.kill(int(pid), signal.SIGINT)  # what Ctrl-C in the run's terminal sends
    except ProcessLookupError:
        raise LocalRunError(f"{what} is not running (its `lanex run` has ended)") from None
    return (f"asked the `lanex run` of {what} (pid {pid}) to stop: training checkpoints its step and ends; "
            "run the same file again to resume")


def stop_local(workspace: Path, name: str) -> str:
    """Stop the `lanex run` of an experiment or a sweep; what was done, in one line."""
    space = Workspace(workspace.resolve())
    sweep_dir = space.root / SWEEPS_DIR / name
    if (sweep_dir / STATE_FILE).is_file():
        trials = [row.get("name") for sweep in workspace_sweeps(space.root) if sweep.get("name") == name
                  for row in sweep.get("trials") or []]
        candidates = [sweep_dir / "dataset" / STATE_FILE] + [space.experiment_dir(t) / STATE_FILE for t in trials if t]
        for path in candidates:
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if runner_alive(state) is True:
                return _interrupt(state, f"sweep {name}")
        raise LocalRunError(f"sweep {name} is not running")
    state = _state(space, name)
    sweep = _sweep_of(space.root, name)
    if sweep is not None:
        raise LocalRunError(f"{name} is a trial of sweep {sweep}, which runs all its trials in one `lanex run`: "
                            f"stop the sweep ({sweep}); its early-stopping rule stops single trials")
    alive = runner_alive(state)
    if alive is not True:
        phase = state.get("phase") or "-"
        raise LocalRunError(f"experiment {name} is not running (phase {phase})"
                            + ("" if alive is False else ": its `lanex run` is on another host"))
    return _interrupt(state, f"experiment {name}")


def delete_local(workspace: Path, name: str) -> str:
    """Delete a local experiment that is not running, applying its retention; what was kept and removed."""
    space = Workspace(workspace.resolve())
    state = _state(space, name)
    sweep = _sweep_of(space.root, name)
    if sweep is not None:
        raise LocalRunError(f"{name} is a trial of sweep {sweep}: the sweep's retention (keepBest) decides what stays")
    if runner_alive(state) is not False:
        raise LocalRunError(f"experiment {name} is running (or its runner cannot be told from here): stop it first")
    retention = state.get("retention") or {}
    keeps, removes = [], [f"experiment state and logs {space.experiment_dir(name)}"]
    volume = ((state.get("steps") or {}).get("dataset") or {}).get("volume")
    if volume:
        if state.get("ownsVolume") and retention.get("dataset") == "Delete":
            shutil.rmtree(volume, ignore_errors=True)
            removes.append(f"volume {volume} (retention.dataset: Delete)")
        else:
            why = "retention.dataset: " + retention.get("dataset", "Retain") if state.get("ownsVolume") else "not its own"
            keeps.append(f"volume {volume} ({why})")
    store = space.snapshots
    for info in store.list():
        if info.experiment != name:
            continue
        if retention.get("snapshots") == "Delete":
            store.delete(info.name)
            removes.append(f"snapshot {info.name} (retention.snapshots: Delete)")
        else:
            keeps.append(f"snapshot {info.name} (retention.snapshots: {retention.get('snapshots', 'Retain')})")
    shutil.rmtree(space.experiment_dir(name))
    return (f"deleted experiment {name}; keeps: {'; '.join(keeps) or 'nothing'}; removes: {'; '.join(removes)}")
