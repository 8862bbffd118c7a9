"""`circuitdistill match | cache-teacher | distill`.

Every option mirrors a field of the command's pydantic config (circuitdistill.distill.config); ``--config
FILE.json`` loads a config and options given on the command line override it. Run any of them under
``accelerate launch -m circuitdistill.cli.main distill ...`` for several processes / GPUs.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

from .. import preflight
from ..distill import trainer
from ..distill.config import HEAD_ONLY, CacheConfig, DistillConfig, MatchConfig
from ..distill.head_params import HEAD_DELTAS_FILE
from ..distill.losses import VocabularyMismatch
from ..distill.matching import match
from ..distill.teacher_cache import build_cache
from ..models.registry import check_derived_name
from ..output_dirs import is_main_process, prepare_output_dir
from ..preflight import check_pairing, model_shape
from ..tasks.io import load_items
from ..utils import UserError
from .config_command import OVERWRITE, config_command, switch

RESUME = switch("resume", "continue the run in --out from its checkpoint (same config)")


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


def check_distill_inputs(cfg: DistillConfig) -> None:
    """Everything about a distill run that can be wrong before training starts."""
    if cfg.teacher is not None and cfg.teacher_cache is not None:
        raise UserError("give --teacher (run live) or --teacher-cache (precomputed), not both")
    if cfg.pairing is not None and cfg.method not in HEAD_ONLY:
        raise UserError(f"--pairing is used only by the head-only methods ({', '.join(HEAD_ONLY)}); method "
                        f"{cfg.method} trains every parameter: drop --pairing or choose a circuit-* method")
    if cfg.save_as is not None:
        check_derived_name(cfg.save_as)
    items = load_items(cfg.data)[:cfg.max_train_items]
    preflight.check_scorable(items, cfg.student, cfg.data, position=cfg.position)
    if cfg.eval_data:
        preflight.check_scorable(load_items(cfg.eval_data)[:cfg.eval_max_items], cfg.student, cfg.eval_data)
    if cfg.pairing is not None:
        preflight.check_pairing(cfg.pairing, cfg.student, cfg.teacher, cfg.teacher_cache)


def _prepare_run_dir(cfg: DistillConfig, resume: bool, overwrite: bool) -> None:
    out = prepare_output_dir(cfg.out, overwrite=overwrite, resume=resume, resume_flag="--resume",
                             legacy_artifacts=(trainer.CHECKPOINT, "log.jsonl"))
    if overwrite and not resume:
        (out / trainer.CHECKPOINT).unlink(missing_ok=True)
        (out / HEAD_DELTAS_FILE).unlink(missing_ok=True)  # a full-model run over a head-only one has none
    prints = preflight.input_fingerprints({"data": cfg.data, "student": cfg.student, "teacher": cfg.teacher,
                                           "teacher_cache": cfg.teacher_cache, "pairing": cfg.pairing})
    preflight.check_resume_inputs(out, prints, resume)


def _interrupted(cfg: DistillConfig) -> str:
    log = Path(cfg.out) / "log.jsonl"
    done = 0
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            done = max(done, int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            break  # a torn last line
    saved = done // cfg.checkpoint_every * cfg.checkpoint_every
    config = Path(cfg.out) / trainer.RUN_CONFIG
    if saved == 0:
        return (f"interrupted after step {done} of {cfg.steps}, before the first checkpoint; start again with: "
                f"circuitdistill distill --config {config} --overwrite")
    return (f"interrupted after step {done} of {cfg.steps}; the last checkpoint (step {saved}) is in {cfg.out}. "
            f"Continue with: circuitdistill distill --config {config} --resume")


def _distill(cfg: DistillConfig, resume: bool = False, overwrite: bool = False):
    """Train a student with one method: a weighted list of loss terms (see --method). Writes run_config.json,
    log.jsonl, loss.png, summary.json and the student as a Hugging Face checkpoint in model/ to --out (head-only
    methods also head_deltas.safetensors: the trained slices alone, see `circuitdistill merge`); checkpoint.pt
    is deleted at the end unless --keep-checkpoints."""
    check_distill_inputs(cfg)
    if is_main_process():
        _prepare_run_dir(cfg, resume, overwrite)
    try:
        summary = trainer.train(cfg, resume=resume)
    except (VocabularyMismatch, ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        _fail(e)
    except KeyboardInterrupt:
        typer.echo(_interrupted(cfg), err=True)
        raise typer.Exit(130)
    fin = summary.get("final") or {}
    typer.echo(f"{cfg.method}: {summary['steps']} steps, final loss {fin.get('loss', float('nan')):.4f}; "
               f"trainable {summary['trainable']['trainable_params']:,} params "
               f"({summary['trainable']['n_selected_heads']}/{summary['trainable']['n_total_heads']} heads); "
               f"-> {cfg.out}")
    if summary.get("final_eval"):
        typer.echo(f"eval: {json.dumps(summary['final_eval'])}")


def _cache(cfg: CacheConfig, overwrite: bool = False):
    """Run the teacher once over the data; store labels, top-k logits and head outputs (safetensors)."""
    load_items(cfg.data)
    if cfg.pairing is not None:
        check_pairing(cfg.pairing, None, teacher=cfg.teacher)
    if is_main_process():
        prepare_output_dir(cfg.out, overwrite=overwrite, legacy_artifacts=("meta.json",))
    try:
        out = build_cache(cfg)
    except (ValueError, FileNotFoundError, KeyError) as e:
        _fail(e)
    typer.echo(f"teacher cache: {out}")


def _match(cfg: MatchConfig, overwrite: bool = False):
    """Pair student heads with the teacher circuit's heads (ablation-effect distance or activation CKA)."""
    load_items(cfg.data)
    if cfg.budget >= 1:
        n_layers, n_heads = model_shape(cfg.student)
        if cfg.budget > n_layers * n_heads:
            raise UserError(f"--budget {cfg.budget:g} is more than the {n_layers * n_heads} heads of {cfg.student}")
    if is_main_process():
        prepare_output_dir(cfg.out, overwrite=overwrite, legacy_artifacts=("pairing.json",))
    try:
        pairing = match(cfg)
    except (ValueError, FileNotFoundError, KeyError, IndexError) as e:
        _fail(e)
    typer.echo(f"{len(pairing.pairs)} pairs -> {cfg.out}/pairing.json (+ pairing.png)")
    for p in pairing.pairs:
        typer.echo(f"  student L{p.student[0]}.H{p.student[1]} ~ teacher L{p.teacher[0]}.H{p.teacher[1]}"
                   f"  distance {p.distance:.4f}")


def register(app: typer.Typer) -> None:
    app.command("distill")(config_command(DistillConfig, _distill, extra=[RESUME, OVERWRITE]))
    app.command("cache-teacher")(config_command(CacheConfig, _cache, extra=[OVERWRITE]))
    app.command("match")(config_command(MatchConfig, _match, extra=[OVERWRITE]))
