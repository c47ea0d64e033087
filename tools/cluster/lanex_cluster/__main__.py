"""`python -m lanex_cluster up|down|status [--state-dir DIR]`: what `make cluster` and `make cluster-down` run."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .build import BuildError
from .cluster import LocalCluster
from .process import StartError, registered_alive, stop_registered

DEFAULT_STATE_DIR = Path(".cluster")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lanex_cluster", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help="where certificates, logs, etcd data and the kubeconfig live (default: .cluster)")
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()

    if args.command == "down":
        stopped = stop_registered(state_dir)
        print(f"[lanex-cluster] stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        return 0
    if args.command == "status":
        alive = registered_alive(state_dir)
        print("\n".join(f"{name}\tpid {pid}" for name, pid in alive.items()) or "not running")
        return 0 if alive else 1

    if registered_alive(state_dir):
        print(f"[lanex-cluster] already running (make cluster-down to stop it); kubeconfig: {state_dir / 'kubeconfig'}")
        return 0
    started = time.monotonic()
    cluster = LocalCluster(state_dir)
    try:
        cluster.start()
    except (BuildError, StartError) as error:
        print(f"[lanex-cluster] {error}", file=sys.stderr)
        return 1
    print(f"[lanex-cluster] ready in {time.monotonic() - started:.1f} s: {cluster.server}")
    print(f"[lanex-cluster] export KUBECONFIG={cluster.kubeconfig}")
    print(cluster.kubeconfig.read_text(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
