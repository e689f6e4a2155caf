"""Scene predictions for users' own recordings, from a run directory.

    import lcasc
    p = lcasc.load("runs/default")                  # the best network of the run, or model=/ensemble=
    result = p.predict("street.flac")               # any length, rate, channel count, common format
    result.scene, result.probabilities, result.per_second
    for r in p.predict_files(paths): ...            # many files: batched decoding, features and inference

Each 1-second segment gets class probabilities; a file's scene is the argmax of their mean.

Backends (``backend=``; ``lcasc predict --backend``), per network of a model or ensemble:

- ``torch``: the float PyTorch model ``models/<name>/model.pt`` (BatchNorm folded into the convolutions,
  channels-last, inference mode).
- ``onnx``: ONNX Runtime on ``models/<name>/model.onnx`` (float; ``model_int8.onnx``, QDQ, for an INT8
  network).
- ``tflite``: ``models/<name>/model_int8.tflite`` in TensorFlow Lite Micro, as on a microcontroller.
- ``auto`` (default): ``onnx`` where the ONNX file exists (and is newer than ``model.pt``) and ONNX Runtime
  is installed, else ``torch``; INT8 networks (``<name>_int8`` in results.json) run their TFLite file in
  TFLM. ONNX Runtime runs this small CNN ~4x faster than PyTorch on CPU (benchmarks/inference.py) and
  agrees with it to < 1e-6 in probability.

ONNX and INT8 files come from ``lcasc quantize --run DIR``.

Any name of results.json runs as the run evaluated it (:func:`lcasc.registry.resolve`): networks, INT8
networks, baselines, ensembles (INT8 ones on their INT8 members), ``ensemble_fused`` (the fused module) and
``ensemble_fused_int8`` (its own INT8 file).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from lcasc import audio
from lcasc.logmel import FeatureParams, logmel
from lcasc.names import BACKENDS, FORMATS
from lcasc.registry import PredictError, network_entries, read_results, resolve
from lcasc.workers import cpu_count

log = logging.getLogger("lcasc")
SILENCE_DB = -60.0  # runs whose config.yaml predates silence_db left out segments below this level
FILES_PER_GROUP = 8  # files decoded and featurised by one worker task in predict_files
FILES_PER_BATCH = 256  # files whose segments the network classifies in one call ...
SEGMENTS_PER_BATCH = 2048  # ... or fewer when they hold more segments than this


@dataclass
class Prediction:
    """Scene probabilities of one recording.

    ``per_second`` (n_segments, n_classes) float32: one row per 1-second segment (a last partial second of
    >= 0.5 s is zero-padded, a shorter tail dropped; a recording under 1 s gives one padded segment).
    ``probabilities`` (n_classes,) float32: their mean. ``duration`` in seconds of audio as decoded.
    ``silent``: every segment is below the run's silence level (``silence_db``, -60 dBFS RMS by default), so
    the scene is a guess (such segments were left out of training).
    """

    name: str
    classes: list[str]
    per_second: np.ndarray
    probabilities: np.ndarray
    duration: float = float("nan")
    silent: bool = False

    @property
    def scene(self) -> str:
        return self.classes[int(np.argmax(self.probabilities))]


def _front_end(config_path: Path) -> tuple[FeatureParams, float | None]:
    """The run's feature parameters (``features:`` of config.yaml; defaults where it says nothing) and its
    silence level (``silence_db``: segments below it were left out of training; None: none were)."""
    try:
        config = (yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}) or {}
        features = config.get("features") or {}
        params = FeatureParams(**{k: v for k, v in features.items() if k in FeatureParams.__dataclass_fields__})
        silence_db = config.get("silence_db", SILENCE_DB)
        return params, None if silence_db is None else float(silence_db)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError, TypeError, ValueError) as e:
        raise PredictError(f"{config_path}: cannot read its feature settings ({e})") from None


def _chosen_name(run_dir: Path, results: dict, model: str | None, ensemble: str | None) -> str:
    """The results.json name of what was asked: ``ensemble`` (an ensemble), ``model`` (a network or a
    baseline, or any ensemble name), or by default the float CNN with the lowest validation log-loss."""
    nets = network_entries(results)
    ensembles = [e["name"] for e in results.get("ensembles", [])]
    if ensemble is not None:
        if ensemble not in ensembles:
            raise PredictError(f"{run_dir}: no ensemble named {ensemble!r} (known: {', '.join(ensembles) or 'none'})")
        return ensemble
    if model is None:
        floats = [n for n in nets.values() if n.get("precision") == "float32" and n.get("kind", "cnn") == "cnn"]
        if not floats:
            raise PredictError(f"{run_dir}: no trained network in results.json")
        return min(floats, key=lambda n: (n.get("validation") or {}).get("log_loss", math.inf))["name"]
    if model not in nets and model not in ensembles:
        raise PredictError(f"{run_dir}: no network named {model!r} (known: {', '.join(nets) or 'none'}; "
                           f"ensembles: {', '.join(ensembles) or 'none'})")
    return model


# ----------------------------------------------------------------------------------------------------------
# the predictor


@dataclass
class _Decoded:
    segments: np.ndarray  # (n_segments, 44100) float32
    duration: float  # seconds
    name: str
    silent: bool


class Predictor:
    """A trained classifier of a run directory with the feature pipeline in front of it.

    ``model``: any name of results.json (network, INT8 network, baseline, or an ensemble); ``ensemble``: an
    ensemble name (each member runs through ``backend``; the fused ones run their fused module or INT8
    file); neither: the float network with the lowest validation log-loss. Either way it computes what the
    run's evaluation of that name computed (:mod:`lcasc.registry`). ``backend``: see the module docstring;
    :attr:`backend` tells which one runs (``"onnx+tflite"`` style when members differ).
    """

    def __init__(self, run_dir: str | Path, model: str | None = None, ensemble: str | None = None,
                 backend: str = "auto"):
        self._pool: ThreadPoolExecutor | None = None
        if model is not None and ensemble is not None:
            raise PredictError("pass a model or an ensemble, not both")
        if backend not in BACKENDS:
            raise PredictError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        self.run_dir = Path(run_dir)
        results = read_results(self.run_dir)
        self.classes = list(results.get("classes") or [])
        name = _chosen_name(self.run_dir, results, model, ensemble)
        if not self.classes:
            raise PredictError(f"{self.run_dir / 'results.json'}: no class list")
        runnable = resolve(self.run_dir, name, backend, results)  # what the run's evaluation of `name` ran
        self.name, self.members, self.backend = runnable.name, runnable.members, runnable.backend
        self.classifier = runnable.classifier
        self.params, self.silence_db = _front_end(self.run_dir / "config.yaml")

    # -- one recording ------------------------------------------------------------------------------------

    def _waveform(self, source, sample_rate) -> tuple[np.ndarray, str]:
        """(samples,) float32 mono at 44.1 kHz and the name to report, from a path or an array."""
        rate = self.params.sample_rate
        if isinstance(source, (str, Path)):
            return audio.load(source, rate), str(source)
        if sample_rate is None:
            raise ValueError("pass sample_rate (Hz) with an array")
        return audio.to_mono_44k(source, sample_rate, target_rate=rate), "<array>"

    def _decode(self, source, sample_rate=None) -> _Decoded:
        """Segments of a path or an array; raises :class:`lcasc.audio.AudioError`."""
        x, name = self._waveform(source, sample_rate)
        rate = self.params.sample_rate
        segments = audio.segment(x, self.params.min_last_segment, rate)
        # Mean power per segment against the run's silence level; float32 sums are plenty for a threshold test.
        power = np.einsum("ij,ij->i", segments, segments) / segments.shape[1]
        silent = self.silence_db is not None and bool(np.all(power < 10 ** (self.silence_db / 10)))
        return _Decoded(segments, x.size / rate, name, silent)

    def _finish(self, d: _Decoded, probs: np.ndarray) -> Prediction:
        return Prediction(d.name, self.classes, probs.astype(np.float32, copy=False),
                          probs.mean(axis=0).astype(np.float32), d.duration, d.silent)

    def predict(self, source: str | Path | np.ndarray, sample_rate: float | None = None) -> Prediction:
        """A file path, or a (samples,) / (samples, channels) array with its ``sample_rate`` in Hz.

        Raises :class:`lcasc.audio.AudioError` (naming the file) for audio that cannot be used.
        """
        d = self._decode(source, sample_rate)
        return self._finish(d, self.classifier.predict_proba(logmel(d.segments, self.params)))

    # -- many recordings ----------------------------------------------------------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        # Decoding is libsndfile/soxr (the GIL released), so threads decode files in parallel.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=cpu_count(), thread_name_prefix="lcasc-decode")
        return self._pool

    def _featurise_group(self, paths: list) -> tuple[list[_Decoded | audio.AudioError], np.ndarray]:
        """Decode ``paths`` and compute the log-mel of all their segments, in the calling (worker) thread:
        (per path a :class:`_Decoded` or the :class:`lcasc.audio.AudioError`, (n_segments, 40, 51) float32)."""
        items: list[_Decoded | audio.AudioError] = []
        for path in paths:
            try:
                items.append(self._decode(path))
            except audio.AudioError as e:
                items.append(e)
        segments = [d.segments for d in items if isinstance(d, _Decoded)]
        n_frames = 1 + int(self.params.sample_rate * audio.SEGMENT_SECONDS) // self.params.hop_length
        features = (logmel(np.concatenate(segments), self.params, workers=1) if segments
                    else np.zeros((0, self.params.n_mels, n_frames), np.float32))
        return items, features

    def predict_files(self, paths: Iterable[str | Path], progress=None) -> Iterator[Prediction | audio.AudioError]:
        """One :class:`Prediction` or :class:`lcasc.audio.AudioError` per path, in order.

        Groups of :data:`FILES_PER_GROUP` files are decoded and turned into log-mel by worker threads (one
        per CPU; libsndfile, soxr, numpy and pocketfft release the GIL), a few groups ahead of the network,
        which classifies the segments of up to :data:`FILES_PER_BATCH` files (at most
        :data:`SEGMENTS_PER_BATCH` segments) per call. ``progress``: an object with ``update(n)`` (e.g.
        tqdm), told of every finished file.
        """
        pool = self._executor()
        paths = list(paths)
        groups = [paths[i:i + FILES_PER_GROUP] for i in range(0, len(paths), FILES_PER_GROUP)]
        ahead = max(2, 2 * cpu_count())  # groups in flight: enough to keep every worker busy
        futures: deque[Future] = deque(pool.submit(self._featurise_group, g) for g in groups[:ahead])
        next_group = len(futures)
        while futures:
            items: list[_Decoded | audio.AudioError] = []
            features = []
            while futures and len(items) < FILES_PER_BATCH and sum(map(len, features)) < SEGMENTS_PER_BATCH:
                group_items, group_features = futures.popleft().result()
                items += group_items
                features.append(group_features)
                if next_group < len(groups):
                    futures.append(pool.submit(self._featurise_group, groups[next_group]))
                    next_group += 1
            X = np.concatenate(features)
            probs = self.classifier.predict_proba(X) if len(X) else None
            start = 0
            for item in items:
                if isinstance(item, audio.AudioError):
                    yield item
                else:
                    yield self._finish(item, probs[start:start + len(item.segments)])
                    start += len(item.segments)
                if progress is not None:
                    progress.update(1)

    def close(self) -> None:
        """Stop the decoding threads (they also stop when the predictor is garbage-collected)."""
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __del__(self):
        self.close()


def load(run_dir: str | Path, model: str | None = None, ensemble: str | None = None,
         backend: str = "auto") -> Predictor:
    """The Python entry point: ``lcasc.load(DIR).predict(path_or_array, sample_rate)``; ``lcasc.load(DIR, NAME)``
    runs any entry of the run's results.json by name."""
    return Predictor(run_dir, model, ensemble, backend)


