"""`lanex data prepare`: check a TuSimple dataset once and write the indexes training reads.

Training must not discover a bad label line or a truncated JPEG in epoch 37 on worker 2, so every
label line is validated and every image is opened and decoded (at 1/8 scale, which still walks all
of the JPEG's entropy-coded data and so catches truncation) before anything trains. Problems are
reported with the file and line (or the image path) and the offending entry is skipped.

Output, under `<root>/lanex_index/`:

* `train.jsonl`, `val.jsonl`, `test.jsonl`: one kept image per line: `image` (path relative to
  root), `raw_file`, `h_samples`, `lanes`, `width`, `height`;
* `skipped.jsonl`: every skipped entry with its reason;
* `prepared.json`: the summary, the label files used (with SHA-256) and a format version. It is
  written last and atomically, so its presence means "prepared"; it is removed first on a re-run.

Running it twice on the same data produces byte-identical files.

Two on-disk layouts of the real TuSimple are recognised (`detect_layout`) and named in the summary:
TuSimple's own three files (`train_set.zip` and `test_set.zip` extracted into the root, which puts
`clips/` and the `label_data_*.json` there, with `test_label.json` beside them), and the one-archive
re-packaging of dataset hubs (`train_set/` and `test_set/` folders, `test_label.json` beside them,
whose test `raw_file` paths stay relative to `test_set/`). Each `raw_file` is looked for next to its
label file, then in the root, then in the split's folder of the layout.

Either may sit a few folders below the root (hubs wrap it in `TUSimple/`, some in `archive/TUSimple/`):
when the root itself holds neither, the shallowest folder up to MAX_SEARCH_DEPTH levels down that
does is the dataset's base (`find_base`), named in the summary's layout; index paths stay relative
to the root.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from lanex_trainer.data.labels import LabelError, parse_label_line, usable_lane_count

FORMAT_VERSION = 1
INDEX_DIR = "lanex_index"
MARKER = "prepared.json"
SPLITS = ("train", "val", "test")
SKIPPED_SHOWN = 50
"""How many skipped entries the summary lists; all of them are in skipped.jsonl."""
TRAIN_FOLDER = "train_set"
TEST_FOLDER = "test_set"
TEST_TASKS_FILE = "test_tasks_0627.json"
MAX_SEARCH_DEPTH = 3
"""How many folders below the root a layout is looked for."""
NOT_SEARCHED = {INDEX_DIR, "clips", "__MACOSX"}
"""Folders that never hold a layout's base (clips/ has thousands of frame folders)."""
"""The test archive's list of frames to predict (no lanes): not a label file, only noted."""


class PrepareError(Exception):
    """The dataset cannot be prepared (or read back): a label file is missing, or it is not prepared."""


@dataclass(frozen=True)
class _Candidate:
    """A label line that parsed, waiting for its image check."""

    split: str
    where: str
    image: Path
    label: dict[str, Any]
    looked_in: tuple[Path, ...]  # every place the image was looked for, for the "missing image" report


@dataclass(frozen=True)
class Layout:
    """How a TuSimple copy is laid out under its root: a name, a description, the split folders."""

    name: str
    description: str
    train_folder: Optional[str] = None  # where train/val images live besides the label file's folder
    test_folder: Optional[str] = None
    base: str = ""  # the folder (relative to the root, POSIX) that holds the layout; "" for the root itself

    def folder_for(self, split: str) -> Optional[str]:
        folder = self.test_folder if split == "test" else self.train_folder
        return posixpath.join(self.base, folder) if folder and self.base else folder


def _holds_layout(folder: Path, label_files: Iterable[str]) -> bool:
    return ((folder / TRAIN_FOLDER).is_dir() or (folder / TEST_FOLDER).is_dir()
            or any((folder / name).is_file() for name in label_files))


def find_base(root: Path, label_files: Iterable[str] = ()) -> str:
    """The folder that holds the dataset: the root, else the shallowest one up to MAX_SEARCH_DEPTH levels
    down with train_set/, test_set/ or one of `label_files`; "" when none does (errors then name the root).
    Raises PrepareError when two folders at that depth qualify (which one is meant cannot be told)."""
    root = Path(root)
    label_files = tuple(label_files)
    level = [root]
    for _ in range(MAX_SEARCH_DEPTH + 1):
        found = [folder for folder in level if _holds_layout(folder, label_files)]
        if len(found) > 1:
            names = ", ".join(sorted(Path(os.path.relpath(folder, root)).as_posix() for folder in found))
            raise PrepareError(f"{root} holds more than one TuSimple copy ({names}); pass the one to use as --root")
        if found:
            return "" if found[0] == root else Path(os.path.relpath(found[0], root)).as_posix()
        level = [child for folder in level for child in _subfolders(folder)]
    return ""


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(entry for entry in folder.iterdir()
                      if entry.is_dir() and entry.name not in NOT_SEARCHED and not entry.name.startswith("."))
    except OSError:
        return []


