"""`benchmarks/gpu_check.py --smoke`: the GPU readiness check runs all its code paths on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_measures_every_stage_and_prints_json(tmp_path: Path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out)], capture_output=True,
                            text=True, timeout=900, env={**os.environ}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["smoke"] is True and printed["device"] == "cpu" and printed["errors"] == {}

    train = printed["train"]
    assert set(train) == {"vgg16_bn_eager", "vgg16_bn_compile", "small_eager", "small_compile"}
    assert all(entry["images_per_s"] > 0 for entry in train.values())
    assert train["small_compile"]["compile_backend"] == "aot_eager" and train["small_eager"]["compile_backend"] is None

    passing = printed["message_passing"]
    assert passing["equal_float64"] is True and passing["speedup"] > 0
    # A bf16 sweep drifts from float32; lanex under bf16 autocast (float32 sweeps) stays within rounding.
    assert max(passing["bf16_sweep_drift"].values()) > 3 * max(passing["lanex_under_bf16_autocast_drift"].values())
    assert max(passing["lanex_under_bf16_autocast_drift"].values()) < 1e-2

    loader = printed["dataloader"]["images_per_s_by_workers"]
    assert set(loader) == {"1", "2"} and all(rate > 0 for rate in loader.values())
    decode = printed["jpeg_decode"]
    assert decode["images"] > 0 and decode["torchvision_device"] == "cpu"
    assert min(decode[k] for k in ("torchvision_on_device_images_per_s", "torchvision_cpu_images_per_s",
                                   "opencv_cpu_images_per_s")) > 0


def test_gpu_check_without_a_gpu_says_so_and_points_to_smoke():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the full check would run rather than refuse")
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no CUDA device is visible; run with --smoke" in result.stderr
