"""VGGish trained end-to-end on the 40 x 51 log-mel input (paper section 4, METHOD-NOTES §7).

Convolution stack as METHOD-NOTES lists it: conv 64 -> conv 128 -> pool -> conv 256 x2 -> pool -> conv 512 x2
-> pool (3x3 convolutions with padding 1 and ReLU, 2x2 max-pooling), then global average pooling, dense 128
(ReLU), dense n_classes. The original VGGish also pools after the first convolution; ``original_pools=True``
restores that. Pooling rounds up (``ceil_mode``), as TensorFlow's 'SAME' pooling in the original does, so
the odd frame count loses nothing. ``lcasc.complexity.count`` on (1, 1, 40, 51): 4,566,666 parameters and
1,072.3 M MACs (METHOD-NOTES: about 4.5 M and 1,077 M; rounding down would give 1,019 M MACs);
``original_pools=True``: 278.7 M MACs.

Layer names follow the PyTorch port harritaylor/torchvggish (``torchvggish/vggish.py``: ``features`` is a
Sequential of Conv2d/ReLU/MaxPool2d with the convolutions at indices 0, 3, 6, 8, 11, 13); here index 2 is
the first pool, or an Identity when it is left out, so ``features.*`` keys and shapes are the port's and
:func:`load_vggish_weights` loads its convolutions from the port's ``.pth`` file (e.g. ``vggish-10086976.pth``).
The port takes examples as (N, 1, frames, mel bands), time on the height axis, so ``forward`` swaps our
(mel, frame) axes to give the pretrained kernels the orientation they were trained on. (The original was
trained on 64-band log(mel + 0.01) at 16 kHz; our 40-band features differ, so pretrained weights are only an
initialisation.)
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(2, 2, ceil_mode=True)


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]


class VGGish(nn.Module):
    """(N, 1, 40, 51) or (N, 40, 51) log-mel -> (N, n_classes) logits."""

    def __init__(self, n_classes: int = 10, original_pools: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            *_conv(1, 64), _pool() if original_pools else nn.Identity(),  # 0, 1, 2
            *_conv(64, 128), _pool(),  # 3, 4, 5
            *_conv(128, 256), *_conv(256, 256), _pool(),  # 6-10
            *_conv(256, 512), *_conv(512, 512), _pool(),  # 11-15
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(512, 128), nn.ReLU(inplace=True), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = self.features(x.transpose(2, 3))  # (N, 1, mels, frames) -> (N, 1, frames, mels) as in the port
        return self.classifier(torch.flatten(self.pool(x), 1))


def load_vggish_weights(model: VGGish, path: str | Path) -> list[str]:
    """Copy the convolution weights of a harritaylor/torchvggish state dict file into ``model``.

    Only the ``features.*`` tensors are read (the port's ``embeddings.*`` and PCA tensors are ignored); every
    one the model has must be present with the same shape, otherwise ``ValueError`` names the file and key.
    Returns the keys loaded.
    """
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    own = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    for key, tensor in own.items():
        if key not in state:
            raise ValueError(f"{path}: no {key!r} in this file; is it a torchvggish state dict?")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ValueError(f"{path}: {key!r} has shape {tuple(state[key].shape)}, "
                             f"the model needs {tuple(tensor.shape)}")
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key])
    return list(own)


class _Standardized(nn.Module):
    """``net((x - mean) / std)``: VGGish has no BatchNorm, so inputs are standardised in front of it."""

    def __init__(self, net: nn.Module, mean: float, std: float):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _start_over_unless_same(workdir: Path, settings: dict) -> None:
    """Resume a training in ``workdir`` only when it was started with the same ``settings``: a refit with
    other weights (or epochs, seed...) must not continue the old checkpoint under the new name."""
    from lcasc.io import read_json, write_json

    path = workdir / "settings.json"
    if read_json(path) != settings:
        for name in ("last.ckpt", "best.ckpt", "train_log.csv"):
            (workdir / name).unlink(missing_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(path, settings)


class VGGishClassifier(ClassifierMixin, BaseEstimator):
    """:class:`VGGish` behind the classifier interface, trained end-to-end.

    Trained by :func:`lcasc.train.fit`, the recipe of the CNN: Adam + cross-entropy, early stopping on the
    validation log-loss with ``patience``, the best epoch's weights kept (without validation data the
    training data stand in for it). Inputs are standardised with the training set's global mean and standard
    deviation (VGGish has no BatchNorm). ``weights_path``: a torchvggish ``.pth`` file whose convolutions
    initialise the network; ``pretrained`` says whether one was used. Runs on CUDA when available.
    ``history_`` lists (epoch, train loss, validation log-loss), epochs counted from 1.
    """

    def __init__(self, classes: list[str], weights_path: str | Path | None = None, max_epochs: int = 50,
                 patience: int = 5, seed: int = 0, batch_size: int = 64, lr: float = 1e-3,
                 original_pools: bool = False, workdir: str | Path | None = None):
        self.classes = classes
        self.weights_path = weights_path
        self.max_epochs = max_epochs
        self.patience = patience
        self.seed = seed
        self.batch_size = batch_size
        self.lr = lr
        self.original_pools = original_pools
        self.workdir = workdir

    @property
    def pretrained(self) -> bool:
        """True when the convolutions start from published VGGish weights."""
        return self.weights_path is not None

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None) -> VGGishClassifier:
        """Train on ``X`` (N, 40, 51) float32 with labels ``y`` (N,) int; returns self."""
        from lcasc.train import TrainConfig, fit

        torch.manual_seed(self.seed)
        self.classes_ = np.arange(len(self.classes))
        net = VGGish(len(self.classes), self.original_pools)
        if self.weights_path is not None:
            load_vggish_weights(net, self.weights_path)
        self.mean_, self.std_ = float(np.mean(X)), float(np.std(X)) or 1.0
        if X_val is None or y_val is None:
            X_val, y_val = X, y
        config = TrainConfig(max_epochs=self.max_epochs, patience=self.patience, batch_size=self.batch_size,
                             lr=self.lr, seed=self.seed, progress=False)
        with contextlib.ExitStack() as stack:  # without a workdir, checkpoints go to a folder removed after
            workdir = Path(self.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="lcasc-vggish-")))
            _start_over_unless_same(workdir, {**self.get_params(), "classes": list(self.classes), "workdir": None,
                                              "weights_path": None if self.weights_path is None
                                              else str(self.weights_path), "n_train": len(X)})
            self.model_, history = fit(_Standardized(net, self.mean_, self.std_), X, y, X_val, y_val, config, workdir)
        self.history_ = [(h["epoch"] + 1, h["train_loss"], h["val_log_loss"]) for h in history]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, 40, 51) float32 -> (N, n_classes) probabilities, rows sum to 1."""
        from lcasc.train import predict_logits

        check_is_fitted(self, "model_")
        logits = torch.from_numpy(predict_logits(self.model_, X, batch_size=256))
        return torch.softmax(logits.double(), 1).numpy()  # float64: rows sum to 1 to sklearn's tolerance

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(N, 40, 51) -> (N,) class indices."""
        return self.predict_proba(X).argmax(axis=1)
