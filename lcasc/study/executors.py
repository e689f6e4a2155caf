"""Where the study's jobs run: a local pool of spawned processes (each maps the features itself), or Ray
tasks; both keep at most a given number of jobs in flight and hand each result over as it arrives."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import shutil
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

from lcasc.study.jobs import Job, run_job

log = logging.getLogger("lcasc")
SPLITS = ("train", "validate", "test")  # the feature arrays a job receives, in this order


# -- local process pool ---------------------------------------------------------------------------------
_DATA: tuple | None = None  # a pool worker's feature arrays (and the teacher's logits, if any)


def _init_worker(refs: tuple) -> None:
    global _DATA
    from lcasc.features import opened
    from lcasc.workers import exit_with_parent

    exit_with_parent()  # a killed study must not leave trainings running behind it
    _DATA = opened(refs)


def _pool_job(job: Job) -> dict:
    return run_job(job, *_DATA)


def _array_names() -> list[str]:
    return [f"{v}_{s}" for s in SPLITS for v in ("X", "y")] + ["teacher_train", "impulse"]


def _drive(jobs: list[Job], limit: int, submit, wait_some, cancel, on_result) -> None:
    """Keep at most ``limit`` jobs in flight and hand each result to ``on_result`` as it arrives.

    A failed job stops new submissions; the running ones are still collected (their results kept), then
    the failure is raised. ``wait_some(handles)`` yields ``(handle, result or exception)`` of finished jobs.
    """
    queue, pending, failed = list(jobs), {}, []
    try:
        while pending or (queue and not failed):
            while queue and not failed and len(pending) < limit:
                job = queue.pop(0)
                pending[submit(job)] = job
            for handle, outcome in wait_some(list(pending)):
                job = pending.pop(handle)
                if isinstance(outcome, BaseException):
                    log.error("study: %s seed %d failed: %s", job.variant, job.seed, outcome)
                    failed.append((job, outcome))
                else:
                    on_result(job, outcome)
    except BaseException:
        for handle in pending:
            with contextlib.suppress(Exception):
                cancel(handle)
        raise
    if failed:
        job, exc = failed[0]
        raise RuntimeError(f"study: {len(failed)} job(s) failed, the first {job.variant} seed {job.seed} "
                           f"({job.workdir}): {exc}") from exc


def _run_pool(jobs: list[Job], arrays: tuple, workers: int, folder: Path, on_result) -> None:
    """Run ``jobs`` in ``workers`` spawned processes; each maps the features itself (the run's feature file,
    or a temporary .npy of an in-memory array), so no worker gets a pickled copy."""
    from lcasc.features import MappedRows

    data = Path(tempfile.mkdtemp(prefix=".features-", dir=folder))

    def wait_some(futures):
        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        return [(fut, fut.exception() or fut.result()) for fut in done]

    try:
        refs = []
        for name, arr in zip(_array_names(), arrays):
            if isinstance(arr, np.ndarray):  # impulse: Copies (file names) or None, handed over as they are
                np.save(data / f"{name}.npy", np.ascontiguousarray(arr))
                arr = MappedRows(str(data / f"{name}.npy"), 0, len(arr))
            refs.append(arr)
        # spawn, not fork: a forked child of a process that already ran torch's OpenMP pool can hang.
        ctx = multiprocessing.get_context("spawn")
        workers = min(workers, len(jobs))
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(tuple(refs),)) as pool:
            _drive(jobs, workers, lambda job: pool.submit(_pool_job, job), wait_some, lambda f: f.cancel(),
                   on_result)
    finally:
        shutil.rmtree(data, ignore_errors=True)


# -- Ray ------------------------------------------------------------------------------------------------
def _import_ray():
    try:
        import ray
    except ImportError:
        from lcasc.run import RunError

        raise RunError('--ray-address needs Ray, which is not installed: pip install "ray[default]" '
                       '(or pip install "lcasc[ray]")') from None
    return ray


def _run_ray(jobs: list[Job], arrays: tuple, address: str, workers: int | None, on_result) -> None:
    """Run ``jobs`` as Ray tasks (one CPU each) on ``address`` ("local" starts a Ray instance here).

    At most ``workers`` tasks are in flight when given, else Ray schedules on every CPU of the cluster.
    The workers must be able to import lcasc and to write the job folders (same machine or shared disk).
    """
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        if address == "local":  # a private instance: no dashboard, workers' output not relayed here
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address)

    def wait_some(refs):
        done, _ = ray.wait(refs, num_returns=1)
        out = []
        for ref in done:
            try:
                out.append((ref, ray.get(ref)))
            except Exception as e:  # a RayTaskError carries the job's own exception and traceback
                out.append((ref, e))
        return out

    try:
        from lcasc.features import opened

        # once, into Ray's shared-memory object store, which every task on a node reads without a copy
        data = [ray.put(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in opened(arrays)]
        task = ray.remote(num_cpus=1)(run_job)
        _drive(jobs, workers or len(jobs), lambda job: task.remote(job, *data), wait_some,
               lambda ref: ray.cancel(ref, force=True), on_result)
    finally:
        if started:
            ray.shutdown()
