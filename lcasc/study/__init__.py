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
import itertools
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from lcasc.io import read_json, write_json
from lcasc.study.executors import SPLITS, _run_pool, _run_ray
from lcasc.study.figures import plot_activations, plot_kernels
from lcasc.study.jobs import Job
from lcasc.workers import cpu_count

log = logging.getLogger("lcasc")

KERNELS = (1, 3, 5, 7)  # the paper's filter sizes
ACTIVATIONS = ("TTTT", "RRRR", "TRTT")  # all tanh, all ReLU, the paper's choice (letters: C1 C2 C3 dense)
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
               "ir_p": rs[0].get("ir_p", 0.0),
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
              progress: bool = True, recipes=("paper",), augments=("none",), ir_ps=None) -> list[dict]:
    """The architecture study of the paper on ``run`` (a :class:`lcasc.run.Run`).

    Trains ``len(kernels) x len(activations) x repeats`` networks of ``run.config.widths`` (seeds
    ``run.config.train.seed + repeat``), with ``max_epochs``/``patience`` overriding the run's training
    settings; finished jobs are reused. Runs on ``workers`` local processes (default: every core), or as
    Ray tasks when ``ray_address`` is given ("local", "auto", "ray://host:10001"). ``recipes`` (paper, kd) and
    ``augments`` (see :func:`parse_augment`) are two more dimensions: ``kd`` variants distil from the teacher
    logits of the run's kd recipe (``DIR/kd``, made by ``lcasc run --recipe kd``) with its λ and τ.
    ``ir_ps``: probabilities of training on a device-impulse-response copy (:mod:`lcasc.impulse`; the run's
    ``--impulse-responses`` copies), one more dimension; default the run's own (none without them). Writes
    ``study/summary.json`` and the two figures; returns the per-variant rows of the summary.
    """
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
    ir_ps = _ir_dimension(run, ir_ps)
    jobs, complexity_of = _plan(base_spec, kernels, activations, repeats, train, recipes, augments, ir_ps,
                                study_dir)
    todo = [job for job in jobs if _prepare(job)]
    where = f"Ray ({ray_address})" if ray_address else f"{min(workers, len(todo))} local processes"
    log.info("study: %d variants x %d repeats = %d jobs, %d already done%s", len(kernels) * len(activations),
             repeats, len(jobs), len(jobs) - len(todo), f", {len(todo)} to run on {where}" if todo else "")

    t0 = time.perf_counter()
    if todo:
        _execute(run, todo, complexity_of, recipes, ir_ps, workers, ray_address, ray_workers, progress)
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


def _plan(base_spec, kernels, activations, repeats: int, train, recipes: dict, augments: dict, ir_ps: list[float],
          study_dir: Path) -> tuple[list[Job], dict[str, dict]]:
    """Every (variant, repeat) job of the study, and each variant's params and MACs."""
    from lcasc import complexity

    jobs, complexity_of = [], {}
    dimensions = itertools.product(kernels, activations, recipes.items(), augments.items(), ir_ps)
    for k, act, (recipe, kd), (tag, aug), ir_p in dimensions:
        spec = replace(base_spec, kernel_size=k, activations=act)
        name = variant_name(k, act) + ("" if recipe == "paper" else f"_{recipe}") + (
            "" if tag == "none" else f"_aug-{tag}") + (f"_ir{ir_p:g}" if ir_p > 0 else "")
        cx = complexity.of_spec(spec)
        complexity_of[name] = {"params": cx.params, "macs": cx.macs}
        for r in range(repeats):
            seed = train.seed + r
            cfg = {key: v for key, v in asdict(replace(train, seed=seed)).items() if key in _TRAIN_KEYS}
            cfg.update(kd)
            if aug.active:  # only then: a paper job's settings stay those of older studies
                cfg["augment"] = aug.to_dict()
            jobs.append(Job(name, k, act, r, seed, spec.to_dict(), cfg, str(study_dir / name / f"seed{seed}"),
                            recipe, ir_p))
    return jobs, complexity_of


def _execute(run, todo: list[Job], complexity_of: dict, recipes: dict, ir_ps: list[float], workers: int,
             ray_address: str | None, ray_workers: int | None, progress: bool) -> None:
    """Run ``todo`` in local processes or as Ray tasks; each job's result goes to its ``job.json``."""
    from tqdm.auto import tqdm

    tr, va, te = (run.split(s) for s in SPLITS)
    if len(te) == 0:
        from lcasc.run import RunError

        raise RunError("the test split has no usable segments to evaluate the study on")
    arrays = (tr.shareable_X(), tr.y, va.shareable_X(), va.y, te.shareable_X(), te.y,
              _study_teacher(run, recipes), run.impulse_copies() if any(p > 0 for p in ir_ps) else None)
    with tqdm(total=len(todo), desc="study", unit="net", disable=not progress) as bar:
        def on_result(job: Job, result: dict) -> None:
            write_json(job.result_path, {**result, **complexity_of[job.variant]})
            bar.update()
            log.info("study: %s seed %d: accuracy %.3f, log-loss %.3f (%d epochs, %.0f s)", job.variant,
                     job.seed, result["accuracy"], result["log_loss"], result["epochs"], result["seconds"])

        if ray_address:
            _run_ray(todo, arrays, ray_address, ray_workers, on_result)
        else:
            (run.dir / "study").mkdir(parents=True, exist_ok=True)
            _run_pool(todo, arrays, workers, run.dir / "study", on_result)


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


def _ir_dimension(run, ir_ps) -> list[float]:
    """The impulse-response probabilities to study, checked: default the run's own (0 without copies)."""
    cfg = run.config.impulse_responses
    if ir_ps is None:
        return [cfg.p if cfg.active else 0.0]
    ir_ps = list(dict.fromkeys(float(p) for p in ir_ps))
    bad = [p for p in ir_ps if not 0.0 <= p <= 1.0]
    if bad or not ir_ps:
        raise ValueError(f"impulse-response probabilities must be in [0, 1], got {bad or 'none'}")
    if any(p > 0 for p in ir_ps) and not cfg.active:
        from lcasc.run import RunError

        raise RunError(f"--ir-p {' '.join(f'{p:g}' for p in ir_ps)}: {run.dir} has no device impulse responses; "
                       "make the run with --impulse-responses DIR (its copies are what the study trains on)")
    return ir_ps


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
