"""End-to-end teacher tracing: teachers answer instructions, students are fine-tuned on each teacher's answers,
students answer held-out instructions, and the tracer (PoS templates, word n-grams) plus two baselines
(perplexity under each teacher, bag-of-words similarity) say which teacher each student text came from.

Stages (each resumes; rerunning the same command skips finished work). Each stage of each teacher is a
cached ``StageRunner`` stage (``OUT/stages/<stage>-<teacher>-<key>/done.json``); an interrupted generation
stage continues from the rows already appended:

1. ``teachers``  every teacher answers the first ``n_train`` instructions
   -> ``OUT/teachers/<teacher>.jsonl`` (appended batch by batch; done ids are skipped on resume).
2. ``students``  for each teacher, a student (``student_base``, top ``student_train_layers`` layers trainable)
   is fine-tuned on that teacher's (instruction, answer) pairs; checkpoints under ``OUT/students/<teacher>/``;
   the final model is saved with ``registry.save_derived`` so ``load_model`` accepts its name.
3. ``student_gen`` each student answers the ``n_test`` held-out instructions -> ``OUT/students/<teacher>.jsonl``.
4. ``trace``     fit the tracer on the teachers' texts, predict the students' texts, run the baselines and
   write ``OUT/report.json``, ``OUT/report.md`` and confusion-matrix PNGs.
"""
from __future__ import annotations

import json
import math
import random
import time
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

from ..models import registry
from ..models.arch import get_module, table_for
from ..models.placement import Device, DType, device_field, dtype_field, threads_field
from ..train_loop import TrainLoop, save_checkpoint_file
from ..stages import StageRunner
from ..utils import provenance, seed_everything, sha256_json, versioned, write_json_atomic
from .io import append_jsonl, compact_jsonl, read_done, read_jsonl
from .report import experiment_report
from .teachers import chat_prompt, load_teacher, split_teacher


def default_instructions_path() -> Path:
    return Path(str(resources.files("circuitdistill") / "resources" / "trace_instructions.jsonl"))


class DecodingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(48, ge=1, le=1024, description="tokens generated per answer")
    do_sample: bool = Field(True, description="seeded sampling (temperature, top_p); off: greedy decoding")
    temperature: float = Field(0.7, gt=0, le=5, description="sampling temperature")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling mass")
    batch_size: int = Field(16, ge=1, le=512, description="prompts generated per batch")


class StudentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str = Field("smollm2-135m", description="model every student is fine-tuned from")
    train_layers: int = Field(8, ge=0, description="top decoder layers fine-tuned (0 = all parameters)")
    epochs: float = Field(1.0, gt=0, description="passes over its teacher's answers")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate")
    batch_size: int = Field(8, ge=1, description="examples per optimizer step")
    max_len: int = Field(128, ge=16, description="prompt+answer tokens per training example")
    checkpoint_every: int = Field(10, ge=1, description="optimizer steps between checkpoints")


class TraceExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teachers: list[str] = Field(default_factory=lambda: ["smollm2-135m", "gemma3-270m"],
                                description="teacher models (repeatable or comma separated); model@persona for a "
                                "labelled system-prompt persona")
    instructions: Path | None = Field(None, description="instructions JSONL of {id, instruction} (default: the "
                                      "bundled trace_instructions.jsonl)")
    n_train: int = Field(128, ge=10, description="instructions the teachers answer (student training + tracer fit)")
    n_test: int = Field(32, ge=1, description="held-out instructions the students answer")
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    tagger: str = Field("spacy", description="PoS tagger of the tracer: spacy or hanta")
    seed: int = Field(0, description="seeds sampling, student training and the tracer")
    out: Path = Field(Path("runs/trace/experiment"), validation_alias=AliasChoices("out", "out_dir"),
                      description="output directory (report.md, stages)")
    threads: int = threads_field()
    device: Device = device_field()
    dtype: DType = dtype_field(note=". The students train in it, as `distill` does")
    stages: list[Literal["teachers", "students", "student_gen", "trace"]] = Field(
        default_factory=lambda: ["teachers", "students", "student_gen", "trace"],
        description="comma-separated stages to run")

    @field_validator("teachers")
    @classmethod
    def _teachers(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError("need at least 2 teachers to trace between")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate teachers in {v}")
        for t in v:
            split_teacher(t)
        return v


def load_instructions(cfg: TraceExperimentConfig) -> tuple[list[dict], list[dict]]:
    path = cfg.instructions or default_instructions_path()
    rows = read_jsonl(path)
    for i, r in enumerate(rows, 1):
        if not isinstance(r.get("instruction"), str) or "id" not in r:
            raise ValueError(f"{path}:{i}: each row needs 'id' and 'instruction'")
    if cfg.n_train + cfg.n_test > len(rows):
        raise ValueError(f"n_train + n_test = {cfg.n_train + cfg.n_test} exceeds the {len(rows)} instructions in {path}")
    return rows[: cfg.n_train], rows[len(rows) - cfg.n_test:]


def safe_name(spec: str) -> str:
    return spec.replace("/", "_").replace("@", "+")


# ------------------------------------------------------------------------------------------------ generation

@torch.no_grad()
def generate_answers(model, tok, rows: list[dict], out_path: Path, dec: DecodingConfig, seed: int,
                     system: str | None = None, source: str = "", desc: str = "generate") -> list[dict]:
    """Answer every row's instruction; append each finished batch to ``out_path``; skip ids already there."""
    done = read_done(out_path)
    todo = [r for r in rows if r["id"] not in done]
    eos_ids = [tok.eos_token_id]
    for special in ("<|im_end|>", "<end_of_turn>"):
        tid = tok.convert_tokens_to_ids(special) if special in tok.get_vocab() else None
        if tid is not None and tid not in eos_ids:
            eos_ids.append(tid)
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=desc, unit="text")
    for start in range(0, len(todo), dec.batch_size):
        batch = todo[start:start + dec.batch_size]
        prompts = [chat_prompt(tok, r["instruction"], system) for r in batch]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        # seed per batch from its first id, so a resumed run samples what the uninterrupted one would have
        torch.manual_seed(int(sha256_json([seed, batch[0]["id"]])[:8], 16))
        t0 = time.time()
        out = model.generate(**enc, max_new_tokens=dec.max_new_tokens, do_sample=dec.do_sample,
                             temperature=dec.temperature if dec.do_sample else None,
                             top_p=dec.top_p if dec.do_sample else None, top_k=None if dec.do_sample else None,
                             pad_token_id=tok.pad_token_id, eos_token_id=eos_ids)
        dt = time.time() - t0
        new = out[:, enc["input_ids"].shape[1]:]
        recs = []
        for r, ids in zip(batch, new):
            n_tok = int((~torch.isin(ids, torch.tensor(eos_ids + [tok.pad_token_id], device=ids.device))).sum())
            text = tok.decode(ids, skip_special_tokens=True)
            if not getattr(tok, "chat_template", None):
                # plain-format prompt (a base model without a chat template): cut where it starts a new turn
                for stop in ("\nInstruction:", "\n\n\n"):
                    text = text.split(stop)[0]
            text = text.strip()
            recs.append({"id": r["id"], "instruction": r["instruction"], "text": text or "(empty)",
                         "source": source, "new_tokens": n_tok, "batch_seconds": round(dt, 2)})
        append_jsonl(out_path, recs)
        bar.update(len(batch))
    bar.close()
    by_id = {r["id"]: r for r in compact_jsonl(out_path)}
    return [by_id[r["id"]] for r in rows]


# ------------------------------------------------------------------------------------------------ student

def _encode_pair(tok, instruction: str, answer: str, max_len: int) -> tuple[list[int], list[int]]:
    prompt_ids = tok(chat_prompt(tok, instruction), add_special_tokens=False)["input_ids"]
    end = "<|im_end|>" if "<|im_end|>" in tok.get_vocab() else (tok.eos_token or "")
    ans_ids = tok(answer + end, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + ans_ids)[:max_len]
    labels = ([-100] * len(prompt_ids) + ans_ids)[:max_len]
    return ids, labels


