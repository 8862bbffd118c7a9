"""The end-to-end tracing experiment on tiny random models: every stage runs, resumes, and reports."""
from __future__ import annotations

import json

import pytest

from circuitdistill.models import registry
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.trace.experiment import TraceExperimentConfig, run_trace_experiment, split_teacher


@pytest.fixture()
def tiny_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    tok = gpt2_tokenizer()
    for i, name in enumerate(("tiny-a", "tiny-b")):
        registry.save_derived(tiny_model("llama", seed=i), tok, name, {"description": "tiny test teacher"})
    ins = tmp_path / "ins.jsonl"
    ins.write_text("".join(json.dumps({"id": f"i{k}", "instruction": f"Say something about topic {k}."}) + "\n"
                           for k in range(14)))
    return tmp_path, ins


def test_experiment_runs_all_stages_and_resumes(tiny_home):
    tmp, ins = tiny_home
    cfg = TraceExperimentConfig(teachers=["tiny-a", "tiny-b"], instructions=ins, n_train=10, n_test=4,
                                out=tmp / "run", decoding={"max_new_tokens": 6, "batch_size": 4},
                                student={"base": "tiny-a", "train_layers": 1, "epochs": 1, "batch_size": 4,
                                         "checkpoint_every": 1, "max_len": 48})
    res = run_trace_experiment(cfg)
    methods = {r["method"] for r in res["table"]}
    assert methods == {"pos", "ngram", "similarity", "perplexity"}
    assert res["n_train_texts"] == 20 and res["n_test_texts"] == 8 and res["chance"] == 0.5
    for m in methods:
        assert (tmp / "run" / f"confusion_{m}.png").stat().st_size > 0
    teacher_rows = (tmp / "run" / "teachers" / "tiny-a.jsonl").read_text().splitlines()
    assert len(teacher_rows) == 10 and all(json.loads(r)["source"] == "tiny-a" for r in teacher_rows)
    students = json.loads((tmp / "run" / "students.json").read_text())["students"]
    assert set(students) == {"tiny-a", "tiny-b"}
    assert all((registry.cached_dir(s) / "config.json").exists() for s in students.values())
    report = json.loads((tmp / "run" / "report.json").read_text())
    assert report["provenance"]["config"]["seed"] == 0 and "timings_s" in report
    assert "| pos |" in (tmp / "run" / "report.md").read_text()

    # resume: a second run regenerates nothing (files unchanged, students reused)
    before = (tmp / "run" / "teachers" / "tiny-b.jsonl").read_text()
    res2 = run_trace_experiment(cfg)
    assert (tmp / "run" / "teachers" / "tiny-b.jsonl").read_text() == before
    assert [r["accuracy"] for r in res2["table"]] == [r["accuracy"] for r in res["table"]]


def test_config_validation():
    with pytest.raises(ValueError, match="at least 2 teachers"):
        TraceExperimentConfig(teachers=["smollm2-135m"])
    with pytest.raises(ValueError, match="unknown persona"):
        TraceExperimentConfig(teachers=["smollm2-135m", "smollm2-135m@pirate"])
    assert split_teacher("smollm2-135m@terse") == ("smollm2-135m", "terse")
