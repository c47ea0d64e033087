"""Live training progress, published by rank 0 while a run trains.

Why it exists: a run of TR-4896 trains for hours; without progress a healthy job and a hung one
look the same. Rank 0 writes one JSON object (the contract in PROGRESS_CONTRACT.md: epoch, step,
smoothed loss, learning rate, images/s over all ranks, data-wait share, ETA, validations, GPUs) to
`<output_dir>/progress.json` (atomically) and prints it as one `LANEX_PROGRESS {...}` stdout line,
where the operator finds it in the launcher's log and `lanex get --workspace` in the file.

Counts from all ranks travel in ONE small all-reduce at "sync" steps, not every step. Every rank
must take part in the same syncs, so they happen at step numbers all ranks know: rank 0 picks the
next one from its measured step time (about one publish interval ahead) and sends it along in the
same all-reduce. Every sync publishes; so do epoch ends, validations and the end of the run.

This module imports neither torch nor NVML at import time (the operator image and the CLI read
progress with it); `pynvml` (nvidia-ml-py) is imported only when a GPU run opens a probe.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
LOG_PREFIX = "LANEX_PROGRESS "
MARKER = "LANEX_PROGRESS {"  # what consumers search for: launchers may prefix the line
DEFAULT_INTERVAL_S = 10.0
LOSS_SMOOTHING = 0.9  # EMA weight of the previous value: about the last 10 steps count
CONTRACT_KEYS = ("state", "runId", "epoch", "epochs", "step", "steps", "loss", "learningRate", "imagesPerSecond",
                 "dataWaitFraction", "etaSeconds", "validation", "validationHistory", "gpus", "mlflow", "updatedAt")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_progress_line(line: str) -> Optional[dict]:
    """The progress object of one log line, or None when the line holds none (or a torn one)."""
    start = line.find(MARKER)
    if start < 0:
        return None
    try:
        found = json.loads(line[start + len(LOG_PREFIX):].strip())
    except json.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


def newest_progress(log_text: str) -> Optional[dict]:
    """The newest progress object in a log (tail): the last line that parses."""
    for line in reversed(log_text.splitlines()):
        found = parse_progress_line(line)
        if found is not None:
            return found
    return None


def read_progress(output_dir: Path) -> Optional[dict]:
    """`<output_dir>/progress.json`, or None when there is none yet (or it is not a JSON object)."""
    try:
        found = json.loads((output_dir / PROGRESS_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return found if isinstance(found, dict) else None


def atomic_write_text(path: Path, text: str) -> None:
    """Readers (another terminal, the CLI) see the old file or the new one, never half of it."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


# --- GPUs (NVML) -------------------------------------------------------------------------------


class GpuProbe:
    """Utilisation and memory of this rank's GPU through NVML; `sample()` is None when NVML fails."""

    def __init__(self, nvml: Any, handle: Any):
        self.nvml, self.handle = nvml, handle

    @classmethod
    def open(cls, device_index: int, uuid: Optional[str] = None,
             importer: Callable[[str], Any] = importlib.import_module) -> Optional["GpuProbe"]:
        """A probe of CUDA device `device_index`, or None without nvidia-ml-py, the NVML library or that device.

        The device is found by its UUID when known (CUDA_VISIBLE_DEVICES renumbers CUDA's devices,
        not NVML's), else by index (in a container both see only the GPUs it was given).
        """
        try:
            nvml = importer("pynvml")
        except ImportError:
            return None
        try:
            nvml.nvmlInit()
        except Exception as error:  # pynvml.NVMLError and its many subclasses (no library, no driver)
            log.info("GPU utilisation not reported: NVML unavailable (%s)", error)
            return None
        lookups = [lambda: nvml.nvmlDeviceGetHandleByIndex(device_index)]
        if uuid:
            name = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
            lookups.insert(0, lambda: nvml.nvmlDeviceGetHandleByUUID(name))
        for lookup in lookups:
            try:
                return cls(nvml, lookup())
            except Exception as error:
                failure = error
        log.info("GPU utilisation not reported: NVML does not know CUDA device %d (%s)", device_index, failure)
        return None

    @classmethod
    def for_device(cls, device) -> Optional["GpuProbe"]:
        """The probe of a torch device; None on CPU."""
        if getattr(device, "type", None) != "cuda":
            return None
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        return cls.open(index, str(uuid) if uuid else None)

    def sample(self) -> Optional[dict]:
        try:
            rates = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        except Exception:  # a GPU that fell off the bus must not stop training
            return None
        return {"utilizationPercent": float(rates.gpu), "memoryUsedBytes": int(memory.used),
                "memoryTotalBytes": int(memory.total)}


