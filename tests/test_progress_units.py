"""The progress reader's pure parts and its tail reads: parsing, columns, stall verdicts, the budget.

Scenarios: a log whose newest progress line is cut or prefixed by mpirun, a record with nulls, a
stall counted from the right moment, a token bucket that holds its rate, and a log tail whose
newest lines the kubelet's limitBytes would cut.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from lanex_operator.api.status import TrainingProgress
from lanex_operator.controller.progress import (
    HISTORY_KEPT,
    LIMIT_BYTES,
    RequestBudget,
    _Followed,
    judge_stall,
    newest_progress,
    progress_status,
)

NOW = datetime(2026, 12, 1, 22, 40, tzinfo=timezone.utc)


def record(**changes) -> dict:
    base = {"state": "training", "runId": "run-1", "epoch": 12, "epochs": 30, "step": 3600, "steps": 9000,
            "loss": 0.31, "learningRate": 0.02, "imagesPerSecond": 96.5, "dataWaitFraction": 0.1,
            "etaSeconds": 3900, "validation": None, "validationHistory": [], "gpus": None, "mlflow": None,
            "updatedAt": "2026-12-01T22:39:50Z"}
    return {**base, **changes}


def line(data: dict, prefix: str = "") -> str:
    return prefix + "LANEX_PROGRESS " + json.dumps(data, separators=(",", ":"))


def test_the_newest_valid_line_wins_behind_any_launcher_prefix():
    log = "\n".join([line(record(step=100)), "[1,1]<stderr>: some warning", line(record(step=200), "[1,0]<stdout>:"),
                     "LANEX_PROGRESS {\"state\": \"training\", \"epo"])  # the newest line was cut mid-way
    assert newest_progress(log).step == 200
    assert newest_progress("no progress here\n") is None
    assert newest_progress(line(record(state="sleeping"))) is None  # not a state of the contract


def test_columns_and_status_keep_every_key_of_the_contract():
    progress = TrainingProgress.model_validate(record(etaSeconds=3900.4))
    assert (progress.summary(), progress.eta()) == ("12/30 40%", "1h05m")
    assert TrainingProgress.model_validate(record(etaSeconds=None)).eta() == "-"
    assert TrainingProgress.model_validate(record(state="finished", step=9000)).eta() == "done"
    written = progress_status(progress, NOW)
    assert written["progressSummary"] == "12/30 40%" and written["eta"] == "1h05m"
    assert set(written["progress"]) == set(record()) | {"observedAt"}
    assert written["progress"]["loss"] == 0.31 and written["progress"]["gpus"] is None
    assert written["progress"]["observedAt"] == "2026-12-01T22:40:00Z"
    assert progress_status(progress, NOW, ended=True)["eta"] == "-"  # training ended without a finished record


def test_status_keeps_only_the_newest_validations():
    history = [{"epoch": e, "accuracy": 0.5, "fp": 0.1, "fn": 0.1, "loss": None} for e in range(1, HISTORY_KEPT + 11)]
    written = progress_status(TrainingProgress.model_validate(record(validationHistory=history)), NOW)
    assert [v["epoch"] for v in written["progress"]["validationHistory"]][:1] == [11]
    assert len(written["progress"]["validationHistory"]) == HISTORY_KEPT


def test_a_heartbeat_with_the_same_step_is_not_new_progress():
    first = TrainingProgress.model_validate(record())
    assert first.advance_key() == TrainingProgress.model_validate(record(updatedAt="2026-12-01T22:45:00Z",
                                                                         etaSeconds=3000)).advance_key()
    assert first.advance_key() != TrainingProgress.model_validate(record(state="validating")).advance_key()


def test_stall_counts_from_the_newest_of_progress_start_and_restart():
    seen = dict(record(), observedAt="2026-12-01T22:00:00Z")
    verdict = judge_stall(seen, "2026-12-01T21:00:00Z", None, NOW, 1800)
    assert verdict.stalled and verdict.since == datetime(2026, 12, 1, 22, 0, tzinfo=timezone.utc)
    assert verdict.describe(1800) == ("no training progress for 1800s (last: epoch 12/30, step 3600/9000, "
                                      "seen at 2026-12-01T22:00:00Z)")
    fresh = judge_stall(None, "2026-12-01T22:30:00Z", None, NOW, 1800)  # running for 10 min, no line yet
    assert not fresh.stalled and fresh.seconds_left == 1200 and fresh.last is None
    restarted = {"type": "Stalled", "status": "False", "reason": "LauncherRestarted",
                 "lastTransitionTime": "2026-12-01T22:35:00Z"}
    assert not judge_stall(seen, "2026-12-01T21:00:00Z", restarted, NOW, 1800).stalled


def test_the_budget_holds_its_rate_and_burst():
    clock = {"now": 0.0}

    async def sleep_and_tick(seconds: float) -> None:
        clock["now"] += seconds

    async def take(count: int, budget: RequestBudget) -> float:
        for _ in range(count):
            await budget.acquire()
        return clock["now"]

    budget = RequestBudget(10.0, clock=lambda: clock["now"])
    real_sleep = asyncio.sleep
    try:
        asyncio.sleep = sleep_and_tick  # type: ignore[assignment]  # a fake clock: no timed test
        elapsed = asyncio.run(take(60, budget))
    finally:
        asyncio.sleep = real_sleep  # type: ignore[assignment]
    assert elapsed == pytest.approx(5.0, abs=0.01)  # a burst of 10, then 50 at 10 per second


def test_a_tail_the_kubelet_would_cut_is_read_again_with_fewer_lines(api_server):
    from lanex_operator.controller.config import OperatorConfig
    from lanex_operator.controller.kube import Kube
    from lanex_operator.controller.metrics import OperatorMetrics
    from lanex_operator.controller.children import Wakers
    from lanex_operator.controller.progress import ProgressFollower

    api_server.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big-launcher", "namespace": "default"},
                       "spec": {"containers": [{"name": "launcher", "image": "busybox"}]}})
    chatter = "x" * 4096 + "\n"  # 200 lines of it are far more than limitBytes
    text = "".join([line(record(step=1)) + "\n", chatter * 150, line(record(step=2)) + "\n", chatter * 10,
                    line(record(step=3)) + "\n", "done\n"])
    api_server.call(api_server.emulator.write_pod_log, "default", "big-launcher", "launcher", text)
    assert len(text) > LIMIT_BYTES

    async def read() -> TrainingProgress | None:
        kube = Kube(api_server.url, {})
        try:
            follower = ProgressFollower(kube, OperatorConfig(), OperatorMetrics(), Wakers())
            return await follower._read("default", "big", _Followed(launcher="big-launcher"))
        finally:
            await kube.close()

    assert asyncio.run(read()).step == 3
    reads = [call for call in api_server.calls() if call.resource == "pods/log"]
    assert len(reads) == 2  # 200 lines were cut; 20 lines were not
