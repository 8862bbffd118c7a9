"""Tracer input validation (file + line numbers), taggers, and the `trace fit/predict` commands."""
from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from circuitdistill.cli.main import app
from circuitdistill.trace.io import TraceInputError, read_done, append_jsonl, read_texts


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_malformed_jsonl_reports_every_bad_line(tmp_path):
    f = _write(tmp_path / "teachers.jsonl", [
        json.dumps({"text": "Fine text.", "source": "a"}),
        '{"text": "unterminated',
        json.dumps({"source": "b"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"text": "   ", "source": "a"}),
        json.dumps({"text": "No source here."}),
    ])
    with pytest.raises(TraceInputError) as e:
        read_texts(f)
    msg = str(e.value)
    assert "6 malformed row(s)" not in msg  # line 1 is fine
    for line, what in ((2, "not valid JSON"), (3, "'text'"), (4, "JSON object"), (5, "empty"), (6, "'source'")):
        assert f"{f}:{line}:" in msg and what in msg, (line, msg)
    assert f"{f}:1:" not in msg
    # without require_source the missing source is fine, the rest still fails
    with pytest.raises(TraceInputError) as e2:
        read_texts(f, require_source=False)
    assert f"{f}:6:" not in str(e2.value) and f"{f}:3:" in str(e2.value)


def test_folder_input_source_from_file_name(tmp_path):
    d = tmp_path / "teachers"
    d.mkdir()
    _write(d / "alpha.jsonl", [json.dumps({"text": "One."}), json.dumps({"text": "Two."})])
    _write(d / "beta.jsonl", [json.dumps({"text": "Three.", "source": "beta"}), "", "{bad"])
    with pytest.raises(TraceInputError, match=r"beta\.jsonl:3: not valid JSON"):
        read_texts(d)
    (d / "beta.jsonl").write_text(json.dumps({"text": "Three."}) + "\n")
    recs = read_texts(d)
    assert [(r.text, r.source) for r in recs] == [("One.", "alpha"), ("Two.", "alpha"), ("Three.", "beta")]
    with pytest.raises(TraceInputError, match="no such file"):
        read_texts(tmp_path / "missing.jsonl")


def test_resume_file_ignores_torn_last_line(tmp_path):
    f = tmp_path / "gen.jsonl"
    append_jsonl(f, [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
    with open(f, "a") as h:
        h.write('{"id": "c", "te')  # killed mid-write
    assert sorted(read_done(f)) == ["a", "b"]


def test_hanta_tags_english_with_claws5(tmp_path):
    pytest.importorskip("HanTa")
    from circuitdistill.trace.taggers import get_tagger

    t = get_tagger("hanta", cache_dir=tmp_path)
    tagged = t.tag_batch(["The dog runs fast."])[0]
    assert [w for w, _ in tagged] == ["The", "dog", "runs", "fast", "."]
    assert [tag for _, tag in tagged][:3] == ["AT0", "NN1", "VVZ"]  # BNC/CLAWS5, not Penn Treebank
    with pytest.raises(ValueError, match="spacy"):
        get_tagger("nltk")


def _synthetic(rng, style, n):
    nouns, verbs, adjs = ["cat", "dog", "bird", "child"], ["sees", "likes", "helps"], ["red", "old", "small"]
    rows = []
    for _ in range(n):
        a, n1, v, n2 = rng.choice(adjs), rng.choice(nouns), rng.choice(verbs), rng.choice(nouns)
        s = f"The {a} {n1} {v} the {n2}." if style == "A" else f"The {n1} {v} the {a} {n2}."
        rows.append(json.dumps({"text": s + " " + s, "source": style}))
    return rows


def test_cli_fit_predict_roundtrip(tmp_path):
    rng = random.Random(0)
    teachers = _write(tmp_path / "teachers.jsonl", _synthetic(rng, "A", 20) + _synthetic(rng, "B", 20))
    students = _write(tmp_path / "students.jsonl", _synthetic(rng, "A", 8) + _synthetic(rng, "B", 8))
    runner = CliRunner()
    for feat in ("ngram", "pos"):
        model = tmp_path / f"{feat}.json"
        r = runner.invoke(app, ["trace", "fit", "--teachers", str(teachers), "--out", str(model), "--features", feat],
                          catch_exceptions=False)
        assert r.exit_code == 0, r.output
        d = json.loads(model.read_text())
        assert d["classes"] == ["A", "B"] and d["featurizer"]["kind"] == feat and "versions" in d["provenance"]
        out = tmp_path / f"pred_{feat}.json"
        r = runner.invoke(app, ["trace", "predict", "--model", str(model), "--texts", str(students), "--out", str(out)],
                          catch_exceptions=False)
        assert r.exit_code == 0, r.output
        rep = json.loads(out.read_text())
        assert rep["accuracy"] >= 0.75, (feat, rep["accuracy"])
        assert len(rep["predictions"]) == 16 and set(rep["predictions"][0]["probabilities"]) == {"A", "B"}
        assert (tmp_path / f"pred_{feat}.confusion.png").stat().st_size > 0
    # PoS top features carry example spans from the teachers' texts
    assert any(r["examples"] for r in rep["top_features"]["A"])
    # bad input: exit code 2 and the offending line named
    bad = _write(tmp_path / "bad.jsonl", [json.dumps({"text": "ok", "source": "A"}), "{oops"])
    r = runner.invoke(app, ["trace", "fit", "--teachers", str(bad), "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "bad.jsonl:2" in r.output
