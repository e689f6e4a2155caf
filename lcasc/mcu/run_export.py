"""``lcasc export --format c`` for a run: pick the INT8 file(s), write the bundle, prove it and measure it.

Steps (each logged): resolve ``--model``/``--ensemble`` to ``models/<name>/model_int8.tflite`` files; cut
``clips`` real 1-second clips from the run's test recordings (int16 PCM); write the bundle
(:func:`lcasc.mcu.export_c.write_bundle`). With ``check`` (the default) and a host C compiler: build it and
compare, on every test-split clip, its int8 logits with the ``.tflite`` file's in tflite-micro (the count of
differing clips must be 0) and its front end with lcasc's log-mel on the clips. With the Arm toolchain and
QEMU: build the Cortex-M4 image, run it, compare its outputs with the host build's, and measure flash, RAM
and instructions (:func:`lcasc.mcu.toolchain.footprint`). The numbers go into ``results.json`` under
``"mcu"`` of the exported network or ensemble and into ``<out>/measurements.json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lcasc.io import write_json
from lcasc.mcu import toolchain
from lcasc.mcu.export_c import Member, members_from_files, write_bundle

log = logging.getLogger("lcasc")
TFLM_ARENA = 1 << 18  # bytes: ample for these networks (the outputs do not depend on it; no arena search)


class ExportError(RuntimeError):
    """The export or its check failed (the message says which clip, member or tool)."""


def resolve_members(run, model: str | None, ensemble: str | None) -> tuple[str, str, dict[str, Path]]:
    """(results kind, results entry name, {member name: model_int8.tflite}) for ``--model``/``--ensemble``."""
    res = run.results()
    if ensemble:
        entries = {e["name"]: e for e in res["ensembles"]}
        if ensemble not in entries:
            raise ExportError(f"{run.results_path}: no ensemble {ensemble!r} (has: {', '.join(entries) or 'none'})")
        names = [m.removesuffix("_int8") for m in entries[ensemble]["members"]]
        kind, entry = "ensembles", ensemble
    else:
        model = (model or "unpruned").removesuffix("_int8")
        names, kind, entry = [model], "networks", f"{model}_int8"
    files = {}
    for name in names:
        path = run.model_dir(name) / "model_int8.tflite"
        if not path.is_file():
            raise ExportError(f"{path}: no INT8 file for {name!r}; make it with `lcasc quantize --run {run.dir}`")
        files[name] = path
    return kind, entry, files


def real_clips(run, n: int) -> np.ndarray:
    """(n, 44100) int16: the first ``n`` usable (not silent) 1-second test segments of the run, from their
    audio files, one per recording while there are enough recordings."""
    from lcasc.audio import load

    te = run.split("test")
    paths = {r.name: r.path for r in run.dataset.recordings}
    order = sorted(range(len(te)), key=lambda i: (te.segment[i] > 0, i))[:n]  # first segments first
    clips = []
    for i in order:
        x = load(paths[te.names[te.recording[i]]])[int(te.segment[i]) * 44100:][:44100]
        x = np.pad(x, (0, 44100 - len(x)))
        clips.append(np.clip(np.round(x.astype(np.float64) * 32768), -32768, 32767).astype(np.int16))
    if len(clips) < n:
        raise ExportError(f"the test split has {len(clips)} usable segments, {n} clips were asked for")
    return np.array(clips)


def int8_inputs(members: list[Member], pcm: np.ndarray) -> list[np.ndarray]:
    """Per member, (n, 40*51) int8 inputs of the clips as lcasc quantizes them (float64 log-mel, the file's
    input scale and zero point): what the Cortex-M4 image runs to compare the network's bits alone."""
    from lcasc.int8 import quantize_int8
    from lcasc.logmel import logmel

    X = logmel(pcm.astype(np.float64) / 32768.0)
    return [quantize_int8(X, m.network.input_scale, m.network.input_zero_point).reshape(len(pcm), -1)
            for m in members]


