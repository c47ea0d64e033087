#!/usr/bin/env python3
"""Copy the generated LaneExperiment CRD into the Helm chart, or check that the copy is current.

Why it exists: Helm installs CRDs only from the chart's own `crds/` folder, while the CRD is
generated from the API models into the repository's `crds/`. The chart must ship the very same
bytes; this script (stdlib only, no make) keeps them in step, and `--check` lets CI fail on drift.

    python scripts/sync_chart_crd.py            # copy crds/... -> charts/lanex-operator/crds/...
    python scripts/sync_chart_crd.py --check    # exit 1 if the chart's copy differs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

CRD_NAME = "lanex.dev_laneexperiments.yaml"
SOURCE = Path("crds") / CRD_NAME
CHART_COPY = Path("charts") / "lanex-operator" / "crds" / CRD_NAME


def is_current(root: Path) -> bool:
    """Whether the chart's CRD has exactly the bytes of the generated one."""
    copy = root / CHART_COPY
    return copy.is_file() and copy.read_bytes() == (root / SOURCE).read_bytes()


def sync(root: Path) -> bool:
    """Copy the generated CRD into the chart; returns whether anything changed."""
    if is_current(root):
        return False
    target = root / CHART_COPY
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((root / SOURCE).read_bytes())
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only report drift (exit 1), change nothing.")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="Repository root (default: this script's repository).")
    args = parser.parse_args(argv)
    root: Path = args.root
    if not (root / SOURCE).is_file():
        print(f"{root / SOURCE}: not found; generate it with `python -m lanex_operator.api.crd {SOURCE}`",
              file=sys.stderr)
        return 2
    if args.check:
        if is_current(root):
            print(f"{CHART_COPY}: up to date")
            return 0
        print(f"{CHART_COPY}: differs from {SOURCE}; run `python scripts/sync_chart_crd.py`", file=sys.stderr)
        return 1
    print(f"{CHART_COPY}: {'updated from ' + str(SOURCE) if sync(root) else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
