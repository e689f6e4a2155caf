"""The paper's architecture study (its Figures 1 and 2): kernel sizes x activation patterns, repeated seeds.

Every (variant, repeat) is an independent job: build the network of ``run.config.widths`` with the variant's
kernel size and activations, seed it, train it with :func:`lcasc.train.fit`, evaluate it on the test split.
Jobs run in parallel, one CPU thread each, either in a local process pool or as Ray tasks; the job function
and its single-thread settings are the same in both, so the numbers are identical for the same seeds.

    DIR/study/<variant>/seed<s>/job.json   one job: metrics, epochs, params, MACs (plus its checkpoints)
    DIR/study/summary.json                 mean and std over repeats per variant
    DIR/figures/study_kernels.png          accuracy and log-loss vs kernel size (paper Figure 1)
    DIR/figures/study_activations.png      accuracy and log-loss per activation pattern (paper Figure 2)

A job whose ``job.json`` exists is not run again, so an interrupted study resumes where it stopped (and an
interrupted job resumes its training from ``last.ckpt``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lcasc.io import read_json, write_json
from lcasc.workers import cpu_count

log = logging.getLogger("lcasc")

KERNELS = (1, 3, 5, 7)  # the paper's filter sizes
ACTIVATIONS = ("TTTT", "RRRR", "TRTT")  # all tanh, all ReLU, the paper's choice (letters: C1 C2 C3 dense)
PAPER_KERNEL = 3  # Figure 2 compares activation patterns at this kernel size
SPLITS = ("train", "validate", "test")
_TRAIN_KEYS = ("max_epochs", "patience", "batch_size", "lr", "seed")  # what makes two trainings the same
_CHECKPOINTS = ("last.ckpt", "best.ckpt", "train_log.csv")


def variant_name(kernel_size: int, activations: str) -> str:
    return f"k{kernel_size}_{activations}"


def validate(kernels, activations, repeats: int = 1) -> tuple[list[int], list[str]]:
    """Checked, de-duplicated kernel sizes and activation patterns; ValueError with the reason otherwise."""
    kernels, activations = list(kernels), list(activations)
    if not kernels:
        raise ValueError("give at least one kernel size")
    if not activations:
        raise ValueError("give at least one activation pattern")
    for k in kernels:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or k % 2 != 1:
            raise ValueError(f"kernel sizes must be odd positive integers (1, 3, 5, 7, ...), got {k!r}")
    out = []
    for a in activations:
        pattern = a.upper() if isinstance(a, str) else a
        if not isinstance(pattern, str) or len(pattern) != 4 or set(pattern) - {"T", "R"}:
            raise ValueError(f"activation patterns must be 4 letters of T (tanh) / R (ReLU) for C1 C2 C3 dense, "
                             f"e.g. TRTT; got {a!r}")
        out.append(pattern)
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    return list(dict.fromkeys(int(k) for k in kernels)), list(dict.fromkeys(out))


@dataclass(frozen=True)
class Job:
    """One (variant, repeat): plain data only, so it pickles to a process or a Ray task."""

    variant: str
    kernel_size: int
    activations: str
    repeat: int
    seed: int
    spec: dict  # CNNSpec.to_dict()
    train: dict  # TrainConfig fields (progress off)
    workdir: str
    recipe: str = "paper"  # kd: distilled from the teacher logits of the run's kd recipe (DIR/kd)

    @property
    def result_path(self) -> Path:
        return Path(self.workdir) / "job.json"


# -- the job (runs in a worker process or a Ray task) -----------------------------------------------------
@contextlib.contextmanager
def _one_thread():
    """torch on one thread for the whole job (training and evaluation), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _weights_digest(net) -> str:
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_job(job: Job, X_train, y_train, X_val, y_val, X_test, y_test, teacher=None) -> dict:
    """Train and evaluate one network; returns the job's result (``job.json``). Deterministic for a seed."""
    import torch

    from lcasc import metrics
    from lcasc.models.cnn import CNNSpec, LowComplexityCNN
    from lcasc.train import TrainConfig, fit, predict_logits

    t0 = time.perf_counter()
    spec = CNNSpec.from_dict(job.spec)
    config = TrainConfig(**job.train, progress=False, threads=1)
    with _one_thread(), warnings.catch_warnings():
        # Features arrive read-only (memory-mapped .npy or Ray's object store); nothing writes to them.
        warnings.filterwarnings("ignore", ".*not writable.*")
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")  # job_config.json, or a resume
        torch.manual_seed(job.seed)
        net = LowComplexityCNN.from_spec(spec)
        net, history = fit(net, X_train, y_train, X_val, y_val, config, job.workdir,
                           np.asarray(teacher) if job.recipe == "kd" else None)
        threads = torch.get_num_threads()
        test = metrics.scores(torch.softmax(torch.from_numpy(predict_logits(net, X_test)), 1).numpy(), y_test,
                              spec.n_classes)
        val = metrics.scores(torch.softmax(torch.from_numpy(predict_logits(net, X_val)), 1).numpy(), y_val,
                             spec.n_classes)
    best = min(history, key=lambda h: h["val_log_loss"]) if history else {"epoch": None}
    return {"variant": job.variant, "kernel_size": job.kernel_size, "activations": job.activations,
            "recipe": job.recipe, "augment": config.augment.to_dict() if config.augment.active else None,
            "widths": spec.widths, "repeat": job.repeat, "seed": job.seed,
            "accuracy": test["accuracy"], "class_avg_accuracy": test["class_avg_accuracy"],
            "log_loss": test["log_loss"], "val_log_loss": val["log_loss"], "val_accuracy": val["accuracy"],
            "epochs": len(history), "best_epoch": best["epoch"], "n_test": int(len(y_test)),
            "weights_sha256": _weights_digest(net), "threads": threads,
            "seconds": round(time.perf_counter() - t0, 2), "train": job.train, "spec": job.spec}


