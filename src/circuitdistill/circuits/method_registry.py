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

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Sequence

import torch
from pydantic import AfterValidator

from ..models.hooks import HookedLM
from ..plugins import Plugins
from ..tasks.schema import TaskItem
from .circuit import CircuitGroup

if TYPE_CHECKING:  # annotation only: discover.py imports this module to validate its method names
    from .discover import DiscoverConfig


@dataclass
class HeadScores:
    """A discovery method's result."""

    scores: torch.Tensor  # [n_layers, n_heads]: signed relative effect (module docstring); NaN: not measured
    baseline: dict[str, float]  # the mean metric of the reference runs: "clean", optionally "corrupted"
    own_selection: bool = False  # the method picked the heads itself: every non-NaN score is in the circuit and
    #                              --circuit-size / --threshold do not apply (path patching)
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


METHODS: Plugins[DiscoveryMethod] = Plugins("discovery method", "circuitdistill.circuits.discovery_methods")
register_method, get_method, method_names = METHODS.register, METHODS.get, METHODS.names
MethodName = Annotated[str, AfterValidator(METHODS.check_name)]  # a config field holding a registered method's name
