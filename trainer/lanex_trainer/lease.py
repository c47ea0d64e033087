"""One writer per training output directory: a lease on the volume, renewed, and fencing.

Two trainings writing one `output_dir` corrupt each other's run (checkpoints rotated under the
other's feet, ranks resuming at different steps). So rank 0 holds a lease, `<output_dir>/lease.json`
(run id, job, host, pid, heartbeat time), renewed by a background thread. Another training on the
same directory refuses to start, naming the owner, unless the lease can be taken over:

- its heartbeat is older than `lease_stale_s` (the owner hung or its machine is gone),
- its owner ran on this host, in this boot and this pid namespace, and that process is gone or its
  pid now belongs to a process started at another time (a `kill -9`: no need to wait). A pod
  recreated under the same hostname has a new pid namespace: there a pid says nothing, so only
  the heartbeat decides. Or
- it belongs to an earlier attempt of the same job (`LANEX_JOB`, set by the operator's plan):
  a restarted MPIJob launcher's run id (`LANEX_RUN_ID`, made by `lanex launch` from the UTC time,
  so ids of one job sort by start time) is newer than the one of the workers it left behind.

Fencing: before every checkpoint (and the final writes) rank 0 re-reads the lease; a run that no
longer holds it stops, on every rank at the same step (rank 0 decides, the verdict is broadcast),
before it writes. (Its step log and TensorBoard lines up to that point are appended still; a
takeover and a check can also cross within the few milliseconds between a check and its write.) Every read-modify-write of the lease happens under an exclusive `flock` of
`lease.json.lock`, which NFS (Azure NetApp Files) clients turn into NFS byte-range locks; the lease
itself is replaced atomically, so readers never see a torn file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from lanex_trainer.config import ConfigError

log = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
RUN_ID_ENV = "LANEX_RUN_ID"
JOB_ENV = "LANEX_JOB"


class LeaseBusy(ConfigError):
    """The output directory is owned by another live training (CLI exit 2)."""


class LeaseUnreadable(ConfigError):
    """lease.json exists but cannot be read as a lease: nobody may take the directory over (CLI exit 2)."""


class Fenced(RuntimeError):
    """This run lost its lease to a newer owner and stopped before writing."""


def new_run_id(now: Optional[datetime] = None) -> str:
    """A run id that sorts by start time: `20261201T221800123456Z-1a2b3c`."""
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{moment.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(3)}"


def run_identity(environ: Optional[Mapping[str, str]] = None) -> tuple[Optional[str], Optional[str]]:
    """(run id, job) given by the launcher's environment, each None when not set."""
    env = os.environ if environ is None else environ
    return env.get(RUN_ID_ENV) or None, env.get(JOB_ENV) or None


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class ProcessIdentity:
    """What makes a pid mean one process: the kernel's boot, the pid namespace, the process's start time."""

    boot_id: Optional[str]
    pid_namespace: Optional[int]  # inode of /proc/self/ns/pid
    pid_start: Optional[int]  # start time in clock ticks after boot (field 22 of /proc/<pid>/stat)

    @classmethod
    def of(cls, pid: int) -> "ProcessIdentity":
        return cls(_read(lambda: BOOT_ID.read_text().strip()), _read(lambda: os.stat("/proc/self/ns/pid").st_ino),
                   process_start(pid))


def _read(value: Callable[[], Any]) -> Any:
    try:
        return value()
    except OSError:  # not Linux, or /proc hidden: the identity is unknown, never guessed
        return None