# -- local process pool ---------------------------------------------------------------------------------
_DATA: tuple | None = None  # a pool worker's feature arrays (and the teacher's logits, if any)


def _init_worker(refs: tuple) -> None:
    global _DATA
    from lcasc.features import opened
    from lcasc.workers import exit_with_parent

    exit_with_parent()  # a killed study must not leave trainings running behind it
    _DATA = opened(refs)


def _pool_job(job: Job) -> dict:
    return run_job(job, *_DATA)


def _array_names() -> list[str]:
    return [f"{v}_{s}" for s in SPLITS for v in ("X", "y")] + ["teacher_train"]


def _drive(jobs: list[Job], limit: int, submit, wait_some, cancel, on_result) -> None:
    """Keep at most ``limit`` jobs in flight and hand each result to ``on_result`` as it arrives.

    A failed job stops new submissions; the running ones are still collected (their results kept), then
    the failure is raised. ``wait_some(handles)`` yields ``(handle, result or exception)`` of finished jobs.
    """
    queue, pending, failed = list(jobs), {}, []
    try:
        while pending or (queue and not failed):
            while queue and not failed and len(pending) < limit:
                job = queue.pop(0)
                pending[submit(job)] = job
            for handle, outcome in wait_some(list(pending)):
                job = pending.pop(handle)
                if isinstance(outcome, BaseException):
                    log.error("study: %s seed %d failed: %s", job.variant, job.seed, outcome)
                    failed.append((job, outcome))
                else:
                    on_result(job, outcome)
    except BaseException:
        for handle in pending:
            with contextlib.suppress(Exception):
                cancel(handle)
        raise
    if failed:
        job, exc = failed[0]
        raise RuntimeError(f"study: {len(failed)} job(s) failed, the first {job.variant} seed {job.seed} "
                           f"({job.workdir}): {exc}") from exc


