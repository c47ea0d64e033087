"""lanex: lane-detection training experiments, on this machine or on Kubernetes, from Python.

```python
import lanex

exp = lanex.Experiment.from_file("examples/quickstart.yaml")   # validated as `lanex run` validates it
exp.set("training.epochs", 2)                                    # InvalidSpecError names a bad field

record = lanex.Workspace(".lanex").run(exp)                     # like `lanex run`, blocking
record.phase, record.results.accuracy, record.snapshot

cluster = lanex.Cluster(namespace="default")                     # like kubectl: kubeconfig, context
cluster.submit(exp)
for record in cluster.watch(exp.name):                           # phase and progress as they change
    print(record.phase, record.progress and record.progress.summary())
```

The `lanex` command is a thin layer over this package: what it prints comes from these classes.
Importing it loads neither torch nor the Kubernetes client (a `Cluster` loads the latter).
"""

from lanex.cluster import Cluster, Submitted
from lanex.errors import (
    ClusterError,
    ExperimentBusy,
    ExperimentFileError,
    Interrupted,
    InvalidSpecError,
    LocalRunError,
    NoClusterConfig,
    NotReached,
    RunRefused,
    SecretSourceError,
    SnapshotError,
    WaitTimeout,
)
from lanex.records import (
    ClusterSnapshot,
    ComparedRun,
    Deletion,
    EpochRecord,
    ExperimentRecord,
    RunResults,
    SweepRecord,
    WatchEvent,
)
from lanex.specs import Experiment, Sweep
from lanex.workspace import RunHandle, Workspace
from lanex_operator.api.models import LaneExperimentSpec
from lanex_operator.api.status import Phase, Results, TrainingProgress, ValidationResult
from lanex_operator.api.sweep import BestTrial, LaneSweepSpec, SweepPhase, TrialRecord
from lanex_operator.local.snapshots import SnapshotInfo as Snapshot

__all__ = [
    "BestTrial",
    "Cluster",
    "ClusterError",
    "ClusterSnapshot",
    "ComparedRun",
    "Deletion",
    "EpochRecord",
    "Experiment",
    "ExperimentBusy",
    "ExperimentFileError",
    "ExperimentRecord",
    "Interrupted",
    "InvalidSpecError",
    "LaneExperimentSpec",
    "LaneSweepSpec",
    "LocalRunError",
    "NoClusterConfig",
    "NotReached",
    "Phase",
    "Results",
    "RunHandle",
    "RunRefused",
    "RunResults",
    "SecretSourceError",
    "Snapshot",
    "SnapshotError",
    "Submitted",
    "Sweep",
    "SweepPhase",
    "SweepRecord",
    "TrainingProgress",
    "TrialRecord",
    "ValidationResult",
    "WaitTimeout",
    "WatchEvent",
    "Workspace",
]
