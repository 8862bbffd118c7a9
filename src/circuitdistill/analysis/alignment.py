"""Alignment score (Distilled Circuits): A = mean over matched pairs of S · (1 − |Î_S − Î_T|).

Î are the influences of the matched components normalised to sum to 1 over the matched pairs (a teacher
component matched by several student components counts once per pair). A is 1 exactly when every pair
is perfectly similar (S = 1) and carries the same share of influence on both sides.
The 95% interval resamples the data items with replacement and recomputes everything that depends on
them: the influences, the similarities and the matching.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .influence import InfluenceResult
from .similarity import Features, Matched, match_components


def normalise(x: np.ndarray) -> np.ndarray:
    """x / sum(x); uniform when the sum is 0 (no component matters) or not finite."""
    x = np.asarray(x, dtype=np.float64)
    s = x.sum()
    if not np.isfinite(s) or s <= 0:
        return np.full_like(x, 1.0 / max(len(x), 1))
    return x / s


def alignment_score(similarity: np.ndarray, influence_student: np.ndarray, influence_teacher: np.ndarray) -> float:
    """A over matched pairs, given each pair's S and the raw (unnormalised) influences of its two components."""
    s = np.asarray(similarity, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no matched pairs: the alignment score needs at least one")
    i_s, i_t = normalise(influence_student), normalise(influence_teacher)
    return float(np.mean(s * (1.0 - np.abs(i_s - i_t))))


@dataclass
class Alignment:
    score: float
    ci_low: float
    ci_high: float
    n_boot: int
    matched: Matched
    norm_student: np.ndarray
    norm_teacher: np.ndarray
    boot_mean: float = float("nan")  # mean of the resampled scores: far from ``score`` means few items (see docs)


def align(teacher_inf: InfluenceResult, student_inf: InfluenceResult, teacher_feat: Features, student_feat: Features,
          head_similarity: str = "pattern", matching: str = "greedy", k: int = 3, n_boot: int = 1000,
          seed: int = 0, progress: bool = False) -> Alignment:
    m = match_components(teacher_feat, student_feat, head_similarity, matching, k)
    i_s, i_t = student_inf.influence[m.student], teacher_inf.influence[m.teacher]
    score = alignment_score(m.similarity, i_s, i_t)
    n = len(teacher_inf.clean)
    if len(student_inf.clean) != n:
        raise ValueError(f"teacher saw {n} items, student {len(student_inf.clean)}; they must see the same items")
    rng = np.random.default_rng(seed)
    boots = []
    from tqdm.auto import tqdm

    for _ in tqdm(range(n_boot), disable=not progress, desc="bootstrap A", unit="resample"):
        idx = rng.integers(0, n, n)
        mb = match_components(teacher_feat, student_feat, head_similarity, matching, k, idx)
        inf_s = student_inf.bootstrap(idx[None])[0]
        inf_t = teacher_inf.bootstrap(idx[None])[0]
        boots.append(alignment_score(mb.similarity, inf_s[mb.student], inf_t[mb.teacher]))
    lo, hi = (np.nanpercentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan))
    boot_mean = float(np.nanmean(boots)) if boots else float("nan")
    return Alignment(score, float(lo), float(hi), n_boot, m, normalise(i_s), normalise(i_t), boot_mean)
