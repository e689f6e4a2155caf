"""Worker processes that end with their parent.

A run killed with SIGKILL cannot stop its process-pool workers, and a worker in the middle of a training
would go on writing into the run directory while the rerun of the same command resumes that training. Each
worker therefore watches its parent and exits as soon as the parent is gone.
"""

from __future__ import annotations

import os
import threading
import time


def _watch(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)  # the parent is gone: leave at once, without running cleanup that could write files


def exit_with_parent(interval: float = 0.2) -> None:
    """Call in a worker process (e.g. as a pool initializer): a daemon thread ends the process when its parent
    process dies."""
    threading.Thread(target=_watch, args=(os.getppid(), interval), daemon=True, name="exit-with-parent").start()
