"""Parameters, MACs and INT8 size of a network, with the conventions of METHOD-NOTES §4.

Everything is measured from the module itself: one forward pass on a dummy input with hooks on the
leaf layers, so a pruned, fused or entirely different network is counted the same way.

- params: Keras total, i.e. every trainable parameter plus BatchNorm's moving mean and variance.
- MACs (NeSsi): conv = out_h*out_w*out_c*k_h*k_w*in_c/groups; dense = in*out; pooling = outputs*window;
  bias, BatchNorm and activations are free. A layer that runs once counts once (shared maps in a fused
  ensemble are counted once).
- size: bytes of the constant tensors of a TFLite dynamic-range INT8 file: BatchNorm folded into the
  preceding convolution, tensors with >= 1024 elements stored as int8, smaller ones as float32, plus 8
  bytes for the reshape shape. Reported in KB = bytes / 1000.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

DCASE_MAX_PARAMS = 128_000
DCASE_MAX_MACS = 30_000_000
INT8_MIN_ELEMENTS = 1024  # the TFLite converter quantizes only tensors at least this large
RESHAPE_BYTES = 8


@dataclass
class Complexity:
    params: int
    macs: int
    size_bytes: int
    members: list[Complexity] = field(default_factory=list)

    @property
    def size_kb(self) -> float:
        """KB with two decimals; an ensemble's is the sum of its members' (as paper Table 3 adds its rows)."""
        if self.members:
            return round(sum(m.size_kb for m in self.members), 2)
        return round(self.size_bytes / 1000, 2)

    @property
    def within_dcase_limits(self) -> bool:
        return self.params <= DCASE_MAX_PARAMS and self.macs <= DCASE_MAX_MACS

    def to_dict(self) -> dict:
        d = {"params": self.params, "macs": self.macs, "size_kb": self.size_kb,
             "within_dcase_limits": self.within_dcase_limits}
        if self.members:
            d["members"] = [m.to_dict() for m in self.members]
        return d


def _tensor_bytes(numel: int) -> int:
    return numel if numel >= INT8_MIN_ELEMENTS else 4 * numel


def _window(kernel) -> int:
    k = kernel if isinstance(kernel, (tuple, list)) else (kernel, kernel)
    out = 1
    for v in k:
        out *= v
    return out


def count(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 40, 51)) -> Complexity:
    """Complexity of ``model`` for one input of ``input_shape`` (batch of 1: one second of audio)."""
    macs = 0
    size = RESHAPE_BYTES

    def hook(module, inputs, output):
        nonlocal macs, size
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs += output[0].numel() * kh * kw * module.in_channels // module.groups
            size += _tensor_bytes(module.weight.numel()) + 4 * module.out_channels  # bias (BN folded in)
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features
            size += _tensor_bytes(module.weight.numel()) + 4 * module.out_features
        elif isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
            macs += output[0].numel() * _window(module.kernel_size)
        elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            macs += inputs[0][0].numel()  # every input value is read once into its window

    handles = [m.register_forward_hook(hook) for m in model.modules() if len(list(m.children())) == 0]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    params += sum(m.running_mean.numel() + m.running_var.numel() for m in model.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None)
    return Complexity(params=params, macs=macs, size_bytes=size)


def of_spec(spec) -> Complexity:
    """Complexity of the :class:`~lcasc.models.cnn.LowComplexityCNN` a spec describes."""
    from lcasc.models.cnn import LowComplexityCNN

    return count(LowComplexityCNN.from_spec(spec), (1, 1, spec.n_mels, spec.n_frames))


def total(members: list[Complexity]) -> Complexity:
    """An ensemble runs every member: the sums, with the members kept for the report."""
    return Complexity(params=sum(m.params for m in members), macs=sum(m.macs for m in members),
                      size_bytes=sum(m.size_bytes for m in members), members=list(members))