def _run_pool(jobs: list[Job], arrays: tuple, workers: int, folder: Path, on_result) -> None:
    """Run ``jobs`` in ``workers`` spawned processes; each maps the features itself (the run's feature file,
    or a temporary .npy of an in-memory array), so no worker gets a pickled copy."""
    from lcasc.features import MappedRows

    data = Path(tempfile.mkdtemp(prefix=".features-", dir=folder))

    def wait_some(futures):
        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        return [(fut, fut.exception() or fut.result()) for fut in done]

    try:
        refs = []
        for name, arr in zip(_array_names(), arrays):
            if arr is not None and not isinstance(arr, MappedRows):  # teacher_train is None in the paper recipe
                np.save(data / f"{name}.npy", np.ascontiguousarray(arr))
                arr = MappedRows(str(data / f"{name}.npy"), 0, len(arr))
            refs.append(arr)
        # spawn, not fork: a forked child of a process that already ran torch's OpenMP pool can hang.
        ctx = multiprocessing.get_context("spawn")
        workers = min(workers, len(jobs))
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(tuple(refs),)) as pool:
            _drive(jobs, workers, lambda job: pool.submit(_pool_job, job), wait_some, lambda f: f.cancel(),
                   on_result)
    finally:
        shutil.rmtree(data, ignore_errors=True)


# -- Ray ------------------------------------------------------------------------------------------------
def _import_ray():
    try:
        import ray
    except ImportError:
        from lcasc.run import RunError

        raise RunError('--ray-address needs Ray, which is not installed: pip install "ray[default]" '
                       '(or pip install "lcasc[ray]")') from None
    return ray


def _run_ray(jobs: list[Job], arrays: tuple, address: str, workers: int | None, on_result) -> None:
    """Run ``jobs`` as Ray tasks (one CPU each) on ``address`` ("local" starts a Ray instance here).

    At most ``workers`` tasks are in flight when given, else Ray schedules on every CPU of the cluster.
    The workers must be able to import lcasc and to write the job folders (same machine or shared disk).
    """
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        if address == "local":  # a private instance: no dashboard, workers' output not relayed here
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address)

    def wait_some(refs):
        done, _ = ray.wait(refs, num_returns=1)
        out = []
        for ref in done:
            try:
                out.append((ref, ray.get(ref)))
            except Exception as e:  # a RayTaskError carries the job's own exception and traceback
                out.append((ref, e))
        return out

    try:
        from lcasc.features import opened

        # once, into Ray's shared-memory object store, which every task on a node reads without a copy
        data = [ray.put(np.ascontiguousarray(a)) for a in opened(arrays)]
        task = ray.remote(num_cpus=1)(run_job)
        _drive(jobs, workers or len(jobs), lambda job: task.remote(job, *data), wait_some,
               lambda ref: ray.cancel(ref, force=True), on_result)
    finally:
        if started:
            ray.shutdown()


# -- the study ------------------------------------------------------------------------------------------
def _prepare(job: Job) -> bool:
    """True when ``job`` still has to run. A finished job trained differently is an error; checkpoints of
    an unfinished job trained differently are removed so it does not resume from them."""
    folder = Path(job.workdir)
    done = read_json(job.result_path)
    if done is not None:
        if done.get("train") != job.train or done.get("spec") != job.spec:
            from lcasc.run import RunError

            raise RunError(f"{folder} was trained with other settings ({_describe(done.get('train'))}) than asked "
                           f"now ({_describe(job.train)}); use the same options or delete {folder.parents[1]}")
        return False
    marker = folder / "job_config.json"
    started = read_json(marker)
    if started is not None and started != {"train": job.train, "spec": job.spec}:
        for name in _CHECKPOINTS:
            with contextlib.suppress(FileNotFoundError):
                os.remove(folder / name)
    write_json(marker, {"train": job.train, "spec": job.spec})
    return True


def _describe(train: dict | None) -> str:
    train = train or {}
    return ", ".join(f"{k}={train.get(k)}" for k in ("max_epochs", "patience", "seed"))


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate(results: list[dict], complexity_of: dict[str, dict]) -> list[dict]:
    """Mean and (sample) std over repeats, per variant, in the order the variants first appear."""
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in results):
        rs = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
        row = {"variant": variant, "kernel_size": rs[0]["kernel_size"], "activations": rs[0]["activations"],
               "series": rs[0]["activations"] + variant.removeprefix(f"k{rs[0]['kernel_size']}_{rs[0]['activations']}"),
               "recipe": rs[0].get("recipe", "paper"), "augment": rs[0].get("augment"),
               "widths": rs[0]["widths"], **complexity_of[variant], "repeats": len(rs),
               "seeds": [r["seed"] for r in rs]}
        for key in ("accuracy", "class_avg_accuracy", "log_loss", "val_log_loss", "epochs"):
            vals = [float(r[key]) for r in rs]
            row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(vals)), _std(vals)
        row["seconds_mean"] = float(np.mean([r["seconds"] for r in rs]))
        rows.append(row)
    return rows


