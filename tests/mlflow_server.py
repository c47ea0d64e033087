"""A real `mlflow server` on 127.0.0.1 for the tracking tests: SQLite backend, artifacts in a folder.

One process group per start (the CLI starts uvicorn below it), ended as a whole: `stop()` can take the
server away in the middle of a run and `start()` brings it back on the same port with the same store,
as a restarted tracking server would come back. Its background job runner is off (the tests need none,
and it starts a dozen more processes). With `admin_password` it runs MLflow's basic-auth app: every
request needs the user `admin` and that password (MLFLOW_TRACKING_USERNAME/PASSWORD on the client).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

MLFLOW = Path(sys.executable).parent / "mlflow"
START_TIMEOUT_S = 90.0


class MlflowServerError(RuntimeError):
    """The server exited or did not answer /health in time."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServerProcess:
    """`mlflow server` with its store under `root`; `uri` stays the same across stop/start."""

    def __init__(self, root: Path, port: Optional[int] = None, admin_password: Optional[str] = None) -> None:
        self.root = root
        self.admin_password = admin_password
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: Optional[subprocess.Popen] = None
        self.log = root / "server.log"

    def start(self) -> "MlflowServerProcess":
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        auth: list[str] = []
        if self.admin_password is not None:  # its user store, basic_auth.db, goes to the working directory
            auth = ["--app-name", "basic-auth"]
            env.update(MLFLOW_AUTH_ADMIN_PASSWORD=self.admin_password, MLFLOW_FLASK_SERVER_SECRET_KEY="lanex-tests-only")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(MLFLOW), "server", *auth, "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--artifacts-destination", str(self.root / "artifacts")],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.healthy():
            if self.process.poll() is not None:
                raise MlflowServerError(f"mlflow server exited with {self.process.returncode}: "
                                        f"{self.log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise MlflowServerError(f"mlflow server did not answer {self.uri}/health within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """End the whole process group (SIGTERM, then SIGKILL), and wait until the port is free."""
        process, self.process = self.process, None
        if process is None:
            return
        for signum, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # uvicorn below the CLI may outlive it for a moment
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 15
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.1)
