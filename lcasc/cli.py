"""The ``lcasc`` command line: the whole pipeline (``run``) and its stages one by one."""

from __future__ import annotations

import argparse
import json
import logging
import sys

DEFAULT_OUT = "runs/default"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _run_options(p: argparse.ArgumentParser, out_flag: str = "--out") -> None:
    p.add_argument("--dataset", metavar="PATH", help="dataset folder or CSV; default: the embedded ESC-10 folds 1-4")
    p.add_argument("--layout", choices=["tau22", "folder", "csv"], help="dataset layout; detected when omitted")
    p.add_argument(out_flag, dest="out", metavar="DIR", default=DEFAULT_OUT, help="run directory")
    p.add_argument("--max-epochs", type=int, default=1000, help="training epochs at most (paper: 1000)")
    p.add_argument("--patience", type=int, default=20, help="early stopping: epochs without a lower validation "
                                                             "log-loss")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same machine: same results)")
    p.add_argument("--widths", default="16-16-32-100", help="C1-C2-C3-dense widths of the CNN")
    p.add_argument("--kernel-size", type=int, default=3, help="convolution kernel size")
    p.add_argument("--activations", default="TRTT", help="activation of C1 C2 C3 dense: T=tanh, R=ReLU")
    p.add_argument("--silence-db", type=float, default=-60.0,
                   help="leave out 1-s segments with RMS below this level (dBFS); pass 'nan' to keep all")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache (default $LCASC_CACHE_DIR or "
                                                      "~/.cache/lcasc/features)")


def _config(args):
    import math

    from lcasc.pipeline import RunConfig
    from lcasc.train import TrainConfig

    return RunConfig(dataset=args.dataset, layout=args.layout,
                     silence_db=None if math.isnan(args.silence_db) else args.silence_db,
                     widths=args.widths, kernel_size=args.kernel_size, activations=args.activations,
                     train=TrainConfig(max_epochs=args.max_epochs, patience=args.patience, seed=args.seed),
                     cache_dir=args.cache_dir)


def _new_run(args):
    from lcasc.pipeline import Run

    return Run(args.out, _config(args), progress=not args.quiet)


def _existing_run(args):
    from lcasc.pipeline import Run

    return Run(args.run, progress=not args.quiet)


def cmd_run(args) -> int:
    from lcasc.pipeline import run_all

    run = _new_run(args)
    res = run_all(run)
    _summary(run, res)
    return 0


def _summary(run, res: dict) -> None:
    data = res.get("data", {})
    print(f"\nrun directory: {run.dir}")
    print(f"data: {data.get('segments')} segments; {data.get('silent_segments_dropped', 0)} silent segments "
          f"left out; {data.get('skipped_files', 0)} files and {data.get('skipped_rows', 0)} metadata rows skipped")
    for n in res["networks"]:
        print(f"  {n['name']:<14} {n['precision']:<8} {n.get('widths', ''):<14} acc {100 * n['accuracy']:5.1f} %  "
              f"log-loss {n['log_loss']:.3f}  params {n['params']:>7,}  MACs {n['macs']:>11,}  {n['size_kb']} KB")
    print(f"report: {run.dir / 'report.md'}")


def cmd_features(args) -> int:
    from lcasc.pipeline import stage_features

    summary = stage_features(_new_run(args))
    print(json.dumps({k: v for k, v in summary.items() if k != "problems"}, indent=2))
    return 0


def cmd_train(args) -> int:
    from lcasc.pipeline import stage_train

    run = _existing_run(args)
    stage_train(run)
    print(f"model: {run.model_dir('unpruned') / 'model.pt'}")
    return 0


def cmd_evaluate(args) -> int:
    from lcasc import report
    from lcasc.pipeline import stage_evaluate

    run = _existing_run(args)
    entry = stage_evaluate(run)
    report.write(run)
    print(json.dumps(entry, indent=2))
    return 0


def cmd_report(args) -> int:
    from lcasc import report

    run = _existing_run(args)
    report.write(run)
    print(run.dir / "report.md")
    return 0


def cmd_complexity(args) -> int:
    from lcasc import complexity
    from lcasc.models.cnn import CNNSpec

    specs = [CNNSpec.from_widths(w, kernel_size=args.kernel_size) for w in args.widths]
    members = [complexity.of_spec(s) for s in specs]
    result = members[0] if len(members) == 1 else complexity.total(members)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        for w, m in zip(args.widths, members, strict=True):
            print(f"{w:<16} params {m.params:>8,}  MACs {m.macs:>12,}  size {m.size_kb:>7.2f} KB")
        if len(members) > 1:
            print(f"{'ensemble':<16} params {result.params:>8,}  MACs {result.macs:>12,}  "
                  f"size {result.size_kb:>7.2f} KB")
        print(f"within DCASE limits (128 k params, 30 M MACs): {'yes' if result.within_dcase_limits else 'no'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcasc", formatter_class=_Formatter,
        description="Low-complexity acoustic scene classification: DCASE log-mel features, the paper's "
                    "low-complexity CNN, pruning, INT8 and ensembles within DCASE limits.",
        epilog="Start with `lcasc run` (the whole pipeline on the embedded ESC-10 data), then read "
               "runs/default/report.md.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", formatter_class=_Formatter, help="the whole pipeline into a run directory",
                       description="features -> train -> evaluate -> complexity -> report, into DIR. "
                                   "Rerunning the same command resumes an interrupted run.")
    _run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("features", formatter_class=_Formatter, help="start a run directory and compute features",
                       description="Resolve the configuration into DIR/config.yaml and compute (or reuse from "
                                   "the cache) the log-mel features of every segment.")
    _run_options(p)
    p.set_defaults(func=cmd_features)

    for name, func, text in (("train", cmd_train, "train the unpruned CNN of a run directory"),
                             ("evaluate", cmd_evaluate, "evaluate the trained CNN on the test split"),
                             ("report", cmd_report, "rewrite report.md from results.json")):
        p = sub.add_parser(name, formatter_class=_Formatter, help=text, description=text + ".")
        p.add_argument("--run", required=True, metavar="DIR", help="run directory made by `lcasc features`/`run`")
        p.set_defaults(func=func)

    p = sub.add_parser("complexity", formatter_class=_Formatter, help="parameters, MACs and INT8 size of networks",
                       description="Count parameters, MACs and INT8 size (METHOD-NOTES §4 conventions) of one "
                                   "network, or of an ensemble when --widths is repeated.")
    p.add_argument("--widths", action="append", required=True, metavar="F1-F2-F3-D",
                   help="network widths, e.g. 16-16-32-100; repeat for ensemble members")
    p.add_argument("--kernel-size", type=int, default=3, help="convolution kernel size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_complexity)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="lcasc: %(message)s",
                        stream=sys.stderr)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from lcasc.audio import AudioError
    from lcasc.data import DatasetError
    from lcasc.pipeline import RunError

    try:
        return args.func(args)
    except (AudioError, DatasetError, RunError, FileNotFoundError, ValueError) as e:
        print(f"lcasc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lcasc: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
