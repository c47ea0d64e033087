"""`lanex predict`: TuSimple-format predictions and overlays from a trained checkpoint.

Each image is decoded, run through the model and post-processed on its own, and `run_time`
is the measured milliseconds of that (model + post-processing, excluding file I/O), as the
TuSimple benchmark defines it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lanex_trainer.evaluation.postprocess import PostprocessSettings, lanes_from_probabilities
from lanex_trainer.pictures import draw_overlay

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
DEFAULT_H_SAMPLES = list(range(160, 720, 10))


class PredictError(RuntimeError):
    """Bad checkpoint or images; the message names the path."""


def collect_images(inputs: Sequence[Path]) -> list[tuple[Path, str]]:
    """(path, raw_file) pairs: raw_file is relative to the directory given, or the file name."""
    found: list[tuple[Path, str]] = []
    for item in inputs:
        if item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                found.append((path, path.relative_to(item).as_posix()))
        elif item.is_file():
            found.append((item, item.name))
        else:
            raise PredictError(f"--images {item}: no such file or directory")
    if not found:
        raise PredictError(f"no images (.jpg/.jpeg/.png) found in {', '.join(map(str, inputs))}")
    return found


def load_model(checkpoint: Path, device: torch.device):
    from lanex_trainer.model.scnn import build_model

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        config = state["config"]
        model = build_model(config["backbone"], input_size=(config["height"], config["width"]))
        model.load_state_dict(state["model"])
    except FileNotFoundError as error:
        raise PredictError(f"checkpoint {checkpoint}: not found") from error
    except (KeyError, RuntimeError, EOFError, OSError) as error:
        raise PredictError(f"checkpoint {checkpoint}: not a usable lanex checkpoint ({error})") from error
    return model.to(device).eval(), config


@torch.no_grad()
def predict(
    checkpoint: Path,
    images: Sequence[Path],
    out: Path,
    write_overlays: bool = True,
    device: str = "auto",
    h_samples: Sequence[int] = DEFAULT_H_SAMPLES,
) -> dict:
    from lanex_trainer.data.dataset import DecodeError, decode_image, normalise

    chosen = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    model, config = load_model(checkpoint, chosen)
    settings = PostprocessSettings(config.get("existence_threshold", 0.5), config.get("point_threshold", 0.3))
    out.mkdir(parents=True, exist_ok=True)
    lines, run_times, failures = [], [], []
    for path, raw_file in collect_images(images):
        try:
            rgb = decode_image(path, config["height"], config["width"])
        except DecodeError as error:
            failures.append(str(error))
            continue
        started = time.perf_counter()
        tensor = normalise(rgb).unsqueeze(0).to(chosen)
        seg_logits, exist_logits = model(tensor)
        lanes = lanes_from_probabilities(seg_logits.softmax(1), exist_logits.sigmoid(), [list(h_samples)], settings)[0]
        if chosen.type == "cuda":
            torch.cuda.synchronize()
        run_time = (time.perf_counter() - started) * 1000
        run_times.append(run_time)
        lines.append({"raw_file": raw_file, "lanes": lanes, "h_samples": list(h_samples), "run_time": round(run_time, 3)})
        if write_overlays:
            draw_overlay(path, lanes, list(h_samples), out / "overlays" / (Path(raw_file).with_suffix("").as_posix().replace("/", "_") + ".png"))
    (out / "predictions.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for failure in failures:
        print(f"warning: skipped {failure}")
    return {
        "images": len(lines), "skipped": len(failures),
        "median_run_time_ms": float(np.median(run_times)) if run_times else None,
        "predictions": str(out / "predictions.json"),
        "overlays": str(out / "overlays") if write_overlays else None,
    }
