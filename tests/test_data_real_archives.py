"""TuSimple's archives as published, and as dataset hubs re-package them: download + prepare.

Real zip archives with real JPEGs (the synthetic generator's frames, 20 per clip as TuSimple ships
them, only `20.jpg` labelled) are built in the test in both layouts, served over HTTP on 127.0.0.1
with their SHA-256, fetched with `lanex data download` and indexed with `lanex data prepare`.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from file_server import Served, file_server
from lanex_trainer.data.synth import generate_dataset

LANEX = str(Path(sys.executable).with_name("lanex"))
TRAIN_LABELS = ("label_data_0313.json", "label_data_0531.json", "label_data_0601.json")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, clips=6, test_clips=3, seed=3)
    return root


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _clip_frames(synth: Path, raw_file: str, prefix: str) -> dict[str, bytes]:
    """The 20 frames of a clip (TuSimple labels only the last); all are real JPEGs."""
    frame = (synth / raw_file).read_bytes()
    folder = raw_file.rsplit("/", 1)[0]
    return {f"{prefix}{folder}/{number}.jpg": frame for number in range(1, 21)}


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for name, data in sorted(members.items()):
            bundle.writestr(name, data)
    return buffer.getvalue()


def _train_members(synth: Path, prefix: str) -> dict[str, bytes]:
    members = {f"{prefix}readme.md": b"TuSimple lane detection challenge, training set\n"}
    for name in TRAIN_LABELS:
        members[prefix + name] = (synth / name).read_bytes()
        for line in _lines(synth / name):
            members.update(_clip_frames(synth, line["raw_file"], prefix))
    return members


def _test_members(synth: Path, prefix: str) -> dict[str, bytes]:
    tasks = []
    members: dict[str, bytes] = {}
    for line in _lines(synth / "test_label.json"):
        members.update(_clip_frames(synth, line["raw_file"], prefix))
        tasks.append(json.dumps({"h_samples": line["h_samples"], "lanes": [], "run_time": 0, "raw_file": line["raw_file"]}))
    members[f"{prefix}test_tasks_0627.json"] = ("\n".join(tasks) + "\n").encode()
    return members


def official_files(synth: Path) -> dict[str, bytes]:
    """TuSimple's three files: train_set.zip, test_set.zip (no wrapping folder) and test_label.json."""
    return {
        "/tusimple/train_set.zip": _zip(_train_members(synth, "")),
        "/tusimple/test_set.zip": _zip(_test_members(synth, "")),
        "/tusimple/test_label.json": (synth / "test_label.json").read_bytes(),
    }


def repackaged_files(synth: Path) -> dict[str, bytes]:
    """One archive: train_set/, test_set/ and test_label.json beside them (raw_file relative to test_set/)."""
    members = {**_train_members(synth, "train_set/"), **_test_members(synth, "test_set/"),
               "test_label.json": (synth / "test_label.json").read_bytes()}
    return {"/hub/TUSimple.zip": _zip(members)}


def download_and_prepare(served: Served, paths: list[str], root: Path) -> dict:
    arguments = []
    for path in paths:
        arguments += ["--url", served.base + path, "--sha256", hashlib.sha256(served.files[path]).hexdigest()]
    download = subprocess.run([LANEX, "data", "download", *arguments, "--out", str(root)],
                              capture_output=True, text=True, timeout=300)
    assert download.returncode == 0, download.stderr
    prepare = subprocess.run([LANEX, "data", "prepare", "--root", str(root)], capture_output=True, text=True, timeout=300)
    assert prepare.returncode == 0, prepare.stderr
    return json.loads(prepare.stdout)


def _index(root: Path, split: str) -> list[dict]:
    return _lines(root / "lanex_index" / f"{split}.jsonl")


def _expected_raw_files(synth: Path, names: tuple[str, ...]) -> list[str]:
    return [line["raw_file"] for name in names for line in _lines(synth / name)]


def test_official_three_files_are_downloaded_verified_and_every_labelled_frame_indexed(synth, tmp_path):
    with file_server(Served(files=official_files(synth))) as served:
        summary = download_and_prepare(served, list(served.files), tmp_path / "data")
    root = tmp_path / "data"

    assert summary["layout"]["name"] == "official"
    assert summary["test_tasks"] == "test_tasks_0627.json"
    assert summary["skipped_total"] == 0 and summary["hints"] == []
    train, val, test = (_index(root, split) for split in ("train", "val", "test"))
    assert [e["raw_file"] for e in train] == _expected_raw_files(synth, ("label_data_0313.json", "label_data_0601.json"))
    assert [e["raw_file"] for e in val] == _expected_raw_files(synth, ("label_data_0531.json",))
    assert [e["raw_file"] for e in test] == _expected_raw_files(synth, ("test_label.json",))
    assert all(e["image"] == e["raw_file"] and e["image"].endswith("/20.jpg") for e in train + val + test)
    # 20 frames per clip arrived; only the labelled one is indexed
    clip = root / train[0]["raw_file"].rsplit("/", 1)[0]
    assert sorted(int(p.stem) for p in clip.glob("*.jpg")) == list(range(1, 21))
    assert summary["images"] == len(train) + len(val) + len(test) == 9


