"""The study grid on tiny random models: every row x budget x seed trains once, the report says what it found."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from circuitdistill.experiment.study import run_study, steps_to_reach, study_preset

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import save_tiny  # noqa: E402


def test_steps_to_reach_is_the_first_evaluated_step_at_the_threshold():
    assert steps_to_reach([0, 5, 10, 15], [0.2, 0.79, 0.8, 0.95], 0.8) == 10
    assert steps_to_reach([0, 5], [0.2, 0.5], 0.9) is None


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: save_tiny(root / name, seed=seed) for name, seed in (("teacher", 0), ("student", 1))}


def test_tiny_study_grid(pair, tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    cfg = study_preset("tiny", str(tmp_path / "study"), teacher=pair["teacher"], student=pair["student"],
                       seeds=[0, 1], methods=["full-kd", "circuit-ce", "circuit", "circuit-iit"], budgets=[16, 32])
    res = run_study(cfg, log=lambda *_: None)
    grid = res["variants"]["given"]["grid"]
    assert set(grid) == {"16", "32"}
    for budget, rows in grid.items():
        assert set(rows) == {"full-kd", "circuit-ce", "circuit", "circuit-iit"}
        for m, r in rows.items():
            assert len(r["test_full"]) == 2 and set(r["curves"]) == {"0", "1"}
            assert r["curves"]["0"][0][0] == 0  # the curve starts before training
            assert r["curves"]["0"][0][-1] == cfg.steps  # ... and ends with the final evaluation
            assert r["alignment_after"] is not None
            others = {"circuit-ce", "full-kd"} - {m}
            assert set(r["mcnemar"]) == others
            assert set(r["mcnemar_circuit"]) == others  # circuit-only accuracy gets the same paired tests
            for t in [*r["mcnemar"].values(), *r["mcnemar_circuit"].values()]:
                assert 0 <= t["pooled"]["p_value"] <= 1 and set(t["per_seed"]) == {"0", "1"}
    # the data budget really limits the items: the two budgets train different rows
    trains = [k for k in res["timings"] if k.startswith("train-")]
    assert len(trains) == 2 * 4 * 2
    text = (tmp_path / "study" / "study.md").read_text()
    assert "steps to 0.8" in text and (tmp_path / "study" / "study_curves_given.png").exists()
    # a rerun trains nothing
    res2 = run_study(cfg, log=lambda *_: None)
    assert all(t["cached"] for t in res2["timings"].values())


def test_selection_run_leaves_the_test_split_unread(pair, tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    cfg = study_preset("tiny", str(tmp_path / "select"), teacher=pair["teacher"], student=pair["student"],
                       seeds=[0], methods=["circuit-ce", "circuit"], budgets=[16], read_test=False)
    res = run_study(cfg, log=lambda *_: None)
    assert not [k for k in res["timings"] if k.startswith("eval-")]  # no stage evaluated the test split
    rows = res["variants"]["given"]["grid"]["16"]
    for r in rows.values():
        assert r["test_full"] == [] and r["mcnemar"] == {}
        assert len(r["val_final"]) == 1 and 0 <= r["val_final"][0] <= 1
    text = (tmp_path / "select" / "study.md").read_text()
    assert "the test split was not read" in text and "not read" in text
