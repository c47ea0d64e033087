"""`lanex launch`: start the training processes the way the environment expects.

Inside an MPIJob launcher (mpi-operator mounts the hostfile at /etc/mpi/hostfile) it runs
`horovodrun` (TR-4896's command) or `mpirun` over the hostfile; elsewhere it runs `torchrun`
(or `horovodrun`/`mpirun` on localhost when asked). When training succeeds it copies the run's
results into the Kubernetes termination message, where the lanex operator reads them.

Each launch is one run: it gives the ranks a fresh run id (`LANEX_RUN_ID`, ordered by start time,
so a restarted launcher's run takes the output directory's lease over from an earlier attempt's
workers) and makes them end with it (`LANEX_DIE_WITH_PARENT`, see lifeline.py).

Preemption (see preemption.py): the first SIGTERM/SIGINT is passed on once, to torchrun's ranks
themselves (torchrun would take it as a failure and print a traceback), or to mpirun/horovodrun,
whose ranks are on other hosts; those are told to give the ranks the grace period
(`LANEX_TERMINATION_GRACE_SECONDS`) before their SIGKILL. The ranks finish their step, checkpoint it
and leave with exit code 0 (`LANEX_PREEMPTED_EXIT_CODE`), so the launcher sees no failure; the launch
then exits with PREEMPTED_EXIT_CODE and says where the next start resumes. A second Ctrl-C stops
everything at once.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from lanex_trainer import lifeline
from lanex_trainer.distributed import DEFAULT_HOSTFILE, DEFAULT_MASTER_PORT, first_host
from lanex_trainer.lease import RUN_ID_ENV, new_run_id
from lanex_trainer.preemption import PREEMPTED_EXIT_CODE, PREEMPTED_EXIT_ENV, grace_seconds, read_record

# What the operator needs from results.json; the termination message is capped at 4 KiB.
TERMINATION_FIELDS = ("accuracy", "fp", "fn", "checkpoint", "images_per_second", "epochs", "steps", "config_hash")
# Environment forwarded by mpirun to remote ranks (Open MPI does not forward by default).
# MLFLOW_: the tracking server's credentials (MLFLOW_TRACKING_TOKEN, ...) for rank 0, wherever it runs.
FORWARDED_ENV_PREFIXES = ("NCCL_", "LANEX_", "OMP_", "PYTHON", "TORCH_", "GLOO_", "MLFLOW_")
FORWARDED_ENV = ("PATH", "LD_LIBRARY_PATH", "MASTER_ADDR", "MASTER_PORT", "USE_WORKERS", "NUM_WORKERS",
                 "BATCH_SIZE", "USE_VAL", "VAL_BATCH_SIZE", "ENABLE_SNAPSHOT", "PVC_NAME", "HOME")


class LaunchError(RuntimeError):
    """The launch cannot start; the message says what is missing."""


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    launcher: str
    processes: int


def hostfile_slots(hostfile: Path) -> int:
    total = 0
    for line in hostfile.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        slots = 1
        for token in line.split()[1:]:
            if token.startswith("slots="):
                slots = int(token.split("=", 1)[1])
        total += slots
    return total


def hostfile_in_use(environ: Mapping[str, str]) -> Optional[Path]:
    """The MPI hostfile when running as an MPIJob launcher, else None."""
    candidates = [environ.get("LANEX_MPI_HOSTFILE"), environ.get("OMPI_MCA_orte_default_hostfile"), str(DEFAULT_HOSTFILE)]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def process_count(requested: Optional[int], environ: Mapping[str, str], hostfile: Optional[Path]) -> int:
    if requested:
        return requested
    if environ.get("RUNAI_MPI_NUM_WORKERS"):
        return int(environ["RUNAI_MPI_NUM_WORKERS"])
    if hostfile is not None:
        return hostfile_slots(hostfile)
    return 1


def _mpi_env_flags(env: Mapping[str, str]) -> list[str]:
    flags: list[str] = []
    for name in sorted(env):
        if name in FORWARDED_ENV or name.startswith(FORWARDED_ENV_PREFIXES):
            flags += ["-x", name]
    return flags


def plan_launch(
    command: Sequence[str],
    backend: str,
    processes: Optional[int] = None,
    launcher: str = "auto",
    environ: Optional[Mapping[str, str]] = None,
    master_port: int = DEFAULT_MASTER_PORT,
) -> LaunchPlan:
    """The launcher command line for `command` (pure: tested without starting anything)."""
    env = dict(os.environ if environ is None else environ)
    if not command:
        raise LaunchError("no training command given after `--`")
    hostfile = hostfile_in_use(env)
    count = process_count(processes, env, hostfile)
    if launcher == "auto":
        if backend == "horovod":
            launcher = "horovodrun"
        else:
            launcher = "mpirun" if hostfile is not None else "torchrun"
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault(RUN_ID_ENV, new_run_id())
    # How long torchrun (its agent) and Open MPI (its daemons) wait for the ranks to leave after passing
    # a stop signal on, before SIGKILL: the whole grace period, in which the ranks checkpoint their step.
    grace = str(grace_seconds(env))
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", grace)
    env.setdefault("OMPI_MCA_odls_base_sigkill_timeout", grace)
    env[PREEMPTED_EXIT_ENV] = "0"  # the launch reports a preemption itself, from the ranks' preempted.json
    env[lifeline.ENV_FLAG] = "1"  # the ranks (torchrun's, mpirun's) end when their launcher does
    if backend != "auto":
        env["LANEX_BACKEND"] = backend
    if launcher == "torchrun":
        argv = ["torchrun", "--no-python", "--nnodes=1", f"--nproc-per-node={count}",
                f"--master-port={master_port}", *command]
    elif launcher == "horovodrun":
        hosts = ["--hostfile", str(hostfile)] if hostfile is not None else ["-H", f"localhost:{count}"]
        argv = ["horovodrun", "-np", str(count), *hosts, *command]
    elif launcher == "mpirun":
        env.setdefault("MASTER_ADDR", first_host(hostfile) if hostfile is not None else "127.0.0.1")
        env.setdefault("MASTER_PORT", str(master_port))
        hosts = ["--hostfile", str(hostfile)] if hostfile is not None else ["--host", f"localhost:{count}"]
        argv = ["mpirun", "-np", str(count), *hosts, "--bind-to", "none", "--map-by", "slot",
                *_mpi_env_flags(env), *command]
    else:
        raise LaunchError(f"launcher {launcher!r}: expected auto, torchrun, mpirun or horovodrun")
    return LaunchPlan(argv=argv, env=env, launcher=launcher, processes=count)


def results_path_of(command: Sequence[str]) -> Optional[Path]:
    """`<output-dir>/results.json` of a `lanex train` command line, when it names one."""
    for i, token in enumerate(command):
        if token == "--output-dir" and i + 1 < len(command):
            return Path(command[i + 1]) / "results.json"
        if token.startswith("--output-dir="):
            return Path(token.split("=", 1)[1]) / "results.json"
    return None


def termination_message(results_file: Path) -> str:
    results = json.loads(results_file.read_text())
    message = json.dumps({k: results.get(k) for k in TERMINATION_FIELDS}, separators=(",", ":"))
    return message[:4096]


def child_process_groups(pid: int) -> list[int]:
    """The process groups of `pid`'s children (torchrun starts each rank in a session of its own); Linux."""
    groups = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids = [int(word) for word in children.read_text().split()]
        except OSError:
            continue
        for child in pids:
            try:
                groups.append(os.getpgid(child))
            except ProcessLookupError:
                pass
    return sorted(set(groups))


