"""The commands beside the pipeline: ``import`` (float TFLite / Keras networks), ``export`` (C library),
``study``, ``predict`` and ``complexity``."""

from __future__ import annotations

import json
import sys

from lcasc import names
from lcasc.cli.options import Formatter, existing_run


def add_import(sub) -> None:
    """`lcasc import`"""
    p = sub.add_parser("import", formatter_class=Formatter, help="a float TFLite or Keras network as a run directory",
                       description="Read a float32 .tflite (or Keras .h5/.keras) network of the paper's family -- "
                                   "C1 -> C2 -> avg-pool -> C3 -> avg-pool -> flatten -> dense -> dense, any widths, "
                                   "odd k x k kernels, tanh/ReLU, BatchNorm folded or not, optional final softmax "
                                   "-- such as the networks the paper's authors published, into a run directory "
                                   "whose unpruned network it is. `lcasc evaluate`, `prune`, `quantize`, "
                                   "`ensemble`, `export` and `predict` then take it like a trained one (with "
                                   "--dataset: its class set must be the file's; the outputs are reordered to "
                                   "the dataset's class order). A file that is not of the family is refused "
                                   "with the op that does not fit.")
    p.add_argument("file", metavar="FILE", help="float .tflite, .h5 or .keras file")
    p.add_argument("--classes", default=",".join(names.TAU22_CLASSES), metavar="A,B,...",
                   help="the file's output classes in order, comma-separated (TAU22's by default)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    p.add_argument("--dataset", metavar="PATH", help="the run's dataset (needed to evaluate, prune, quantize); "
                                                     "default: none, only predict works")
    p.add_argument("--layout", choices=names.LAYOUTS, help="dataset layout; detected when omitted")
    p.add_argument("--validation", choices=names.TAU22_PROTOCOLS, default="holdout",
                   help="TAU22 protocol (as `lcasc run --validation`)")
    p.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
    from lcasc.importer import import_network

    if (args.layout or args.validation != "holdout") and not args.dataset:
        print("lcasc: error: --layout and --validation describe a --dataset; give one", file=sys.stderr)
        return 2
    record = import_network(args.file, args.out, [c.strip() for c in args.classes.split(",")], args.dataset,
                            args.layout, args.validation, progress=not args.quiet)
    print(f"imported {record['file']} ({record['widths']}, kernel {record['kernel_size']}, activations "
          f"{record['activations']}, BatchNorm {record['batchnorm']}, {record['flatten']} flatten"
          f"{', softmax dropped: the network outputs logits' if record['softmax'] else ''}) into {args.out}")
    nxt = f"lcasc evaluate --run {args.out}" if args.dataset else f"lcasc predict --run {args.out} AUDIO"
    print(f"next: {nxt}")
    return 0


def add_export(sub) -> None:
    """`lcasc export`"""
    p = sub.add_parser("export", formatter_class=Formatter, help="INT8 network + front end as a C library",
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


def cmd_export(args) -> int:
    from lcasc.mcu.run_export import ExportError, export
    from lcasc.mcu.toolchain import BuildError
    from lcasc.run import Run, RunError
    from lcasc.stages import report

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
    report.run(Run(args.run, progress=False))
    return 0


def add_study(sub) -> None:
    """`lcasc study`"""
    p = sub.add_parser("study", formatter_class=Formatter, help="architecture study: kernel sizes x activations",
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
    p.add_argument("--recipes", nargs="+", choices=names.RECIPES, default=["paper"],
                   help="training recipes to compare; kd distils from the teacher of DIR/kd (made by `lcasc run "
                        "--recipe kd --out DIR`) with its lambda and temperature")
    p.add_argument("--augment", nargs="+", default=["none"], metavar="SETTING",
                   help="augmentation settings to compare: none, kd (the kd recipe's: Freq-MixStyle, masks, "
                        "rolling) or key=value[,key=value] such as mixstyle_p=0.4,mixup_p=0.5")
    p.add_argument("--ir-p", nargs="+", type=float, metavar="P",
                   help="probabilities of training on a device-impulse-response copy to compare, e.g. 0 0.4 "
                        "(the copies of the run's --impulse-responses; default: the run's own setting)")
    p.set_defaults(func=cmd_study)


def cmd_study(args) -> int:
    from lcasc.stages import report
    from lcasc.study import run_study
    from lcasc.study.figures import study_table_markdown

    run = existing_run(args)
    rows = run_study(run, args.kernels, args.activations, args.repeats, args.max_epochs, args.patience,
                     args.workers, args.ray_address, progress=not args.quiet, recipes=args.recipes,
                     augments=args.augment, ir_ps=args.ir_p)
    print(study_table_markdown(rows), end="")
    report.run(run)
    return 0


def add_predict(sub) -> None:
    """`lcasc predict`"""
    p = sub.add_parser("predict", formatter_class=Formatter, help="scene of your own recordings",
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
    p.add_argument("--backend", choices=names.BACKENDS, default="auto",
                   help="torch: the float PyTorch model; onnx: ONNX Runtime on models/NAME/model.onnx; tflite: "
                        "the INT8 file models/NAME/model_int8.tflite in TensorFlow Lite Micro; auto: onnx where "
                        "its file exists and onnxruntime is installed (~4x faster than torch here, same "
                        "probabilities to < 1e-6), else torch (INT8 networks: tflite). ONNX and INT8 files "
                        "come from `lcasc quantize --run DIR`")
    p.add_argument("--format", choices=names.FORMATS, default="table",
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


def cmd_predict(args) -> int:
    from tqdm.auto import tqdm

    from lcasc.allocator import keep_freed_memory
    from lcasc.audio import AudioError
    from lcasc.predict import dataset_files, expand, format_predictions, load

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


def add_complexity(sub) -> None:
    """`lcasc complexity`"""
    p = sub.add_parser("complexity", formatter_class=Formatter, help="parameters, MACs and INT8 size of networks",
                       description="Count parameters, MACs and INT8 size (METHOD-NOTES §4 conventions) of one "
                                   "network, or of an ensemble when --widths is repeated.")
    p.add_argument("--widths", action="append", required=True, metavar="F1-F2-F3-D",
                   help="network widths, e.g. 16-16-32-100; repeat for ensemble members")
    p.add_argument("--kernel-size", type=int, default=3, help="convolution kernel size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_complexity)


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
