"""`circuitdistill experiment`: the paper's table end to end, every stage cached by content hash.

Stages: models -> data -> teacher -> students -> discover -> (per student variant) match -> cache
-> train (per method x seed) -> evaluate -> mechanism -> side effects -> alignment -> report.
Everything a stage makes lives in its own directory under ``OUT/stages/``; a model a stage trains is
saved there too (never under a shared cache name), so experiments cannot clobber each other.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..analysis.compare import CompareConfig, run_compare
from ..circuits.ablation import baseline, head_ablation_sweep, head_sweep, mean_head_outputs, parse_positions
from ..circuits.circuit import Circuit
from ..circuits.discover import DiscoverConfig, run_discover
from ..circuits.faithfulness import circuit_only_interventions, faithfulness_report
from ..distill.config import CacheConfig, DistillConfig, MatchConfig
from ..distill.matching import load_pairing, match
from ..distill.methods import HEAD_ONLY, METHODS, fields_read, term_names
from ..distill.teacher_cache import build_cache
from ..distill.trainer import train
from ..models.hooks import HookedLM
from ..models.registry import (BUILTINS, load_model, prepare, prepare_tokenizer, resolve, resolve_device,
                               resolve_dtype, save_model_dir)
from ..tasks.finetune import FinetuneConfig, drop_checkpoint, finetune
from ..tasks.io import load_items, save_items
from ..tasks.registry import get_task, rejected_words
from ..tasks.scoring import evaluate
from ..tasks.warmup import WARMUP_BOXES, WARMUP_LR, vocab_of, warmup_items, warmup_templates
from ..utils import provenance, versioned, write_json_atomic
from .config import ExperimentConfig
from .mechanism import interchange_agreement
from .report import write_report
from .side_effects import load_general_text, perplexity
from ..stages import StageRunner
from .stats import mcnemar
from .user_task import data_key, read_user_files, user_files, write_user_splits

MEAN_REFERENCE_ITEMS = 64  # validation items whose head outputs give the ablation means of every circuit-only run


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    prepare_tokenizer(tok)
    return tok


def _load(path: str, cfg: ExperimentConfig | None = None):
    if cfg is None:
        return load_model(path)
    return load_model(path, device=cfg.device, dtype=cfg.dtype)


# ---------------------------------------------------------------------------------------- stages
def stage_models(cfg: ExperimentConfig) -> dict:
    out = {}
    for role, ref in (("teacher_base", cfg.teacher_base), ("student_base", cfg.student_base),
                      ("teacher", cfg.teacher), ("student", cfg.student)):
        if ref is None:
            continue
        if ref in BUILTINS:
            prepare(ref)
        out[role] = resolve(ref)
    return out


def stage_data(cfg: ExperimentConfig, models: dict, d: Path, log=print) -> dict:
    toks = [_tokenizer(models["teacher"] if "teacher" in models else models["teacher_base"]),
            _tokenizer(models["student"] if "student" in models else models["student_base"])]
    if user_files(cfg):
        return write_user_splits(cfg, toks, d, log)
    task = get_task(cfg.task)
    splits = task.real_splits(cfg.n_train, cfg.n_validation, cfg.n_test, cfg.data_seed, toks, size=cfg.boxes)
    paths = {}
    for split, items in splits.items():
        paths[split] = str(save_items(d / f"{split}.jsonl", items))
    vocab = rejected_words(task, toks)
    for name, v in vocab.items():
        log(f"[data] {name}: {v['kept']} of {v['shipped']} shipped words are single tokens for both tokenizers "
            f"({len(v['rejected'])} rejected)")
    return {**paths, "vocabulary": vocab}


def _finetune(base: str, items_train, items_val, d: Path, mode: str, task: str, steps: int, target: float,
              lr: float, seed: int, threads: int, batch_size: int = 16, eval_items: int = 100,
              keep_checkpoints: bool = False, device: str = "cpu", dtype: str = "fp32") -> dict:
    cfg = FinetuneConfig(base=base, name=f"exp-{mode}", task=task, mode=mode, lr=lr, batch_size=batch_size,
                         max_steps=steps, eval_every=10 if mode == "teacher" else 5, eval_items=eval_items,
                         target=target, seed=seed, threads=threads, device=device, dtype=dtype)
    model, tok = load_model(base, device=device, dtype=dtype)
    rec = finetune(cfg, items_train, items_val, d / "run", resume=True, model=model, tokenizer=tok, save=False,
                   progress=True)
    save_model_dir(model, tok, d / "model", {"name": f"experiment-{mode}", "finetune": cfg.model_dump(mode="json")})
    if not keep_checkpoints:
        drop_checkpoint(d / "run")
    return {"model": str(d / "model"), "record": {k: rec.get(k) for k in
                                                   ("steps", "stop_reason", "final_val_accuracy", "train_seconds")}}


def stage_teacher(cfg: ExperimentConfig, models: dict, data: dict, d: Path) -> dict:
    if "teacher" in models:
        return {"model": models["teacher"], "record": {"given": True}}
    return _finetune(models["teacher_base"], load_items(data["train"]), load_items(data["validation"]), d,
                     "teacher", cfg.task, cfg.teacher_steps, cfg.teacher_target, 3e-5, cfg.data_seed, cfg.threads,
                     keep_checkpoints=cfg.keep_checkpoints, device=cfg.device, dtype=cfg.dtype)


def _warm_recipe() -> dict:
    # every registered task's wording (not only cfg.task's): the key earlier runs' warm-up stages were cached under
    return {"warm_lr": WARMUP_LR, "warm_boxes": list(WARMUP_BOXES), "warm_template": warmup_templates()}


def stage_warm_student(cfg: ExperimentConfig, models: dict, data: dict, d: Path) -> dict:
    """The `circuitdistill warmup` recipe: fewer boxes, other wording, objects disjoint from validation/test."""
    recipe = _warm_recipe()
    tok = _tokenizer(models["student_base"])
    val, test = load_items(data["validation"]), load_items(data["test"])
    avoid = vocab_of(val, cfg.task) | vocab_of(test, cfg.task)
    boxes = [b for b in recipe["warm_boxes"] if b < cfg.boxes] or [2]
    items, variant = warmup_items(cfg.task, tok, cfg.data_seed, max(cfg.n_train, 64), avoid, boxes,
                                  recipe["warm_template"][cfg.task])
    save_items(d / "warmup.jsonl", items)
    res = _finetune(models["student_base"], items, val, d, "warmup", cfg.task, cfg.warm_steps, cfg.warm_target,
                    recipe["warm_lr"] if cfg.preset != "tiny" else 1e-3, cfg.data_seed, cfg.threads,
                    keep_checkpoints=cfg.keep_checkpoints, device=cfg.device, dtype=cfg.dtype)
    res["variant"] = variant
    return res


def stage_discover(cfg: ExperimentConfig, teacher_path: str, data: dict, d: Path) -> dict:
    """The teacher's circuit on validation items (never the test split), via `circuitdistill discover`."""
    n_heads = HookedLM(_load(teacher_path, cfg)[0]).shape.n_total_heads
    top_n = max(1, round(cfg.circuit_share * n_heads))
    dcfg = DiscoverConfig(model=teacher_path, data=Path(data["validation"]), method=cfg.discovery_method,
                          positions="final", metric="logprob", circuit_size=top_n, max_items=cfg.discovery_items,
                          seed=cfg.data_seed, threads=cfg.threads, device=cfg.device, dtype=cfg.dtype, out=d)
    circuit, _ = run_discover(dcfg, progress=True)
    return {"circuit": str(d / "circuit.json"), "heatmap": str(d / "heatmap.png"), "n_heads": circuit.n_heads,
            "share": circuit.share, "method": cfg.discovery_method}

