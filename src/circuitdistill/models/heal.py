"""Healing a pruned model: logit distillation from the unpruned model plus the LM loss, on general text.

Loss per step: ``kd_weight * T^2 * KL(teacher_T || student_T) + lm_weight * CE(next token)``, both averaged
over ``loss_positions`` evenly spaced positions of packed ``seq_len``-token chunks of the healing text (the
spacing shifts by one position each step). Logits are computed only at those positions: on a small model the
vocabulary projection costs more than all decoder blocks together, so this cuts a step's cost about 2.4x
(SmolLM2-135M, 32 of 128 positions) while every token still passes through the blocks as context. AdamW, a fixed data order per
seed (step ``s`` reads a slice of a seeded per-epoch permutation of the chunks), no other randomness.

Perplexity on the held-out text is measured before healing and every ``eval_every`` steps; healing stops
once it is within ``ppl_target_ratio`` times the unpruned model's perplexity, after ``steps``, or once this
run has healed for ``max_minutes``.
A checkpoint is one file written atomically (student weights, optimizer state, step, history), so it is
valid as a whole or absent; a rerun with the same settings resumes from it and reaches the same weights,
bit for bit, as a run that was never interrupted (with the same thread count).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..train_loop import TrainLoop, batch_indices, save_checkpoint_file
from ..utils import sha256_json
from .general_text import perplexity
from .placement import threads_field

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
# settings that do not change the weights' trajectory: a resumed run may differ in them
RESUME_MAY_CHANGE = {"steps", "checkpoint_every", "ppl_target_ratio", "eval_every", "threads", "max_minutes"}


class HealConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(300, ge=0, le=1_000_000, description="most healing steps; 0 skips healing")
    lr: float = Field(1e-4, gt=0, le=1.0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    batch_size: int = Field(8, ge=1, le=4096, description="chunks per step")
    seq_len: int = Field(128, ge=8, le=8192, description="tokens per chunk")
    temperature: float = Field(1.0, gt=0, description="distillation temperature: softens both distributions in "
                                "the KL term")
    kd_weight: float = Field(1.0, ge=0, description="weight of the KL to the source's next-token distribution")
    lm_weight: float = Field(1.0, ge=0, description="weight of the next-token cross-entropy")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the global gradient norm (None: off)")
    loss_positions: int | None = Field(32, ge=1, description="evenly spaced positions per chunk the losses read "
                                       "(0 or None: all)")
    ppl_target_ratio: float | None = Field(1.3, gt=1.0, description="stop healing once held-out perplexity <= this "
                                           "x the source's (0 or None: never)")
    eval_every: int = Field(25, ge=1, description="steps between held-out perplexity checks")
    eval_max_length: int = Field(128, ge=8, description="tokens per held-out passage in the perplexity checks")
    checkpoint_every: int = Field(25, ge=1, description="steps between checkpoints")
    max_minutes: float | None = Field(None, gt=0, description="stop healing after this many minutes (wall) in this "
                                      "run")
    threads: int = threads_field()

    @field_validator("loss_positions", "ppl_target_ratio", mode="before")
    @classmethod
    def _zero_is_off(cls, v):
        return None if v == 0 else v


def pack_chunks(tokenizer, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """Concatenate the texts' tokens (each followed by EOS) and cut them into [n_chunks, seq_len]."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False).input_ids + ([eos] if eos is not None else [])
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"the healing text has {len(ids)} tokens, fewer than one chunk of seq_len={seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def loss_positions(seq_len: int, n: int | None, step: int) -> torch.Tensor | None:
    """Every ``stride``-th position of a chunk, shifted by one each step so all positions take turns."""
    if n is None or n >= seq_len - 1:
        return None
    stride = (seq_len - 1) // n
    return torch.arange(n) * stride + step % stride


def heal_loss(student, teacher, ids: torch.Tensor, cfg: HealConfig, step: int = 0) -> tuple[torch.Tensor, dict]:
    ids = ids.to(next(student.parameters()).device)
    pos = loss_positions(ids.shape[1], cfg.loss_positions, step)
    keep = pos if pos is not None else 0  # logits_to_keep=0 keeps every position
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, use_cache=False, logits_to_keep=keep).logits.float()
    s_logits = student(input_ids=ids, use_cache=False, logits_to_keep=keep).logits.float()
    if pos is None:
        t_logits, s_logits, target = t_logits[:, :-1], s_logits[:, :-1], ids[:, 1:]
    else:
        target = ids[:, pos + 1]
    vocab = s_logits.shape[-1]
    ce = F.cross_entropy(s_logits.reshape(-1, vocab), target.reshape(-1))
    T = cfg.temperature
    kd = F.kl_div(F.log_softmax(s_logits / T, -1).reshape(-1, vocab),
                  F.log_softmax(t_logits / T, -1).reshape(-1, vocab), log_target=True, reduction="batchmean") * T * T
    return cfg.kd_weight * kd + cfg.lm_weight * ce, {"kd": kd.item(), "ce": ce.item()}


