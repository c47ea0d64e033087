"""Azurite, the official Azure Storage emulator, as a process on 127.0.0.1 (tests and benchmarks).

Installed by `make azurite` (scripts/install_azurite.sh) into .tools/azurite. Its development
account and key are public and the same for every install.
"""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
AZURITE_BLOB = REPO_ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
START_TIMEOUT_S = 60.0


class AzuriteError(RuntimeError):
    """Azurite is missing, exited, or did not listen in time."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def azurite_blob(location: Path, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """Run Azurite's blob service with its data in `location`; yields the account endpoint URL.

    With `tls` (certificate, key files) it serves HTTPS and accepts OAuth bearer tokens (`--oauth
    basic`: issuer, audience and lifetime are checked, the signature is not).
    """
    if not AZURITE_BLOB.exists():
        raise AzuriteError(f"Azurite is not installed at {AZURITE_BLOB}: run `make azurite` (scripts/install_azurite.sh)")
    port = _free_port()
    secure = ["--cert", str(tls[0]), "--key", str(tls[1]), "--oauth", "basic"] if tls else []
    process = subprocess.Popen(
        [str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--silent", "--skipApiVersionCheck",
         "--location", str(location), *secure],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise AzuriteError(f"Azurite exited with {process.returncode}: "
                                   f"{process.stderr.read().decode(errors='replace')[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AzuriteError(f"Azurite did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:.0f} s")
                time.sleep(0.2)
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}/{ACCOUNT}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