def stage_match(cfg: ExperimentConfig, teacher: str, student: str, circuit: str, data: dict, d: Path) -> dict:
    n_student_heads = HookedLM(_load(student, cfg)[0]).shape.n_total_heads
    mcfg = MatchConfig(teacher=teacher, student=student, circuit=circuit, data=data["validation"], out=str(d),
                       by=cfg.match_by, baseline=cfg.match_baseline, normalise=cfg.match_normalise,
                       metric=cfg.match_metric, per_position_means=cfg.per_position_means,
                       max_items=cfg.match_items, budget=cfg.head_budget, ablation_positions=cfg.match_positions,
                       assignment="hungarian" if cfg.one_to_one else "nearest", seed=cfg.data_seed,
                       threads=cfg.threads, device=cfg.device, dtype=cfg.dtype)
    pairing = match(mcfg)
    return {"pairing": str(d / "pairing.json"), "n_pairs": len(pairing.pairs),
            "student_heads": [list(h) for h in pairing.student_heads],
            "teacher_heads": [list(h) for h in pairing.teacher_heads], "n_student_heads": n_student_heads}


def stage_cache(cfg: ExperimentConfig, teacher: str, data: dict, d: Path) -> dict:
    train = build_cache(CacheConfig(teacher=teacher, data=data["train"], out=str(d / "train"), heads="all",
                                    threads=cfg.threads, device=cfg.device, dtype=cfg.dtype))
    return {"train": str(train)}


