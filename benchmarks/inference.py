"""Inference speed of a run's networks in every runtime, and end to end from audio file to scene label.

Model rows (real log-mel of the embedded ESC-10 recordings, the run's default network unless named):
batch throughput in clips/s (one call on many clips) and single-clip latency in ms (median of one-clip
calls) for PyTorch float (as trained, and as ``lcasc predict`` prepares it), ONNX Runtime float and INT8
(QDQ), the INT8 TFLite file in LiteRT (optimised kernels) and in TFLite Micro, and the six-network ensemble.

End to end: ``Predictor.predict_files`` with the default backend of ``lcasc predict`` (decode + resample +
log-mel + network), on one-second clips cut from the ESC-10 recordings and written as TAU 2022 clips are
stored (24-bit WAV, 44.1 kHz), as 16-bit WAV at 48 kHz (resampling), and on the original Ogg Vorbis files.

Run: .venv/bin/python benchmarks/inference.py [--run DIR] [--repeats N]
Without --run it uses runs/default when that is a finished run, else builds runs/benchmark (a short run,
a few minutes). ONNX and INT8 files are exported into the run if missing (needs lcasc[tflite]).
Numbers depend on what else the machine runs: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from lcasc import audio
from lcasc.data import default_dataset
from lcasc.io import read_json
from lcasc.logmel import logmel
from lcasc.workers import cpu_count


def ensure_run(run_dir: Path | None) -> Path:
    """A finished run directory with ONNX and INT8 files for its float networks."""
    from lcasc.cli import main as lcasc_main
    from lcasc.run import Run
    from lcasc.stages.quantize import int8_available
    from lcasc.stages.quantize import run as stage_quantize

    if run_dir is None:
        run_dir = Path("runs/default") if (Path("runs/default") / "results.json").is_file() else Path("runs/benchmark")
    if not (run_dir / "results.json").is_file():
        print(f"building {run_dir} (lcasc run --max-epochs 3 --patience 2) ...", flush=True)
        if lcasc_main(["-q", "run", "--out", str(run_dir), "--max-epochs", "3", "--patience", "2"]) != 0:
            sys.exit(f"could not build {run_dir}")
    floats = [n for n in read_json(run_dir / "results.json")["networks"]
              if n["precision"] == "float32" and n.get("kind", "cnn") == "cnn"]
    missing = [n["name"] for n in floats if not all((run_dir / "models" / n["name"] / f).is_file()
                                                  for f in ("model.onnx", "model_int8.onnx", "model_int8.tflite"))]
    if missing and int8_available():
        print(f"exporting ONNX and INT8 files of {', '.join(missing)} ...", flush=True)
        stage_quantize(Run(run_dir, progress=False), missing)
    return run_dir


def clips(tmp: Path, max_clips: int) -> tuple[list[Path], list[Path], list[Path], np.ndarray]:
    """One-second clips from the embedded ESC-10 test and validation recordings (silent seconds left out):
    (24-bit 44.1 kHz WAVs, 16-bit 48 kHz WAVs, the original Ogg files they came from, (N, 44100) segments)."""
    ds = default_dataset()
    recs = ds.split("test") + ds.split("validate")
    wav44, wav48, oggs, segs = [], [], [], []
    (tmp / "44k").mkdir()
    (tmp / "48k").mkdir()
    for r in recs:
        if len(wav44) >= max_clips:
            break
        oggs.append(r.path)
        for i, s in enumerate(audio.segment(audio.load(r.path))):
            if audio.rms_db(s[None])[0] < -60 or len(wav44) >= max_clips:
                continue
            name = f"{r.path.stem}-{i}.wav"
            sf.write(tmp / "44k" / name, s, 44100, subtype="PCM_24")
            sf.write(tmp / "48k" / name, soxr.resample(s, 44100, 48000), 48000, subtype="PCM_16")
            wav44.append(tmp / "44k" / name)
            wav48.append(tmp / "48k" / name)
            segs.append(s)
    return wav44, wav48, oggs, np.stack(segs)


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` runs of ``fn`` in seconds, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def latency_ms(fn: Callable[[int], object], n: int) -> float:
    """Median milliseconds of ``fn(i)`` over ``n`` calls, after 5 warm-up calls."""
    for i in range(5):
        fn(i)
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def model_rows(run_dir: Path, X: np.ndarray, repeats: int) -> list[tuple[str, float, float]]:
    """(label, clips/s, ms per clip) of every runtime the run has files for."""
    from lcasc import runtimes
    from lcasc.models.cnn import CNNClassifier
    from lcasc.predict import Predictor, _onnx_runner, _TorchCNN

    default = Predictor(run_dir, backend="torch")
    name, classes = default.name, default.classes
    folder = run_dir / "models" / name
    rows: list[tuple[str, Callable[[], object] | None, int]] = [
        (f"PyTorch float, as trained ({name})", lambda: CNNClassifier.load(folder), len(X)),
        ("PyTorch float, as predict runs it (BN folded, channels-last)", lambda: _TorchCNN(folder), len(X)),
        ("ONNX Runtime float (OnnxClassifier defaults)",
         lambda: runtimes.OnnxClassifier(folder / "model.onnx", classes), len(X)),
        ("ONNX Runtime float, idle threads sleep (predict)",
         lambda: _onnx_runner(folder / "model.onnx", classes), len(X)),
        ("ONNX Runtime INT8 (QDQ)", lambda: runtimes.OnnxClassifier(folder / "model_int8.onnx", classes), len(X)),
        ("INT8 TFLite in LiteRT (optimised kernels)",
         lambda: runtimes.LiteRTClassifier(folder / "model_int8.tflite", classes, reference_kernels=False), len(X)),
        ("INT8 TFLite in TFLite Micro", lambda: runtimes.TFLiteMicroClassifier(folder / "model_int8.tflite", classes),
         min(len(X), 256)),
        ("6-network ensemble, PyTorch", lambda: Predictor(run_dir, ensemble="ensemble_all", backend="torch").classifier,
         len(X)),
        ("6-network ensemble, ONNX Runtime (predict default)",
         lambda: Predictor(run_dir, ensemble="ensemble_all").classifier, len(X)),
    ]
    out = []
    for label, make, n in rows:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf = make()
        except Exception as e:  # a runtime or file this run does not have: say so, measure the rest
            print(f"  {label:<62} skipped: {str(e).splitlines()[0]}", flush=True)
            continue
        t = best_time(lambda clf=clf, n=n: clf.predict_proba(X[:n]), repeats)
        ms = latency_ms(lambda i, clf=clf: clf.predict_proba(X[i % len(X):i % len(X) + 1]), 50 if n < len(X) else 200)
        out.append((label, n / t, ms))
        print(f"  {label:<62} {n / t:>9,.0f} clips/s   {ms:7.3f} ms/clip", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="run directory (default: runs/default, else builds runs/benchmark)")
    ap.add_argument("--clips", type=int, default=1200, help="one-second clips to measure on")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (the best counts)")
    args = ap.parse_args()
    run_dir = ensure_run(args.run)

    import onnxruntime
    import torch

    from lcasc.allocator import keep_freed_memory
    from lcasc.predict import Predictor

    keep_freed_memory()  # as predict_files does, so that component timings below see the same allocator
    print(f"\nmachine: {cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min); torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        wav44, wav48, oggs, segs = clips(Path(tmp), args.clips)
        X = logmel(segs)
        print(f"run {run_dir}; {len(segs)} one-second clips of the ESC-10 validation/test recordings\n")

        print("network only: batch throughput, single-clip latency")
        model_rows(run_dir, X, args.repeats)

        p = Predictor(run_dir)  # what `lcasc predict` uses without options
        print(f"\nend to end, `lcasc predict` default backend ({p.backend}, network {p.name}): file -> scene label")
        t = best_time(lambda: [audio.load(f) for f in wav44], args.repeats)
        print(f"  {'decode only, 24-bit WAV 44.1 kHz (1 thread)':<62} {len(wav44) / t:>9,.0f} clips/s")
        t = best_time(lambda: logmel(segs), args.repeats)
        print(f"  {f'log-mel only ({cpu_count()} threads)':<62} {len(segs) / t:>9,.0f} clips/s")
        for label, files, seconds in (("1-s clips, 24-bit WAV 44.1 kHz (TAU 2022 format)", wav44, len(wav44)),
                                      ("1-s clips, 16-bit WAV 48 kHz (resampled)", wav48, len(wav48)),
                                      (f"{len(oggs)} ESC-10 Ogg Vorbis recordings (5 s each)", oggs,
                                       sum(audio.n_segments(sf.info(str(f)).frames) for f in oggs))):
            t = best_time(lambda files=files: list(p.predict_files(files)), args.repeats)
            print(f"  {label:<62} {seconds / t:>9,.0f} clips/s  ({seconds} s of audio in {t:.2f} s)")
        ms = latency_ms(lambda i: p.predict(wav44[i % len(wav44)]), 100)
        print(f"  {'single 1-s WAV file, Predictor.predict':<62} {ms:>9.2f} ms")
        p.close()
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
