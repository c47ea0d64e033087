"""`lanex` subcommands that run inside the trainer image: data, train, eval, predict.

Only typer is imported here; each command imports its implementation (and torch) when it runs,
so `lanex --help` and the operator image stay light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from lanex_trainer.preemption import DEFAULT_GRACE_SECONDS, GRACE_ENV
from lanex_trainer.worker_wait import DEFAULT_SSH_PORT, DEFAULT_WAIT_SECONDS

data_app = typer.Typer(help="TuSimple data: synthesise, download, prepare.", no_args_is_help=True)


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., help="Dataset root to write (TuSimple layout)."),
    clips: int = typer.Option(200, min=1, help="Number of training+validation clips."),
    test_clips: Optional[int] = typer.Option(None, min=1, help="Test clips (default: clips // 4)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives byte-identical output."),
) -> None:
    """Write a synthetic road-scene dataset in the exact TuSimple layout."""
    from lanex_trainer.data.synth import SynthError, generate_dataset

    try:
        summary = generate_dataset(out, clips=clips, test_clips=test_clips, seed=seed)
    except SynthError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    except OSError as error:  # --out where nothing can be written
        typer.echo(f"error: cannot write the dataset to {out}: {error.strerror or error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(summary, indent=2))


@data_app.command("download")
def data_download(
    url: List[str] = typer.Option(
        ..., "--url", help="http(s)://, file://, az://ACCOUNT/CONTAINER/PATH or https://ACCOUNT.blob.core.windows.net/"
        " URL; repeatable."),
    sha256: List[str] = typer.Option(
        [], "--sha256", help="Expected SHA-256 per --url, in order (all 64 hex digits)."),
    out: Path = typer.Option(..., help="Directory to download and extract into."),
    extract: bool = typer.Option(True, help="Extract zip/tar archives after download."),
    credentials: Optional[Path] = typer.Option(
        None, help="Folder of a mounted Secret, one file per key: 'sas' = a SAS query string, any other key = an"
        " HTTP header (e.g. Authorization). Used for every --url; never printed."),
    save_as: Optional[str] = typer.Option(None, help="File name to save the (single) --url as."),
) -> None:
    """Download (resumable, checksum-verified) and safely extract dataset archives."""
    from lanex_trainer.data.download import DownloadError, DownloadUsageError, download_all, load_credentials

    try:
        if save_as is not None and len(url) != 1:
            raise DownloadUsageError(f"--save-as names one file; got {len(url)} --url values")
        secret = load_credentials(credentials) if credentials is not None else None
        results = download_all(url, sha256, out, extract=extract, credentials=secret,
                               filenames=[save_as] if save_as is not None else None)
    except DownloadError as error:  # exit 2: the arguments or credentials are wrong; 1: the download failed
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2 if isinstance(error, DownloadUsageError) else 1) from error
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
    typer.echo(f"layout: {summary['layout']['name']}: {summary['layout']['description']}", err=True)
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


def _configure_logging() -> None:
    import logging
    import os

    rank = os.environ.get("RANK") or os.environ.get("HOROVOD_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "0"
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")


def train_command(
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of training settings (snake_case)."),
    data_root: Optional[Path] = typer.Option(None, help="Prepared dataset root."),
    output_dir: Optional[Path] = typer.Option(None, help="Where checkpoints, logs and results go."),
    backbone: Optional[str] = typer.Option(None, help="vgg16_bn, resnet18 or small."),
    pretrained_weights: Optional[Path] = typer.Option(None, help="torchvision ImageNet state_dict file of the backbone."),
    height: Optional[int] = typer.Option(None, help="Input height (multiple of 16)."),
    width: Optional[int] = typer.Option(None, help="Input width (multiple of 16)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per worker per step (env BATCH_SIZE)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs."),
    max_iterations: Optional[int] = typer.Option(None, help="Stop after this many steps."),
    lr: Optional[float] = typer.Option(None, help="Base learning rate per worker batch."),
    warmup_iterations: Optional[int] = typer.Option(None, help="Warm-up steps (default: warmup_fraction of the run)."),
    loader_workers: Optional[int] = typer.Option(None, help="DataLoader workers (env NUM_WORKERS)."),
    use_workers: Optional[bool] = typer.Option(None, "--use-workers/--no-use-workers", help="Multi-process loading (env USE_WORKERS)."),
    validation: Optional[bool] = typer.Option(None, "--val/--no-val", help="Per-epoch validation (env USE_VAL)."),
    val_batch_size: Optional[int] = typer.Option(None, help="Validation batch per worker (env VAL_BATCH_SIZE)."),
    backend: Optional[str] = typer.Option(None, help="auto, torch or horovod."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints."),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help="Continue from the newest checkpoint."),
    sync_batchnorm: Optional[bool] = typer.Option(None, "--sync-batchnorm/--no-sync-batchnorm", help="SyncBatchNorm."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda."),
    progress_interval: Optional[float] = typer.Option(None, help="Seconds between progress reports "
                                                      "(progress.json, LANEX_PROGRESS lines; env LANEX_PROGRESS_INTERVAL)."),
    setting: List[str] = typer.Option([], "--set", help="Any other TrainConfig field as key=value (YAML value)."),
) -> None:
    """Train SCNN on a prepared dataset (single process, or one rank of a distributed job)."""
    import yaml

    from lanex_trainer.config import ConfigError, build_config
    from lanex_trainer.engine import TrainingDiverged
    from lanex_trainer.lease import Fenced
    from lanex_trainer.model.backbones import PretrainedWeightsError
    from lanex_trainer.preemption import Preempted, exit_at_once, preempted_exit_code

    _configure_logging()
    overrides = {k: v for k, v in locals().items() if k not in {"config", "setting", "yaml", "ConfigError", "build_config",
                                                               "TrainingDiverged", "Fenced", "preempted_exit_code",
                                                               "Preempted", "exit_at_once", "PretrainedWeightsError"}}
    for item in setting:
        key, sep, value = item.partition("=")
        if not sep:
            typer.echo(f"error: --set {item!r}: expected key=value", err=True)
            raise typer.Exit(2)
        overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
    try:
        cfg = build_config(file=config, overrides=overrides)
        from lanex_trainer.train import run_training

        results = run_training(cfg)
    except (ConfigError, PretrainedWeightsError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    except (TrainingDiverged, Fenced) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    except Preempted as preempted:
        import os

        from lanex_trainer.distributed import detect_world

        if detect_world().is_main:
            typer.echo(f"lanex train: {preempted}", err=True)
        exit_at_once(preempted_exit_code(os.environ))
    from lanex_trainer.distributed import detect_world

    if detect_world().is_main:
        summary = {k: results.get(k) for k in ("accuracy", "fp", "fn", "epochs", "steps", "images_per_second", "checkpoint")}
        typer.echo(json.dumps(summary))


def predict_command(
    checkpoint: Path = typer.Option(..., help="A checkpoint written by `lanex train` (best.pt, final.pt, ...)."),
    images: List[Path] = typer.Option(..., "--images", help="Image files or directories (searched recursively)."),
    out: Path = typer.Option(..., help="Output directory: predictions.json and overlays/."),
    overlays: bool = typer.Option(True, help="Write overlay PNGs of the detected lanes."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """TuSimple-format predictions (with measured run_time) and lane overlays."""
    from lanex_trainer.predict import PredictError, predict

    _configure_logging()
    try:
        summary = predict(checkpoint, images, out, write_overlays=overlays, device=device)
    except PredictError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(json.dumps(summary))


def import_checkpoint_command(
    file: Path = typer.Argument(..., help="The checkpoint to import (SCNN_Pytorch / TR-4896: {'net': state_dict, ...})."),
    source: str = typer.Option(..., "--from", help="Where it comes from: scnn-pytorch."),
    out: Path = typer.Option(..., help="The lanex checkpoint to write (for `lanex predict --checkpoint`)."),
    height: int = typer.Option(288, help="Input height it was trained at (multiple of 16)."),
    width: Optional[int] = typer.Option(None, help="Input width it was trained at; default: from its existence head."),
) -> None:
    """Turn a TR-era SCNN checkpoint (other key names, DataParallel prefixes) into a lanex checkpoint."""
    from lanex_trainer.checkpoint_import import SOURCES, ImportCheckpointError, import_scnn_pytorch

    if source not in SOURCES:
        typer.echo(f"error: --from {source!r}: expected one of {', '.join(SOURCES)}", err=True)
        raise typer.Exit(2)
    try:
        summary = import_scnn_pytorch(file, out, height=height, width=width)
    except ImportCheckpointError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(json.dumps(summary))


def launch_command(
    command: List[str] = typer.Argument(..., help="The training command, after `--`."),
    backend: str = typer.Option("auto", help="horovod, torch or auto (sets LANEX_BACKEND for the ranks)."),
    processes: Optional[int] = typer.Option(None, min=1, help="Processes in all (default RUNAI_MPI_NUM_WORKERS, hostfile slots, or 1)."),
    launcher: str = typer.Option("auto", help="auto, torchrun, mpirun or horovodrun."),
    master_port: Optional[int] = typer.Option(None, help="Rendezvous port for torchrun/mpirun (default: $MASTER_PORT or 29500)."),
    termination_log: Optional[Path] = typer.Option(None, help="Write the results (or the failure) here, e.g. /dev/termination-log."),
    results: Optional[Path] = typer.Option(None, help="results.json to report (default: <--output-dir>/results.json)."),
    worker_wait_seconds: float = typer.Option(DEFAULT_WAIT_SECONDS, envvar="LANEX_WORKER_WAIT_SECONDS",
                                              help="In an MPIJob launcher: wait at most this long for every hostfile "
                                                   "host to accept ssh before starting (0: do not wait)."),
    ssh_port: int = typer.Option(DEFAULT_SSH_PORT, envvar="LANEX_SSH_PORT", help="The workers' sshd port (the trainer image's)."),
) -> None:
    """Start distributed training: mpirun/horovodrun in an MPIJob launcher, torchrun elsewhere."""
    from lanex_trainer.launch import LaunchError, hostfile_in_use, plan_launch, results_path_of, run_launch
    from lanex_trainer.worker_wait import WorkerWaitError, hostfile_hosts, remote_hosts, wait_for_hosts

    try:
        import os

        hostfile = hostfile_in_use(os.environ)
        if hostfile is not None and worker_wait_seconds > 0:
            try:
                wait_for_hosts(remote_hosts(hostfile_hosts(hostfile)), ssh_port, worker_wait_seconds,
                               echo=lambda text: typer.echo(text, err=True))
            except WorkerWaitError as error:
                message = f"training failed: {error}"
                typer.echo(f"lanex launch: {message}", err=True)
                if termination_log is not None:
                    termination_log.write_text(message)
                raise typer.Exit(1) from error
        port = master_port or int(os.environ.get("MASTER_PORT", 29500))
        plan = plan_launch(command, backend, processes, launcher, master_port=port)
        code = run_launch(plan, termination_log, results or results_path_of(command))
    except LaunchError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    raise typer.Exit(code)


def worker_command(
    command: List[str] = typer.Argument(..., help="The worker's server, after `--` (the trainer image's sshd)."),
    grace_seconds: float = typer.Option(
        DEFAULT_GRACE_SECONDS, "--grace-seconds", envvar=GRACE_ENV, min=0,
        help="On SIGTERM: how long the training processes below get to checkpoint their step and leave (the pod's"
        " terminationGracePeriodSeconds)."),
) -> None:
    """A worker pod's entry point: runs COMMAND; on SIGTERM lets training checkpoint its step before it stops."""
    from lanex_trainer.worker_entry import main

    raise typer.Exit(main(command, grace_seconds))


