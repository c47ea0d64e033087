"""Training progress (PROGRESS_CONTRACT.md): what rank 0 publishes, how ranks' counts combine, NVML, pictures.

The end-to-end tests train for real (one CPU process) and hold every published object against
train_log.jsonl and results.json; the unit tests drive the reporter with a fake clock, a fake
second rank and a fake NVML module.
"""

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from lanex_trainer.distributed import Distributed, WorldInfo
from lanex_trainer.progress import (
    CONTRACT_KEYS,
    LOG_PREFIX,
    PROGRESS_FILE,
    GpuProbe,
    ProgressReporter,
    newest_progress,
    parse_progress_line,
    progress_summary,
    progress_text,
)
from trainer_helpers import run_lanex

TINY = ["--backbone", "small", "--height", "64", "--width", "160", "--batch-size", "4", "--loader-workers", "0",
        "--val-batch-size", "8", "--lr", "0.02", "--warmup-iterations", "2"]
VALIDATION_KEYS = {"epoch", "accuracy", "fp", "fn", "loss"}


# --- a real run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def progressed(prepared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("progress") / "out"
    done = run_lanex("train", "--data-root", str(prepared_data), "--output-dir", str(out), "--epochs", "3", *TINY,
                     env={"LANEX_PROGRESS_INTERVAL": "0.05", "LANEX_RUN_ID": "run-42"})
    lines = [parse_progress_line(line) for line in done.stdout.splitlines() if "LANEX_PROGRESS {" in line]
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return out, lines, steps, json.loads((out / "results.json").read_text())


def test_every_progress_line_and_the_file_carry_every_contract_field(progressed):
    out, lines, _, _ = progressed
    assert len(lines) >= 8 and all(line is not None for line in lines)
    for document in [*lines, json.loads((out / PROGRESS_FILE).read_text())]:
        assert tuple(document) == CONTRACT_KEYS
        assert document["runId"] == "run-42" and document["gpus"] is None  # CPU: no NVML figures
        assert document["updatedAt"].endswith("Z")
        for validation in [document["validation"], *document["validationHistory"]]:
            assert validation is None or set(validation) == VALIDATION_KEYS
    assert [line["state"] for line in lines][-1] == "finished"
    assert {"training", "validating"} <= {line["state"] for line in lines}


def test_progress_agrees_with_train_log_and_results(progressed):
    out, lines, steps, results = progressed
    by_step = {record["step"]: record for record in steps}
    assert all(line["steps"] == results["steps"] == len(by_step) and line["epochs"] == 3 for line in lines)
    published = [line for line in lines if line["step"] > 0]
    assert [line["step"] for line in published] == sorted(line["step"] for line in published)
    assert len({line["step"] for line in published}) >= 3  # the interval publishes inside epochs too
    for line in published:
        record = by_step[line["step"]]
        assert line["epoch"] == record["epoch"] + 1  # progress counts epochs from 1
        assert line["learningRate"] == pytest.approx(record["lr"])
        seen = [by_step[s]["loss"] for s in range(1, line["step"] + 1)]
        assert min(seen) <= line["loss"] <= max(seen)  # an average of the steps so far
        assert line["imagesPerSecond"] > 0 and 0 <= line["dataWaitFraction"] <= 1
        assert line["etaSeconds"] >= 0
    history = [r for r in results["history"] if "val_accuracy" in r]
    final = lines[-1]
    assert final["step"] == results["steps"] and final["etaSeconds"] == 0
    assert [v["epoch"] for v in final["validationHistory"]] == [r["epoch"] + 1 for r in history] == [1, 2, 3]
    assert [v["accuracy"] for v in final["validationHistory"]] == [r["val_accuracy"] for r in history]
    assert [v["loss"] for v in final["validationHistory"]] == [r["val_loss"] for r in history]
    assert final["validation"] == final["validationHistory"][-1]
    # Each validation is published as soon as it is done, before the next epoch trains.
    first_with = next(line for line in lines if line["validation"])
    assert first_with["validation"]["epoch"] == 1 and first_with["epoch"] == 1


