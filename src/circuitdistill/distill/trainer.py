"""Distillation training: every row of the paper's table from one DistillConfig.

Runs as a single process or under ``accelerate launch`` (any number of processes / GPUs):

* data order is a pure function of (seed, step): step s uses items ``order[s*B:(s+1)*B]`` of a per-epoch
  seeded permutation; each process takes its contiguous share of the GLOBAL batch (B must divide by the
  number of processes). Every process tokenises the whole global batch and keeps its rows, so padding is
  identical to a one-process run;
* the CE / KD terms are per-process means; DDP averages gradients, giving the global mean;
* CKA is computed over the GLOBAL batch: the student's head rows are all-gathered with a gradient-preserving
  gather (backward all-reduces the row gradients and keeps the local share), the teacher's rows come from the
  cache for the global batch (or are gathered from the live teacher). Every process therefore sees the same
  similarity, and the gradient equals the one-process gradient;
* checkpoints are one file written atomically (``checkpoint.pt``: trainable tensors, optimizer state, step);
  ``resume=True`` continues a killed run and reaches the same weights as an uninterrupted run.

The environment variable ``CIRCUITDISTILL_FAULT_KILL_AFTER_STEP=k`` SIGKILLs the process right after step k
(testing hook for resume).
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..circuits.interchange import interchange_logits
from ..models.grad_checkpoint import enable_gradient_checkpointing
from ..models.hooks import HookedLM, hook_name
from ..models.registry import load_model, save_derived, save_model_dir
from ..preflight import input_fingerprints
from ..tasks.batching import encode_items, first_token_id
from ..tasks.io import load_items
from ..tasks.scoring import evaluate, forward_inputs
from ..utils import (atomic_path, provenance, save_figure_atomic, seed_everything, sha256_json, versioned,
                     write_json_atomic, write_jsonl_atomic)
from .cka import CKAAccumulator
from .config import DistillConfig
from .head_params import HEAD_DELTAS_FILE, HeadDeltas, full_model_report, save_head_deltas
from .losses import check_same_vocab, vocab_fingerprint
from .losses.terms import TERMS, StepInputs
from .matching import load_pairing
from .methods import METHODS, term_names, weight_of
from .teacher_cache import TeacherCache, teacher_pass

CHECKPOINT = "checkpoint.pt"
# fields that do not change the trajectory: a resumed run may differ in these (e.g. more steps)
RESUME_MAY_CHANGE = ("steps", "out", "threads", "checkpoint_every", "keep_checkpoints", "save_as", "eval_data",
                     "eval_teacher_cache", "eval_pairing", "eval_interval", "eval_max_items", "eval_batch_size")
LOG = "log.jsonl"
RUN_CONFIG = "run_config.json"  # the run's own config + provenance (config.json in OUT/model/ is the HF model's)
MODEL_DIR = "model"  # the final student, a Hugging Face checkpoint (save_pretrained + tokenizer)


# ---- distributed helpers ------------------------------------------------------------------------------------
def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 (equal shares, rank order) whose backward sums the row gradients of all processes
    and returns this process's share (every process's loss depends on every row)."""

    @staticmethod
    def forward(ctx, x):
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Gradient-preserving all-gather of rows (identity in one process)."""
    return _GatherRows.apply(x) if _dist_on() else x


@torch.no_grad()
def gather_rows_nograd(x: torch.Tensor) -> torch.Tensor:
    if not _dist_on():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def _mean_all(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone()
    if _dist_on():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


# ---- data order ---------------------------------------------------------------------------------------------
def global_indices(step: int, batch_size: int, n_items: int, seed: int) -> list[int]:
    """Item indices of the global batch at ``step``: consecutive slices of seeded per-epoch permutations."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, off = divmod(pos + len(out), n_items)
        perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = min(batch_size - len(out), n_items - off)
        out.extend(perm[off:off + take].tolist())
    return out


def random_pairing(student_heads, aligned_teacher, pool, seed: int) -> list[tuple[int, int]]:
    """The control's partners: each DISTINCT aligned partner is replaced by a distinct random head of ``pool``
    (never itself when the pool allows), so student heads that share a partner still share one and the control
    keeps the pairing's many-to-one structure. Seeded."""
    g = torch.Generator().manual_seed(seed + 7919)
    pool = sorted(set(map(tuple, pool)))
    partners = list(dict.fromkeys(map(tuple, aligned_teacher)))
    if len(pool) < len(partners):
        raise ValueError(f"the random control needs {len(partners)} distinct teacher heads, the pool has "
                         f"{len(pool)}; use random_pool='all'")
    best = None
    for _ in range(200):  # rejection sampling towards a draw without fixed points
        draw = [pool[i] for i in torch.randperm(len(pool), generator=g)[:len(partners)].tolist()]
        fixed = sum(d == p for d, p in zip(draw, partners))
        if best is None or fixed < best[0]:
            best = (fixed, draw)
        if fixed == 0:
            break
    swap = dict(zip(partners, best[1]))
    return [swap[tuple(t)] for t in aligned_teacher]