def stage_cache_validation(cfg: ExperimentConfig, teacher: str, data: dict, d: Path) -> dict:
    """Every teacher head on the validation items: the held-out alignment of every trained row reads it."""
    return {"validation": str(build_cache(CacheConfig(teacher=teacher, data=data["validation"], out=str(d),
                                                      heads="all", threads=cfg.threads, device=cfg.device, dtype=cfg.dtype)))}


def stage_cache_interchange(cfg: ExperimentConfig, teacher: str, data: dict, pairing: str, d: Path) -> dict:
    """The teacher's outputs with its paired heads patched from the corrupted prompts (circuit-iit's targets)."""
    return {"interchange": str(build_cache(CacheConfig(teacher=teacher, data=data["train"], out=str(d),
                                                       heads="paired", pairing=pairing, interchange_pairing=pairing,
                                                       threads=cfg.threads, device=cfg.device, dtype=cfg.dtype)))}


def stage_train(cfg: ExperimentConfig, method: str, seed: int, student: str, teacher: str, cache: dict,
                pairing: str, data: dict, d: Path, max_train_items: int | None = None) -> dict:
    head_only = method in HEAD_ONLY
    lr = cfg.head_lr if (cfg.head_lr and head_only) else cfg.lr
    dcfg = DistillConfig(method=method, student=student, teacher_cache=cache["train"], data=data["train"],
                         pairing=pairing if head_only else None, eval_pairing=pairing, out=str(d), lam=cfg.lam,
                         lam_reduction=cfg.lam_reduction, iit_weight=cfg.iit_weight, lr=lr, steps=cfg.steps,
                         batch_size=cfg.batch_size, seed=seed, estimator=cfg.estimator,
                         interchange_cache=cache.get("interchange"), max_train_items=max_train_items,
                         eval_data=data["validation"], eval_teacher_cache=cache.get("validation"),
                         eval_interval=cfg.eval_interval, eval_max_items=cfg.eval_items, threads=cfg.threads,
                         keep_checkpoints=cfg.keep_checkpoints, dtype=cfg.dtype,
                         gradient_checkpointing=cfg.gradient_checkpointing and not head_only)
    summary = train(dcfg, resume=True, progress=True)  # writes the student to d/model (a HF checkpoint)
    return {"model": str(d / "model"), "log": str(d / "log.jsonl"), "trainable": summary["trainable"],
            "mean_step_time_s": summary["mean_step_time_s"],
            "heldout_alignment": _alignment_summary(summary.get("start_eval"), summary.get("final_eval"))}


def _alignment_summary(start: dict | None, final: dict | None) -> dict | None:
    """Mean held-out debiased CKA over the aligned pairs before and after training."""
    if not start or not final or "cka_mean" not in final:
        return None
    return {"before": start["cka_mean"], "after": final["cka_mean"], "per_pair_after": final["cka"],
            "val_accuracy_before": start["accuracy"], "val_accuracy_after": final["accuracy"]}


def _circuit_eval(model, tok, items, heads, reference, batch_size, positions: str = "final",
                  per_position: bool = True) -> tuple[list[float], list[float]]:
    hooked = HookedLM(model, tok)
    full = evaluate(model, tok, items, batch_size=batch_size)
    means = mean_head_outputs(hooked, reference, batch_size=batch_size, per_position=per_position)
    ivs = circuit_only_interventions(hooked, [tuple(h) for h in heads], means, parse_positions(positions))
    circ = evaluate(model, tok, items, batch_size=batch_size, interventions=ivs, hooked=hooked)
    return full.per_item["accuracy"].tolist(), circ.per_item["accuracy"].tolist()


