"""The package's version: the one place it is written (``pyproject.toml`` and ``scnet.__version__`` read it).

A module of its own, below every other, so that any module can name the version without importing the package.
"""
__version__ = "0.2.0"
