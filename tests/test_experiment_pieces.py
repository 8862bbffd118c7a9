"""Statistics, stage caching, interchange agreement and perplexity used by the experiment runner."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binomtest

from circuitdistill.experiment.mechanism import interchange_agreement, patched_predictions
from circuitdistill.experiment.side_effects import perplexity
from circuitdistill.stages import StageRunner
from circuitdistill.experiment.stats import mcnemar, wilson_ci
from circuitdistill.models.hooks import HookedLM
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.tasks.schema import TaskItem


def test_mcnemar_counts_discordant_pairs_and_matches_exact_binomial():
    a = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0]
    b = [0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 0]
    r = mcnemar(a, b)
    assert (r["only_a"], r["only_b"]) == (6, 1)
    assert r["p_value"] == pytest.approx(binomtest(6, 7, 0.5).pvalue)
    assert mcnemar(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same items"):
        mcnemar([1, 0], [1])
    lo, hi = wilson_ci(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.192, abs=0.005)


def test_stages_are_cached_by_content_and_rerun_when_inputs_change(tmp_path):
    calls = []
    def work(d):
        calls.append(d)
        (d / "x.txt").write_text("made")
        return {"value": len(calls)}
    r1 = StageRunner(tmp_path, log=lambda s: None)
    a = r1.run("s", {"k": 1}, work)
    r2 = StageRunner(tmp_path, log=lambda s: None)
    b = r2.run("s", {"k": 1}, work)
    assert not a.cached and b.cached and b.outputs == {"value": 1} and len(calls) == 1
    c = r2.run("s", {"k": 2}, work)
    assert not c.cached and len(calls) == 2 and c.dir != a.dir
    # a dependent stage's key changes when its upstream's does
    d1 = r1.run("t", {}, work, deps=("s",))
    d2 = r2.run("t", {}, work, deps=("s",))
    assert d1.key != d2.key


def test_failed_stage_leaves_no_done_marker_and_reruns(tmp_path):
    r = StageRunner(tmp_path, log=lambda s: None)
    def boom(d):
        raise RuntimeError("stage failed")
    with pytest.raises(RuntimeError):
        r.run("s", {}, boom)
    assert not list(tmp_path.glob("stages/*/done.json"))
    assert not r.run("s", {}, lambda d: {"ok": True}).cached


def _items(tok):
    return [TaskItem(prompt="The apple is in Box F, the pen is in Box Q. Box F contains the", answer=" apple",
                     corrupted_prompt="The apple is in Box F, the pen is in Box Q. Box Q contains the",
                     corrupted_answer=" pen"),
            TaskItem(prompt="The car is in Box A, the cup is in Box B. Box B contains the", answer=" cup",
                     corrupted_prompt="The car is in Box A, the cup is in Box B. Box A contains the",
                     corrupted_answer=" car")]


def test_interchange_agreement_of_a_model_with_itself_is_perfect():
    tok = gpt2_tokenizer()
    hm = HookedLM(tiny_model("llama", seed=1), tok)
    pairs = [((0, 1), (0, 1)), ((1, 2), (1, 2))]
    r = interchange_agreement(hm, hm, _items(tok), pairs, n_random=2, seed=0)
    assert r["matched"]["agreement"] == 1.0 and r["matched"]["flip_agreement"] == 1.0
    assert r["student_heads"] == [(0, 1), (1, 2)]
    m = r["matched"]
    assert m["n_both_flip"] == round(m["student_flip_rate"] * 2)  # a model flips exactly where it flips
    assert m["agreement_when_both_flip"] in (None, 1.0)
    assert m["student_takes_corrupted_answer"] == m["teacher_takes_corrupted_answer"]


def test_interchange_counts_agreement_only_where_both_models_flip():
    # Teacher: every head of a one-layer model patched, so its final residual is the corrupted run's and it
    # flips wherever the corrupted prediction differs from the clean one. Student: a different model.
    tok = gpt2_tokenizer()
    items = _items(tok)
    teacher = HookedLM(tiny_model("llama", seed=0, n_layers=1), tok)
    student = HookedLM(tiny_model("llama", seed=5, n_layers=1), tok)
    pairs = [((0, h), (0, h)) for h in range(4)]
    r = interchange_agreement(student, teacher, items, pairs, n_random=1, seed=0)["matched"]
    s_clean, s_patch = patched_predictions(student, items, [(0, h) for h in range(4)])
    t_clean, t_patch = patched_predictions(teacher, items, [(0, h) for h in range(4)])
    both = [i for i in range(len(items)) if s_patch[i] != s_clean[i] and t_patch[i] != t_clean[i]]
    assert r["n_both_flip"] == len(both)
    expect = sum(s_patch[i] == t_patch[i] for i in both) / len(both) if both else None
    assert r["agreement_when_both_flip"] == expect
    corr = [it.corrupted_answer.strip() for it in items]
    assert r["teacher_takes_corrupted_answer"] == sum(a == c for a, c in zip(t_patch, corr)) / len(items)


def test_patching_every_head_from_the_corrupted_run_gives_its_final_prediction():
    # One layer, and both prompts end in the same token: with every head's output at the final position
    # taken from the corrupted run, the final residual stream IS the corrupted run's, so the patched
    # prediction must equal the corrupted prediction, for every seed.
    tok = gpt2_tokenizer()
    items = [TaskItem(prompt="A B C D the", answer=" x", corrupted_prompt="Q R S T the", corrupted_answer=" y"),
             TaskItem(prompt="one two three the", answer=" x", corrupted_prompt="four five six the",
                      corrupted_answer=" y")]
    for seed in range(3):
        model = tiny_model("llama", seed=seed, n_layers=1)
        hm = HookedLM(model, tok)
        clean, patched = patched_predictions(hm, items, [(0, h) for h in range(4)])
        with torch.no_grad():
            def pred(p):
                return tok.decode(model(**tok([p], return_tensors="pt")).logits[0, -1].argmax()).strip()
            assert clean == [pred(it.prompt) for it in items]
            assert patched == [pred(it.corrupted_prompt) for it in items]
        _, none = patched_predictions(hm, items, [])
        assert none == clean


def test_perplexity_matches_a_direct_computation_and_ignores_padding():
    tok = gpt2_tokenizer()
    model = tiny_model("gpt2", seed=0)
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello world"]
    with torch.no_grad():
        nll, n = 0.0, 0
        for t in texts:
            ids = tok(t, return_tensors="pt").input_ids
            lp = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])
            nll -= lp.sum().item()
            n += ids.shape[1] - 1
    assert perplexity(model, tok, texts, batch_size=2) == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert tok.padding_side == "left"  # restored


def test_experiment_set_overrides_parse_and_validate(tmp_path):
    from typer.testing import CliRunner

    from circuitdistill.cli.experiment import parse_overrides
    from circuitdistill.cli.main import app

    assert parse_overrides(["compare_items=16", "analyze_methods=null", "estimator=debiased"]) == {
        "compare_items": 16, "analyze_methods": None, "estimator": "debiased"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["compare_items"])
    run = CliRunner().invoke(app, ["experiment", "--preset", "tiny", "--out", str(tmp_path), "--set", "no_such=1"])
    assert run.exit_code == 2 and "no such field" in run.output
    run = CliRunner().invoke(app, ["experiment", "--preset", "tiny", "--out", str(tmp_path),
                                   "--set", "analyze_methods=[\"nope\"]"])
    assert run.exit_code == 2 and "unknown methods" in run.output
    assert not (tmp_path / "config.json").exists()  # nothing ran


def test_the_verdict_says_beats_only_when_the_difference_is_significant():
    from circuitdistill.experiment.report import _verdict

    def row(acc):
        return {"seeds": {"0": {"full": acc, "circuit": acc, "faithfulness": 1.0}}}

    def results(p_kd, p_ce, p_random_ce=0.6):
        return {"variants": {"warm": {
            "rows": {"circuit": row(0.90), "full-kd": row(0.80), "circuit-ce": row(0.89), "circuit-random": row(0.70)},
            "mcnemar": {"circuit": {"full-kd": {"0": {"p_value": p_kd}}, "circuit-ce": {"0": {"p_value": p_ce}}},
                        "circuit-random": {"circuit-ce": {"0": {"p_value": p_random_ce}}}}}}}

    v = _verdict(results(0.01, 0.9), "warm")
    assert "`circuit` beats `full-kd`" in v
    assert "`circuit` is level with `circuit-ce`" in v  # higher, but p = 0.9
    # the control is lower, but p = 0.6: level, never "worse" on the means alone
    assert "`circuit-random` is level with `circuit-ce`" in v and "worse" not in v
    assert "`circuit-random` is below `circuit-ce`" in _verdict(results(0.01, 0.9, p_random_ce=0.001), "warm")
    v = _verdict(results(0.01, 0.01), "warm")
    assert "`circuit` beats `circuit-ce`" in v
    r = results(0.01, 0.01)
    r["variants"]["warm"]["rows"]["full-kd"] = row(0.95)
    assert "`circuit` is below `full-kd`" in _verdict(r, "warm")
