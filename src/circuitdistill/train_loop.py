"""The one training loop: every trainer (distillation, task fine-tuning, healing a pruned model, tracing students)
is a ``TrainLoop`` given its loss, evaluation and checkpoint as hooks.

The loop owns what they share: the optimizer step (backward, global-norm clipping, step, learning-rate schedule),
periodic evaluation, checkpoints every ``checkpoint_every`` steps and when the run stops, the stop conditions (step
cap, a target reached by an evaluation, a time budget), one JSONL log line per row of the run's history and the
progress bar. Data order is the trainer's: ``batch_indices`` gives the shared seeded order, a pure function of
(seed, step), so a resumed run reads exactly the batches an uninterrupted one would.

``CIRCUITDISTILL_FAULT_KILL_AFTER_STEP=k`` SIGKILLs the process right after step k is logged and checkpointed
(testing hook for resume).
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from .utils import atomic_path, write_jsonl_atomic

FAULT_ENV = "CIRCUITDISTILL_FAULT_KILL_AFTER_STEP"
TIMERS = ("train_seconds", "train_cpu_seconds", "eval_seconds")


def batch_indices(n_items: int, batch_size: int, step: int, seed: int, seed_scale: int = 100_003) -> list[int]:
    """Items of training step ``step``: consecutive slices of a seeded permutation per epoch (resume-exact); epoch
    ``e`` is permuted with seed ``seed * seed_scale + e``."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, off = divmod(pos, n_items)
        perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * seed_scale + epoch)).tolist()
        take = min(batch_size - len(out), n_items - off)
        out.extend(perm[off:off + take])
        pos += take
    return out


def save_checkpoint_file(path: Path, payload: dict) -> None:
    """One file written atomically: a kill leaves the previous checkpoint or this one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_log(path: Path) -> list[dict]:
    """The rows of a JSONL log, up to a torn last line left by a kill."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def append_log(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


@dataclass
class Outcome:
    stop_reason: str | None  # None: the step cap was reached
    interrupted: bool
    seconds: float  # wall time of this call


def _plain_backward(loss: torch.Tensor) -> None:
    loss.backward()


@dataclass
class TrainLoop:
    """``loss(step)`` (0-based) returns the loss to minimise and the step's log fields (a dict, or a function
    returning it, called after the optimizer step). ``evaluate(step)`` returns its log fields and a stop reason
    (None: go on). ``save()`` writes a checkpoint of the model, the optimizer and the state the loop was given."""

    steps: int
    loss: Callable[[int], tuple[torch.Tensor, Any]]
    optimizer: torch.optim.Optimizer
    params: list
    grad_clip: float | None = None
    scheduler: Any = None
    backward: Callable[[torch.Tensor], None] = _plain_backward
    clip_grad_norm: Callable = torch.nn.utils.clip_grad_norm_
    log_grad_norm: bool = False
    log_step_times: bool = False
    evaluate: Callable[[int], tuple[dict, str | None]] | None = None
    eval_key: str = "eval"  # a field every evaluation row has
    eval_every: int | None = None
    eval_at_start: bool = False  # evaluate before the first step of a fresh run
    eval_at_last_step: bool = True
    eval_in_step_row: bool = False  # evaluation fields join the step's row instead of a row of their own
    save: Callable[[], None] | None = None
    checkpoint_every: int = 1
    save_on_stop: bool = True  # checkpoint when a stop reason ends the run
    save_at_cap: bool = True  # checkpoint when the step cap ends the run
    max_minutes: float | None = None
    log_path: Path | None = None
    desc: str = "train"
    progress: bool = True
    stop_after: int | None = None  # return right after this step as if killed there (testing resume)

    def run(self, state: dict, stop: str | None = None) -> Outcome:
        """Train from ``state["step"]`` (``state["history"]``: the rows so far) until a stop condition holds;
        ``stop``: a reason found before training (e.g. a target already met at resume)."""
        for k in TIMERS:
            state.setdefault(k, 0.0)
        rows: list[dict] = state["history"]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            write_jsonl_atomic(self.log_path, rows)
        step = state["step"]
        if stop is None and self.eval_at_start and self.evaluate is not None and step == 0 \
                and not self.evaluated_at(rows, 0):
            stop = self.eval_row(state, 0)
        fault = int(os.environ.get(FAULT_ENV, "-1"))
        bar = tqdm(total=self.steps, initial=step, desc=self.desc, unit="step", disable=not self.progress)
        t_run = time.perf_counter()
        while stop is None and step < self.steps:
            t, c = time.perf_counter(), time.process_time()
            loss, fields = self.loss(step)
            grad_norm = self._optimizer_step(loss)
            step += 1
            row = {"step": step, **(fields() if callable(fields) else fields)}
            if self.log_grad_norm and grad_norm is not None:
                row["grad_norm"] = float(grad_norm)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            state["train_seconds"] += dt
            state["train_cpu_seconds"] += dc
            if self.log_step_times:
                row["step_time_s"], row["step_cpu_s"] = dt, dc
            due = self._eval_due(step)
            if due and self.eval_in_step_row:
                more, stop = self._timed_eval(state, step)
                row.update(more)
            self._add_row(rows, row)
            if due and not self.eval_in_step_row:
                stop = self.eval_row(state, step)
            bar.update(1)
            if "loss" in row:
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            if stop is None and self.max_minutes and time.perf_counter() - t_run > 60 * self.max_minutes:
                if not self.evaluated_at(rows, step) and self.evaluate is not None:
                    self.eval_row(state, step)
                stop = f"time budget of {self.max_minutes} minutes reached at step {step}"
            state["step"] = step
            if self.save is not None and self._save_due(step, stop):
                self.save()
            if step == fault:
                os.kill(os.getpid(), signal.SIGKILL)
            if self.stop_after is not None and step >= self.stop_after and stop is None and step < self.steps:
                bar.close()
                return Outcome(None, True, time.perf_counter() - t_run)
        bar.close()
        return Outcome(stop, False, time.perf_counter() - t_run)

    def _optimizer_step(self, loss: torch.Tensor):
        self.backward(loss)
        norm = self.clip_grad_norm(self.params, self.grad_clip) if self.grad_clip else None
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _save_due(self, step: int, stop: str | None) -> bool:
        if stop is not None:
            return self.save_on_stop
        if step == self.steps:
            return self.save_at_cap
        return step % self.checkpoint_every == 0

    def _eval_due(self, step: int) -> bool:
        if self.evaluate is None or not self.eval_every:
            return False
        if self.eval_at_last_step:
            return step % self.eval_every == 0 or step == self.steps
        return step % self.eval_every == 0 and step < self.steps

    def _timed_eval(self, state: dict, step: int) -> tuple[dict, str | None]:
        t = time.perf_counter()
        fields, stop = self.evaluate(step)
        state["eval_seconds"] += time.perf_counter() - t
        return fields, stop

    def eval_row(self, state: dict, step: int) -> str | None:
        """Evaluate now and add the row; returns the evaluation's stop reason."""
        fields, stop = self._timed_eval(state, step)
        self._add_row(state["history"], {"step": step, **fields})
        return stop

    def _add_row(self, rows: list[dict], row: dict) -> None:
        rows.append(row)
        if self.log_path is not None:
            append_log(self.log_path, row)

    def evaluated_at(self, rows: list[dict], step: int) -> bool:
        return bool(rows) and rows[-1].get("step") == step and self.eval_key in rows[-1]
