#!/usr/bin/env python3
"""Copy the generated CRDs (LaneExperiment, LaneSweep) into the Helm chart, or check that the copies are current.

Why it exists: Helm installs CRDs only from the chart's own `crds/` folder, while the CRD is
generated from the API models into the repository's `crds/`. The chart must ship the very same
bytes; this script (stdlib only, no make) keeps them in step, and `--check` lets CI fail on drift.
Every file named in CRD_NAMES is synced.

    python scripts/sync_chart_crd.py            # copy crds/... -> charts/lanex-operator/crds/...
    python scripts/sync_chart_crd.py --check    # exit 1 if the chart's copy differs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

CRD_NAME = "lanex.dev_laneexperiments.yaml"
SWEEP_CRD_NAME = "lanex.dev_lanesweeps.yaml"
CRD_NAMES = (CRD_NAME, SWEEP_CRD_NAME)
SOURCE = Path("crds") / CRD_NAME
CHART_COPY = Path("charts") / "lanex-operator" / "crds" / CRD_NAME


def _paths(name: str) -> tuple[Path, Path]:
    return Path("crds") / name, Path("charts") / "lanex-operator" / "crds" / name


def is_current(root: Path, name: str = CRD_NAME) -> bool:
    """Whether the chart's copy of CRD file `name` has exactly the bytes of the generated one."""
    source, chart_copy = _paths(name)
    copy = root / chart_copy
    return copy.is_file() and copy.read_bytes() == (root / source).read_bytes()


def sync(root: Path, name: str = CRD_NAME) -> bool:
    """Copy the generated CRD file `name` into the chart; returns whether anything changed."""
    if is_current(root, name):
        return False
    source, chart_copy = _paths(name)
    target = root / chart_copy
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((root / source).read_bytes())
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only report drift (exit 1), change nothing.")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="Repository root (default: this script's repository).")
    args = parser.parse_args(argv)
    root: Path = args.root
    code = 0
    for name in CRD_NAMES:
        source, chart_copy = _paths(name)
        if not (root / source).is_file() and name != CRD_NAME:
            print(f"{source}: not generated here; skipped", file=sys.stderr)
            continue
        if not (root / source).is_file():
            module = "lanex_operator.api.sweep_crd" if name == SWEEP_CRD_NAME else "lanex_operator.api.crd"
            print(f"{root / source}: not found; generate it with `python -m {module} {source}`", file=sys.stderr)
            return 2
        if args.check:
            if is_current(root, name):
                print(f"{chart_copy}: up to date")
            else:
                print(f"{chart_copy}: differs from {source}; run `python scripts/sync_chart_crd.py`", file=sys.stderr)
                code = 1
            continue
        print(f"{chart_copy}: {'updated from ' + str(source) if sync(root, name) else 'already up to date'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
