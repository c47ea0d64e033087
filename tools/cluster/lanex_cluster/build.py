"""Build the upstream programs from the Go consumer modules in `tools/k8s/`, cached outside the repo.

Each directory under `tools/k8s/` is a Go module of ours whose `tool` block names the upstream
main packages it builds. A build lands in `<cache>/<component>-<key>/`, where the key hashes the
module's go.mod, go.sum and Go files, the version flags and the Go version: a changed pin builds anew, an
unchanged one is reused by every checkout on the machine (CI included). The cache is
`$LANEX_K8S_CACHE`, else `~/.cache/lanex/k8s`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MODULES_DIR = Path(__file__).resolve().parents[2] / "k8s"
COMPLETE_MARKER = ".complete"


class BuildError(RuntimeError):
    """A component could not be built; the message names it and quotes Go's last lines."""


@dataclass(frozen=True)
class Component:
    """One consumer module under tools/k8s/ and the version stamps its programs need."""

    name: str
    version: str
    # `-X importpath.name=value` pairs: without them upstream programs report v0.0.0-master.
    version_flags: tuple[str, ...] = ()
    # Go names a binary after its package path (etcd's main package is .../server/v3 -> "server").
    renames: tuple[tuple[str, str], ...] = ()

    @property
    def module_dir(self) -> Path:
        return MODULES_DIR / self.name

    def tool_packages(self) -> list[str]:
        """The main packages named in the module's `tool` block (go.mod is the one list)."""
        text = (self.module_dir / "go.mod").read_text()
        block = re.search(r"^tool \((.*?)^\)", text, re.S | re.M)
        single = re.findall(r"^tool ([^(\s]\S*)$", text, re.M)
        packages = single + (block.group(1).split() if block else [])
        return [p for p in packages if not p.startswith("//")]

    def binaries(self) -> list[str]:
        renames = dict(self.renames)
        return [renames.get(name, name) for name in map(_go_binary_name, self.tool_packages())]

    def cache_key(self) -> str:
        digest = hashlib.sha256()
        # go.mod and go.sum pin upstream; a module of our own also has Go source of its own.
        for path in sorted(self.module_dir.iterdir()):
            if path.name in ("go.mod", "go.sum") or path.suffix == ".go":
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
        digest.update("\0".join(self.version_flags).encode())
        digest.update(go_version().encode())
        return digest.hexdigest()[:16]

    def bin_dir(self) -> Path:
        return cache_root() / f"{self.name}-{self.cache_key()}"

    def is_built(self) -> bool:
        return (self.bin_dir() / COMPLETE_MARKER).is_file()


def _go_binary_name(package: str) -> str:
    """The file name `go build -o DIR/` gives a main package: its last element, major version dropped."""
    parts = package.rstrip("/").split("/")
    if len(parts) > 1 and re.fullmatch(r"v[2-9][0-9]*", parts[-1]):
        parts.pop()
    return parts[-1]


def _kubernetes_flags(version: str) -> tuple[str, ...]:
    major, minor = version.lstrip("v").split(".")[:2]
    return (
        f"k8s.io/component-base/version.gitVersion={version}",
        f"k8s.io/component-base/version.gitMajor={major}",
        f"k8s.io/component-base/version.gitMinor={minor}",
        "k8s.io/component-base/version.gitTreeState=clean",
        f"k8s.io/client-go/pkg/version.gitVersion={version}",
    )


KUBERNETES_VERSION = "v1.37.2"

COMPONENTS: dict[str, Component] = {
    c.name: c for c in (
        Component("kubernetes", KUBERNETES_VERSION, _kubernetes_flags(KUBERNETES_VERSION)),
        # etcd and kwok carry their release in constants; mpi-operator's defaults to v2.0.0.
        Component("etcd", "v3.6.17", ("go.etcd.io/etcd/api/v3/version.GitSHA=v3.6.17",),
                  renames=(("server", "etcd"),)),
        Component("kwok", "v0.8.0"),
        Component("mpi-operator", "v0.8.2", ("github.com/kubeflow/mpi-operator/pkg/version.Version=v0.8.2",
                                            "github.com/kubeflow/mpi-operator/pkg/version.GitSHA=v0.8.2")),
        Component("snapshotter", "v8.7.0", ("main.version=v8.7.0",)),
        Component("provisioner", "v5.3.0", ("main.version=v5.3.0",)),
        # helm's lint and capabilities default to Kubernetes 1.20 unless told the version it was cut for.
        Component("helm", "v3.22.1", ("helm.sh/helm/v3/internal/version.version=v3.22.1",
                                      "helm.sh/helm/v3/internal/version.gitTreeState=clean",
                                      "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
                                      "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37",
                                      "helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
                                      "helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37")),
        Component("kueue", "v0.17.0", ("sigs.k8s.io/kueue/pkg/version.GitVersion=v0.17.0",)),
        # Ours: the stand-in for csi-driver-host-path (tools/k8s/csi-dir-driver/main.go says why).
        Component("csi-dir-driver", "v0.1.0"),
    )
}


