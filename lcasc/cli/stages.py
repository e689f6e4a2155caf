"""The commands of the pipeline's stages: ``lcasc run`` (all of them) and one command per stage."""

from __future__ import annotations

import argparse
import json

from lcasc import names
from lcasc.cli.options import Formatter, augment_options, existing_run, kd_config, new_run, print_summary, run_options


def add_run(sub) -> None:
    """`lcasc run`"""
    p = sub.add_parser("run", formatter_class=Formatter, help="the whole pipeline into a run directory",
                       description="features -> train -> evaluate (with complexity) -> prune + fine-tune -> "
                                   "INT8 (TFLite Micro, ONNX) -> ensembles -> baselines (GMM, RF, MLP, DLSI) -> "
                                   "report, into DIR. Rerunning the same command resumes an interrupted run.")
    run_options(p)
    p.add_argument("--skip", nargs="+", choices=names.SKIPPABLE_STAGES,
                   metavar="STAGE", help="stages to leave out: prune, quantize, ensemble, similarity, fuse, baselines")
    p.add_argument("--recipe", choices=names.RECIPES, default="paper",
                   help="paper: cross-entropy, no augmentation (reproduces the paper's tables); kd: the paper "
                        "recipe in DIR, then in DIR/kd teachers, distillation and augmentation for the unpruned "
                        "network and the fine-tuned pruned family, INT8 and ensembles; DIR/report.md compares both")
    g = p.add_argument_group("knowledge distillation (--recipe kd): loss = lambda*CE + (1-lambda)*tau^2*KL")
    g.add_argument("--kd-lambda", type=float, default=argparse.SUPPRESS,
                   help="weight of the label loss (default 0.2)")
    g.add_argument("--kd-temperature", type=float, default=argparse.SUPPRESS,
                   help="temperature tau (default 2)")
    g.add_argument("--kd-patience", type=int, default=argparse.SUPPRESS,
                   help="early-stopping patience of the kd recipe's trainings: teachers, the unpruned network "
                        "and the pruned family's fine-tuning (default 50; --patience is the paper recipe's)")
    g.add_argument("--teacher-widths", nargs="+", metavar="F1-F2-F3-D", default=argparse.SUPPRESS,
                   help="wider CNNs the run trains first as teachers (default 32-32-64-128; 'none' for none)")
    g.add_argument("--teacher-ensemble", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="also distil from the paper recipe's six pruned networks (their ensemble); default: yes "
                        "unless the prune stage is skipped")
    g.add_argument("--teacher-logits", metavar="FILE", default=argparse.SUPPRESS,
                   help="per-segment teacher logits of the training clips: CSV filename,segment,<classes...> or "
                        "NPZ with filename, segment, logits, classes (e.g. a PaSST ensemble's)")
    augment_options(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from lcasc.pipeline import run_all, run_kd

    if args.recipe == "kd":
        paper = new_run(args)
        kd = run_kd(paper, kd_config(args, paper.config), tuple(args.skip or ()))
        print_summary(kd, kd.results())
        print(f"both recipes side by side: {paper.dir / 'report.md'}")
        return 0
    run = new_run(args)
    res = run_all(run, tuple(args.skip or ()))
    print_summary(run, res)
    return 0


def add_features(sub) -> None:
    """`lcasc features`"""
    p = sub.add_parser("features", formatter_class=Formatter, help="start a run directory and compute features",
                       description="Resolve the configuration into DIR/config.yaml and compute (or reuse from "
                                   "the cache) the log-mel features of every segment.")
    run_options(p)
    p.set_defaults(func=cmd_features)


def cmd_features(args) -> int:
    from lcasc.stages import features

    summary = features.run(new_run(args))
    print(json.dumps({k: v for k, v in summary.items() if k != "problems"}, indent=2))
    return 0


def add_train_evaluate_report(sub) -> None:
    """`lcasc train`, `lcasc evaluate`, `lcasc report`: one stage each on an existing run directory."""
    for name, func, text in (("train", cmd_train, "train the unpruned CNN of a run directory"),
                             ("evaluate", cmd_evaluate, "evaluate the trained CNN on the test split"),
                             ("report", cmd_report, "rewrite report.md from results.json")):
        p = sub.add_parser(name, formatter_class=Formatter, help=text, description=text + ".")
        p.add_argument("--run", required=True, metavar="DIR", help="run directory made by `lcasc features`/`run`")
        p.set_defaults(func=func)


def cmd_train(args) -> int:
    from lcasc.stages import train

    run = existing_run(args)
    train.run(run)
    print(f"model: {run.model_dir('unpruned') / 'model.pt'}")
    return 0


def cmd_evaluate(args) -> int:
    from lcasc.stages import evaluate, report

    run = existing_run(args)
    entry = evaluate.run(run)
    report.run(run)
    print(json.dumps(entry, indent=2))
    return 0


def cmd_report(args) -> int:
    from lcasc.stages import report

    run = existing_run(args)
    report.run(run)
    print(run.dir / "report.md")
    return 0


def add_prune(sub) -> None:
    """`lcasc prune`"""
    p = sub.add_parser("prune", formatter_class=Formatter, help="prune the trained CNN and fine-tune the results",
                       description="Find redundant filters of C1, C2, C3 once on the unpruned network (cosine "
                                   "distance between rank-1 filter prototypes, METHOD-NOTES §5), build the smaller "
                                   "networks for each layer combination, fine-tune and evaluate them.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory with a trained unpruned network")
    p.add_argument("--layers", nargs="+", choices=list(names.LAYER_SETS),
                   help="layer combinations to prune (default: all six of paper Table 2)")
    p.add_argument("--criterion", choices=names.CRITERIA, default="similarity",
                   help="which filters go: similar pairs (the paper), or, removing as many per layer, the "
                        "smallest L1 norms or random ones (for comparison)")
    p.add_argument("--max-epochs", type=int, help="fine-tuning epochs at most (default: the run's --max-epochs)")
    p.add_argument("--patience", type=int, help="fine-tuning early-stopping patience (default: the run's)")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args) -> int:
    from lcasc.stages import prune, report

    run = existing_run(args)
    for e in prune.run(run, args.layers, args.criterion, args.max_epochs, args.patience):
        print(f"{e['name']:<24} {e['widths']:<14} removed {sum(len(v) for v in e['removed'].values()):>3}  "
              f"acc {100 * e['before_finetune']['accuracy']:5.1f} -> {100 * e['accuracy']:5.1f} %  "
              f"log-loss {e['before_finetune']['log_loss']:.3f} -> {e['log_loss']:.3f}")
    report.run(run)
    return 0