def stage_evaluate(cfg: ExperimentConfig, model_path: str, heads: list, data: dict, d: Path) -> dict:
    """Full and circuit-only accuracy on the test split, per item (for McNemar)."""
    model, tok = _load(model_path, cfg)
    test = load_items(data["test"])
    reference = load_items(data["validation"])[:MEAN_REFERENCE_ITEMS]
    full, circ = _circuit_eval(model, tok, test, heads, reference, cfg.test_batch_size, cfg.circuit_positions,
                               cfg.per_position_means)
    write_json_atomic(d / "per_item.json", versioned("per-item", {"full": full, "circuit": circ}))
    acc_full, acc_circ = sum(full) / len(full), sum(circ) / len(circ)
    return {"per_item": str(d / "per_item.json"), "full": acc_full, "circuit": acc_circ,
            "circuit_ablation": {"positions": cfg.circuit_positions, "per_position_means": cfg.per_position_means},
            "faithfulness": acc_circ / acc_full if acc_full > 0 else None, "n": len(full)}


def stage_random_control(cfg: ExperimentConfig, model_path: str, circuit: str, data: dict, d: Path) -> dict:
    """Circuit-only accuracy of random head sets of the circuit's size (the faithfulness control); the same
    means (64 validation items) and ablated positions as the circuit-only evaluation of every row."""
    model, tok = _load(model_path, cfg)
    test = load_items(data["test"])[:200]
    reference = load_items(data["validation"])[:MEAN_REFERENCE_ITEMS]
    rep = faithfulness_report(model, tok, test, circuit, n_random=cfg.n_random_sets, seed=cfg.data_seed,
                              batch_size=cfg.test_batch_size, reference_items=reference,
                              per_position=cfg.per_position_means, positions=cfg.circuit_positions)
    return {"random_circuit_accuracies": rep["random"]["values"], "n_items": len(test), "size": rep["n_heads"]}

def stage_mechanism(cfg: ExperimentConfig, student_path: str, teacher_path: str, pairs: list, base_student: str,
                    data: dict, d: Path) -> dict:
    from scipy.stats import pearsonr, spearmanr

    items = load_items(data["test"])[: cfg.mechanism_items]
    val = load_items(data["validation"])[: cfg.match_items]
    student, s_tok = _load(student_path, cfg)
    teacher, t_tok = _load(teacher_path, cfg)
    sh, th = HookedLM(student, s_tok), HookedLM(teacher, t_tok)
    pairs_t = [(tuple(p[0]), tuple(p[1])) for p in pairs]
    inter = interchange_agreement(sh, th, items, pairs_t, n_random=max(1, cfg.n_random_sets), seed=cfg.data_seed)
    # ablation profiles over matched pairs: does each student head now matter as much as its partner?
    s_heads = sorted({s for s, _ in pairs_t})
    t_heads = sorted({t for _, t in pairs_t})
    # ablated where matching ablated them, so the profile compares the quantities the pairing was built from
    s_sweep = head_ablation_sweep(sh, val, metric="accuracy", mode="mean", heads=s_heads, progress=False,
                                  positions=cfg.match_positions)
    t_sweep = head_ablation_sweep(th, val, metric="accuracy", mode="mean", heads=t_heads, progress=False,
                                  positions=cfg.match_positions)
    s_base, t_base = baseline(sh, val, "accuracy"), baseline(th, val, "accuracy")
    ds = [s_base - float(s_sweep[s]) for s, _ in pairs_t]
    dt = [t_base - float(t_sweep[t]) for _, t in pairs_t]
    prof = {"student_drops": ds, "teacher_drops": dt}
    if len(pairs_t) >= 3 and len(set(ds)) > 1 and len(set(dt)) > 1:
        prof["spearman"] = float(spearmanr(ds, dt).statistic)
        prof["pearson"] = float(pearsonr(ds, dt).statistic)
    # re-discovery on the trained student: how much of its new circuit falls on the matched heads?
    clean = baseline(sh, val, "logprob")
    patched = head_sweep(sh, val, metric="logprob", mode="corrupted", positions="final", progress=False)
    rel = -(patched - clean) / max(abs(clean), 1e-6)
    k = len(s_heads)
    flat = sorted(((float(rel[l, h]), (l, h)) for l in range(rel.shape[0]) for h in range(rel.shape[1])
                   if not torch.isnan(rel[l, h])), reverse=True)
    top = {h for _, h in flat[:k]}
    overlap = len(top & set(s_heads)) / max(k, 1)
    chance = k / max(len(flat), 1)
    return {"interchange": inter, "ablation_profile": prof,
            "rediscovery": {"top_k": k, "overlap_with_matched": overlap, "chance": chance,
                            "top_heads": sorted([list(h) for h in top])}}


