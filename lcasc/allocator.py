"""What this process's C allocator (glibc's malloc on Linux) does with freed memory: keep it, or give it back.

Tensors and arrays are malloc'd and freed in C. glibc keeps freed blocks in its heap, and a heap can only
shrink from its top, so a long run of allocations of different sizes (a training step allocates dozens of
maps of a few MB each) leaves free holes that stay resident: the process's memory grows although nothing
holds the memory. Two opposite needs, each met here once:

- a short-lived process that decodes and classifies file after file (``lcasc predict``) is faster when
  malloc keeps freed blocks for the next file (:func:`keep_freed_memory`);
- a long training, or a worker that fine-tunes network after network, must not grow: every so often the free
  holes are handed back to the kernel (:func:`release_freed_memory`, glibc's ``malloc_trim``).

Both are no-ops where the C library is not glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import sys

import numpy as np


@functools.cache
def _glibc():
    """glibc's functions in this process, or None when the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim, libc.mallopt  # noqa: B018 -- both exist in glibc only
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_memory() -> bool:
    """Hand the free pages of every malloc heap of this process back to the kernel; returns whether it could.

    Why: a compiled training step on TAU22-size data, one thread, grew its process from 0.6 to 1.1-1.9 GB
    anonymous memory within one epoch of 84,119 segments (2 of 2 processes, whenever two ran side by side, as
    the prune stage's fine-tuning workers do); nothing held that memory (it sat in the heap's free holes).
    With this called every 2 s the same jobs stayed at 0.63 and 0.72 GB, in the same time (262 vs 267-280 s).
    Cost: it walks the heaps (about a millisecond) and freed pages are faulted in again when next used."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@functools.cache  # process-wide settings: made once
def keep_freed_memory() -> None:
    """Ask glibc's malloc to serve blocks up to 32 MB from its heap and to keep up to 256 MB of freed memory
    instead of handing it back to the kernel at every ``free`` (process-wide, once; no-op elsewhere).

    Why: decoding and featurising one second of audio allocates and frees a few 100-kB to MB arrays. With
    glibc's defaults these are returned to the kernel when freed and page-faulted back in by the next file:
    ~45 minor faults and ~100 us per 1-s clip, a fifth of all the work (measured in predict_files). Set
    ``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_`` yourself to override.
    """
    libc = _glibc()
    if libc is None or any(k.startswith("MALLOC_") for k in os.environ):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 256 << 20)


def release_mapped_pages(*arrays) -> int:
    """Drop the pages of read-only memory-mapped ``arrays`` (``np.memmap`` opened with mode ``"r"``) from this
    process's resident set; returns how many maps it released. Other arrays are left alone.

    Why: a training reads every row of its memory-mapped features each epoch, so every page of the map ends up
    resident in every process that trains from it (TAU22 fold1: 1.19 GB, in the prune stage's parent and both
    fine-tuning workers). The pages stay in the kernel's page cache: the next read of a row is a minor fault,
    not a disk read. Only read-only maps: a copy-on-write map (mode ``"c"``) may hold rows written in this
    process, which ``MADV_DONTNEED`` would silently throw away."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    seen, released = set(), 0
    for a in arrays:
        m = getattr(a, "_mmap", None) if isinstance(a, np.memmap) and a.mode == "r" else None
        if m is None or advice is None or id(m) in seen:
            continue
        seen.add(id(m))
        try:
            m.madvise(advice)
        except (OSError, ValueError):  # a closed map, or a platform without madvise
            continue
        released += 1
    return released
