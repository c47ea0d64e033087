"""Running the operator: the kopf runtime, its liveness endpoint and the Prometheus endpoint.

Why it exists: `lanex operator` (the CLI), the container image, tests and the benchmark all start
the operator the same way. Run exactly one replica (kopf peering is not leader election; use a
Deployment with strategy Recreate). Progress lives in the experiments' status and annotations.

    python -m lanex_operator.controller.runtime --all-namespaces --liveness-port 8080 --metrics-port 9090
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from collections.abc import Sequence

import kopf

from lanex_operator.controller.config import OperatorConfig
from lanex_operator.controller.handlers import OperatorState, register
from lanex_operator.controller.metrics import OperatorMetrics


def build_operator(config: OperatorConfig | None = None,
                   metrics: OperatorMetrics | None = None) -> tuple[kopf.OperatorRegistry, OperatorState]:
    """A fresh registry with all handlers and the state they share."""
    state = OperatorState(config=config or OperatorConfig.from_env(), metrics=metrics or OperatorMetrics())
    registry = kopf.OperatorRegistry()
    register(registry, state)
    return registry, state


async def operate(namespaces: Sequence[str] | None, liveness_port: int | None, metrics_port: int | None,
                  config: OperatorConfig | None = None, stop_flag: threading.Event | None = None,
                  ready_flag: threading.Event | None = None,
                  built: tuple[kopf.OperatorRegistry, OperatorState] | None = None) -> OperatorState:
    """Run the operator in the current event loop until `stop_flag` is set (or forever)."""
    registry, state = built or build_operator(config)
    server = state.metrics.serve(metrics_port) if metrics_port else None
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=list(namespaces or ()),
            standalone=True,  # one replica; no peering resources needed
            liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
            memo=kopf.Memo(),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        if server is not None:
            server.shutdown()
    return state


def run_operator(namespaces: list[str] | None, liveness_port: int, metrics_port: int) -> None:
    """Run the operator until interrupted: one namespace list (None: all namespaces), two ports."""
    asyncio.run(operate(namespaces, liveness_port, metrics_port))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lanex_operator.controller.runtime",
                                     description="Run the lanex operator (kopf) against the current kubeconfig.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", dest="namespaces", default=None,
                       help="Namespace to serve (repeatable); default: all namespaces.")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="Serve all namespaces (the default).")
    parser.add_argument("--liveness-port", type=int, default=8080, help="Port of kopf's /healthz (0: off).")
    parser.add_argument("--metrics-port", type=int, default=9090, help="Port of Prometheus /metrics (0: off).")
    parser.add_argument("--verbose", "-v", action="store_true", help="Debug logging.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # azure-core logs every ARM request and response (headers included) at INFO; keep pool-change outcomes.
    logging.getLogger("azure").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if not args.verbose:  # kopf logs every handler call at INFO; keep the operator's own lines
        logging.getLogger("kopf").setLevel(logging.WARNING)
    run_operator(None if args.all_namespaces else args.namespaces, args.liveness_port, args.metrics_port)


if __name__ == "__main__":
    main()