def test_the_newest_line_of_a_log_tail_wins_and_launcher_prefixes_are_ignored(progressed):
    _, lines, _, _ = progressed
    tail = "\n".join(["[1,0]<stdout>:" + LOG_PREFIX + json.dumps(lines[2]), "noise",
                      LOG_PREFIX + json.dumps(lines[5]), LOG_PREFIX + '{"torn": '])
    assert newest_progress(tail) == lines[5]
    assert parse_progress_line("[default0]:" + LOG_PREFIX + json.dumps(lines[1])) == lines[1]
    assert parse_progress_line("LANEX_PROGRESS is a word") is None


def test_overlays_and_worst_sheet_show_each_image_with_its_own_scores(progressed, prepared_data):
    import cv2

    from lanex_trainer.evaluation.tusimple import evaluate_per_image

    out, _, _, results = progressed
    predictions = [json.loads(l) for l in (out / "test_predictions.json").read_text().splitlines()]
    truth = [json.loads(l) for l in (prepared_data / "test_label.json").read_text().splitlines()]
    per_image = evaluate_per_image(predictions, truth)
    expected = sorted(zip(per_image.accuracy, -(per_image.fp + per_image.fn), range(len(truth)), per_image.raw_files))
    worst = json.loads((out / "worst.json").read_text())
    assert [w["raw_file"] for w in worst] == [e[3] for e in expected]  # all 5 test images, worst first
    assert [w["accuracy"] for w in worst] == sorted(w["accuracy"] for w in worst)
    assert sum(w["accuracy"] for w in worst) / len(worst) == pytest.approx(results["test"]["accuracy"])
    sheet = cv2.imread(str(out / "worst.png"))
    assert sheet.shape[1] == 3 * 480 + 2 * 4 and sheet.shape[0] > 2 * 270  # 3 columns, 2 rows of tiles
    overlay = cv2.imread(str(next((out / "overlays").glob("*.png"))))
    assert overlay.shape[:2] == (720, 1280)
    # The ground truth is drawn in magenta (BGR 255, 0, 255) on the full-size overlay.
    magenta = (overlay[:, :, 0] > 200) & (overlay[:, :, 1] < 60) & (overlay[:, :, 2] > 200)
    assert magenta.sum() > 500


# --- the reporter, driven directly --------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class TwoRanks(Distributed):
    """Rank 0 of a two-rank job whose other rank contributes fixed numbers to every all-reduce."""

    def __init__(self, other):
        super().__init__(WorldInfo(rank=0, world_size=2, local_rank=0, launcher="test"))
        self.other, self.reduced = other, []

    def all_reduce_sum(self, tensor):
        self.reduced.append(tensor.clone())
        return tensor + self.other(tensor)


def _other_rank(images=4.0, data=0.5, busy=2.0, gpu=None):
    def contribution(tensor):
        values = torch.zeros_like(tensor)
        values[:3] = torch.tensor([images, data, busy], dtype=tensor.dtype)
        values[7:10] = torch.tensor(gpu if gpu else [-1.0, -1.0, -1.0], dtype=tensor.dtype)
        return values
    return contribution


def _reporter(tmp_path, dist, clock, **kwargs):
    return ProgressReporter(dist, tmp_path, epochs=2, steps=20, interval_s=1.0, clock=clock,
                            stream=open(tmp_path / "stdout", "w"), show_bar=False, **kwargs)


