"""Options and helpers that several commands share: dataset and training options, run directories."""

from __future__ import annotations

import argparse

from lcasc import names

DEFAULT_OUT = "runs/default"


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help that shows defaults and keeps the descriptions' line breaks."""


def run_options(p: argparse.ArgumentParser, out_flag: str = "--out") -> None:
    p.add_argument("--dataset", metavar="PATH", help="dataset folder or CSV; default: the embedded ESC-10 folds 1-4")
    p.add_argument("--layout", choices=names.LAYOUTS, help="dataset layout; detected when omitted")
    p.add_argument("--validation", choices=names.TAU22_PROTOCOLS, default="holdout",
                   help="TAU22 protocol: holdout validates on 30 %% of fold1_train (grouped by location, as the "
                        "DCASE 2022 baseline) and tests on fold1_evaluate; evaluate validates on fold1_evaluate, "
                        "which is also the test split (the paper's choice: test numbers are then optimistic)")
    p.add_argument(out_flag, dest="out", metavar="DIR", default=DEFAULT_OUT, help="run directory")
    p.add_argument("--max-epochs", type=int, default=1000, help="training epochs at most (paper: 1000)")
    p.add_argument("--patience", type=int, default=20, help="early stopping: epochs without a lower validation "
                                                             "log-loss")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same machine: same results)")
    p.add_argument("--train-processes", type=int, default=1, metavar="N",
                   help="train data-parallel in N processes of one thread each (0: one per CPU for training sets of "
                        "20,000 segments or more): faster on a CPU, but each normalises batch norm over its share of "
                        "each batch of 64, so results equal one process's in distribution, not in bits; default 1")
    p.add_argument("--widths", default="16-16-32-100", help="C1-C2-C3-dense widths of the CNN")
    p.add_argument("--kernel-size", type=int, default=3, help="convolution kernel size")
    p.add_argument("--activations", default="TRTT", help="activation of C1 C2 C3 dense: T=tanh, R=ReLU")
    p.add_argument("--silence-db", type=float, default=-60.0,
                   help="leave out 1-s segments with RMS below this level (dBFS); pass 'nan' to keep all")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache (default $LCASC_CACHE_DIR or "
                                                      "~/.cache/lcasc/features)")
    g = p.add_argument_group("device impulse responses (CP-JKU's DIR augmentation; off unless a folder is given)")
    g.add_argument("--impulse-responses", metavar="DIR",
                   help="folder of device impulse responses (.wav, e.g. MicIRP): --ir-copies copies of the training "
                        "features are computed once with each training recording convolved with a random one")
    g.add_argument("--ir-p", type=float, default=0.4, help="probability per training example and epoch of training on "
                                                         "a convolved copy")
    g.add_argument("--ir-copies", type=int, default=3, help="convolved copies of the training features (each costs "
                                                            "the features' size on disk)")
    g.add_argument("--ir-devices", nargs="+", metavar="DEVICE", default=[],
                   help="convolve only the training clips of these devices (CP-JKU: a); default: all")


def run_config(args):
    import math
    from pathlib import Path

    from lcasc.impulse import ImpulseConfig
    from lcasc.run import RunConfig
    from lcasc.train import TrainConfig

    return RunConfig(dataset=args.dataset, layout=args.layout, validation=args.validation,
                     silence_db=None if math.isnan(args.silence_db) else args.silence_db,
                     widths=args.widths, kernel_size=args.kernel_size, activations=args.activations,
                     train=TrainConfig(max_epochs=args.max_epochs, patience=args.patience, seed=args.seed,
                                       processes=args.train_processes or None,
                                       **({"augment": augment_config(args, "paper")} if getattr(
                                           args, "recipe", None) == "paper" else {})),
                     cache_dir=args.cache_dir,
                     impulse_responses=ImpulseConfig(
                         str(Path(args.impulse_responses).expanduser().resolve()) if args.impulse_responses else None,
                         args.ir_p, args.ir_copies, args.ir_devices))


def new_run(args):
    from lcasc.run import Run

    return Run(args.out, run_config(args), progress=not args.quiet)