def check_host(bundle: Path, members: list[Member], run, pcm: np.ndarray) -> dict:
    """Host build against tflite-micro on the whole test split and against lcasc's front end on ``pcm``."""
    from lcasc.logmel import logmel
    from lcasc.runtimes import TFLiteMicroClassifier

    toolchain.build_host(bundle)
    X = run.split("test").X
    out = {"test_clips": int(len(X)), "mismatching_clips": {}}
    for i, m in enumerate(tqdm(members, desc="host check vs tflite-micro", disable=not run.progress)):
        tflm = TFLiteMicroClassifier(m.network.path, run.classes, arena_size=TFLM_ARENA)
        Xq = tflm.quantize_input(X)
        ref = tflm.invoke_int8(Xq)
        got = toolchain.host_logits(bundle, i, Xq, len(run.classes))
        bad = int((got != ref).any(axis=1).sum())
        out["mismatching_clips"][m.name] = bad
        if bad:
            raise ExportError(f"{bundle}: member {m.name}: the C library differs from tflite-micro on {bad} of "
                              f"{len(X)} test clips ({m.network.path})")
    diff = np.abs(toolchain.host_logmel(bundle, pcm) - logmel(pcm.astype(np.float64) / 32768.0))
    out["front_end_max_abs_diff"] = float(diff.max())
    return out


def check_m4(bundle: Path, members: list[Member], pcm: np.ndarray, int8_inputs: list[np.ndarray]) -> dict:
    """Cortex-M4 image in QEMU: outputs equal to the host build's, and the measured footprint."""
    toolchain.build_m4(bundle)
    measured = toolchain.run_m4(bundle)
    n_classes = len(next(iter(measured["pcm"].values())))
    for i, m in enumerate(members):
        host_int8 = toolchain.host_logits(bundle, i, int8_inputs[i], n_classes)
        host_pcm = toolchain.host_pcm_logits(bundle, i, pcm, n_classes)
        for c in range(len(pcm)):
            got = measured["int8"][(c, i)][2]
            if not np.array_equal(got, host_int8[c]) or not np.array_equal(measured["pcm"][(c, i)], host_pcm[c]):
                raise ExportError(f"{bundle}: member {m.name}, clip {c}: the Cortex-M4 output {got.tolist()} / "
                                  f"{measured['pcm'][(c, i)].tolist()} differs from the host's "
                                  f"{host_int8[c].tolist()} / {host_pcm[c].tolist()}")
    return {"measured": measured, "footprint": toolchain.footprint(bundle, measured, members)}


def export(run_dir: str | os.PathLike, out: str | os.PathLike, model: str | None = None,
           ensemble: str | None = None, clips: int = 5, check: bool = True, progress: bool = True) -> dict:
    """Write the bundle of ``model`` (default ``unpruned``) or ``ensemble`` of run ``run_dir`` to ``out`` and,
    with ``check``, prove and measure it; returns the measurements (also written to results.json)."""
    from lcasc.run import Run

    run = Run(run_dir, progress=progress)
    kind, entry_name, files = resolve_members(run, model, ensemble)
    members = members_from_files(files)
    title = f"{entry_name} of {run.dir}"
    pcm = real_clips(run, clips)
    inputs = int8_inputs(members, pcm)
    out = write_bundle(out, members, run.classes, title, (pcm, inputs))
    log.info("export: wrote %s (%s)", out, ", ".join(f"{m.name} {m.network.widths}" for m in members))
    result: dict = {"bundle": str(Path(out).resolve()), "members": [m.name for m in members]}
    if check:
        if toolchain.host_compiler() is None:
            log.warning("export: no host C compiler, the bundle was not checked")
        else:
            result["host_check"] = check_host(out, members, run, pcm)
            log.info("export: host build equals tflite-micro on all %d test clips; front end within %.1e of lcasc",
                     result["host_check"]["test_clips"], result["host_check"]["front_end_max_abs_diff"])
        missing = toolchain.arm_tools_missing()
        if missing:
            log.warning("export: %s missing, no Cortex-M4 check (install: %s)", ", ".join(missing),
                        toolchain.INSTALL_HINT)
        elif "host_check" in result:
            m4 = check_m4(out, members, pcm, inputs)
            result["cortex_m4"] = {"clips": len(pcm), "equal_to_host": True, "footprint": m4["footprint"]}
            log.info("export: Cortex-M4 (QEMU mps2-an386) equals the host build on %d clips", len(pcm))
    write_json(Path(out) / "measurements.json", result)
    res = run.results()
    for entry in res[kind]:
        if entry["name"] == entry_name:
            run.record(kind, {**entry, "mcu": {k: v for k, v in result.items() if k != "bundle"}})
            break
    return result
