"""The paper's low-complexity CNN (Table 1), described by a small spec that round-trips through JSON.

Input: (N, 1, 40, 51) float32 log-mel (or (N, 40, 51), a channel axis is added).
C1 conv + BN + act -> C2 conv + BN + act -> P1 avg-pool 5x5 -> C3 conv + BN + act -> P2 avg-pool (4, 10)
-> flatten (channel-major) -> dense + act -> dense n_classes (logits; softmax lives in the loss and in
``predict_proba``).
The layer sequence and which layer consumes which channels are described once, in :mod:`lcasc.models.graph`;
the module is built and run from that description.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from lcasc.models import graph

ACTIVATIONS = {"T": nn.Tanh, "R": nn.ReLU}


@dataclass(frozen=True)
class CNNSpec:
    """Everything needed to rebuild a :class:`LowComplexityCNN`; pruned networks are other specs.

    ``activations`` has one letter per layer C1, C2, C3, dense: ``T`` (tanh) or ``R`` (ReLU).
    """

    c1: int = 16
    c2: int = 16
    c3: int = 32
    dense: int = 100
    kernel_size: int = 3
    activations: str = "TRTT"
    n_classes: int = 10
    n_mels: int = 40
    n_frames: int = 51
    pool1: tuple[int, int] = (5, 5)
    pool2: tuple[int, int] = (4, 10)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if len(self.activations) != 4 or set(self.activations) - set(ACTIVATIONS):
            raise ValueError(f"activations must be 4 letters from T/R (C1 C2 C3 dense), got {self.activations!r}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {self.kernel_size}")
        for name in graph.HIDDEN_WIDTHS:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        object.__setattr__(self, "pool1", tuple(self.pool1))
        object.__setattr__(self, "pool2", tuple(self.pool2))

    @property
    def widths(self) -> str:
        """Widths as the paper writes them: ``f1-f2-f3-dense``."""
        return "-".join(str(getattr(self, name)) for name in graph.HIDDEN_WIDTHS)

    @classmethod
    def from_widths(cls, widths: str, **kwargs) -> CNNSpec:
        """``"16-16-32-100"`` -> spec (other fields from ``kwargs`` or the paper's defaults)."""
        try:
            values = [int(v) for v in widths.split("-")]
        except ValueError:
            values = []
        if len(values) != len(graph.HIDDEN_WIDTHS):
            raise ValueError(f"widths must look like 16-16-32-100, got {widths!r}")
        return cls(**dict(zip(graph.HIDDEN_WIDTHS, values)), **kwargs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pool1"], d["pool2"] = list(self.pool1), list(self.pool2)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CNNSpec:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class LowComplexityCNN(nn.Module):
    """Paper Table 1 network. Defaults reproduce the 16-16-32-100 network (14,886 parameters)."""

    def __init__(self, c1: int = 16, c2: int = 16, c3: int = 32, dense: int = 100, kernel_size: int = 3,
                 activations: str = "TRTT", n_classes: int = 10, *, spec: CNNSpec | None = None):
        super().__init__()
        if spec is None:
            spec = CNNSpec(c1=c1, c2=c2, c3=c3, dense=dense, kernel_size=kernel_size,
                           activations=activations, n_classes=n_classes)
        self.spec = spec
        for node in graph.nodes(spec):  # in the family's order, so initial weights follow the seed as before
            if node.attr is not None:
                setattr(self, node.attr, _torch_layer(node))

    @classmethod
    def from_spec(cls, spec: CNNSpec) -> LowComplexityCNN:
        return cls(spec=spec)

    @staticmethod
    def pooled_shape(spec: CNNSpec) -> tuple[int, int]:
        """Height and width of the map after P2 (2 x 1 for the 40 x 51 input)."""
        return graph.flattened_map(spec)[1:]

    def conv_blocks(self) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
        """The three convolution layers by their paper names, with their BatchNorm."""
        return [(b.conv.name, getattr(self, b.conv.attr), getattr(self, b.bn.attr)) for b in graph.conv_blocks()]

    def _run(self, attrs: tuple[str | None, ...], x: torch.Tensor) -> torch.Tensor:
        for attr in attrs:
            x = torch.flatten(x, 1) if attr is None else getattr(self, attr)(x)
        return x

    def features(self, x: torch.Tensor, upto: str = "C3") -> torch.Tensor:
        """Feature maps after the activation of layer ``upto`` (C1, C2 or C3), before pooling."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if upto not in _FEATURE_ATTRS:
            graph.conv_block(upto)  # raises the ValueError naming the layers
        return self._run(_FEATURE_ATTRS[upto], x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 40, 51) or (N, 40, 51) log-mel -> (N, n_classes) logits."""
        # the flatten is channel-major, as METHOD-NOTES §5.4 assumes
        return self._run(_HEAD_ATTRS, self.features(x, graph.CONVS[-1]))


# The module attributes run for the feature maps of each conv layer and for the head (None: the flatten), as
# plain strings so that torch.compile traces the forward pass without a graph break.
_FEATURE_ATTRS = {name: tuple(layer.attr for layer in graph.upto(name)) for name in graph.CONVS}
_HEAD_ATTRS = tuple(layer.attr for layer in graph.head())


def _torch_layer(node: graph.Node) -> nn.Module:
    """The PyTorch module of one layer of the family ('same' padding for the odd conv kernels)."""
    if node.kind == "conv":
        k = node.window[0]
        return nn.Conv2d(node.in_shape[0], node.out_shape[0], k, padding=k // 2)
    if node.kind == "bn":
        return nn.BatchNorm2d(node.out_shape[0])
    if node.kind == "act":
        return ACTIVATIONS[node.activation]()
    if node.kind == "pool":
        return nn.AvgPool2d(node.window)
    if node.kind == "dense":
        return nn.Linear(node.in_shape[0], node.out_shape[0])
    raise ValueError(f"no module for a {node.kind} layer")


class CNNClassifier:
    """A :class:`LowComplexityCNN` behind the classifier interface, with its class order; saves to a folder.

    ``fit`` trains with :func:`lcasc.train.fit` (early stopping on ``X_val``), keeping checkpoints in
    ``workdir`` so an interrupted fit resumes. ``net`` may be given to start from existing weights
    (fine-tuning a pruned network).
    """

    def __init__(self, classes: list[str], spec: CNNSpec | None = None, net: LowComplexityCNN | None = None,
                 train_config=None, workdir=None):
        self.classes = list(classes)
        self.spec = net.spec if net is not None else (spec or CNNSpec(n_classes=len(self.classes)))
        if self.spec.n_classes != len(self.classes):
            raise ValueError(f"spec has {self.spec.n_classes} outputs but there are {len(self.classes)} classes")
        self.net = net
        self.train_config, self.workdir, self.history = train_config, workdir, []

    def fit(self, X, y, X_val=None, y_val=None, teacher_logits=None, impulse=None) -> CNNClassifier:
        import tempfile

        from lcasc.train import TrainConfig, fit

        if X_val is None:
            raise ValueError("the CNN needs validation features for early stopping")
        config = self.train_config or TrainConfig()
        if self.net is None:  # initial weights follow the seed too
            torch.manual_seed(config.seed)
            self.net = LowComplexityCNN.from_spec(self.spec)
        if self.workdir:  # checkpoints kept there (training resumes from them)
            self.net, self.history = fit(self.net, X, y, X_val, y_val, config, self.workdir, teacher_logits, impulse)
            return self
        with tempfile.TemporaryDirectory(prefix="lcasc-train-") as workdir:  # no folder given: nothing left behind
            self.net, self.history = fit(self.net, X, y, X_val, y_val, config, workdir, teacher_logits, impulse)
        return self

    def predict_proba(self, X):
        from lcasc.train import predict_logits

        if self.net is None:
            raise RuntimeError("predict_proba before fit: train the classifier or load a saved one")
        return torch.softmax(torch.from_numpy(predict_logits(self.net, X)), dim=1).numpy()

    def save(self, folder) -> None:
        """Write ``model.pt`` (spec, classes, weights) and a readable ``spec.json`` into ``folder``."""
        from pathlib import Path

        from lcasc.io import atomic_path, write_json

        folder = Path(folder)
        write_json(folder / "spec.json", {"spec": self.spec.to_dict(), "widths": self.spec.widths,
                                          "classes": self.classes})
        # Saved through memory so that the archive's inner name is fixed ("archive", not the temporary file's
        # random name): the same network gives the same bytes.
        buffer = io.BytesIO()
        torch.save({"spec": self.spec.to_dict(), "classes": self.classes, "state_dict": self.net.state_dict()},
                   buffer)
        with atomic_path(folder / "model.pt") as tmp:
            Path(tmp).write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, folder) -> CNNClassifier:
        from pathlib import Path

        path = Path(folder) / "model.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no trained model here (run `lcasc train` first)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = LowComplexityCNN.from_spec(CNNSpec.from_dict(state["spec"]))
        net.load_state_dict(state["state_dict"])
        return cls(state["classes"], net=net.eval())
