"""`lanex train`: wires data, model, optimiser and checkpoints into a (distributed) run.

Rank 0 alone writes into `output_dir` (checkpoints, TensorBoard, results.json, curves, progress.json,
overlays and worst.png) and, when `cfg.mlflow` is set, logs the run to MLflow (`lanex_trainer.tracking`:
journaled, sent by a background thread, never waited for); every rank reads the checkpoint that rank 0 chose, so all resume at the
same step. A resumed run sees exactly the batches, augmentations and random states an
uninterrupted one would have. SIGTERM/SIGINT stop the run after the current step with a
checkpoint of exactly that step (see preemption.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from lanex_trainer.checkpoint import (atomic_torch_save, checkpoint_path, load_checkpoint, load_latest_checkpoint,
                                      save_checkpoint)
from lanex_trainer.config import ConfigError, TrainConfig
from lanex_trainer.distributed import Distributed, init_distributed
from lanex_trainer.engine import EvalResult, evaluate, train_one_epoch
from lanex_trainer.evaluation.postprocess import PostprocessSettings
from lanex_trainer.lease import OutputOwnership
from lanex_trainer.losses import SCNNLoss
from lanex_trainer.preemption import (PREEMPTED_FILE, Preempted, PreemptionRecord, StopRequest, ignore_stop_signals,
                                      read_record, write_record)
from lanex_trainer.progress import GpuProbe, ProgressReporter, epochs_of_run
from lanex_trainer.sampling import ResumableDistributedSampler, evaluation_shard

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
BEST_MODEL = "best.pt"
FINAL_MODEL = "final.pt"
STEP_LOG = "train_log.jsonl"
OVERLAY_IMAGES = 8  # test images drawn with their predicted lanes at the end of a run
PREEMPTION_FLUSH_S = 2.0  # what MLflow has not taken by then stays journaled: the grace period is for the checkpoint


def warmup_poly(total_steps: int, warmup_steps: int, power: float):
    """lr factor: linear from 0.1 to 1 over the warm-up, then (1 - progress)^power."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return 0.1 + 0.9 * step / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return max(0.0, 1.0 - progress) ** power

    return factor


