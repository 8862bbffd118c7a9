"""The data / evaluate commands end to end (offline GPT-2 tokenizer; tiny model saved in a temp cache)."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from circuitdistill.cli.main import app
from circuitdistill.tasks.io import load_items

runner = CliRunner()


def test_data_entity_tracking_splits(tmp_path):
    r = runner.invoke(app, ["data", "entity-tracking", "--boxes", "3", "--splits", "20,5,10", "--model", "gpt2",
                            "--disjoint-objects", "--out-dir", str(tmp_path), "--prefix", "et3"])
    assert r.exit_code == 0, r.output
    assert len(load_items(tmp_path / "et3_test.jsonl")) == 10
    man = json.loads((tmp_path / "et3_manifest.json").read_text())
    assert man["seed"] == 0 and man["config"]["boxes"] == 3 and "torch" in man["versions"]


def test_data_tom_and_check(tmp_path):
    out = tmp_path / "tom.jsonl"
    r = runner.invoke(app, ["data", "tom", "--n", "24", "--model", "gpt2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "check", str(out), "--model", "gpt2"])
    assert r.exit_code == 0 and json.loads(r.output)["n"] == 24


def test_data_reports_the_words_each_list_rejects(tmp_path):
    """The generators drop words that are not single tokens; the manifest and the output say which and how many."""
    from circuitdistill.tasks import tom
    from circuitdistill.tasks.vocab import is_single_token, load_tokenizer, word_list

    out = tmp_path / "tom.jsonl"
    r = runner.invoke(app, ["data", "tom", "--n", "8", "--model", "gpt2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    vocab = json.loads(out.with_suffix(".manifest.json").read_text())["vocabulary"]
    tok = load_tokenizer("gpt2")
    expected = [w for w in word_list("states") if not is_single_token(tok, w, "with")]
    assert expected and vocab["states"]["rejected"] == expected
    assert vocab["states"]["kept"] == len(tom.state_vocab([tok])) == vocab["states"]["shipped"] - len(expected)
    assert set(vocab) == {"states", "containers", "names"}
    assert f"states: {vocab['states']['kept']} of {vocab['states']['shipped']} words" in r.output


def test_bad_inputs_give_clear_errors(tmp_path):
    r = runner.invoke(app, ["data", "entity-tracking", "--corruption", "nope", "--model", "gpt2", "--out",
                            str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "corruption" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    r = runner.invoke(app, ["data", "check", str(bad)])
    assert r.exit_code == 2 and f"{bad}:1: answer" in r.output


def test_evaluate_writes_json(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    from circuitdistill.models import registry
    from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model

    registry.save_derived(tiny_model("llama"), gpt2_tokenizer(), "tiny-test", {"description": "test"})
    data = tmp_path / "et.jsonl"
    assert runner.invoke(app, ["data", "entity-tracking", "--boxes", "3", "--n", "10", "--model", "gpt2",
                               "--out", str(data)]).exit_code == 0
    out = tmp_path / "res.json"
    r = runner.invoke(app, ["evaluate", "--model", "tiny-test", "--data", str(data), "--out", str(out),
                            "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["summary"]["n"] == 10 and len(res["per_item"]["accuracy"]) == 10
    assert "95% CI" in r.output
    r = runner.invoke(app, ["evaluate", "--model", "tiny-test", "--data", str(data), "--circuit",
                            str(tmp_path / "missing.json")])
    assert r.exit_code == 2 and "does not exist" in r.output
