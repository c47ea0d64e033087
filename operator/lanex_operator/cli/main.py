"""The `lanex` command: one entry point for data scientists, the trainer image and the operator image.

Trainer commands are registered from `lanex_trainer.cli`, which imports torch only when a command runs.
"""

from __future__ import annotations

from typing import List

import typer

from lanex_operator.cli import cluster_commands, compare, local_commands, render, snapshot_commands, ui_command
from lanex_trainer import cli as trainer_cli

app = typer.Typer(help="lanex: lane-detection training experiments, locally or on Kubernetes.", no_args_is_help=True)
trainer_cli.register(app)
local_commands.register(app)
snapshot_commands.register(app)
cluster_commands.register(app)
app.command("compare")(compare.compare_command)
render.register(app)
app.command("ui")(ui_command.ui_command)


@app.command("operator")
def operator_command(
    namespace: List[str] = typer.Option([], "--namespace", "-n", help="Namespace to serve (repeatable)."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Serve all namespaces (default when no --namespace)."),
    liveness_port: int = typer.Option(8080, help="Port of the /healthz liveness endpoint (0: off)."),
    metrics_port: int = typer.Option(9090, help="Port of the Prometheus /metrics endpoint (0: off)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the LaneExperiment operator (kopf) against the current kubeconfig or in-cluster config."""
    import logging

    from lanex_operator.controller.runtime import run_operator

    if all_namespaces and namespace:
        typer.echo("error: --all-namespaces and --namespace exclude each other", err=True)
        raise typer.Exit(2)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    run_operator(list(namespace) or None, liveness_port, metrics_port)


EXIT_USAGE = 2


def main() -> None:
    """The `lanex` console script. Every error a user can cause ends in one `error: ...` line and exit 2:
    the commands report their own; command-line mistakes (unknown option, missing argument, a value
    out of range) are reported here the same way instead of as a usage panel."""
    import sys

    try:  # typer carries its own copy of click since 0.22
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
    except ImportError:  # pragma: no cover - an older typer on click
        from click.exceptions import ClickException, NoArgsIsHelpError

    from lanex_trainer.lifeline import arm_from_env

    arm_from_env()  # started by `lanex run`/`lanex launch`: end with that parent, however it ends
    try:
        code = app(standalone_mode=False)
    except typer.Abort:  # Ctrl-C or end of input at a prompt
        sys.exit(130)
    except NoArgsIsHelpError as error:  # `lanex data`: the group's help
        error.show()
        sys.exit(EXIT_USAGE)
    except ClickException as error:  # usage errors: unknown option, missing argument, value out of range
        command = error.ctx.command_path if getattr(error, "ctx", None) is not None else "lanex"
        typer.echo(f"error: {error.format_message()} (see `{command} --help`)", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(code if isinstance(code, int) else 0)
