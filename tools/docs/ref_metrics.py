"""Reference page of the operator's Prometheus metrics, read from the operator's own registry.

`OperatorMetrics` registers every metric in a registry of its own; the page lists what that registry
exposes, so a metric added in code appears here with its help text.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from lanex_operator.controller.metrics import OperatorMetrics

import cells

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def metrics() -> list[tuple[str, str, tuple[str, ...], str]]:
    """(name, type, label names, help) of every metric the operator serves, sorted by name."""
    registry = OperatorMetrics().registry
    found = []
    # The registry's collectors are the metric objects; their label names are only on the objects
    # (a labelled metric without series exposes no sample to read them from).
    for collector in list(registry._collector_to_names):  # noqa: SLF001 - no public listing of collectors
        if isinstance(collector, (Counter, Gauge, Histogram)):
            family = next(iter(collector.describe()))
            found.append((family.name, family.type, tuple(collector._labelnames), family.documentation))  # noqa: SLF001
    return sorted(found)


def page() -> str:
    rows = []
    for name, kind, labels, documentation in metrics():
        exposed = ", ".join(f"`{name}{suffix}`" for suffix in SUFFIXES.get(kind, ("",)))
        rows.append((exposed, kind, ", ".join(f"`{label}`" for label in labels) or "-", cells.text(documentation)))
    return "\n".join([
        "# Metrics",
        "",
        cells.generated_note("the operator's metrics registry (`operator/lanex_operator/controller/metrics.py`)"),
        "The operator serves them on port 9090 (`/metrics`; `lanex operator --metrics-port`, chart value "
        "`metrics.port`; a ServiceMonitor with `metrics.serviceMonitor.enabled`). The `lanex_training_*` series "
        "exist only while an experiment trains and are removed when it ends or is deleted, so labels never pile "
        "up; a value the trainer does not know has no series rather than a 0. Counters and histograms also have "
        "prometheus-client's `_created` series (when the series began). Dashboards: "
        "[Prometheus and Grafana](../guides/prometheus-grafana.md).",
        "",
        cells.table(("Metric", "Type", "Labels", "Meaning"), rows),
    ])