def test_one_archive_repackaging_resolves_test_frames_under_test_set(synth, tmp_path):
    with file_server(Served(files=repackaged_files(synth))) as served:
        summary = download_and_prepare(served, list(served.files), tmp_path / "data")
    root = tmp_path / "data"

    assert summary["layout"]["name"] == "repackaged"
    assert summary["test_tasks"] == "test_set/test_tasks_0627.json"
    assert summary["skipped_total"] == 0
    assert [f["path"] for f in summary["splits"]["train"]["label_files"]] == [
        "train_set/label_data_0313.json", "train_set/label_data_0601.json"]
    assert [f["path"] for f in summary["splits"]["test"]["label_files"]] == ["test_label.json"]
    train, val, test = (_index(root, split) for split in ("train", "val", "test"))
    assert [e["image"] for e in train + val] == [
        "train_set/" + raw for raw in _expected_raw_files(synth, ("label_data_0313.json", "label_data_0601.json",
                                                                   "label_data_0531.json"))]
    assert [e["image"] for e in test] == ["test_set/" + raw for raw in _expected_raw_files(synth, ("test_label.json",))]
    assert all((root / e["image"]).is_file() for e in train + val + test)


def test_hub_archive_with_its_top_tusimple_folder_a_few_levels_down_is_found_and_named(synth, tmp_path):
    # As dataset hubs publish it: TUSimple/{train_set,test_set,test_label.json}, here inside one more folder.
    members = {**_train_members(synth, "archive/TUSimple/train_set/"), **_test_members(synth, "archive/TUSimple/test_set/"),
               "archive/TUSimple/test_label.json": (synth / "test_label.json").read_bytes()}
    with file_server(Served(files={"/hub/tusimple.zip": _zip(members)})) as served:
        root = tmp_path / "data"
        arguments = ["--url", served.base + "/hub/tusimple.zip",
                     "--sha256", hashlib.sha256(served.files["/hub/tusimple.zip"]).hexdigest()]
        download = subprocess.run([LANEX, "data", "download", *arguments, "--out", str(root)],
                                  capture_output=True, text=True, timeout=300)
        assert download.returncode == 0, download.stderr
    prepare = subprocess.run([LANEX, "data", "prepare", "--root", str(root)], capture_output=True, text=True, timeout=300)
    assert prepare.returncode == 0, prepare.stderr
    summary = json.loads(prepare.stdout)

    assert summary["layout"]["name"] == "repackaged" and summary["layout"]["base"] == "archive/TUSimple"
    assert summary["layout"]["description"].endswith("found in archive/TUSimple/")
    assert "layout: repackaged: " in prepare.stderr and "found in archive/TUSimple/" in prepare.stderr
    assert summary["skipped_total"] == 0 and summary["test_tasks"] == "archive/TUSimple/test_set/test_tasks_0627.json"
    assert [f["path"] for f in summary["splits"]["test"]["label_files"]] == ["archive/TUSimple/test_label.json"]
    train, val, test = (_index(root, split) for split in ("train", "val", "test"))
    assert [e["image"] for e in test] == ["archive/TUSimple/test_set/" + raw
                                          for raw in _expected_raw_files(synth, ("test_label.json",))]
    assert all(e["image"].startswith("archive/TUSimple/train_set/") for e in train + val)
    assert summary["images"] == 9 and all((root / e["image"]).is_file() for e in train + val + test)


def test_two_copies_at_the_same_depth_are_refused_naming_both(synth, tmp_path):
    for copy in ("a", "b"):
        (tmp_path / "data" / copy / "TUSimple" / "train_set").mkdir(parents=True)
    prepare = subprocess.run([LANEX, "data", "prepare", "--root", str(tmp_path / "data")], capture_output=True,
                             text=True, timeout=300)
    assert prepare.returncode == 2
    assert prepare.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'data'} holds more than one TuSimple copy (a/TUSimple, b/TUSimple); "
        "pass the one to use as --root"]


def test_tr_era_download_without_test_set_reports_each_missing_frame_with_file_and_line(synth, tmp_path):
    files = official_files(synth)
    del files["/tusimple/test_set.zip"]  # TR-4896's job fetched only train_set.zip and test_label.json
    with file_server(Served(files=files)) as served:
        summary = download_and_prepare(served, list(served.files), tmp_path / "data")

    assert summary["splits"]["test"]["images"] == 0
    assert summary["skipped_by_reason"] == {"missing image": 3}
    raw_files = _expected_raw_files(synth, ("test_label.json",))
    assert summary["skipped"] == [f"test_label.json:{n}: missing image {tmp_path / 'data' / raw}"
                                  for n, raw in enumerate(raw_files, start=1)]
    assert summary["hints"] == ["split test: none of its 3 labelled images was found; "
                                "test_set.zip (TuSimple's test images) is probably missing"]
    assert summary["splits"]["train"]["images"] + summary["splits"]["val"]["images"] == 6


def test_label_line_pointing_outside_the_dataset_is_a_bad_label(synth, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    line = _lines(synth / "label_data_0531.json")[0]
    (root / "label_data_0531.json").write_text(json.dumps({**line, "raw_file": "../../etc/passwd"}) + "\n")
    for name in ("label_data_0313.json", "label_data_0601.json", "test_label.json"):
        (root / name).write_text("")
    result = subprocess.run([LANEX, "data", "prepare", "--root", str(root)], capture_output=True, text=True, timeout=120)
    summary = json.loads(result.stdout)
    assert summary["skipped"] == ["label_data_0531.json:1: 'raw_file' '../../etc/passwd' must be a relative path "
                                  "inside the dataset"]
