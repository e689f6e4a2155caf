"""Knowledge distillation: the loss, teacher logits files, and the teachers of a ``kd`` run.

Loss (Hinton et al. 2015, as CP-JKU's DCASE systems use it):

    loss = λ · CE(student logits, labels) + (1 − λ) · τ² · KL(softmax(teacher / τ) ‖ softmax(student / τ))

averaged over the batch. τ² keeps the gradient scale of the soft term independent of τ. With λ = 1 the soft
term is multiplied by exactly 0, so training equals plain cross-entropy training bit for bit (tested).

Teacher logits files hold one row of logits per training segment, keyed by the recording's file name (as
the dataset names it, e.g. ``audio/street-...-a.wav`` or ``001 - Dog bark/1-100032-A.ogg``) and the
segment's index in its recording (0 = the first second):

- CSV: ``filename,segment,<class 1>,<class 2>,...`` with the class names as column headers;
- NPZ: arrays ``filename`` (N,) str, ``segment`` (N,) int, ``logits`` (N, C) float, ``classes`` (C,) str.

The classes must be the run's classes (a different order is reordered, a different set is an error); every
training segment must have a row (a missing one is an error naming it); rows for segments the run does not
train on (other splits, silent segments) are ignored and counted, but rows for recordings the dataset does
not know are an error (a file for another dataset). Duplicate keys are an error.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lcasc.io import atomic_path

log = logging.getLogger("lcasc")


class TeacherLogitsError(ValueError):
    """A teacher logits file does not fit the run; the message names the file and the problem."""


def kd_loss(logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None, lam: float, tau: float,
            mix=None) -> torch.Tensor:
    """λ·CE + (1 − λ)·τ²·KL(teacher_τ ‖ student_τ), batch mean; without a teacher, plain CE.

    ``mix`` (an :class:`lcasc.augment.Mix` from mixup): example i is w·(i) + (1 − w)·(perm[i]), so its CE is
    the same mix of the two labels' CE and its teacher distribution the same mix of the two teachers'."""
    if mix is None:
        ce = F.cross_entropy(logits, y)
    else:
        ce = (mix.weight * F.cross_entropy(logits, y, reduction="none")
              + (1 - mix.weight) * F.cross_entropy(logits, y[mix.perm], reduction="none")).mean()
    if teacher_logits is None:
        return ce
    target = F.softmax(teacher_logits.float() / tau, dim=1)
    if mix is not None:
        w = mix.weight.view(-1, 1)
        target = w * target + (1 - w) * target[mix.perm]
    kl = F.kl_div(F.log_softmax(logits / tau, dim=1), target, reduction="batchmean")
    return lam * ce + (1 - lam) * tau * tau * kl


# -- teacher logits files ----------------------------------------------------------------------------------
def write_logits(path: str | Path, names: list[str], segments: np.ndarray, logits: np.ndarray,
                 classes: list[str]) -> Path:
    """Write per-segment teacher logits as CSV or NPZ (by the suffix), atomically."""
    path = Path(path)
    logits = np.asarray(logits, np.float32)
    if logits.shape != (len(names), len(classes)) or len(segments) != len(names):
        raise ValueError(f"{len(names)} names, {len(segments)} segments and logits {logits.shape} for "
                         f"{len(classes)} classes do not fit together")
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, filename=np.asarray(names, dtype=str), segment=np.asarray(segments, np.int64),
                         logits=logits, classes=np.asarray(classes, dtype=str))
        elif suffix == ".csv":
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["filename", "segment", *classes])
                for name, seg, row in zip(names, segments, logits, strict=True):
                    w.writerow([name, int(seg), *(repr(float(v)) for v in row)])
        else:
            raise ValueError(f"{path}: teacher logits files are .csv or .npz, not {path.suffix or 'no suffix'}")
    return path


def read_logits(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(file names, segment indices (N,), logits (N, C) float32, classes) of a CSV or NPZ file."""
    path = Path(path)
    if not path.is_file():
        raise TeacherLogitsError(f"{path}: teacher logits file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                missing = {"filename", "segment", "logits", "classes"} - set(z.files)
                if missing:
                    raise TeacherLogitsError(f"{path}: NPZ lacks the array(s) {', '.join(sorted(missing))} "
                                             "(needs filename, segment, logits, classes)")
                names, segments = [str(n) for n in z["filename"]], z["segment"].astype(np.int64)
                logits, classes = z["logits"].astype(np.float32), [str(c) for c in z["classes"]]
        elif suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
            if not rows or rows[0][:2] != ["filename", "segment"] or len(rows[0]) < 3:
                raise TeacherLogitsError(f"{path}: the header must be filename,segment,<class names...>")
            classes = rows[0][2:]
            bad = [i + 2 for i, r in enumerate(rows[1:]) if len(r) != len(rows[0])]
            if bad:
                raise TeacherLogitsError(f"{path}: line {bad[0]} has a different number of columns than the header "
                                         f"({len(rows[0])})")
            names = [r[0] for r in rows[1:]]
            segments = np.array([int(r[1]) for r in rows[1:]], np.int64)
            logits = np.array([[float(v) for v in r[2:]] for r in rows[1:]], np.float32).reshape(-1, len(classes))
        else:
            raise TeacherLogitsError(f"{path}: teacher logits files are .csv or .npz, not "
                                     f"{path.suffix or 'without suffix'}")
    except (ValueError, OSError, KeyError) as e:
        if isinstance(e, TeacherLogitsError):
            raise
        raise TeacherLogitsError(f"{path}: cannot read teacher logits ({e})") from None
    if logits.ndim != 2 or logits.shape != (len(names), len(classes)) or len(segments) != len(names):
        raise TeacherLogitsError(f"{path}: logits of shape {logits.shape} for {len(names)} rows and "
                                 f"{len(classes)} classes")
    if not np.isfinite(logits).all():
        row = int(np.flatnonzero(~np.isfinite(logits).all(1))[0])
        raise TeacherLogitsError(f"{path}: non-finite logits for {names[row]} segment {segments[row]}")
    return names, segments, logits, classes


def align(path: str | Path, names: list[str], segments: np.ndarray, classes: list[str],
          known_names: set[str] | None = None) -> np.ndarray:
    """Teacher logits (N, C) from ``path`` in the order of the given (file name, segment) keys and classes.

    Errors (:class:`TeacherLogitsError`, naming the file) for another class set, duplicate keys, a missing
    key, or rows for recordings outside ``known_names`` (the dataset's recordings); extra rows for known
    recordings (other splits, silent segments) are ignored."""
    path = Path(path)
    f_names, f_segments, f_logits, f_classes = read_logits(path)
    if f_classes != list(classes):
        if sorted(f_classes) != sorted(classes) or len(set(f_classes)) != len(f_classes):
            raise TeacherLogitsError(
                f"{path}: its classes ({', '.join(f_classes)}; {len(f_classes)}) are not the run's "
                f"({', '.join(classes)}; {len(classes)})")
        f_logits = f_logits[:, [f_classes.index(c) for c in classes]]  # same classes, other order
        log.info("teacher logits %s: classes reordered to the run's order", path)
    index: dict[tuple[str, int], int] = {}
    for i, key in enumerate(zip(f_names, f_segments.tolist(), strict=True)):
        if key in index:
            raise TeacherLogitsError(f"{path}: {key[0]} segment {key[1]} appears twice")
        index[key] = i
    if known_names is not None:
        foreign = sorted({n for n in f_names if n not in known_names})
        if foreign:
            raise TeacherLogitsError(f"{path}: {len(foreign)} file name(s) the dataset does not have, e.g. "
                                     f"{foreign[0]!r} (logits of another dataset, or names written differently)")
    rows = []
    for name, seg in zip(names, np.asarray(segments).tolist(), strict=True):
        i = index.get((name, seg))
        if i is None:
            n_missing = sum((n, s) not in index for n, s in zip(names, np.asarray(segments).tolist(), strict=True))
            raise TeacherLogitsError(f"{path}: no logits for {name} segment {seg} ({n_missing} of {len(names)} "
                                     "training segments are missing)")
        rows.append(i)
    extra = len(f_names) - len(rows)
    if extra:
        log.info("teacher logits %s: %d rows for segments not trained on (other splits, silent) ignored", path, extra)
    return f_logits[rows]


# -- teachers of a run -------------------------------------------------------------------------------------
def recording_names(run) -> list[str]:
    """The dataset's name of each recording, as teacher logits files key them (relative to the dataset)."""
    return list(run.features().names)


def keys(run, split: str = "train") -> tuple[list[str], np.ndarray]:
    """(file name, segment index) of every segment of ``split``, in the run's order."""
    fs = run.split(split)
    names = recording_names(run)
    return [names[r] for r in fs.recording], np.asarray(fs.segment, np.int64)
