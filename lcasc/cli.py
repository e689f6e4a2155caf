"""The ``lcasc`` command line: the whole pipeline (``run``) and its stages one by one."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

DEFAULT_OUT = "runs/default"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _run_options(p: argparse.ArgumentParser, out_flag: str = "--out") -> None:
    p.add_argument("--dataset", metavar="PATH", help="dataset folder or CSV; default: the embedded ESC-10 folds 1-4")
    p.add_argument("--layout", choices=["tau22", "folder", "csv"], help="dataset layout; detected when omitted")
    p.add_argument("--validation", choices=["holdout", "evaluate"], default="holdout",
                   help="TAU22 protocol: holdout validates on 30 %% of fold1_train (grouped by location, as the "
                        "DCASE 2022 baseline) and tests on fold1_evaluate; evaluate validates on fold1_evaluate, "
                        "which is also the test split (the paper's choice: test numbers are then optimistic)")
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

    return RunConfig(dataset=args.dataset, layout=args.layout, validation=args.validation,
                     silence_db=None if math.isnan(args.silence_db) else args.silence_db,
                     widths=args.widths, kernel_size=args.kernel_size, activations=args.activations,
                     train=TrainConfig(max_epochs=args.max_epochs, patience=args.patience, seed=args.seed,
                                       **({"augment": _augment_config(args, "paper")} if getattr(
                                           args, "recipe", None) == "paper" else {})),
                     cache_dir=args.cache_dir)


def _new_run(args):
    from lcasc.pipeline import Run

    return Run(args.out, _config(args), progress=not args.quiet)


def _existing_run(args):
    from lcasc.pipeline import Run

    return Run(args.run, progress=not args.quiet)


def cmd_run(args) -> int:
    from lcasc.pipeline import run_all

    if args.recipe == "kd":
        from lcasc import recipes

        paper = _new_run(args)
        kd = recipes.run_kd(paper, _kd_config(args, paper.config), tuple(args.skip or ()))
        _summary(kd, kd.results())
        print(f"both recipes side by side: {paper.dir / 'report.md'}")
        return 0
    run = _new_run(args)
    res = run_all(run, tuple(args.skip or ()))
    _summary(run, res)
    return 0


def _augment_options(p: argparse.ArgumentParser) -> None:
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


def _augment_config(args, recipe: str):
    """The recipe's augmentation defaults, with every option the user gave."""
    from dataclasses import replace

    from lcasc.augment import recipe_defaults

    given = {k: getattr(args, k) for k in ("mixstyle_p", "mixstyle_alpha", "mixup_p", "mixup_alpha", "freq_mask_p",
                                           "freq_mask_bands", "time_mask_p", "time_mask_frames", "roll_p",
                                           "roll_frames") if getattr(args, k, None) is not None}
    return replace(recipe_defaults(recipe), **given)


def _kd_config(args, paper_config):
    from lcasc.recipes import kd_config

    given = vars(args)
    widths = [w for w in given["teacher_widths"] if w != "none"] if "teacher_widths" in given else None
    ensemble = given.get("teacher_ensemble", "prune" not in (args.skip or ()))
    return kd_config(paper_config, given.get("kd_lambda"), given.get("kd_temperature"), _augment_config(args, "kd"),
                     widths, ensemble, given.get("teacher_logits"))


def _summary(run, res: dict) -> None:
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


def cmd_prune(args) -> int:
    from lcasc import report
    from lcasc.pipeline import stage_prune

    run = _existing_run(args)
    for e in stage_prune(run, args.layers, args.criterion, args.max_epochs, args.patience):
        print(f"{e['name']:<24} {e['widths']:<14} removed {sum(len(v) for v in e['removed'].values()):>3}  "
              f"acc {100 * e['before_finetune']['accuracy']:5.1f} -> {100 * e['accuracy']:5.1f} %  "
              f"log-loss {e['before_finetune']['log_loss']:.3f} -> {e['log_loss']:.3f}")
    report.write(run)
    return 0