# ----------------------------------------------------------------------------------------------------------
# inputs and outputs


def dataset_files(path: str | Path) -> list[tuple[Path, str]]:
    """(audio file, name as the dataset lists it) of the recordings to predict in a dataset: the rows of
    ``evaluation_setup/fold1_test.csv`` of a TAU-style folder (the challenge's evaluation set has only that
    list, without labels), otherwise the test split of any layout :func:`lcasc.data.load_dataset` reads."""
    from lcasc.data import load_dataset
    from lcasc.data.datasets import _read_table

    root = Path(path)
    test_list = root / "evaluation_setup" / "fold1_test.csv"
    if root.is_dir() and test_list.is_file():
        return [(root / row["filename"], row["filename"]) for row in _read_table(test_list, ["filename"], "\t")]
    return [(r.path, r.name) for r in load_dataset(root).split("test")]


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders replaced by every audio file under them (sorted, hidden files left out).

    A path that does not exist stays in the list (predicting it reports the problem); an empty folder is
    reported with a warning.
    """
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in audio.AUDIO_EXTENSIONS and f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                log.warning("%s: no audio files (%s) in this folder", p, ", ".join(sorted(audio.AUDIO_EXTENSIONS)))
            out += found
        else:
            out.append(p)
    return out


def _fmt(v: float) -> str:
    return f"{v:.6f}" if math.isfinite(v) else "nan"


def format_predictions(preds: list[Prediction], fmt: str) -> str:
    """Text of ``preds`` in ``fmt``: ``table`` (one line per file), ``json`` (scene, probabilities and the
    per-second probabilities of each file), ``csv`` (one row per second), ``dcase`` (DCASE Task 1 output:
    tab-separated filename, scene_label, one probability column per class)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not preds:
        return ""
    classes = preds[0].classes
    if fmt == "json":
        return json.dumps([{"filename": p.name, "scene_label": p.scene,
                            "duration_s": round(p.duration, 3) if math.isfinite(p.duration) else None,
                            "silent": p.silent,
                            "probabilities": dict(zip(classes, map(float, p.probabilities), strict=True)),
                            "per_second": [dict(zip(classes, map(float, row), strict=True)) for row in p.per_second]}
                           for p in preds], indent=2, ensure_ascii=False) + "\n"
    buf = io.StringIO()
    if fmt == "dcase":
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(["filename", "scene_label", *classes])
        w.writerows([p.name, p.scene, *map(_fmt, p.probabilities)] for p in preds)
    elif fmt == "csv":
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["filename", "second", "scene_label", *classes])
        for p in preds:
            for i, row in enumerate(p.per_second):
                w.writerow([p.name, i, classes[int(row.argmax())], *map(_fmt, row)])
    else:
        width = max(len(p.name) for p in preds)
        for p in preds:
            buf.write(f"{p.name:<{width}}  {p.scene:<20} {100 * p.probabilities.max():5.1f} %  "
                      f"({len(p.per_second)} s{', silent' if p.silent else ''})\n")
    return buf.getvalue()
