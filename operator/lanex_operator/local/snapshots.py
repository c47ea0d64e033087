"""Local volume snapshots: immutable, point-in-time, cheap on disk, verifiable.

A snapshot is a directory `<store>/<name>/data/` plus `<store>/<name>/manifest.json` listing
every file's relative path, size and sha256. Snapshot files are never shared with a live
volume (a later in-place write there would change the snapshot); instead a file unchanged since
the previous snapshot is hard-linked from that snapshot, so consecutive snapshots of a large,
mostly unchanged dataset cost only what changed. Files are copied with `cp --reflink=auto`
semantics where the filesystem supports it. A snapshot is built in a temporary directory and
renamed into place, so an interrupted snapshot leaves nothing half-made behind.

Restore copies the files into a new volume directory and verifies them against the manifest.
A clone (a sweep's trial volume) instead hard-links the snapshot's files: the trials read the very
same, never rewritten dataset files and write only new files of their own; a later snapshot of the
clone links the files it still shares with its base snapshot. `adopt` turns a prepared volume into
a snapshot by moving it (the sweep's dataset, prepared once and never written again).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

MANIFEST = "manifest.json"
CHUNK = 1 << 20


class SnapshotError(RuntimeError):
    """A snapshot that cannot be made, found or trusted; the message names it."""


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    source: str
    created: str
    files: int
    bytes: int
    experiment: Optional[str]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy(source: Path, target: Path) -> None:
    """Copy one file, as a reflink where the filesystem can (cp --reflink=auto), else bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("cp"):
        done = subprocess.run(["cp", "--reflink=auto", "--preserve=mode,timestamps", str(source), str(target)],
                              capture_output=True)
        if done.returncode == 0:
            return
    shutil.copy2(source, target)


