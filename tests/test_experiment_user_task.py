"""`experiment` on a user's own train / validation / test files with an existing teacher and student."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from circuitdistill.cli.main import app
from circuitdistill.experiment.config import preset
from circuitdistill.experiment.runner import run_experiment
from circuitdistill.experiment.user_task import data_key
from circuitdistill.models.tiny import gpt2_tokenizer
from circuitdistill.tasks.io import TaskFileError, load_items, save_items
from circuitdistill.tasks.registry import get_task
from circuitdistill.utils import MissingFile, UserError

sys.path.insert(0, str(Path(__file__).parent))
from test_experiment_tiny import tiny_pair  # noqa: E402,F401  (the tiny llama teacher + qwen2 student fixture)

SIZES = {"train": 40, "validation": 24, "test": 20}  # not the tiny preset's n_train / n_validation / n_test


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_pair):
    root, tok = tmp_path_factory.mktemp("user-task"), gpt2_tokenizer()
    splits = get_task("entity-tracking").real_splits(SIZES["train"], SIZES["validation"], SIZES["test"], 5, [tok],
                                                     size=3)
    # one test item whose answer is two tokens: dropped, and counted
    long = splits["test"][0].model_copy(update={"answer": " antidisestablishmentarianism", "candidates": None})
    files = {s: str(save_items(root / f"my_{s}.jsonl", items + ([long] if s == "test" else [])))
             for s, items in splits.items()}
    return {"root": root, "files": files, "splits": splits, **tiny_pair}


def _cfg(world, out, files=None, **kw):
    files = files or world["files"]
    return preset("tiny", out=str(out), teacher=world["teacher"], student=world["student"],
                  train_file=files["train"], validation_file=files["validation"], test_file=files["test"],
                  methods=["full-kd", "circuit"], analyze_methods=[], n_random_sets=0, **kw)


def test_an_edited_file_changes_the_data_key(world, tmp_path):
    before = data_key(_cfg(world, tmp_path))
    edited = dict(world["files"], validation=str(save_items(tmp_path / "v.jsonl", world["splits"]["validation"][1:])))
    assert data_key(_cfg(world, tmp_path, edited)) != before


def test_files_come_as_three_with_an_existing_teacher_and_student(world, tmp_path):
    f = world["files"]
    with pytest.raises(ValueError, match="all three of train_file, validation_file and test_file"):
        preset("tiny", teacher=world["teacher"], student=world["student"], train_file=f["train"],
               validation_file=f["validation"])
    with pytest.raises(ValueError, match="existing `teacher` and `student`.*only for a built-in task"):
        preset("tiny", student=world["student"], train_file=f["train"], validation_file=f["validation"],
               test_file=f["test"])


def test_the_command_takes_the_files(world):
    f = world["files"]
    args = ["experiment", "--preset", "tiny", "--train-file", f["train"], "--validation-file", f["validation"],
            "--test-file", f["test"], "--teacher", world["teacher"], "--print-config"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "existing `teacher` and `student`" in r.output
    r = CliRunner().invoke(app, args + ["--student", world["student"]])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.stdout)
    assert (cfg["train_file"], cfg["validation_file"], cfg["test_file"]) == (f["train"], f["validation"], f["test"])


def _broken(world, tmp_path, split: str, text: str) -> dict:
    path = tmp_path / f"broken_{split}.jsonl"
    path.write_text(text)
    return dict(world["files"], **{split: str(path)})


def test_bad_files_fail_before_any_stage_runs(world, tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    with pytest.raises(MissingFile, match="nowhere.jsonl"):
        run_experiment(_cfg(world, out, dict(world["files"], test=str(tmp_path / "nowhere.jsonl"))))
    good = Path(world["files"]["train"]).read_text()
    with pytest.raises(TaskFileError, match=r"broken_train.jsonl:2: <json>"):
        run_experiment(_cfg(world, out, _broken(world, tmp_path, "train", good.splitlines()[0] + "\n{oops\n")))
    no_corrupt = "".join(json.dumps({"prompt": it.prompt, "answer": it.answer}) + "\n"
                         for it in world["splits"]["validation"])
    with pytest.raises(UserError, match=f"{SIZES['validation']} of {SIZES['validation']} items have no "
                                        "corrupted_prompt.*discovery"):
        run_experiment(_cfg(world, out, _broken(world, tmp_path, "validation", no_corrupt)))
    assert not (out / "stages").exists()
    multi = "".join(json.dumps(it.model_copy(update={"answer": " antidisestablishmentarianism",
                                                      "candidates": None}).model_dump(exclude_none=True)) + "\n"
                    for it in world["splits"]["test"])
    with pytest.raises(UserError, match=f"only 0 of {SIZES['test']} items .* single tokens for both the teacher's "
                                        "and the student's tokenizer; the test split needs at least 16"):
        run_experiment(_cfg(world, out, _broken(world, tmp_path, "test", multi)))
    assert not list((out / "stages").glob("data-*/done.json"))


def test_the_tiny_experiment_runs_on_the_users_files(world, tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    res = run_experiment(_cfg(world, tmp_path / "run"), log=lambda *_: None)
    out = tmp_path / "run"
    results = json.loads((out / "results.json").read_text())
    assert set(results["data_files"]) == {"train", "validation", "test"}
    test_rec = results["data_files"]["test"]
    assert (test_rec["n_items"], test_rec["n_used"], test_rec["n_dropped_multi_token"]) == (SIZES["test"] + 1,
                                                                                           SIZES["test"], 1)
    rows = results["variants"]["given"]["rows"]
    assert set(rows) == {"base student", "full-kd", "circuit"}
    assert all(ev["n"] == SIZES["test"] for row in rows.values() for ev in row["seeds"].values())
    assert results["teacher"]["eval"]["n"] == SIZES["test"]
    for method in ("full-kd", "circuit"):  # each row trained on exactly the user's training items
        (run_config,) = (out / "stages").glob(f"train-given-{method}-s0-*/run_config.json")
        trained_on = load_items(json.loads(run_config.read_text())["config"]["data"])
        assert [(it.prompt, it.answer) for it in trained_on] == \
            [(it.prompt, it.answer) for it in world["splits"]["train"]]
    report = (out / "report.md").read_text()
    assert "task from files" in report
    for s, path in world["files"].items():
        assert str(Path(path).resolve()) in report and results["data_files"][s]["sha256"][:16] in report
    assert not list((out / "stages").glob("teacher-*/model")) and not list((out / "stages").glob("student-warm-*"))

    # the same content under other names: every stage is reused; the key is the content, not the path
    moved = {s: str(shutil.copy(p, tmp_path / f"copy_{s}.jsonl")) for s, p in world["files"].items()}
    res2 = run_experiment(_cfg(world, tmp_path / "run", moved), log=lambda *_: None)
    assert all(t["cached"] for t in res2["timings"].values())
    assert res2["variants"]["given"]["rows"]["circuit"]["seeds"]["0"]["full"] == \
        res["variants"]["given"]["rows"]["circuit"]["seeds"]["0"]["full"]
