"""``lcasc run``: the stages of :mod:`lcasc.stages` in order on one run directory (:class:`lcasc.run.Run`),
and ``--recipe kd``: the paper recipe's run, then the distilled one beside it."""

from __future__ import annotations

import logging
import time

from lcasc import names, recipes
from lcasc.io import write_json
from lcasc.run import Run
from lcasc.stages import baselines, ensemble, evaluate, features, fuse, prune, quantize, report, similarity, train

log = logging.getLogger("lcasc")
# The stages of ``lcasc run`` (lcasc.names.STAGES), in order; each skips what its run directory already holds.
STAGES = dict(zip(names.STAGES, (features.run, train.run, evaluate.run, prune.run, quantize.run, ensemble.run,
                                 similarity.run, fuse.run, baselines.run), strict=True))


def run_all(run: Run, skip: tuple[str, ...] = ()) -> dict:
    """``lcasc run``: features -> train -> evaluate (with complexity) -> prune + fine-tune -> INT8 ->
    ensembles -> feature-map similarity -> fused ensemble -> cheap baselines -> report. ``skip`` names stages
    to leave out (never the first three); stages that need pruned networks are skipped with the prune stage."""
    timings = {}  # seconds this invocation spent per stage (a resumed run skips finished work)
    for stage, stage_run in STAGES.items():
        if stage in skip or (stage in ("similarity", "fuse") and "prune" in skip):
            continue
        if stage == "quantize" and not quantize.int8_available():  # and so the INT8 parts of later stages (fuse)
            quantize.warn_once(f"INT8 skipped: {quantize.INT8_MISSING}")
            run.update_results(int8_skipped=quantize.INT8_MISSING)
            continue
        if stage == "quantize" and "int8_skipped" in run.results():  # an earlier invocation skipped it
            write_json(run.results_path, {k: v for k, v in run.results().items() if k != "int8_skipped"})
        t0 = time.perf_counter()
        stage_run(run)
        timings[stage] = round(time.perf_counter() - t0, 2)
        log.info("stage %s done in %.1f s", stage, timings[stage])
        run.update_results(timings=timings)
    report.run(run)
    return run.results()


def run_kd(paper_run: Run, config, skip: tuple[str, ...] = ()) -> Run:
    """``lcasc run --recipe kd``: the paper recipe in ``DIR`` (reused when done), the kd recipe in ``DIR/kd``,
    then ``DIR/report.md`` with both side by side. Returns the kd Run."""
    run_all(paper_run, skip)
    kd_run = Run(paper_run.dir / recipes.KD_DIR, config, progress=paper_run.progress)
    t0 = time.perf_counter()
    recipes.stage_teacher(kd_run)
    kd_run.update_results(teacher_seconds=round(time.perf_counter() - t0, 2))
    run_all(kd_run, tuple(skip) + ("baselines",))  # baselines do not distil: the paper run has them
    report.run(paper_run)
    return kd_run
