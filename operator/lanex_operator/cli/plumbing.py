"""What every `lanex` command shares: exit codes, one `error: ...` line per failure, the cluster to use.

Why it exists: the command modules (`local_commands`, `cluster_commands`, `snapshot_commands`,
`compare`, ...) never import one another; what they have in common lives here. Exit codes, the same
for every command: 0 done, 1 API error or failed run, 2 invalid file or flags or no Kubernetes
configuration, 124 a wait timed out, 130 interrupted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional

import typer

from lanex_operator.cli.submit import UsageError

if TYPE_CHECKING:
    import lanex

# The workspace of `lanex run`, `lanex get --workspace`, `lanex ui`, ...: lanex.Workspace's default too (kept
# here so that `lanex --help` need not import the API; tests/test_python_api.py checks the two agree).
DEFAULT_WORKSPACE = Path(".lanex")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def reporting() -> Iterator[None]:
    """Turn the errors of a command into one `error: ...` line and its exit code."""
    import lanex

    try:
        yield
    except (UsageError, lanex.InvalidSpecError) as error:
        fail(str(error), EXIT_USAGE)
    except lanex.NoClusterConfig as error:
        fail(error.message, EXIT_USAGE)
    except lanex.WaitTimeout as error:
        fail(error.message, EXIT_TIMEOUT)
    except lanex.ClusterError as error:
        fail(error.message)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def connect(namespace: Optional[str]) -> "lanex.Cluster":
    """The cluster of the current kubeconfig context, in `namespace` (default: the context's)."""
    import lanex

    return lanex.Cluster(namespace=namespace)