def stage_side_effects(cfg: ExperimentConfig, model_path: str, d: Path) -> dict:
    header, texts = load_general_text()
    model, tok = _load(model_path, cfg)
    return {"perplexity": perplexity(model, tok, texts), "n_texts": len(texts), "sample": header}


def stage_alignment(cfg: ExperimentConfig, teacher_path: str, student_path: str, data: dict, d: Path) -> dict:
    ccfg = CompareConfig(teacher=teacher_path, student=student_path, data=data["validation"], out=d,
                         max_items=cfg.compare_items, seed=cfg.data_seed, threads=cfg.threads, progress=False,
                         device=cfg.device, dtype=cfg.dtype,
                         n_boot=200, prune=False)  # A needs influences and matching only; pruning ~doubles the cost
    res = run_compare(ccfg)
    return {"alignment_score": res["alignment_score"], "compare": str(d / "compare.json")}


# ------------------------------------------------------------------------------------ orchestration
def _optional(log, what: str, fn):
    """Analyses that add a column must never sink the table: report their failure instead."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the report states exactly what failed and why
        log(f"[{what}] FAILED: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}"}


def _pick(cfg: ExperimentConfig, *keys) -> dict:
    """The config fields a stage's key depends on."""
    c = cfg.model_dump(mode="json")
    return {k: c[k] for k in keys}


def eval_key(cfg: ExperimentConfig) -> dict:
    return _pick(cfg, "circuit_positions", "per_position_means", "n_test", "test_batch_size")


def models_key(cfg: ExperimentConfig) -> dict:
    """The models stage's key, which every later stage inherits: the model references and, unless it is float32,
    the dtype the models compute in (a bf16 run never reuses a float32 run's stages; the device only changes
    rounding, so a run moved between devices keeps its cache)."""
    dtype = resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    return {**_pick(cfg, "teacher_base", "student_base", "teacher", "student"),
            **({} if dtype == torch.float32 else {"dtype": str(dtype)})}


def prepare_stages(cfg: ExperimentConfig, R: StageRunner, log=print) -> dict:
    """Every stage before training: models, data, teacher, circuit, teacher caches, students and pairings."""
    pick = lambda *keys: _pick(cfg, *keys)  # noqa: E731
    if user_files(cfg):
        read_user_files(cfg)  # a missing file or a bad line fails here, before any model is touched
    # the models' content joins the key: every later stage depends on this one, so changed weights rerun them all;
    # built-ins are prepared first so the key sees their converted weights, not their absence
    for ref in (cfg.teacher_base, cfg.student_base, cfg.teacher, cfg.student):
        if ref in BUILTINS:
            prepare(ref)
    models = R.run("models", models_key(cfg), lambda d: stage_models(cfg),
                   content=pick("teacher_base", "student_base", "teacher", "student")).outputs
    data = R.run("data", data_key(cfg) if user_files(cfg) else pick("task", "boxes", "n_train", "n_validation",
                                                                       "n_test", "data_seed"),
                 lambda d: stage_data(cfg, models, d, log), deps=("models",)).outputs
    teacher = R.run("teacher", pick("teacher_steps", "teacher_target", "threads"),
                    lambda d: stage_teacher(cfg, models, data, d), deps=("data",)).outputs["model"]
    disc = R.run("discover", pick("discovery_method", "discovery_items", "circuit_share"),
                 lambda d: stage_discover(cfg, teacher, data, d), deps=("teacher",)).outputs
    cache = dict(R.run("cache", {}, lambda d: stage_cache(cfg, teacher, data, d), deps=("teacher",)).outputs)
    cache.update(R.run("cache-val", {}, lambda d: stage_cache_validation(cfg, teacher, data, d),
                       deps=("teacher",)).outputs)
    variants = {"given": models["student"]} if "student" in models else {}
    for v in ([] if variants else cfg.students):
        if v == "cold":
            variants["cold"] = models["student_base"]
        else:
            variants["warm"] = R.run("student-warm", {**pick("warm_target", "warm_steps", "threads", "preset"),
                                                      **_warm_recipe()},
                                     lambda d: stage_warm_student(cfg, models, data, d), deps=("data",)).outputs["model"]
    students = {}
    for v, student in variants.items():
        match = R.run(f"match-{v}", {**pick("match_by", "match_items", "head_budget", "one_to_one", "match_positions",
                                            "match_baseline", "match_normalise", "match_metric", "per_position_means"),
                                     "s": student},
                      lambda d: stage_match(cfg, teacher, student, disc["circuit"], data, d), deps=("discover",)).outputs
        v_cache = dict(cache)
        if any("iit" in term_names(m) for m in cfg.methods):
            v_cache.update(R.run(f"cache-iit-{v}", {}, lambda d: stage_cache_interchange(
                cfg, teacher, data, match["pairing"], d), deps=(f"match-{v}",)).outputs)
        students[v] = {"student": student, "match": match, "cache": v_cache}
    return {"models": models, "data": data, "teacher": teacher, "discover": disc, "students": students}