def heal(student, teacher, tokenizer, train_texts: Sequence[str], heldout_texts: Sequence[str], cfg: HealConfig,
         seed: int, run_dir: str | Path, teacher_ppl: float, identity: dict, resume: bool = True,
         progress: bool = True, stop_after: int | None = None) -> dict:
    """Heal ``student`` in place. ``identity`` (source, dropped layers, data hashes) must match for a resume.
    ``stop_after=k`` returns right after step k, as if killed there (for testing resume); the record then
    has ``"interrupted": True``."""
    run_dir = Path(run_dir)
    torch.set_num_threads(cfg.threads)
    ckpt = run_dir / CHECKPOINT
    cfg_hash = sha256_json({"heal": cfg.model_dump(mode="json", exclude=RESUME_MAY_CHANGE), "seed": seed,
                            **identity})
    chunks = pack_chunks(tokenizer, train_texts, cfg.seq_len)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"step": 0, "history": [], "train_seconds": 0.0, "train_cpu_seconds": 0.0, "eval_seconds": 0.0}
    resumed_from = None
    if resume and ckpt.exists():
        ck = torch.load(ckpt, map_location="cpu", weights_only=False)
        if ck["config_hash"] != cfg_hash:
            raise ValueError(f"{ckpt} was written by a different derivation or healing config; use another "
                             f"--out or --no-resume")
        student.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        resumed_from = state["step"]
    history: list[dict] = state["history"]
    target = cfg.ppl_target_ratio * teacher_ppl if cfg.ppl_target_ratio else None

    def evaluate(step: int) -> tuple[dict, str | None]:
        student.eval()
        ppl = perplexity(student, tokenizer, list(heldout_texts), max_length=cfg.eval_max_length, progress=progress)
        student.train()
        return {"heldout_ppl": ppl, "ratio": ppl / teacher_ppl}, reached(ppl, step)

    def reached(ppl: float, step: int) -> str | None:
        if target is not None and ppl <= target:
            return f"held-out perplexity {ppl:.2f} <= target {target:.2f} at step {step}"
        return None

    def step_loss(step: int):
        ids = chunks[batch_indices(len(chunks), cfg.batch_size, step, seed)]
        loss, parts = heal_loss(student, teacher, ids, cfg, step)
        return loss, lambda: {"loss": loss.item(), **parts}

    def save() -> None:
        save_checkpoint_file(ckpt, {"config_hash": cfg_hash, "model": student.state_dict(),
                                    "optimizer": opt.state_dict(), "state": state})

    evals = [h for h in history if "heldout_ppl" in h]
    stop_reason = reached(evals[-1]["heldout_ppl"], state["step"]) if evals else None
    student.train()
    loop = TrainLoop(steps=cfg.steps, loss=step_loss, optimizer=opt, params=list(student.parameters()),
                     grad_clip=cfg.grad_clip, evaluate=evaluate, eval_key="heldout_ppl", eval_every=cfg.eval_every,
                     eval_at_start=True, save=save, checkpoint_every=cfg.checkpoint_every,
                     max_minutes=cfg.max_minutes, log_path=run_dir / LOG, desc="heal", progress=progress,
                     stop_after=stop_after)
    outcome = loop.run(state, stop_reason)
    step = state["step"]
    if outcome.interrupted:
        return {"interrupted": True, "steps": step}
    stop_reason = outcome.stop_reason
    student.eval()
    evals = [h for h in history if "heldout_ppl" in h]
    return {
        "steps": step, "stop_reason": stop_reason or f"reached steps={cfg.steps}",
        "ppl_before": evals[0]["heldout_ppl"], "ppl_after": evals[-1]["heldout_ppl"],
        "ratio_after": evals[-1]["heldout_ppl"] / teacher_ppl, "target_ppl": target,
        "train_chunks": len(chunks), "tokens_seen": step * cfg.batch_size * cfg.seq_len,
        "train_seconds": round(state["train_seconds"], 1), "train_cpu_seconds": round(state["train_cpu_seconds"], 1),
        "eval_seconds": round(state["eval_seconds"], 1), "this_run_wall_seconds": round(outcome.seconds, 1),
        "resumed_from_step": resumed_from, "history": history, "checkpoint": str(ckpt),
    }
