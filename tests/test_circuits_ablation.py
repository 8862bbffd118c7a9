"""Batched head sweeps equal the one-head-at-a-time loop; ablation and faithfulness against direct computation."""
import pytest
import torch

from circuitdistill.circuits import ablation as A
from circuitdistill.circuits.circuit import Circuit
from circuitdistill.circuits.faithfulness import circuit_only_interventions, faithfulness_report
from circuitdistill.circuits.toy import box_items
from circuitdistill.models.hooks import HookedLM
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def items(tok):
    its = box_items(tok, 5, 3, seed=1)
    # one ragged prompt so left padding is exercised
    its[3] = its[3].model_copy(update={"prompt": "Short. " + its[3].prompt})
    return its


@pytest.mark.parametrize("family,mode,positions", [
    ("llama", "mean", None), ("llama", "zero", "final"), ("llama", "corrupted", "final"), ("llama", "clean", None),
    ("gpt2", "mean", "final"), ("gpt2", "zero", None), ("gpt2", "corrupted", None), ("gpt2", "clean", "final")])
def test_batched_equals_one_at_a_time(tok, items, family, mode, positions):
    hk = HookedLM(tiny_model(family), tok)
    batched = A.head_sweep(hk, items, "logprob", mode, batch_size=3, positions=positions, progress=False)
    naive = A.head_sweep_naive(hk, items, "logprob", mode, batch_size=3, positions=positions, progress=False)
    assert batched.shape == (2, 4)
    torch.testing.assert_close(batched, naive, atol=1e-5, rtol=0)


def test_prefix_cache_equals_full_forward(tok, items):
    hk = HookedLM(tiny_model("qwen2"), tok)
    a = A.head_sweep(hk, items, "logit_diff", "corrupted", batch_size=5, positions="final", progress=False)
    b = A.head_sweep(hk, items, "logit_diff", "corrupted", batch_size=5, positions="final", progress=False,
                     prefix_cache=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_ablation_sweep_matches_direct_zeroing_of_o_proj_input(tok, items):
    """Zero-ablating head (l, h) equals zeroing its d_head columns of o_proj's weight."""
    model = tiny_model("llama")
    hk = HookedLM(model, tok)
    sweep = A.head_ablation_sweep(hk, items, "logprob", mode="zero", heads=[(1, 2), (0, 1)], progress=False)
    assert torch.isnan(sweep[0, 0]) and not torch.isnan(sweep[1, 2])
    d = hk.shape.d_head
    for l, h in [(1, 2), (0, 1)]:
        w = model.model.layers[l].self_attn.o_proj.weight
        saved = w.data.clone()
        w.data[:, h * d:(h + 1) * d] = 0
        direct = A.baseline(hk, items, "logprob")
        w.data.copy_(saved)
        assert abs(direct - float(sweep[l, h])) < 1e-5


def test_resample_is_seeded_and_differs_from_baseline(tok, items):
    hk = HookedLM(tiny_model("llama"), tok)
    a = A.head_ablation_sweep(hk, items, "logprob", mode="resample", seed=3, progress=False)
    b = A.head_ablation_sweep(hk, items, "logprob", mode="resample", seed=3, progress=False)
    torch.testing.assert_close(a, b)
    assert (a - A.baseline(hk, items, "logprob")).abs().max() > 0


def test_bad_arguments_name_the_problem(tok, items):
    hk = HookedLM(tiny_model("llama"), tok)
    with pytest.raises(IndexError, match="valid heads are 0..3"):
        A.head_ablation_sweep(hk, items, heads=[(0, 9)], progress=False)
    with pytest.raises(ValueError, match="unknown ablation mode"):
        A.head_ablation_sweep(hk, items, mode="corrupt", progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        A.head_ablation_sweep(hk, items, metric="acc", progress=False)


def test_circuit_only_keeps_circuit_and_full_set_is_identity(tok, items):
    model = tiny_model("llama")
    hk = HookedLM(model, tok)
    means = A.mean_head_outputs(hk, items)
    ivs = circuit_only_interventions(hk, {(0, 1), (1, 3)}, means)
    assert [iv.heads for iv in ivs] == [[0, 2, 3], [0, 1, 2]]
    all_heads = {(l, h) for l in range(2) for h in range(4)}
    assert circuit_only_interventions(hk, all_heads, means) == []
    rep = faithfulness_report(model, tok, items, Circuit.from_scores(torch.ones(2, 4), top_n=8, method="t",
                                                                      metric="logprob"),
                              n_random=2, metric="logprob")
    assert rep["faithfulness"] == pytest.approx(1.0)
    rep = faithfulness_report(model, tok, items, [(0, 1), (1, 3)], n_random=3, metric="logprob", seed=5)
    pmeans = A.mean_head_outputs(hk, items, per_position=True)  # the default: right-aligned per-position means
    direct = A.baseline(hk, items, "logprob", interventions=circuit_only_interventions(hk, {(0, 1), (1, 3)}, pmeans))
    assert rep["circuit"] == pytest.approx(direct, abs=1e-4)
    rep2 = faithfulness_report(model, tok, items, [(0, 1), (1, 3)], n_random=0, metric="logprob",
                               per_position=False, positions="final")
    direct = A.baseline(hk, items, "logprob",
                        interventions=circuit_only_interventions(hk, {(0, 1), (1, 3)}, means, positions=[-1]))
    assert rep2["circuit"] == pytest.approx(direct, abs=1e-4)
    assert rep["random"]["n_sets"] == 3 and all(len(s) == 2 for s in rep["random"]["sets"])
    assert rep["faithfulness"] == pytest.approx(rep["circuit"] / rep["full"])
