"""Small file helpers: every artifact is written under a temporary name and renamed into place, so a
killed process never leaves a half-written file that a later stage would trust."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path, default=None):
    path = Path(path)
    if not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def write_yaml(path: str | Path, data) -> None:
    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


@contextlib.contextmanager
def native_output_to(target: str | os.PathLike = os.devnull):
    """Send what native code writes to file descriptors 1 and 2 (TFLM's and the converter's messages) to
    ``target`` for the duration of the block; C's stdio buffers are flushed on both sides. Process-wide:
    other threads' output in the meantime goes there too."""
    libc = ctypes.CDLL(None) if os.name == "posix" else None

    def flush() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if libc is not None:
            libc.fflush(None)

    flush()
    saved = os.dup(1), os.dup(2)
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.dup2(out, 1)
        os.dup2(out, 2)
        yield
    finally:
        flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (out, *saved):
            os.close(fd)
