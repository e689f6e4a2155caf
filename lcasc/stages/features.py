"""Log-mel features of every clip of the dataset (computed once, cached) and the data summary."""

from __future__ import annotations

import logging

from lcasc.io import write_json
from lcasc.run import Run

log = logging.getLogger("lcasc")


def run(run: Run) -> dict:
    """Compute (or load) the features; write ``features/summary.json`` and ``data`` of results.json."""
    run.features()
    if run.impulse_copies() is not None:  # computed here, once, so that training finds them ready
        run.data_summary["impulse_responses"] = run.impulse_summary
    write_json(run.dir / "features" / "summary.json", run.data_summary)
    run.update_results(data={k: v for k, v in run.data_summary.items() if k != "problems"})
    s = run.data_summary
    log.info("features: %s segments (train/validate/test), %d silent dropped, %d files and %d rows skipped",
             "/".join(str(v) for v in s["segments"].values()), s["silent_segments_dropped"],
             s["skipped_files"], s["skipped_rows"])
    return run.data_summary
