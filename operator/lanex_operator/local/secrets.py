"""`lanex run --secret NAME=file:PATH|env:VAR`: the local stand-in for the Secrets a spec names.

On the cluster a `secretRef` is a Secret mounted into the prepare Job as a folder, one file per key.
Locally the same folder is written from what the command line names, just before the prepare step
and removed right after it, so `lanex data download --credentials FOLDER` reads it the same way and
no secret value ever goes into a command line, an environment variable of the step, a log or the
experiment's state file.

Sources (both hold the same thing, the Secret's keys):
- `file:PATH`: a folder with one file per key (as `kubectl create secret generic --from-file` takes),
  or a file of `KEY=VALUE` lines (as `--from-env-file` takes; `#` comments and blank lines skipped);
- `env:VAR`: an environment variable holding `KEY=VALUE` lines.

One Secret is read differently: MLflow's (`tracking.mlflow.credentialsSecretRef`), whose keys become
environment variables of the training processes (`secret_env`), as its secretKeyRefs do on the cluster:
MLflow's client reads its credentials from there. They go into no command line, log or state file.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class SecretSourceError(ValueError):
    """A `--secret` option, or what it names, cannot be used; the message never holds a value."""


@dataclass(frozen=True)
class SecretSource:
    """Where the keys of the Secret `name` come from on this machine."""

    name: str
    kind: str  # file | env
    location: str

    def read(self) -> dict[str, str]:
        """The Secret's keys and values."""
        where = f"--secret {self.name}={self.kind}:{self.location}"
        if self.kind == "env":
            if self.location not in os.environ:
                raise SecretSourceError(f"{where}: environment variable {self.location} is not set")
            return _key_lines(os.environ[self.location], where)
        path = Path(self.location).expanduser()
        if path.is_dir():
            keys = {}
            for entry in sorted(path.iterdir()):
                if entry.is_file() and not entry.name.startswith("."):
                    _check_key(entry.name, where)
                    keys[entry.name] = entry.read_text(encoding="utf-8")
            if not keys:
                raise SecretSourceError(f"{where}: folder {path} holds no key files")
            return keys
        if path.is_file():
            return _key_lines(path.read_text(encoding="utf-8"), where)
        raise SecretSourceError(f"{where}: no such file or folder {path}")


def parse_secret_option(text: str) -> SecretSource:
    """`NAME=file:PATH` or `NAME=env:VAR` -> SecretSource."""
    name, equals, source = text.partition("=")
    kind, colon, location = source.partition(":")
    if not equals or not colon or kind not in ("file", "env") or not location:
        raise SecretSourceError(f"--secret {text.split('=', 1)[0]}=...: expected NAME=file:PATH or NAME=env:VAR")
    if not _NAME.fullmatch(name):
        raise SecretSourceError(f"--secret {name!r}: not a Secret name (lower-case letters, digits, '-' and '.')")
    return SecretSource(name, kind, location)


def materialise(sources: dict[str, SecretSource], names: tuple[str, ...], root: Path) -> list[Path]:
    """Write the Secrets `names` as folders `root/NAME/KEY` (owner-only) and return the folders.

    Raises SecretSourceError naming the spec's Secret that the command line does not supply.
    """
    missing = [name for name in names if name not in sources]
    if missing:
        options = " ".join(f"--secret {name}=file:PATH" for name in missing)
        raise SecretSourceError(f"the spec's secretRef names {', '.join(missing)}: pass {options} (or =env:VAR)")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    folders = []
    for name in names:
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o700)
        for key, value in sources[name].read().items():
            target = folder / key
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(value)
        folders.append(folder)
    return folders


def secret_env(items: Iterable[Any], sources: dict[str, SecretSource]) -> dict[str, str]:
    """The environment variables that name a Secret's key (`plan.steps.SecretEnv`: MLflow's credentials), read
    from their `--secret` sources; a key the Secret lacks, or a Secret with no source, leaves its variable unset."""
    values: dict[str, dict[str, str]] = {}
    found: dict[str, str] = {}
    for item in items:
        if item.secret_name not in sources:
            continue
        keys = values.setdefault(item.secret_name, sources[item.secret_name].read())
        if item.key in keys:
            found[item.name] = keys[item.key].strip()
    return found


def remove(root: Path) -> None:
    """Delete every materialised Secret under `root`."""
    shutil.rmtree(root, ignore_errors=True)


def _check_key(key: str, where: str) -> None:
    if not _KEY.fullmatch(key):
        raise SecretSourceError(f"{where}: key {key!r} is not a Secret key (letters, digits, '-', '_', '.')")


def _key_lines(text: str, where: str) -> dict[str, str]:
    keys = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, equals, value = line.partition("=")
        key = key.strip()
        if not equals:
            raise SecretSourceError(f"{where}: line {number} is not KEY=VALUE")
        _check_key(key, where)
        keys[key] = value
    if not keys:
        raise SecretSourceError(f"{where}: no KEY=VALUE lines")
    return keys
