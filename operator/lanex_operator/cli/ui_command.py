"""`lanex ui`: serve the web dashboard of a local workspace or of a cluster (lanex_operator.ui)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lanex_operator.cli.plumbing import DEFAULT_WORKSPACE


def ui_command(
    workspace: Optional[Path] = typer.Option(None, "--workspace",
                                             help=f"A `lanex run` workspace (default {DEFAULT_WORKSPACE} when no "
                                                  "cluster option is given)."),
    kubeconfig: Optional[Path] = typer.Option(None, "--kubeconfig", help="Watch a cluster with this kubeconfig."),
    context: Optional[str] = typer.Option(None, "--context", help="The kubeconfig context."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="The namespace (default: the context's)."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Every namespace you may read."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any but loopback requires the printed token."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port (0: a free one)."),
    allow_actions: bool = typer.Option(False, "--allow-actions",
                                       help="Offer stop and delete (the same checks as `lanex stop`/`lanex delete`); "
                                            "read-only without it."),
) -> None:
    """A live web dashboard: experiments and sweeps with progress, curves, logs, images, provenance.

    Pages: home (every experiment and sweep), one experiment, one sweep, compare (2-4 experiments).
    Exit codes: 0 stopped with Ctrl-C, 2 bad options or no such workspace/cluster configuration.
    """
    cluster = kubeconfig is not None or context is not None or namespace is not None or all_namespaces
    if cluster and workspace is not None:
        typer.echo("error: --workspace and the cluster options (--kubeconfig, --context, -n, -A) exclude each other",
                   err=True)
        raise typer.Exit(2)
    if all_namespaces and namespace is not None:
        typer.echo("error: --all-namespaces and --namespace exclude each other", err=True)
        raise typer.Exit(2)
    from lanex_operator.ui.app import serve

    if cluster:
        from lanex import ClusterError
        from lanex_operator.ui.cluster_source import ClusterSource

        try:
            source = ClusterSource.connect(kubeconfig, context, namespace, all_namespaces)
        except ClusterError as error:
            typer.echo(f"error: {error.message}", err=True)
            raise typer.Exit(2) from None
    else:
        from lanex_operator.ui.local_source import LocalSource

        workspace = workspace or DEFAULT_WORKSPACE
        if not workspace.is_dir():
            typer.echo(f"error: --workspace {workspace}: no such directory (run `lanex run FILE` first)", err=True)
            raise typer.Exit(2)
        source = LocalSource(workspace)
    try:
        serve(source, host, port, allow_actions, echo=lambda text: typer.echo(text, err=True))
    except OSError as error:
        typer.echo(f"error: --host {host} --port {port}: cannot bind ({error.strerror or error})", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass
