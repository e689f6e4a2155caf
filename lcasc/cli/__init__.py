"""The ``lcasc`` command line: the whole pipeline (``run``), its stages one by one (:mod:`lcasc.cli.stages`)
and the tools beside it (:mod:`lcasc.cli.tools`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lcasc._version import __version__
from lcasc.cli import stages, tools
from lcasc.cli.options import Formatter

# Every command, in the order of ``lcasc --help``.
COMMANDS = (stages.add_run, stages.add_features, stages.add_train_evaluate_report, stages.add_prune,
            stages.add_quantize, tools.add_import, tools.add_export, tools.add_study, stages.add_similarity,
            stages.add_fuse, stages.add_ensemble, tools.add_predict, stages.add_baselines, tools.add_complexity)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcasc", formatter_class=Formatter,
        description="Low-complexity acoustic scene classification: DCASE log-mel features, the paper's "
                    "low-complexity CNN, pruning, INT8 and ensembles within DCASE limits.",
        epilog="Start with `lcasc run` (the whole pipeline on the embedded ESC-10 data), then read "
               "runs/default/report.md.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    parser.add_argument("--version", action="version", version=f"lcasc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():  # `lcasc run -q` as well as `lcasc -q run`
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="no progress bars or info messages")
        if "--workers" not in command._option_string_actions:  # study has its own, with the same meaning
            command.add_argument("--workers", type=int, metavar="N",
                                 help="CPUs to use (threads and worker processes); default: what this process "
                                      "may really use (affinity mask and cgroup CPU quota)")
    return parser

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("lcasc: %(message)s"))
    console.setLevel(logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=logging.WARNING, handlers=[console])
    logging.getLogger("lcasc").setLevel(logging.INFO)  # the run directory's lcasc.log keeps info even with -q
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from lcasc.audio import AudioError
    from lcasc.data import DatasetError
    from lcasc.run import RunError
    from lcasc.workers import WORKERS_ENV

    try:
        if getattr(args, "workers", None) is not None:
            if args.workers < 1:
                raise ValueError(f"--workers must be a positive integer, got {args.workers}")
            os.environ[WORKERS_ENV] = str(args.workers)  # worker processes inherit it
        return args.func(args)
    except (AudioError, DatasetError, RunError, FileNotFoundError, ValueError) as e:
        print(f"lcasc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lcasc: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