def _collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), n), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), n), -100, dtype=torch.long)
    mask = torch.zeros((len(pairs), n), dtype=torch.long)
    for i, (ids, lab) in enumerate(pairs):  # right padding for training
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _trainable(model, train_layers: int) -> list[torch.nn.Parameter]:
    if train_layers == 0:
        return [p for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    table = table_for(model)
    layers = get_module(model, table.layers)
    k = min(train_layers, len(layers))
    params = []
    for layer in layers[len(layers) - k:]:
        params += list(layer.parameters())
    params += list(get_module(model, table.final_norm).parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def train_student(teacher: str, data: list[dict], cfg: TraceExperimentConfig, ckpt_dir: Path) -> tuple[str, dict]:
    """Fine-tune ``cfg.student.base`` on one teacher's answers; resume from ``ckpt_dir``; return (name, info)."""
    sc = cfg.student
    dtype = [] if cfg.dtype == "fp32" else [cfg.dtype]  # fp32 students keep their earlier names
    name = f"trace-student-{safe_name(teacher)}-{sha256_json([teacher, sc.model_dump(), cfg.seed, cfg.n_train, sorted(r['id'] for r in data), *dtype])[:8]}"
    if registry.is_prepared(name) or (registry.cached_dir(name) / "config.json").exists():
        meta = json.loads((registry.cached_dir(name) / "circuitdistill.json").read_text())
        return name, meta.get("train", {})
    model, tok = registry.load_model(sc.base, device=cfg.device, dtype=cfg.dtype)
    model.train()
    params = _trainable(model, sc.train_layers)
    opt = torch.optim.AdamW(params, lr=sc.lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    pairs = [_encode_pair(tok, r["instruction"], r["text"], sc.max_len) for r in data]
    steps_per_epoch = math.ceil(len(pairs) / sc.batch_size)
    total = max(1, round(sc.epochs * steps_per_epoch))
    order: list[int] = []
    while len(order) < total * sc.batch_size:
        perm = list(range(len(pairs)))
        rng.shuffle(perm)
        order += perm
    ckpt = ckpt_dir / "checkpoint.pt"
    state: dict = {"step": 0, "history": []}
    if ckpt.exists():
        ck = torch.load(ckpt, map_location="cpu", weights_only=False)
        if ck["name"] == name:
            named = dict(model.named_parameters())
            with torch.no_grad():
                for k, v in ck["trainable"].items():
                    named[k].copy_(v)
            opt.load_state_dict(ck["optimizer"])
            state = {"step": ck["step"], "history": ck["history"]}
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)) *
                                              max(0.0, 1 - s / total) if total > 1 else 1.0)
    for _ in range(state["step"]):
        sched.step()

    def step_loss(step: int):
        idx = order[step * sc.batch_size:(step + 1) * sc.batch_size]
        batch = {k: v.to(model.device) for k, v in _collate([pairs[i] for i in idx], tok.pad_token_id).items()}
        loss = model(**batch).loss
        return loss, lambda: {"loss": round(float(loss.detach()), 4)}

    def save() -> None:
        trainable = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
        save_checkpoint_file(ckpt, {"name": name, "step": state["step"], "history": state["history"],
                                    "trainable": trainable, "optimizer": opt.state_dict()})

    loop = TrainLoop(steps=total, loss=step_loss, optimizer=opt, params=params, grad_clip=1.0, scheduler=sched,
                     save=save, checkpoint_every=sc.checkpoint_every, save_at_cap=False,
                     log_path=ckpt_dir / "log.jsonl", desc=f"train student<-{teacher}")
    outcome = loop.run(state)
    losses = [r["loss"] for r in state["history"]]
    info = {"teacher": teacher, "base": sc.base, "steps": total, "examples": len(pairs), "losses": losses,
            "train_seconds_this_session": round(outcome.seconds, 1), "config": sc.model_dump()}
    model.eval()
    model.hf_quantizer = None  # the base was converted from GGUF; its weights are plain float32 now
    registry.save_derived(model, tok, name, {"description": f"trace student of {teacher} ({sc.base}, {total} steps)",
                                             "train": info, "seed": cfg.seed})
    ckpt.unlink(missing_ok=True)
    return name, info


# ------------------------------------------------------------------------------------------------ run

