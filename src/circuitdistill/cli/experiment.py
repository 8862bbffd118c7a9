"""`circuitdistill experiment`: the main job."""
from __future__ import annotations

from typing import Optional

import typer
from pydantic import ValidationError

from ..experiment.config import preset as make_preset
from ..output_dirs import prepare_output_dir


def experiment_cmd(
    preset: str = typer.Option("demo", help="demo (entity tracking, <= 40 min on 2 cores) | paper | tiny"),
    task: str = typer.Option("entity-tracking", help="entity-tracking | tom (the paper preset runs one task per call)"),
    out: Optional[str] = typer.Option(None, help="output directory (default runs/PRESET-TASK)"),
    teacher: Optional[str] = typer.Option(None, help="an existing teacher model (skips fine-tuning)"),
    student: Optional[str] = typer.Option(None, help="an existing student model (skips the warm-up)"),
    teacher_base: Optional[str] = typer.Option(None, help="model the teacher is fine-tuned from"),
    student_base: Optional[str] = typer.Option(None, help="model the students start from"),
    steps: Optional[int] = typer.Option(None, help="override: optimizer steps per method"),
    seeds: Optional[str] = typer.Option(None, help="override: comma-separated seeds"),
    methods: Optional[str] = typer.Option(None, help="override: comma-separated methods"),
    lam: Optional[float] = typer.Option(None, help="override: lambda"),
    lr: Optional[float] = typer.Option(None, help="override: learning rate"),
    head_lr: Optional[float] = typer.Option(None, help="override: learning rate of head-only methods"),
    estimator: Optional[str] = typer.Option(None, help="override: biased | debiased"),
    n_test: Optional[int] = typer.Option(None, help="override: test items"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    set_: list[str] = typer.Option([], "--set", help="override any ExperimentConfig field: KEY=VALUE, VALUE as "
                                   "JSON (e.g. --set compare_items=16 --set analyze_methods=null); repeatable"),
    overwrite: bool = typer.Option(False, help="write into an --out that holds files circuitdistill did not write"),
):
    """Reproduce the paper's table: teacher, discovery, matching, every method row, evaluation, report.

    Every stage is cached by content hash under OUT/stages: re-running skips finished stages and a
    killed run continues from its last checkpoint.
    """
    from ..experiment.runner import run_experiment  # deferred: matplotlib and scipy load only when it runs

    try:
        extra = parse_overrides(set_)
        cfg = make_preset(preset, task, out, teacher=teacher, student=student, teacher_base=teacher_base,
                          student_base=student_base, steps=steps, lam=lam, lr=lr, head_lr=head_lr,
                          estimator=estimator, n_test=n_test, threads=threads,
                          seeds=[int(s) for s in seeds.split(",")] if seeds else None,
                          methods=[m.strip() for m in methods.split(",")] if methods else None)
        for key, value in extra.items():
            if key not in type(cfg).model_fields:
                raise ValueError(f"--set {key}: no such field; see ExperimentConfig in experiment/config.py")
            setattr(cfg, key, value)  # validated (validate_assignment)
    except (ValidationError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    # a rerun continues the experiment in --out (its stages are cached), so our own files there are expected
    prepare_output_dir(cfg.out, overwrite=overwrite, resume=True, legacy_artifacts=("stages", "results.json"))
    results = run_experiment(cfg, log=typer.echo)
    typer.echo("")
    typer.echo((__import__("pathlib").Path(cfg.out) / "report.md").read_text())
    typer.echo(f"report: {cfg.out}/report.md  results: {cfg.out}/results.json  ({results['wall_seconds'] / 60:.1f} min)")


def parse_overrides(pairs: list[str]) -> dict:
    """["k=v", ...] -> {k: json(v)}; a value that is not JSON stays a string."""
    import json

    out = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {p!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def study_cmd(
    preset: str = typer.Option("demo", help="demo | paper | tiny: the experiment preset the grid runs on"),
    out: Optional[str] = typer.Option(None, help="output directory (default runs/study-PRESET); point it at an "
                                      "experiment's directory to reuse its stages"),
    budgets: Optional[str] = typer.Option(None, help="comma-separated training-item budgets (default 64,256,640)"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds (default 0,1,2)"),
    methods: Optional[str] = typer.Option(None, help="comma-separated rows (default: full-kd, circuit-ce, circuit, "
                                          "circuit-procrustes, circuit-iit, circuit-random)"),
    set_: list[str] = typer.Option([], "--set", help="override any StudyConfig field: KEY=VALUE (VALUE as JSON); "
                                   "repeatable"),
):
    """When does mechanism transfer help? Every row at several data budgets and seeds: validation curves,
    steps to reach each accuracy, test accuracy with McNemar against circuit-ce and full-kd, held-out alignment.
    """
    from ..experiment.study import run_study, study_preset  # deferred: matplotlib and scipy load only when it runs

    try:
        cfg = study_preset(preset, out, budgets=[int(b) for b in budgets.split(",")] if budgets else None,
                           seeds=[int(s) for s in seeds.split(",")] if seeds else None,
                           methods=[m.strip() for m in methods.split(",")] if methods else None)
        for key, value in parse_overrides(set_).items():
            if key not in type(cfg).model_fields:
                raise ValueError(f"--set {key}: no such field; see StudyConfig in experiment/study.py")
            setattr(cfg, key, value)
    except (ValidationError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    res = run_study(cfg, log=typer.echo)
    typer.echo((__import__("pathlib").Path(cfg.out) / "study.md").read_text())
    typer.echo(f"report: {cfg.out}/study.md  ({res['wall_seconds'] / 60:.1f} min)")


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment_cmd)
    app.command("study")(study_cmd)
