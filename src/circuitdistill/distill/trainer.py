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

The steps run in the shared ``train_loop.TrainLoop``; this module supplies the loss, the evaluation and the
checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..circuits.interchange import interchange_logits
from ..models.grad_checkpoint import enable_gradient_checkpointing
from ..models.hooks import HookedLM, hook_name
from ..models.registry import load_model, save_derived, save_model_dir
from ..preflight import input_fingerprints
from ..tasks.batching import encode_items, first_token_id
from ..tasks.io import load_items
from ..tasks.scoring import evaluate, forward_inputs
from ..train_loop import TrainLoop, batch_indices, read_log, save_checkpoint_file
from ..utils import provenance, save_figure_atomic, seed_everything, sha256_json, versioned, write_json_atomic
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
    return batch_indices(n_items, batch_size, step, seed, seed_scale=1_000_003)


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
def _pair_key(s, t) -> str:
    return f"L{s[0]}.H{s[1]}~L{t[0]}.H{t[1]}"


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _active_terms(cfg: DistillConfig) -> list:
    terms = [(TERMS[n], weight_of(cfg.method, n, cfg)) for n in term_names(cfg.method)]
    return [(t, w) for t, w in terms if w != 0.0]


def _config_hash(cfg: DistillConfig) -> str:
    """What the run reads joins the hash, so a resume after the data or a model changed is refused."""
    return sha256_json({"config": cfg.model_dump(mode="json", exclude=set(RESUME_MAY_CHANGE)),
                        "inputs": input_fingerprints({"data": cfg.data, "student": cfg.student,
                                                      "teacher": cfg.teacher, "teacher_cache": cfg.teacher_cache,
                                                      "interchange_cache": cfg.interchange_cache,
                                                      "pairing": cfg.pairing})})


@dataclass
class _Teacher:
    """The teacher side of every step: a cache of its outputs, or the live model."""
    name: str
    vocab: int
    fingerprint: str
    shape: dict
    same_tok: bool
    cache: TeacherCache | None = None
    labels: torch.Tensor | None = None  # the cache's labels in the student's vocabulary
    cf_cache: TeacherCache | None = None
    hooked: HookedLM | None = None
    tok: object = None


def _open_teacher(cfg: DistillConfig, items, tok, s_fp: str, device, need_rows: bool) -> _Teacher:
    """``s_fp``: the student tokenizer's vocabulary fingerprint."""
    if cfg.teacher_cache:
        cache = TeacherCache(cfg.teacher_cache)
        same_tok = cache.meta["vocab_fingerprint"] == s_fp
        answers = encode_items(tok, items[:min(len(items), 64)])["answer_ids"] if same_tok else None
        cache.check_data(cfg.data, len(items), answers)
        labels = cache.labels_for(tok, s_fp)
        if need_rows and cache.position != cfg.position:
            raise ValueError(f"teacher cache {cfg.teacher_cache} stored position {cache.position}; the config asks "
                             f"for position {cfg.position}")
        return _Teacher(cache.meta.get("teacher", "teacher"), cache.meta["vocab_size"], cache.meta["vocab_fingerprint"],
                        cache.meta["shape"], same_tok, cache=cache, labels=labels)
    teacher, t_tok = load_model(cfg.teacher, device=device, dtype=cfg.dtype)
    for p in teacher.parameters():
        p.requires_grad_(False)
    hooked = HookedLM(teacher, t_tok)
    fp = vocab_fingerprint(t_tok)
    return _Teacher(cfg.teacher, teacher.get_output_embeddings().weight.shape[0], fp,
                    {"n_layers": hooked.shape.n_layers, "n_heads": hooked.shape.n_heads}, fp == s_fp,
                    hooked=hooked, tok=t_tok)