def add_quantize(sub) -> None:
    """`lcasc quantize`"""
    p = sub.add_parser("quantize", formatter_class=Formatter, help="INT8 files for microcontrollers, evaluated",
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


def cmd_quantize(args) -> int:
    from lcasc.run import RunError
    from lcasc.stages import quantize, report

    if not quantize.int8_available():
        raise RunError(f"INT8 export needs TensorFlow and tflite-micro. {quantize.INT8_MISSING}")
    run = existing_run(args)
    for e in quantize.run(run, args.models, args.calibration_segments):
        print(f"{e['name']:<24} acc {100 * e['float_accuracy']:5.1f} -> {100 * e['accuracy']:5.1f} %  log-loss "
              f"{e['float_log_loss']:.3f} -> {e['log_loss']:.3f}  {e['file_bytes']:>7,} bytes  "
              f"arena {e['arena_bytes']:>7,} bytes  {e['file']}")
    report.run(run)
    return 0


def add_ensemble(sub) -> None:
    """`lcasc ensemble`"""
    p = sub.add_parser("ensemble", formatter_class=Formatter, help="ensembles of the run's networks",
                       description="Equal-weight mean of member probabilities. Default: the six pruned networks "
                                   "and each leave-one-out subset (paper Table 3), for float and INT8 members, "
                                   "plus the subset of all networks with the lowest validation log-loss within "
                                   "the budget.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory")
    p.add_argument("--members", nargs="+", metavar="NAME", help="network names (default: the pruned family)")
    p.add_argument("--budget-params", type=int, default=128_000, help="parameter budget of the subset search")
    p.add_argument("--budget-macs", type=int, default=30_000_000, help="MAC budget of the subset search")
    p.set_defaults(func=cmd_ensemble)


def cmd_ensemble(args) -> int:
    from lcasc.stages import ensemble, report

    run = existing_run(args)
    for e in ensemble.run(run, args.members, args.budget_params, args.budget_macs):
        print(f"{e['name']:<32} {len(e['members'])} members  acc {100 * e['accuracy']:5.1f} %  "
              f"log-loss {e['log_loss']:.3f}  params {e['params']:>7,}  MACs {e['macs']:>11,}  {e['size_kb']} KB")
    report.run(run)
    return 0


def add_similarity(sub) -> None:
    """`lcasc similarity`"""
    p = sub.add_parser("similarity", formatter_class=Formatter, help="feature-map similarity between networks",
                       description="Paper Figure 5: for every pair of the run's networks (unpruned and "
                                   "similarity-pruned), the MSE between corresponding feature maps (same original "
                                   "filter) of a layer, aggregated over validation clips in batches (memory does not "
                                   "grow with --clips); the pairs of maps under --threshold; heat maps and the "
                                   "Figure 5 analogue as PNG. Writes DIR/similarity.json.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory with pruned networks")
    p.add_argument("--layer", nargs="+", choices=names.LAYERS, help="layers (default: all three)")
    p.add_argument("--clips", type=int, default=10_000, help="validation clips at most (default as in the paper)")
    p.add_argument("--threshold", type=float, default=1e-4, help="maps with MSE at most this count as shared")
    p.set_defaults(func=cmd_similarity)


def cmd_similarity(args) -> int:
    from lcasc.stages import report, similarity

    run = existing_run(args)
    summary = similarity.run(run, tuple(args.layer or names.LAYERS), args.clips, args.threshold)
    for layer, res in summary["layers"].items():
        print(f"{layer}: {len(res['shared'])} pairs of maps with MSE <= {args.threshold:g} "
              f"over {summary['n_clips']} clips")
        for a, b, k in res["shared"][:20]:
            print(f"  {a} ~ {b}: map {k}")
    report.run(run)
    return 0


def add_fuse(sub) -> None:
    """`lcasc fuse`"""
    p = sub.add_parser("fuse", formatter_class=Formatter, help="ensemble computing shared feature maps once",
                       description="Build one network from an ensemble of pruned networks that computes each group "
                                   "of shared feature maps (validation MSE <= --threshold, same inputs) once and "
                                   "feeds every member that uses it; otherwise it reproduces every member. Reports "
                                   "its params and MACs (shared work counted once), accuracy next to the unfused "
                                   "ensemble, the trade-off over thresholds (PNG), and exports it to INT8 TFLite.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory with pruned networks")
    p.add_argument("--threshold", type=float, default=1e-4, help="MSE threshold for a map to be shared")
    p.add_argument("--members", nargs="+", metavar="NAME", help="networks (default: the six similarity-pruned)")
    p.set_defaults(func=cmd_fuse)


def cmd_fuse(args) -> int:
    from lcasc.stages import fuse, report

    run = existing_run(args)
    for e in fuse.run(run, args.threshold, args.members):
        print(f"{e['name']:<22} {e['precision']:<8} acc {100 * e['accuracy']:5.1f} %  log-loss {e['log_loss']:.3f}  "
              f"params {e['params']:>7,}  MACs {e['macs']:>11,}  (saves {e['saved']['params']:,} params, "
              f"{e['saved']['macs']:,} MACs)")
    report.run(run)
    return 0


def add_baselines(sub) -> None:
    """`lcasc baselines`"""
    p = sub.add_parser("baselines", formatter_class=Formatter, help="the paper's comparison methods",
                       description="GMM, random forest, MLP, DLSI (time-averaged log-mel) and VGGish (end to end), "
                                   "hyper-parameters chosen on the validation split, evaluated on the test split.")
    p.add_argument("--run", required=True, metavar="DIR", help="run directory")
    p.add_argument("--only", nargs="+", choices=names.BASELINES,
                   help="which baselines (default: gmm rf mlp dlsi; VGGish only on request, it costs ~1 GMAC/s)")
    p.add_argument("--vggish-weights", metavar="PATH",
                   help="state dict of the torchvggish port (.pth) to initialise VGGish's convolutions")
    p.add_argument("--vggish-epochs", type=int, default=30, help="VGGish training epochs at most")
    p.add_argument("--refit", action="store_true", help="fit again baselines that results.json already holds")
    p.set_defaults(func=cmd_baselines)


def cmd_baselines(args) -> int:
    from lcasc.stages import baselines, report

    run = existing_run(args)
    for e in baselines.run(run, args.only, args.vggish_weights, args.vggish_epochs, args.refit):
        print(f"{e['name']:<8} acc {100 * e['accuracy']:5.1f} %  log-loss {e['log_loss']:.3f}  "
              f"best {e['best_params'] or '-'}  ({e['fit_seconds']} s)")
    report.run(run)
    return 0
