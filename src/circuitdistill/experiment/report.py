"""report.md + PNGs for an experiment's results.json."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..distill.matching import pairing_warnings
from ..train_loop import read_log  # noqa: E402
from ..utils import save_figure_atomic, write_text_atomic  # noqa: E402
from .stats import mean_spread  # noqa: E402


def plot_head_grid(grid, marked, path, title: str) -> Path:
    """Layer x head heatmap with the `marked` heads boxed."""
    g = torch.as_tensor(grid, dtype=torch.float32).numpy()
    fig, ax = plt.subplots(figsize=(max(4, g.shape[1] * 0.5 + 2), max(3, g.shape[0] * 0.22 + 1.5)))
    lim = np.nanmax(np.abs(g)) if np.isfinite(g).any() else 1.0
    im = ax.imshow(g, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for l, h in marked:
        ax.add_patch(plt.Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.5))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)


def _row_stats(row: dict) -> dict:
    seeds = row["seeds"]
    full = mean_spread([s["full"] for s in seeds.values()])
    circ = mean_spread([s["circuit"] for s in seeds.values()])
    faith = mean_spread([s["faithfulness"] for s in seeds.values() if s.get("faithfulness") is not None])
    return {"full": full, "circuit": circ, "faithfulness": faith}


def _fmt(ms: dict) -> str:
    if ms["n"] == 0:
        return "–"
    return f"{ms['mean']:.3f}" + (f" ± {ms['std']:.3f}" if ms["n"] > 1 else "")


def table_rows(results: dict, variant: str) -> list[dict]:
    v = results["variants"][variant]
    rows = [{"row": "teacher", **_row_stats({"seeds": {"-": results["teacher"]["eval"]}}), "heads": None,
             "params": None}]
    for name, row in v["rows"].items():
        st = _row_stats(row)
        tr = row.get("trainable") or {}
        share = tr.get("head_share", tr.get("share_of_heads"))
        rows.append({"row": name, **st, "heads": share, "params": tr.get("trainable_params", tr.get("params"))})
    return rows


def write_report(results: dict, out: Path) -> Path:
    out = Path(out)
    cfg = results["config"]
    task = "task from files" if results.get("data_files") else cfg["task"]
    lines = [f"# circuitdistill experiment: {task} ({cfg['preset']} preset)", "",
             f"Teacher `{results['teacher']['model']}`; seeds {cfg['seeds']}; {cfg['steps']} steps, batch "
             f"{cfg['batch_size']}, lr {cfg['lr']} (head-only lr {cfg['head_lr'] or cfg['lr']}), λ={cfg['lam']}, "
             f"{cfg['estimator']} CKA; test items: {results['teacher']['eval']['n']}. Wall time "
             f"{results['wall_seconds'] / 60:.1f} min.", ""]
    for split, f in (results.get("data_files") or {}).items():
        lines += [f"- {split}: `{f['path']}` (sha256 `{f['sha256'][:16]}…`): {f['n_used']} of {f['n_items']} items "
                  f"used ({f['n_dropped_multi_token']} dropped: not single tokens for both tokenizers)"]
    for name, v in (results.get("data_vocabulary") or {}).items():
        rejected = f": {', '.join(v['rejected'][:10])}{' …' if len(v['rejected']) > 10 else ''}" if v["rejected"] else ""
        lines += [f"- {name}: {v['kept']} of {v['shipped']} shipped words are single tokens for both tokenizers "
                  f"({len(v['rejected'])} rejected{rejected})"]
    lines += [""] if results.get("data_files") or results.get("data_vocabulary") else []
    disc = results["teacher"]["circuit"]
    lines += [f"Teacher circuit: {disc['n_heads']} heads ({disc['share']:.1%} of all heads), found by "
              f"{disc.get('method', 'activation')} patching at the final position on validation items. "
              "![teacher circuit](teacher_circuit.png)", "",
              f"Circuit-only accuracy: every head outside the circuit (the teacher's circuit for the teacher, the "
              f"matched student heads for students) mean-ablated at "
              f"{'the final position' if cfg.get('circuit_positions', 'all') == 'final' else 'every position'}, with "
              f"{'per-position' if cfg.get('per_position_means') else 'whole-sequence'} means over 64 validation "
              "items.", ""]
    if Path(disc["heatmap"]).exists():
        (out / "teacher_circuit.png").write_bytes(Path(disc["heatmap"]).read_bytes())
    rc = results["teacher"].get("random_control")
    if rc and "random_circuit_accuracies" in rc:
        ms = mean_spread(rc["random_circuit_accuracies"])
        lines += [f"Faithfulness control: the teacher's circuit-only accuracy is "
                  f"{results['teacher']['eval']['circuit']:.3f} (full {results['teacher']['eval']['full']:.3f}); "
                  f"{ms['n']} random head sets of the same size give {ms['mean']:.3f} ± {ms['std']:.3f} "
                  f"(on {rc['n_items']} test items).", ""]
    for vname, v in results["variants"].items():
        lines += [f"## Student: {vname} (`{v['student']}`)", "",
                  f"Matched student heads: {v['pairing']['n_pairs']} of {v['pairing']['n_student_heads']} "
                  f"({v['pairing']['n_pairs'] / v['pairing']['n_student_heads']:.1%}).", ""]
        lines += [f"**Matching warning:** {w}." for w in _pairing_warnings(v["pairing"])]
        lines += ["", "| method | accuracy full | accuracy circuit | faithfulness | trainable heads | trainable params "
                  "| A (alignment) | perplexity | McNemar p vs `circuit` |",
                  "|---|---|---|---|---|---|---|---|---|"]
        rows = table_rows(results, vname)
        for r in rows:
            heads = "–" if r["heads"] is None else (f"{r['heads']:.1%}" if isinstance(r["heads"], float) else str(r["heads"]))
            params = "–" if r["params"] is None else f"{r['params']:,}"
            a = v.get("alignment", {}).get(r["row"], {}) or {}
            a_s = f"{a['alignment_score']:.3f}" if isinstance(a.get("alignment_score"), (int, float)) else "–"
            ppl = v.get("side_effects", {}).get(r["row"], {}) or {}
            ppl_s = f"{ppl['perplexity']:.2f}" if isinstance(ppl.get("perplexity"), (int, float)) else "–"
            mc = v.get("mcnemar", {}).get("circuit", {}).get(r["row"])
            mc_s = ", ".join(f"{m['p_value']:.3g}" for m in mc.values()) if mc else "–"
            lines.append(f"| {r['row']} | {_fmt(r['full'])} | {_fmt(r['circuit'])} | {_fmt(r['faithfulness'])} | "
                         f"{heads} | {params} | {a_s} | {ppl_s} | {mc_s} |")
        lines += ["", _verdict(results, vname), ""]
        lines += _heldout_alignment_lines(v, out / f"heldout_alignment_{vname}.png", vname)
        _bar_chart(rows, out / f"accuracy_{vname}.png", vname)
        lines += [f"![accuracy]({f'accuracy_{vname}.png'})", ""]
        _curves(v, out / f"curves_{vname}.png", out / f"sample_efficiency_{vname}.png")
        lines += [f"Training curves (CE and mean CKA): ![curves](curves_{vname}.png)", "",
                  f"Validation accuracy against steps (sample efficiency): "
                  f"![sample efficiency](sample_efficiency_{vname}.png)", ""]
        grid = torch.zeros(1)
        heads = [tuple(h) for h in v["pairing"]["student_heads"]]
        if heads:
            L = max(h[0] for h in heads) + 1
            H = max(h[1] for h in heads) + 1
            grid = torch.zeros(L, H)
            for h in heads:
                grid[h] = 1.0
            plot_head_grid(grid, heads, out / f"student_heads_{vname}.png", f"{vname} student: matched heads")
            lines += [f"Matched student heads: ![student heads](student_heads_{vname}.png)", ""]
        lines += _mechanism_lines(v)
    lines += ["## Wall time per stage", "", "| stage | seconds | cached |", "|---|---|---|"]
    lines += [f"| {k} | {t['seconds']:.0f} | {'yes' if t['cached'] else 'no'} |" for k, t in results["timings"].items()]
    total = sum(t["seconds"] for t in results["timings"].values())
    lines += ["", f"Sum of stage times: {total / 60:.1f} min (a cached stage counts the time of the run that made "
              f"it; this invocation took {results['wall_seconds'] / 60:.1f} min).", "",
              f"Versions: {json.dumps(results['provenance']['versions'])}", ""]
    write_text_atomic(out / "report.md", "\n".join(lines))
    return out / "report.md"


def _verdict(results: dict, vname: str) -> str:
    v = results["variants"][vname]
    mc = v.get("mcnemar", {})
    if not mc:
        return "(no circuit-alignment row was trained in this run.)"
    st = {name: _row_stats(r)["full"]["mean"] for name, r in v["rows"].items()}
    parts = []
    for mine in mc:
        for other in ("full-kd", "circuit-ce"):
            if other in st and other != mine and mc[mine].get(other):
                ps = [m["p_value"] for m in mc[mine][other].values()]
                better = st[mine] > st[other]
                sig = bool(ps) and max(ps) < 0.05
                # "beats" / "below" need p < 0.05; otherwise the two are level
                verb = ("beats" if better else "is below") if sig else "is level with"
                parts.append(f"`{mine}` {verb} `{other}` on held-out accuracy "
                             f"({st[mine]:.3f} vs {st[other]:.3f}; McNemar p {', '.join(f'{p:.3g}' for p in ps)})")
    return "**Result.** " + "; ".join(parts) + "." if parts else ""


def _heldout_alignment_lines(v: dict, path: Path, vname: str) -> list[str]:
    """Held-out alignment: mean exact debiased CKA over all validation items between each matched student head
    and its aligned teacher partner, before and after training, for every trained row."""
    ha = {m: [x for x in seeds.values() if x] for m, seeds in v.get("heldout_alignment", {}).items()}
    ha = {m: xs for m, xs in ha.items() if xs}
    if not ha:
        return []
    ref = np.mean([x["after"] for x in ha["circuit-ce"]]) if "circuit-ce" in ha else None
    lines = ["### Held-out alignment (aligned pairs, debiased CKA over the validation items)", "",
             "| method | before | after | change | vs `circuit-ce` after |", "|---|---|---|---|---|"]
    for m, xs in ha.items():
        before, after = np.mean([x["before"] for x in xs]), np.mean([x["after"] for x in xs])
        note = "–" if ref is None or m == "circuit-ce" else ("higher" if after > ref else "NOT higher")
        lines.append(f"| {m} | {before:.4f} | {after:.4f} | {after - before:+.4f} | {note} |")
    _paired_bars(list(ha), {"before": [np.mean([r["before"] for r in xs]) for xs in ha.values()],
                            "after": [np.mean([r["after"] for r in xs]) for xs in ha.values()]}, None,
                 "mean held-out CKA, aligned pairs", f"{vname} student: alignment with the teacher partners", path)
    return lines + ["", f"![held-out alignment]({path.name})", ""]


def _bar_chart(rows: list[dict], path: Path, title: str) -> None:
    _paired_bars([r["row"] for r in rows], {"full": [r["full"]["mean"] for r in rows],
                                            "circuit only": [r["circuit"]["mean"] for r in rows]},
                 {"full": [r["full"]["std"] for r in rows], "circuit only": [r["circuit"]["std"] for r in rows]},
                 "test accuracy", f"{title} student", path, ylim=(0, 1))


def _paired_bars(names: list[str], series: dict, errors: dict | None, ylabel: str, title: str, path: Path,
                 ylim=None) -> None:
    """Two bars per name (e.g. full / circuit-only accuracy, or alignment before / after)."""
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.5))
    for off, (label, vals) in zip((-0.2, 0.2), series.items()):
        ax.bar(x + off, vals, 0.4, label=label, yerr=(errors or {}).get(label))
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)


def _curves(v: dict, path: Path, eff_path: Path) -> None:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    fig2, a3 = plt.subplots(figsize=(6, 3.5))
    for method, row in v["rows"].items():
        for seed, s in row["seeds"].items():
            if "log" not in s:
                continue
            log = read_log(Path(s["log"]))
            steps = [r["step"] for r in log]
            if any("ce" in r for r in log):
                a1.plot(steps, [r.get("ce", np.nan) for r in log], label=f"{method} s{seed}", lw=1)
            held = [(r["step"], r["eval"]["cka_mean"]) for r in log if isinstance(r.get("eval"), dict)
                    and "cka_mean" in r["eval"]]
            if held:
                a2.plot([h[0] for h in held], [h[1] for h in held], marker=".", label=f"{method} s{seed}", lw=1)
            ev = [(r["step"], r["eval"].get("accuracy")) for r in log if isinstance(r.get("eval"), dict)]
            if ev:
                a3.plot([e[0] for e in ev], [e[1] for e in ev], marker="o", label=f"{method} s{seed}", lw=1)
    a1.set_title("CE on teacher labels")
    a2.set_title("held-out CKA, aligned pairs (validation)")
    a3.set_title("validation accuracy vs steps")
    for a in (a1, a2, a3):
        a.set_xlabel("step")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    fig2.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    save_figure_atomic(fig2, eff_path, dpi=110)
    plt.close(fig)
    plt.close(fig2)


def _mechanism_lines(v: dict) -> list[str]:
    mech = v.get("mechanism", {})
    if not mech:
        return []
    lines = ["### Mechanism verification (first seed)", "",
             "Interchange: the corrupted run's outputs of the matched student heads and of their teacher partners "
             "are patched in at the final position. *Agreement* = both patched models give the same answer; "
             "*when both flip* = the same, among items where both changed their answer (n); *flip rates* and "
             "*takes corrupted answer* (student / teacher) show whether the patch moved the answer at all.", "",
             "| method | agreement matched (random) | when both flip: matched (random) | flip rate s / t | "
             "takes corrupted answer s / t | flip agreement matched / random | ablation-profile Spearman | "
             "re-discovered circuit on matched heads (chance) |",
             "|---|---|---|---|---|---|---|---|"]
    for method, m in mech.items():
        if "error" in m:
            lines.append(f"| {method} | failed: {m['error']} | | | | | | |")
            continue
        it, pr, rd = m["interchange"], m["ablation_profile"], m["rediscovery"]
        mi, ra = it["matched"], it["random_mean"]
        sp = f"{pr['spearman']:.2f}" if "spearman" in pr else "–"
        lines.append(f"| {method} | {mi['agreement']:.3f} ({ra['agreement']:.3f}) | "
                     f"{_f(mi.get('agreement_when_both_flip'))} (n={mi.get('n_both_flip', '–')}) "
                     f"({_f(ra.get('agreement_when_both_flip'))}) | "
                     f"{mi['student_flip_rate']:.2f} / {mi['teacher_flip_rate']:.2f} | "
                     f"{_f(mi.get('student_takes_corrupted_answer'))} / {_f(mi.get('teacher_takes_corrupted_answer'))} | "
                     f"{mi['flip_agreement']:.3f} / {ra['flip_agreement']:.3f} | {sp} | "
                     f"{rd['overlap_with_matched']:.2f} ({rd['chance']:.2f}) |")
    return lines + [""]


def _pairing_warnings(stage_out: dict) -> list[str]:
    """Recomputed from pairing.json, so runs cached before the check existed are flagged too."""
    path = Path(stage_out.get("pairing", ""))
    if not path.is_file():
        return []
    doc = json.loads(path.read_text())
    dpt = list(doc["dP_teacher"].values()) if "dP_teacher" in doc else None
    return pairing_warnings(doc["pairs"], len(doc.get("teacher_heads", [])), dpt)


def _f(x) -> str:
    return "–" if x is None else f"{x:.2f}"
