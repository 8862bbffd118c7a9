"""Apply the selection criterion of scripts/select_demo.sh to its validation-only results.

Prints the winning matching rule and objective as JSON (`rule`, `objective`, `table`). Usage:
python scripts/choose_demo.py OUT/selection
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

MARGIN = 0.03  # about one standard error at 300 validation items; the default stays unless beaten by this
DEFAULT_RULE, DEFAULT_OBJECTIVE = "own-share", "circuit"


def final_val(path: Path, method: str) -> float | None:
    res = json.loads(path.read_text())
    for v in res["variants"].values():
        for rows in v["grid"].values():
            if method in rows and rows[method]["val_final"]:
                return rows[method]["val_final"][0]
    return None


def winner(scores: dict[str, float], default: str) -> str:
    best = max(scores, key=scores.get)
    return best if scores[best] >= scores[default] + MARGIN else default


def main(sel: Path) -> dict:
    rules = {p.stem: final_val(p, "circuit") for p in sorted(sel.glob("*.json")) if p.stem != "choice"}
    rules = {k: v for k, v in rules.items() if v is not None}
    objectives = {m: final_val(sel / f"{DEFAULT_RULE}.json", m)
                  for m in ("circuit-ce", "circuit", "circuit-procrustes", "circuit-iit")}
    candidates = {m: s for m, s in objectives.items() if s is not None and m != "circuit-ce"}
    return {"rule": winner(rules, DEFAULT_RULE), "objective": winner(candidates, DEFAULT_OBJECTIVE),
            "table": {"rules (circuit, final validation accuracy)": rules,
                      f"objectives under {DEFAULT_RULE}": objectives}, "margin": MARGIN}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=1))
