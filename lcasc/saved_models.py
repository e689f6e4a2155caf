"""What a run saves so that entries other than plain CNNs can run again by name after their stage ended:
fitted baselines and the fused ensemble's sharing plan.

- Baselines (``models/<name>/``): the scikit-learn style ones (GMM, random forest, MLP, DLSI) as the fitted
  estimator in ``baseline.joblib`` (joblib, the format scikit-learn recommends), with the lcasc and
  scikit-learn versions that wrote it; VGGish as a PyTorch checkpoint ``model.pt`` (weights, input
  standardisation, layout) that loads without pickled code. Why: ``results.json`` reports them beside the
  CNN, so a user must be able to run exactly what was evaluated (``lcasc predict --model gmm``).
- The fused ensemble (``models/ensemble_fused/fused_plan.json``): member names, each member's original
  filter indices, the threshold and which maps are shared (every distinct map with its representative and
  users). Rebuilding needs only that and the members' ``model.pt``, not the validation clips whose feature
  map MSE decided the sharing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lcasc.io import atomic_path, read_json, write_json

BASELINE_FILE = "baseline.joblib"
VGGISH_FILE = "model.pt"
FUSED_PLAN_FILE = "fused_plan.json"


class SavedModelError(ValueError):
    """A saved model cannot be used (missing, written by another version, or not what it should be)."""


def _lcasc_version() -> str:
    from lcasc._version import __version__

    return __version__


# --------------------------------------------------------------------------------------------------------
# baselines


def baseline_path(folder: str | Path, kind: str) -> Path:
    """The file :func:`save_baseline` writes for a baseline of ``kind`` in ``folder``."""
    return Path(folder) / (VGGISH_FILE if kind == "vggish" else BASELINE_FILE)


def save_baseline(folder: str | Path, kind: str, clf) -> Path:
    """Write the fitted baseline ``clf`` of ``kind`` (gmm, rf, mlp, dlsi, vggish) into ``folder``, atomically."""
    path = baseline_path(folder, kind)
    if kind == "vggish":
        import torch

        state = {"kind": kind, "lcasc_version": _lcasc_version(), "classes": list(clf.classes),
                 "original_pools": bool(clf.original_pools), "pretrained": bool(clf.pretrained),
                 "state_dict": clf.model_.state_dict()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path
    import joblib
    import sklearn

    with atomic_path(path) as tmp:
        joblib.dump({"kind": kind, "lcasc_version": _lcasc_version(), "sklearn_version": sklearn.__version__,
                     "estimator": clf}, tmp)
    return path


def load_baseline(folder: str | Path, kind: str, classes: list[str]):
    """The baseline saved by :func:`save_baseline`, ready for ``predict_proba``; :class:`SavedModelError` when
    the file is missing, was written by another lcasc or scikit-learn version, or holds other classes."""
    path = baseline_path(folder, kind)
    if not path.is_file():
        raise SavedModelError(f"{path}: no saved {kind} baseline here (runs made before lcasc saved baselines "
                              f"need `lcasc baselines --run DIR --only {kind} --refit`)")
    if kind == "vggish":
        return _load_vggish(path, classes)
    import joblib
    import sklearn

    try:
        saved = joblib.load(path)
    except Exception as e:  # unpickling can fail in many ways (truncated file, missing class, ...)
        raise SavedModelError(f"{path}: cannot load it ({type(e).__name__}: {e})") from None
    if not isinstance(saved, dict) or saved.get("kind") != kind:
        raise SavedModelError(f"{path}: not a saved {kind} baseline of lcasc")
    for what, key, now in (("lcasc", "lcasc_version", _lcasc_version()),
                           ("scikit-learn", "sklearn_version", sklearn.__version__)):
        then = saved.get(key)
        if then != now:
            raise SavedModelError(f"{path} was written with {what} {then}, this is {now}: its predictions may "
                                  f"differ; refit it with `lcasc baselines --run DIR --only {kind} --refit`")
    clf = saved["estimator"]
    if list(clf.classes) != list(classes):
        raise SavedModelError(f"{path}: classes {list(clf.classes)} differ from the run's {list(classes)}")
    return clf


def _load_vggish(path: Path, classes: list[str]):
    import torch

    from lcasc.models.vggish import VGGish, VGGishClassifier, _Standardized

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SavedModelError(f"{path}: cannot load it ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("kind") != "vggish":
        raise SavedModelError(f"{path}: not a saved VGGish baseline of lcasc")
    if state["classes"] != list(classes):
        raise SavedModelError(f"{path}: classes {state['classes']} differ from the run's {list(classes)}")
    net = _Standardized(VGGish(len(classes), state["original_pools"]), 0.0, 1.0)
    net.load_state_dict(state["state_dict"])
    clf = VGGishClassifier(list(classes), original_pools=state["original_pools"])
    clf.model_, clf.classes_ = net.eval(), np.arange(len(classes))
    clf.mean_, clf.std_ = float(net.mean), float(net.std)
    return clf


# --------------------------------------------------------------------------------------------------------
# the fused ensemble


def save_fused_plan(folder: str | Path, module) -> Path:
    """Write what rebuilds the :class:`lcasc.fused.FusedEnsemble` ``module`` from its members' files."""
    path = Path(folder) / FUSED_PLAN_FILE
    write_json(path, {"lcasc_version": _lcasc_version(), "members": list(module.names),
                      "threshold": module.threshold, "kept": module.kept, "plan": module.sharing_plan()})
    return path


def load_fused(folder: str | Path, models_dir: str | Path):
    """The fused ensemble saved by :func:`save_fused_plan`, its members read from ``models_dir/<member>/``."""
    from lcasc.fused import FusedEnsemble
    from lcasc.models.cnn import CNNClassifier

    path = Path(folder) / FUSED_PLAN_FILE
    saved = read_json(path)
    if saved is None:
        raise SavedModelError(f"{path}: no saved sharing plan (a run made before lcasc saved it: run "
                              f"`lcasc fuse --run DIR` again)")
    names = saved["members"]
    nets = [CNNClassifier.load(Path(models_dir) / name).net for name in names]
    try:
        return FusedEnsemble(nets, [saved["kept"][n] for n in names], None, saved["threshold"], names,
                             plan=saved["plan"])
    except (KeyError, ValueError) as e:
        raise SavedModelError(f"{path}: does not fit the members' saved networks ({e}); run `lcasc fuse` "
                              f"again") from None