def test_images_per_second_and_data_wait_sum_counts_over_ranks_once_per_interval(tmp_path):
    clock, dist = FakeClock(), TwoRanks(_other_rank(images=4.0, data=0.5, busy=2.0))
    reporter = _reporter(tmp_path, dist, clock)
    reporter.start(step=0, epoch=0, history=[])
    for step in range(1, 6):  # 0.5 s per step, 0.1 s of it waiting for data, 2 images on this rank
        clock.now += 0.5
        reporter.step(step, 0, loss=1.0, learning_rate=0.1, images=2, data_seconds=0.1, step_seconds=0.5)
    # Step 1 syncs at once (no step time known yet); rank 0 then asks for the next sync one
    # interval ahead (1 s at 0.5 s per step = 2 steps): steps 3 and 5.
    assert len(dist.reduced) == 3
    published = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert published["step"] == 5
    # Window of steps 4-5: rank 0 trained 4 images in 1 s, the other rank 4: 8 images/s in all.
    assert published["imagesPerSecond"] == pytest.approx(8.0)
    assert published["dataWaitFraction"] == pytest.approx((0.2 + 0.5) / (1.0 + 2.0))
    assert published["etaSeconds"] == pytest.approx(15 * 0.5, abs=1)
    assert published["loss"] == pytest.approx(1.0)


def test_gpu_figures_of_every_rank_travel_in_the_same_all_reduce(tmp_path):
    clock = FakeClock()
    dist = TwoRanks(_other_rank(gpu=[55.0, 3e9, 8e10]))

    class Probe:
        def sample(self):
            return {"utilizationPercent": 97.0, "memoryUsedBytes": 2**33, "memoryTotalBytes": 2**37}

    reporter = _reporter(tmp_path, dist, clock, gpu=Probe())
    reporter.start(step=0, epoch=0, history=[])
    clock.now += 1
    reporter.step(1, 0, loss=2.0, learning_rate=0.1, images=2, data_seconds=0.0, step_seconds=1.0)
    gpus = json.loads((tmp_path / PROGRESS_FILE).read_text())["gpus"]
    assert gpus == [{"rank": 0, "utilizationPercent": 97.0, "memoryUsedBytes": 2**33, "memoryTotalBytes": 2**37},
                    {"rank": 1, "utilizationPercent": 55.0, "memoryUsedBytes": 3_000_000_000,
                     "memoryTotalBytes": 80_000_000_000}]


def test_a_resumed_run_reports_its_earlier_validations_and_its_position(tmp_path):
    clock = FakeClock()
    reporter = _reporter(tmp_path, Distributed(WorldInfo(0, 1, 0, "single")), clock)
    earlier = [{"epoch": 0, "step": 10, "train_loss": 1.0, "val_loss": 0.5, "val_accuracy": 0.7, "val_fp": 0.2,
                "val_fn": 0.1, "val_images": 4}]
    reporter.start(step=10, epoch=1, history=earlier)
    published = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert (published["step"], published["epoch"], published["state"]) == (10, 2, "training")
    assert published["validationHistory"] == [{"epoch": 1, "accuracy": 0.7, "fp": 0.2, "fn": 0.1, "loss": 0.5}]
    assert published["loss"] is None and published["etaSeconds"] is None
    assert (tmp_path / "stdout").read_text().startswith(LOG_PREFIX + "{")


class FakeNvml(types.ModuleType):
    """The part of pynvml the probe uses, with an NVMLError like the real one."""

    class NVMLError(Exception):
        pass

    def __init__(self, fail_init=False):
        super().__init__("pynvml")
        self.fail_init, self.asked = fail_init, []

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.asked.append(uuid)
        return ("handle", uuid)

    def nvmlDeviceGetHandleByIndex(self, index):
        self.asked.append(index)
        return ("handle", index)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=63, memory=20)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=5 * 2**30, total=80 * 2**30, free=75 * 2**30)


def test_nvml_figures_are_parsed_from_the_device_found_by_uuid(monkeypatch):
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    probe = GpuProbe.open(0, uuid="6f0e5d1c-aaaa-bbbb-cccc-000000000001")
    assert fake.asked == ["GPU-6f0e5d1c-aaaa-bbbb-cccc-000000000001"]
    assert probe.sample() == {"utilizationPercent": 63.0, "memoryUsedBytes": 5 * 2**30, "memoryTotalBytes": 80 * 2**30}
    assert GpuProbe.open(3).handle == ("handle", 3)


