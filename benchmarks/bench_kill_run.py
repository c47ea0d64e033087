"""How long the processes of a `lanex run` outlive a `kill -9` of it (they must all end, promptly).

Runs a tiny local experiment (2 torch workers, each with DataLoader worker processes), waits for
its first checkpoint, records the whole process tree (launch, torchrun, ranks, loader workers),
SIGKILLs `lanex run` alone and times until each recorded process is gone. Prints, per trial, the
seconds until the launcher chain (launch, torchrun, ranks) ended and until the last process ended
(DataLoader workers notice their rank's end by polling, every 5 s); then the median of each. The rerun of the experiment (resume) is not part of the figure.

    python benchmarks/bench_kill_run.py [--trials 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
LANEX = str(Path(sys.executable).with_name("lanex"))
GIVE_UP_S = 30.0


def experiment_file(directory: Path) -> Path:
    document = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    document["metadata"]["name"] = "killed"
    document["spec"]["dataset"]["synthetic"] = {"clips": 16, "seed": 3, "testClips": 4}
    document["spec"]["training"].update({"epochs": 50, "height": 64, "width": 160, "batchSize": 2, "loaderWorkers": 1,
                                         "useWorkers": True, "validation": {"enabled": False, "batchSize": 4}})
    path = directory / "killed.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def trial(directory: Path) -> dict[str, float]:
    workspace = directory / "ws"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    runner = subprocess.Popen([LANEX, "run", str(experiment_file(directory)), "--workspace", str(workspace)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = workspace / "volumes" / "killed-data" / "experiments" / "killed" / "checkpoints"
    while not (checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*.pt"))):
        if runner.poll() is not None:
            raise SystemExit(f"lanex run ended before its first checkpoint (exit {runner.returncode})")
        time.sleep(0.1)
    tree = psutil.Process(runner.pid).children(recursive=True)
    commands = {p.pid: p.cmdline() for p in tree}
    # A DataLoader worker is a fork of its rank: same command line as its parent.
    chain = {p.pid for p in tree if commands.get(p.ppid()) != commands[p.pid]}
    killed = time.monotonic()
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    ended: dict[int, float] = {}
    while len(ended) < len(tree) and time.monotonic() - killed < GIVE_UP_S:
        for process in tree:
            if process.pid not in ended and (not process.is_running() or process.status() == psutil.STATUS_ZOMBIE):
                ended[process.pid] = time.monotonic() - killed
        time.sleep(0.02)
    survivors = [p for p in tree if p.pid not in ended]
    for process in survivors:
        process.kill()
    return {"processes": len(tree), "chain_s": max((ended.get(pid, GIVE_UP_S) for pid in chain), default=0.0),
            "all_s": max(ended.values(), default=0.0) if not survivors else GIVE_UP_S, "survivors": len(survivors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    results = []
    for number in range(args.trials):
        with tempfile.TemporaryDirectory(prefix="lanex-kill-") as directory:
            result = trial(Path(directory))
        results.append(result)
        print(f"trial {number + 1}: {result['processes']} processes; launch/torchrun/ranks gone after "
              f"{result['chain_s']:.2f} s, all after {result['all_s']:.2f} s; survivors {result['survivors']}")
    summary = {"trials": results, "median_chain_s": statistics.median(r["chain_s"] for r in results),
               "median_all_s": statistics.median(r["all_s"] for r in results),
               "survivors": sum(r["survivors"] for r in results)}
    print(f"kill -9 of lanex run: launcher chain gone after {summary['median_chain_s']:.2f} s, every process after "
          f"{summary['median_all_s']:.2f} s (median of {args.trials}); survivors: {summary['survivors']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
