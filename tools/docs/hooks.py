"""MkDocs hook: adds the Reference pages, generated from the code at every build, to the site.

Why a hook and not files in docs/: a generated page that is committed can drift from the code; one
made at build time cannot. Each page kind has its own module beside this one (MkDocs puts this
folder on sys.path while it loads the hook); `mkdocs.yml` lists the pages in its nav like any other,
and `mkdocs build --strict` fails on a broken link into them.
"""

from __future__ import annotations

from collections.abc import Callable

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

import ref_api
import ref_cli
import ref_conditions
import ref_helm
import ref_metrics

PAGES: dict[str, Callable[[], str]] = {
    "reference/laneexperiment.md": ref_api.experiment_page,
    "reference/lanesweep.md": ref_api.sweep_page,
    "reference/cli.md": ref_cli.page,
    "reference/metrics.md": ref_metrics.page,
    "reference/conditions.md": ref_conditions.page,
    "reference/helm-values.md": ref_helm.page,
}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for uri, make in PAGES.items():
        files.append(File.generated(config, uri, content=make()))
    return files
