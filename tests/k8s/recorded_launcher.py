"""A launcher log recorded from a real local run of the trainer, for kwok to serve on the cluster.

Pods on the real control plane run nothing (kwok fakes them), yet the operator reads the
launcher's log for its progress lines and its results. So the session first trains for real: a
tiny synthetic experiment through `lanex run` (the same `lanex launch` -> torchrun -> `lanex train`
that a launcher container runs), and its output, turned into the CRI log format a kubelet keeps, is
what `kubectl logs` returns for every launcher pod (a kwok ClusterLogs object). The numbers the
operator reads are therefore real ones, from this very checkout's trainer.
"""

from __future__ import annotations

import datetime
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import yaml

LAUNCHER_CONTAINER = "launcher"  # controller/builders.py names the launcher's container so
RECORDED_SPEC: dict[str, Any] = {
    "apiVersion": "lanex.dev/v1alpha1", "kind": "LaneExperiment", "metadata": {"name": "recorded"},
    "spec": {
        "dataset": {"synthetic": {"clips": 8, "seed": 0, "testClips": 4}, "size": "1Gi"},
        "training": {"backend": "torch", "backbone": "small", "workers": 1, "gpusPerWorker": 0, "batchSize": 4,
                     "loaderWorkers": 0, "useWorkers": False, "validation": {"enabled": True, "batchSize": 4},
                     "epochs": 2, "height": 144, "width": 400, "largeShm": False},
        "snapshot": {"enabled": False},
    },
}


def cri_log(text: str, start: datetime.datetime) -> str:
    """`text` as a kubelet's CRI log file: `<RFC 3339 time> stdout F <line>` per line."""
    lines = []
    for index, line in enumerate(text.split("\n")):
        if not line:
            continue
        stamp = (start + datetime.timedelta(milliseconds=index)).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
        lines.append(f"{stamp} stdout F {line}")
    return "\n".join(lines) + "\n"


def record_launcher_log(workdir: pathlib.Path) -> pathlib.Path:
    """Train the tiny experiment for real and return its launcher output as a CRI log file."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_file = workdir / "recorded.yaml"
    spec_file.write_text(yaml.safe_dump(RECORDED_SPEC, sort_keys=False))
    lanex = pathlib.Path(sys.executable).with_name("lanex")
    workspace = workdir / "workspace"
    result = subprocess.run([str(lanex), "run", str(spec_file), "--workspace", str(workspace)],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"the recording run failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    train_log = workspace / "experiments" / "recorded" / "logs" / "train.log"
    recorded = workdir / "launcher.log"
    recorded.write_text(cri_log(train_log.read_text(), datetime.datetime.now(datetime.timezone.utc)))
    shutil.rmtree(workspace / "volumes", ignore_errors=True)  # the dataset and checkpoints are not needed
    return recorded


def serve_for_launchers(cluster: Any, log_file: pathlib.Path) -> None:
    """Make kwok answer every launcher container's log with the recording (all namespaces)."""
    cluster.apply_objects([{
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterLogs", "metadata": {"name": "recorded-launcher"},
        "spec": {"logs": [{"containers": [LAUNCHER_CONTAINER], "logsFile": str(log_file)}]},
    }])
