"""The test suite (fixtures in conftest.py)."""

import os

# Idle OpenMP threads sleep instead of spinning, in the test processes and every process they start. Set here,
# before conftest.py and the tests import PyTorch (which reads it when it loads OpenMP). The test workers share
# the cores: a thread spinning on a core another process needs wastes several times the CPU of the work
# (measured on the shared machine: 40 Adam steps with 2 threads, 25 s of CPU spinning, 4 s sleeping). The
# results are the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
