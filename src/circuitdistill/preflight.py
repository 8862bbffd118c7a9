"""Checks every command runs on its inputs before any compute: each failure is a UserError that names the
option or file and says what to fix. Cheap by design: model shapes come from config.json, answers and
prompt lengths from the tokenizer alone."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from .distill.matching import load_pairing
from .models.registry import ModelNotAvailable, resolve
from .tasks.io import check_single_token
from .tasks.vocab import load_tokenizer
from .utils import UserError, fingerprint_path, read_json_file, write_json_atomic


def check_device(device: str) -> None:
    """``--device`` must name a device this torch build can use."""
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--device {device!r} is not a device name ({e}); use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available to this torch build; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here; use --device cpu")


def model_shape(model: str) -> tuple[int, int]:
    """(layers, attention heads per layer) of a model, read from its config only."""
    from transformers import AutoConfig

    path = resolve(model)
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelNotAvailable(f"cannot read the config of model {model} ({str(e).splitlines()[0]})") from None
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    try:
        return int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    except AttributeError:
        raise ModelNotAvailable(f"model {model} ({cfg.model_type}) has no decoder layers/heads in its config; "
                                f"circuitdistill needs a causal (decoder-only) language model") from None


def check_heads(heads: Iterable[tuple[str, Sequence[int]]], shape: tuple[int, int], where: str) -> None:
    """Each (label, (layer, head)) must lie inside the model (indices from 0, never negative)."""
    n_layers, n_heads = shape
    for label, (layer, head) in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise UserError(f"{where}: {label} is L{layer}.H{head}, outside the model's {n_layers} layers x "
                            f"{n_heads} heads (layer 0..{n_layers - 1}, head 0..{n_heads - 1})")


def check_pairing(path: str | Path, student: str | None, teacher: str | None = None,
                  teacher_cache: str | Path | None = None) -> None:
    """Every pair of a pairing.json names a student head of ``student`` and a teacher head of the teacher
    (the live model or the shape recorded in the teacher cache); ``student=None`` checks the teacher side only."""
    pairing = load_pairing(path)
    s_shape = model_shape(student) if student is not None else None
    if teacher is not None:
        t_shape = model_shape(teacher)
    else:
        meta = read_json_file(Path(teacher_cache) / "meta.json", "teacher cache metadata")
        t_shape = (int(meta["shape"]["n_layers"]), int(meta["shape"]["n_heads"]))
    for i, p in enumerate(pairing.pairs):
        if s_shape is not None:
            check_heads([(f"pairs[{i}].student", p.student)], s_shape, f"{path} (student {student})")
        check_heads([(f"pairs[{i}].teacher", p.teacher)], t_shape, f"{path} (teacher)")


def check_scorable(items, model: str, path: str | Path, position: int | None = None) -> None:
    """Answers, corrupted answers and candidates are single tokens for ``model``'s tokenizer (scoring reads one
    token); with ``position``, every prompt is long enough to have that (negative) token position."""
    tok = load_tokenizer(model)
    check_single_token(items, tok, path)
    if position is not None:
        lengths = [len(ids) for ids in tok([it.prompt for it in items]).input_ids]
        shortest = min(range(len(lengths)), key=lengths.__getitem__)
        if -position > lengths[shortest]:
            raise UserError(f"--position {position} is before the start of item {shortest + 1} of {path} "
                            f"({lengths[shortest]} tokens); use a position between -1 and -{lengths[shortest]}")


def input_fingerprints(paths: dict[str, str | Path | None]) -> dict[str, str]:
    """Content fingerprints of a run's inputs (files, model directories or registry names), for resume keys."""
    out = {}
    for key, ref in paths.items():
        if ref is None:
            continue
        p = Path(ref)
        if not p.exists():
            try:
                p = Path(resolve(str(ref), auto_prepare=False))
            except ModelNotAvailable:
                out[key] = "missing"
                continue
        out[key] = fingerprint_path(p)
    return out


def check_resume_inputs(out: Path, fingerprints: dict[str, str], resume: bool) -> None:
    """On resume, refuse when an input changed since the run started (recorded in OUT/inputs.json)."""
    record = out / "inputs.json"
    if resume and record.exists():
        before = read_json_file(record, "input record")
        changed = [k for k, v in fingerprints.items() if before.get(k) not in (None, v)]
        if changed:
            raise UserError(f"cannot resume {out}: {', '.join(changed)} changed since the run started (content "
                            f"differs from {record}); restore them or start over with --overwrite")
    write_json_atomic(record, fingerprints)
