"""What a preemption costs: completed training steps lost (goal 0) and seconds from the signal to exit.

Synthesises and prepares a small dataset once, then per trial starts `lanex launch` with 2 local
ranks (torchrun, DDP over gloo, one DataLoader worker each) training the small SCNN at the demo's
input size, sends SIGTERM to the launch after a different number of steps each trial (like a pod
eviction reaching the launcher) and measures:

- completed steps lost: the last step any rank logged (train_log.jsonl) minus the step of the
  checkpoint the next start resumes from (the newest readable one, as `lanex train` chooses it);
- seconds from the signal to the exit of `lanex launch` (every process gone), to the exit of the
  last rank, and to rank 0's checkpoint on disk (preempted.json);
- for comparison, what the same signal would have lost without the stop-at-a-step handling: the
  completed steps since the newest checkpoint that existed when the signal came.

    python benchmarks/bench_preemption.py [--trials 5] [--height 144 --width 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
LANEX = str(Path(sys.executable).with_name("lanex"))


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _logged_steps(output: Path) -> list[int]:
    log = output / "train_log.jsonl"
    if not log.is_file():
        return []
    return [json.loads(line)["step"] for line in log.read_text().splitlines() if line.strip()]


def prepare(directory: Path) -> Path:
    data = directory / "data"
    subprocess.run([LANEX, "data", "synth", "--out", str(data), "--clips", "40", "--test-clips", "4", "--seed", "5"],
                   env=_env(), check=True, capture_output=True)
    subprocess.run([LANEX, "data", "prepare", "--root", str(data)], env=_env(), check=True, capture_output=True)
    return data


def trial(data: Path, output: Path, signal_after: int, args: argparse.Namespace) -> dict:
    from lanex_trainer.checkpoint import list_checkpoints, load_latest_checkpoint
    from lanex_trainer.preemption import PREEMPTED_EXIT_CODE, read_record

    command = [LANEX, "launch", "--processes", "2", "--master-port", str(_free_port()), "--",
               "lanex", "train", "--data-root", str(data), "--output-dir", str(output), "--backbone", "small",
               "--epochs", str(args.epochs), "--height", str(args.height), "--width", str(args.width),
               "--batch-size", str(args.batch_size), "--loader-workers", "1", "--no-val", "--lr", "0.02"]
    launch = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        while len(_logged_steps(output)) < signal_after:
            if launch.poll() is not None:
                raise SystemExit(f"training ended before step {signal_after}: {launch.stderr.read()[-2000:]}")
            time.sleep(0.01)
        existing = list_checkpoints(output / "checkpoints")
        torchrun = psutil.Process(launch.pid).children()
        ranks = [rank for agent in torchrun for rank in agent.children()]  # torchrun's children
        signalled = time.monotonic()
        ranks_gone: list[float] = []
        watcher = threading.Thread(target=lambda: (psutil.wait_procs(ranks, timeout=600),
                                                   ranks_gone.append(time.monotonic() - signalled)))
        watcher.start()
        os.kill(launch.pid, signal.SIGTERM)
        _, stderr = launch.communicate(timeout=600)
        exited = time.monotonic() - signalled
        watcher.join()
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()
    if launch.returncode != PREEMPTED_EXIT_CODE:
        raise SystemExit(f"lanex launch exited {launch.returncode}, not {PREEMPTED_EXIT_CODE}: {stderr[-2000:]}")
    completed = max(_logged_steps(output))
    newest = load_latest_checkpoint(output / "checkpoints")
    resumes_at = newest[1]["step"] if newest else 0
    record = read_record(output)
    return {
        "signal_after_step": signal_after, "completed_steps": completed, "resumes_at_step": resumes_at,
        "steps_lost": completed - resumes_at,
        "steps_lost_without_handling": completed - (existing[-1][0] if existing else 0),
        "signal_to_exit_s": round(exited, 2),
        "signal_to_ranks_exit_s": round(ranks_gone[0], 2) if len(ranks) == 2 else None,
        "signal_to_checkpoint_s": record.seconds_to_checkpoint if record else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--width", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lanex-bench-preemption-") as temp:
        directory = Path(temp)
        data = prepare(directory)
        results = []
        for number in range(args.trials):
            # Different moments: early in an epoch, late in one, across epoch ends.
            result = trial(data, directory / f"out{number}", 3 + 7 * number, args)
            results.append(result)
            print(json.dumps({"trial": number + 1, **result}), flush=True)
    summary = {
        "trials": len(results), "ranks": 2,
        "steps_lost_per_preemption_mean": statistics.mean(r["steps_lost"] for r in results),
        "steps_lost_max": max(r["steps_lost"] for r in results),
        "steps_lost_without_handling_mean": statistics.mean(r["steps_lost_without_handling"] for r in results),
        "signal_to_exit_s_median": statistics.median(r["signal_to_exit_s"] for r in results),
        "signal_to_exit_s_max": max(r["signal_to_exit_s"] for r in results),
        "signal_to_ranks_exit_s_median": statistics.median(r["signal_to_ranks_exit_s"] for r in results),
        "signal_to_checkpoint_s_median": statistics.median(r["signal_to_checkpoint_s"] for r in results),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"trials": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