def _trainables(cfg: DistillConfig, student, teacher: _Teacher, need_rows: bool):
    """(pairs, head deltas or None, trainable parameters, report) of the method."""
    method = METHODS[cfg.method]
    if method.trains != "heads":
        for p in student.parameters():
            p.requires_grad_(True)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(student)
        return [], None, [p for p in student.parameters()], full_model_report(student)
    pairing = load_pairing(cfg.pairing)
    s_heads = pairing.student_heads
    t_heads = [p.teacher for p in pairing.pairs]
    if method.partners == "random":
        pool = ([(l, h) for l in range(teacher.shape["n_layers"]) for h in range(teacher.shape["n_heads"])]
                if cfg.random_pool == "all" else pairing.circuit)
        t_heads = random_pairing(s_heads, t_heads, pool, cfg.seed)
    pairs = list(zip(s_heads, t_heads))
    if teacher.cache is not None and need_rows:
        teacher.cache.require_heads([t for _, t in pairs])
    deltas = HeadDeltas(student, s_heads, cfg.gqa_policy)
    return pairs, deltas, deltas.parameters(), deltas.report()


def _open_interchange(cfg: DistillConfig, items, teacher: _Teacher, t_heads) -> None:
    no_source = [i for i, it in enumerate(items) if not it.corrupted_prompt]
    if no_source:
        raise ValueError(f"{cfg.data}: {len(no_source)} training item(s) have no corrupted_prompt (first: line "
                         f"{no_source[0] + 1}); {cfg.method} patches the matched heads from it")
    if teacher.cache is not None:
        teacher.cf_cache = TeacherCache(cfg.interchange_cache) if cfg.interchange_cache else teacher.cache
        if cfg.interchange_cache:
            teacher.cf_cache.check_data(cfg.data, len(items))
        teacher.cf_cache.require_interchange(t_heads)


def _teacher_inputs(cfg: DistillConfig, teacher: _Teacher, items, gidx, lo, hi, local, tok, device,
                    t_heads, need_rows: bool, need_cf: bool) -> StepInputs:
    """The teacher's side of one step (labels, logits or top-k, head rows, interchange logits)."""
    x = StepInputs(final=None, labels=None)
    grows = torch.tensor(gidx)
    local_items = [items[i] for i in gidx[lo:hi]]
    if teacher.cache is not None:
        cache = teacher.cache
        labels = teacher.labels[grows[lo:hi]]
        x.teacher_topk = (cache.topk_values[grows[lo:hi]], cache.topk_indices[grows[lo:hi]])
        x.teacher_rows = cache.head_rows(grows, t_heads).to(device) if need_rows else None
        if need_cf:
            x.cf_teacher = tuple(t[grows[lo:hi]] for t in teacher.cf_cache.cf_topk)
    else:
        t_tok = teacher.tok
        t_in = local if teacher.same_tok else {k: v[lo:hi] for k, v in
                                               encode_items(t_tok, [items[i] for i in gidx]).items()}
        t_logits, t_local = teacher_pass(teacher.hooked, t_in, t_heads if need_rows else [], cfg.position)
        labels = t_logits.argmax(-1)
        if not teacher.same_tok:  # teacher token -> text -> the student's first token
            labels = torch.tensor([first_token_id(tok, t_tok.decode([int(i)])) for i in labels.tolist()])
        x.teacher_logits = t_logits
        x.teacher_rows = gather_rows_nograd(t_local) if need_rows else None
        if need_cf:
            with torch.no_grad():
                x.cf_teacher = interchange_logits(teacher.hooked, t_in, encode_items(t_tok, local_items, corrupted=True),
                                                  sorted(set(t_heads)), cfg.position).float()
    if cfg.label_source == "gold":
        labels = local["answer_ids"]
    x.labels = labels.to(device)
    return x


def _log_fields(values: dict, extras: dict, pair_keys: list[str]) -> dict:
    """Global values of the weighted terms: local means averaged over processes; pair terms are already global."""
    row = {}
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
    return row


