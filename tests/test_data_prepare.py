"""`lanex data prepare`: indexes, problem reports, the marker, idempotence and the CLI, on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lanex_trainer.data.prepare import PrepareError, is_prepared, load_index, prepare_dataset

LANEX = str(Path(sys.executable).with_name("lanex"))
H_SAMPLES = list(range(160, 711, 10))  # 56 rows, as in TuSimple
TRAIN = ["label_data_0313.json", "label_data_0601.json"]
VAL = ["label_data_0531.json"]
TEST = ["test_label.json"]


def lane_xs(bottom_x: float, top_x: float, top_y: int = 300) -> list[int]:
    """A straight lane from (bottom_x, 710) to (top_x, top_y); -2 above top_y."""
    xs = []
    for y in H_SAMPLES:
        if y < top_y:
            xs.append(-2)
        else:
            t = (y - top_y) / (710 - top_y)
            xs.append(int(round(top_x + (bottom_x - top_x) * t)))
    return xs


FOUR_LANES = [lane_xs(150, 560), lane_xs(480, 620), lane_xs(800, 660), lane_xs(1130, 720)]


def write_image(path: Path, lanes: list[list[int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((720, 1280, 3), 70, np.uint8)
    for lane in lanes:
        points = np.array([(x, y) for x, y in zip(lane, H_SAMPLES) if x >= 0], np.int32)
        cv2.polylines(image, [points.reshape(-1, 1, 2)], False, (255, 255, 255), 16)
    assert cv2.imwrite(str(path), image)


def label_line(raw_file: str, lanes: list[list[int]]) -> str:
    return json.dumps({"lanes": lanes, "h_samples": H_SAMPLES, "raw_file": raw_file})


def write_split(root: Path, label_file: str, image_base: Path, date: str, count: int) -> list[str]:
    """`count` good clips of `date` under image_base/clips, labels in root/label_file."""
    lines = []
    for number in range(count):
        raw_file = f"clips/{date}/{1000 + number}/20.jpg"
        lanes = FOUR_LANES[: 2 + number % 3]
        write_image(image_base / raw_file, lanes)
        lines.append(label_line(raw_file, lanes))
    (root / label_file).parent.mkdir(parents=True, exist_ok=True)
    (root / label_file).write_text("".join(line + "\n" for line in lines))
    return lines


@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    """A small TuSimple tree with one bad line of each kind in label_data_0313.json.

    label_data_0313.json, line by line: 1-2 good, 3 a lane with 47 points, 4 a missing image,
    5 a truncated JPEG, 6 not JSON, 7 good. test_label.json sits in root, its clips in test_set/.
    """
    root = tmp_path / "tusimple"
    root.mkdir()
    good = write_split(root, "label_data_0313.json", root, "0313-1", 3)
    short_lane = FOUR_LANES[:2] + [FOUR_LANES[2][:47]]
    write_image(root / "clips/0313-1/2000/20.jpg", FOUR_LANES)
    write_image(root / "clips/0313-2/3000/20.jpg", FOUR_LANES)
    corrupt = root / "clips/0313-2/3000/20.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:5000])
    lines = good[:2] + [
        label_line("clips/0313-1/2000/20.jpg", short_lane),
        label_line("clips/0313-2/missing/20.jpg", FOUR_LANES),
        label_line("clips/0313-2/3000/20.jpg", FOUR_LANES),
        '{"lanes": [[1, 2]], "h_samples": [',
        good[2],
    ]
    (root / "label_data_0313.json").write_text("\n".join(lines) + "\n")
    write_split(root, "label_data_0601.json", root, "0601", 2)
    write_split(root, "label_data_0531.json", root, "0531", 2)
    write_split(root, "test_label.json", root / "test_set", "0530", 2)
    return root


def test_prepare_indexes_every_good_image_in_its_split(dataset_root: Path) -> None:
    summary = prepare_dataset(dataset_root, TRAIN, VAL, TEST)

    train, val, test = (load_index(dataset_root, split) for split in ("train", "val", "test"))
    assert [entry["raw_file"] for entry in train] == [
        "clips/0313-1/1000/20.jpg",
        "clips/0313-1/1001/20.jpg",
        "clips/0313-1/1002/20.jpg",
        "clips/0601/1000/20.jpg",
        "clips/0601/1001/20.jpg",
    ]
    assert [entry["raw_file"] for entry in val] == ["clips/0531/1000/20.jpg", "clips/0531/1001/20.jpg"]
    # test_label.json is in root, its images in test_set/: found through the test_set fallback
    assert [entry["image"] for entry in test] == ["test_set/clips/0530/1000/20.jpg", "test_set/clips/0530/1001/20.jpg"]
    first = train[0]
    assert first["image"] == "clips/0313-1/1000/20.jpg"
    assert (first["width"], first["height"]) == (1280, 720)
    assert first["h_samples"] == H_SAMPLES and first["lanes"] == FOUR_LANES[:2]
    assert (dataset_root / first["image"]).is_file()

    assert summary["splits"]["train"]["images"] == 5
    assert summary["splits"]["train"]["label_lines"] == 9
    assert summary["splits"]["train"]["skipped"] == 4
    assert summary["splits"]["val"]["images"] == 2 and summary["splits"]["test"]["images"] == 2
    assert summary["images"] == 9
    # lanes per kept train image: 2, 3, 4 (0313) then 2, 3 (0601)
    assert summary["splits"]["train"]["lanes_histogram"] == {"2": 2, "3": 2, "4": 1}
    assert [f["path"] for f in summary["splits"]["train"]["label_files"]] == TRAIN


def test_bad_lines_and_images_are_reported_with_location_and_skipped(dataset_root: Path) -> None:
    summary = prepare_dataset(dataset_root, TRAIN, VAL, TEST)

    assert summary["skipped_total"] == 4
    assert summary["skipped_by_reason"] == {"bad label": 2, "corrupt image": 1, "missing image": 1}
    messages = summary["skipped"]
    assert messages[0] == "label_data_0313.json:3: lane 2 has 47 points, h_samples has 56"
    assert messages[1].startswith("label_data_0313.json:4: missing image ")
    assert messages[1].endswith(str(dataset_root / "clips/0313-2/missing/20.jpg"))
    assert messages[2].startswith(f"label_data_0313.json:5: corrupt image {dataset_root / 'clips/0313-2/3000/20.jpg'}")
    assert "truncated" in messages[2]
    assert messages[3].startswith("label_data_0313.json:6: not valid JSON")
    kept = {entry["raw_file"] for entry in load_index(dataset_root, "train")}
    assert not kept & {"clips/0313-1/2000/20.jpg", "clips/0313-2/missing/20.jpg", "clips/0313-2/3000/20.jpg"}
    skipped_file = (dataset_root / "lanex_index/skipped.jsonl").read_text().splitlines()
    assert [json.loads(line)["reason"] for line in skipped_file] == ["bad label", "missing image", "corrupt image", "bad label"]


def test_marker_is_written_last_and_prepare_is_idempotent(dataset_root: Path) -> None:
    index = dataset_root / "lanex_index"
    assert not is_prepared(dataset_root)
    first = prepare_dataset(dataset_root, TRAIN, VAL, TEST)
    assert is_prepared(dataset_root)
    marker = json.loads((index / "prepared.json").read_text())
    assert marker["format_version"] == 1 and marker["summary"] == first
    snapshot = {path.name: path.read_bytes() for path in index.iterdir()}

    second = prepare_dataset(dataset_root, TRAIN, VAL, TEST)

    assert second == first
    assert {path.name: path.read_bytes() for path in index.iterdir()} == snapshot
    assert sorted(snapshot) == ["prepared.json", "skipped.jsonl", "test.jsonl", "train.jsonl", "val.jsonl"]


def test_missing_label_file_is_an_error_naming_it_and_writes_nothing(dataset_root: Path) -> None:
    with pytest.raises(PrepareError, match="label_data_9999.json"):
        prepare_dataset(dataset_root, ["label_data_0313.json", "label_data_9999.json"], VAL, TEST)
    assert not (dataset_root / "lanex_index").exists()
    with pytest.raises(PrepareError, match="not prepared"):
        load_index(dataset_root, "train")


def test_empty_split_and_label_file_inside_test_set(tmp_path: Path) -> None:
    root = tmp_path / "tusimple"
    write_split(root, "label_data_0313.json", root, "0313-1", 1)
    write_split(root / "test_set", "test_label.json", root / "test_set", "0530", 1)

    summary = prepare_dataset(root, ["label_data_0313.json"], [], ["test_label.json"])

    assert summary["splits"]["val"] == {
        "label_files": [], "label_lines": 0, "images": 0, "skipped": 0, "lanes_histogram": {}
    }
    assert load_index(root, "val") == []
    assert [f["path"] for f in summary["splits"]["test"]["label_files"]] == ["test_set/test_label.json"]
    assert [entry["image"] for entry in load_index(root, "test")] == ["test_set/clips/0530/1000/20.jpg"]


def test_a_rerun_that_fails_leaves_the_root_unprepared(dataset_root: Path) -> None:
    prepare_dataset(dataset_root, TRAIN, VAL, TEST)
    (dataset_root / "label_data_0531.json").write_text("")  # val now empty: fine
    prepare_dataset(dataset_root, TRAIN, VAL, TEST)
    assert load_index(dataset_root, "val") == []
    (dataset_root / "label_data_0531.json").unlink()
    with pytest.raises(PrepareError):
        prepare_dataset(dataset_root, TRAIN, VAL, TEST)
    assert is_prepared(dataset_root)  # the previous, complete result is still valid


def test_cli_prints_the_json_summary(dataset_root: Path) -> None:
    result = subprocess.run(
        [LANEX, "data", "prepare", "--root", str(dataset_root)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 9 and summary["skipped_total"] == 4
    assert is_prepared(dataset_root)


def test_cli_exits_2_naming_a_missing_label_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [LANEX, "data", "prepare", "--root", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "error: label file 'label_data_0313.json' not found" in result.stderr
    assert str(tmp_path / "label_data_0313.json") in result.stderr


def test_prepare_accepts_the_synthetic_dataset_whole(tmp_path: Path) -> None:
    from lanex_trainer.data.synth import generate_dataset

    synth = generate_dataset(tmp_path, clips=6, test_clips=2, seed=3, workers=1)

    summary = prepare_dataset(tmp_path, TRAIN, VAL, TEST)

    counts = synth["label_files"]
    assert summary["skipped_total"] == 0
    assert summary["splits"]["train"]["images"] == counts["label_data_0313.json"] + counts["label_data_0601.json"]
    assert summary["splits"]["val"]["images"] == counts["label_data_0531.json"]
    assert summary["splits"]["test"]["images"] == counts["test_label.json"] == 2
