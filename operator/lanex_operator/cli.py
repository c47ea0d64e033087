"""The `lanex` command: one entry point for data scientists, the trainer image and the operator image.

Trainer commands are registered from `lanex_trainer.cli`, which imports torch only when a command runs.
"""

from __future__ import annotations

import typer

from lanex_operator import local_cli
from lanex_trainer import cli as trainer_cli

app = typer.Typer(help="lanex: lane-detection training experiments, locally or on Kubernetes.", no_args_is_help=True)
trainer_cli.register(app)
local_cli.register(app)


def main() -> None:
    app()