def train(cfg: DistillConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) one distillation; returns the summary (also written to ``out/summary.json``)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    torch.set_num_threads(cfg.threads)
    terms = _active_terms(cfg)
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
    cfg_hash = _config_hash(cfg)
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    seed_everything(cfg.seed)
    device = accelerator.device

    items = load_items(cfg.data)
    if cfg.max_train_items:
        items = items[:cfg.max_train_items]
    if len(items) < cfg.batch_size:
        raise ValueError(f"{cfg.data} has {len(items)} items; batch_size {cfg.batch_size} needs at least that many")
    student, tok = load_model(cfg.student, device=device, dtype=cfg.dtype)
    s_hooked = HookedLM(student, tok)
    s_fp = vocab_fingerprint(tok)
    teacher = _open_teacher(cfg, items, tok, s_fp, device, need_rows)
    if cfg.method == "logit-kd":
        check_same_vocab(teacher.vocab, student.get_output_embeddings().weight.shape[0], teacher.fingerprint,
                         s_fp, teacher.name, cfg.student)
    pairs, deltas, params, report = _trainables(cfg, student, teacher, need_rows)
    pair_keys = [_pair_key(s, t) for s, t in pairs]
    s_layers = sorted({s[0] for s, _ in pairs})
    t_heads = [t for _, t in pairs]
    eval_pairs = _aligned_pairs(cfg)
    if need_cf:
        _open_interchange(cfg, items, teacher, t_heads)

    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(student, optimizer)
    state = {"step": 0, "history": []}
    if resume and ckpt_path.exists():
        state["step"] = _load_checkpoint(ckpt_path, cfg, cfg_hash, deltas, student, optimizer)
        state["history"] = [r for r in read_log(out / LOG) if r["step"] <= state["step"]]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / RUN_CONFIG, versioned("distill-run-config", {
                                                **provenance(cfg.seed, cfg), "config_hash": cfg_hash,
                                                "world_size": world, "trainable": report,
                                                "backend": dist.get_backend() if _dist_on() else None}))
    eval_items = load_items(cfg.eval_data)[:cfg.eval_max_items] if cfg.eval_data else None

    def step_loss(step: int):
        gidx = global_indices(step, cfg.batch_size, len(items), cfg.seed)
        batch = encode_items(tok, [items[i] for i in gidx])
        lo, hi = rank * local_b, (rank + 1) * local_b
        local = {k: v[lo:hi] for k, v in batch.items()}
        inputs = {k: v.to(device) for k, v in forward_inputs(local).items()}
        x = _teacher_inputs(cfg, teacher, items, gidx, lo, hi, local, tok, device, t_heads, need_rows, need_cf)
        # student forward (record matched heads' outputs for pair terms)
        record = [hook_name(l, "attn.hook_z") for l in s_layers] if need_rows else []
        with s_hooked.hooks(record=record) as rec:
            x.final = model(**inputs, logits_to_keep=1).logits[:, -1, :]
        if need_rows:
            s_local = torch.stack([rec[hook_name(l, "attn.hook_z")][:, cfg.position, h, :] for (l, h), _ in pairs], 1)
            x.student_rows = gather_rows(s_local)
        if need_cf:
            corrupted = encode_items(tok, [items[i] for i in gidx[lo:hi]], corrupted=True)
            x.cf_final = interchange_logits(s_hooked, local, corrupted, [s for s, _ in pairs], cfg.position)
        values: dict[str, torch.Tensor] = {}
        extras: dict[str, dict] = {}
        for term, weight in terms:
            v, info = term.value(x, cfg)
            values[term.name] = weight * v
            extras[term.name] = info
        return sum(values.values()), lambda: _log_fields(values, extras, pair_keys)

    def evaluate_now(step: int):
        return {"eval": _evaluate(cfg, model, tok, eval_items, eval_pairs, accelerator)}, None

    def save() -> None:
        if main:
            _save_checkpoint(ckpt_path, deltas, student, optimizer, state["step"], cfg_hash)
            _plot(out / "loss.png", state["history"], cfg)
        accelerator.wait_for_everyone()

    loop = TrainLoop(steps=cfg.steps, loss=step_loss, optimizer=optimizer, params=params, grad_clip=cfg.grad_clip,
                     backward=accelerator.backward, clip_grad_norm=accelerator.clip_grad_norm_, log_grad_norm=True,
                     log_step_times=True, evaluate=evaluate_now if eval_items is not None else None,
                     eval_every=cfg.eval_interval, eval_at_start=True, eval_at_last_step=False,
                     eval_in_step_row=True, save=save, checkpoint_every=cfg.checkpoint_every,
                     log_path=out / LOG if main else None, desc=f"distill {cfg.method}", progress=progress and main)
    accelerator.wait_for_everyone()
    outcome = loop.run(state)
    return _finish(cfg, model, student, tok, deltas, state["history"], eval_items, eval_pairs, accelerator, pairs,
                   report, teacher.name, outcome.seconds)


