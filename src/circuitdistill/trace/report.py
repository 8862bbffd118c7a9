"""Reports: per-text predictions with probabilities, accuracy, confusion matrix PNG, and the most
discriminative templates per teacher (readable tag sequences with example spans)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..utils import save_figure_atomic, versioned, write_json_atomic, write_text_atomic
from .baselines import perplexity_scores, similarity_scores
from .classifier import Tracer, TracerConfig
from .io import TextRecord
from .taggers import get_tagger, tag_texts
from .teachers import chat_prompt, load_teacher


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(list(y_true), list(y_pred), labels=list(labels)).tolist()


def confusion_png(cm: list[list[int]], labels: Sequence[str], path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    M = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(labels), 1.2 + 1.1 * len(labels)))
    ax.imshow(M, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted teacher")
    ax.set_ylabel("true teacher")
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            ax.text(j, i, str(M[i, j]), ha="center", va="center", color="white" if M[i, j] > M.max() / 2 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    return out


def accuracy_ci(correct: int, n: int) -> tuple[float, float]:
    """95% Clopper-Pearson interval (scipy)."""
    from scipy.stats import binomtest

    if n == 0:
        return (float("nan"), float("nan"))
    ci = binomtest(correct, n).proportion_ci(0.95)
    return (round(float(ci.low), 3), round(float(ci.high), 3))


def prediction_report(tracer: Tracer, records: Sequence[TextRecord], out_json: str | Path,
                      png: str | Path | None = None, top_k: int = 10) -> dict:
    """Predict ``records``; write JSON (and a confusion PNG when every record has a source)."""
    texts = [r.text for r in records]
    t0 = time.time()
    P = tracer.predict_proba(texts)
    classes = tracer.classes
    preds = [classes[i] for i in P.argmax(1)]
    rows = [{"id": r.id, "source": r.source, "predicted": p, "probabilities": dict(zip(classes, map(float, pr))),
             "text": r.text[:200]} for r, p, pr in zip(records, preds, P)]
    rep: dict = {"features": tracer.config.features, "classes": classes, "n_texts": len(records),
                 "predict_seconds": round(time.time() - t0, 2)}
    if all(r.source is not None for r in records):
        truth = [r.source for r in records]
        correct = int(sum(a == b for a, b in zip(truth, preds)))
        labels = list(dict.fromkeys([*classes, *sorted(set(truth) - set(classes))]))
        cm = confusion(truth, preds, labels)
        rep.update({"accuracy": correct / len(records), "accuracy_ci95": accuracy_ci(correct, len(records)),
                    "chance": 1 / len(classes), "confusion": {"labels": labels, "matrix": cm}})
        if png is None:
            png = Path(out_json).with_suffix(".confusion.png")
        confusion_png(cm, labels, png, f"tracer ({tracer.config.features}) acc {rep['accuracy']:.2f}")
        rep["confusion_png"] = str(png)
    rep["top_features"] = tracer.top_features(top_k)
    rep["predictions"] = rows
    write_json_atomic(out_json, versioned("trace-report", rep))
    return rep


def format_top_features(top: dict[str, list[dict]], k: int = 5) -> str:
    lines = []
    for c, rows in top.items():
        lines.append(f"  {c}:")
        for r in rows[:k]:
            ex = "; ".join(f'"{e}"' for e in r.get("examples", [])[:2])
            lines.append(f"    {r['weight']:+.3f}  {r['feature']}" + (f"   e.g. {ex}" if ex else ""))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ experiment

def experiment_report(cfg, teachers: list[str], teacher_texts: dict[str, list[dict]],
                      student_texts: dict[str, list[dict]], out: Path) -> dict:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.linear_model import LogisticRegression

    tr = [(r["text"], t) for t in teachers for r in teacher_texts[t]]
    te = [(r, t) for t in teachers for r in student_texts[t]]
    if not tr or not te:
        raise RuntimeError("no teacher or student texts to trace; run the earlier stages first")
    tr_texts, tr_labels = [x for x, _ in tr], [y for _, y in tr]
    te_texts, te_labels = [r["text"] for r, _ in te], [y for _, y in te]
    te_instr = [r["instruction"] for r, _ in te]
    timings = {}
    t0 = time.time()
    tagger = get_tagger(cfg.tagger)
    tagged_tr = tag_texts(tagger, tr_texts, progress=True)
    tagged_te = tag_texts(tagger, te_texts, progress=True)
    timings["tagging_s"] = round(time.time() - t0, 1)

    methods: dict[str, dict] = {}
    tracers = {}
    for feat in ("pos", "ngram"):
        t0 = time.time()
        tracer = Tracer(TracerConfig(features=feat, tagger=cfg.tagger, seed=cfg.seed), tagger=tagger)
        tracer.fit(tr_texts, tr_labels, tagged=tagged_tr if feat == "pos" else None)
        preds = tracer.predict(te_texts, tagged=tagged_te if feat == "pos" else None)
        # sanity: how separable are the TEACHERS' own texts (5-fold CV on the same features)?
        X = tracer.featurizer.transform(tagged_tr if feat == "pos" else tr_texts)
        cv = cross_val_score(LogisticRegression(max_iter=5000), X, tr_labels,
                             cv=StratifiedKFold(5, shuffle=True, random_state=cfg.seed))
        tracer.save(out / f"tracer_{feat}.json")
        tracers[feat] = tracer
        methods[feat] = {"pred": preds, "teacher_cv_accuracy": round(float(cv.mean()), 3),
                         "seconds": round(time.time() - t0, 1)}
    t0 = time.time()
    S = similarity_scores(tr_texts, tr_labels, te_texts, teachers)
    methods["similarity"] = {"pred": [teachers[i] for i in S.argmax(1)], "seconds": round(time.time() - t0, 1)}
    t0 = time.time()
    PPL = perplexity_scores(te_instr, te_texts, teachers, lambda t: load_teacher(t, cfg.device, cfg.dtype),
                            chat_prompt)
    methods["perplexity"] = {"pred": [teachers[i] for i in PPL.argmin(1)], "seconds": round(time.time() - t0, 1),
                             "mean_ppl": {f"student<-{t}": {u: round(float(PPL[np.array(te_labels) == t, j].mean()), 2)
                                                             for j, u in enumerate(teachers)} for t in teachers}}

    chance = 1 / len(teachers)
    table = []
    for name, m in methods.items():
        correct = int(sum(a == b for a, b in zip(te_labels, m["pred"])))
        cm = confusion(te_labels, m["pred"], teachers)
        png = confusion_png(cm, teachers, out / f"confusion_{name}.png",
                            f"{name}: acc {correct / len(te_labels):.2f} (chance {chance:.2f})")
        m.update({"accuracy": round(correct / len(te_labels), 3), "accuracy_ci95": accuracy_ci(correct, len(te_labels)),
                  "confusion": cm, "confusion_png": str(png)})
        table.append((name, m["accuracy"], m["accuracy_ci95"], m.get("teacher_cv_accuracy")))

    per_text = []
    for i, ((r, t), txt) in enumerate(zip(te, te_texts)):
        per_text.append({"id": r["id"], "true_teacher": t, **{f"pred_{k}": m["pred"][i] for k, m in methods.items()},
                         "ppl": dict(zip(teachers, map(float, PPL[i]))), "similarity": dict(zip(teachers, map(float, S[i]))),
                         "text": txt})
    write_json_atomic(out / "predictions.json", per_text)

    top = {k: tracers[k].top_features(8) for k in tracers}
    md = [f"# Teacher tracing experiment\n",
          f"Teachers: {', '.join(teachers)} (chance {chance:.2f}). Train: {len(tr_texts)} teacher texts; "
          f"test: {len(te_texts)} student texts on held-out instructions.\n",
          "| method | student attribution accuracy | 95% CI | teachers' own texts, 5-fold CV |",
          "|---|---|---|---|"]
    for name, acc, ci, cv in table:
        md.append(f"| {name} | {acc:.3f} | [{ci[0]:.2f}, {ci[1]:.2f}] | {'' if cv is None else f'{cv:.3f}'} |")
    md.append(f"| chance | {chance:.3f} | | |\n")
    md.append("Most discriminative PoS templates per teacher (weight, template, example spans):\n```")
    md.append(format_top_features(top["pos"], 6))
    md.append("```\nMost discriminative word n-grams:\n```")
    md.append(format_top_features(top["ngram"], 6))
    md.append("```\n")
    md.append(f"Mean student perplexity under each teacher: {methods['perplexity']['mean_ppl']}\n")
    write_text_atomic(out / "report.md", "\n".join(md))
    return {"table": [{"method": n, "accuracy": a, "ci95": c, "teacher_cv_accuracy": v} for n, a, c, v in table],
            "chance": chance, "n_train_texts": len(tr_texts), "n_test_texts": len(te_texts),
            "methods": {k: {kk: vv for kk, vv in m.items() if kk != "pred"} for k, m in methods.items()},
            "top_features": top, "trace_timings": timings}
