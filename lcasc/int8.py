"""The int8 arithmetic every INT8 writer and runner shares: quantizing features to a tensor's scale and zero
point, dequantizing, and probabilities from int8 logits.

An INT8 file ends at the last dense layer's logits; probabilities are computed in float from the dequantized
logits (:func:`probabilities_from_logits`: a softmax per member, averaged over members), in evaluation, in
``lcasc predict`` and in the C bundle alike. An int8 softmax in the file would round every probability to a
multiple of 1/256, so a small true-class probability became 0 and inflated the log-loss; a float softmax
over 10 values costs nothing on a microcontroller.
"""

from __future__ import annotations

import numpy as np

# TFLite kernels for these ops only accept one output quantization (TFLM computes them wrongly, silently,
# otherwise): op name -> (scale, zero point) of the int8 output.
FIXED_INT8_OUTPUT_QPARAMS: dict[str, tuple[float, int]] = {
    "TANH": (1 / 128, 0),
    "LOGISTIC": (1 / 256, -128),
    "SOFTMAX": (1 / 256, -128),
}


def feature_batch(X: np.ndarray) -> np.ndarray:
    """(N, n_mels, n_frames) or (N, 1, n_mels, n_frames) features -> (N, n_mels, n_frames) float32."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 4 and X.shape[1] == 1:
        X = X[:, 0]
    if X.ndim != 3:
        raise ValueError(f"features must be (N, n_mels, n_frames), got shape {X.shape}")
    return X


def round_half_away(v: np.ndarray) -> np.ndarray:
    """Rounding as TFLite's quantize kernel does it (``std::round``: halves away from zero)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def quantize_int8(X: np.ndarray, scale: float, zero_point: int, block: int = 1 << 20) -> np.ndarray:
    """Float values -> int8 ``round(x / scale) + zero_point``, saturated to [-128, 127]. Computed in float64
    ``block`` values at a time: a whole TAU22 split at once took several GB of float64 temporaries."""
    X = np.asarray(X)
    flat, out = X.reshape(-1), np.empty(X.shape, np.int8)
    dst = out.reshape(-1)
    for start in range(0, flat.size, block):
        part = flat[start:start + block].astype(np.float64) / scale
        dst[start:start + block] = np.clip(round_half_away(part) + zero_point, -128, 127)
    return out


def dequantize_int8(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int8 -> float32 ``(q - zero_point) * scale``."""
    return ((np.asarray(q, np.float32) - zero_point) * scale).astype(np.float32)


def probabilities_from_logits(logits: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_members * n_classes) logits -> (N, n_classes) float32 probabilities: the softmax of each
    member's logits (computed in float64), averaged over members (the paper's equal-weight ensemble)."""
    z = np.asarray(logits, np.float64)
    if z.ndim != 2 or z.shape[1] % n_classes:
        raise ValueError(f"logits of shape {z.shape} do not hold whole members of {n_classes} classes")
    z = z.reshape(len(z), z.shape[1] // n_classes, n_classes)  # (an empty batch has no -1 to infer)
    z = np.exp(z - z.max(axis=2, keepdims=True))
    return (z / z.sum(axis=2, keepdims=True)).mean(axis=1).astype(np.float32)
