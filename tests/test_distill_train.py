"""Training runs on tiny random models: every method, cache == live teacher, kill + resume, clear errors."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from circuitdistill.cli.main import app
from circuitdistill.distill.config import METHODS, CacheConfig, DistillConfig
from circuitdistill.distill.losses import VocabularyMismatch
from circuitdistill.distill.teacher_cache import TeacherCache, build_cache
from circuitdistill.distill.methods import weight_of
from circuitdistill.distill.trainer import global_indices, train

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import make_world, save_tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    w = make_world(tmp_path_factory.mktemp("distill"))
    build_cache(CacheConfig(teacher=w["teacher"], data=w["data"], out=str(w["root"] / "cache"),
                            interchange_pairing=w["pairing"]), progress=False)
    w["cache"] = str(w["root"] / "cache")
    return w


def _cfg(world, method, out, **kw):
    base = dict(method=method, student=world["student"], teacher_cache=world["cache"], data=world["data"],
                pairing=world["pairing"], out=str(out), steps=4, batch_size=8, lr=1e-3, checkpoint_every=2,
                threads=1)
    base.update(kw)
    return DistillConfig(**base)


def test_cache_contents(world):
    c = TeacherCache(world["cache"])
    assert c.n_items == 48 and c.heads.shape == (48, 8, 16) and c.topk_values.shape == (48, 64)
    assert torch.equal(c.labels, c.topk_indices[:, 0])
    assert c.meta["data_sha256"] and c.meta["versions"]["torch"]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_and_logs(world, tmp_path, method):
    s = train(_cfg(world, method, tmp_path / method), progress=False)
    rows = [json.loads(l) for l in (tmp_path / method / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    cfg = _cfg(world, method, tmp_path)
    for term, _ in METHODS[method].terms:
        if weight_of(method, term, cfg) == 0:  # e.g. logit-kd's CE at the default kd_ce_weight 0
            continue
        assert term in rows[0]
        if term in ("cka", "procrustes"):
            assert len(rows[0][f"{term}_pairs"]) == 3
    assert rows[0]["loss"] == pytest.approx(sum(rows[0][t] for t, _ in METHODS[method].terms if t in rows[0]))
    assert (tmp_path / method / "loss.png").stat().st_size > 0
    assert s["trainable"]["n_selected_heads"] == (8 if method in ("full-kd", "logit-kd") else 3)
    summary = json.loads((tmp_path / method / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["config"]["method"] == method


def test_random_pairing_differs_from_aligned(world, tmp_path):
    a = train(_cfg(world, "circuit", tmp_path / "a", steps=1), progress=False)
    r = train(_cfg(world, "circuit-random", tmp_path / "r", steps=1), progress=False)
    assert [p["student"] for p in a["pairs"]] == [p["student"] for p in r["pairs"]]
    assert all(x["teacher"] != y["teacher"] for x, y in zip(a["pairs"], r["pairs"]))


def test_cache_and_live_teacher_give_the_same_run(world, tmp_path):
    a = train(_cfg(world, "circuit", tmp_path / "cache"), progress=False)
    b = train(_cfg(world, "circuit", tmp_path / "live", teacher_cache=None, teacher=world["teacher"]),
              progress=False)
    assert a["final"]["loss"] == pytest.approx(b["final"]["loss"], abs=1e-5)
    assert a["final"]["cka_pairs"] == pytest.approx(b["final"]["cka_pairs"], abs=1e-5)


def test_data_order_is_a_function_of_seed_and_step():
    a = [global_indices(s, 8, 20, seed=3) for s in range(6)]
    assert a == [global_indices(s, 8, 20, seed=3) for s in range(6)]
    flat = sum(a, [])
    assert sorted(flat[:20]) == list(range(20))  # first epoch is a permutation


def test_kill_and_resume_gives_the_same_weights(world, tmp_path):
    full = _cfg(world, "circuit", tmp_path / "uninterrupted", steps=6, checkpoint_every=2)
    train(full, progress=False)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "circuitdistill.cli.main", "distill", "--method", "circuit", "--student",
           world["student"], "--teacher-cache", world["cache"], "--data", world["data"], "--pairing",
           world["pairing"], "--out", str(killed), "--steps", "6", "--batch-size", "8", "--lr", "1e-3",
           "--checkpoint-every", "2", "--threads", "1"]
    env = {**os.environ, "CIRCUITDISTILL_FAULT_KILL_AFTER_STEP": "3"}
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert torch.load(killed / "checkpoint.pt", weights_only=False)["step"] == 2
    assert len((killed / "log.jsonl").read_text().splitlines()) == 3  # step 3 ran but was never checkpointed
    with pytest.raises(FileExistsError, match="--resume"):
        train(full.model_copy(update={"out": str(killed)}), progress=False)
    train(full.model_copy(update={"out": str(killed)}), resume=True, progress=False)
    a, b = load_file(str(tmp_path / "uninterrupted" / "model" / "model.safetensors")), \
        load_file(str(killed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(l) for l in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_logit_kd_vocabulary_mismatch_fails_at_start(world, tmp_path):
    other = save_tiny(tmp_path / "bigvocab", seed=3, vocab_size=50304)
    cfg = _cfg(world, "logit-kd", tmp_path / "kd", student=other, teacher_cache=None, teacher=world["teacher"])
    with pytest.raises(VocabularyMismatch, match="50257 output logits.*50304"):
        train(cfg, progress=False)
    assert not (tmp_path / "kd" / "log.jsonl").exists()  # nothing trained
    res = CliRunner().invoke(app, ["distill", "--method", "logit-kd", "--student", other, "--teacher-cache",
                                   world["cache"], "--data", world["data"], "--out", str(tmp_path / "kd2"),
                                   "--threads", "1"])
    assert res.exit_code == 2 and "share a vocabulary" in res.output


def test_config_errors_name_the_field(world, tmp_path):
    res = CliRunner().invoke(app, ["distill", "--method", "circuit", "--student", world["student"], "--teacher",
                                   world["teacher"], "--data", world["data"], "--steps", "0"])
    assert res.exit_code == 2 and "steps" in res.output and "greater than or equal to 1" in res.output
    res = CliRunner().invoke(app, ["distill", "--method", "circuit", "--student", world["student"], "--teacher",
                                   world["teacher"], "--data", world["data"]])
    assert res.exit_code == 2 and "pairing" in res.output
    cfgf = tmp_path / "cfg.json"
    cfgf.write_text(json.dumps({"method": "circuit", "student": world["student"], "data": world["data"],
                                "pairing": world["pairing"], "teacher_cache": world["cache"], "lambda": 2}))
    res = CliRunner().invoke(app, ["distill", "--config", str(cfgf)])
    assert res.exit_code == 2 and "lambda" in res.output and str(cfgf) in res.output
    with pytest.raises(ValueError, match="position"):
        train(_cfg(world, "circuit", tmp_path / "pos", position=-2), progress=False)


def test_resume_may_extend_the_number_of_steps(world, tmp_path):
    train(_cfg(world, "circuit-ce", tmp_path / "straight", steps=4), progress=False)
    train(_cfg(world, "circuit-ce", tmp_path / "ext", steps=2, keep_checkpoints=True), progress=False)
    assert (tmp_path / "ext" / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match="different config"):
        train(_cfg(world, "circuit-ce", tmp_path / "ext", steps=4, lr=5e-4), resume=True, progress=False)
    train(_cfg(world, "circuit-ce", tmp_path / "ext", steps=4), resume=True, progress=False)
    assert not (tmp_path / "ext" / "checkpoint.pt").exists()  # deleted once the finished row wrote model/
    a, b = load_file(str(tmp_path / "straight" / "model" / "model.safetensors")), \
        load_file(str(tmp_path / "ext" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interchange_from_the_cache_equals_the_live_teacher(world, tmp_path):
    full = tmp_path / "full-vocab-cache"  # every logit kept: the restricted KL is then the full KL
    build_cache(CacheConfig(teacher=world["teacher"], data=world["data"], out=str(full), top_k_logits=50257,
                            interchange_pairing=world["pairing"]), progress=False)
    a = train(_cfg(world, "circuit-iit", tmp_path / "cache", steps=2, teacher_cache=str(full)), progress=False)
    b = train(_cfg(world, "circuit-iit", tmp_path / "live", steps=2, teacher_cache=None, teacher=world["teacher"]),
              progress=False)
    assert a["final"]["iit"] == pytest.approx(b["final"]["iit"], abs=1e-6)
    assert a["final"]["ce"] == pytest.approx(b["final"]["ce"], abs=1e-5)


def test_interchange_loss_is_zero_for_a_copy_of_the_teacher_with_identity_pairs(world, tmp_path):
    pairing = tmp_path / "identity.json"
    pairing.write_text(json.dumps({"pairs": [{"student": h, "teacher": h} for h in ([0, 1], [1, 2], [1, 3])]}))
    cache = tmp_path / "cache"
    build_cache(CacheConfig(teacher=world["teacher"], data=world["data"], out=str(cache), heads="paired",
                            pairing=str(pairing), interchange_pairing=str(pairing)), progress=False)
    for kw in ({"teacher_cache": str(cache)}, {"teacher_cache": None, "teacher": world["teacher"]}):
        s = train(_cfg(world, "circuit-iit", tmp_path / f"run{len(kw)}", steps=1, student=world["teacher"],
                       pairing=str(pairing), **kw), progress=False)
        assert abs(s["final"]["iit"]) < 1e-6
    # the same heads on a different student: the term is not trivially zero
    s = train(_cfg(world, "circuit-iit", tmp_path / "other", steps=1, pairing=str(pairing), teacher_cache=str(cache)),
              progress=False)
    assert s["final"]["iit"] > 1e-4


def test_interchange_needs_corrupted_prompts_and_says_so_before_training(world, tmp_path):
    from circuitdistill.tasks.io import load_items, save_items

    items = load_items(world["data"])
    items[5] = items[5].model_copy(update={"corrupted_prompt": None, "corrupted_answer": None})
    data = save_items(tmp_path / "d.jsonl", items)
    with pytest.raises(ValueError, match="line 6.*corrupted_prompt|corrupted_prompt.*line 6"):
        train(_cfg(world, "circuit-iit", tmp_path / "x", data=str(data), teacher_cache=None,
                   teacher=world["teacher"]), progress=False)
    assert not (tmp_path / "x" / "log.jsonl").exists()


@pytest.mark.parametrize("method", ["circuit-procrustes", "circuit-iit", "circuit"])
def test_every_alignment_term_moves_only_the_matched_heads(world, tmp_path, method):
    from circuitdistill.distill.matching import load_pairing
    from circuitdistill.models.arch import head_param_slices
    from circuitdistill.models.registry import load_model

    train(_cfg(world, method, tmp_path / method, steps=2, lr=1e-2), progress=False)
    before, _ = load_model(world["student"])
    after = load_file(str(tmp_path / method / "model" / "model.safetensors"))
    names = {id(p): n for n, p in before.named_parameters()}
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in before.named_parameters()}
    n_heads, n_kv = before.config.num_attention_heads, before.config.num_key_value_heads
    for l, h in load_pairing(world["pairing"]).student_heads:
        for c, idx in (("q", h), ("o", h), ("k", h * n_kv // n_heads), ("v", h * n_kv // n_heads)):
            for p, sl in head_param_slices(before, l, idx, c):
                masks[names[id(p)]][sl] = True
    moved = False
    for n, p in before.named_parameters():
        m = masks[n]
        assert torch.equal(after[n][~m], p.detach()[~m]), f"{method}: {n} changed outside the matched heads"
        moved |= bool(m.any()) and not torch.equal(after[n][m], p.detach()[m])
    assert moved


def test_the_random_control_keeps_the_many_to_one_structure():
    from circuitdistill.distill.trainer import random_pairing

    aligned = [(5, 1), (5, 1), (5, 1), (3, 0), (3, 0), (7, 2)]
    pool = [(l, h) for l in range(8) for h in range(3)]
    for seed in range(5):
        rnd = random_pairing([(0, i) for i in range(6)], aligned, pool, seed)
        assert [rnd[i] == rnd[j] for i in range(6) for j in range(6)] == \
               [aligned[i] == aligned[j] for i in range(6) for j in range(6)]
        assert all(r != a for r, a in zip(rnd, aligned)) and set(rnd) <= set(pool)
    assert random_pairing([(0, 0)] * 6, aligned, pool, 1) == random_pairing([(0, 0)] * 6, aligned, pool, 1)


def test_held_out_alignment_is_logged_before_and_after_for_every_row(world, tmp_path):
    from circuitdistill.tasks.io import load_items, save_items

    val = save_items(tmp_path / "val.jsonl", load_items(world["data"])[:16])
    build_cache(CacheConfig(teacher=world["teacher"], data=str(val), out=str(tmp_path / "vcache")), progress=False)
    s = train(_cfg(world, "full-kd", tmp_path / "kd", pairing=None, eval_pairing=world["pairing"],
                   eval_data=str(val), eval_teacher_cache=str(tmp_path / "vcache"), eval_max_items=16),
              progress=False)
    assert set(s["start_eval"]["cka"]) == set(s["final_eval"]["cka"]) and len(s["final_eval"]["cka"]) == 3
    assert s["start_eval"]["cka"] != s["final_eval"]["cka"]  # full-kd moved the heads
    rows = [json.loads(l) for l in (tmp_path / "kd" / "log.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "cka_mean" in rows[0]["eval"]