def existing_run(args):
    from lcasc.run import Run

    return Run(args.run, progress=not args.quiet)


def augment_options(p: argparse.ArgumentParser) -> None:
    from lcasc.augment import AugmentConfig

    d, recipes_default = AugmentConfig(), argparse.SUPPRESS  # not given: the recipe decides
    g = p.add_argument_group("augmentation of the log-mel batches (default: none for --recipe paper; for kd "
                             "Freq-MixStyle p=0.4, masks and rolling p=0.5, no mixup)")
    g.add_argument("--mixstyle-p", type=float, default=recipes_default,
                   help="Freq-MixStyle probability per batch (default: the recipe's)")
    g.add_argument("--mixstyle-alpha", type=float, default=d.mixstyle_alpha, help="Freq-MixStyle Beta(a, a)")
    g.add_argument("--mixup-p", type=float, default=recipes_default,
                   help="mixup probability per batch (default: the recipe's)")
    g.add_argument("--mixup-alpha", type=float, default=d.mixup_alpha, help="mixup Beta(a, a)")
    g.add_argument("--freq-mask-p", type=float, default=recipes_default,
                   help="frequency masking probability per example (default: the recipe's)")
    g.add_argument("--freq-mask-bands", type=int, default=d.freq_mask_bands, help="mel bands masked at most")
    g.add_argument("--time-mask-p", type=float, default=recipes_default,
                   help="time masking probability per example (default: the recipe's)")
    g.add_argument("--time-mask-frames", type=int, default=d.time_mask_frames, help="frames masked at most")
    g.add_argument("--roll-p", type=float, default=recipes_default,
                   help="time rolling probability per example (default: the recipe's)")
    g.add_argument("--roll-frames", type=int, default=d.roll_frames, help="frames rolled at most, either way")


def augment_config(args, recipe: str):
    """The recipe's augmentation defaults, with every option the user gave."""
    from dataclasses import replace

    from lcasc.augment import recipe_defaults

    given = {k: getattr(args, k) for k in ("mixstyle_p", "mixstyle_alpha", "mixup_p", "mixup_alpha", "freq_mask_p",
                                           "freq_mask_bands", "time_mask_p", "time_mask_frames", "roll_p",
                                           "roll_frames") if getattr(args, k, None) is not None}
    return replace(recipe_defaults(recipe), **given)


def kd_config(args, paper_config):
    """The kd recipe's training config from the options given (the recipe's defaults for the others)."""
    from lcasc import recipes

    given = vars(args)
    widths = [w for w in given["teacher_widths"] if w != "none"] if "teacher_widths" in given else None
    ensemble = given.get("teacher_ensemble", "prune" not in (args.skip or ()))
    return recipes.kd_config(paper_config, given.get("kd_lambda"), given.get("kd_temperature"),
                             augment_config(args, "kd"), widths, ensemble, given.get("teacher_logits"),
                             given.get("kd_patience"))


def print_summary(run, res: dict) -> None:
    """What ``lcasc run`` prints at the end: the data, every network and ensemble, the report's path."""
    data = res.get("data", {})
    print(f"\nrun directory: {run.dir}")
    print(f"data: {data.get('segments')} segments; {data.get('silent_segments_dropped', 0)} silent segments "
          f"left out; {data.get('skipped_files', 0)} files and {data.get('skipped_rows', 0)} metadata rows skipped")
    for n in res["networks"]:
        cost = (f"params {n['params']:>7,}  MACs {n['macs']:>11,}  {n['size_kb']} KB" if n.get("size_kb") else "")
        print(f"  {n['name']:<20} {n['precision']:<8} {n.get('widths', n['kind']):<14} acc {100 * n['accuracy']:5.1f} %"
              f"  log-loss {n['log_loss']:.3f}  {cost}")
    for e in res["ensembles"]:
        print(f"  {e['name']:<28} {len(e['members'])} members  acc {100 * e['accuracy']:5.1f} %  log-loss "
              f"{e['log_loss']:.3f}  params {e['params']:>7,}  MACs {e['macs']:>11,}")
    print(f"report: {run.dir / 'report.md'}")
