"""lcasc on a TAU22-sized dataset on this machine: wall time and peak memory of each stage.

Writes a TAU Urban Acoustic Scenes 2022 Mobile-layout tree (``meta.csv``, ``evaluation_setup/fold1_*.csv``,
``audio/*.wav``) of ``--clips`` real 1-second clips cut from the embedded ESC-10 recordings, as 24-bit WAV like
TAU22, each at its own offset and gain (-20 to 0 dB) and device, split as TAU22 fold1 (82.5 % train, 17.5 %
evaluate = test); then runs lcasc's stages on it, each as its own ``python -m lcasc`` process, and prints
each stage's wall time and peak resident memory (the process and its worker processes) and the features'
rate. The tree and the run directory are kept and reused: rerunning resumes (the tree is not rewritten).

Run: python benchmarks/scale.py --clips 169300 --root /data/scale --max-epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DEVICES = ("a", "b", "c", "s1", "s2", "s3")
SR = 44_100


def _sources() -> list[tuple[str, str]]:
    import csv

    from lcasc.data.datasets import EMBEDDED

    with open(EMBEDDED, newline="") as fh:
        return [(str(EMBEDDED.parent / r["filename"]), r["label"]) for r in csv.DictReader(fh)]


def _write_block(args: tuple[int, int, int]) -> list[tuple[str, str, str, str]]:
    """Clips ``start:stop`` of the tree: (name, label, identifier, device) each; skips clips already written."""
    import soundfile as sf

    from lcasc.audio import load

    root, start, stop = args
    sources, cache, rows = _sources(), {}, {}
    for i in sorted(range(start, stop), key=lambda i: i % len(sources)):  # each source decoded once per block
        rng = np.random.default_rng(i)
        path, label = sources[i % len(sources)]
        device = DEVICES[i % len(DEVICES)]
        name = f"audio/{label}-city{i % 12}-{i // 10}-{i}-{device}.wav"
        rows[i] = (name, label, f"city{i % 12}-{i // 10}", device)
        out = Path(root) / name
        if out.is_file():
            continue
        if path not in cache:
            cache = {path: load(path)}  # one recording in memory at a time
        x = cache[path]
        offset = int(rng.integers(0, max(1, len(x) - SR)))
        clip = np.zeros(SR, np.float32)
        seg = x[offset:offset + SR]
        clip[:len(seg)] = seg
        peak = float(np.max(np.abs(clip))) or 1.0
        clip *= np.float32(10 ** (rng.uniform(-20, 0) / 20) * min(1.0, 0.99 / peak))
        tmp = out.with_name(f".{out.name}.tmp")
        sf.write(tmp, clip, SR, subtype="PCM_24", format="WAV")
        os.replace(tmp, out)
    return [rows[i] for i in range(start, stop)]


def write_tree(root: Path, clips: int, workers: int) -> float:
    """The TAU22-layout tree of ``clips`` clips under ``root``; returns the seconds it took (0 if it existed)."""
    done = root / "meta.csv"
    if done.is_file() and sum(1 for _ in open(done)) - 1 == clips:
        return 0.0
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "evaluation_setup").mkdir(exist_ok=True)
    # Sorted by source so that each block decodes each source recording once.
    block = 2_000
    rows: list = []
    with ProcessPoolExecutor(workers) as pool, tqdm(total=clips, desc="writing clips", unit="clip") as bar:
        for part in pool.map(_write_block, [(str(root), s, min(s + block, clips)) for s in range(0, clips, block)]):
            rows += part
            bar.update(len(part))
    n_train = round(clips * 139_620 / 169_300)
    order = np.random.default_rng(0).permutation(clips)
    train, evaluate = sorted(order[:n_train]), sorted(order[n_train:])
    for fold, idx in (("train", train), ("evaluate", evaluate), ("test", evaluate)):
        with open(root / "evaluation_setup" / f"fold1_{fold}.csv", "w") as fh:
            fh.write("filename\tscene_label\n" if fold != "test" else "filename\n")
            fh.writelines(f"{rows[i][0]}\t{rows[i][1]}\n" if fold != "test" else f"{rows[i][0]}\n" for i in idx)
    with open(root / ".meta.csv.tmp", "w") as fh:  # written last: its presence marks a complete tree
        fh.write("filename\tscene_label\tidentifier\tsource_label\n")
        fh.writelines(f"{n}\t{lab}\t{ident}\t{dev}\n" for n, lab, ident, dev in rows)
    os.replace(root / ".meta.csv.tmp", done)
    return time.perf_counter() - t0


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_memory(pid: int, per_process: list | None = None) -> tuple[float, float, float]:
    """(PSS, anonymous PSS, RSS) in bytes of ``pid`` and its descendants, summed. PSS divides each shared page
    (a memory-mapped feature file read by several workers, libraries) among the processes that map it, so its
    sum is the memory the process tree really occupies; of it, the anonymous part (heaps, tensors, Python
    objects) must stay in RAM, while file-backed pages (the memory-mapped features, code) are page cache the
    kernel can drop and read again. The RSS sum counts shared pages once per process. ``per_process``, if
    given, receives (pid, PSS, anonymous PSS) in bytes of each process."""
    pss = anon = rss = 0
    for p in _tree(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in text.splitlines()
                  if line.startswith(("Pss:", "Pss_Anon:", "Rss:"))}
        pss, anon, rss = pss + fields.get("Pss", 0), anon + fields.get("Pss_Anon", 0), rss + fields.get("Rss", 0)
        if per_process is not None:
            per_process.append((p, fields.get("Pss", 0), fields.get("Pss_Anon", 0)))
    return pss, anon, rss


def run_stage(args: list[str], interval: float = 0.5) -> dict:
    """Run ``python -m lcasc ARGS``; its seconds, CPU seconds (it and the workers it waited for), peak PSS,
    anonymous PSS and RSS in GB of the process tree (it and its worker processes, summed, sampled every
    ``interval`` s) and the exit code."""
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-m", "lcasc", *args], stdout=subprocess.DEVNULL)
    peak, at_peak = [0.0, 0.0, 0.0], []
    while proc.poll() is None:
        procs: list = []
        now = tree_memory(proc.pid, procs)
        if now[0] > peak[0]:
            at_peak = procs
        peak = [max(a, b) for a, b in zip(peak, now)]
        time.sleep(interval)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    return {"seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(cpu, 1),
            "peak_pss_gb": round(peak[0] / 1e9, 2), "peak_anon_gb": round(peak[1] / 1e9, 2),
            "peak_rss_sum_gb": round(peak[2] / 1e9, 2), "exit": proc.returncode,
            # at the PSS peak: [PSS, anonymous PSS] in GB of the stage's process, then of each worker
            "at_peak_gb": [[round(p / 1e9, 2), round(a / 1e9, 2)] for _, p, a in at_peak]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, required=True, help="1-second clips (TAU22 fold1: 169300)")
    ap.add_argument("--root", type=Path, default=Path("scale-data"), help="where the tree, cache and run go")
    ap.add_argument("--max-epochs", type=int, default=1, help="training and fine-tuning epochs")
    ap.add_argument("--stages", nargs="+", default=["features", "train", "evaluate", "prune", "quantize",
                                                     "ensemble"], help="lcasc stages to run, in order")
    args = ap.parse_args()
    from lcasc.workers import cpu_count

    tree = args.root / f"tau22-{args.clips}"
    run_dir, cache = args.root / f"run-{args.clips}", args.root / "cache"
    written = write_tree(tree, args.clips, cpu_count())
    print(f"tree: {args.clips} clips in {tree} (" + (f"written in {written:.0f} s" if written else "reused") + ")",
          flush=True)
    results = []
    for stage in args.stages:
        if stage == "features":
            cmd = ["-q", "features", "--dataset", str(tree), "--layout", "tau22", "--out", str(run_dir),
                   "--cache-dir", str(cache), "--max-epochs", str(args.max_epochs), "--patience", "5"]
        elif stage == "prune":
            cmd = ["-q", "prune", "--run", str(run_dir)]
        else:
            cmd = ["-q", stage, "--run", str(run_dir)]
        r = {"stage": stage, **run_stage(cmd)}
        results.append(r)
        code = r["exit"]
        print(f"{stage:<10} {r['seconds']:8.1f} s ({r['cpu_seconds']:8.1f} CPU s)   peak memory "
              f"{r['peak_pss_gb']:5.2f} GB PSS, of it {r['peak_anon_gb']:5.2f} GB anonymous (RSS summed over "
              f"processes {r['peak_rss_sum_gb']:5.2f} GB)" + (f"   EXIT {code}" if code else ""), flush=True)
        if code:
            break
    summary = json.loads((run_dir / "features" / "summary.json").read_text()) if (run_dir / "features").is_dir() \
        else {}
    feats = next((r for r in results if r["stage"] == "features"), None)
    if feats and summary:
        print(f"features: {args.clips} clips in {feats['seconds']:.0f} s, {args.clips / feats['seconds']:.0f} clips/s "
              f"(decode + log-mel + caching + process start, {cpu_count()} CPUs); "
              f"{summary['silent_segments_dropped']} silent segments left out")
    log = run_dir / "models" / "unpruned" / "train_log.csv"
    train = next((r for r in results if r["stage"] == "train"), None)
    if train and log.is_file():
        epochs = len(log.read_text().splitlines()) - 1
        print(f"train: {epochs} epoch(s), {train['seconds'] / max(1, epochs):.0f} s per epoch "
              "(including validation and process start)")
    print(f"peak memory over the stages: {max(r['peak_pss_gb'] for r in results):.2f} GB PSS, "
          f"{max(r['peak_anon_gb'] for r in results):.2f} GB anonymous PSS, "
          f"{max(r['peak_rss_sum_gb'] for r in results):.2f} GB RSS summed; this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
