"""Models: the paper's CNN (a spec plus a module) and, later, baselines with the same classifier calls."""

from lcasc.models.cnn import CNNSpec, LowComplexityCNN

__all__ = ["CNNSpec", "LowComplexityCNN"]
