"""Run every benchmark once with its defaults and print their one-line summaries at the end.

    make bench            # or: .venv/bin/python benchmarks/run_all.py [--only eval data ...]

Figures depend on the machine and on what else runs on it: run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = {
    "message_passing": ["bench_message_passing.py"],
    "data": ["bench_data.py"],
    "synth": ["bench_synth.py"],
    "eval": ["bench_eval.py"],
    "scaling": ["bench_scaling.py", "--max-procs", "2"],
    "operator": ["bench_operator.py", "--experiments", "100"],
    "download": ["bench_download.py"],
    "kill_run": ["bench_kill_run.py", "--trials", "3"],
    "preemption": ["bench_preemption.py", "--trials", "5"],
    "ui": ["bench_ui.py"],
    "mlflow": ["bench_mlflow.py", "--trials", "3"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="Run only these.")
    args = parser.parse_args()
    summaries, failed = [], []
    for name, (script, *extra) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        print(f"=== {name}: {script} {' '.join(extra)}", flush=True)
        done = subprocess.run([sys.executable, str(HERE / script), *extra], capture_output=True, text=True)
        print(done.stdout, end="")
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            failed.append(name)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        summaries.append(f"{name}: {lines[-1] if lines else '(no output)'}")
    print("\n=== summaries")
    print("\n".join(summaries))
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
