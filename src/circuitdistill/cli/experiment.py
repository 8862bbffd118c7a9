"""`circuitdistill experiment` and `circuitdistill study`: the main jobs.

A preset fills in the config; ``--config FILE.json`` overrides the preset's fields, the named options override the
file and ``--set KEY=VALUE`` overrides them all. ``--print-config`` shows the result without running.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import typer
from pydantic import BaseModel

from ..experiment.config import ExperimentConfig
from ..experiment.config import preset as make_preset
from ..models.placement import DEVICE_HELP, DTYPE_HELP, THREADS_HELP
from ..output_dirs import prepare_output_dir
from ..utils import UserError
from .config_command import (CONFIG_OPTION, PRINT_CONFIG_OPTION, comma_separated, echo_config, read_config_file,
                             validated)

SET_HELP = ("override any {} field: KEY=VALUE, VALUE as JSON (e.g. --set compare_items=16 --set "
            "analyze_methods=null); repeatable")


def parse_overrides(pairs: list[str]) -> dict:
    """["k=v", ...] -> {k: json(v)}; a value that is not JSON stays a string."""
    out = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {p!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def resolve(cls: type[BaseModel], make_base: Callable[[dict], BaseModel], config: str | None, named: dict,
            pairs: list[str]) -> BaseModel:
    """The preset (``make_base`` of the values given), then the file, the named options (None: not given) and the
    --set pairs, validated as ``cls``."""
    sets = parse_overrides(pairs)
    for key in sets:
        if key not in cls.model_fields:
            raise UserError(f"--set {key}: no such field of {cls.__name__} (--print-config lists them)")
    file = read_config_file(cls, config) if config else {}
    given = {**file, **{k: v for k, v in named.items() if v is not None}, **sets}
    labels = {(k,): "--" + k.replace("_", "-") for k in named}
    validated(cls, given, labels, config)  # a bad value is named here, before the preset is built from it
    try:
        base = make_base(given).model_dump()
    except ValueError as e:
        raise UserError(str(e)) from None
    return validated(cls, {**base, **given}, labels, config)


def experiment_cmd(
    preset: str = typer.Option("demo", help="demo (entity tracking, <= 40 min on 2 cores) | paper | tiny"),
    task: Optional[str] = typer.Option(None, help="entity-tracking | tom (default: entity-tracking; the paper preset "
                                       "runs one task per call)"),
    out: Optional[str] = typer.Option(None, help="output directory (default runs/PRESET-TASK)"),
    teacher: Optional[str] = typer.Option(None, help="an existing teacher model (skips fine-tuning)"),
    student: Optional[str] = typer.Option(None, help="an existing student model (skips the warm-up)"),
    train_file: Optional[str] = typer.Option(None, help="a task of your own: training JSONL (with --validation-file, "
                                             "--test-file, --teacher and --student; replaces --task)"),
    validation_file: Optional[str] = typer.Option(None, help="a task of your own: validation JSONL"),
    test_file: Optional[str] = typer.Option(None, help="a task of your own: test JSONL"),
    teacher_base: Optional[str] = typer.Option(None, help="model the teacher is fine-tuned from"),
    student_base: Optional[str] = typer.Option(None, help="model the students start from"),
    steps: Optional[int] = typer.Option(None, help="override: optimizer steps per method"),
    seeds: Optional[list[str]] = typer.Option(None, help="override: comma-separated seeds"),
    methods: Optional[list[str]] = typer.Option(None, help="override: comma-separated methods"),
    lam: Optional[float] = typer.Option(None, help="override: lambda"),
    lr: Optional[float] = typer.Option(None, help="override: learning rate"),
    head_lr: Optional[float] = typer.Option(None, help="override: learning rate of head-only methods"),
    estimator: Optional[str] = typer.Option(None, help="override: biased | debiased"),
    n_test: Optional[int] = typer.Option(None, help="override: test items"),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP.format("ExperimentConfig")),
    config: Optional[str] = CONFIG_OPTION,
    print_config: bool = PRINT_CONFIG_OPTION,
    overwrite: bool = typer.Option(False, help="write into an --out that holds files circuitdistill did not write"),
):
    """Reproduce the paper's table: teacher, discovery, matching, every method row, evaluation, report.

    Every stage is cached by content hash under OUT/stages: re-running skips finished stages and a
    killed run continues from its last checkpoint.
    """
    named = dict(task=task, out=out, teacher=teacher, student=student, train_file=train_file,
                 validation_file=validation_file, test_file=test_file, teacher_base=teacher_base,
                 student_base=student_base, steps=steps, lam=lam, lr=lr, head_lr=head_lr, estimator=estimator,
                 n_test=n_test, threads=threads, device=device, dtype=dtype, seeds=comma_separated(seeds), methods=comma_separated(methods))
    cfg = resolve(ExperimentConfig, lambda d: make_preset(preset, d.get("task", "entity-tracking"), d.get("out")),
                  config, named, set_)
    if print_config:
        echo_config(cfg)
        return
    from ..experiment.runner import run_experiment  # deferred: matplotlib and scipy load only when it runs

    # a rerun continues the experiment in --out (its stages are cached), so our own files there are expected
    prepare_output_dir(cfg.out, overwrite=overwrite, resume=True, legacy_artifacts=("stages", "results.json"))
    results = run_experiment(cfg, log=typer.echo)
    typer.echo("")
    typer.echo((Path(cfg.out) / "report.md").read_text())
    typer.echo(f"report: {cfg.out}/report.md  results: {cfg.out}/results.json  ({results['wall_seconds'] / 60:.1f} min)")


def study_cmd(
    preset: str = typer.Option("demo", help="demo | paper | tiny: the experiment preset the grid runs on"),
    out: Optional[str] = typer.Option(None, help="output directory (default runs/study-PRESET); point it at an "
                                      "experiment's directory to reuse its stages"),
    budgets: Optional[list[str]] = typer.Option(None, help="comma-separated training-item budgets (default "
                                                "64,256,640)"),
    seeds: Optional[list[str]] = typer.Option(None, help="comma-separated seeds (default 0,1,2)"),
    methods: Optional[list[str]] = typer.Option(None, help="comma-separated rows (default: full-kd, circuit-ce, "
                                                "circuit, circuit-procrustes, circuit-iit, circuit-random)"),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP.format("StudyConfig")),
    config: Optional[str] = CONFIG_OPTION,
    print_config: bool = PRINT_CONFIG_OPTION,
):
    """When does mechanism transfer help? Every row at several data budgets and seeds: validation curves,
    steps to reach each accuracy, test accuracy with McNemar against circuit-ce and full-kd, held-out alignment.
    """
    from ..experiment.study import StudyConfig, run_study, study_preset  # deferred: matplotlib and scipy

    named = dict(out=out, budgets=comma_separated(budgets), seeds=comma_separated(seeds),
                 methods=comma_separated(methods), threads=threads, device=device, dtype=dtype)
    cfg = resolve(StudyConfig, lambda d: study_preset(preset, d.get("out")), config, named, set_)
    if print_config:
        echo_config(cfg)
        return
    res = run_study(cfg, log=typer.echo)
    typer.echo((Path(cfg.out) / "study.md").read_text())
    typer.echo(f"report: {cfg.out}/study.md  ({res['wall_seconds'] / 60:.1f} min)")


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment_cmd)
    app.command("study")(study_cmd)