# --- the reporter ------------------------------------------------------------------------------

_COUNTS = 3  # images, data-wait seconds, step seconds (summed over ranks)
_GPU_FIELDS = ("utilizationPercent", "memoryUsedBytes", "memoryTotalBytes")
_NO_GPU = -1.0  # a rank without a GPU sample fills its slot with this (others fill 0)


@dataclass
class _Window:
    """What this rank did since the last sync."""

    images: int = 0
    data_seconds: float = 0.0
    step_seconds: float = 0.0
    steps: int = 0
    started: Optional[float] = None  # rank 0's clock when the window's first step began


@dataclass
class ProgressReporter:
    """Every rank calls `step`, `epoch_end`, `validating` and `finished` at the same points; rank 0 publishes.

    Epochs are 1-based here (train_log.jsonl's `epoch` is 0-based: progress epoch = log epoch + 1).
    """

    dist: Any  # lanex_trainer.distributed.Distributed
    output_dir: Path
    epochs: int
    steps: int
    run_id: Optional[str] = None
    interval_s: float = DEFAULT_INTERVAL_S
    gpu: Optional[GpuProbe] = None
    clock: Callable[[], float] = time.monotonic
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    show_bar: bool = True
    # The run's MLflow link ({"runId", "experimentId", "url"}) once it exists (lanex_trainer.tracking), else None.
    tracking: Optional[Callable[[], Optional[dict]]] = None

    def __post_init__(self) -> None:
        self.state = "training"
        self.epoch, self.step_count = 1, 0
        self.loss_ema: Optional[float] = None
        self.loss_weight = 0.0  # for the EMA's bias correction
        self.learning_rate: Optional[float] = None
        self.images_per_second: Optional[float] = None
        self.data_wait: Optional[float] = None
        self.gpus: Optional[list[dict]] = None
        self.history: list[dict] = []
        self.window = _Window()
        self.next_sync = 1
        self.train_seconds, self.trained_steps = 0.0, 0  # this process's training time (for the ETA)
        self.validation_seconds: list[float] = []
        self.validation_started: Optional[float] = None
        self.bar = None
        self.synced_step: Optional[int] = None  # the step of the newest sync (its throughput is fresh there)

    # -- called by the training loop -----------------------------------------------------------
    def start(self, step: int, epoch: int, history: list[dict]) -> None:
        """Position of a (resumed) run; `history` is train.py's per-epoch records (0-based epochs)."""
        self.step_count, self.epoch = step, epoch + 1
        self.next_sync = step + 1
        self.history = [validation_entry(r) for r in history if "val_accuracy" in r]
        if self.dist.is_main and self.show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, initial=step, unit="step", leave=False, mininterval=2.0,
                            bar_format="{l_bar}{bar:20}| step {n_fmt}/{total_fmt}{postfix}")
        self.publish()

    def step(self, step: int, epoch: int, loss: float, learning_rate: float, images: int,
             data_seconds: float, step_seconds: float) -> None:
        """After optimizer step `step` (global count) of 0-based `epoch`; timings of this rank."""
        window = self.window
        if window.started is None:
            window.started = self.clock() - step_seconds
        window.images += images
        window.data_seconds += data_seconds
        window.step_seconds += step_seconds
        window.steps += 1
        self.step_count, self.epoch, self.learning_rate = step, epoch + 1, learning_rate
        # EMA from zero with bias correction (divided by loss_weight when read): a mean of recent steps.
        self.loss_weight = LOSS_SMOOTHING * self.loss_weight + (1 - LOSS_SMOOTHING)
        self.loss_ema = LOSS_SMOOTHING * (self.loss_ema or 0.0) + (1 - LOSS_SMOOTHING) * loss
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(self._bar_text(), refresh=False)
        if step >= self.next_sync:
            self.sync()
            self.publish()

    def epoch_end(self) -> None:
        """After each train_one_epoch (all ranks): the epoch's last counts, then a publish."""
        self.sync()
        self.publish()

    def validating(self) -> None:
        self.state = "validating"
        self.validation_started = self.clock()
        self.publish()

    def validated(self, epoch: int, metrics: dict) -> None:
        """After the validation of 0-based `epoch`; `metrics` as EvalResult.metrics()."""
        if self.validation_started is not None:
            self.validation_seconds.append(self.clock() - self.validation_started)
            self.validation_started = None
        self.history.append(validation_entry({"epoch": epoch, **{f"val_{k}": v for k, v in metrics.items()}}))
        self.state = "training"
        self.publish()

    def finished(self) -> None:
        self.state = "finished"
        self.publish()
        self._close_bar()

    def preempted(self) -> None:
        """The run stopped on a signal after checkpointing its step (no collective: every rank is leaving)."""
        self.state = "preempted"
        self.publish()
        self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -- all ranks together ------------------------------------------------------------------------
    def sync(self) -> None:
        """One all-reduce: counts summed over ranks, every rank's GPU sample, rank 0's next sync step."""
        import torch

        world, rank = self.dist.world_size, self.dist.rank
        window = self.window
        values = [0.0] * (_COUNTS + 1 + len(_GPU_FIELDS) * world)
        values[:_COUNTS] = [float(window.images), window.data_seconds, window.step_seconds]
        wall = (self.clock() - window.started) if window.started is not None else 0.0
        if self.dist.is_main:  # about one interval of steps ahead, at this process's mean step time
            steps_timed = self.trained_steps + window.steps
            per_step = (self.train_seconds + wall) / steps_timed if steps_timed else 0.0
            ahead = max(1, int(self.interval_s / per_step)) if per_step > 0 else 1
            values[_COUNTS] = float(self.step_count + ahead)
        sample = self.gpu.sample() if self.gpu is not None else None
        slot = _COUNTS + 1 + len(_GPU_FIELDS) * rank
        values[slot:slot + len(_GPU_FIELDS)] = ([float(sample[k]) for k in _GPU_FIELDS] if sample
                                                else [_NO_GPU] * len(_GPU_FIELDS))
        totals = self.dist.all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()
        images, data_seconds, step_seconds = totals[:_COUNTS]
        self.next_sync = int(round(totals[_COUNTS]))
        if window.steps and wall > 0:
            self.images_per_second = images / wall
            self.data_wait = min(1.0, data_seconds / step_seconds) if step_seconds > 0 else None
            self.train_seconds += wall
            self.trained_steps += window.steps
        self.gpus = gpu_entries(totals[_COUNTS + 1:], world)
        self.window = _Window()
        self.synced_step = self.step_count

    def throughput_at(self, step: int) -> dict:
        """`images_per_second` and `data_wait_fraction` over all ranks when a sync measured them at `step`, else {}."""
        if self.synced_step != step or self.images_per_second is None:
            return {}
        measured = {"images_per_second": self.images_per_second}
        if self.data_wait is not None:
            measured["data_wait_fraction"] = self.data_wait
        return measured

    # -- rank 0 ----------------------------------------------------------------------------------
    def eta_seconds(self) -> Optional[int]:
        if not self.trained_steps:
            return None
        remaining_steps = max(0, self.steps - self.step_count)
        seconds = remaining_steps * self.train_seconds / self.trained_steps
        if self.validation_seconds:  # one validation per remaining epoch end
            epochs_left = self.epochs - len(self.history)
            seconds += max(0, epochs_left) * sum(self.validation_seconds) / len(self.validation_seconds)
        return int(round(seconds)) if self.state != "finished" else 0

    def snapshot(self) -> dict:
        """The contract's object, every key present."""
        return {
            "state": self.state, "runId": self.run_id, "epoch": self.epoch, "epochs": self.epochs,
            "step": self.step_count, "steps": self.steps,
            "loss": None if self.loss_ema is None else self.loss_ema / self.loss_weight,
            "learningRate": self.learning_rate, "imagesPerSecond": self.images_per_second,
            "dataWaitFraction": self.data_wait, "etaSeconds": self.eta_seconds(),
            "validation": self.history[-1] if self.history else None,
            "validationHistory": list(self.history), "gpus": self.gpus,
            "mlflow": self.tracking() if self.tracking is not None else None, "updatedAt": utc_now(),
        }

    def publish(self) -> None:
        if not self.dist.is_main:
            return
        document = self.snapshot()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / PROGRESS_FILE, json.dumps(document, indent=1))
        line = LOG_PREFIX + json.dumps(document, separators=(",", ":"))
        if self.bar is not None:
            self.bar.set_postfix_str(self._bar_text(), refresh=False)
            self.bar.write(line, file=self.stream)  # clears the bar, prints, redraws it
        else:
            print(line, file=self.stream, flush=True)
        self.stream.flush()

    def _bar_text(self) -> str:
        return progress_text({**self.snapshot(), "step": None})


