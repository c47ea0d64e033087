"""`lanex` subcommands that run inside the trainer image: data, train, eval, predict.

Only typer is imported here; each command imports its implementation (and torch) when it runs,
so `lanex --help` and the operator image stay light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

data_app = typer.Typer(help="TuSimple data: synthesise, download, prepare.", no_args_is_help=True)


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., help="Dataset root to write (TuSimple layout)."),
    clips: int = typer.Option(200, min=1, help="Number of training+validation clips."),
    test_clips: Optional[int] = typer.Option(None, min=1, help="Test clips (default: clips // 4)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives byte-identical output."),
) -> None:
    """Write a synthetic road-scene dataset in the exact TuSimple layout."""
    from lanex_trainer.data.synth import generate_dataset

    summary = generate_dataset(out, clips=clips, test_clips=test_clips, seed=seed)
    typer.echo(json.dumps(summary, indent=2))


@data_app.command("download")
def data_download(
    url: List[str] = typer.Option(..., "--url", help="http(s):// or file:// URL; repeatable."),
    sha256: List[str] = typer.Option([], "--sha256", help="Expected SHA-256 per --url, in order."),
    out: Path = typer.Option(..., help="Directory to download and extract into."),
    extract: bool = typer.Option(True, help="Extract zip/tar archives after download."),
) -> None:
    """Download (resumable, checksum-verified) and safely extract dataset archives."""
    from lanex_trainer.data.download import DownloadError, download_all

    try:
        results = download_all(url, sha256, out, extract=extract)
    except DownloadError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    for result in results:
        typer.echo(str(result))


@data_app.command("prepare")
def data_prepare(
    root: Path = typer.Option(..., help="Dataset root holding the TuSimple label files."),
    train: List[str] = typer.Option(["label_data_0313.json", "label_data_0601.json"], help="Train label files."),
    val: List[str] = typer.Option(["label_data_0531.json"], help="Validation label files."),
    test: List[str] = typer.Option(["test_label.json"], help="Test label files."),
) -> None:
    """Build train/val/test indexes, checking every image and label line."""
    from lanex_trainer.data.prepare import PrepareError, prepare_dataset

    try:
        summary = prepare_dataset(root, train_files=train, val_files=val, test_files=test)
    except PrepareError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(json.dumps(summary, indent=2))


def eval_command(
    pred: Path = typer.Option(..., help="Predictions, TuSimple JSON lines."),
    gt: Path = typer.Option(..., help="Ground truth, TuSimple JSON lines."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """The official TuSimple metric: accuracy, FP and FN rates."""
    from lanex_trainer.evaluation.tusimple import EvaluationError, evaluate_files

    try:
        scores = evaluate_files(pred, gt)
    except EvaluationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    if as_json:
        typer.echo(json.dumps(scores))
    else:
        typer.echo(f"Accuracy {scores['accuracy']:.6f}  FP {scores['fp']:.6f}  FN {scores['fn']:.6f}")


def register(app: typer.Typer) -> None:
    """Attach the trainer's commands to the top-level `lanex` app."""
    app.add_typer(data_app, name="data")
    app.command("eval")(eval_command)
