"""Discovery methods by name, and the one contract every method keeps.

A method takes the hooked model, the task items and the ``DiscoverConfig`` (metric, positions, ablation, batch
sizes, seed and its own options) and returns ``HeadScores``. Sign and normalisation are the method's job and
are the same for every method: a head's score is the relative change of the mean metric when that head's output
is replaced, ``(M_replaced - M_clean) / |M_clean|``. The metrics grow with a better answer, so a negative score
means the head helps; importance is ``|score|``; NaN means not measured (never selected).

A new method is one new file under ``circuits/discovery_methods/`` (copy ``activation.py``) that defines a
``DiscoveryMethod`` subclass and calls ``register_method``; every module there is imported on the first lookup.
A method can also be registered from anywhere else (a test, a script) before the lookup.
"""
from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..models.hooks import HookedLM
from ..tasks.schema import TaskItem
from . import discovery_methods  # empty package: its modules are imported on the first lookup
from .circuit import CircuitGroup

if TYPE_CHECKING:  # annotation only: discover.py imports this module to validate its method names
    from .discover import DiscoverConfig


@dataclass
class HeadScores:
    """A discovery method's result."""

    scores: torch.Tensor  # [n_layers, n_heads]: signed relative effect (module docstring); NaN: not measured
    baseline: dict[str, float]  # the mean metric of the reference runs: "clean", optionally "corrupted"
    own_selection: bool = False  # the method picked the heads itself: every non-NaN score is in the circuit and
    #                              --top-n / --threshold do not apply (path patching)
    groups: list[CircuitGroup] = field(default_factory=list)  # how the method grouped the heads it picked
    grid: torch.Tensor | None = None  # the grid circuit.json shows when it is not ``scores`` (path: level 0)
    selection: dict[str, Any] = field(default_factory=dict)  # more entries for circuit.json's "selection"


class DiscoveryMethod(ABC):
    name: str
    flags: frozenset[str] = frozenset()  # the method-only boolean/count options of DiscoverConfig it accepts
    needs_gradients: bool = False  # True: --metric must be differentiable (logprob or logit_diff)
    ablations: tuple[str, ...] = ("corrupted", "mean", "zero", "resample")  # the --ablation values it supports

    def check(self, cfg: "DiscoverConfig") -> None:
        """Raise ValueError for an option combination this method cannot honour (called by DiscoverConfig)."""

    @abstractmethod
    def run(self, hooked: HookedLM, items: Sequence[TaskItem], cfg: "DiscoverConfig", ablation: str,
            progress: bool) -> HeadScores:
        """Score every head (``ablation`` is resolved: never None)."""


_METHODS: dict[str, DiscoveryMethod] = {}
_loaded = {"builtins": False}


def register_method(method: DiscoveryMethod) -> DiscoveryMethod:
    """Make ``method`` available as ``--method method.name`` (replacing a method of that name)."""
    _METHODS[method.name] = method
    return method


def _load_builtins() -> None:
    if _loaded["builtins"]:
        return
    _loaded["builtins"] = True
    for info in sorted(pkgutil.iter_modules(discovery_methods.__path__), key=lambda m: m.name):
        importlib.import_module(f"{discovery_methods.__name__}.{info.name}")


def method_names() -> list[str]:
    _load_builtins()
    return list(_METHODS)


def get_method(name: str) -> DiscoveryMethod:
    _load_builtins()
    if name not in _METHODS:
        raise ValueError(f"unknown discovery method {name!r}; choose from {', '.join(_METHODS)}")
    return _METHODS[name]