def cmd_quantize(args) -> int:
    from lcasc import report
    from lcasc.pipeline import INT8_MISSING, RunError, int8_available, stage_quantize

    if not int8_available():
        raise RunError(f"INT8 export needs TensorFlow and tflite-micro. {INT8_MISSING}")
    run = _existing_run(args)
    for e in stage_quantize(run, args.models, args.calibration_segments):
        print(f"{e['name']:<24} acc {100 * e['float_accuracy']:5.1f} -> {100 * e['accuracy']:5.1f} %  log-loss "
              f"{e['float_log_loss']:.3f} -> {e['log_loss']:.3f}  {e['file_bytes']:>7,} bytes  "
              f"arena {e['arena_bytes']:>7,} bytes  {e['file']}")
    report.write(run)
    return 0


def cmd_export(args) -> int:
    from lcasc import report
    from lcasc.mcu.run_export import ExportError, export
    from lcasc.mcu.toolchain import BuildError
    from lcasc.pipeline import Run, RunError

    try:
        r = export(args.run, args.out, args.model, args.ensemble, args.clips, not args.no_check, not args.quiet)
    except (ExportError, BuildError) as e:
        raise RunError(str(e)) from e
    print(f"bundle: {r['bundle']}  members: {', '.join(r['members'])}")
    if "host_check" in r:
        h = r["host_check"]
        print(f"host gcc: 0 of {h['test_clips']} test clips differ from tflite-micro for every member; front end "
              f"within {h['front_end_max_abs_diff']:.1e} of lcasc's log-mel")
    for f in r.get("cortex_m4", {}).get("footprint", []):
        fl, ram, ins = f["flash_bytes"], f["ram_bytes"], f["instructions"]
        print(f"Cortex-M4 {f['member']}: flash {fl['total']:,} B (model {fl['model']:,}, kernels {fl['kernels']:,}, "
              f"front end {fl['front_end']:,}, C library {fl['c_library']:,}); network RAM {ram['network_total']:,} "
              f"B; instructions: front end {ins['front_end']:,}, network {ins['network']:,} "
              f"({ins['per_mac']} per MAC)")
    report.write(Run(args.run, progress=False))
    return 0


def cmd_study(args) -> int:
    from lcasc import report
    from lcasc.study import run_study, study_table_markdown

    run = _existing_run(args)
    rows = run_study(run, args.kernels, args.activations, args.repeats, args.max_epochs, args.patience,
                     args.workers, args.ray_address, progress=not args.quiet, recipes=args.recipes,
                     augments=args.augment)
    print(study_table_markdown(rows), end="")
    report.write(run)
    return 0


def cmd_similarity(args) -> int:
    from lcasc import report
    from lcasc.pipeline import stage_similarity

    run = _existing_run(args)
    summary = stage_similarity(run, tuple(args.layer or ("C1", "C2", "C3")), args.clips, args.threshold)
    for layer, res in summary["layers"].items():
        print(f"{layer}: {len(res['shared'])} pairs of maps with MSE <= {args.threshold:g} "
              f"over {summary['n_clips']} clips")
        for a, b, k in res["shared"][:20]:
            print(f"  {a} ~ {b}: map {k}")
    report.write(run)
    return 0


def cmd_fuse(args) -> int:
    from lcasc import report
    from lcasc.pipeline import stage_fuse

    run = _existing_run(args)
    for e in stage_fuse(run, args.threshold, args.members):
        print(f"{e['name']:<22} {e['precision']:<8} acc {100 * e['accuracy']:5.1f} %  log-loss {e['log_loss']:.3f}  "
              f"params {e['params']:>7,}  MACs {e['macs']:>11,}  (saves {e['saved']['params']:,} params, "
              f"{e['saved']['macs']:,} MACs)")
    report.write(run)
    return 0


def cmd_ensemble(args) -> int:
    from lcasc import report
    from lcasc.pipeline import stage_ensemble

    run = _existing_run(args)
    for e in stage_ensemble(run, args.members, args.budget_params, args.budget_macs):
        print(f"{e['name']:<32} {len(e['members'])} members  acc {100 * e['accuracy']:5.1f} %  "
              f"log-loss {e['log_loss']:.3f}  params {e['params']:>7,}  MACs {e['macs']:>11,}  {e['size_kb']} KB")
    report.write(run)
    return 0