def test_a_device_nvml_does_not_know_by_uuid_is_found_by_index(monkeypatch):
    class NoUuid(FakeNvml):
        def nvmlDeviceGetHandleByUUID(self, uuid):
            raise self.NVMLError("Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", NoUuid())
    assert GpuProbe.open(1, uuid="0000-1").handle == ("handle", 1)


def test_without_nvml_or_its_library_gpu_figures_are_null(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fail_init=True))
    assert GpuProbe.open(0) is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: import raises ImportError
    assert GpuProbe.open(0) is None
    assert GpuProbe.for_device(torch.device("cpu")) is None


def test_a_failing_gpu_sample_is_null_not_an_error():
    class Broken(FakeNvml):
        def nvmlDeviceGetUtilizationRates(self, handle):
            raise self.NVMLError("GPU is lost")

    assert GpuProbe(Broken(), "handle").sample() is None


def test_human_forms_of_progress():
    progress = {"state": "training", "epoch": 3, "epochs": 30, "step": 120, "steps": 900, "loss": 0.41234,
                "learningRate": 0.0381, "imagesPerSecond": 57.31, "dataWaitFraction": 0.12, "etaSeconds": 252,
                "validation": {"epoch": 2, "accuracy": 0.81234, "fp": 0.1, "fn": 0.1, "loss": 0.3}}
    assert progress_summary(progress) == "3/30 13%"
    assert progress_text(progress) == ("epoch 3/30  step 120/900 (13%)  loss 0.4123  lr 0.0381  57.3 img/s  "
                                       "data wait 12%  ETA 4m12s  val acc 0.8123 (epoch 2)")


def test_the_terminal_filter_drops_progress_lines_split_anywhere_and_passes_the_bar_at_once():
    from lanex_operator.local.runner import ProgressLineFilter

    stream = (b"\r 50%|#####     | step 6/12\r" + b"\r           \r" + LOG_PREFIX.encode() + b'{"step":6}\n'
              + b"\r 58%|######    | step 7/12" + b"[default0]:" + LOG_PREFIX.encode() + b'{"step":7}\n'
              + b"epoch done\nLANEX_PROG is not the marker\n")
    expected = (b"\r 50%|#####     | step 6/12\r\r           \r\r 58%|######    | step 7/12[default0]:"
                b"epoch done\nLANEX_PROG is not the marker\n")
    for size in (1, 3, 7, 16, len(stream)):
        terminal = ProgressLineFilter()
        shown = b"".join(terminal.feed(stream[i:i + size]) for i in range(0, len(stream), size)) + terminal.flush()
        assert shown == expected, size
    terminal = ProgressLineFilter()
    assert terminal.feed(b"\r 10%|# | step 1/9") == b"\r 10%|# | step 1/9"  # no newline needed to show the bar
    assert terminal.feed(b"LANEX_PRO") == b"" and terminal.feed(b"FILE\n") == b"LANEX_PROFILE\n"


def test_progress_interval_comes_from_the_environment_and_a_bad_one_names_the_variable(tmp_path):
    from lanex_trainer.config import ConfigError, build_config

    base = {"data_root": tmp_path, "output_dir": tmp_path / "out"}
    assert build_config(environ={"LANEX_PROGRESS_INTERVAL": "2.5"}, overrides=base).progress_interval == 2.5
    assert build_config(environ={"LANEX_PROGRESS_INTERVAL": "2.5"},
                        overrides={**base, "progress_interval": 30}).progress_interval == 30  # the flag wins
    for bad in ("soon", "0"):
        with pytest.raises(ConfigError, match="LANEX_PROGRESS_INTERVAL"):
            build_config(environ={"LANEX_PROGRESS_INTERVAL": bad}, overrides=base)
    a = build_config(environ={}, overrides=base)
    b = build_config(environ={"LANEX_PROGRESS_INTERVAL": "1"}, overrides=base)
    assert a.fingerprint() == b.fingerprint()  # reporting settings never block a resume