class SnapshotStore:
    """Snapshots under one directory (the workspace's `snapshots/`)."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return (self.path(name) / MANIFEST).is_file()

    def manifest(self, name: str) -> dict:
        try:
            return json.loads((self.path(name) / MANIFEST).read_text())
        except FileNotFoundError as error:
            known = ", ".join(s.name for s in self.list()) or "none"
            raise SnapshotError(f"snapshot {name!r} not found in {self.root} (known: {known})") from error

    def list(self) -> list[SnapshotInfo]:
        found = []
        if self.root.is_dir():
            for entry in sorted(self.root.iterdir()):
                if (entry / MANIFEST).is_file():
                    data = json.loads((entry / MANIFEST).read_text())
                    found.append(SnapshotInfo(entry.name, data["source"], data["created"], len(data["files"]),
                                              sum(f["size"] for f in data["files"].values()), data.get("experiment")))
        return sorted(found, key=lambda info: info.created)

    def _latest_of(self, source: Path) -> Optional[str]:
        candidates = [s for s in self.list() if s.source == str(source.resolve())]
        return candidates[-1].name if candidates else None

    def create(self, volume: Path, name: str, experiment: Optional[str] = None,
               base: Optional[str] = None) -> SnapshotInfo:
        """Snapshot `volume` as `name` (idempotent: an existing complete snapshot is returned). `base`: the
        snapshot the volume was cloned from; its files that the volume still shares (same inode) are linked."""
        if self.exists(name):
            return next(s for s in self.list() if s.name == name)
        if not volume.is_dir():
            raise SnapshotError(f"cannot snapshot {volume}: no such volume directory")
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self._latest_of(volume)
        previous_files = self.manifest(previous)["files"] if previous else {}
        base_files = self.manifest(base)["files"] if base and self.exists(base) else {}
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}."))
        files: dict[str, dict] = {}
        try:
            for path in sorted(p for p in volume.rglob("*") if p.is_file() and not p.is_symlink()):
                relative = path.relative_to(volume).as_posix()
                stat = path.stat()
                target = staging / "data" / relative
                old = previous_files.get(relative)
                shared = base_files.get(relative)
                base_path = self.path(base) / "data" / relative if shared and base else None
                if base_path is not None and base_path.exists() and os.path.samestat(base_path.stat(), stat):
                    # Still the very file of the snapshot it was cloned from: share it again.
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.link(base_path, target)
                    digest = shared["sha256"]
                elif old and old["size"] == stat.st_size and old["mtime_ns"] == stat.st_mtime_ns:
                    # Unchanged since the previous snapshot: share its immutable copy.
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.link(self.path(previous) / "data" / relative, target)
                    digest = old["sha256"]
                else:
                    _copy(path, target)
                    digest = file_sha256(target)
                files[relative] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
            manifest = {
                "name": name, "source": str(volume.resolve()), "experiment": experiment,
                "created": datetime.now(timezone.utc).isoformat(), "files": files,
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            os.replace(staging, self.path(name))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return next(s for s in self.list() if s.name == name)

    def verify(self, name: str, directory: Path) -> list[str]:
        """Files of `directory` that differ from the snapshot's manifest (empty list = identical)."""
        expected = self.manifest(name)["files"]
        problems = []
        actual = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
        for relative, meta in expected.items():
            path = directory / relative
            if relative not in actual:
                problems.append(f"{relative}: missing")
            elif path.stat().st_size != meta["size"] or file_sha256(path) != meta["sha256"]:
                problems.append(f"{relative}: content differs from the snapshot")
        problems += [f"{relative}: not in the snapshot" for relative in sorted(actual - set(expected))]
        return problems

    def adopt(self, volume: Path, name: str, experiment: Optional[str] = None) -> SnapshotInfo:
        """Make the volume directory itself snapshot `name`: its files move (no copy) into the store.

        For a dataset prepared once and then only read through clones (a sweep's): the volume is gone
        afterwards and the snapshot, with its manifest, is the only copy. Idempotent."""
        if self.exists(name):
            return next(s for s in self.list() if s.name == name)
        if not volume.is_dir():
            raise SnapshotError(f"cannot snapshot {volume}: no such volume directory")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}."))
        source = str(volume.resolve())
        os.replace(volume, staging / "data")
        try:
            data = staging / "data"
            files = {}
            for path in sorted(p for p in data.rglob("*") if p.is_file() and not p.is_symlink()):
                stat = path.stat()
                files[path.relative_to(data).as_posix()] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                                            "sha256": file_sha256(path)}
            manifest = {"name": name, "source": source, "experiment": experiment,
                        "created": datetime.now(timezone.utc).isoformat(), "files": files}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            os.replace(staging, self.path(name))
        except BaseException:
            os.replace(staging / "data", volume)  # give the volume back untouched
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return next(s for s in self.list() if s.name == name)

    def clone(self, name: str, target: Path) -> Path:
        """A new volume directory `target` whose files are hard links to snapshot `name`'s (no data copied).

        The snapshot's files are immutable, so a clone may share them: each trial of a sweep reads the
        same inodes and writes only new files (its experiment directory)."""
        def link(source: Path, destination: Path) -> None:
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, destination)

        return self._materialize(name, target, "clone", link, verify=False)

    def delete(self, name: str) -> None:
        """Remove snapshot `name` (its hard-linked files stay wherever else they are linked)."""
        if self.path(name).is_dir():
            shutil.rmtree(self.path(name))

    def restore(self, name: str, target: Path) -> Path:
        """Copy snapshot `name` into a new volume directory `target`, verified against the manifest."""
        return self._materialize(name, target, "restore", _copy, verify=True)

    def _materialize(self, name: str, target: Path, verb: str, place: Callable[[Path, Path], None],
                     verify: bool) -> Path:
        """Place every file of snapshot `name` into `target` with `place`, built in a temporary directory
        and renamed into place, so an interrupted clone or restore leaves nothing behind."""
        manifest = self.manifest(name)
        if target.exists() and any(target.iterdir()):
            raise SnapshotError(f"cannot {verb} {name!r} into {target}: the directory is not empty")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            for relative in manifest["files"]:
                place(self.path(name) / "data" / relative, staging / relative)
            problems = self.verify(name, staging) if verify else []
            if problems:
                raise SnapshotError(f"{verb} of {name!r} failed verification: {'; '.join(problems[:5])}")
            if target.exists():
                target.rmdir()
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target
