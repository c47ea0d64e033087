"""Prometheus metrics of the operator (kopf has no exporter of its own).

Why it exists: an operator that runs unattended must say how many experiments sit in each phase,
how long each step takes, how often reconciling fails, how many snapshots it took, and how its
storage-tier moves went (`lanex_storage_pool_changes_total{result}` and their duration), and how
each training run is doing (`lanex_training_*{namespace,experiment}`: series that exist only while
the experiment trains, so labels never pile up). The metrics live in their own `CollectorRegistry`
(no process-global state, several operators can run in one test process) and are served by
prometheus-client's HTTP server.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from lanex_operator.azure.storage_tier import StorageTierMetrics

if TYPE_CHECKING:
    from lanex_operator.api.status import TrainingProgress

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
        self.training = TrainingGauges(self.registry)
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


class TrainingGauges:
    """Per-experiment gauges of a training run, labelled namespace and experiment.

    `observe` sets them from the newest progress; `forget` removes every series of the experiment
    (when training ends or the experiment is deleted). A value the trainer does not know (null) has
    no series rather than a made-up 0.
    """

    LABELS = ("namespace", "experiment")

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, documentation: str) -> Gauge:
            return Gauge(name, documentation, self.LABELS, registry=registry)

        self.progress_ratio = gauge("lanex_training_progress_ratio", "Share of the run's optimizer steps done (0..1).")
        self.epoch = gauge("lanex_training_epoch", "Current epoch (1-based).")
        self.images_per_second = gauge("lanex_training_images_per_second", "Training throughput over all ranks.")
        self.loss = gauge("lanex_training_loss", "Smoothed training loss.")
        self.validation_accuracy = gauge("lanex_training_validation_accuracy",
                                         "TuSimple accuracy of the newest validation (0..1).")
        self.eta_seconds = gauge("lanex_training_eta_seconds", "Estimated seconds until training ends.")
        self.data_wait_ratio = gauge("lanex_training_data_wait_ratio",
                                     "Share of step time spent waiting for data (0..1).")
        self.gpu_utilization = gauge("lanex_training_gpu_utilization_percent",
                                     "GPU utilisation averaged over the ranks (NVML, as the trainer reads it).")
        self.stalled = gauge("lanex_training_stalled", "1 while the Stalled condition is True, else 0.")
        self._values = (self.progress_ratio, self.epoch, self.images_per_second, self.loss, self.validation_accuracy,
                        self.eta_seconds, self.data_wait_ratio, self.gpu_utilization)
        self._known: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def observe(self, namespace: str, experiment: str, progress: "TrainingProgress") -> None:
        readings = [p.utilization_percent for p in progress.gpus or [] if p.utilization_percent is not None]
        values = (
            progress.step / progress.steps if progress.steps > 0 else None,
            progress.epoch,
            progress.images_per_second,
            progress.loss,
            progress.validation.accuracy if progress.validation is not None else None,
            progress.eta_seconds,
            progress.data_wait_fraction,
            sum(readings) / len(readings) if readings else None,
        )
        with self._lock:
            self._known.add((namespace, experiment))
            for gauge, value in zip(self._values, values):
                if value is None:
                    self._remove(gauge, namespace, experiment)
                else:
                    gauge.labels(namespace=namespace, experiment=experiment).set(float(value))

    def set_stalled(self, namespace: str, experiment: str, stalled: bool) -> None:
        with self._lock:
            self._known.add((namespace, experiment))
            self.stalled.labels(namespace=namespace, experiment=experiment).set(1.0 if stalled else 0.0)

    def forget(self, namespace: str, experiment: str) -> None:
        with self._lock:
            self._known.discard((namespace, experiment))
            for gauge in (*self._values, self.stalled):
                self._remove(gauge, namespace, experiment)

    def experiments(self) -> set[tuple[str, str]]:
        """(namespace, experiment) of every experiment that has series now."""
        with self._lock:
            return set(self._known)

    @staticmethod
    def _remove(gauge: Gauge, namespace: str, experiment: str) -> None:
        try:
            gauge.remove(namespace, experiment)
        except KeyError:
            pass  # no series yet