def detect_layout(root: Path, label_files: Iterable[str] = ()) -> Layout:
    """Which of TuSimple's published layouts `root` holds, and where (see the module docstring)."""
    base = find_base(root, label_files)
    folder = Path(root) / base
    where = f", found in {base}/" if base else ""
    train = TRAIN_FOLDER if (folder / TRAIN_FOLDER).is_dir() else None
    test = TEST_FOLDER if (folder / TEST_FOLDER).is_dir() else None
    if train is not None:
        return Layout("repackaged", "one archive: train_set/ and test_set/ folders, test_label.json beside them "
                      f"(test raw_file paths relative to test_set/){where}", train, test, base)
    if test is not None:
        return Layout("official, test set in test_set/", "train_set.zip extracted into the root, test_set.zip "
                      f"into test_set/, test_label.json in the root{where}", None, test, base)
    return Layout("official", "TuSimple's three files: train_set.zip and test_set.zip extracted into the root "
                  f"(clips/, label_data_*.json), test_label.json beside them{where}", base=base)


def index_dir(root: Path) -> Path:
    """Where prepare writes its indexes and marker."""
    return Path(root) / INDEX_DIR


def is_prepared(root: Path) -> bool:
    """True when `prepare_dataset` completed on `root` with the current index format."""
    marker = index_dir(root) / MARKER
    try:
        return json.loads(marker.read_text())["format_version"] == FORMAT_VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load_index(root: Path, split: str) -> list[dict[str, Any]]:
    """The kept entries of one split, as written by `prepare_dataset`."""
    if split not in SPLITS:
        raise PrepareError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not is_prepared(root):
        raise PrepareError(f"{root} is not prepared (no valid {INDEX_DIR}/{MARKER}); run `lanex data prepare --root {root}`")
    path = index_dir(root) / f"{split}.jsonl"
    try:
        with path.open() as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError) as error:
        raise PrepareError(f"cannot read index {path}: {error}") from error


def locate_label_file(root: Path, name: str, base: str = "") -> Path:
    """`base/name`, else `base/train_set/name`, else `base/test_set/name` under root (the layouts' label places)."""
    folder = Path(root) / base
    candidates = [folder / name, folder / TRAIN_FOLDER / name, folder / TEST_FOLDER / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = "" if base else f", nor in any folder up to {MAX_SEARCH_DEPTH} levels below {root}"
    raise PrepareError(f"label file {name!r} not found (looked for {', '.join(str(c) for c in candidates)}{searched})")


def image_candidates(root: Path, label_file: Path, raw_file: str, folder: Optional[str] = TEST_FOLDER,
                     base: str = "") -> list[Path]:
    """Where `raw_file` may be: next to its label file, under root (and the layout's base), under the
    layout's split folder."""
    places = [label_file.parent, Path(root)] + ([Path(root) / base] if base else []) + (
        [Path(root) / folder] if folder else [])
    return list(dict.fromkeys(place / raw_file for place in places))


def check_image(path: Path) -> tuple[int, int]:
    """Open and decode an image cheaply; return (width, height) or raise ValueError naming the path.

    JPEGs are decoded with DCT scaling to 1/8 size (Pillow's draft mode): about half the cost of a
    full decode, and a truncated or corrupt file still fails because all the compressed data is read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    except FileNotFoundError as error:
        raise ValueError(f"missing image {path}") from error
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise ValueError(f"corrupt image {path}: {error}") from error
    return width, height


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _skip(split: str, where: str, reason: str, message: str) -> dict[str, str]:
    return {"split": split, "where": where, "reason": reason, "message": message}


def _skip_order(item: dict[str, str]) -> tuple[int, str, int]:
    """Split, then label file, then line number (numerically: line 9 before line 10)."""
    name, _, line = item["where"].rpartition(":")
    return SPLITS.index(item["split"]), name, int(line)


def _read_label_file(
    root: Path, split: str, label_file: Path, seen: set[str], layout: Layout
) -> tuple[list[_Candidate], list[dict[str, str]], int]:
    """Parse one label file; return the candidates, the skipped lines and the number of lines."""
    candidates: list[_Candidate] = []
    skipped: list[dict[str, str]] = []
    shown_name = os.path.relpath(label_file, root)
    lines = 0
    with label_file.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            lines += 1
            where = f"{shown_name}:{number}"
            try:
                label = parse_label_line(text, where)
            except LabelError as error:
                skipped.append(_skip(split, where, "bad label", str(error)))
                continue
            if label["raw_file"] in seen:
                message = f"{where}: duplicate raw_file {label['raw_file']} (already in split {split})"
                skipped.append(_skip(split, where, "duplicate", message))
                continue
            seen.add(label["raw_file"])
            looked_in = image_candidates(root, label_file, label["raw_file"], layout.folder_for(split), layout.base)
            image = next((path for path in looked_in if path.is_file()), looked_in[0])
            candidates.append(_Candidate(split, where, image, label, tuple(looked_in)))
    return candidates, skipped, lines


def _entry(root: Path, candidate: _Candidate, size: tuple[int, int]) -> dict[str, Any]:
    return {
        "image": Path(os.path.relpath(candidate.image, root)).as_posix(),
        "raw_file": candidate.label["raw_file"],
        "h_samples": candidate.label["h_samples"],
        "lanes": candidate.label["lanes"],
        "width": size[0],
        "height": size[1],
    }


def _check_all(candidates: list[_Candidate], workers: int) -> list[object]:
    """Check every candidate's image in a thread pool (decoding releases the GIL); keep order."""

    def check(candidate: _Candidate) -> object:
        try:
            return check_image(candidate.image)
        except ValueError as error:
            return error

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(check, candidates))


