"""The version of lcasc, in a module of its own so that any module can read it without importing the package's
front door (:func:`lcasc.load`)."""

__version__ = "0.1.0"