def available_teachers(specs: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split teacher specs into those that load offline and those that don't (with the reason)."""
    ok, missing = [], {}
    for s in specs:
        name, _ = split_teacher(s)
        try:
            registry.resolve(name, auto_prepare=True)
            ok.append(s)
        except Exception as e:  # noqa: BLE001 - reported to the user verbatim
            missing[s] = str(e)
    return ok, missing


def _answers(path: Path, rows: list[dict]) -> list[dict]:
    """The answers to ``rows`` written to ``path`` so far, in row order."""
    done = read_done(path)
    return [done[r["id"]] for r in rows if r["id"] in done]


def _timed(timings: dict, path: Path, label: str, fn):
    """A stage body that adds its wall time to ``timings[label]`` (kept in ``path`` across sessions)."""
    def body(_stage_dir: Path) -> dict:
        t0 = time.time()
        outputs = fn()
        timings[label] = round(timings.get(label, 0.0) + time.time() - t0, 1)
        write_json_atomic(path, timings)
        return outputs
    return body


def run_trace_experiment(cfg: TraceExperimentConfig) -> dict:
    """Run the selected stages; each one is cached under ``OUT/stages/`` and generation resumes row by row."""
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    teachers, missing = available_teachers(cfg.teachers)
    for s, why in missing.items():
        tqdm.write(f"[trace] teacher {s!r} unavailable, skipped: {why}")
    if len(teachers) < 2:
        raise RuntimeError(f"only {len(teachers)} teacher(s) available ({teachers}); need 2. Missing: {missing}")
    train_rows, test_rows = load_instructions(cfg)
    write_json_atomic(out / "config.json", versioned("trace-experiment-config", provenance(
        cfg.seed, cfg, teachers_used=teachers, teachers_missing=missing)))
    timings_f = out / "timings.json"
    timings: dict = json.loads(timings_f.read_text()) if timings_f.exists() else {}
    R = StageRunner(out, log=tqdm.write)

    def stage(name: str, t: str | None, label: str, inputs: dict, fn, content: dict | None = None) -> dict:
        full = name if t is None else f"{name}-{safe_name(t)}"
        return R.run(full, inputs, _timed(timings, timings_f, label, fn), content=content).outputs

    gen = {"decoding": cfg.decoding.model_dump(), "seed": cfg.seed, "device": cfg.device, "dtype": cfg.dtype}
    teacher_file = {t: out / "teachers" / f"{safe_name(t)}.jsonl" for t in teachers}
    student_file = {t: out / "students" / f"{safe_name(t)}.jsonl" for t in teachers}

    teacher_texts: dict[str, list[dict]] = {}
    for t in teachers:
        if "teachers" in cfg.stages:
            stage("teachers", t, f"teacher_gen:{t}", {"teacher": t, "rows": sha256_json(train_rows), **gen},
                  lambda: _generate(t, train_rows, teacher_file[t], cfg, teacher=True))
        teacher_texts[t] = _answers(teacher_file[t], train_rows)

    students: dict[str, str] = {}
    student_info: dict[str, dict] = {}
    if "students" in cfg.stages or "student_gen" in cfg.stages:
        for t in teachers:
            res = stage("students", t, f"student_train:{t}",
                        {"teacher": t, "student": cfg.student.model_dump(), "seed": cfg.seed, "dtype": cfg.dtype},
                        lambda: dict(zip(("name", "info"), train_student(t, teacher_texts[t], cfg,
                                                                         out / "students" / safe_name(t)))),
                        content={"answers": teacher_file[t]})
            students[t], student_info[t] = res["name"], res["info"]
        write_json_atomic(out / "students.json", {"students": students, "info": student_info})

    student_texts: dict[str, list[dict]] = {}
    for t in teachers:
        if "student_gen" in cfg.stages:
            stage("student_gen", t, f"student_gen:{t}",
                  {"student": students[t], "rows": sha256_json(test_rows), **gen},
                  lambda: _generate(students[t], test_rows, student_file[t], cfg, source=t))
        student_texts[t] = _answers(student_file[t], test_rows)

    result: dict = {"teachers": teachers, "teachers_missing": missing, "timings_s": timings}
    if "trace" in cfg.stages:
        texts = {f"{kind}:{t}": f[t] for kind, f in (("teacher", teacher_file), ("student", student_file))
                 for t in teachers}
        result.update(stage("trace", None, "trace", {"teachers": teachers, "tagger": cfg.tagger, "seed": cfg.seed,
                                                     "device": cfg.device, "dtype": cfg.dtype},
                            lambda: experiment_report(cfg, teachers, teacher_texts, student_texts, out),
                            content=texts))
        result["timings_s"] = timings
        write_json_atomic(out / "report.json", versioned("trace-report", {**result, "provenance": provenance(cfg.seed, cfg)}))
    return result


def _generate(model_name: str, rows: list[dict], path: Path, cfg: TraceExperimentConfig, teacher: bool = False,
              source: str | None = None) -> dict:
    """One model answers ``rows`` into ``path`` (resuming row by row); a teacher spec may carry a persona."""
    if len(_answers(path, rows)) == len(rows):  # answered in an earlier session: no model to load
        return {"answers": path.name, "n": len(rows)}
    if teacher:
        model, tok, system = load_teacher(model_name, cfg.device, cfg.dtype)
        seed, desc = cfg.seed, f"teacher {model_name}"
    else:
        (model, tok), system = registry.load_model(model_name, device=cfg.device, dtype=cfg.dtype), None
        seed, desc = cfg.seed + 1, f"student<-{source}"
    texts = generate_answers(model, tok, rows, path, cfg.decoding, seed, system=system,
                             source=source or model_name, desc=desc)
    return {"answers": path.name, "n": len(texts)}