def train_row(cfg: ExperimentConfig, R: StageRunner, ctx: dict, v: str, method: str, seed: int,
              max_train_items: int | None = None, read_test: bool = True) -> tuple[dict, dict | None]:
    """Train one row (cached) and evaluate it on the test split; returns (train outputs, test outputs or None
    when ``read_test`` is off: a selection run on the validation split)."""
    st = ctx["students"][v]
    budget = f"-n{max_train_items}" if max_train_items else ""
    key = f"{v}-{method}{budget}-s{seed}"
    # a row is keyed only by the settings its loss reads, so a lambda sweep never retrains full-kd (gradient
    # checkpointing is left out: it gives the same step)
    knobs = ["steps", "batch_size", "lr", "eval_interval", "eval_items"]
    knobs += (["head_lr"] if method in HEAD_ONLY else []) + \
        [f for f in fields_read(method) if f in ExperimentConfig.model_fields]
    deps = ("cache", "cache-val", f"match-{v}") + ((f"cache-iit-{v}",) if "interchange" in st["cache"] else ())
    tr = R.run(f"train-{key}", {**_pick(cfg, *knobs), "method": method, "seed": seed,
                                "max_train_items": max_train_items},
               lambda d: stage_train(cfg, method, seed, st["student"], ctx["teacher"], st["cache"],
                                     st["match"]["pairing"], ctx["data"], d, max_train_items), deps=deps).outputs
    if not read_test:
        return tr, None
    ev = R.run(f"eval-{key}", eval_key(cfg), lambda d: stage_evaluate(cfg, tr["model"], st["match"]["student_heads"],
                                                                       ctx["data"], d), deps=(f"train-{key}",)).outputs
    return tr, ev


