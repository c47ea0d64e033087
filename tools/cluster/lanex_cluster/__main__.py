"""`python -m lanex_cluster up|down|status [--state-dir DIR]`: what `make cluster` and `make cluster-down` run.

`up` starts a detached owner process (`serve`) that starts the control plane, restarts crashed
components and stops everything on SIGTERM; `up` returns once the owner says the cluster is ready.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .build import BuildError
from .cluster import LocalCluster, clear_state_dir
from .process import OWNER, StartError, log_tail, register, registered_alive, stop_registered

DEFAULT_STATE_DIR = Path(".cluster")
READY_FILE = "ready.json"
OWNER_LOG = "logs/lanex-cluster.log"
UP_TIMEOUT_S = 600


def serve(state_dir: Path) -> int:
    """Run the control plane in this process until SIGTERM or SIGINT."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    started = time.monotonic()
    cluster = LocalCluster(state_dir)
    try:
        cluster.start(fresh=False)
    except (BuildError, StartError) as error:
        print(f"[lanex-cluster] {error}", file=sys.stderr, flush=True)
        return 1
    (state_dir / READY_FILE).write_text(json.dumps({"server": cluster.server, "seconds": time.monotonic() - started,
                                                         "components": cluster.start_seconds}))
    try:
        stopping.wait()
    finally:
        cluster.stop()
    return 0


def up(state_dir: Path) -> int:
    if OWNER in registered_alive(state_dir):
        print(f"[lanex-cluster] already running (make cluster-down stops it); kubeconfig: {state_dir / 'kubeconfig'}")
        return 0
    clear_state_dir(state_dir)
    (state_dir / OWNER_LOG).parent.mkdir(parents=True, exist_ok=True)
    with (state_dir / OWNER_LOG).open("ab") as log:
        owner = subprocess.Popen([sys.executable, "-m", "lanex_cluster", "serve", "--state-dir", str(state_dir)],
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    register(state_dir, OWNER, owner.pid)
    deadline = time.monotonic() + UP_TIMEOUT_S
    while not (state_dir / READY_FILE).exists():
        if owner.poll() is not None or time.monotonic() > deadline:
            stop_registered(state_dir)
            print(f"[lanex-cluster] the control plane did not start; {state_dir / OWNER_LOG} ends:\n"
                  f"{log_tail(state_dir / OWNER_LOG)}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    ready = json.loads((state_dir / READY_FILE).read_text())
    print(f"[lanex-cluster] ready in {ready['seconds']:.1f} s: {ready['server']}")
    print("[lanex-cluster] components ready after (s): "
          + ", ".join(f"{name} {seconds}" for name, seconds in ready["components"].items()))
    print(f"[lanex-cluster] export KUBECONFIG={state_dir / 'kubeconfig'}")
    print((state_dir / "kubeconfig").read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lanex_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status", "serve"))
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help="where certificates, logs, etcd data and the kubeconfig live (default: .cluster)")
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    if args.command == "serve":
        return serve(state_dir)
    if args.command == "up":
        return up(state_dir)
    if args.command == "down":
        stopped = stop_registered(state_dir)
        print(f"[lanex-cluster] stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        return 0
    alive = registered_alive(state_dir)
    print("\n".join(f"{name}\tpid {pid}" for name, pid in alive.items()) or "not running")
    return 0 if alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
