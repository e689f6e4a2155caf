"""The non-CNN baselines of paper section 4 (METHOD-NOTES §7) behind the classifier interface.

All four work on the time-averaged log-mel vector: (N, 40, 51) -> (N, 40). Each takes ``classes`` (list[str])
and follows scikit-learn conventions (the constructor only stores parameters; fitted attributes end in ``_``).

Hyper-parameter selection: when ``fit`` gets ``X_val``/``y_val``, one model is trained per grid value on the
training data and the one with the lowest validation log-loss (``sklearn.metrics.log_loss`` over all
``n_classes`` labels) is kept; log-loss, not accuracy, because the paper's CNN early-stops on log-loss too.
Without validation data the first grid value is used. ``best_params_`` holds the choice, ``grid_scores_``
maps each grid value to its validation log-loss (empty without validation data).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import sparse_encode
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss
from sklearn.mixture import GaussianMixture
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted


def time_average(X: np.ndarray) -> np.ndarray:
    """(N, n_mels, n_frames) log-mel -> (N, n_mels) float64 mean over time; (N, d) passes through."""
    X = np.asarray(X, dtype=np.float64)
    return X.mean(axis=2) if X.ndim == 3 else X


def full_proba(proba: np.ndarray, present: np.ndarray, n_classes: int) -> np.ndarray:
    """Spread (N, len(present)) probabilities of the classes seen in training over all ``n_classes`` columns."""
    out = np.zeros((len(proba), n_classes))
    out[:, np.asarray(present, dtype=int)] = proba
    return out


def _validation_loss(y_val: np.ndarray, proba: np.ndarray) -> float:
    return float(log_loss(y_val, proba, labels=np.arange(proba.shape[1])))


class _GridBaseline(ClassifierMixin, BaseEstimator):
    """Shared ``fit``/``predict_proba``: a model per grid value, the best on validation log-loss is kept.

    Subclasses name their grid (``_grid_param``, the constructor attribute holding the tuple) and implement
    ``_fit_one(value, V, y, val)`` and ``_proba(model, V)`` on (N, d) vectors; ``val`` is ``(V_val, y_val)``
    or None, for models that calibrate on it.
    """

    _grid_param: str = ""

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None) -> _GridBaseline:
        """Train on ``X`` (N, 40, 51) with labels ``y`` (N,) int in [0, n_classes); returns self."""
        V, y = time_average(X), np.asarray(y, dtype=int)
        self.classes_ = np.arange(len(self.classes))
        grid = list(getattr(self, self._grid_param))
        val = None if X_val is None or y_val is None else (time_average(X_val), np.asarray(y_val, dtype=int))
        if val is None:
            grid = grid[:1]
        self.grid_scores_, best = {}, None
        for value in grid:
            model = self._fit_one(value, V, y, val)
            score = 0.0
            if val is not None:
                score = self.grid_scores_[value] = _validation_loss(val[1], self._proba(model, val[0]))
            if best is None or score < best[0]:
                best = (score, value, model)
        _, value, self.model_ = best
        self.best_params_ = {self._grid_param.removesuffix("_grid"): value}
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, 40, 51) -> (N, n_classes) probabilities, rows sum to 1."""
        check_is_fitted(self, "model_")
        return self._proba(self.model_, time_average(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(N, 40, 51) -> (N,) class indices."""
        return self.predict_proba(X).argmax(axis=1)


class GMMClassifier(_GridBaseline):
    """One Gaussian mixture per class on the standardised time-averaged log-mel vector; maximum likelihood.

    ``predict_proba`` is the softmax of the per-class log-likelihoods (equal priors), i.e. the normalised
    class likelihoods. A class with fewer training vectors than components gets as many components as it has
    vectors (with a warning); a class without training data gets probability 0. ``reg_covar`` is added to
    the variances of the standardised features (unit variance overall).
    """

    _grid_param = "n_components_grid"

    def __init__(self, classes: list[str], n_components_grid: tuple[int, ...] = (5, 10, 15, 20, 30, 50),
                 covariance_type: str = "diag", reg_covar: float = 1e-3, seed: int = 0):
        self.classes = classes
        self.n_components_grid = n_components_grid
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.seed = seed

    def _fit_one(self, n_components: int, V: np.ndarray, y: np.ndarray, val=None):
        scaler = StandardScaler().fit(V)
        Z, mixtures = scaler.transform(V), []
        for c, name in enumerate(self.classes):
            Zc = Z[y == c]
            if len(Zc) == 0:
                warnings.warn(f"GMM: class {name!r} has no training data; it will never be predicted", stacklevel=3)
                mixtures.append(None)
                continue
            k = min(n_components, len(Zc))
            if k < n_components:
                warnings.warn(f"GMM: class {name!r} has only {len(Zc)} training vectors; using {k} components "
                              f"instead of {n_components}", stacklevel=3)
            if len(Zc) == 1:  # scikit-learn needs two samples; one vector gives a Gaussian of variance reg_covar
                Zc = np.repeat(Zc, 2, axis=0)
            mixtures.append(GaussianMixture(k, covariance_type=self.covariance_type, reg_covar=self.reg_covar,
                                            random_state=self.seed).fit(Zc))
        return scaler, mixtures

    def log_likelihoods(self, X: np.ndarray) -> np.ndarray:
        """(N, 40, 51) -> (N, n_classes) log-likelihood of each class's mixture (-inf for an untrained class)."""
        check_is_fitted(self, "model_")
        return self._log_likelihoods(self.model_, time_average(X))

    @staticmethod
    def _log_likelihoods(model, V: np.ndarray) -> np.ndarray:
        scaler, mixtures = model
        Z = scaler.transform(V)
        return np.stack([m.score_samples(Z) if m is not None else np.full(len(Z), -np.inf) for m in mixtures], 1)

    def _proba(self, model, V: np.ndarray) -> np.ndarray:
        return softmax(self._log_likelihoods(model, V), axis=1)  # subtracts the row maximum: stable


class RandomForestBaseline(_GridBaseline):
    """Random forest (``n_estimators`` trees) on the time-averaged log-mel vector; depth chosen on validation."""

    _grid_param = "depth_grid"

    def __init__(self, classes: list[str], depth_grid: tuple[int, ...] = (5, 20, 40, 50, 100, 200),
                 n_estimators: int = 100, seed: int = 0, n_jobs: int | None = -1):
        self.classes = classes
        self.depth_grid = depth_grid
        self.n_estimators = n_estimators
        self.seed = seed
        self.n_jobs = n_jobs

    def _fit_one(self, depth: int, V: np.ndarray, y: np.ndarray, val=None):
        return RandomForestClassifier(self.n_estimators, max_depth=depth, random_state=self.seed,
                                      n_jobs=self.n_jobs).fit(V, y)

    def _proba(self, model, V: np.ndarray) -> np.ndarray:
        return full_proba(model.predict_proba(V), model.classes_, len(self.classes))


class MLPBaseline(ClassifierMixin, BaseEstimator):
    """Standardised time-averaged log-mel -> dense 100 (tanh) -> dense 50 (tanh) -> softmax (paper section 4).

    scikit-learn's ``MLPClassifier`` (Adam), trained one epoch at a time with ``partial_fit`` so that it
    early-stops on the *given* validation split: the epoch with the lowest validation log-loss is kept, and
    training stops after ``patience`` epochs without improvement. Without validation data the training loss
    is monitored instead. ``best_params_ = {"epochs": k}``; ``grid_scores_`` maps each epoch to its
    validation log-loss. The output always has ``n_classes`` columns, also when a class is absent in training
    (its output unit is then only ever pushed down, so its probability is small but not zero).
    """

    def __init__(self, classes: list[str], hidden: tuple[int, ...] = (100, 50), activation: str = "tanh",
                 max_iter: int = 200, patience: int = 10, lr: float = 1e-3, alpha: float = 1e-4,
                 batch_size: int = 200, seed: int = 0):
        self.classes = classes
        self.hidden = hidden
        self.activation = activation
        self.max_iter = max_iter
        self.patience = patience
        self.lr = lr
        self.alpha = alpha
        self.batch_size = batch_size
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None) -> MLPBaseline:
        """Train on ``X`` (N, 40, 51) with labels ``y`` (N,) int; returns self."""
        V, y = time_average(X), np.asarray(y, dtype=int)
        self.classes_ = np.arange(len(self.classes))
        scaler = StandardScaler().fit(V)
        Z = scaler.transform(V)
        Z_val = scaler.transform(time_average(X_val)) if X_val is not None and y_val is not None else None
        mlp = MLPClassifier(self.hidden, activation=self.activation, alpha=self.alpha,
                            batch_size=min(self.batch_size, len(Z)), learning_rate_init=self.lr, random_state=self.seed)
        self.grid_scores_, best, best_mlp, bad = {}, np.inf, None, 0
        for epoch in range(1, self.max_iter + 1):
            mlp.partial_fit(Z, y, classes=self.classes_)
            if Z_val is not None:
                loss = self.grid_scores_[epoch] = _validation_loss(y_val, mlp.predict_proba(Z_val))
            else:
                loss = mlp.loss_
            if loss < best:
                best, best_mlp, bad, self.best_params_ = loss, copy.deepcopy(mlp), 0, {"epochs": epoch}
            else:
                bad += 1
                if bad >= self.patience:
                    break
        self.model_ = Pipeline([("scale", scaler), ("mlp", best_mlp)])
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, 40, 51) -> (N, n_classes) probabilities, rows sum to 1."""
        check_is_fitted(self, "model_")
        return full_proba(self.model_.predict_proba(time_average(X)), self.model_.classes_, len(self.classes))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(N, 40, 51) -> (N,) class indices."""
        return self.predict_proba(X).argmax(axis=1)