def cache_root() -> Path:
    return Path(os.environ.get("LANEX_K8S_CACHE") or Path.home() / ".cache" / "lanex" / "k8s")


_GO_VERSION: str | None = None


def go_version() -> str:
    global _GO_VERSION
    if _GO_VERSION is None:
        go = shutil.which("go")
        if go is None:
            raise BuildError("Go is not installed: the control plane is built from Go modules (go 1.26 or newer)")
        _GO_VERSION = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout.strip()
    return _GO_VERSION


def build(component: Component, log: Path | None = None) -> Path:
    """Build `component` into its cache directory unless it is there; return that directory."""
    target = component.bin_dir()
    if component.is_built():
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ldflags = " ".join(["-s", "-w", *(f"-X {flag}" for flag in component.version_flags)])
    command = ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", f"{staging}/", *component.tool_packages()]
    started = time.monotonic()
    result = subprocess.run(command, cwd=component.module_dir, capture_output=True, text=True,
                            env={**os.environ, "GOFLAGS": "-mod=readonly"})
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise BuildError(f"building {component.name} ({component.version}) failed:\n{tail}")
    for built, wanted in component.renames:
        (staging / built).rename(staging / wanted)
    (staging / COMPLETE_MARKER).write_text(f"{component.version}\n{time.monotonic() - started:.0f} s\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def module_source(component: Component, module_path: str) -> Path:
    """Where the Go module cache holds `module_path` as `component` pins it (its stage files, CRDs)."""
    result = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", module_path], cwd=component.module_dir,
                            capture_output=True, text=True, env={**os.environ, "GOFLAGS": "-mod=readonly"})
    directory = result.stdout.strip()
    if result.returncode != 0 or not directory:
        raise BuildError(f"{module_path} is not in the module cache for {component.name}: "
                         f"{result.stderr.strip() or 'run make cluster-binaries'}")
    return Path(directory)


def binary(name: str) -> Path:
    """The path of a built program (e.g. 'kube-apiserver'); BuildError when it is not built."""
    for component in COMPONENTS.values():
        if name in component.binaries():
            path = component.bin_dir() / name
            if not component.is_built():
                raise BuildError(f"{name} is not built: run `make cluster-binaries` (builds {component.name})")
            return path
    raise BuildError(f"no component in tools/k8s builds {name}")


def missing_binaries() -> list[str]:
    """The components not yet built, as 'name (version)'; BuildError when Go itself is missing."""
    go_version()
    return [f"{c.name} ({c.version})" for c in COMPONENTS.values() if not c.is_built()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lanex_cluster.build", description=__doc__.splitlines()[0])
    parser.add_argument("components", nargs="*", help=f"default: all ({', '.join(COMPONENTS)})")
    args = parser.parse_args(argv)
    try:
        go_version()
    except BuildError as error:
        # A laptop without Go still runs everything but the real-cluster tests (they skip and say
        # why); CI builds them, so there a missing Go fails.
        print(f"[lanex-cluster] {error}; the real-cluster tests will be skipped", file=sys.stderr)
        return 1 if os.environ.get("CI") == "true" else 0
    for name in args.components or list(COMPONENTS):
        component = COMPONENTS[name]
        state = "cached" if component.is_built() else "building"
        print(f"[lanex-cluster] {name} {component.version}: {state} -> {component.bin_dir()}", flush=True)
        started = time.monotonic()
        try:
            build(component)
        except BuildError as error:
            print(f"[lanex-cluster] {error}", file=sys.stderr)
            return 1
        if state == "building":
            print(f"[lanex-cluster] {name}: built in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
