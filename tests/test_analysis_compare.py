"""`circuitdistill compare` end to end on tiny saved models (offline, no hub)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from circuitdistill.cli.main import app
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.tasks.io import save_items

from _analysis_toy import toy_items


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    tok = gpt2_tokenizer()
    for name, model in (("llama", tiny_model("llama", n_layers=2)),
                        ("gemma", tiny_model("gemma3_text", n_layers=3, n_heads=2, n_kv_heads=1, d_model=32, seed=5))):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    save_items(root / "items.jsonl", toy_items(10))
    return root


def _run(args, home, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(home))
    return CliRunner().invoke(app, ["compare", *map(str, args)])


COMMON = ["--metric", "logprob", "--max-items", 6, "--n-boot", 30, "--sweep", "10,30", "--no-progress", "--threads", 1]


def test_compare_self_and_cross_family(workspace, monkeypatch):
    home = workspace / "home"
    out = workspace / "self"
    r = _run(["--teacher", workspace / "llama", "--student", workspace / "llama", "--data", workspace / "items.jsonl",
              "--out", out, *COMMON], home, monkeypatch)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "compare.json").read_text())
    assert res["alignment_score"] == pytest.approx(1.0, abs=1e-9)
    assert all(p["student"] == p["teacher"] for p in res["matched_pairs"])
    assert res["student"]["from_cache"]  # the second model with identical weights reused the first sweep
    for key in ("worst_drop", "mean_drop", "worst_5pct_mean", "gini", "severity_tail", "mean_drop_ci"):
        assert key in res["teacher"]["concentration"]["all"]
    assert [row["threshold"] for row in res["teacher"]["prune_sweep"]] == [10.0, 20.0, 30.0]
    assert res["provenance"]["config"]["metric"] == "logprob" and "torch" in res["provenance"]["versions"]
    for png in ("influence_heatmaps.png", "matched_pairs.png", "drop_distributions.png"):
        assert (out / png).stat().st_size > 1000
    assert "Alignment score A = 1.0000" in (out / "compare.md").read_text()

    out2 = workspace / "cross"
    r = _run(["--teacher", workspace / "llama", "--student", workspace / "gemma", "--data", workspace / "items.jsonl",
              "--out", out2, "--matching", "hungarian", "--head-similarity", "cka", *COMMON], home, monkeypatch)
    assert r.exit_code == 0, r.output
    res = json.loads((out2 / "compare.json").read_text())
    assert 0.0 <= res["alignment_score"] < 1.0
    assert res["teacher"]["from_cache"] and not res["student"]["from_cache"]
    assert res["student"]["family"] == "gemma3_text" and res["student"]["n_components"] == 3 * 2 + 3
    assert len(res["matched_pairs"]) == 3 * 2 + 2  # one-to-one: 6 student heads (teacher has 8), 2 of 3 MLPs


def test_compare_bad_input_is_clear(workspace, monkeypatch):
    home = workspace / "home"
    r = _run(["--teacher", workspace / "llama", "--student", workspace / "llama", "--data", workspace / "missing.jsonl",
              "--out", workspace / "x", *COMMON], home, monkeypatch)
    assert r.exit_code == 2 and "missing.jsonl" in r.output
    bad = workspace / "bad.jsonl"
    bad.write_text('{"prompt": "A", "answer": " b"}\n{"prompt": "A"}\n')
    r = _run(["--teacher", workspace / "llama", "--student", workspace / "llama", "--data", bad,
              "--out", workspace / "x", *COMMON], home, monkeypatch)
    assert r.exit_code == 2 and "bad.jsonl:2: answer" in r.output
    r = _run(["--teacher", workspace / "llama", "--student", workspace / "llama", "--data", workspace / "items.jsonl",
              "--out", workspace / "x", "--threshold", 150, *COMMON], home, monkeypatch)
    assert r.exit_code == 2 and "--threshold" in r.output
