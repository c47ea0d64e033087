"""Reference page of the `lanex` command: every command and option, walked from the typer app.

The text is what `lanex COMMAND --help` prints (click's own help records), so the page and the
terminal cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterator

import typer.main

from lanex_operator.cli.main import app

import cells

try:  # typer carries its own copy of click since 0.22
    from typer._click import Command, Context
except ImportError:  # pragma: no cover - an older typer on click
    from click import Command, Context


def subcommands(command: Command) -> dict[str, Command]:
    """A group's visible commands by name (typer's groups are click Commands with a `commands` map)."""
    return {name: child for name, child in sorted((getattr(command, "commands", None) or {}).items())
            if not child.hidden}


def commands() -> Iterator[tuple[str, Command, Context]]:
    """(`lanex data synth`, command, its context) of every command, depth first, sorted by name."""
    root = typer.main.get_command(app)

    def walk(command: Command, ctx: Context) -> Iterator[tuple[str, Command, Context]]:
        yield ctx.command_path, command, ctx
        for name, child in subcommands(command).items():
            yield from walk(child, Context(child, info_name=name, parent=ctx))

    yield from walk(root, Context(root, info_name="lanex"))


def anchor(path: str) -> str:
    """The heading id MkDocs gives `## lanex data synth`."""
    return path.replace(" ", "-")


def _section(path: str, command: Command, ctx: Context) -> list[str]:
    lines = [f"## {path}", "", "```text", command.get_usage(ctx), "```", ""]
    help_text = (command.help or "").strip()
    if help_text:
        lines += [cells.text(paragraph) + "\n" for paragraph in help_text.split("\n\n")]
    rows = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or param.name == "help":
            continue
        declaration, description = record
        rows.append((f"`{declaration}`", cells.text(description)))
    if rows:
        lines += [cells.table(("Argument or option", "Description"), rows)]
    children = subcommands(command)
    if children:
        lines += ["Commands: " + ", ".join(f"[`{path} {name}`](#{anchor(path + ' ' + name)})" for name in children)
                  + ".", ""]
    return lines


def page() -> str:
    lines = ["# The lanex command", "",
             cells.generated_note("the `lanex` typer app (`operator/lanex_operator/cli/main.py`)"),
             "Every error a user can cause ends in one line, `error: ...`, and exit code **2**; exit 1 is for "
             "what failed or is not there, 75 for a preempted training run, 130 for Ctrl-C "
             "(see [Trainer commands](../guides/trainer.md#exit-codes)).", ""]
    for path, command, ctx in commands():
        lines += _section(path, command, ctx)
    return "\n".join(lines)
