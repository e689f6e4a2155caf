"""Datasets know their layout, splits, labels and devices; the rest of lcasc sees :class:`Recording` lists.

Layouts:
- ``tau22``: TAU Urban Acoustic Scenes 2022 Mobile development set (METHOD-NOTES §1): ``meta.csv`` and
  ``evaluation_setup/fold1_{train,evaluate,test}.csv``. Two protocols (``validation``):
  ``holdout`` (default, as the DCASE 2022 baseline: its ``task1.yaml`` holds out ``validation_amount: 0.3``
  of fold1_train): validation is 30 % of fold1_train, stratified by class and grouped by recording location
  (``meta.csv``'s ``identifier``), so no location is in both; training is the rest; the test split is
  fold1_evaluate (fold1_test lists the same clips without labels). ``evaluate``: the paper's choice,
  validate on fold1_evaluate, which is also the test split, so every choice made on validation data sees the
  test clips (``Dataset.aliases`` records ``{"test": "validate"}``).
- ``folder``: ``root/<class>/**/<audio>``; each recording goes to train/validate/test (70/15/15) by a
  stable hash of its path, so a recording never straddles two splits and reruns agree.
- ``csv``: ``filename,label,split`` (optional ``device``), paths relative to the CSV file.

Problems in metadata (missing files, unknown labels or splits, duplicates) skip the row with a warning and
are kept in ``Dataset.skipped``; problems that make the dataset unusable raise :class:`DatasetError`.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lcasc.audio import AUDIO_EXTENSIONS
from lcasc.names import LAYOUTS, TAU22_PROTOCOLS

log = logging.getLogger("lcasc")

SPLITS = ("train", "validate", "test")
HOLDOUT_FRACTION = 0.3  # of fold1_train, as the DCASE 2022 baseline's validation_amount
HOLDOUT_SEED = 0  # the held-out locations are a property of the dataset, the same for every run seed
EMBEDDED = Path(__file__).resolve().parent.parent / "_data" / "esc10" / "splits.csv"


class DatasetError(ValueError):
    """The dataset cannot be used as given; the message names the file and the fix."""


@dataclass(frozen=True)
class Recording:
    path: Path  # absolute path of the audio file
    name: str  # path relative to the dataset root, as written in outputs
    label: str | None  # None where the split has no labels
    split: str  # train | validate | test
    device: str = "-"


@dataclass
class Dataset:
    root: Path
    layout: str
    classes: list[str]
    recordings: list[Recording]
    skipped: list[str] = field(default_factory=list)  # one line per skipped row or file
    aliases: dict[str, str] = field(default_factory=dict)  # e.g. TAU22 dev: {"test": "validate"}
    protocol: str = ""  # how the splits were made, in words (reported with every run)

    def split(self, name: str) -> list[Recording]:
        name = self.aliases.get(name, name)
        return [r for r in self.recordings if r.split == name]

    def summary(self) -> dict:
        return {"root": str(self.root), "layout": self.layout, "classes": self.classes,
                "recordings": {s: len(self.split(s)) for s in SPLITS}, "skipped_rows": len(self.skipped),
                "split_aliases": self.aliases, "protocol": self.protocol}


def _skip(skipped: list[str], message: str) -> None:
    log.warning("skipped: %s", message)
    skipped.append(message)


LINE = " line"  # key of a row's line number in _read_table's rows (never a column: names are stripped)
SPLIT_ALIASES = {"val": "validate", "valid": "validate", "validation": "validate", "training": "train",
                 "testing": "test"}


def _read_table(path: Path, required: list[str], delimiter: str | None = None) -> list[dict]:
    """Rows of a CSV/TSV with a header, as {column: stripped text}; column names compared case-insensitively.

    The delimiter is sniffed from the header (tab, comma or semicolon) unless given. Any line ending, a
    UTF-8 byte-order mark and bytes that are not UTF-8 (replaced) are accepted. Values beyond the header's
    columns are ignored; missing ones read as empty. Raises :class:`DatasetError` naming the file when it
    is missing, unreadable, empty, not a table or lacks a required column.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if "\0" in text:
        raise DatasetError(f"{path}: contains NUL bytes; not a text table (expected columns {', '.join(required)})")
    lines = text.splitlines()
    while lines and not lines[0].strip():  # blank lines before the header
        lines.pop(0)
    if not lines:
        raise DatasetError(f"{path}: file is empty, expected a header with columns {', '.join(required)}")
    if delimiter is None:
        delimiter = next((d for d in ("\t", ",", ";") if d in lines[0]), ",")
    first = len(text.splitlines()) - len(lines) + 1  # line number of the header in the file
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header) or 'none'}")
        index = {h: i for i, h in reversed(list(enumerate(header)))}  # the first of duplicate column names
        rows = []
        for row in reader:
            if any(v.strip() for v in row):  # blank lines are not rows
                rows.append({h: (row[i].strip() if i < len(row) else "") for h, i in index.items()}
                            | {LINE: str(first + reader.line_num - 1)})
    except csv.Error as e:
        raise DatasetError(f"{path}:{first + reader.line_num - 1}: not a valid table row ({e})") from None
    return rows


