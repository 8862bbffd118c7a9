"""A task and a discovery method registered from tests/_registry_toys.py alone run through `data`, `discover` and
the tiny experiment: nothing under src/ names them."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import _registry_toys  # noqa: F401 - registers the toy task and the toy discovery method (tests/ is on sys.path)
from circuitdistill.circuits.ablation import baseline, head_sweep
from circuitdistill.circuits.circuit import Circuit
from circuitdistill.circuits.method_registry import method_names
from circuitdistill.circuits.toy import box_items
from circuitdistill.cli.main import app
from circuitdistill.experiment.config import preset
from circuitdistill.experiment.runner import run_experiment
from circuitdistill.models.hooks import HookedLM
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.tasks.io import load_items, save_items
from circuitdistill.tasks.registry import get_task, task_names
from circuitdistill.tasks.warmup import real_task_data

torch.set_num_threads(2)


def test_registered_task_and_method_are_listed_and_validated():
    assert {"entity-tracking", "tom", "toy-boxes"} <= set(task_names()) and get_task("toy-boxes").short == "toy"
    assert {"activation", "attribution", "path", "toy-zero"} <= set(method_names())
    r = CliRunner().invoke(app, ["data", "task", "no-such-task", "--model", "gpt2", "--out", "x.jsonl"])
    assert r.exit_code == 2 and "toy-boxes" in r.output  # the error lists every registered task
    with pytest.raises(ValueError, match="toy-zero"):
        preset("tiny", "toy-boxes", "x", discovery_method="nope")


def test_data_command_writes_the_registered_tasks_splits(tmp_path):
    r = CliRunner().invoke(app, ["data", "task", "toy-boxes", "--model", "gpt2", "--splits", "12,4,6", "--out-dir",
                                 str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert [len(load_items(tmp_path / f"toy_{s}.jsonl")) for s in ("train", "validation", "test")] == [12, 4, 6]
    assert load_items(tmp_path / "toy_test.jsonl")[0].split == "test"
    assert json.loads((tmp_path / "toy_manifest.json").read_text())["config"]["task"] == "toy-boxes"
    r = CliRunner().invoke(app, ["data", "task", "toy-boxes", "--model", "gpt2", "--n", "5", "--out",
                                 str(tmp_path / "one.jsonl")])
    assert r.exit_code == 0 and len(load_items(tmp_path / "one.jsonl")) == 5
    tr, va, _ = real_task_data("toy-boxes", gpt2_tokenizer(), 3, 0, None, None, tmp_path, need_train=True)
    assert len(tr) == 2000 and len(va) == 500 and (tmp_path / "data_train.jsonl").exists()


def test_discover_runs_the_registered_method(tmp_path):
    tok, model = gpt2_tokenizer(), tiny_model("llama", n_layers=2)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    items = box_items(tok, 6, 3)
    save_items(tmp_path / "items.jsonl", items)
    base = ["discover", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "items.jsonl"), "--method",
            "toy-zero", "--batch-size", "3", "--circuit-size", "2"]
    r = CliRunner().invoke(app, [*base, "--ablation", "mean", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "supports --ablation zero" in r.output  # the method's own limits are checked
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    c = Circuit.load(tmp_path / "out" / "circuit.json")
    hooked = HookedLM(model, tok)
    clean = baseline(hooked, items, "logprob", 3)
    expected = (head_sweep(hooked, items, "logprob", mode="zero", positions="final", batch_size=3, progress=False)
                - clean) / abs(clean)
    assert c.method == "toy-zero" and c.n_heads == 2
    assert torch.allclose(c.score_grid().double(), expected.double(), atol=1e-5)


def test_tiny_experiment_runs_the_registered_task_and_method(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    tok = gpt2_tokenizer()
    for name, family, seed in (("teacher", "llama", 0), ("student", "qwen2", 1)):
        tiny_model(family, seed=seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    cfg = preset("tiny", "toy-boxes", str(tmp_path / "run"), teacher_base=str(tmp_path / "teacher"),
                 student_base=str(tmp_path / "student"), discovery_method="toy-zero", methods=["circuit"],
                 analyze_methods=[], n_random_sets=0)
    res = run_experiment(cfg, log=lambda *_: None)
    stages = tmp_path / "run" / "stages"
    assert load_items(next(stages.glob("data-*")) / "test.jsonl")[0].meta["task"] == "toy-boxes"
    assert len(load_items(next(stages.glob("student-warm-*")) / "warmup.jsonl")) == cfg.n_train
    assert Circuit.load(res["teacher"]["circuit"]["circuit"]).method == "toy-zero"
    assert 0.0 <= res["variants"]["warm"]["rows"]["circuit"]["seeds"]["0"]["full"] <= 1.0
    assert (tmp_path / "run" / "report.md").exists()
