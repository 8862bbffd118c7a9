"""`circuitdistill merge`: base model + head_deltas.safetensors -> a Hugging Face checkpoint."""
from __future__ import annotations

from pathlib import Path

import typer

from ..distill.config import MergeConfig
from ..distill.head_params import apply_head_deltas
from ..models.registry import load_model, save_model_dir
from ..utils import MissingFile, sha256_file
from .config_command import OVERWRITE, config_command


def _merge(cfg: MergeConfig, overwrite: bool = False):
    """Add a head-only run's trained slices (head_deltas.safetensors) to its base model and save the result with
    save_pretrained + tokenizer: the same weights as that run's model/, from a file a fraction of the size."""
    if not Path(cfg.deltas).is_file():
        raise MissingFile(f"--deltas {cfg.deltas} does not exist (a head-only distill run writes "
                          f"OUT/head_deltas.safetensors)")
    model, tok = load_model(cfg.base, device="cpu", dtype=cfg.dtype)
    meta = apply_head_deltas(model, cfg.deltas)
    out = save_model_dir(model, tok, Path(cfg.out), {
        "name": Path(cfg.out).name, "description": f"{cfg.base} with the head deltas of {cfg.deltas}",
        "merge": {**cfg.model_dump(mode="json"), "deltas_sha256": sha256_file(cfg.deltas),
                  "trained_on": meta.get("base")}}, overwrite=overwrite)
    typer.echo(f"merged {cfg.deltas} into {cfg.base} -> {out}")


def register(app: typer.Typer) -> None:
    app.command("merge")(config_command(MergeConfig, _merge, extra=[OVERWRITE]))