def run_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: ``epochs`` passes or ``max_iterations``, whichever ends first."""
    limits = [cfg.max_iterations] if cfg.max_iterations is not None else []
    if cfg.epochs is not None:
        limits.append(cfg.epochs * steps_per_epoch)
    return min(limits)


def pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' requested but no GPU is visible")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def log_effective_config(cfg: TrainConfig, dist: Distributed) -> None:
    if dist.is_main:
        log.info(
            "effective training config (world size %d, backend %s, launcher %s): %s",
            dist.world_size, dist.backend, dist.world.launcher, cfg.model_dump_json(),
        )
        if cfg.enable_snapshot or cfg.pvc_name:
            log.info(
                "ENABLE_SNAPSHOT=%s PVC_NAME=%s noted: snapshots are taken by the lanex operator after training",
                cfg.enable_snapshot, cfg.pvc_name,
            )


def run_training(cfg: TrainConfig) -> dict:
    """Train per `cfg` in the job described by the environment; returns the results (all ranks).

    Raises Preempted (every rank) when SIGTERM/SIGINT stopped the run after checkpointing its last step.
    """
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    # From the start: a signal while the job starts up stops it after its first step, checkpointed.
    stop = StopRequest().install()
    try:
        dist = init_distributed(cfg.backend, use_cuda, cfg.collective_timeout_s, cfg.sync_batchnorm, cfg.fp16_allreduce)
        ownership = OutputOwnership(cfg.output_dir, dist, cfg.lease_stale_s, cfg.lease_heartbeat_s)
        try:
            ownership.acquire()  # before anything is read from or written to output_dir
            return Trainer(cfg, dist, ownership, stop).run()
        finally:
            ownership.release()
            dist.shutdown()
    finally:
        stop.restore()


def _single_threaded_worker(worker_id: int) -> None:
    """Loader workers are the parallelism: one torch thread each (OpenCV threads are off process-wide).

    They share their rank's process group, so a preemption's signal reaches them too: they ignore
    it and keep loading until their rank has finished its step (they end with their rank)."""
    torch.set_num_threads(1)
    ignore_stop_signals()


class Trainer:
    """Holds one run's collaborators; `run()` is the loop."""

    def __init__(self, cfg: TrainConfig, dist: Distributed, ownership: OutputOwnership,
                 stop: Optional[StopRequest] = None):
        from lanex_trainer.data.dataset import AugmentConfig, LaneDataset
        from lanex_trainer.data.prepare import is_prepared, load_index
        from lanex_trainer.model.backbones import warn_if_from_scratch
        from lanex_trainer.model.scnn import build_model

        self.cfg, self.dist, self.ownership = cfg, dist, ownership
        self.stop = stop or StopRequest()
        log_effective_config(cfg, dist)
        if not is_prepared(cfg.data_root):
            raise ConfigError(f"data_root {cfg.data_root}: not prepared; run `lanex data prepare --root {cfg.data_root}`")
        self.device = pick_device(cfg, dist.world.local_rank)
        self.channels_last = cfg.channels_last and self.device.type == "cuda"
        seed_everything(cfg.seed)

        self.train_entries = load_index(cfg.data_root, "train")
        self.val_entries = load_index(cfg.data_root, "val") if cfg.validation else []
        self.test_entries = load_index(cfg.data_root, "test")
        if not self.train_entries:
            raise ConfigError(f"data_root {cfg.data_root}: the train split is empty")

        def dataset(entries, augment):
            return LaneDataset(entries, cfg.data_root, cfg.height, cfg.width, augment=augment,
                               lane_width_px=cfg.lane_width_px, seed=cfg.seed,
                               augment_config=AugmentConfig(horizontal_flip=cfg.horizontal_flip))

        self.train_set = dataset(self.train_entries, cfg.augment)
        self.sampler = ResumableDistributedSampler(len(self.train_set), dist.world_size, dist.rank, seed=cfg.seed)
        self.loader_workers = cfg.loader_workers if cfg.use_workers else 0
        self.train_loader = self._loader(self.train_set, cfg.batch_size, sampler=self.sampler)
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.batch_size)
        self.total_steps = run_steps(cfg, self.steps_per_epoch)
        self.warmup_steps = (cfg.warmup_iterations if cfg.warmup_iterations is not None
                             else round(cfg.warmup_fraction * self.total_steps))

        model = build_model(cfg.backbone, input_size=(cfg.height, cfg.width), pretrained_weights=cfg.pretrained_weights)
        if dist.is_main:
            warn_if_from_scratch(cfg.backbone, cfg.pretrained_weights)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = SCNNLoss(background_weight=cfg.background_weight, existence_weight=cfg.existence_loss_weight).to(self.device)
        self.lr = cfg.lr * (dist.world_size if cfg.lr_scaling == "linear" else 1)
        self.postprocess = PostprocessSettings(cfg.existence_threshold, cfg.point_threshold)
        self.out = cfg.output_dir
        self.checkpoints = self.out / "checkpoints"
        self.writer = None
        self.history: list[dict] = []
        self.eval_loaders: dict[str, DataLoader] = {}
        self.best: Optional[dict] = None
        # The current epoch's loss so far, checkpointed with it: an epoch resumed mid-way reports the
        # same mean training loss as an uninterrupted one.
        self.epoch_totals = {"steps": 0, "loss_sum": 0.0}
        self.saved_step: Optional[int] = None  # the step of the newest checkpoint this run wrote
        self.tracker = None  # rank 0's MLflow run (lanex_trainer.tracking.RunTracker) when cfg.mlflow is set

    def _loader(self, dataset, batch_size: int, sampler=None) -> DataLoader:
        workers = self.loader_workers
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
            pin_memory=self.device.type == "cuda", drop_last=False,
            worker_init_fn=_single_threaded_worker, persistent_workers=workers > 0,
            # Workers' base seed from a private generator: the global RNG (dropout) stays
            # untouched, so a resumed run replays the same random stream.
            generator=torch.Generator().manual_seed(self.cfg.seed),
            prefetch_factor=4 if workers else None,
        )

    def _eval_loader(self, entries):
        from lanex_trainer.data.dataset import LaneDataset

        dataset = LaneDataset(entries, self.cfg.data_root, self.cfg.height, self.cfg.width, augment=False,
                              lane_width_px=self.cfg.lane_width_px, seed=self.cfg.seed)
        shard = Subset(dataset, evaluation_shard(len(dataset), self.dist.world_size, self.dist.rank))
        return self._loader(shard, self.cfg.val_batch_size)

    # -- checkpoint state -------------------------------------------------------------------
    def _state(self, optimizer, scheduler, epoch: int, batch_in_epoch: int, step: int) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step,
            "rng": rng_state(self.device),
            "config": self.cfg.model_dump(mode="json"),
            "fingerprint": self.cfg.fingerprint(),
            "history": self.history, "best": self.best,
            "world_size": self.dist.world_size,
            "run_id": self.ownership.run_id,
            "epoch_totals": dict(self.epoch_totals),
        }

    def _resume_state(self) -> Optional[dict]:
        """Rank 0 picks the newest readable checkpoint; every rank loads that same file."""
        chosen = None
        if self.cfg.resume and self.dist.is_main:
            found = load_latest_checkpoint(self.checkpoints)
            chosen = str(found[0]) if found else None
        chosen = self.dist.broadcast_object(chosen)
        if chosen is None:
            return None
        state = load_checkpoint(chosen)
        previous_length = (state["config"].get("epochs"), state["config"].get("max_iterations"))
        if previous_length != (self.cfg.epochs, self.cfg.max_iterations) and self.dist.is_main:
            log.warning("resuming with epochs/max_iterations %s instead of %s: the learning-rate schedule is "
                        "stretched to the new length from here on", (self.cfg.epochs, self.cfg.max_iterations),
                        previous_length)
        if state["fingerprint"] != self.cfg.fingerprint():
            raise ConfigError(
                f"output_dir {self.out}: checkpoint {chosen} was written with a different training config; "
                "use a new output_dir, or --no-resume to start over there"
            )
        if self.dist.is_main:
            preempted = read_record(self.out)
            why = f"; run {preempted.run_id} was preempted by {preempted.signal} there" if preempted else ""
            log.info("resuming from %s at step %d (epoch %d, %d of its %d steps done)%s", chosen, state["step"],
                     state["epoch"] + 1, state["batch_in_epoch"], self.steps_per_epoch, why)
            (self.out / PREEMPTED_FILE).unlink(missing_ok=True)
        return state

    # -- MLflow (rank 0) ---------------------------------------------------------------------
    def _start_tracking(self, step: int, resumed: bool) -> None:
        cfg = self.cfg
        if cfg.mlflow is None or not self.dist.is_main:
            return
        from lanex_trainer.tracking import RunTracker

        settings = cfg.mlflow.model_copy(update={"tags": {"lanex.configHash": cfg.fingerprint(), **cfg.mlflow.tags}})
        self.tracker = RunTracker(settings, self.out)
        params = {**cfg.model_dump(mode="json"),
                  "run": {"world_size": self.dist.world_size, "backend": self.dist.backend,
                          "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                          "warmup_steps": self.warmup_steps, "effective_lr": self.lr}}
        self.tracker.start(params, resumed_at=step if resumed else None, fresh=not cfg.resume)

    def _track(self, step: int, values: dict) -> None:
        if self.tracker is not None:
            self.tracker.metrics(step, values)

    def _end_tracking(self, status: str, wait_s: Optional[float] = None) -> None:
        if self.tracker is not None and not self.tracker.ended:
            self.tracker.end(status, wait_s)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        try:
            return self._run()
        except Preempted:
            raise  # the MLflow run was marked KILLED by _preempt; the next start continues it
        except BaseException:
            self._end_tracking("FAILED", wait_s=5.0)
            raise

    def _run(self) -> dict:
        cfg, dist = self.cfg, self.dist
        resume = self._resume_state()
        if resume:
            self.model.load_state_dict(resume["model"])
        train_model = dist.wrap_model(self.model, self.device)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_poly(self.total_steps, self.warmup_steps, cfg.poly_power))
        epoch, batch_in_epoch, step = 0, 0, 0
        if resume:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            epoch, batch_in_epoch, step = resume["epoch"], resume["batch_in_epoch"], resume["step"]
            self.history, self.best = resume["history"], resume["best"]
            self.epoch_totals = dict(resume.get("epoch_totals") or self.epoch_totals)
        optimizer = dist.wrap_optimizer(optimizer, self.model)
        dist.broadcast_initial_state(self.model, optimizer)
        if resume:
            restore_rng_state(resume["rng"], self.device)
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))
            # One line per optimizer step; a resumed run appends (the newest line of a step wins).
            self.step_log = (self.out / STEP_LOG).open("a")
        self._start_tracking(step, resumed=resume is not None)
        self.progress = ProgressReporter(
            dist, self.out, epochs=epochs_of_run(self.total_steps, self.steps_per_epoch, cfg.epochs),
            steps=self.total_steps, run_id=self.ownership.run_id, interval_s=cfg.progress_interval,
            gpu=GpuProbe.for_device(self.device), tracking=self.tracker.link if self.tracker is not None else None)
        self.progress.start(step, epoch, self.history)

        train_seconds, trained_images = 0.0, 0
        while (cfg.epochs is None or epoch < cfg.epochs) and step < self.total_steps:
            self.sampler.set_epoch(epoch, start_index=batch_in_epoch * cfg.batch_size)
            self.train_set.set_epoch(epoch)
            epoch_first_step = step - batch_in_epoch

            def on_step(new_step: int, loss: float, timing, epoch=epoch, epoch_first_step=epoch_first_step) -> None:
                self.epoch_totals["steps"] += 1
                self.epoch_totals["loss_sum"] += loss
                self.progress.step(new_step, epoch, loss, optimizer.param_groups[0]["lr"], timing.images,
                                   timing.data_seconds, timing.seconds)
                if dist.is_main:
                    self.step_log.write(json.dumps({"step": new_step, "epoch": epoch, "loss": loss,
                                                    "lr": optimizer.param_groups[0]["lr"]}) + "\n")
                    self.step_log.flush()
                    self._track(new_step, {"loss": loss, "learning_rate": optimizer.param_groups[0]["lr"],
                                           **self.progress.throughput_at(new_step)})
                if dist.is_main and new_step % cfg.log_every == 0:
                    self.writer.add_scalar("train/loss", loss, new_step)
                    self.writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], new_step)
                # The epoch's last step is checkpointed by the epoch-end save right after (with the
                # next epoch as its position), so a resumed run never starts inside a finished epoch.
                last_of_epoch = new_step - epoch_first_step >= self.steps_per_epoch
                if new_step % cfg.checkpoint_every == 0 and not last_of_epoch:
                    self.ownership.check()  # fencing: every rank stops here if another run took output_dir
                if dist.is_main and new_step % cfg.checkpoint_every == 0 and not last_of_epoch:
                    save_checkpoint(self._state(optimizer, scheduler, epoch, new_step - epoch_first_step, new_step),
                                    self.checkpoints, new_step, cfg.keep_checkpoints)
                    self.saved_step = new_step

            def should_stop(new_step: int, epoch_first_step=epoch_first_step) -> bool:
                # The last step of an epoch (or of the run) goes through the epoch end first (validation and
                # the epoch-end checkpoint), so a resumed run never starts inside a finished epoch. The
                # answer is the same on every rank, which therefore all skip or all join the collective.
                if new_step - epoch_first_step >= self.steps_per_epoch or new_step >= self.total_steps:
                    return False
                return self.stop.agreed(dist)

            stats = train_one_epoch(
                train_model, self.criterion, optimizer, self.train_loader, scheduler, self.device, epoch,
                dist=dist, first_step=step, max_steps=self.total_steps, amp=cfg.amp,
                channels_last=self.channels_last, grad_clip_norm=cfg.grad_clip_norm, on_step=on_step,
                should_stop=should_stop,
            )
            step += stats.steps
            if stats.stopped:  # mid-epoch: checkpoint this exact step and leave
                self._preempt(optimizer, scheduler, epoch, step - epoch_first_step, step)
            train_seconds += stats.seconds
            trained_images += stats.images
            finished_epoch = step - epoch_first_step >= self.steps_per_epoch
            self.progress.epoch_end()
            record = {"epoch": epoch, "step": step,
                      "train_loss": self.epoch_totals["loss_sum"] / max(self.epoch_totals["steps"], 1),
                      "images_per_second": stats.images * dist.world_size / max(stats.seconds, 1e-9)}
            if cfg.validation and self.val_entries:
                self.progress.validating()
                val = self._evaluate(train_model, "val", self.val_entries)
                record.update({f"val_{k}": v for k, v in val.metrics().items()})
                self.progress.validated(epoch, val.metrics())
            self.history.append(record)
            self._log_epoch(record)
            if finished_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
                self.epoch_totals = {"steps": 0, "loss_sum": 0.0}
            else:
                batch_in_epoch = step - epoch_first_step
            self.ownership.check()
            if dist.is_main:
                state = self._state(optimizer, scheduler, epoch, batch_in_epoch, step)
                save_checkpoint(state, self.checkpoints, step, cfg.keep_checkpoints)
                self.saved_step = step
                self._track_best(record, state)
            if self.stop.agreed(dist):  # asked during the epoch's last step or its validation
                self._preempt(optimizer, scheduler, epoch, batch_in_epoch, step)
        # Everything trained is checkpointed: from here a signal may end the run at once (the next
        # start only repeats the test pass), instead of making people wait for it.
        self.stop.restore()
        return self._finish(train_model, optimizer, scheduler, epoch, step, trained_images, train_seconds)

    def _preempt(self, optimizer, scheduler, epoch: int, batch_in_epoch: int, step: int) -> None:
        """Checkpoint `step` (unless this run just did), record the preemption, raise Preempted on every rank."""
        self.ownership.check()
        record = None
        if self.dist.is_main:
            path = checkpoint_path(self.checkpoints, step)
            if self.saved_step != step:
                path = save_checkpoint(self._state(optimizer, scheduler, epoch, batch_in_epoch, step),
                                       self.checkpoints, step, self.cfg.keep_checkpoints)
            received = self.stop.received_at
            record = PreemptionRecord(
                run_id=self.ownership.run_id, signal=self.stop.signal or "a stop signal", step=step,
                steps=self.total_steps, epoch=epoch, checkpoint=str(path),
                seconds_to_checkpoint=round(time.monotonic() - received, 3) if received is not None else 0.0)
            write_record(self.out, record)
            self.writer.close()
            self.step_log.close()
            if self.tracker is not None:  # the next start continues this MLflow run (and sends what is left)
                self.tracker.tags({"lanex.preemptedAtStep": step})
                self._end_tracking("KILLED", wait_s=PREEMPTION_FLUSH_S)
        self.progress.preempted()
        record = self.dist.broadcast_object(record)
        raise Preempted(record)

    def _evaluate(self, model, split: str, entries) -> EvalResult:
        # One loader per split for the whole run: validation every epoch reuses its dataset and workers.
        if split not in self.eval_loaders:
            self.eval_loaders[split] = self._eval_loader(entries)
        return evaluate(model, self.criterion, self.eval_loaders[split], entries, self.device, dist=self.dist,
                        postprocess=self.postprocess, amp=self.cfg.amp, channels_last=self.channels_last)

    def _log_epoch(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        for key, value in record.items():
            if key not in {"epoch", "step"}:
                self.writer.add_scalar(f"epoch/{key}", value, record["step"])
        log.info("epoch %s", json.dumps(record))
        # MLflow: the epoch's record at its last step; `epoch` 1-based as in progress.json, and the epoch's
        # throughput apart from the per-step `images_per_second` of the progress publications.
        tracked = {("epoch_images_per_second" if key == "images_per_second" else key): value
                   for key, value in record.items() if key not in {"epoch", "step"}}
        self._track(record["step"], {"epoch": record["epoch"] + 1, **tracked})

    def _track_best(self, record: dict, state: dict) -> None:
        """Best by validation accuracy, else validation loss, else training loss."""
        if "val_accuracy" in record:
            score = (record["val_accuracy"], -record["val_loss"])
        else:
            score = (0.0, -record.get("val_loss", record["train_loss"]))
        if self.best is None or tuple(self.best["score"]) < score:
            self.best = {"score": list(score), "epoch": record["epoch"], "step": record["step"]}
            state["best"] = self.best
            atomic_torch_save(state, self.out / BEST_MODEL)

    def _finish(self, train_model, optimizer, scheduler, epoch, step, trained_images, train_seconds) -> dict:
        cfg, dist = self.cfg, self.dist
        self.ownership.check()
        final_state = self._state(optimizer, scheduler, epoch, 0, step) if dist.is_main else None
        if dist.is_main:
            atomic_torch_save(final_state, self.out / FINAL_MODEL)
        best_path = self.out / BEST_MODEL
        test = None
        if self.test_entries:
            dist.barrier()  # rank 0's best/final model is on disk before any rank reads it
            self.progress.validating()
            chosen = best_path if best_path.exists() else self.out / FINAL_MODEL
            self.model.load_state_dict(load_checkpoint(chosen)["model"])
            test = self._evaluate(train_model, "test", self.test_entries)
            self.ownership.check()  # the test pass can be long: still the owner before writing its results?
            # Each rank predicted its shard; rank 0 writes them all, in the test split's order.
            shards = dist.gather_objects(test.predictions)
            if dist.is_main:
                order = {entry["raw_file"]: i for i, entry in enumerate(self.test_entries)}
                predictions = sorted((p for shard in shards for p in shard), key=lambda p: order[p["raw_file"]])
                self._write_predictions(predictions, self.out / "test_predictions.json")
                self._write_pictures(predictions)
        results = {
            "epochs": epoch, "steps": step, "world_size": dist.world_size, "backend": dist.backend,
            "images_per_second": trained_images * dist.world_size / max(train_seconds, 1e-9),
            "train_seconds": train_seconds,
            "checkpoint": str(best_path if best_path.exists() else self.out / FINAL_MODEL),
            "config_hash": cfg.fingerprint(), "run_id": self.ownership.run_id,
            "best": self.best, "history": self.history,
        }
        last_val = next((r for r in reversed(self.history) if "val_accuracy" in r), None)
        if last_val:
            results["validation"] = {k[4:]: v for k, v in last_val.items() if k.startswith("val_")}
        if test is not None:
            results["test"] = test.metrics()
        for key in ("accuracy", "fp", "fn"):
            source = results.get("test") or results.get("validation")
            results[key] = source[key] if source else None
        if self.tracker is not None:
            results["mlflow"] = self.tracker.link()
        if dist.is_main:
            self.writer.close()
            self.step_log.close()
            (self.out / RESULTS_FILE).write_text(json.dumps(results, indent=2))
            from lanex_trainer.curves import plot_curves

            plot_curves(self.history, self.out / "curves.png")
        self._track_results(results, step)
        self.progress.finished()
        self._end_tracking("FINISHED")
        return results

    def _track_results(self, results: dict, step: int) -> None:
        """The test results and the run's files to MLflow (journaled now, uploaded in the background)."""
        if self.tracker is None:
            return
        if results.get("test"):
            self._track(step, {f"test_{key}": value for key, value in results["test"].items()})
        for name in (RESULTS_FILE, "curves.png", "worst.png"):
            if (self.out / name).is_file():
                self.tracker.artifact(self.out / name)
        if (self.out / "overlays").is_dir():
            self.tracker.artifact(self.out / "overlays", "overlays")
        if self.cfg.mlflow is not None and self.cfg.mlflow.log_best_checkpoint and (self.out / BEST_MODEL).is_file():
            self.tracker.artifact(self.out / BEST_MODEL, "checkpoints")

    def _write_pictures(self, predictions: list[dict]) -> None:
        """Overlays of the first test images and `worst.png`, each image with its own TuSimple scores."""
        from lanex_trainer.evaluation.tusimple import evaluate_per_image
        from lanex_trainer.pictures import draw_overlay, worst_first, write_worst_sheet

        ground_truth = [{"raw_file": e["raw_file"], "lanes": e["lanes"], "h_samples": e["h_samples"]}
                        for e in self.test_entries]
        per_image = evaluate_per_image(predictions, ground_truth)
        lanes_of = {p["raw_file"]: p["lanes"] for p in predictions}
        scores_of = {raw_file: {"accuracy": float(a), "fp": float(fp), "fn": float(fn)} for raw_file, a, fp, fn
                     in zip(per_image.raw_files, per_image.accuracy, per_image.fp, per_image.fn)}
        scored = [{**entry, "gt_lanes": entry["lanes"], "lanes": lanes_of[entry["raw_file"]], **scores_of[entry["raw_file"]]}
                  for entry in self.test_entries]
        for item in scored[:OVERLAY_IMAGES]:
            name = Path(item["raw_file"]).with_suffix("").as_posix().replace("/", "_") + ".png"
            draw_overlay(self.cfg.data_root / item["image"], item["lanes"], item["h_samples"],
                         self.out / "overlays" / name, ground_truth=item["gt_lanes"], scores=item)
        write_worst_sheet(worst_first(scored), self.cfg.data_root, self.out)

    def _write_predictions(self, predictions: list[dict], path: Path) -> None:
        path.write_text("".join(json.dumps(p) + "\n" for p in predictions))