def process_start(pid: int) -> Optional[int]:
    """The start time of process `pid` in clock ticks after boot, None when there is no such process."""
    stat = _read(lambda: Path(f"/proc/{pid}/stat").read_text())
    return None if stat is None else int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class LeaseRecord:
    run_id: str
    job: Optional[str]
    host: str
    pid: int
    started: str
    heartbeat: float  # unix time of the last renewal
    boot_id: Optional[str] = None  # ProcessIdentity of the owner; None in leases written before it existed
    pid_namespace: Optional[int] = None
    pid_start: Optional[int] = None

    @property
    def owner(self) -> str:
        return f"run {self.run_id}" + (f" of job {self.job}" if self.job else "") + f" (host {self.host}, pid {self.pid})"

    def describe(self, now: float) -> str:
        return f"{self.owner}, last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago"

    @classmethod
    def parse(cls, data: Any) -> "LeaseRecord":
        """The record in a lease's JSON; ValueError names what is missing or wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        try:
            namespace, start = data.get("pid_namespace"), data.get("pid_start")
            return cls(run_id=str(data["run_id"]), job=data.get("job"), host=str(data["host"]), pid=int(data["pid"]),
                       started=str(data.get("started", "")), heartbeat=float(data["heartbeat"]),
                       boot_id=data.get("boot_id"), pid_namespace=None if namespace is None else int(namespace),
                       pid_start=None if start is None else int(start))
        except KeyError as error:
            raise ValueError(f"no {error.args[0]!r}") from error
        except (TypeError, ValueError) as error:
            raise ValueError(f"a field of the wrong type ({error})") from error


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def takeover_reason(current: LeaseRecord, me: LeaseRecord, now: float, stale_after_s: float,
                    pid_alive: Callable[[int], bool] = _pid_alive) -> Optional[str]:
    """Why `me` may take the lease `current` holds, or None when `current` still owns the directory."""
    if current.run_id == me.run_id:
        return "it is this run's own lease"
    if now - current.heartbeat > stale_after_s:
        return f"its heartbeat is {now - current.heartbeat:.0f} s old (stale after {stale_after_s:.0f} s)"
    if current.host == me.host and current.boot_id is not None and current.boot_id == me.boot_id \
            and current.pid_namespace is not None and current.pid_namespace == me.pid_namespace:
        if not pid_alive(current.pid):
            return f"its process {current.pid} on this host is gone"
        if current.pid_start is not None and process_start(current.pid) not in (None, current.pid_start):
            return f"its process {current.pid} on this host is gone (the pid now names a later process)"
    if current.job is not None and current.job == me.job and current.run_id < me.run_id:
        return f"it is an earlier attempt of job {me.job}"
    return None


class Lease:
    """The lease of one output directory as held (or sought) by one process."""

    def __init__(self, directory: Path, run_id: str, job: Optional[str], stale_after_s: float,
                 clock: Callable[[], float] = time.time, host: Optional[str] = None, pid: Optional[int] = None):
        self.directory = Path(directory)
        self.path = self.directory / LEASE_FILE
        self.run_id, self.job, self.stale_after_s, self.clock = run_id, job, stale_after_s, clock
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def _record(self) -> LeaseRecord:
        identity = ProcessIdentity.of(self.pid)
        return LeaseRecord(self.run_id, self.job, self.host, self.pid, self.started, self.clock(),
                           identity.boot_id, identity.pid_namespace, identity.pid_start)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(LEASE_FILE + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read(self) -> Optional[LeaseRecord]:
        """The lease, None when there is none; LeaseUnreadable when the file is there but not a lease (it is
        left as it is: whoever wrote it may still be training, and nothing here can tell)."""
        try:
            return LeaseRecord.parse(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise LeaseUnreadable(
                f"output_dir {self.directory}: its lease {self.path} is unreadable ({error}); it is left as it is. "
                f"If no training uses this directory, remove that file and start again") from None

    def _write(self, record: LeaseRecord) -> None:
        temp = self.path.with_name(f".{LEASE_FILE}.{self.pid}.tmp")
        temp.write_text(json.dumps(asdict(record), indent=2))
        os.replace(temp, self.path)

    def acquire(self) -> Optional[LeaseRecord]:
        """Take the lease (returns the record taken over, if any); LeaseBusy names a live owner."""
        with self._locked():
            current = self.read()
            me = self._record()
            if current is not None:
                reason = takeover_reason(current, me, me.heartbeat, self.stale_after_s)
                if reason is None:
                    raise LeaseBusy(
                        f"output_dir {self.directory} is in use by {current.describe(me.heartbeat)}; "
                        f"wait for it to finish or stop it; its lease ({self.path}) is taken over once its heartbeat "
                        f"is {self.stale_after_s:.0f} s old (lease_stale_s), or use another output_dir"
                    )
                if current.run_id != self.run_id:
                    log.warning("taking over the lease of %s: %s", current.describe(me.heartbeat), reason)
            self._write(me)
            return current if current is not None and current.run_id != self.run_id else None

    def lost_to(self) -> Optional[str]:
        """None while this run holds the lease, else who holds it now (for the fencing message)."""
        try:
            current = self.read()
        except LeaseUnreadable as error:  # someone else wrote it: stop writing rather than guess
            return f"an unreadable lease ({error})"
        if current is not None and current.run_id == self.run_id:
            return None
        now = self.clock()
        return current.describe(now) if current is not None else f"nobody (its lease {self.path} was removed)"

    def renew(self) -> Optional[str]:
        """Refresh the heartbeat; returns lost_to() instead when the lease is no longer ours."""
        with self._locked():
            lost = self.lost_to()
            if lost is None:
                self._write(self._record())
            return lost

    def release(self) -> None:
        with self._locked():
            if self.lost_to() is None:
                self.path.unlink(missing_ok=True)


class OutputOwnership:
    """The lease as the ranks of one run see it: rank 0 acts, every rank receives its verdicts.

    `dist` is the run's `Distributed` (only `is_main` and `broadcast_object` are used); decisions
    are collective calls, made by every rank at the same point of the run.
    """

    def __init__(self, directory: Path, dist, stale_after_s: float, heartbeat_s: float,
                 environ: Optional[Mapping[str, str]] = None):
        self.directory, self.dist, self.heartbeat_s = Path(directory), dist, heartbeat_s
        run_id, self.job = run_identity(environ)
        # One id for every rank: the launcher's, else rank 0's own.
        self.run_id: str = dist.broadcast_object(run_id or (new_run_id() if dist.is_main else None))
        self.lease = Lease(self.directory, self.run_id, self.job, stale_after_s) if dist.is_main else None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lost: Optional[str] = None

    def acquire(self) -> None:
        """Collective: every rank raises LeaseBusy when rank 0 could not take the lease."""
        refusal = None
        if self.lease is not None:
            try:
                self.lease.acquire()
            except (LeaseBusy, LeaseUnreadable) as error:
                refusal = str(error)
            except OSError as error:  # e.g. a read-only volume: no training can own it
                refusal = f"output_dir {self.directory}: cannot take its lease {self.lease.path}: {error}"
        refusal = self.dist.broadcast_object(refusal)
        if refusal is not None:
            raise LeaseBusy(refusal)
        if self.lease is not None:
            log.info("run %s holds the lease of %s", self.run_id, self.directory)
            self._thread = threading.Thread(target=self._heartbeat, name="lanex-lease", daemon=True)
            self._thread.start()

    def _heartbeat(self) -> None:
        assert self.lease is not None
        while not self._stop.wait(self.heartbeat_s):
            try:
                lost = self.lease.renew()
            except OSError as error:  # the volume hiccuped; the next beat tries again
                log.warning("could not renew the lease %s: %s", self.lease.path, error)
                continue
            if lost is not None:
                self._lost = lost
                log.error("run %s lost the lease of %s to %s", self.run_id, self.directory, lost)
                return

    def check(self) -> None:
        """Collective fencing point, before a write: every rank raises Fenced when the lease is lost."""
        verdict = None
        if self.lease is not None:
            verdict = self._lost or self.lease.lost_to()
        verdict = self.dist.broadcast_object(verdict)
        if verdict is not None:
            raise Fenced(f"run {self.run_id} no longer owns output_dir {self.directory}: it is owned by {verdict}; "
                         "stopping before writing another checkpoint or results there")

    def release(self) -> None:
        """Stop renewing and give the lease up, if still ours (rank 0; a no-op elsewhere)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
        if self.lease is not None and self._lost is None:
            try:
                self.lease.release()
            except OSError as error:
                log.warning("could not release the lease %s: %s", self.lease.path, error)
