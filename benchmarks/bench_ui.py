"""Benchmark: `lanex ui` on a large local workspace (default 1,000 experiments and 10 sweeps of 100 trials).

Writes the workspace's records on disk in the formats `lanex run` writes (state.json, the trainer's
progress.json and results.json, a sweep's state.json), then serves it with the real app (uvicorn on
127.0.0.1, the same `build_app` as `lanex ui`) and reports:

* the source's first full read of the workspace (what `lanex ui` does once at start);
* the home page's server time: median of GETs of `/` (every experiment and trial row, every sweep
  row; goal < 1 s);
* live latency: from an atomic rewrite of a training experiment's progress.json to the home page's
  server-sent event showing its new progress (median, goal < 2 s), with 10 event streams open.

    python benchmarks/bench_ui.py --experiments 1000 --sweeps 10 --trials 100
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "trainer"))

from lanex_trainer.progress import atomic_write_text  # noqa: E402


def progress(step: int, steps: int, epochs: int, state: str = "training") -> dict[str, Any]:
    """A progress.json of the contract (PROGRESS_CONTRACT.md)."""
    epoch = 1 + (step * epochs) // (steps + 1)
    history = [{"epoch": e, "accuracy": 0.5 + 0.01 * e, "fp": 0.1, "fn": 0.1, "loss": 0.4} for e in range(1, epoch)]
    return {"state": state, "runId": "bench", "epoch": epoch, "epochs": epochs, "step": step, "steps": steps,
            "loss": 0.5 - step / (10 * steps), "learningRate": 0.01, "imagesPerSecond": 55.5,
            "dataWaitFraction": 0.05, "etaSeconds": steps - step, "validation": history[-1] if history else None,
            "validationHistory": history, "gpus": None, "updatedAt": "2026-12-01T10:00:00Z"}


def write_experiment(root: Path, name: str, finished: bool, epochs: int = 30) -> Path:
    """One experiment as `lanex run` leaves it: state.json plus its output directory's files."""
    output = root / "volumes" / f"{name}-data" / "experiments" / name
    output.mkdir(parents=True)
    steps = epochs * 100
    state: dict[str, Any] = {
        "phase": "Succeeded" if finished else "Training", "configHash": "0" * 64,
        "datasetSource": "synthetic:clips=400,seed=0", "startTime": "2026-12-01T09:00:00+00:00",
        "steps": {"dataset": {"state": "Done", "time": "2026-12-01T09:00:00+00:00", "volume": str(output.parents[1])},
                  "prepare": {"state": "Done", "time": "2026-12-01T09:01:00+00:00"},
                  "train": {"state": "Done" if finished else "Running", "time": "2026-12-01T09:02:00+00:00"}},
        "outputDir": str(output), "runner": {"pid": os.getpid(), "host": os.uname().nodename},
    }
    if finished:
        results = {"accuracy": 0.95, "fp": 0.04, "fn": 0.03, "checkpoint": str(output / "best.pt"),
                   "images_per_second": 55.5, "epochs": epochs}
        state.update(results=results, snapshots=[f"{name}-20261201100000"], completionTime="2026-12-01T10:00:00+00:00")
        (output / "results.json").write_text(json.dumps({**results, "history": []}))
    (output / "progress.json").write_text(json.dumps(progress(steps if finished else steps // 2, steps, epochs,
                                                              "finished" if finished else "training")))
    folder = root / "experiments" / name
    (folder / "logs").mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps(state, indent=2))
    (folder / "logs" / "train.log").write_text("started\n")
    return output


