"""Mechanism-level distillation of language models."""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("circuitdistill")
except _metadata.PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    __version__ = "0+unknown"

from .distill.cka import cka