# ---- the run ------------------------------------------------------------------------------------------------
@dataclass
class RunState:
    step: int = 0
    rows: list = field(default_factory=list)


def _pair_key(s, t) -> str:
    return f"L{s[0]}.H{s[1]}~L{t[0]}.H{t[1]}"


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def train(cfg: DistillConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) one distillation; returns the summary (also written to ``out/summary.json``)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    torch.set_num_threads(cfg.threads)
    method = METHODS[cfg.method]
    head_only = method.trains == "heads"
    terms = [(TERMS[n], weight_of(cfg.method, n, cfg)) for n in term_names(cfg.method)]
    terms = [(t, w) for t, w in terms if w != 0.0]
    needs = frozenset().union(*(t.needs for t, _ in terms))
    need_rows, need_cf = "head_rows" in needs, "counterfactual" in needs
    # a pair term alone leaves the o-slices of the last matched layer without gradient; DDP must be told
    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(
        find_unused_parameters=not any(t.name in ("ce", "kd", "iit") for t, _ in terms))])
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must divide by the number of processes ({world})")
    local_b = cfg.batch_size // world
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    # what the run reads joins the hash, so a resume after the data or a model changed is refused
    cfg_hash = sha256_json({"config": cfg.model_dump(mode="json", exclude=set(RESUME_MAY_CHANGE)),
                            "inputs": input_fingerprints({"data": cfg.data, "student": cfg.student,
                                                          "teacher": cfg.teacher, "teacher_cache": cfg.teacher_cache,
                                                          "interchange_cache": cfg.interchange_cache,
                                                          "pairing": cfg.pairing})})
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    seed_everything(cfg.seed)
    device = accelerator.device

    # --- data, student, teacher ---
    items = load_items(cfg.data)
    if cfg.max_train_items:
        items = items[:cfg.max_train_items]
    if len(items) < cfg.batch_size:
        raise ValueError(f"{cfg.data} has {len(items)} items; batch_size {cfg.batch_size} needs at least that many")
    student, tok = load_model(cfg.student, device=device, dtype=cfg.dtype)
    s_hooked = HookedLM(student, tok)
    cache = teacher = t_hooked = None
    if cfg.teacher_cache:
        cache = TeacherCache(cfg.teacher_cache)
        same_tok = cache.meta["vocab_fingerprint"] == vocab_fingerprint(tok)
        answers = encode_items(tok, items[:min(len(items), 64)])["answer_ids"] if same_tok else None
        cache.check_data(cfg.data, len(items), answers)
        cache_labels = cache.labels_for(tok, vocab_fingerprint(tok))
        if need_rows and cache.position != cfg.position:
            raise ValueError(f"teacher cache {cfg.teacher_cache} stored position {cache.position}; the config asks "
                             f"for position {cfg.position}")
        t_vocab, t_fp = cache.meta["vocab_size"], cache.meta["vocab_fingerprint"]
        t_shape = cache.meta["shape"]
        t_name = cache.meta.get("teacher", "teacher")
    else:
        teacher, t_tok = load_model(cfg.teacher, device=device, dtype=cfg.dtype)
        for p in teacher.parameters():
            p.requires_grad_(False)
        t_hooked = HookedLM(teacher, t_tok)
        t_vocab, t_fp = teacher.get_output_embeddings().weight.shape[0], vocab_fingerprint(t_tok)
        same_tok = t_fp == vocab_fingerprint(tok)
        t_shape = {"n_layers": t_hooked.shape.n_layers, "n_heads": t_hooked.shape.n_heads}
        t_name = cfg.teacher
    if cfg.method == "logit-kd":
        check_same_vocab(t_vocab, student.get_output_embeddings().weight.shape[0], t_fp, vocab_fingerprint(tok),
                         t_name, cfg.student)

    # --- pairs and trainable parameters ---
    pairs: list[tuple[tuple[int, int], tuple[int, int]]] = []
    if head_only:
        pairing = load_pairing(cfg.pairing)
        s_heads = pairing.student_heads
        t_heads = [p.teacher for p in pairing.pairs]
        if method.partners == "random":
            pool = ([(l, h) for l in range(t_shape["n_layers"]) for h in range(t_shape["n_heads"])]
                    if cfg.random_pool == "all" else pairing.circuit)
            t_heads = random_pairing(s_heads, t_heads, pool, cfg.seed)
        pairs = list(zip(s_heads, t_heads))
        if cache is not None and need_rows:
            cache.require_heads([t for _, t in pairs])
        deltas = HeadDeltas(student, s_heads, cfg.gqa_policy)
        params = deltas.parameters()
        report = deltas.report()
    else:
        deltas = None
        for p in student.parameters():
            p.requires_grad_(True)
        params = [p for p in student.parameters()]
        report = full_model_report(student)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(student)
    pair_keys = [_pair_key(s, t) for s, t in pairs]
    s_layers = sorted({s[0] for s, _ in pairs})
    t_pairs_heads = [t for _, t in pairs]
    eval_pairs = _aligned_pairs(cfg)
    cf_cache = None
    if need_cf:
        no_source = [i for i, it in enumerate(items) if not it.corrupted_prompt]
        if no_source:
            raise ValueError(f"{cfg.data}: {len(no_source)} training item(s) have no corrupted_prompt (first: line "
                             f"{no_source[0] + 1}); {cfg.method} patches the matched heads from it")
        if cache is not None:
            cf_cache = TeacherCache(cfg.interchange_cache) if cfg.interchange_cache else cache
            if cfg.interchange_cache:
                cf_cache.check_data(cfg.data, len(items))
            cf_cache.require_interchange(t_pairs_heads)

    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(student, optimizer)

    # --- resume ---
    state = RunState()
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck["config_hash"] != cfg_hash:
            raise ValueError(f"{ckpt_path} was written by a different config or from other inputs (data, models, "
                             f"caches, pairing); resume needs the same config except {', '.join(RESUME_MAY_CHANGE)} "
                             f"and unchanged inputs (compare with {RUN_CONFIG} in that directory)")
        if ck["step"] > cfg.steps:
            raise ValueError(f"{ckpt_path} is at step {ck['step']}, beyond steps={cfg.steps}")
        _load_trainable(deltas, student, ck["trainable"])
        optimizer.load_state_dict(ck["optimizer"])
        state.step = ck["step"]
        state.rows = [r for r in _read_log(out / LOG) if r["step"] <= state.step]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / RUN_CONFIG, versioned("distill-run-config", {
                                                **provenance(cfg.seed, cfg), "config_hash": cfg_hash,
                                                "world_size": world, "trainable": report,
                                                "backend": dist.get_backend() if _dist_on() else None}))
        _write_log(out / LOG, state.rows)
    accelerator.wait_for_everyone()

    eval_items = None
    if cfg.eval_data:
        eval_items = load_items(cfg.eval_data)[:cfg.eval_max_items]
    fault = int(os.environ.get("CIRCUITDISTILL_FAULT_KILL_AFTER_STEP", "-1"))
    if eval_items is not None and state.step == 0:
        start = {"step": 0, "eval": _evaluate(cfg, model, tok, eval_items, eval_pairs, accelerator)}
        state.rows.append(start)
        if main:
            _append_log(out / LOG, start)
    t_start = time.time()
    bar = tqdm(range(state.step, cfg.steps), desc=f"distill {cfg.method}", unit="step",
               disable=not (progress and main), initial=state.step, total=cfg.steps)
    for step in bar:
        t0, c0 = time.perf_counter(), time.process_time()
        gidx = global_indices(step, cfg.batch_size, len(items), cfg.seed)
        batch = encode_items(tok, [items[i] for i in gidx])
        lo, hi = rank * local_b, (rank + 1) * local_b
        local = {k: v[lo:hi] for k, v in batch.items()}
        inputs = {k: v.to(device) for k, v in forward_inputs(local).items()}
        grows = torch.tensor(gidx)

        # teacher side
        x = StepInputs(final=None, labels=None)
        local_items = [items[i] for i in gidx[lo:hi]]
        if cache is not None:
            labels = cache_labels[grows[lo:hi]]
            x.teacher_topk = (cache.topk_values[grows[lo:hi]], cache.topk_indices[grows[lo:hi]])
            x.teacher_rows = cache.head_rows(grows, t_pairs_heads).to(device) if need_rows else None
            if need_cf:
                x.cf_teacher = tuple(t[grows[lo:hi]] for t in cf_cache.cf_topk)
        else:
            t_in = local if same_tok else {k: v[lo:hi] for k, v in encode_items(t_tok, [items[i] for i in gidx]).items()}
            t_logits, t_local = teacher_pass(t_hooked, t_in, t_pairs_heads if need_rows else [], cfg.position)
            labels = t_logits.argmax(-1)
            if not same_tok:  # teacher token -> text -> the student's first token
                labels = torch.tensor([first_token_id(tok, t_tok.decode([int(i)])) for i in labels.tolist()])
            x.teacher_logits = t_logits
            x.teacher_rows = gather_rows_nograd(t_local) if need_rows else None
            if need_cf:
                with torch.no_grad():
                    x.cf_teacher = interchange_logits(t_hooked, t_in, encode_items(t_tok, local_items, corrupted=True),
                                                      sorted(set(t_pairs_heads)), cfg.position).float()
        if cfg.label_source == "gold":
            labels = local["answer_ids"]
        x.labels = labels.to(device)

        # student forward (record matched heads' outputs for pair terms)
        record = [hook_name(l, "attn.hook_z") for l in s_layers] if need_rows else []
        with s_hooked.hooks(record=record) as rec:
            x.final = model(**inputs, logits_to_keep=1).logits[:, -1, :]
        if need_rows:
            s_local = torch.stack([rec[hook_name(l, "attn.hook_z")][:, cfg.position, h, :] for (l, h), _ in pairs], 1)
            x.student_rows = gather_rows(s_local)
        if need_cf:
            x.cf_final = interchange_logits(s_hooked, local, encode_items(tok, local_items, corrupted=True),
                                            [s for s, _ in pairs], cfg.position)
        values: dict[str, torch.Tensor] = {}
        extras: dict[str, dict] = {}
        for term, weight in terms:
            v, info = term.value(x, cfg)
            values[term.name] = weight * v
            extras[term.name] = info
        loss = sum(values.values())
        accelerator.backward(loss)
        grad_norm = None
        if cfg.grad_clip is not None:
            grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        # log (global values: local means averaged over processes; pair terms are already global)
        row = {"step": step + 1}
        total = 0.0
        for k, v in values.items():
            g = v.item() if "pair_similarity" in extras[k] else _mean_all(v).item()
            row[k] = g
            total += g
            if "pair_similarity" in extras[k]:
                sims = extras[k]["pair_similarity"]
                row[f"{k}_pairs"] = dict(zip(pair_keys, sims.tolist()))
                row[f"{k}_mean"] = sims.mean().item()
        row["loss"] = total
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        row["step_time_s"] = time.perf_counter() - t0
        row["step_cpu_s"] = time.process_time() - c0  # CPU seconds of this process (robust on a shared machine)
        if eval_items is not None and cfg.eval_interval and (step + 1) % cfg.eval_interval == 0 and step + 1 < cfg.steps:
            row["eval"] = _evaluate(cfg, model, tok, eval_items, eval_pairs, accelerator)
        state.rows.append(row)
        state.step = step + 1
        if main:
            _append_log(out / LOG, row)
            bar.set_postfix(loss=f"{total:.4f}")
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            if main:
                _save_checkpoint(ckpt_path, deltas, student, optimizer, state.step, cfg_hash)
                _plot(out / "loss.png", state.rows, cfg)
            accelerator.wait_for_everyone()
        if state.step == fault:
            os.kill(os.getpid(), signal.SIGKILL)

    # --- finish ---
    final_eval = _evaluate(cfg, model, tok, eval_items, eval_pairs, accelerator) if eval_items is not None else None
    if deltas is not None:
        if main:
            save_head_deltas(deltas, out / HEAD_DELTAS_FILE, base=cfg.student)
        deltas.merge()
    timed = [r for r in state.rows if "step_time_s" in r]
    summary = {"method": cfg.method, "steps": cfg.steps, "world_size": world, "trainable": report,
               "pairs": [{"student": list(s), "teacher": list(t)} for s, t in pairs],
               "final": state.rows[-1] if state.rows else None, "final_eval": final_eval,
               "wall_s_this_session": round(time.time() - t_start, 2),
               "start_eval": next((r["eval"] for r in state.rows if r["step"] == 0), None),
               "mean_step_time_s": _mean([r["step_time_s"] for r in timed[1:]] or [r["step_time_s"] for r in timed]),
               **provenance(cfg.seed, cfg)}
    if main:
        _plot(out / "loss.png", state.rows, cfg)
        meta = {"name": f"{cfg.method}-student", "description": f"{cfg.method} student of {t_name}",
                "distill": cfg.model_dump(mode="json")}
        save_model_dir(student, tok, out / MODEL_DIR, meta)
        if cfg.save_as:
            save_derived(student, tok, cfg.save_as, {"description": f"{cfg.method} student of {t_name}",
                                                     "distill": summary})
        write_json_atomic(out / "summary.json", versioned("distill-summary", summary))
        if not cfg.keep_checkpoints:
            ckpt_path.unlink(missing_ok=True)  # the model is in model/; the optimizer state is 2x the trainables
    accelerator.wait_for_everyone()
    return summary