def start_run(cfg: ExperimentConfig, config_file: str, log=print) -> tuple[Path, StageRunner, dict]:
    """Output directory, its config record, the stage runner and every stage before training."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / config_file, versioned("experiment-config", provenance(cfg.data_seed, cfg)))
    R = StageRunner(out, log=log)
    return out, R, prepare_stages(cfg, R, log)


def run_experiment(cfg: ExperimentConfig, log=print) -> dict:
    t_start = time.time()
    out, R, ctx = start_run(cfg, "config.json", log)
    c = cfg.model_dump(mode="json")
    pick = lambda *keys: _pick(cfg, *keys)  # noqa: E731
    ev_key = eval_key(cfg)
    data, teacher, disc = ctx["data"], ctx["teacher"], ctx["discover"]
    circuit = Circuit.load(disc["circuit"])
    results: dict = {"config": c, "teacher": {"model": teacher, "circuit": disc}, "variants": {}}
    if "files" in data:
        results["data_files"] = data["files"]
    if "vocabulary" in data:
        results["data_vocabulary"] = data["vocabulary"]
    results["teacher"]["eval"] = R.run("eval-teacher", ev_key, lambda d: stage_evaluate(
        cfg, teacher, [list(h) for h in circuit.as_list()], data, d), deps=("discover",)).outputs
    if cfg.n_random_sets:
        results["teacher"]["random_control"] = R.run("random-teacher", {**ev_key, **pick("n_random_sets")}, lambda d:
                                                     stage_random_control(cfg, teacher, disc["circuit"], data, d),
                                                     deps=("discover",)).outputs
    for v, st in ctx["students"].items():
        student, match = st["student"], st["match"]
        vres: dict = {"student": student, "rows": {}, "pairing": match}
        results["variants"][v] = vres
        heads = match["student_heads"]
        base_eval = R.run(f"eval-{v}-base", {**ev_key, "s": student}, lambda d: stage_evaluate(cfg, student, heads, data, d),
                          deps=(f"match-{v}",)).outputs
        vres["rows"]["base student"] = {"seeds": {"-": base_eval}}
        vres["side_effects"] = {"base student": _optional(log, "side-effects", lambda: R.run(
            f"ppl-{v}-base", {"s": student}, lambda d: stage_side_effects(cfg, student, d)).outputs)}
        vres["mechanism"], vres["alignment"], vres["heldout_alignment"] = {}, {}, {}
        vres["alignment"]["base student"] = _optional(log, "alignment", lambda: R.run(
            f"align-{v}-base", pick("compare_items"), lambda d: stage_alignment(cfg, teacher, student, data, d),
            deps=(f"match-{v}",)).outputs)
        for method in cfg.methods:
            row = vres["rows"].setdefault(method, {"seeds": {}})
            for seed in cfg.seeds:
                key = f"{v}-{method}-s{seed}"
                tr, ev = train_row(cfg, R, ctx, v, method, seed)
                row["seeds"][str(seed)] = {**ev, "log": tr["log"], "model": tr["model"]}
                row["trainable"] = tr["trainable"]
                vres["heldout_alignment"].setdefault(method, {})[str(seed)] = tr.get("heldout_alignment")
                if seed != cfg.seeds[0]:
                    continue
                vres["side_effects"][method] = _optional(log, "side-effects", lambda: R.run(
                    f"ppl-{key}", {}, lambda d: stage_side_effects(cfg, tr["model"], d),
                    deps=(f"train-{key}",)).outputs)
                if cfg.analyze_methods is None or method in cfg.analyze_methods:
                    pairs = [[p0, p1] for p0, p1 in zip(heads, _pair_teachers(match["pairing"]))]
                    vres["mechanism"][method] = _optional(log, "mechanism", lambda: R.run(
                        f"mech-{key}", pick("mechanism_items", "n_random_sets", "match_positions"),
                        lambda d: stage_mechanism(cfg, tr["model"], teacher, pairs, student, data, d),
                        deps=(f"train-{key}",)).outputs)
                    vres["alignment"][method] = _optional(log, "alignment", lambda: R.run(
                        f"align-{key}", pick("compare_items"),
                        lambda d: stage_alignment(cfg, teacher, tr["model"], data, d), deps=(f"train-{key}",)).outputs)
        vres["mcnemar"] = _mcnemar_table(vres, results["teacher"]["eval"], mcnemar)
    return finish_run(cfg, R, results, t_start, out / "results.json", write_report)


def finish_run(cfg: ExperimentConfig, R: StageRunner, results: dict, t_start: float, path: Path, write) -> dict:
    """Stage timings, wall time and provenance into ``results``; results JSON, then the report."""
    results["timings"] = R.timings()
    results["wall_seconds"] = round(time.time() - t_start, 1)
    results["provenance"] = provenance(cfg.data_seed, cfg)
    write_json_atomic(path, versioned("experiment-results", results))
    write(results, path.parent)
    return results


def _mcnemar_table(vres: dict, teacher_eval: dict, mcnemar) -> dict:
    """McNemar of every circuit-alignment row (circuit, circuit-procrustes, circuit-iit) and of the random-partner
    control against every other row and the teacher, per seed, on the same test items (full accuracy)."""
    def items(ev):
        return json.loads(Path(ev["per_item"]).read_text())["full"]

    table: dict = {}
    teacher_items = items(teacher_eval)
    for mine in [m for m in vres["rows"] if m in METHODS and METHODS[m].partners is not None
                 and len(METHODS[m].terms) > 1]:
        for seed, ev in vres["rows"][mine]["seeds"].items():
            a = items(ev)
            for other, orow in vres["rows"].items():
                if other == mine:
                    continue
                oev = orow["seeds"].get(seed) or orow["seeds"].get("-")
                if oev:
                    table.setdefault(mine, {}).setdefault(other, {})[seed] = mcnemar(a, items(oev))
            table.setdefault(mine, {}).setdefault("teacher", {})[seed] = mcnemar(a, teacher_items)
    return table


def _pair_teachers(pairing_path: str) -> list:
    return [list(p.teacher) for p in load_pairing(pairing_path).pairs]
