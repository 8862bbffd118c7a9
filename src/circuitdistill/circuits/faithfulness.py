"""Circuit-only evaluation: mean-ablate every head OUTSIDE a circuit and compare with the full model.

faithfulness = circuit-only metric / full-model metric. The control is the same measurement for
random head sets of the circuit's size (seeded): a circuit that is no better than a random set of
the same size explains nothing.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..models.hooks import HookedLM, Intervention, mean_ablate
from ..tasks.schema import TaskItem
from ..tasks.scoring import evaluate
from .ablation import check_heads, mean_head_outputs, parse_positions, z_hook
from .circuit import Circuit, random_head_sets

HeadSet = Iterable[tuple[int, int]]


def circuit_only_interventions(hooked: HookedLM, heads: HeadSet, means: dict[str, torch.Tensor],
                               positions=None) -> list[Intervention]:
    """Mean-ablate every head NOT in ``heads``, at every position (or ``positions``)."""
    keep = set(check_heads(hooked, list(heads)))
    s = hooked.shape
    out = []
    for layer in range(s.n_layers):
        outside = [h for h in range(s.n_heads) if (layer, h) not in keep]
        if outside:
            hk = z_hook(layer)
            if hk not in means:
                raise KeyError(f"means has no entry for {hk}; compute them with mean_head_outputs")
            out.append(mean_ablate(hk, means[hk], heads=outside, positions=positions))
    return out


def _as_head_set(circuit) -> tuple[set[tuple[int, int]], Circuit | None]:
    if isinstance(circuit, (str, Path)):
        circuit = Circuit.load(circuit)
    if isinstance(circuit, Circuit):
        return circuit.as_set(), circuit
    return {(int(l), int(h)) for l, h in circuit}, None


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@torch.no_grad()
def faithfulness_report(model, tokenizer, items: Sequence[TaskItem], circuit, n_random: int = 10, seed: int = 0,
                        batch_size: int = 32, metric: str = "accuracy",
                        reference_items: Sequence[TaskItem] | None = None, progress: bool = False,
                        per_position: bool = True, positions=None) -> dict:
    """Full vs circuit-only metric, faithfulness = circuit / full, and the random-set control.

    ``circuit``: a :class:`Circuit`, a path to circuit.json, or an iterable of (layer, head).
    ``metric``: accuracy | candidate_accuracy | logprob (per-item means from ``tasks.scoring.evaluate``).
    Means for the ablation come from ``reference_items`` (default: ``items``); ``per_position`` (default)
    takes them per position, right-aligned on the final token (templated prompts line up, as in Prakash et
    al.), else one mean per head over all positions. ``positions``: where non-circuit heads are ablated
    (None = every position; "final" = only the final one).
    Keys: full, circuit, faithfulness (for ``metric``), full_accuracy, circuit_accuracy, n_heads,
    share, random {values, mean, std, faithfulness_mean, faithfulness_std, sets}, and settings.
    """
    if metric not in ("accuracy", "candidate_accuracy", "logprob"):
        raise ValueError(f"metric {metric!r} not supported here; use accuracy, candidate_accuracy or logprob")
    if n_random < 0:
        raise ValueError(f"n_random must be >= 0 (got {n_random})")
    items = list(items)
    if not items:
        raise ValueError("faithfulness_report needs at least one item")
    heads, circ = _as_head_set(circuit)
    hooked = HookedLM(model, tokenizer)
    s = hooked.shape
    if circ is not None and (circ.n_layers, circ.n_heads_per_layer) != (s.n_layers, s.n_heads):
        raise ValueError(f"circuit is for {circ.n_layers} layers x {circ.n_heads_per_layer} heads but the model has "
                         f"{s.n_layers} x {s.n_heads}; use the circuit found on this model family")
    model.eval()
    means = mean_head_outputs(hooked, list(reference_items or items), batch_size, per_position=per_position)
    pos = parse_positions(positions)

    def score(ivs) -> tuple[float, float, float]:
        r = evaluate(model, tokenizer, items, batch_size=batch_size, interventions=ivs, hooked=hooked)
        return (float(r.per_item[metric].double().mean()), float(r.accuracy.double().mean()),
                float(r.candidate_accuracy.double().mean()))

    full, full_acc, full_cacc = score(None)
    circ_val, circ_acc, circ_cacc = score(circuit_only_interventions(hooked, heads, means, pos))
    sets = random_head_sets(s.n_layers, s.n_heads, len(heads), n_random, seed=seed) if heads else []
    rand_vals = []
    for hs in sets:
        rand_vals.append(score(circuit_only_interventions(hooked, hs, means, pos))[0])

    def ratio(x: float) -> float:
        return x / full if full != 0 else float("nan")

    rand_f = [ratio(v) for v in rand_vals]
    return {
        "metric": metric, "n_items": len(items), "n_heads": len(heads), "n_total_heads": s.n_total_heads,
        "share": len(heads) / s.n_total_heads,
        "full": full, "circuit": circ_val, "faithfulness": ratio(circ_val),
        "full_accuracy": full_acc, "circuit_accuracy": circ_acc,
        "full_candidate_accuracy": full_cacc, "circuit_candidate_accuracy": circ_cacc,
        "random": {"n_sets": len(sets), "seed": seed, "values": rand_vals,
                   "mean": sum(rand_vals) / len(rand_vals) if rand_vals else float("nan"), "std": _std(rand_vals),
                   "faithfulness_mean": sum(rand_f) / len(rand_f) if rand_f else float("nan"),
                   "faithfulness_std": _std(rand_f),
                   "sets": [sorted(map(list, hs)) for hs in sets]},
        "heads": sorted(map(list, heads)), "batch_size": batch_size,
        "reference": "items" if reference_items is None else f"{len(reference_items)} reference items",
        "per_position_means": per_position, "ablated_positions": "all" if pos is None else pos,
    }


def format_report(r: dict) -> str:
    m = r["metric"]
    lines = [f"circuit: {r['n_heads']} of {r['n_total_heads']} heads ({100 * r['share']:.1f}%), {r['n_items']} items",
             f"full {m}:          {r['full']:.4f}",
             f"circuit-only {m}:  {r['circuit']:.4f}",
             f"faithfulness:         {r['faithfulness']:.4f}"]
    rd = r["random"]
    if rd["n_sets"]:
        lines.append(f"random sets (n={rd['n_sets']}, same size): {m} {rd['mean']:.4f} +- {rd['std']:.4f}, "
                     f"faithfulness {rd['faithfulness_mean']:.4f} +- {rd['faithfulness_std']:.4f}")
    return "\n".join(lines)
