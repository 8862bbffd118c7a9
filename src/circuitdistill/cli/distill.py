"""`circuitdistill match | cache-teacher | distill`.

Every option mirrors a field of the command's pydantic config (circuitdistill.distill.config); ``--config
FILE.json`` loads a config and options given on the command line override it. Run any of them under
``accelerate launch -m circuitdistill.cli.main distill ...`` for several processes / GPUs.
"""
from __future__ import annotations

import inspect
import json
import typing
from typing import Any, Callable, Literal, get_args, get_origin

import typer

from ..distill.config import CacheConfig, DistillConfig, MatchConfig, load_config

_SKIP = {"betas"}  # only settable through --config


def _option_type(ann: Any) -> Any:
    origin = get_origin(ann)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in get_args(ann) if a is not type(None)]
        return _option_type(args[0])
    if origin is Literal:
        return str
    if ann in (int, float, str, bool):
        return ann
    return str


def _build(cls, extra: list[inspect.Parameter], body: Callable) -> Callable:
    """A typer command whose options are the config fields (all default None = 'not given')."""
    params = list(extra)
    names = []
    for name, f in cls.model_fields.items():
        if name in _SKIP:
            continue
        typ = _option_type(f.annotation)
        choices = get_args(f.annotation) if get_origin(f.annotation) is Literal else None
        default = "required" if f.is_required() else json.dumps(f.default)
        help_ = f"{f.description} [default: {default}]" + (f" [choices: {', '.join(choices)}]" if choices else "")
        opt = "--" + name.replace("_", "-")
        decls = [opt] if typ is not bool else [f"{opt}/--no-{name.replace('_', '-')}"]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        default=typer.Option(None, *decls, help=help_, show_default=False),
                                        annotation=typing.Optional[typ]))
        names.append(name)

    def command(**kwargs):
        cfg_path = kwargs.pop("config", None)
        rest = {k: kwargs.pop(k) for k in list(kwargs) if k not in names}
        try:
            cfg = load_config(cls, cfg_path, **{k: kwargs[k] for k in names})
        except (ValueError, FileNotFoundError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        return body(cfg, **rest)

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = body.__doc__
    return command


_CONFIG = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY,
                            default=typer.Option(None, "--config", help="JSON file with config fields (options "
                                                 "given here override it)"), annotation=typing.Optional[str])
_RESUME = inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY,
                            default=typer.Option(False, "--resume", help="continue the run in --out from its "
                                                 "checkpoint (same config)"), annotation=bool)


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


def _distill(cfg: DistillConfig, resume: bool = False):
    """Train a student with one method: a weighted list of loss terms (see --method). Writes config.json,
    log.jsonl, loss.png, checkpoint.pt, summary.json to --out."""
    from ..distill.losses import VocabularyMismatch
    from ..distill.trainer import train

    try:
        summary = train(cfg, resume=resume)
    except (VocabularyMismatch, ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        _fail(e)
    fin = summary.get("final") or {}
    typer.echo(f"{cfg.method}: {summary['steps']} steps, final loss {fin.get('loss', float('nan')):.4f}; "
               f"trainable {summary['trainable']['trainable_params']:,} params "
               f"({summary['trainable']['n_selected_heads']}/{summary['trainable']['n_total_heads']} heads); "
               f"-> {cfg.out}")
    if summary.get("final_eval"):
        typer.echo(f"eval: {json.dumps(summary['final_eval'])}")


def _cache(cfg: CacheConfig):
    """Run the teacher once over the data; store labels, top-k logits and head outputs (safetensors)."""
    from ..distill.teacher_cache import build_cache

    try:
        out = build_cache(cfg)
    except (ValueError, FileNotFoundError, KeyError) as e:
        _fail(e)
    typer.echo(f"teacher cache: {out}")


def _match(cfg: MatchConfig):
    """Pair student heads with the teacher circuit's heads (ablation-effect distance or activation CKA)."""
    from ..distill.matching import match

    try:
        pairing = match(cfg)
    except (ValueError, FileNotFoundError, KeyError, IndexError) as e:
        _fail(e)
    typer.echo(f"{len(pairing.pairs)} pairs -> {cfg.out}/pairing.json (+ pairing.png)")
    for p in pairing.pairs:
        typer.echo(f"  student L{p.student[0]}.H{p.student[1]} ~ teacher L{p.teacher[0]}.H{p.teacher[1]}"
                   f"  distance {p.distance:.4f}")


def register(app: typer.Typer) -> None:
    app.command("distill", help=_distill.__doc__)(_build(DistillConfig, [_CONFIG, _RESUME], _distill))
    app.command("cache-teacher", help=_cache.__doc__)(_build(CacheConfig, [_CONFIG], _cache))
    app.command("match", help=_match.__doc__)(_build(MatchConfig, [_CONFIG], _match))
