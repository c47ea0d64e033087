"""Local snapshots: point-in-time, immutable against later writes, cheap, verified on restore."""

import os
from pathlib import Path

import pytest

from lanex_operator.local.snapshots import SnapshotError, SnapshotStore


def _volume(tmp_path: Path) -> Path:
    volume = tmp_path / "volumes" / "exp-data"
    (volume / "tusimple_data" / "clips").mkdir(parents=True)
    (volume / "tusimple_data" / "clips" / "20.jpg").write_bytes(os.urandom(4096))
    (volume / "experiments" / "exp").mkdir(parents=True)
    (volume / "experiments" / "exp" / "results.json").write_text('{"accuracy": 0.9}')
    return volume


def test_snapshot_is_a_point_in_time_copy_unaffected_by_later_writes(tmp_path: Path):
    volume = _volume(tmp_path)
    store = SnapshotStore(tmp_path / "snapshots")
    store.create(volume, "exp-1", experiment="exp")
    (volume / "experiments" / "exp" / "results.json").write_text('{"accuracy": 0.1}')  # in-place write
    (volume / "experiments" / "exp" / "new.txt").write_text("later")
    assert (store.path("exp-1") / "data" / "experiments" / "exp" / "results.json").read_text() == '{"accuracy": 0.9}'
    assert store.verify("exp-1", volume) == ["experiments/exp/results.json: content differs from the snapshot",
                                             "experiments/exp/new.txt: not in the snapshot"]


def test_unchanged_files_are_shared_between_consecutive_snapshots(tmp_path: Path):
    volume = _volume(tmp_path)
    store = SnapshotStore(tmp_path / "snapshots")
    store.create(volume, "s1")
    (volume / "experiments" / "exp" / "results.json").write_text('{"accuracy": 0.95}')
    store.create(volume, "s2")
    image = Path("data/tusimple_data/clips/20.jpg")
    assert (store.path("s1") / image).stat().st_ino == (store.path("s2") / image).stat().st_ino
    results = Path("data/experiments/exp/results.json")
    assert (store.path("s1") / results).stat().st_ino != (store.path("s2") / results).stat().st_ino
    assert [s.name for s in store.list()] == ["s1", "s2"]


def test_restore_copies_and_verifies_and_refuses_a_tampered_snapshot(tmp_path: Path):
    volume = _volume(tmp_path)
    store = SnapshotStore(tmp_path / "snapshots")
    store.create(volume, "s1")
    restored = store.restore("s1", tmp_path / "volumes" / "restored")
    assert store.verify("s1", restored) == []
    (store.path("s1") / "data" / "experiments" / "exp" / "results.json").write_text("tampered")
    with pytest.raises(SnapshotError, match="results.json: content differs"):
        store.restore("s1", tmp_path / "volumes" / "again")
    assert not (tmp_path / "volumes" / "again").exists()


def test_unknown_snapshot_and_non_empty_target_are_clear_errors(tmp_path: Path):
    volume = _volume(tmp_path)
    store = SnapshotStore(tmp_path / "snapshots")
    with pytest.raises(SnapshotError, match="snapshot 'nope' not found"):
        store.restore("nope", tmp_path / "x")
    store.create(volume, "s1")
    with pytest.raises(SnapshotError, match="not empty"):
        store.restore("s1", volume)