mlflow_app = typer.Typer(help="MLflow tracking: replay what a run could not send, a sweep's parent run.",
                         no_args_is_help=True)


@mlflow_app.command("replay")
def mlflow_replay(
    output_dir: Path = typer.Argument(..., help="A training output directory (holds mlflow/run.json)."),
) -> None:
    """Send the MLflow records a run kept while its tracking server did not answer (credentials: MLflow's
    MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, from the environment)."""
    import logging

    from lanex_trainer.tracking import replay, run_link

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        done, pending = replay(output_dir)
    except FileNotFoundError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    link = run_link(output_dir)
    typer.echo(json.dumps({"sent": done, "pending": pending, "mlflow": link}))
    if not done:
        typer.echo(f"lanex mlflow replay: {pending} record(s) still pending in {output_dir}/mlflow: the server did not "
                   "answer; run it again later", err=True)
        raise typer.Exit(1)


@mlflow_app.command("sweep-run")
def mlflow_sweep_run(
    tracking_uri: str = typer.Option(..., help="http(s) URL of the tracking server."),
    experiment_name: str = typer.Option(..., help="MLflow experiment of the sweep and its trials."),
    sweep: str = typer.Option(..., help="The sweep as NAMESPACE/NAME (the parent run's name is NAME)."),
    sweep_uid: str = typer.Option(..., help="The sweep's uid: finds the parent run again (tag lanex.sweepUid)."),
    end: Optional[str] = typer.Option(None, help="End the parent run with this status (FINISHED or FAILED), adopting "
                                                 "every trial run of the sweep that has no parent yet."),
    params: str = typer.Option("{}", help="JSON object: the sweep's parameters (logged when the run is created)."),
    tags: str = typer.Option("{}", help="JSON object: tags of the parent run."),
    wait_seconds: float = typer.Option(120.0, min=0, help="Retry (with backoff) this long while the server does not "
                                                          "answer."),
    termination_log: Optional[Path] = typer.Option(None, help="Also write the run's link here (a pod's termination "
                                                              "message)."),
) -> None:
    """Find or create a sweep's MLflow parent run (`--end`: end it): the one creator of it, run by the sweep."""
    import time

    from lanex_trainer.tracking.server import MlflowServer, Unreachable
    from lanex_trainer.tracking.sweep import end_sweep_run, find_sweep_run, start_sweep_run

    try:
        params_value, tags_value = json.loads(params), json.loads(tags)
    except json.JSONDecodeError as error:
        typer.echo(f"error: --params/--tags: not JSON ({error.msg})", err=True)
        raise typer.Exit(2) from None
    if end is not None and end not in ("FINISHED", "FAILED", "KILLED"):
        typer.echo(f"error: --end {end!r}: expected FINISHED, FAILED or KILLED", err=True)
        raise typer.Exit(2)
    deadline, backoff = time.monotonic() + wait_seconds, 1.0
    while True:
        try:
            server = MlflowServer(tracking_uri)
            if end is None:
                found = start_sweep_run(server, experiment_name, sweep, sweep_uid, params_value, tags_value)
            else:
                found = find_sweep_run(server, experiment_name, sweep_uid)
                if found is None:
                    typer.echo(f"error: no MLflow parent run of sweep {sweep} (uid {sweep_uid}) in experiment "
                               f"{experiment_name!r}", err=True)
                    raise typer.Exit(1)
                end_sweep_run(server, found, sweep_uid, end, tags_value)
            break
        except Unreachable as error:
            if time.monotonic() + backoff > deadline:
                message = f"MLflow tracking server {tracking_uri}: no answer ({error})"
                typer.echo(f"lanex mlflow sweep-run: {message}", err=True)
                if termination_log is not None:
                    termination_log.write_text(message[:4096])
                raise typer.Exit(1) from None
            time.sleep(backoff)
            backoff = min(30.0, backoff * 2)
    text = json.dumps(found, separators=(",", ":"))
    if termination_log is not None:
        termination_log.write_text(text)
    typer.echo(text)


def register(app: typer.Typer) -> None:
    """Attach the trainer's commands to the top-level `lanex` app."""
    app.add_typer(data_app, name="data")
    app.add_typer(mlflow_app, name="mlflow")
    app.command("eval")(eval_command)
    app.command("train")(train_command)
    app.command("predict")(predict_command)
    app.command("import-checkpoint")(import_checkpoint_command)
    app.command("launch", context_settings={"allow_interspersed_args": False})(launch_command)
    app.command("worker", context_settings={"allow_interspersed_args": False})(worker_command)
