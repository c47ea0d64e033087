"""`lanex data synth`: TuSimple layout, honest labels, determinism, idempotence."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lanex_trainer.data.synth import (
    H_SAMPLES,
    MANIFEST_NAME,
    SynthError,
    clip_rng,
    curve_x,
    depth_t,
    generate_dataset,
    noise_tile,
    plan_clips,
    render_clip,
    sample_road,
)

LANEX = Path(sys.executable).with_name("lanex")
LABEL_FILES = ("label_data_0313.json", "label_data_0531.json", "label_data_0601.json", "test_label.json")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "tusimple"
    return out, generate_dataset(out, clips=8, test_clips=None, seed=7)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def dataset_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME}


def gray(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.int32)


def test_writes_the_tusimple_layout_with_split_counts(dataset):
    out, summary = dataset

    assert summary["label_files"] == {
        "label_data_0313.json": 5, "label_data_0531.json": 1, "label_data_0601.json": 2, "test_label.json": 2,
    }
    assert sum(summary["lanes_histogram"].values()) == 10
    for name in LABEL_FILES:
        assert len(read_lines(out / name)) == summary["label_files"][name]
    raw_files = [line["raw_file"] for name in LABEL_FILES for line in read_lines(out / name)]
    assert len(set(raw_files)) == 10
    assert all(re.fullmatch(r"clips/[0-9-]+/[0-9_]+/20\.jpg", raw) for raw in raw_files)
    assert {raw.split("/")[1] for raw in raw_files} >= {"0313-1", "0531", "0601"}


def test_every_label_line_has_tusimple_fields_and_valid_lanes(dataset):
    out, _ = dataset
    for name in LABEL_FILES:
        for line in read_lines(out / name):
            assert set(line) == {"lanes", "h_samples", "raw_file"}
            assert line["h_samples"] == list(range(160, 711, 10))
            assert 2 <= len(line["lanes"]) <= 5
            for lane in line["lanes"]:
                assert len(lane) == len(line["h_samples"])
                assert all(x == -2 or (isinstance(x, int) and 0 <= x < 1280) for x in lane)
                assert sum(x >= 0 for x in lane) >= 6
                first_row = line["h_samples"][next(i for i, x in enumerate(lane) if x >= 0)]
                assert first_row >= 220  # nothing labelled above the horizon band


def test_images_are_1280x720_rgb_jpegs(dataset):
    out, _ = dataset
    for name in LABEL_FILES:
        for line in read_lines(out / name):
            path = out / line["raw_file"]
            assert path.read_bytes()[:3] == b"\xff\xd8\xff"
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert image.shape == (720, 1280, 3)
            assert image.std() > 20  # a scene, not a flat fill


def test_written_labels_match_the_rendered_scene(dataset):
    out, _ = dataset
    jobs = plan_clips(8, 2)
    lines = {line["raw_file"]: line for name in LABEL_FILES for line in read_lines(out / name)}
    for job in jobs[:3] + jobs[-1:]:
        assert lines[job.raw_file]["lanes"] == render_clip(7, job.stream, job.index).lanes


def _solid_lane_points(seed: int, count: int):
    """(gray image, x, y, marking width) of unoccluded solid-lane label points wide enough to probe."""
    noise = noise_tile(seed)
    for job in plan_clips(count, 1)[:count]:
        clip = render_clip(seed, job.stream, job.index, noise)
        ok, encoded = cv2.imencode(".jpg", clip.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        image = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE).astype(np.int32)
        for spec, lane in zip(clip.road.lanes, clip.lanes):
            if spec.dashed:
                continue
            for x, y in zip(lane, H_SAMPLES):
                width = spec.width_bottom * float(depth_t(clip.road, np.array(float(y))))
                reach = int(width / 2 + 10)
                if x < reach or x + reach >= 1280 or width < 6:
                    continue
                if any(x0 - reach <= x <= x1 + reach and y0 <= y <= y1 for x0, y0, x1, y1 in clip.occluders):
                    continue
                yield image, x, y, width


def test_solid_lane_label_points_sit_on_the_centre_of_bright_paint():
    brighter, centred, total = 0, 0, 0
    for image, x, y, width in _solid_lane_points(seed=3, count=10):
        reach = int(width / 2 + 10)
        asphalt = (image[y, x - reach] + image[y, x + reach]) / 2
        brighter += image[y, x] >= asphalt + 15
        window = image[y, x - reach : x + reach + 1]
        paint = np.flatnonzero(window > asphalt + (window.max() - asphalt) / 2)
        centred += abs(paint.mean() - reach) <= 2.0
        total += 1

    assert total > 100
    assert brighter / total >= 0.98
    assert centred / total >= 0.95


def test_dashed_lanes_are_labelled_across_their_gaps():
    on_gap = 0
    for index in range(12):
        clip = render_clip(5, 0, index)
        image = cv2.cvtColor(clip.image, cv2.COLOR_BGR2GRAY).astype(np.int32)
        for spec, lane in zip(clip.road.lanes, clip.lanes):
            if not spec.dashed:
                continue
            for x, y in zip(lane, H_SAMPLES):
                if 30 <= x < 1250 and y > clip.road.horizon_y + 150:
                    on_gap += image[y, x] < (image[y, x - 25] + image[y, x + 25]) / 2 + 10
    assert on_gap > 10


def test_lane_counts_spacing_and_tops_follow_tusimple():
    roads = [sample_road(clip_rng(11, 0, index)) for index in range(400)]
    counts = np.bincount([len(road.lanes) for road in roads], minlength=6)

    assert counts[0] == counts[1] == 0 and counts[4] > 0.5 * len(roads)
    assert counts[3] > 0 and counts[5] > 0 and 0 < counts[2] < 0.15 * len(roads)
    for road in roads:
        bottoms = sorted(float(curve_x(road, lane.bottom_x, np.array(710.0))) for lane in road.lanes)
        assert min(np.diff(bottoms)) >= 150
        assert all(210 <= lane.top_y <= 340 for lane in road.lanes)


def test_same_seed_is_byte_identical_whatever_the_worker_count(tmp_path):
    one = generate_dataset(tmp_path / "one", clips=14, test_clips=4, seed=1, workers=1)
    two = generate_dataset(tmp_path / "two", clips=14, test_clips=4, seed=1, workers=2)

    assert one["workers"] == 1 and two["workers"] == 2
    assert dataset_files(tmp_path / "one") == dataset_files(tmp_path / "two")


def test_different_seed_gives_different_images_and_labels(dataset, tmp_path):
    out, _ = dataset
    generate_dataset(tmp_path / "other", clips=8, test_clips=None, seed=8)
    ours, theirs = dataset_files(out), dataset_files(tmp_path / "other")

    assert ours.keys() == theirs.keys()
    assert ours["label_data_0313.json"] != theirs["label_data_0313.json"]
    assert all(ours[name] != theirs[name] for name in ours if name.endswith(".jpg"))


def test_rerun_with_same_parameters_is_a_no_op(dataset):
    out, summary = dataset
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    again = generate_dataset(out, clips=8, test_clips=None, seed=7)

    assert again == {**summary, "reused": True}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_refuses_foreign_or_differently_made_output(dataset, tmp_path):
    out, _ = dataset
    with pytest.raises(SynthError, match=r"made with .*'seed': 7.*not .*'seed': 9"):
        generate_dataset(out, clips=8, test_clips=None, seed=9)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match=r"foreign is not empty and has no synth_manifest\.json"):
        generate_dataset(foreign, clips=8, test_clips=None, seed=7)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_too_few_clips_is_rejected(tmp_path):
    with pytest.raises(SynthError, match=r"clips=2: need at least 3"):
        generate_dataset(tmp_path / "x", clips=2, test_clips=1, seed=0)
    assert not (tmp_path / "x").exists()


def test_cli_writes_a_dataset_and_prints_its_summary(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [str(LANEX), "data", "synth", "--out", str(out), "--clips", "3", "--test-clips", "1", "--seed", "4"],
        capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["label_files"] == {name: 1 for name in LABEL_FILES}
    assert len(list(out.glob("clips/*/*/20.jpg"))) == 4