class DLSIClassifier(_GridBaseline):
    """Dictionary Learning with Structured Incoherence and shared features.

    I. Ramirez, P. Sprechmann, G. Sapiro, "Classification and clustering via dictionary learning with
    structured incoherence and shared features", CVPR 2010. No maintained library implements it; this is a
    compact re-implementation on the standardised time-averaged log-mel vectors x (d = 40).

    Training minimises, over one dictionary D_c (d x k, unit-norm atoms) and codes A_c per class,

        sum_c 1/N_c (0.5 ||X_c - D_c A_c||_F^2 + lambda_ ||A_c||_1) + eta/2 sum_{c != c'} ||D_c^T D_c'||_F^2

    (the data terms are averaged over each class's N_c vectors so that ``eta`` does not depend on the data
    size), alternating ``n_iter`` times: sparse coding (``sklearn.decomposition.sparse_encode``, lasso) and a
    block-coordinate update of each atom, which has a closed form: with R the class residual without atom d
    and a its codes, (||a||^2 I + 2 eta N_c Q Q^T) d = R a^T, then d / ||d|| (Q: the other classes' atoms).
    An unused atom is restarted on the class's worst-reconstructed vector.

    Shared features: afterwards, pairs of atoms of different classes with |<d_i, d_j>| > ``share_threshold``
    are removed from their class dictionaries and their (sign-aligned) mean joins a shared dictionary D_0
    (a class keeps at least one atom). Classification codes x over [D_c, D_0] for every class c, so the
    shared atoms serve all classes alike and carry no class evidence, and picks the class with the smallest
    residual r_c = ||x - [D_c, D_0] a||^2. ``predict_proba`` = softmax(-r / T): T minimises the validation
    log-loss when validation data is given, otherwise T = median training residual of the true class
    (the search starts from the median validation residual of the true class).

    Cost: sparse coding dominates (about 0.15 ms per vector and dictionary on one core); ``n_jobs`` spreads it
    over processes (``sparse_encode``'s joblib chunks).
    """

    _grid_param = "atoms_grid"

    def __init__(self, classes: list[str], atoms_grid: tuple[int, ...] = (5, 10, 15, 20, 40), eta: float = 0.1,
                 lambda_: float = 0.1, n_iter: int = 15, share_threshold: float = 0.95, seed: int = 0,
                 n_jobs: int | None = None):
        self.classes = classes
        self.atoms_grid = atoms_grid
        self.eta = eta
        self.lambda_ = lambda_
        self.n_iter = n_iter
        self.share_threshold = share_threshold
        self.seed = seed
        self.n_jobs = n_jobs

    def _encode(self, Z: np.ndarray, D: np.ndarray) -> np.ndarray:
        """(N, d) vectors, (d, k) dictionary -> (N, k) lasso codes of 0.5||z - D a||^2 + lambda_ ||a||_1."""
        with warnings.catch_warnings():  # coordinate descent's per-vector tolerance is tiny; codes are fine
            warnings.simplefilter("ignore", ConvergenceWarning)
            return sparse_encode(Z, D.T, algorithm="lasso_cd", alpha=self.lambda_, n_jobs=self.n_jobs)

    def _fit_one(self, n_atoms: int, V: np.ndarray, y: np.ndarray, val=None) -> dict:
        scaler = StandardScaler().fit(V)
        Z = scaler.transform(V)
        groups = [Z[y == c] for c in range(len(self.classes))]
        dicts, shared = self._split_shared(self._learn(groups, n_atoms))
        model = {"scaler": scaler, "dicts": dicts, "shared": shared, "seen": np.array([len(g) > 0 for g in groups]),
                 "T": 1.0}
        V_ref, y_ref = val if val is not None else (V, y)  # T starts at the median true-class residual
        r = self._residuals(model, V_ref)
        own = r[np.arange(len(y_ref)), y_ref]
        model["T"] = max(float(np.median(own[np.isfinite(own)])), 1e-12)
        if val is not None:  # then T minimises the validation log-loss, searched on a log scale
            labels = np.arange(len(self.classes))

            def loss(log_t: float) -> float:
                return log_loss(y_ref, softmax(-r / np.exp(log_t), axis=1), labels=labels)

            s0 = np.log(model["T"])
            model["T"] = float(np.exp(minimize_scalar(loss, bounds=(s0 - 8, s0 + 8), method="bounded").x))
        return model

    def _learn(self, groups: list[np.ndarray], n_atoms: int) -> list[np.ndarray]:
        """Alternate sparse coding and incoherent atom updates; groups[c] is (N_c, d) -> list of (d, k)."""
        rng = np.random.default_rng(self.seed)
        d = groups[0].shape[1]
        dicts = []
        for Zc in groups:  # initial atoms: random vectors of the class (Gaussian if it has too few)
            D = Zc[rng.choice(len(Zc), n_atoms, replace=False)].T if len(Zc) >= n_atoms else \
                rng.normal(size=(d, n_atoms))
            dicts.append(D / np.maximum(np.linalg.norm(D, axis=0), 1e-12))
        for _ in range(self.n_iter):
            for c, Zc in enumerate(groups):
                if len(Zc) == 0:
                    continue
                D = dicts[c]
                A = self._encode(Zc, D).T  # (k, N_c)
                Q = np.hstack([dicts[o] for o in range(len(dicts)) if o != c and len(groups[o])] or [np.zeros((d, 0))])
                QQ = 2 * self.eta * len(Zc) * Q @ Q.T
                R = Zc.T - D @ A
                for j in range(n_atoms):
                    a = A[j]
                    R += np.outer(D[:, j], a)
                    if a.any():
                        new = np.linalg.solve(a @ a * np.eye(d) + QQ, R @ a)
                    else:  # unused: restart on the worst-reconstructed vector
                        new = R[:, np.argmax((R ** 2).sum(axis=0))].copy()
                    D[:, j] = new / max(np.linalg.norm(new), 1e-12)
                    R -= np.outer(D[:, j], a)
        return dicts

    def _split_shared(self, dicts: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """Move nearly identical atoms of different classes into a shared (d, m) dictionary."""
        keep = [np.ones(D.shape[1], bool) for D in dicts]
        shared = []
        for c in range(len(dicts)):
            for o in range(c + 1, len(dicts)):
                G = dicts[c].T @ dicts[o]
                for i, j in zip(*np.nonzero(np.abs(G) > self.share_threshold)):
                    if keep[c][i] and keep[o][j] and keep[c].sum() > 1 and keep[o].sum() > 1:
                        keep[c][i] = keep[o][j] = False
                        atom = dicts[c][:, i] + np.sign(G[i, j]) * dicts[o][:, j]
                        shared.append(atom / np.linalg.norm(atom))
        d = dicts[0].shape[0]
        return [D[:, k] for D, k in zip(dicts, keep)], np.array(shared).T if shared else np.zeros((d, 0))

    def _residuals(self, model: dict, V: np.ndarray) -> np.ndarray:
        """(N, d) vectors -> (N, n_classes) squared reconstruction errors with [D_c, D_0]."""
        Z = model["scaler"].transform(V)
        out = np.full((len(Z), len(model["dicts"])), np.inf)  # a class without training data never wins
        for c in np.flatnonzero(model["seen"]):
            full = np.hstack([model["dicts"][c], model["shared"]])
            out[:, c] = ((Z - self._encode(Z, full) @ full.T) ** 2).sum(axis=1)
        return out

    def residuals(self, X: np.ndarray) -> np.ndarray:
        """(N, 40, 51) -> (N, n_classes) reconstruction error of each class dictionary (smallest wins)."""
        check_is_fitted(self, "model_")
        return self._residuals(self.model_, time_average(X))

    def _proba(self, model: dict, V: np.ndarray) -> np.ndarray:
        return softmax(-self._residuals(model, V) / model["T"], axis=1)
