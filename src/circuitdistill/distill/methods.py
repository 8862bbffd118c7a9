"""Training methods as weighted lists of loss terms: one table row per method.

A method names the loss terms it sums (each with a weight: a number or the DistillConfig field holding it),
which parameters it trains (all, or only the matched student heads) and which teacher partners its pair terms
use (the aligned pairing, or the random control). Adding a method is adding a row; adding a term is one class
in ``losses/terms.py`` registered in ``TERMS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .losses.terms import TERMS


@dataclass(frozen=True)
class Method:
    name: str
    terms: tuple[tuple[str, str | float], ...]
    trains: Literal["all", "heads"]
    partners: Literal["aligned", "random"] | None
    description: str


_ROWS = (
    Method("full-kd", (("ce", 1.0),), "all", None, "all parameters, CE on the teacher's labels"),
    Method("logit-kd", (("kd", 1.0), ("ce", "kd_ce_weight")), "all", None,
           "all parameters, Hinton KL to the teacher's logits (+ kd_ce_weight * CE)"),
    Method("circuit-ce", (("ce", 1.0),), "heads", "aligned", "matched student heads only, CE"),
    Method("circuit-align", (("cka", "lam"),), "heads", "aligned", "matched heads only, CKA alignment only"),
    Method("circuit-random", (("ce", 1.0), ("cka", "lam")), "heads", "random",
           "control: matched heads, CE + CKA to RANDOM teacher circuit heads with the pairing's many-to-one structure"),
    Method("circuit", (("ce", 1.0), ("cka", "lam")), "heads", "aligned",
           "matched heads, CE + lambda * (1 - CKA) over the aligned pairs (the paper's method)"),
    Method("circuit-procrustes", (("ce", 1.0), ("procrustes", "lam")), "heads", "aligned",
           "matched heads, CE + lambda * orthogonal-Procrustes distance over the aligned pairs"),
    Method("circuit-iit", (("ce", 1.0), ("iit", "iit_weight")), "heads", "aligned",
           "matched heads, CE + interchange-intervention training: under a patch of the matched heads from the "
           "corrupted prompt the student's output is trained towards the teacher's under the same patch"),
)
METHODS: dict[str, Method] = {m.name: m for m in _ROWS}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
HEAD_ONLY: tuple[str, ...] = tuple(m.name for m in _ROWS if m.trains == "heads")


def term_names(method: str) -> tuple[str, ...]:
    return tuple(t for t, _ in METHODS[method].terms)


def weight_of(method: str, term: str, cfg) -> float:
    w = dict(METHODS[method].terms)[term]
    return float(getattr(cfg, w) if isinstance(w, str) else w)


def fields_read(method: str) -> tuple[str, ...]:
    """DistillConfig fields that change what ``method`` trains: its weights and its terms' own settings."""
    out = [w for _, w in METHODS[method].terms if isinstance(w, str)]
    for t, _ in METHODS[method].terms:
        out += TERMS[t].reads
    if METHODS[method].partners == "random":
        out.append("random_pool")
    return tuple(dict.fromkeys(out))
