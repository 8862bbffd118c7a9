"""`circuitdistill trace fit|predict|experiment`: which teacher was a student distilled from?"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..output_dirs import prepare_output_file
from ..trace.classifier import Tracer, TracerConfig
from ..trace.experiment import TraceExperimentConfig, run_trace_experiment
from ..trace.io import TraceInputError, read_texts
from ..trace.report import format_top_features, prediction_report
from ..trace.taggers import TaggerNotAvailable
from .config_command import config_command

trace_app = typer.Typer(help="Trace a student's teacher from its generated text (PoS templates vs word n-grams).",
                        no_args_is_help=True)


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


@trace_app.command("fit")
def fit_cmd(teachers: Path = typer.Option(..., "--teachers", help="JSONL of {text, source} or a folder with one JSONL per teacher"),
            out: Path = typer.Option(..., "--out", help="where to write the tracer model (JSON)"),
            features: str = typer.Option("pos", help="pos (PoS templates) or ngram (word 1-3-grams)"),
            tagger: str = typer.Option("spacy", help="spacy (Penn Treebank) or hanta (English model, CLAWS5 tags)"),
            n: int = typer.Option(4, help="PoS template length"),
            top_k: int = typer.Option(50, "--top-k-templates", help="PoS templates kept: the K most frequent"),
            c: float = typer.Option(1.0, "--C", help="inverse regularisation strength"),
            seed: int = typer.Option(0)):
    """Fit the tracer on teachers' texts."""
    from pydantic import ValidationError

    try:
        cfg = TracerConfig(features=features, tagger=tagger, n=n, top_k=top_k, C=c, seed=seed)
    except ValidationError as e:
        _fail(f"bad option: {e}")
    prepare_output_file(out)
    try:
        recs = read_texts(teachers, require_source=True)
        tracer = Tracer(cfg).fit([r.text for r in recs], [r.source for r in recs])
    except (TraceInputError, TaggerNotAvailable, ValueError) as e:
        _fail(str(e))
    tracer.save(out)
    typer.echo(f"fitted {features} tracer on {len(recs)} texts, classes {tracer.classes}, "
               f"train accuracy {tracer.train_info['train_accuracy']:.3f} -> {out}")
    typer.echo("most discriminative features:\n" + format_top_features(tracer.top_features(5), 5))


@trace_app.command("predict")
def predict_cmd(model: Path = typer.Option(..., "--model", help="tracer model JSON from `trace fit`"),
                texts: Path = typer.Option(..., "--texts", help="JSONL of {text[, source]} (or a folder of JSONL)"),
                out: Path = typer.Option(..., "--out", help="predictions JSON"),
                png: Optional[Path] = typer.Option(None, help="confusion matrix PNG (default: next to --out)")):
    """Attribute texts to teachers; with `source` in the input also report accuracy and a confusion matrix."""
    prepare_output_file(out)
    try:
        tracer = Tracer.load(model)
        recs = read_texts(texts, require_source=False)
        rep = prediction_report(tracer, recs, out, png)
    except (TraceInputError, TaggerNotAvailable, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    counts: dict[str, int] = {}
    for r in rep["predictions"]:
        counts[r["predicted"]] = counts.get(r["predicted"], 0) + 1
    typer.echo(f"{rep['n_texts']} texts -> predicted teachers {counts}")
    if "accuracy" in rep:
        typer.echo(f"accuracy {rep['accuracy']:.3f} (95% CI {rep['accuracy_ci95']}, chance {rep['chance']:.3f}); "
                   f"confusion matrix: {rep['confusion_png']}")
    typer.echo("most discriminative features:\n" + format_top_features(rep["top_features"], 5))
    typer.echo(f"wrote {out}")


def experiment_cmd(cfg: TraceExperimentConfig):
    """End to end: teachers answer instructions, students are fine-tuned on them, the tracer attributes students."""
    res = run_trace_experiment(cfg)
    for row in res.get("table", []):
        typer.echo(f"{row['method']:<11} accuracy {row['accuracy']:.3f}  95% CI {row['ci95']}")
    if "chance" in res:
        typer.echo(f"{'chance':<11} {res['chance']:.3f}")
    typer.echo(json.dumps(res.get("timings_s", {})))
    typer.echo(f"report: {cfg.out / 'report.md'}")


EXPERIMENT_OPTION_NAMES = {"teachers": ("--teacher", "--teachers"), "decoding.max_new_tokens": ("--max-new-tokens",),
                           "decoding.batch_size": ("--gen-batch-size",), "decoding.do_sample": ("--sample/--greedy",),
                           "student.train_layers": ("--student-layers",)}  # the names these options had before
trace_app.command("experiment")(config_command(TraceExperimentConfig, experiment_cmd, names=EXPERIMENT_OPTION_NAMES))


def register(app: typer.Typer) -> None:
    app.add_typer(trace_app, name="trace")
