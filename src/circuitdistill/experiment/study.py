"""`circuitdistill study`: when does mechanism transfer help? Rows x data budgets x seeds on one pair.

Every row is trained on the first N training items (N in ``budgets``) for the same steps, with validation
accuracy and held-out alignment every ``eval_interval`` steps; nothing is chosen on the test split, which is
read once per trained row at the end. Output (``OUT/study.md``, ``study.json``, PNGs): validation accuracy
against steps with a band over seeds, the steps each row needs to reach each accuracy threshold, test accuracy
with McNemar against ``circuit-ce`` and ``full-kd`` (per seed and pooled over seeds), and the held-out
alignment of every row. Stages are the experiment's, cached by the same keys, so a rerun trains only what
changed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from ..utils import save_figure_atomic, write_text_atomic
from .config import ExperimentConfig, preset
from .runner import eval_key, finish_run, stage_evaluate, start_run, train_row
from .stats import mcnemar

ROWS_STUDY = ("full-kd", "circuit-ce", "circuit", "circuit-procrustes", "circuit-iit", "circuit-random")
COMPARE_TO = ("circuit-ce", "full-kd")


class StudyConfig(ExperimentConfig):
    """A data-budget x seed grid of training rows on one teacher/student pair (the experiment's fields apply)."""

    budgets: list[int] = Field([64, 256, 640], min_length=1, description="training items per row (the first N)")
    thresholds: list[float] = Field([0.8, 0.9], min_length=1, description="validation accuracies whose "
                                    "steps-to-reach are tabulated")
    read_test: bool = Field(True, description="False: a selection run on the validation split alone (curves, "
                            "held-out alignment); the test split is not evaluated, so choosing a rule, lambda or "
                            "objective from it leaves the test split unread")


def study_preset(name: str = "demo", out: str | None = None, **overrides) -> StudyConfig:
    """The experiment preset plus the study grid. demo: 6 rows x 3 budgets x 3 seeds, 30 steps each."""
    grid = dict(methods=list(ROWS_STUDY), seeds=[0, 1, 2], steps=30, eval_interval=5, eval_items=64,
                analyze_methods=[]) if name != "tiny" else dict(methods=list(ROWS_STUDY), budgets=[16, 32])
    base = preset(name, out=out or f"runs/study-{name}").model_dump()
    base.update(grid)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return StudyConfig(**base)


def run_study(cfg: StudyConfig, log=print) -> dict:
    t0 = time.time()
    out, R, ctx = start_run(cfg, "study_config.json", log)
    res: dict = {"config": cfg.model_dump(mode="json"), "variants": {}}
    for v, st in ctx["students"].items():
        base = R.run(f"eval-{v}-base", {**eval_key(cfg), "s": st["student"]},
                     lambda d: stage_evaluate(cfg, st["student"], st["match"]["student_heads"], ctx["data"], d),
                     deps=(f"match-{v}",)).outputs if cfg.read_test else {"full": None}
        grid: dict = {}
        for budget in cfg.budgets:
            for method in cfg.methods:
                for seed in cfg.seeds:
                    tr, ev = train_row(cfg, R, ctx, v, method, seed, max_train_items=budget,
                                       read_test=cfg.read_test)
                    ev = ev or {"per_item": None, "full": None, "circuit": None}
                    grid.setdefault(str(budget), {}).setdefault(method, {})[str(seed)] = {
                        "log": tr["log"], "per_item": ev["per_item"], "test_full": ev["full"],
                        "test_circuit": ev["circuit"], "heldout_alignment": tr.get("heldout_alignment")}
        res["variants"][v] = {"student": st["student"], "pairing": st["match"]["pairing"], "base_test": base["full"],
                              "grid": _summarise(grid, cfg)}
    return finish_run(cfg, R, res, t0, out / "study.json", write_study_report)


def _curve(log_path: str) -> tuple[list[int], list[float]]:
    """Validation accuracy by step: the log's interval evaluations, then the final one (summary.json)."""
    rows = [json.loads(l) for l in Path(log_path).read_text().splitlines() if l.strip()]
    ev = [(r["step"], r["eval"]["accuracy"]) for r in rows if isinstance(r.get("eval"), dict)]
    summary = json.loads(Path(log_path).with_name("summary.json").read_text())
    if summary.get("final_eval") and (not ev or ev[-1][0] < summary["steps"]):
        ev.append((summary["steps"], summary["final_eval"]["accuracy"]))
    return [e[0] for e in ev], [e[1] for e in ev]


def steps_to_reach(steps: list[int], acc: list[float], threshold: float) -> int | None:
    """First evaluated step whose validation accuracy is at least ``threshold`` (None: never)."""
    return next((s for s, a in zip(steps, acc) if a >= threshold), None)


def _paired_tests(items: dict, method: str, seeds) -> dict:
    """McNemar of ``method`` against each of COMPARE_TO on the same test items: per seed, and pooled over seeds."""
    tests = {}
    for other in COMPARE_TO:
        if other == method or not items.get(other) or not items.get(method):
            continue
        common = [s for s in seeds if s in items[other]]
        tests[other] = {"per_seed": {s: mcnemar(items[method][s], items[other][s]) for s in common},
                        "pooled": mcnemar(sum((items[method][s] for s in common), []),
                                          sum((items[other][s] for s in common), []))}
    return tests


def _summarise(grid: dict, cfg: StudyConfig) -> dict:
    out: dict = {}
    for budget, rows in grid.items():
        per_item = {m: {s: json.loads(Path(r["per_item"]).read_text()) for s, r in seeds.items() if r["per_item"]}
                    for m, seeds in rows.items()}
        full = {m: {s: v["full"] for s, v in d.items()} for m, d in per_item.items()}
        circ = {m: {s: v["circuit"] for s, v in d.items()} for m, d in per_item.items()}
        for method, seeds in rows.items():
            curves = {s: _curve(r["log"]) for s, r in seeds.items()}
            reach = {str(t): {s: steps_to_reach(*c, t) for s, c in curves.items()} for t in cfg.thresholds}
            held = [r["heldout_alignment"] for r in seeds.values() if r["heldout_alignment"]]
            out.setdefault(budget, {})[method] = {
                "test_full": [r["test_full"] for r in seeds.values() if r["test_full"] is not None],
                "test_circuit": [r["test_circuit"] for r in seeds.values() if r["test_circuit"] is not None],
                "val_final": [c[1][-1] for c in curves.values() if c[1]],
                "curves": curves, "steps_to_reach": reach,
                "mcnemar": _paired_tests(full, method, seeds),
                "mcnemar_circuit": _paired_tests(circ, method, seeds),
                "alignment_before": float(np.mean([h["before"] for h in held])) if held else None,
                "alignment_after": float(np.mean([h["after"] for h in held])) if held else None}
    return out


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    a = np.array(values)
    return f"{a.mean():.3f}" + (f" ± {a.std(ddof=1):.3f}" if a.size > 1 else "")


def _verb(mine: float, other: float, p: float) -> str:
    return ("beats" if mine > other else "is below") if p < 0.05 else "is level with"


def write_study_report(res: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = res["config"]
    lines = [f"# circuitdistill study: {cfg['task']}", "",
             f"Rows {', '.join(cfg['methods'])}; budgets {cfg['budgets']} training items; seeds {cfg['seeds']}; "
             f"{cfg['steps']} steps of batch {cfg['batch_size']}; lr {cfg['lr']} (head-only {cfg['head_lr']}), "
             f"λ {cfg['lam']} ({cfg['lam_reduction']} over pairs), IIT weight {cfg['iit_weight']}. Validation "
             f"accuracy on {cfg['eval_items']} items every {cfg['eval_interval']} steps; " +
             (f"test accuracy on {cfg['n_test']} items, read once per row. McNemar p: per seed, and pooled over "
              "seeds (items x seeds)." if cfg.get("read_test", True) else
              "**selection run: the test split was not read.**") +
             " Wall time {:.1f} min.".format(res["wall_seconds"] / 60), ""]
    for v, vr in res["variants"].items():
        g = vr["grid"]
        base = "not read" if vr["base_test"] is None else f"{vr['base_test']:.3f}"
        lines += [f"## Student: {v} (`{vr['student']}`), base test accuracy {base}", "",
                  "| budget | method | final validation accuracy (mean ± sd) | test accuracy (mean ± sd) | " +
                  " | ".join(f"steps to {t} (per seed)" for t in cfg["thresholds"]) +
                  " | vs circuit-ce: pooled p | vs full-kd: pooled p | circuit-only test accuracy | circuit-only vs "
                  "circuit-ce: pooled p | held-out CKA before → after |",
                  "|---|---|---|---|" + "---|" * len(cfg["thresholds"]) + "---|---|---|---|---|"]
        for budget, rows in g.items():
            for m, r in rows.items():
                acc = np.array(r["test_full"])
                val = _mean_sd(r.get("val_final", []))
                reach = [", ".join("–" if x is None else str(x) for x in r["steps_to_reach"][str(t)].values())
                         for t in cfg["thresholds"]]
                cmp = []
                for other in COMPARE_TO:
                    t = r["mcnemar"].get(other)
                    if t is None:
                        cmp.append("–")
                        continue
                    o = np.mean(rows[other]["test_full"])
                    cmp.append(f"{_verb(acc.mean(), o, t['pooled']['p_value'])} ({t['pooled']['p_value']:.3g})")
                al = "–" if r["alignment_after"] is None else f"{r['alignment_before']:.3f} → {r['alignment_after']:.3f}"
                tc = r.get("mcnemar_circuit", {}).get("circuit-ce")
                circ_cmp = "–"
                if tc is not None:
                    p = tc["pooled"]["p_value"]
                    circ_cmp = f"{_verb(np.mean(r['test_circuit']), np.mean(rows['circuit-ce']['test_circuit']), p)} ({p:.3g})"
                lines.append(f"| {budget} | {m} | {val} | {_mean_sd(r['test_full'])} | " + " | ".join(reach) + " | " +
                             " | ".join(cmp) + f" | {_mean_sd(r['test_circuit'])} | {circ_cmp} | {al} |")
        fig, axes = plt.subplots(1, len(g), figsize=(5 * len(g), 3.6), squeeze=False)
        for ax, (budget, rows) in zip(axes[0], g.items()):
            for m, r in rows.items():
                steps = next(iter(r["curves"].values()))[0]
                accs = np.array([c[1] for c in r["curves"].values() if len(c[1]) == len(steps)])
                mean = accs.mean(0)
                ax.plot(steps, mean, label=m, lw=1.3)
                if len(accs) > 1:
                    ax.fill_between(steps, accs.min(0), accs.max(0), alpha=0.15)
            for t in cfg["thresholds"]:
                ax.axhline(t, color="grey", lw=0.6, ls=":")
            ax.set_title(f"{budget} training items")
            ax.set_xlabel("step")
            ax.set_ylabel("validation accuracy (band: min-max over seeds)")
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        save_figure_atomic(fig, out / f"study_curves_{v}.png", dpi=110)
        plt.close(fig)
        lines += ["", f"![validation accuracy vs steps](study_curves_{v}.png)", ""]
    write_text_atomic(out / "study.md", "\n".join(lines))
    return out / "study.md"