def write_workspace(root: Path, experiments: int, sweeps: int, trials: int) -> list[Path]:
    """The workspace; returns the output directories of the experiments still training."""
    training = []
    for i in range(experiments):
        output = write_experiment(root, f"exp-{i:04d}", finished=i % 10 != 0)
        if i % 10 == 0:
            training.append(output)
    for s in range(sweeps):
        rows = []
        for t in range(trials):
            name = f"sweep-{s:02d}-{t:03d}"
            write_experiment(root, name, finished=True)
            rows.append({"name": name, "parameters": {"learningRate": 0.01 * (t + 1)}, "phase": "Succeeded",
                         "progress": "30/30", "valMetric": 0.8, "objective": 0.9 + t / 10000,
                         "snapshot": f"{name}-20261201100000"})
        state = {"name": f"sweep-{s:02d}", "specHash": "0" * 64, "phase": "Succeeded", "startTime": "2026-12-01T09:00:00Z",
                 "datasetSnapshot": f"sweep-{s:02d}-dataset", "trialCount": trials,
                 "counts": {"succeeded": trials}, "trials": rows,
                 "bestTrial": {"name": rows[-1]["name"], "parameters": rows[-1]["parameters"],
                               "objective": rows[-1]["objective"], "snapshot": rows[-1]["snapshot"]},
                 "completionTime": "2026-12-01T10:00:00Z"}
        folder = root / "sweeps" / f"sweep-{s:02d}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps(state))
    return training


class Server:
    """The app of `lanex ui` on 127.0.0.1 in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        from lanex_operator.ui.app import bind

        self.socket = bind("127.0.0.1", 0)
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response.status, body

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class EventReader:
    """A home page's event stream, read in a thread: the arrival time of each `row` event."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.connection.request("GET", "/events")
        self.response = self.connection.getresponse()
        self.rows: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        name = None
        try:
            while True:
                line = self.response.fp.readline().decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name == "row":
                    with self.lock:
                        self.rows.append((time.monotonic(), json.loads(line[6:])))
        except (OSError, ValueError):
            return

    def arrival(self, name: str, progress_text: str, since: float, patience: float = 30.0) -> float:
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            with self.lock:
                for when, message in self.rows:
                    if when >= since and message["name"] == name and message["row"]["progress"] == progress_text:
                        return when
            time.sleep(0.005)
        raise TimeoutError(f"no event for {name} showing {progress_text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15, help="GETs of the home page, and progress changes timed.")
    parser.add_argument("--streams", type=int, default=10, help="Home pages open (event streams) while timing.")
    args = parser.parse_args()

    from lanex_operator.ui.app import build_app
    from lanex_operator.ui.local_source import LocalSource

    with tempfile.TemporaryDirectory(prefix="lanex-bench-ui-") as folder:
        root = Path(folder) / "ws"
        started = time.perf_counter()
        training = write_workspace(root, args.experiments, args.sweeps, args.trials)
        total = args.experiments + args.sweeps * args.trials
        print(f"workspace: {total} experiments ({args.experiments} + {args.sweeps} sweeps x {args.trials} trials), "
              f"{len(training)} training, written in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        source = LocalSource(root)
        first_read = time.perf_counter() - started
        print(f"first full read of the workspace: {first_read:.2f} s")

        server = Server(build_app(source))
        try:
            times, size = [], 0
            for _ in range(args.repeats):
                began = time.perf_counter()
                status, body = server.get("/")
                times.append(time.perf_counter() - began)
                assert status == 200, status
                size = len(body)
            assert body.count(b'<tr data-name="') == total + args.sweeps, "every row rendered"
            home = statistics.median(times)
            print(f"home page: {total + args.sweeps} rows, {size / 1e6:.1f} MB, server time median {home * 1000:.0f} ms "
                  f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}; goal < 1000 ms)")

            readers = [EventReader(server.port) for _ in range(args.streams)]
            time.sleep(1.0)
            latencies = []
            for i in range(args.repeats):
                output = training[i % len(training)]
                name = output.name
                steps = 3000
                step = steps // 2 + 1 + i
                before = time.monotonic()
                atomic_write_text(output / "progress.json", json.dumps(progress(step, steps, 30)))
                shown = f"{1 + (step * 30) // (steps + 1)}/30 {100 * step // steps}%"
                arrivals = [reader.arrival(name, shown, before) for reader in readers]
                latencies.append(max(arrivals) - before)
                time.sleep(0.2)
            print(f"live: progress.json rewrite -> row event on all {args.streams} open home pages: median "
                  f"{statistics.median(latencies) * 1000:.0f} ms (max {max(latencies) * 1000:.0f}; goal < 2000 ms)")
        finally:
            server.stop()
        print(f"summary: home {home * 1000:.0f} ms for {total + args.sweeps} rows, live {statistics.median(latencies) * 1000:.0f} ms "
              f"median, first read {first_read:.2f} s")


if __name__ == "__main__":
    main()