def run_launch(plan: LaunchPlan, termination_log: Optional[Path], results_file: Optional[Path]) -> int:
    """Run the launcher, passing the first SIGTERM/SIGINT on; write the termination message.

    Returns the exit code: 0, PREEMPTED_EXIT_CODE when the ranks stopped on a signal after
    checkpointing their step (`<output_dir>/preempted.json` of this run), else the launcher's failure.
    """
    print(f"lanex launch: run {plan.env.get(RUN_ID_ENV)}, {plan.launcher} with {plan.processes} process(es): "
          f"{shlex.join(plan.argv)}", file=sys.stderr, flush=True)
    try:
        # Its own session, so signals reach the launcher's whole tree; SIGKILLed when we end.
        child = subprocess.Popen(plan.argv, env=plan.env, start_new_session=True,
                                 preexec_fn=lifeline.preexec_die_with_parent())
    except FileNotFoundError as error:
        raise LaunchError(f"{plan.argv[0]} is not installed or not on PATH") from error

    def send(signum) -> None:
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    received: list[int] = []

    def stop_ranks(signum) -> None:
        ranks = child_process_groups(child.pid) if plan.launcher == "torchrun" else []
        if not ranks:  # mpirun/horovodrun pass it on to remote ranks (or torchrun has none yet)
            send(signum)
        for group in ranks:
            try:
                os.killpg(group, signum)
            except ProcessLookupError:
                pass

    def forward(signum, _frame):
        # Once only: torchrun and Open MPI take a second SIGTERM/SIGINT as "kill now", which would cut the
        # ranks' checkpoint short. A second Ctrl-C means just that: stop at once, without it.
        received.append(signum)
        if len(received) == 1:
            print(f"lanex launch: {signal.Signals(signum).name}: the ranks finish their step and checkpoint it "
                  "before they stop (Ctrl-C again: stop at once)", file=sys.stderr, flush=True)
            stop_ranks(signum)
        elif signum == signal.SIGINT:
            send(signal.SIGKILL)

    lifeline.on_orphaned(lambda: send(signal.SIGKILL))  # where no parent-death signal exists

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # Ranks leave with 0 after a preemption (whether they did is in this run's preempted.json), also when
    # the signal reached a worker pod rather than this launcher (one worker evicted).
    preempted = read_record(results_file.parent, plan.env.get(RUN_ID_ENV)) if results_file is not None else None
    if preempted is not None:
        message = preempted.message()
        print(f"lanex launch: {message}", file=sys.stderr, flush=True)
        if termination_log is not None:
            _write_quietly(termination_log, message)
        return PREEMPTED_EXIT_CODE
    if code != 0:
        message = (f"training failed: {plan.launcher} exited with code {code} "
                   f"(a worker failed or died; see the rank logs above)")
        print(f"lanex launch: {message}", file=sys.stderr, flush=True)
        if termination_log is not None:
            _write_quietly(termination_log, message)
        return code if code > 0 else 128 - code
    if termination_log is not None and results_file is not None and results_file.is_file():
        _write_quietly(termination_log, termination_message(results_file))
    return 0


def _write_quietly(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        print(f"lanex launch: could not write termination message to {path}: {error}", file=sys.stderr)
