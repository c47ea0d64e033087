"""Prometheus metrics of the operator (kopf has no exporter of its own).

Why it exists: an operator that runs unattended must say how many experiments sit in each phase,
how long each step takes, how often reconciling fails, how many snapshots it took, and how its
storage-tier moves went (`lanex_storage_pool_changes_total{result}` and their duration). The
metrics live in their own `CollectorRegistry` (no process-global state, several operators can run
in one test process) and are served by prometheus-client's HTTP server.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from lanex_operator.azure.storage_tier import StorageTierMetrics

PHASES = ("Pending", "ProvisioningDataset", "Downloading", "SharingVolume", "Training", "Snapshotting",
          "Succeeded", "Failed", "Stopped")
STEP_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600)


class OperatorMetrics:
    """The operator's metrics and the bookkeeping behind the per-phase gauge."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.experiments = Gauge("lanex_experiments", "LaneExperiments known to the operator, by phase.",
                                 ["phase"], registry=self.registry)
        self.step_seconds = Histogram("lanex_step_duration_seconds", "Duration of lifecycle steps, by step and outcome.",
                                      ["step", "outcome"], buckets=STEP_BUCKETS, registry=self.registry)
        self.reconcile_errors = Counter("lanex_reconcile_errors_total", "Reconcile passes that hit an error, by kind.",
                                        ["kind"], registry=self.registry)
        self.snapshots_taken = Counter("lanex_snapshots_taken_total", "VolumeSnapshots that became ready to use.",
                                       registry=self.registry)
        self.transitions = Counter("lanex_phase_transitions_total", "Phase transitions, by target phase.",
                                   ["phase"], registry=self.registry)
        self.storage_tier = StorageTierMetrics(self.registry)
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()
        for phase in PHASES:
            self.experiments.labels(phase=phase).set(0)

    def observe_phase(self, uid: str, phase: str | None) -> None:
        """Record the phase of one experiment (None forgets it, e.g. once deleted)."""
        with self._lock:
            previous = self._phases.pop(uid, None)
            if phase is not None:
                self._phases[uid] = phase
            if previous != phase and phase is not None and previous is not None:
                self.transitions.labels(phase=phase).inc()
            counts = {p: 0 for p in PHASES}
            for value in self._phases.values():
                counts[value] = counts.get(value, 0) + 1
        for name, count in counts.items():
            self.experiments.labels(phase=name).set(count)

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Serve /metrics on `port` in a background thread; returns the server (call .shutdown())."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server