def _aligned_pairs(cfg: DistillConfig) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The pairs whose held-out alignment is measured: the ALIGNED pairing, whatever partners the loss uses."""
    path = cfg.eval_pairing or cfg.pairing
    return [(p.student, p.teacher) for p in load_pairing(path).pairs] if path else []


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def _load_trainable(deltas, model, state: dict) -> None:
    if deltas is not None:
        deltas.load_state_dict(state)
    else:
        missing = model.load_state_dict(state, strict=False)
        if missing.missing_keys:
            raise KeyError(f"checkpoint lacks parameters {missing.missing_keys[:3]}")


def _save_checkpoint(path: Path, deltas, model, optimizer, step: int, cfg_hash: str) -> None:
    trainable = deltas.state_dict() if deltas is not None else {k: v.detach().clone()
                                                                 for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"step": step, "trainable": trainable, "optimizer": optimizer.state_dict(),
                    "config_hash": cfg_hash}, tmp)


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a kill
    return rows


def _write_log(path: Path, rows: list[dict]) -> None:
    write_jsonl_atomic(path, rows)


def _append_log(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


@torch.no_grad()
def _evaluate(cfg: DistillConfig, model, tok, eval_items, pairs, accelerator) -> dict | None:
    """Main process: task accuracy of the student on eval items; with an eval teacher cache also the held-out
    alignment, exact debiased CKA over all eval items between each student head and its aligned partner."""
    res = None
    if accelerator.is_main_process:
        inner = _unwrap(model)
        r = evaluate(inner, tok, eval_items, batch_size=cfg.eval_batch_size)
        s = r.summary()
        res = {"n": s["n"], "accuracy": s["accuracy"]["mean"], "candidate_accuracy": s["candidate_accuracy"]["mean"]}
        if cfg.eval_teacher_cache and pairs:
            ec = TeacherCache(cfg.eval_teacher_cache)
            ec.check_data(cfg.eval_data, len(eval_items))
            t_heads = [t for _, t in pairs]
            ec.require_heads(t_heads)
            hooked = HookedLM(inner, tok)
            accs = [CKAAccumulator(debiased=True) for _ in pairs]
            layers = sorted({s[0] for s, _ in pairs})
            device = next(inner.parameters()).device
            for i in range(0, len(eval_items), cfg.eval_batch_size):
                b = encode_items(tok, eval_items[i:i + cfg.eval_batch_size])
                with hooked.hooks(record=[hook_name(l, "attn.hook_z") for l in layers], detach=True) as rec:
                    inner(**{k: v.to(device) for k, v in forward_inputs(b).items()}, logits_to_keep=1)
                t = ec.head_rows(torch.arange(i, i + b["input_ids"].shape[0]), t_heads)
                for j, ((l, h), _) in enumerate(pairs):
                    accs[j].update(rec[hook_name(l, "attn.hook_z")][:, cfg.position, h, :], t[:, j])
            vals = [a.compute().item() for a in accs]
            res["cka"] = dict(zip([_pair_key(s, t) for s, t in pairs], vals))
            res["cka_mean"] = _mean(vals)
    accelerator.wait_for_everyone()
    return res


def _plot(path: Path, rows: list[dict], cfg: DistillConfig) -> None:
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    pair_key = next((k for k in rows[-1] if k.endswith("_pairs")), None)
    fig, axes = plt.subplots(1, 2 if pair_key else 1, figsize=(11 if pair_key else 6, 4), squeeze=False)
    ax = axes[0, 0]
    for key in ["loss"] + list(term_names(cfg.method)):
        if any(key in r for r in rows):
            ax.plot(steps, [r.get(key, math.nan) for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (weighted terms)")
    ax.set_title(f"{cfg.method}: training loss")
    ax.legend()
    if pair_key:
        term = pair_key[:-len("_pairs")]
        ax = axes[0, 1]
        for k in rows[-1][pair_key]:
            ax.plot(steps, [r.get(pair_key, {}).get(k, math.nan) for r in rows], lw=0.8, alpha=0.5)
        ax.plot(steps, [r.get(f"{term}_mean", math.nan) for r in rows], color="k", lw=2, label="mean over pairs")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{term} similarity (training batch, m={cfg.batch_size})")
        ax.set_title("per-pair similarity (student head ~ teacher head)")
        ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