def run_study(run, kernels=KERNELS, activations=ACTIVATIONS, repeats: int = 5, max_epochs: int | None = None,
              patience: int | None = None, workers: int | None = None, ray_address: str | None = None,
              progress: bool = True, recipes=("paper",), augments=("none",)) -> list[dict]:
    """The architecture study of the paper on ``run`` (a :class:`lcasc.pipeline.Run`).

    Trains ``len(kernels) x len(activations) x repeats`` networks of ``run.config.widths`` (seeds
    ``run.config.train.seed + repeat``), with ``max_epochs``/``patience`` overriding the run's training
    settings; finished jobs are reused. Runs on ``workers`` local processes (default: every core), or as
    Ray tasks when ``ray_address`` is given ("local", "auto", "ray://host:10001"). ``recipes`` (paper, kd) and
    ``augments`` (see :func:`parse_augment`) are two more dimensions: ``kd`` variants distil from the teacher
    logits of the run's kd recipe (``DIR/kd``, made by ``lcasc run --recipe kd``) with its λ and τ. Writes
    ``study/summary.json`` and the two figures; returns the per-variant rows of the summary.
    """
    from lcasc import complexity

    kernels, activations = validate(kernels, activations, repeats)
    for name, value in (("max_epochs", max_epochs), ("patience", patience), ("workers", workers)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    ray_workers, workers = workers, int(workers or cpu_count())
    base = run.config.train
    overrides = {k: v for k, v in (("max_epochs", max_epochs), ("patience", patience)) if v is not None}
    train = replace(base, **overrides)
    study_dir = run.dir / "study"
    base_spec = run.config.spec(len(run.classes))

    recipes, augments = _recipe_dimensions(run, recipes, augments)
    jobs, complexity_of = [], {}
    for k in kernels:
        for act in activations:
            spec = replace(base_spec, kernel_size=k, activations=act)
            cx = complexity.of_spec(spec)
            for recipe, kd in recipes.items():
                for tag, aug in augments.items():
                    name = variant_name(k, act) + ("" if recipe == "paper" else f"_{recipe}") + (
                        "" if tag == "none" else f"_aug-{tag}")
                    complexity_of[name] = {"params": cx.params, "macs": cx.macs}
                    for r in range(repeats):
                        seed = base.seed + r
                        cfg = {key: v for key, v in asdict(replace(train, seed=seed)).items() if key in _TRAIN_KEYS}
                        cfg.update(kd)
                        if aug.active:  # only then: a paper job's settings stay those of older studies
                            cfg["augment"] = aug.to_dict()
                        jobs.append(Job(name, k, act, r, seed, spec.to_dict(), cfg,
                                        str(study_dir / name / f"seed{seed}"), recipe))
    todo = [job for job in jobs if _prepare(job)]
    where = f"Ray ({ray_address})" if ray_address else f"{min(workers, len(todo))} local processes"
    log.info("study: %d variants x %d repeats = %d jobs, %d already done%s", len(kernels) * len(activations),
             repeats, len(jobs), len(jobs) - len(todo), f", {len(todo)} to run on {where}" if todo else "")

    t0 = time.perf_counter()
    if todo:
        from tqdm.auto import tqdm

        tr, va, te = (run.split(s) for s in SPLITS)
        if len(te) == 0:
            from lcasc.run import RunError

            raise RunError("the test split has no usable segments to evaluate the study on")
        arrays = (tr.shareable_X(), tr.y, va.shareable_X(), va.y, te.shareable_X(), te.y,
                  _study_teacher(run, recipes))
        with tqdm(total=len(todo), desc="study", unit="net", disable=not progress) as bar:
            def on_result(job: Job, result: dict) -> None:
                write_json(job.result_path, {**result, **complexity_of[job.variant]})
                bar.update()
                log.info("study: %s seed %d: accuracy %.3f, log-loss %.3f (%d epochs, %.0f s)", job.variant,
                         job.seed, result["accuracy"], result["log_loss"], result["epochs"], result["seconds"])

            if ray_address:
                _run_ray(todo, arrays, ray_address, ray_workers, on_result)
            else:
                study_dir.mkdir(parents=True, exist_ok=True)
                _run_pool(todo, arrays, workers, study_dir, on_result)
    elapsed = time.perf_counter() - t0

    results = [read_json(job.result_path) for job in jobs]
    rows = aggregate(results, complexity_of)
    summary = {"widths": base_spec.widths, "kernels": kernels, "activations": activations, "repeats": repeats,
               "train": {k: v for k, v in asdict(train).items() if k in _TRAIN_KEYS and k != "seed"},
               "base_seed": base.seed, "evaluated_on": "test", "std": "sample standard deviation over repeats",
               "jobs_run": len(todo), "wall_seconds": round(elapsed, 2),
               "executor": f"ray:{ray_address}" if ray_address else f"processes:{workers}", "variants": rows}
    write_json(study_dir / "summary.json", summary)
    plot_kernels(rows, run.figure("study_kernels.png"))
    plot_activations(rows, run.figure("study_activations.png"))
    return rows


# -- report -----------------------------------------------------------------------------------------------
def study_table_markdown(summary) -> str:
    """Markdown table of a study summary (the dict of ``summary.json`` or the rows ``run_study`` returns)."""
    rows = summary["variants"] if isinstance(summary, dict) else summary
    lines = ["| variant | kernel | activations | params | MACs | accuracy (%) | log-loss | repeats |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        k = r["kernel_size"]
        lines.append(f"| {r['variant']} | {k}×{k} | {r['activations']} | {r['params']:,} | {r['macs'] / 1e6:.2f}M "
                     f"| {100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} "
                     f"| {r['log_loss_mean']:.3f} ± {r['log_loss_std']:.3f} | {r['repeats']} |")
    return "\n".join(lines) + "\n"


# -- figures ----------------------------------------------------------------------------------------------
def plot_kernels(rows: list[dict], path) -> None:
    """Paper Figure 1: accuracy and log-loss against kernel size, one line per activation pattern."""
    from lcasc.plots import _save, plt

    kernels = sorted({r["kernel_size"] for r in rows})
    params = {r["kernel_size"]: r["params"] for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    patterns = list(dict.fromkeys(r.get("series", r["activations"]) for r in rows))
    for i, act in enumerate(patterns):
        rs = sorted((r for r in rows if r.get("series", r["activations"]) == act), key=lambda r: r["kernel_size"])
        shift = 0.08 * (i - (len(patterns) - 1) / 2)  # a small offset keeps the error bars apart
        x = [r["kernel_size"] + shift for r in rs]
        for ax, key, scale in ((axes[0], "accuracy", 100), (axes[1], "log_loss", 1)):
            ax.errorbar(x, [scale * r[f"{key}_mean"] for r in rs], yerr=[scale * r[f"{key}_std"] for r in rs],
                        marker="o", capsize=3, label=act)
    for ax, label in ((axes[0], "accuracy (%)"), (axes[1], "log-loss")):
        ax.set_xticks(kernels, [f"{k}×{k}\n{params[k] / 1000:.1f}k params" for k in kernels], fontsize=8)
        ax.set_xlabel("kernel size")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(title="C1 C2 C3 D", fontsize=8)
    fig.suptitle(f"kernel size and activations (mean ± std over {max(r['repeats'] for r in rows)} runs)")
    fig.tight_layout()
    _save(fig, path)


def plot_activations(rows: list[dict], path, kernel_size: int | None = None) -> None:
    """Paper Figure 2: accuracy and log-loss per activation pattern at one kernel size (3 if studied)."""
    from lcasc.plots import _save, plt

    kernels = [r["kernel_size"] for r in rows]
    k = kernel_size if kernel_size is not None else (PAPER_KERNEL if PAPER_KERNEL in kernels else kernels[0])
    rs = [r for r in rows if r["kernel_size"] == k]
    names = [r.get("series", r["activations"]) for r in rs]
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 2.0 + 1.2 * len(rs)), 3.6))
    for ax, key, scale, label, color in ((axes[0], "accuracy", 100, "accuracy (%)", "tab:blue"),
                                         (axes[1], "log_loss", 1, "log-loss", "tab:orange")):
        means, errs = [scale * r[f"{key}_mean"] for r in rs], [scale * r[f"{key}_std"] for r in rs]
        ax.bar(range(len(rs)), means, yerr=errs, capsize=4, color=color, alpha=0.8, width=0.6)
        for i, (m, e) in enumerate(zip(means, errs)):
            ax.annotate(f"{m:.1f}" if scale == 100 else f"{m:.3f}", (i, m + e), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rs)), names)
        ax.set_xlim(-0.6, len(rs) - 0.4)
        # Zoomed on the values (bars start below the axis), as differences are small next to the values.
        lo, hi = min(m - e for m, e in zip(means, errs)), max(m + e for m, e in zip(means, errs))
        pad = max(hi - lo, 0.02 * abs(hi), 1e-3)
        ax.set_ylim(max(0.0, lo - 0.6 * pad), hi + 0.35 * pad)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.supxlabel("activations of C1 C2 C3 D (T = tanh, R = ReLU)", fontsize=10)
    fig.suptitle(f"activation patterns at kernel {k}×{k} (mean ± std over {max(r['repeats'] for r in rs)} runs)")
    fig.tight_layout()
    _save(fig, path)


