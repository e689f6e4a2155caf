"""Training recipes: the paper's (plain cross-entropy, no augmentation) and ``kd`` (distilled and augmented).

``lcasc run --recipe kd --out DIR`` runs the paper recipe in ``DIR`` as usual (reused when finished) and the
``kd`` recipe in ``DIR/kd``, a run directory of its own with the same networks' names (``unpruned``,
``pruned_C1`` ... ``pruned_C123``, their INT8 files, ensembles). Every ``results.json`` entry carries its
``"recipe"``; ``DIR/report.md`` puts both recipes side by side per network and on one accuracy-vs-MACs figure.

The ``kd`` recipe: train the teacher(s), then the unpruned network with distillation, prune it with the same
similarity algorithm, fine-tune the pruned family with distillation, then INT8, ensembles, similarity and
the fused ensemble as usual. Teachers (their mean log-probabilities are the distillation target):

- wider CNNs of the paper's family the run trains first (``teacher_widths``, e.g. ``64-64-128-256``; not
  bound by the DCASE limits), trained with cross-entropy and the run's augmentation;
- the paper recipe's six pruned networks as an ensemble (``teacher_ensemble``; from ``DIR``);
- per-segment logits from a file (``teacher_logits``, see :mod:`lcasc.distill` for the format).

The teachers' training-split logits are computed once and cached in ``DIR/kd/models/teacher/
train_logits.npz`` (in the teacher logits file format), with ``teacher.json`` saying what they are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from lcasc import distill
from lcasc.io import read_json, write_json

log = logging.getLogger("lcasc")
KD_DIR = "kd"
TEACHER = "teacher"
# A 4x-MAC teacher (~21 M MACs) that trains in minutes on 2 CPU cores; 64-64-128-256 (~80 M MACs) is
# stronger on large data but takes ~4x longer per epoch.
DEFAULT_TEACHER_WIDTHS = ("32-32-64-128",)
KD_LAMBDA = 0.2  # set a priori (teachers here are far weaker than CP-JKU's PaSST, which used 0.02), not tuned
KD_TEMPERATURE = 2.0  # CP-JKU's DCASE 2023 students
# Early-stopping patience of every kd training (teachers, the unpruned student, the pruned family's
# fine-tuning). Augmented and distilled training lowers the validation log-loss more slowly and more noisily
# than the paper recipe: on the embedded default (benchmarks/kd_search.py, validation split only), three
# distilled, augmented students that the paper's patience of 20 stopped at epochs 46, 94 and 79 (validation
# log-loss 0.766, 0.689, 0.705; accuracy 74.1, 73.9, 75.6 %) went on to 0.679, 0.679 and 0.647 at epochs
# 119, 134 and 135 (accuracy 76.4, 75.9, 78.7 %); the gaps between improvements were up to 40 epochs.
KD_PATIENCE = 50


def kd_config(paper, kd_lambda: float | None = None, kd_temperature: float | None = None, augment=None,
              teacher_widths=None, teacher_ensemble: bool = True, teacher_logits: str | None = None,
              patience: int | None = None):
    """The ``kd`` RunConfig of ``DIR/kd`` from the paper RunConfig of ``DIR``: same data, network, seed and
    maximum epochs; distillation, the kd early-stopping patience (:data:`KD_PATIENCE`), the kd augmentation
    defaults (:func:`lcasc.augment.recipe_defaults`) and teachers (default: a 32-32-64-128 CNN and the paper
    recipe's six pruned networks)."""
    from lcasc.augment import recipe_defaults

    widths = list(DEFAULT_TEACHER_WIDTHS if teacher_widths is None else teacher_widths)
    if not widths and not teacher_ensemble and not teacher_logits:
        raise ValueError("the kd recipe needs a teacher: --teacher-widths, --teacher-ensemble or --teacher-logits")
    if patience is not None and (isinstance(patience, bool) or int(patience) != patience or patience < 1):
        raise ValueError(f"--kd-patience must be a positive integer, got {patience}")
    train = replace(paper.train, kd_lambda=KD_LAMBDA if kd_lambda is None else kd_lambda,
                    kd_temperature=KD_TEMPERATURE if kd_temperature is None else kd_temperature,
                    augment=recipe_defaults("kd") if augment is None else augment,
                    patience=KD_PATIENCE if patience is None else patience)
    return replace(paper, recipe="kd", train=train, teacher_widths=widths, teacher_ensemble=teacher_ensemble,
                   teacher_logits=str(Path(teacher_logits).expanduser().resolve()) if teacher_logits else None)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _train_teacher(run, widths: str) -> tuple[dict, tuple[np.ndarray, ...]]:
    """Train (or reuse) the teacher CNN of ``widths``: cross-entropy (λ = 1) with the run's augmentation, on
    every core. Returns its summary and its (train, validate, test) log-probabilities."""
    from lcasc import metrics
    from lcasc.models.cnn import CNNClassifier, CNNSpec

    folder = run.model_dir(f"{TEACHER}_{widths}")
    if (folder / "model.pt").is_file():
        clf = CNNClassifier.load(folder)
    else:
        spec = CNNSpec.from_widths(widths, kernel_size=run.config.kernel_size, activations=run.config.activations,
                                   n_classes=len(run.classes), n_mels=run.config.features.n_mels,
                                   n_frames=run.config.features.n_frames)
        tr, va = run.split("train"), run.split("validate")
        clf = CNNClassifier(run.classes, spec=spec, train_config=replace(run.config.train, kd_lambda=1.0),
                            workdir=folder)
        log.info("kd: training the teacher %s", widths)
        clf.fit(tr.X, tr.y, va.X, va.y, impulse=run.impulse_copies())
        clf.save(folder)
    from lcasc.train import predict_logits

    out = tuple(_log_softmax(predict_logits(clf.net, run.split(s).X)) for s in ("train", "validate", "test"))
    return {"kind": "cnn", "widths": widths, "folder": str(folder.relative_to(run.dir)),
            **_scores(run, out[1:], metrics)}, out


def _scores(run, logp: tuple[np.ndarray, np.ndarray], metrics) -> dict:
    va, te = run.split("validate"), run.split("test")
    out = {"val_accuracy": round(metrics.scores(np.exp(logp[0]), va.y, len(run.classes))["accuracy"], 6)}
    if len(te):
        out["test_accuracy"] = round(metrics.scores(np.exp(logp[1]), te.y, len(run.classes))["accuracy"], 6)
    return out


def _paper_ensemble_teacher(run) -> tuple[dict, tuple[np.ndarray, ...]]:
    """The paper recipe's six similarity-pruned networks of ``DIR`` (the parent of ``DIR/kd``): log of their
    mean probabilities, as the ensemble predicts."""
    from lcasc import metrics
    from lcasc.models.cnn import CNNClassifier
    from lcasc.names import LAYER_SETS, pruned_name
    from lcasc.run import RunError

    parent = run.dir.parent
    names = [pruned_name(c) for c in LAYER_SETS]
    missing = [n for n in names if not (parent / "models" / n / "model.pt").is_file()]
    if missing:
        raise RunError(f"--teacher-ensemble needs the paper recipe's pruned networks in {parent} "
                       f"(missing {', '.join(missing)}): run the paper recipe with its prune stage first")
    clfs = [CNNClassifier.load(parent / "models" / n) for n in names]
    out = tuple(np.log(np.clip(np.mean([c.predict_proba(run.split(s).X) for c in clfs], axis=0), 1e-12, None))
                for s in ("train", "validate", "test"))
    return {"kind": "ensemble", "members": names, "run": str(parent), **_scores(run, out[1:], metrics)}, out


def stage_teacher(run) -> dict:
    """Compute (once) the kd run's teacher logits of every training segment; returns ``teacher.json``."""
    folder = run.model_dir(TEACHER)
    summary = read_json(folder / "teacher.json")
    if summary is not None and (folder / "train_logits.npz").is_file():
        return summary
    cfg, t0 = run.config, time.perf_counter()
    teachers, train, held = [], [], []
    for widths in cfg.teacher_widths:
        info, logp = _train_teacher(run, widths)
        teachers.append(info)
        train.append(logp[0])
        held.append(logp[1:])
    if cfg.teacher_ensemble:
        info, logp = _paper_ensemble_teacher(run)
        teachers.append(info)
        train.append(logp[0])
        held.append(logp[1:])
    names, segments = distill.keys(run, "train")
    if cfg.teacher_logits:
        given = distill.align(cfg.teacher_logits, names, segments, run.classes, set(distill.recording_names(run)))
        teachers.append({"kind": "file", "file": cfg.teacher_logits})
        train.append(_log_softmax(given))
    if not teachers:
        from lcasc.run import RunError

        raise RunError("the kd recipe needs a teacher: teacher widths, the paper ensemble or a logits file")
    combined = np.mean(train, axis=0)  # mean log-probability: one teacher's softmax(·/τ) is unchanged by it
    distill.write_logits(folder / "train_logits.npz", names, segments, combined, run.classes)
    summary = {"teachers": teachers, "combined": "mean of the teachers' log-probabilities",
               "train_segments": len(names), "seconds": round(time.perf_counter() - t0, 2)}
    if held and len(held) == len(teachers):  # every teacher has held-out outputs: score the combination
        from lcasc import metrics

        summary.update(_scores(run, (np.mean([h[0] for h in held], axis=0), np.mean([h[1] for h in held], axis=0)),
                               metrics))
    write_json(folder / "teacher.json", summary)
    log.info("kd: teacher logits of %d training segments cached (%s)", len(names),
             ", ".join(t.get("widths", t["kind"]) for t in teachers))
    return summary


def teacher_logits(run) -> np.ndarray | None:
    """(N_train, n_classes) teacher logits aligned with ``run.split("train")``; None in the paper recipe."""
    if run.config.recipe != "kd":
        return None
    stage_teacher(run)
    names, segments = distill.keys(run, "train")
    return distill.align(run.model_dir(TEACHER) / "train_logits.npz", names, segments, run.classes)


# -- report -------------------------------------------------------------------------------------------------
def side_by_side(paper_res: dict, kd_res: dict) -> list[dict]:
    """One row per name both recipes have (networks, INT8 and ensembles): accuracies and the difference."""
    kd = {e["name"]: e for e in kd_res["networks"] + kd_res["ensembles"]}
    rows = []
    for e in paper_res["networks"] + paper_res["ensembles"]:
        if e["name"] in kd and e.get("kind") in ("cnn", "ensemble"):
            k = kd[e["name"]]
            rows.append({"name": e["name"], "precision": e["precision"], "macs": e["macs"], "params": e["params"],
                         "paper": e["accuracy"], "kd": k["accuracy"], "gain": round(k["accuracy"] - e["accuracy"], 6),
                         "paper_log_loss": e["log_loss"], "kd_log_loss": k["log_loss"]})
    return rows


def report_section(run) -> list[str]:
    """``report.md`` section of a paper run directory that has a ``kd/`` run next to it."""
    kd_dir = run.dir / KD_DIR
    kd_res = read_json(kd_dir / "results.json")
    if not kd_res or not kd_res.get("networks"):
        return []
    from lcasc.complexity import DCASE_MAX_MACS

    res = run.results()
    rows = side_by_side(res, kd_res)
    teacher = read_json(kd_dir / "models" / TEACHER / "teacher.json") or {}
    out = ["## Recipes: paper vs kd (distillation + augmentation)", "",
           f"The kd recipe's run directory is `{KD_DIR}/` (its own report: `{KD_DIR}/report.md`, settings: "
           f"`{KD_DIR}/config.yaml`). Test accuracy of each network and ensemble under both recipes.", ""]
    if teacher:
        out += ["Teachers: " + "; ".join(
            f"{t.get('widths', t['kind'])} (test acc {100 * t['test_accuracy']:.2f} %)" if "test_accuracy" in t
            else f"{t.get('widths', t.get('file', t['kind']))}" for t in teacher["teachers"])
            + (f"; combined test acc {100 * teacher['test_accuracy']:.2f} %" if "test_accuracy" in teacher else "")
            + f" ({teacher['seconds']} s).", ""]
    out.append("| name | precision | MACs | paper acc % | kd acc % | gain (points) | paper log-loss | kd log-loss |")
    out.append("|---|---|---|---|---|---|---|---|")
    out += [f"| {r['name']} | {r['precision']} | {r['macs']:,} | {100 * r['paper']:.2f} | {100 * r['kd']:.2f} | "
            f"{100 * r['gain']:+.2f} | {r['paper_log_loss']:.3f} | {r['kd_log_loss']:.3f} |" for r in rows]
    plot_recipes(rows, run.figure("accuracy_vs_macs_recipes.png"), DCASE_MAX_MACS)
    out += ["", "![accuracy against MACs, both recipes](figures/accuracy_vs_macs_recipes.png)", ""]
    return out


def plot_recipes(rows: list[dict], path, max_macs: float) -> None:
    """Test accuracy against MACs of every network and ensemble under both recipes, each pair joined by a line
    (paper: hollow, kd: filled; circles float networks, squares INT8, stars ensembles)."""
    from lcasc.plots import _save, plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        m, a0, a1 = r["macs"] / 1e6, 100 * r["paper"], 100 * r["kd"]
        marker = "*" if r["name"].startswith("ensemble") else ("s" if r["precision"] == "int8" else "o")
        ax.plot([m, m], [a0, a1], color="0.7", lw=0.8, zorder=1)
        ax.scatter(m, a0, marker=marker, facecolors="none", edgecolors="C0", s=40, zorder=2)
        ax.scatter(m, a1, marker=marker, color="C3", s=40, zorder=3)
        if r["precision"] == "float32":
            ax.annotate(r["name"].replace("ensemble_", "E:"), (m, a1), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
    ax.axvline(max_macs / 1e6, color="red", ls="--", lw=1, label=f"DCASE limit {max_macs / 1e6:.0f} M MACs")
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="C0", label="paper recipe")
    ax.scatter([], [], marker="o", color="C3", label="kd recipe")
    ax.scatter([], [], marker="s", color="0.5", label="INT8")
    ax.scatter([], [], marker="*", color="0.5", label="ensemble")
    ax.set_xscale("log")
    ax.set_xlabel("MACs per second of audio (M, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)