def validation_entry(record: dict) -> dict:
    """A per-epoch record of train.py (0-based epoch, `val_*` keys) as the contract's validation."""
    return {"epoch": record["epoch"] + 1, "accuracy": record["val_accuracy"], "fp": record["val_fp"],
            "fn": record["val_fn"], "loss": record.get("val_loss")}


def gpu_entries(slots: list[float], world: int) -> Optional[list[dict]]:
    """Per-rank GPU samples from the all-reduced slots; None when no rank has one (CPU runs)."""
    entries = []
    for rank in range(world):
        utilization, used, total = slots[len(_GPU_FIELDS) * rank:len(_GPU_FIELDS) * (rank + 1)]
        if utilization < 0:
            continue
        entries.append({"rank": rank, "utilizationPercent": utilization, "memoryUsedBytes": int(used),
                        "memoryTotalBytes": int(total)})
    return entries or None


# --- for people --------------------------------------------------------------------------------


def human_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_text(progress: dict) -> str:
    """One line: `epoch 3/30 step 120/900 (13%) loss 0.412 lr 0.0381 57.3 img/s ETA 4m12s val acc 0.8123`."""
    parts = [f"epoch {progress.get('epoch')}/{progress.get('epochs')}"]
    step, steps = progress.get("step"), progress.get("steps")
    if step is not None and steps:
        parts.append(f"step {step}/{steps} ({100 * step / steps:.0f}%)")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if progress.get("learningRate") is not None:
        parts.append(f"lr {progress['learningRate']:.4g}")
    if progress.get("imagesPerSecond") is not None:
        parts.append(f"{progress['imagesPerSecond']:.1f} img/s")
    if progress.get("dataWaitFraction") is not None:
        parts.append(f"data wait {100 * progress['dataWaitFraction']:.0f}%")
    parts.append(f"ETA {human_seconds(progress.get('etaSeconds'))}")
    validation = progress.get("validation")
    if validation:
        parts.append(f"val acc {validation['accuracy']:.4f} (epoch {validation['epoch']})")
    if progress.get("state") not in (None, "training"):
        parts.append(f"[{progress['state']}]")
    return "  ".join(parts)


def progress_summary(progress: dict) -> str:
    """`12/30 40%`: epoch/epochs and the share of the run's steps done (the printer column's format)."""
    epoch, epochs, step, steps = (progress.get(k) for k in ("epoch", "epochs", "step", "steps"))
    text = f"{epoch if epoch is not None else '-'}/{epochs if epochs is not None else '-'}"
    if step is not None and steps:
        text += f" {100 * step // steps}%"
    return text


def epochs_of_run(total_steps: int, steps_per_epoch: int, epochs: Optional[int]) -> int:
    """Epochs the run will touch (max_iterations may end it inside an earlier epoch; a run sized in
    iterations alone has epochs None)."""
    touched = math.ceil(total_steps / max(steps_per_epoch, 1))
    return max(1, touched if epochs is None else min(epochs, touched))