def _load_checkpoint(path: Path, cfg: DistillConfig, cfg_hash: str, deltas, student, optimizer) -> int:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if ck["config_hash"] != cfg_hash:
        raise ValueError(f"{path} was written by a different config or from other inputs (data, models, "
                         f"caches, pairing); resume needs the same config except {', '.join(RESUME_MAY_CHANGE)} "
                         f"and unchanged inputs (compare with {RUN_CONFIG} in that directory)")
    if ck["step"] > cfg.steps:
        raise ValueError(f"{path} is at step {ck['step']}, beyond steps={cfg.steps}")
    _load_trainable(deltas, student, ck["trainable"])
    optimizer.load_state_dict(ck["optimizer"])
    return ck["step"]


def _finish(cfg: DistillConfig, model, student, tok, deltas, rows, eval_items, eval_pairs, accelerator, pairs,
            report, t_name: str, seconds: float) -> dict:
    """Final evaluation, head deltas merged, the student, the summary."""
    main, out = accelerator.is_main_process, Path(cfg.out)
    final_eval = _evaluate(cfg, model, tok, eval_items, eval_pairs, accelerator) if eval_items is not None else None
    if deltas is not None:
        if main:
            save_head_deltas(deltas, out / HEAD_DELTAS_FILE, base=cfg.student)
        deltas.merge()
    timed = [r for r in rows if "step_time_s" in r]
    summary = {"method": cfg.method, "steps": cfg.steps, "world_size": accelerator.num_processes, "trainable": report,
               "pairs": [{"student": list(s), "teacher": list(t)} for s, t in pairs],
               "final": rows[-1] if rows else None, "final_eval": final_eval,
               "wall_s_this_session": round(seconds, 2),
               "start_eval": next((r["eval"] for r in rows if r["step"] == 0), None),
               "mean_step_time_s": _mean([r["step_time_s"] for r in timed[1:]] or [r["step_time_s"] for r in timed]),
               **provenance(cfg.seed, cfg)}
    if main:
        _plot(out / "loss.png", rows, cfg)
        meta = {"name": f"{cfg.method}-student", "description": f"{cfg.method} student of {t_name}",
                "distill": cfg.model_dump(mode="json")}
        save_model_dir(student, tok, out / MODEL_DIR, meta)
        if cfg.save_as:
            save_derived(student, tok, cfg.save_as, {"description": f"{cfg.method} student of {t_name}",
                                                     "distill": summary})
        write_json_atomic(out / "summary.json", versioned("distill-summary", summary))
        if not cfg.keep_checkpoints:
            (out / CHECKPOINT).unlink(missing_ok=True)  # the model is in model/; the optimizer state is 2x the trainables
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
    save_checkpoint_file(path, {"step": step, "trainable": trainable, "optimizer": optimizer.state_dict(),
                                "config_hash": cfg_hash})


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
