"""Statistics for comparing methods on the same test items."""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

from ..tasks.scoring import wilson_ci  # noqa: F401 - re-exported: one Wilson interval for the project


def mcnemar(correct_a, correct_b) -> dict:
    """Exact McNemar test (two-sided binomial on discordant pairs) over the same items.

    Returns b = items only A gets right, c = items only B gets right, and the p-value.
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs the same items: {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5, alternative="two-sided").pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": p}


def mean_spread(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()) if v.size else float("nan"),
            "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size), "values": v.tolist()}