def _exists(path: Path) -> bool:
    """``path.is_file()``, False instead of an exception for names the OS rejects (too long, NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _listed_files(folder: str, listings: dict[str, set[str] | None]) -> set[str] | None:
    """Names of the files in ``folder`` (listed once, kept in ``listings``); None if it cannot be listed."""
    if folder not in listings:
        try:
            with os.scandir(folder) as entries:
                listings[folder] = {e.name for e in entries if e.is_file()}
        except (OSError, ValueError):
            listings[folder] = None
    return listings[folder]


def _finish(root: Path, layout: str, recordings: list[Recording], skipped: list[str]) -> Dataset:
    """Dedupe, check files exist, fix the class order from the training labels, drop unknown labels.

    Existence: one listing per folder instead of one ``stat`` per file (TAU22's 169,300 files are in one
    folder); a name not in the listing is still checked with ``is_file`` (case-insensitive file systems)."""
    seen: dict[str, Recording] = {}
    kept: list[Recording] = []
    listings: dict[str, set[str] | None] = {}
    for r in recordings:
        path = str(r.path)
        if path in seen:
            _skip(skipped, f"{r.name}: listed more than once (kept the first, split {seen[path].split})")
            continue
        seen[path] = r
        folder, name = os.path.split(path)
        if name not in (_listed_files(folder, listings) or ()) and not _exists(r.path):
            _skip(skipped, f"{r.name}: file does not exist ({r.path})")
            continue
        kept.append(r)
    classes = sorted({r.label for r in kept if r.split == "train" and r.label})
    if not classes:
        raise DatasetError(f"{root}: no training recordings with labels found ({layout} layout)")
    out = []
    for r in kept:
        if r.label is not None and r.label not in classes:
            _skip(skipped, f"{r.name}: label {r.label!r} in split {r.split} does not occur in the training split")
            continue
        out.append(r)
    return Dataset(root=root, layout=layout, classes=classes, recordings=out, skipped=skipped)


def _stem(name: str) -> str:
    """``Path(name).stem`` of a file name, without building a Path (~10 us each: seconds for TAU22's names)."""
    base = name.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    return base[:dot] if 0 < dot < len(base) - 1 else base


def _device_from_name(name: str) -> str:
    """TAU file names end with the device: ``airport-lisbon-1000-40000-0-a.wav`` -> ``a``."""
    return _stem(name).rsplit("-", 1)[-1]


def _location(name: str) -> str:
    """The recording location of a TAU file name when ``meta.csv`` has no ``identifier`` column:
    ``airport-lisbon-1000-40000-0-a.wav`` -> ``lisbon-1000``."""
    parts = _stem(name).split("-")
    return "-".join(parts[1:3]) if len(parts) >= 3 else _stem(name)


def holdout_split(rows: list[tuple[str, str]], groups: dict[str, str], fraction: float = HOLDOUT_FRACTION,
                  seed: int = HOLDOUT_SEED) -> set[str]:
    """Names of ``rows`` ((name, label) pairs) held out for validation: about ``fraction`` of each class,
    whole groups (``groups``: name -> location) at a time, so that no group is on both sides.

    Groups are visited in a seeded random order; a group goes to validation when, for every class it holds,
    that brings the class's held-out count closer to ``fraction`` of the class than leaving it out would."""
    members: dict[str, list[tuple[str, str]]] = {}
    for name, label in rows:
        members.setdefault(groups[name], []).append((name, label))
    order = sorted(members)
    random.Random(seed).shuffle(order)
    total = Counter(label for _, label in rows)
    held, out = Counter(), set()
    for g in order:
        counts = Counter(label for _, label in members[g])
        if all(held[c] + n / 2 <= fraction * total[c] for c, n in counts.items()):
            held.update(counts)
            out.update(name for name, _ in members[g])
    return out


def load_tau22(root: Path, validation: str = "holdout") -> Dataset:
    if validation not in TAU22_PROTOCOLS:
        raise DatasetError(f"unknown validation protocol {validation!r}; choose {' or '.join(TAU22_PROTOCOLS)}")
    setup = root / "evaluation_setup"
    meta = {r["filename"]: r for r in _read_table(root / "meta.csv", ["filename", "scene_label"], "\t")}
    skipped: list[str] = []
    rows: dict[str, list[tuple[str, str]]] = {}
    for fold, fname, has_label in (("train", "fold1_train.csv", True), ("evaluate", "fold1_evaluate.csv", True),
                                   ("test", "fold1_test.csv", False)):
        rows[fold] = []
        for row in _read_table(setup / fname, ["filename", "scene_label"] if has_label else ["filename"], "\t"):
            name = row["filename"]
            label = row.get("scene_label") or (meta[name]["scene_label"] if name in meta else None)
            if label is None:
                _skip(skipped, f"{name}: in {fname} but not in meta.csv, so it has no label")
                continue
            rows[fold].append((name, label))
    evaluate_names = {n for n, _ in rows["evaluate"]}
    # The development set's fold1_test lists the fold1_evaluate clips without labels: one copy, one role.
    test_rows = rows["evaluate"] + [(n, lab) for n, lab in rows["test"] if n not in evaluate_names]
    if validation == "holdout":
        groups = {n: (meta.get(n, {}).get("identifier") or _location(n)) for n, _ in rows["train"]}
        held = holdout_split(rows["train"], groups)
        splits = [("train", [r for r in rows["train"] if r[0] not in held]),
                  ("validate", [r for r in rows["train"] if r[0] in held]), ("test", test_rows)]
        protocol = (f"tau22 holdout: train and validation from fold1_train ({HOLDOUT_FRACTION:.0%} held out, "
                    "stratified by class, grouped by recording location), test on fold1_evaluate")
    else:
        splits = [("train", rows["train"]), ("validate", rows["evaluate"]),
                  ("test", [r for r in rows["test"] if r[0] not in evaluate_names])]
        protocol = ("tau22 evaluate (the paper's choice): train on fold1_train, validate on fold1_evaluate, "
                    "which is also the test split")
    recordings = [Recording(root / name, name, label, split, _device_from_name(name))
                  for split, pairs in splits for name, label in pairs]
    ds = _finish(root, "tau22", recordings, skipped)
    if validation == "evaluate" and {n for n, _ in rows["test"]} <= evaluate_names:
        ds.aliases["test"] = "validate"
    ds.protocol = protocol
    return ds


def _hash_split(name: str, fractions=(0.7, 0.15)) -> str:
    h = int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if h < fractions[0] else "validate" if h < fractions[0] + fractions[1] else "test"


def load_folder(root: Path) -> Dataset:
    recordings = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS:
                name = f.relative_to(root).as_posix()
                recordings.append(Recording(f, name, class_dir.name, _hash_split(name)))
    if not recordings:
        raise DatasetError(f"{root}: no audio files found in class folders (expected {root}/<class>/<file>.wav)")
    ds = _finish(root, "folder", recordings, [])
    ds.protocol = "folder: each recording in train/validate/test (70/15/15) by a stable hash of its path"
    return ds


def load_csv(path: Path) -> Dataset:
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise DatasetError(f"{path}: expected exactly one .csv file (filename,label,split) in the folder, "
                               f"found {len(found)}; pass the CSV file itself")
        path = found[0]
    root = path.parent
    skipped: list[str] = []
    recordings = []
    for row in _read_table(path, ["filename", "label", "split"]):
        name, label, split = row["filename"], row["label"], row["split"].lower()
        split = SPLIT_ALIASES.get(split, split)
        if not name:
            _skip(skipped, f"{path}:{row[LINE]}: empty filename")
            continue
        if split not in SPLITS:
            _skip(skipped, f"{name}: unknown split {row['split']!r} (expected train, validate or test)")
            continue
        if not label:  # a row without its label can be neither learned nor scored
            _skip(skipped, f"{name}: no label ({path.name} line {row[LINE]})")
            continue
        recordings.append(Recording(root / name, name, label, split, row.get("device") or "-"))
    ds = _finish(root, "csv", recordings, skipped)
    ds.protocol = f"csv: the splits listed in {path.name}"
    return ds


def detect_layout(path: Path) -> str:
    if path.is_file():
        return "csv"
    if (path / "meta.csv").is_file() and (path / "evaluation_setup").is_dir():
        return "tau22"
    if any(p.is_dir() for p in path.iterdir()):
        return "folder"
    if list(path.glob("*.csv")):
        return "csv"
    raise DatasetError(f"{path}: cannot tell the layout; pass --layout tau22|folder|csv")


def load_dataset(path: str | Path | None = None, layout: str | None = None, validation: str = "holdout") -> Dataset:
    """Load a dataset; ``path=None`` gives the embedded ESC-10 default. ``layout`` is detected if omitted.
    ``validation`` picks the TAU22 protocol (:data:`TAU22_PROTOCOLS`); other layouts name their splits."""
    if path is None:
        return default_dataset()
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise DatasetError(f"{path}: dataset path does not exist")
    layout = layout or detect_layout(path)
    loaders = {"tau22": lambda p: load_tau22(p, validation), "folder": load_folder, "csv": load_csv}
    if layout not in loaders:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return loaders[layout](path)


def default_dataset() -> Dataset:
    """ESC-10 folds 1-4 shipped with lcasc: folds 1-2 train, fold 3 validate, fold 4 test."""
    return load_csv(EMBEDDED)