def _write_atomically(path: Path, lines: Iterable[str]) -> None:
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8")
    try:
        with handle:
            for line in lines:
                handle.write(line)
        os.chmod(handle.name, 0o644)  # readable by the training pods, whatever user they run as
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _json_lines(records: Iterable[dict[str, Any]]) -> Iterable[str]:
    return (json.dumps(record, separators=(",", ":")) + "\n" for record in records)


def prepare_dataset(
    root: Path,
    train_files: list[str],
    val_files: list[str],
    test_files: list[str],
    workers: Optional[int] = None,
) -> dict[str, Any]:
    """Validate labels and images, write the indexes and the marker; return a JSON-able summary.

    A split with no label files gets an empty index. A missing label file raises PrepareError
    before anything is written. `workers` is the number of image-checking threads (default: CPUs).
    """
    root = Path(root)
    files_by_split = {"train": train_files, "val": val_files, "test": test_files}
    layout = detect_layout(root, [name for names in files_by_split.values() for name in names])
    located = {split: [locate_label_file(root, name, layout.base) for name in names]
               for split, names in files_by_split.items()}

    out_dir = index_dir(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)

    candidates: list[_Candidate] = []
    skipped: list[dict[str, str]] = []
    lines: Counter[str] = Counter()
    for split, label_files in located.items():
        seen: set[str] = set()
        for label_file in label_files:
            found, bad, count = _read_label_file(root, split, label_file, seen, layout)
            candidates.extend(found)
            skipped.extend(bad)
            lines[split] += count

    results = _check_all(candidates, workers or os.cpu_count() or 1)
    entries: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for candidate, result in zip(candidates, results):
        if isinstance(result, ValueError):
            reason = "missing image" if str(result).startswith("missing") else "corrupt image"
            message = f"{candidate.where}: {result}"
            if reason == "missing image" and len(candidate.looked_in) > 1:
                places = ", ".join(os.path.relpath(path, root) for path in candidate.looked_in)
                message = f"{candidate.where}: missing image {candidate.label['raw_file']} (looked for {places})"
            skipped.append(_skip(candidate.split, candidate.where, reason, message))
        else:
            entries[candidate.split].append(_entry(root, candidate, result))
    skipped.sort(key=_skip_order)

    for split in SPLITS:
        _write_atomically(out_dir / f"{split}.jsonl", _json_lines(entries[split]))
    _write_atomically(out_dir / "skipped.jsonl", _json_lines(skipped))

    summary = _summary(root, layout, located, entries, skipped, lines)
    marker = {"format_version": FORMAT_VERSION, "summary": summary}
    _write_atomically(out_dir / MARKER, [json.dumps(marker, indent=2, sort_keys=True) + "\n"])
    return summary


def _summary(
    root: Path,
    layout: Layout,
    located: dict[str, list[Path]],
    entries: dict[str, list[dict[str, Any]]],
    skipped: list[dict[str, str]],
    lines: Counter[str],
) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for split in SPLITS:
        histogram = Counter(usable_lane_count(e["lanes"], e["h_samples"]) for e in entries[split])
        splits[split] = {
            "label_files": [
                {"path": Path(os.path.relpath(path, root)).as_posix(), "sha256": file_sha256(path)}
                for path in located[split]
            ],
            "label_lines": lines[split],
            "images": len(entries[split]),
            "skipped": sum(1 for item in skipped if item["split"] == split),
            "lanes_histogram": {str(count): histogram[count] for count in sorted(histogram)},
        }
    hints = [
        f"split {split}: none of its {lines[split]} labelled images was found; "
        + ("test_set.zip (TuSimple's test images) is probably missing" if split == "test"
           else "train_set.zip is probably missing or extracted elsewhere")
        for split in SPLITS if lines[split] and not entries[split]
    ]
    base = root / layout.base
    tasks = [path for path in (base / TEST_TASKS_FILE, base / TEST_FOLDER / TEST_TASKS_FILE) if path.is_file()]
    return {
        "root": str(root),
        "layout": {"name": layout.name, "description": layout.description, "base": layout.base},
        "test_tasks": Path(os.path.relpath(tasks[0], root)).as_posix() if tasks else None,
        "hints": hints,
        "index_dir": INDEX_DIR,
        "format_version": FORMAT_VERSION,
        "splits": splits,
        "images": sum(len(entries[split]) for split in SPLITS),
        "skipped_total": len(skipped),
        "skipped_by_reason": dict(sorted(Counter(item["reason"] for item in skipped).items())),
        "skipped": [item["message"] for item in skipped[:SKIPPED_SHOWN]],
    }
