"""`circuitdistill evaluate`: task metrics with 95% CIs (optionally circuit faithfulness) -> JSON."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Optional

import typer
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from .. import preflight
from ..circuits.circuit import Circuit
from ..circuits.faithfulness import faithfulness_report
from ..models import registry
from ..models.placement import Device, DType, device_field, dtype_field, threads_field
from ..output_dirs import prepare_output_file
from ..preflight import check_heads, model_shape
from ..tasks.io import TaskFileError, load_items
from ..tasks.scoring import evaluate, format_summary
from ..utils import UserError, provenance, sha256_file, versioned, write_json_atomic
from .config_command import config_command


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, description="registry name (e.g. smollm2-135m-et-teacher) or model dir")
    data: Path = Field(..., description="task JSONL (ours, a user task, or the box-dataset format)")
    out: Optional[Path] = Field(None, description="write results JSON here (summary, per-item vectors, provenance)")
    batch_size: int = Field(32, ge=1, le=4096, description="items per forward pass")
    max_items: Optional[int] = Field(None, ge=1, validation_alias=AliasChoices("max_items", "limit"),
                                     description="score only the first N items")
    threads: int = threads_field()
    circuit: Optional[Path] = Field(None, description="circuit.json: also report circuit-only faithfulness")
    random_sets: int = Field(10, ge=0, le=10_000, description="with circuit: random head sets of the same size as "
                             "control")
    seed: int = Field(0, description="with circuit: seed of the random sets")
    per_item: bool = Field(True, description="store the per-item metric vectors in the JSON (for paired tests)")
    device: Device = device_field()
    dtype: DType = dtype_field()


def evaluate_cmd(cfg: EvaluateConfig):
    """Accuracy, candidate accuracy, answer log-prob and logit difference, each with a 95% CI."""
    import torch

    try:
        items = load_items(cfg.data)
    except (TaskFileError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if cfg.max_items:
        items = items[: cfg.max_items]
    if cfg.circuit is not None:
        if not cfg.circuit.exists():
            typer.echo(f"error: circuit file {cfg.circuit} does not exist", err=True)
            raise typer.Exit(2)
    check_evaluate_inputs(cfg, items)
    torch.set_num_threads(cfg.threads)
    try:
        m, tok = registry.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    except registry.ModelNotAvailable as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    t0 = time.perf_counter()
    res = evaluate(m, tok, items, batch_size=cfg.batch_size, progress=True)
    typer.echo(f"{cfg.model} on {cfg.data} ({res.wall_s:.1f} s)")
    typer.echo(format_summary(res.summary()))
    result = {"model": cfg.model, "data": str(cfg.data), "data_sha256": sha256_file(cfg.data),
              **res.to_json(per_item=cfg.per_item)}
    if cfg.circuit is not None:
        rep = faithfulness_report(m, tok, items, str(cfg.circuit), n_random=cfg.random_sets, seed=cfg.seed,
                                  batch_size=cfg.batch_size, progress=True)
        result["faithfulness"] = rep
        typer.echo(f"circuit: {rep.get('n_heads')} heads, faithfulness {rep.get('faithfulness')}")
    result["total_wall_s"] = time.perf_counter() - t0
    result["provenance"] = provenance(cfg.seed, cfg)
    if cfg.out:
        write_json_atomic(cfg.out, versioned("evaluation", result))
        typer.echo(f"wrote {cfg.out}")


def check_evaluate_inputs(cfg: EvaluateConfig, items) -> None:
    """Single-token answers, a usable circuit and a writable --out, before the model runs."""
    preflight.check_scorable(items, cfg.model, cfg.data)
    if cfg.circuit is not None:
        check_circuit_for_model(cfg.circuit, cfg.model)
    if cfg.out is not None:
        prepare_output_file(cfg.out)


def check_circuit_for_model(path: Path, model: str) -> None:
    """The circuit file parses, names at least one head, and was found on a model of this shape."""
    try:
        circuit = Circuit.load(path)
    except ValueError as e:
        raise UserError(str(e)) from None
    if circuit.n_heads == 0:
        raise UserError(f"circuit {path} has no heads; circuit-only faithfulness needs at least one")
    shape = model_shape(model)
    if (circuit.n_layers, circuit.n_heads_per_layer) != shape:
        raise UserError(f"circuit {path} was found on a model with {circuit.n_layers} layers x "
                        f"{circuit.n_heads_per_layer} heads; {model} has {shape[0]} x {shape[1]}")
    check_heads(((f"heads[{i}]", (h.layer, h.head)) for i, h in enumerate(circuit.heads)), shape, str(path))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(config_command(EvaluateConfig, evaluate_cmd, names={"model": ("--model", "-m")}))