def cmd_predict(args) -> int:
    from tqdm.auto import tqdm

    from lcasc.audio import AudioError
    from lcasc.predict import dataset_files, expand, format_predictions, keep_freed_memory, load

    if bool(args.files) == bool(args.dataset):
        print("lcasc: error: give audio files/folders or --dataset PATH (one of the two)", file=sys.stderr)
        return 2
    names = {}
    if args.dataset:
        listed = dataset_files(args.dataset)
        files, names = [path for path, _ in listed], {str(path): name for path, name in listed}
    else:
        files = expand(args.files)
    if not files:
        print("lcasc: error: no audio files found in the given paths", file=sys.stderr)
        return 2
    predictor = load(args.run, args.model, args.ensemble, backend=args.backend)
    keep_freed_memory()  # this process only decodes and classifies: let malloc keep freed blocks (faster)
    preds, failed = [], 0
    # Files go through decoding, features and the network in batches (Predictor.predict_files).
    with tqdm(total=len(files), desc="predict", unit="file", disable=args.quiet or len(files) < 20) as bar:
        for result in predictor.predict_files(files, progress=bar):
            if isinstance(result, AudioError):
                failed += 1
                tqdm.write(f"lcasc: skipped: {result}", file=sys.stderr)
            else:
                result.name = names.get(result.name, result.name)  # a dataset's files as its list names them
                preds.append(result)
    if failed and args.format == "dcase" and not args.allow_missing:
        # A challenge submission needs a row for every listed file: refuse rather than hand in a partial one.
        print(f"lcasc: error: {failed} of {len(files)} files could not be read (each listed above); a DCASE "
              f"submission needs a row for every file, so nothing was written. Fix or remove them, or pass "
              f"--allow-missing to write the {len(preds)} rows there are", file=sys.stderr)
        return 1
    text = format_predictions(preds, args.format)
    if args.output:
        from pathlib import Path

        from lcasc.io import atomic_path

        with atomic_path(args.output) as tmp:  # file names that are not valid UTF-8 keep their bytes
            Path(tmp).write_bytes(text.encode("utf-8", errors="surrogateescape"))
    else:
        try:
            try:
                sys.stdout.write(text)
            except UnicodeEncodeError:  # a terminal that cannot show some file name: escape, do not fail
                enc = sys.stdout.encoding or "utf-8"
                sys.stdout.write(text.encode(enc, errors="backslashreplace").decode(enc))
            sys.stdout.flush()
        except BrokenPipeError:  # `lcasc predict ... | head`: the reader has what it wanted
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if failed:
        print(f"lcasc: {failed} of {len(files)} files could not be read" +
              (f"; the output lacks their rows (--allow-missing): {len(preds)} rows written" if args.format == "dcase"
               else ""),
              file=sys.stderr)
    return 0 if preds else 2