# -- recipe and augmentation dimensions ---------------------------------------------------------------------
def parse_augment(text: str):
    """``none`` (no augmentation), ``kd`` (the kd recipe's), or ``key=value[,key=value...]`` of
    :class:`lcasc.augment.AugmentConfig` fields, e.g. ``mixstyle_p=0.4,freq_mask_p=0.5``."""
    from lcasc.augment import AugmentConfig, recipe_defaults

    if text in ("none", "paper"):
        return AugmentConfig()
    if text == "kd":
        return recipe_defaults("kd")
    try:
        pairs = dict(item.split("=", 1) for item in text.split(","))
        return AugmentConfig.coerce({k.strip(): float(v) if "." in v else int(v) for k, v in pairs.items()})
    except ValueError as e:
        raise ValueError(f"augmentation setting {text!r}: {e if '=' in text else 'write key=value[,key=value]'}; "
                         "keys: mixstyle_p, mixstyle_alpha, mixup_p, mixup_alpha, freq_mask_p, freq_mask_bands, "
                         "time_mask_p, time_mask_frames, roll_p, roll_frames (or none, kd)") from None


def _recipe_dimensions(run, recipes, augments) -> tuple[dict, dict]:
    """({recipe: training overrides}, {tag: AugmentConfig}), checked."""
    recipes, augments = list(dict.fromkeys(recipes or ("paper",))), list(dict.fromkeys(augments or ("none",)))
    unknown = [r for r in recipes if r not in ("paper", "kd")]
    if unknown:
        raise ValueError(f"unknown recipe(s) {', '.join(unknown)}; choose paper or kd")
    out = {"paper": {}} if "paper" in recipes else {}
    if "kd" in recipes:
        kd = _kd_run(run).config.train
        out["kd"] = {"kd_lambda": kd.kd_lambda, "kd_temperature": kd.kd_temperature}
    return out, {a.replace(",", "+"): parse_augment(a) for a in augments}


def _kd_run(run):
    from lcasc.recipes import KD_DIR
    from lcasc.run import Run, RunError

    if not (run.dir / KD_DIR / "config.yaml").is_file():
        raise RunError(f"kd variants distil from the teacher of {run.dir / KD_DIR}: run `lcasc run --recipe kd "
                       f"--out {run.dir}` (or with --skip prune quantize ensemble ...) first")
    return Run(run.dir / KD_DIR, progress=False)


def _study_teacher(run, recipes: dict) -> np.ndarray:
    """The kd run's cached teacher logits of the training split (an empty array without kd variants)."""
    if "kd" not in recipes:
        return np.zeros((0, len(run.classes)), np.float32)
    from lcasc.recipes import teacher_logits

    return teacher_logits(_kd_run(run))
