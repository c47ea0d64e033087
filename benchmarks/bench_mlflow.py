"""What MLflow tracking costs training: wall time of the same small `lanex train` run untracked, tracked by a
live `mlflow server`, and tracked by a server that does not answer (nothing listens on its port).

Synthesises and prepares a small dataset once, starts a real `mlflow server` (SQLite store, local artifacts,
127.0.0.1) and runs each variant `--trials` times, interleaved, printing the median seconds of each and the
overhead against the untracked median. The tracked runs also say how many records were journaled and how many
were left unsent at the end (goal: 0 with a live server; all of them, kept for `lanex mlflow replay`, without).

    python benchmarks/bench_mlflow.py [--trials 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from mlflow_server import MlflowServerProcess, free_port  # noqa: E402

LANEX = str(Path(sys.executable).with_name("lanex"))
TINY = ["--backbone", "small", "--height", "64", "--width", "160", "--batch-size", "4", "--loader-workers", "0",
        "--val-batch-size", "8", "--lr", "0.02", "--warmup-iterations", "2"]


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            **extra}


def _tracking(uri: str) -> dict[str, str]:
    return {"LANEX_MLFLOW": json.dumps({"tracking_uri": uri, "experiment_name": "bench", "run_name": "bench"})}


def train(data: Path, out: Path, epochs: int, extra_env: dict[str, str]) -> tuple[float, int, int]:
    """Seconds of one `lanex train`, records journaled, records left unsent."""
    started = time.monotonic()
    subprocess.run([LANEX, "train", "--data-root", str(data), "--output-dir", str(out), "--epochs", str(epochs), *TINY],
                   env=_env(extra_env), check=True, capture_output=True)
    seconds = time.monotonic() - started
    journal = out / "mlflow" / "journal.jsonl"
    if not journal.is_file():
        return seconds, 0, 0
    written = len(journal.read_text().splitlines())
    cursor = out / "mlflow" / "cursor.json"
    sent = json.loads(cursor.read_text())["seq"] if cursor.is_file() else 0
    return seconds, written, written - sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        data = work / "data"
        subprocess.run([LANEX, "data", "synth", "--out", str(data), "--clips", "24", "--test-clips", "5", "--seed", "7"],
                       env=_env({}), check=True, capture_output=True)
        subprocess.run([LANEX, "data", "prepare", "--root", str(data)], env=_env({}), check=True, capture_output=True)
        server = MlflowServerProcess(work / "server").start()
        variants = {"untracked": {}, "tracked, server up": _tracking(server.uri),
                    "tracked, server down": _tracking(f"http://127.0.0.1:{free_port()}")}
        results: dict[str, list[tuple[float, int, int]]] = {name: [] for name in variants}
        try:
            for trial in range(args.trials):
                for name, env in variants.items():
                    results[name].append(train(data, work / f"{name}-{trial}".replace(" ", "_").replace(",", ""),
                                               args.epochs, env))
        finally:
            server.stop()
    base = statistics.median(seconds for seconds, _, _ in results["untracked"])
    for name, runs in results.items():
        median = statistics.median(seconds for seconds, _, _ in runs)
        records = f", {runs[0][1]} records journaled, {max(left for _, _, left in runs)} left unsent at the end" \
            if runs[0][1] else ""
        print(f"{name}: median {median:.2f} s over {len(runs)} runs ({median - base:+.2f} s){records}")
    up = statistics.median(seconds for seconds, _, _ in results["tracked, server up"])
    down = statistics.median(seconds for seconds, _, _ in results["tracked, server down"])
    print(f"mlflow: untracked {base:.2f} s, server up {up:.2f} s ({up - base:+.2f}), "
          f"server down {down:.2f} s ({down - base:+.2f}) (medians of {args.trials}, {args.epochs} epochs)")


if __name__ == "__main__":
    main()