def cmd_baselines(args) -> int:
    from lcasc import report
    from lcasc.pipeline import stage_baselines

    run = _existing_run(args)
    for e in stage_baselines(run, args.only, args.vggish_weights, args.vggish_epochs, args.refit):
        print(f"{e['name']:<8} acc {100 * e['accuracy']:5.1f} %  log-loss {e['log_loss']:.3f}  "
              f"best {e['best_params'] or '-'}  ({e['fit_seconds']} s)")
    report.write(run)
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
    from lcasc import __version__

    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    parser.add_argument("--version", action="version", version=f"lcasc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", formatter_class=_Formatter, help="the whole pipeline into a run directory",
                       description="features -> train -> evaluate (with complexity) -> prune + fine-tune -> "
                                   "INT8 (TFLite Micro, ONNX) -> ensembles -> baselines (GMM, RF, MLP, DLSI) -> "
                                   "report, into DIR. Rerunning the same command resumes an interrupted run.")
    _run_options(p)
    p.add_argument("--skip", nargs="+", choices=["prune", "quantize", "ensemble", "similarity", "fuse", "baselines"],
                   metavar="STAGE", help="stages to leave out: prune, quantize, ensemble, similarity, fuse, baselines")
    p.add_argument("--recipe", choices=["paper", "kd"], default="paper",
                   help="paper: cross-entropy, no augmentation (reproduces the paper's tables); kd: the paper "
                        "recipe in DIR, then in DIR/kd teachers, distillation and augmentation for the unpruned "
                        "network and the fine-tuned pruned family, INT8 and ensembles; DIR/report.md compares both")
    g = p.add_argument_group("knowledge distillation (--recipe kd): loss = lambda*CE + (1-lambda)*tau^2*KL")
    g.add_argument("--kd-lambda", type=float, default=argparse.SUPPRESS,
                   help="weight of the label loss (default 0.2)")
    g.add_argument("--kd-temperature", type=float, default=argparse.SUPPRESS,
                   help="temperature tau (default 2)")
    g.add_argument("--teacher-widths", nargs="+", metavar="F1-F2-F3-D", default=argparse.SUPPRESS,
                   help="wider CNNs the run trains first as teachers (default 32-32-64-128; 'none' for none)")
    g.add_argument("--teacher-ensemble", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="also distil from the paper recipe's six pruned networks (their ensemble); default: yes "
                        "unless the prune stage is skipped")
    g.add_argument("--teacher-logits", metavar="FILE", default=argparse.SUPPRESS,
                   help="per-segment teacher logits of the training clips: CSV filename,segment,<classes...> or "
                        "NPZ with filename, segment, logits, classes (e.g. a PaSST ensemble's)")
    _augment_options(p)
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

    p = sub.add_parser("prune", formatter_class=_Formatter, help="prune the trained CNN and fine-tune the results",
                       description="Find redundant filters of C1, C2, C3 once on the unpruned network (cosine "
                                   "distance between rank-1 filter prototypes, METHOD-NOTES §5), build the smaller "
                                   "networks for each layer combination, fine-tune and evaluate them.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory with a trained unpruned network")
    p.add_argument("--layers", nargs="+", choices=["C1", "C2", "C3", "C12", "C23", "C123"],
                   help="layer combinations to prune (default: all six of paper Table 2)")
    p.add_argument("--criterion", choices=["similarity", "l1", "random"], default="similarity",
                   help="which filters go: similar pairs (the paper), or, removing as many per layer, the "
                        "smallest L1 norms or random ones (for comparison)")
    p.add_argument("--max-epochs", type=int, help="fine-tuning epochs at most (default: the run's --max-epochs)")
    p.add_argument("--patience", type=int, help="fine-tuning early-stopping patience (default: the run's)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("quantize", formatter_class=_Formatter, help="INT8 files for microcontrollers, evaluated",
                       description="Post-training full-integer quantization (int8 weights per channel, int8 "
                                   "activations calibrated on real training features) of every float network into "
                                   "models/<name>/model_int8.tflite, which TensorFlow Lite Micro runs; plus ONNX "
                                   "float and INT8 (QDQ) files. Each INT8 file is evaluated by running it in "
                                   "tflite-micro; its arena (RAM) bytes are measured.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory with trained networks")
    p.add_argument("--models", nargs="+", metavar="NAME", help="network names (default: every float network)")
    p.add_argument("--calibration-segments", type=int, default=500,
                   help="training segments (random, seeded) that calibrate the activation ranges")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("export", formatter_class=_Formatter, help="INT8 network + front end as a C library",
                       description="Write a self-contained C99 bundle (no heap, no OS) of an INT8 network or "
                                   "ensemble and the log-mel front end, for microcontrollers. Unless --no-check: "
                                   "host gcc build compared with tflite-micro on every test clip (0 mismatches "
                                   "required) and with lcasc's front end; with arm-none-eabi-gcc and "
                                   "qemu-system-arm, a Cortex-M4 image run in QEMU (mps2-an386) on --clips real "
                                   "clips, its outputs compared with the host's, and flash, RAM and "
                                   "instructions measured into results.json.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory with INT8 files")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="NAME", help="network name (default: unpruned)")
    which.add_argument("--ensemble", metavar="NAME", help="ensemble name from results.json (members in turn, "
                                                          "probabilities averaged)")
    p.add_argument("--format", choices=["c"], default="c", help="bundle format")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder (replaced as a whole)")
    p.add_argument("--clips", type=int, default=5, help="real test clips compiled into the Cortex-M4 check")
    p.add_argument("--no-check", action="store_true", help="write the bundle only, build and measure nothing")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("study", formatter_class=_Formatter, help="architecture study: kernel sizes x activations",
                       description="Paper Figures 1 and 2: train every (kernel size, activation pattern) variant "
                                   "`--repeats` times with seeds seed..seed+repeats-1, report mean and std of "
                                   "accuracy and log-loss with params and MACs, as a table and two PNG figures. "
                                   "Jobs run in parallel on the local cores, or on a Ray cluster with "
                                   "--ray-address; the numbers are the same either way. A killed study resumes.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory (its features and widths are used)")
    p.add_argument("--kernels", nargs="+", type=int, default=[1, 3, 5, 7], help="kernel sizes (odd)")
    p.add_argument("--activations", nargs="+", default=["TTTT", "RRRR", "TRTT"],
                   help="activation patterns of C1 C2 C3 dense: T=tanh, R=ReLU")
    p.add_argument("--repeats", type=int, default=5, help="trainings per variant (different seeds)")
    p.add_argument("--max-epochs", type=int, help="override the run's maximum epochs")
    p.add_argument("--patience", type=int, help="override the run's early-stopping patience")
    p.add_argument("--workers", type=int, help="parallel jobs (default: every local core)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="run the jobs as Ray tasks: 'local' starts a local Ray instance, 'auto' or "
                        "'ray://host:10001' joins a cluster (workers need lcasc and the run directory)")
    p.add_argument("--recipes", nargs="+", choices=["paper", "kd"], default=["paper"],
                   help="training recipes to compare; kd distils from the teacher of DIR/kd (made by `lcasc run "
                        "--recipe kd --out DIR`) with its lambda and temperature")
    p.add_argument("--augment", nargs="+", default=["none"], metavar="SETTING",
                   help="augmentation settings to compare: none, kd (the kd recipe's: Freq-MixStyle, masks, "
                        "rolling) or key=value[,key=value] such as mixstyle_p=0.4,mixup_p=0.5")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("similarity", formatter_class=_Formatter, help="feature-map similarity between networks",
                       description="Paper Figure 5: for every pair of the run's networks (unpruned and "
                                   "similarity-pruned), the MSE between corresponding feature maps (same original "
                                   "filter) of a layer, aggregated over validation clips in batches (memory does not "
                                   "grow with --clips); the pairs of maps under --threshold; heat maps and the "
                                   "Figure 5 analogue as PNG. Writes DIR/similarity.json.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory with pruned networks")
    p.add_argument("--layer", nargs="+", choices=["C1", "C2", "C3"], help="layers (default: all three)")
    p.add_argument("--clips", type=int, default=10_000, help="validation clips at most (default as in the paper)")
    p.add_argument("--threshold", type=float, default=1e-4, help="maps with MSE at most this count as shared")
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("fuse", formatter_class=_Formatter, help="ensemble computing shared feature maps once",
                       description="Build one network from an ensemble of pruned networks that computes each group "
                                   "of shared feature maps (validation MSE <= --threshold, same inputs) once and "
                                   "feeds every member that uses it; otherwise it reproduces every member. Reports "
                                   "its params and MACs (shared work counted once), accuracy next to the unfused "
                                   "ensemble, the trade-off over thresholds (PNG), and exports it to INT8 TFLite.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory with pruned networks")
    p.add_argument("--threshold", type=float, default=1e-4, help="MSE threshold for a map to be shared")
    p.add_argument("--members", nargs="+", metavar="NAME", help="networks (default: the six similarity-pruned)")
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("ensemble", formatter_class=_Formatter, help="ensembles of the run's networks",
                       description="Equal-weight mean of member probabilities. Default: the six pruned networks "
                                   "and each leave-one-out subset (paper Table 3), for float and INT8 members, "
                                   "plus the subset of all networks with the lowest validation log-loss within "
                                   "the budget.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory")
    p.add_argument("--members", nargs="+", metavar="NAME", help="network names (default: the pruned family)")
    p.add_argument("--budget-params", type=int, default=128_000, help="parameter budget of the subset search")
    p.add_argument("--budget-macs", type=int, default=30_000_000, help="MAC budget of the subset search")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("predict", formatter_class=_Formatter, help="scene of your own recordings",
                       description="Per-second scene probabilities and a scene per file, for audio files or "
                                   "folders of them (any length, rate, channels; WAV, FLAC, Ogg, MP3).")
    p.add_argument("files", nargs="*", metavar="AUDIO", help="audio files or folders")
    p.add_argument("--dataset", metavar="PATH",
                   help="instead of files: a dataset's test recordings, named as its list names them (a TAU-style "
                        "folder's evaluation_setup/fold1_test.csv, e.g. the DCASE evaluation set, or the test split "
                        "of any layout lcasc reads); with --format dcase this is a challenge submission file")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="NAME", help="any name of the run's results.json: network, INT8 "
                                                         "network (NAME_int8), baseline (gmm, rf, mlp, dlsi, "
                                                         "vggish) or ensemble (default: the network with the "
                                                         "lowest validation log-loss)")
    which.add_argument("--ensemble", metavar="NAME", help="ensemble name from results.json; ensemble_fused runs the "
                                                          "fused module, ensemble_fused_int8 its INT8 file, *_int8 "
                                                          "ensembles their INT8 members")
    p.add_argument("--backend", choices=["auto", "torch", "onnx", "tflite"], default="auto",
                   help="torch: the float PyTorch model; onnx: ONNX Runtime on models/NAME/model.onnx; tflite: "
                        "the INT8 file models/NAME/model_int8.tflite in TensorFlow Lite Micro; auto: onnx where "
                        "its file exists and onnxruntime is installed (~4x faster than torch here, same "
                        "probabilities to < 1e-6), else torch (INT8 networks: tflite). ONNX and INT8 files "
                        "come from `lcasc quantize --run DIR`")
    p.add_argument("--format", choices=["table", "json", "csv", "dcase"], default="table",
                   help="table: scene per file; json: scene, probabilities and per-second probabilities; csv: "
                        "one row per second; dcase: tab-separated filename, scene_label, one probability column "
                        "per class (the DCASE 2022 Task 1 output file); a file that cannot be read is an error "
                        "(exit 1, nothing written) unless --allow-missing")
    p.add_argument("--allow-missing", action="store_true",
                   help="with --format dcase: write the rows of the files that could be read even when others "
                        "could not (says how many are missing); other formats always skip unreadable files")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output (written "
                                                          "under a temporary name and renamed when complete)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("baselines", formatter_class=_Formatter, help="the paper's comparison methods",
                       description="GMM, random forest, MLP, DLSI (time-averaged log-mel) and VGGish (end to end), "
                                   "hyper-parameters chosen on the validation split, evaluated on the test split.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory")
    p.add_argument("--only", nargs="+", choices=["gmm", "rf", "mlp", "dlsi", "vggish"],
                   help="which baselines (default: gmm rf mlp dlsi; VGGish only on request, it costs ~1 GMAC/s)")
    p.add_argument("--vggish-weights", metavar="PATH",
                   help="state dict of the torchvggish port (.pth) to initialise VGGish's convolutions")
    p.add_argument("--vggish-epochs", type=int, default=30, help="VGGish training epochs at most")
    p.add_argument("--refit", action="store_true", help="fit again baselines that results.json already holds")
    p.set_defaults(func=cmd_baselines)

    p = sub.add_parser("complexity", formatter_class=_Formatter, help="parameters, MACs and INT8 size of networks",
                       description="Count parameters, MACs and INT8 size (METHOD-NOTES §4 conventions) of one "
                                   "network, or of an ensemble when --widths is repeated.")
    p.add_argument("--widths", action="append", required=True, metavar="F1-F2-F3-D",
                   help="network widths, e.g. 16-16-32-100; repeat for ensemble members")
    p.add_argument("--kernel-size", type=int, default=3, help="convolution kernel size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_complexity)
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
    from lcasc.pipeline import RunError
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


if __name__ == "__main__":
    sys.exit(main())
