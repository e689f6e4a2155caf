"""lcasc: low-complexity acoustic scene classification within DCASE limits.

Real audio -> DCASE 2022 log-mel (40 x 51 per second) -> the low-complexity CNN of the paper ->
similarity-based filter pruning -> INT8 -> ensembles, with parameters, MACs and size counted throughout.
"""

from lcasc._version import __version__

__all__ = ["__version__", "load"]


def load(run_dir, model=None, ensemble=None, backend="auto"):
    """A predictor for a run directory: ``lcasc.load("runs/default").predict("clip.wav")``.

    ``model``: any name of the run's results.json (network, ``NAME_int8``, baseline, ensemble), run as the
    run evaluated it; ``ensemble``: an ensemble name; neither: the network with the lowest validation
    log-loss.

    ``backend``: ``"auto"`` (ONNX Runtime when the run has the network's ONNX file, else PyTorch), ``"torch"``,
    ``"onnx"`` or ``"tflite"`` (the INT8 file in TensorFlow Lite Micro)."""
    from lcasc.predict import load as _load

    return _load(run_dir, model, ensemble, backend)
