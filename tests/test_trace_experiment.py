"""The end-to-end tracing experiment on tiny random models: every stage runs, resumes, and reports."""
from __future__ import annotations

import json

import pytest

from circuitdistill.models import registry
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.trace import experiment as E
from circuitdistill.trace.experiment import TraceExperimentConfig, run_trace_experiment, split_teacher
from circuitdistill.trace.io import read_done


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


def test_experiment_runs_all_stages_and_resumes(tiny_home, monkeypatch):
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

    # every stage of every teacher is recorded as finished, and a rerun does none of their work again
    stages = tmp / "run" / "stages"
    assert sorted(p.parent.name.rsplit("-", 1)[0] for p in stages.glob("*/done.json")) == sorted(
        [f"{s}-{t}" for s in ("student_gen", "students", "teachers") for t in ("tiny-a", "tiny-b")] + ["trace"])

    def redone(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    real = {fn: getattr(E, fn) for fn in ("generate_answers", "train_student", "experiment_report", "load_teacher")}
    for fn in real:
        monkeypatch.setattr(E, fn, redone)
    res3 = run_trace_experiment(cfg)
    assert [r["accuracy"] for r in res3["table"]] == [r["accuracy"] for r in res["table"]]
    for fn, f in real.items():
        monkeypatch.setattr(E, fn, f)

    # an interrupted generation stage continues from the rows it appended
    path = tmp / "run" / "teachers" / "tiny-b.jsonl"
    path.write_text("".join(before.splitlines(keepends=True)[:8]))
    next(stages.glob("teachers-tiny-b-*")).joinpath("done.json").unlink()
    resumed_from = []
    gen = real["generate_answers"]
    monkeypatch.setattr(E, "generate_answers", lambda m, t, rows, p, *a, **k: (
        resumed_from.append(len(read_done(p))), gen(m, t, rows, p, *a, **k))[1])
    run_trace_experiment(cfg.model_copy(update={"stages": ["teachers"]}))
    assert resumed_from == [8] and len(read_done(path)) == 10


def test_config_validation():
    with pytest.raises(ValueError, match="at least 2 teachers"):
        TraceExperimentConfig(teachers=["smollm2-135m"])
    with pytest.raises(ValueError, match="unknown persona"):
        TraceExperimentConfig(teachers=["smollm2-135m", "smollm2-135m@pirate"])
    assert split_teacher("smollm2-135m@terse") == ("smollm2-135m", "terse")
