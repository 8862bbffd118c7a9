"""Path patching: level-0 direct effects against a hand computation; group structure of deeper levels."""
import pytest
import torch

from circuitdistill.circuits.ablation import baseline
from circuitdistill.circuits.path_patching import path_patching
from circuitdistill.circuits.toy import box_items
from circuitdistill.models.hooks import HookedLM, hook_name
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.tasks.batching import encode_items
from circuitdistill.tasks.scoring import forward_inputs

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def setup():
    tok = gpt2_tokenizer()
    model = tiny_model("llama", n_layers=3, seed=4)
    return tok, model, HookedLM(model, tok), box_items(tok, 6, 3, seed=3)


def test_level0_equals_direct_computation_with_frozen_mlps(setup):
    """With every other head and every MLP frozen, a sender changes the final residual by exactly
    (z_corrupted - z_clean) @ W_O[head]; push that through the final norm and unembedding by hand."""
    tok, model, hk, items = setup
    res = path_patching(hk, items, "logprob", levels=1, top_k=3, freeze_mlps=True, batch_size=3, progress=False)
    L, H, d = 3, 4, hk.shape.d_head
    clean, corr = encode_items(tok, items), encode_items(tok, items, corrupted=True)
    zs = [hook_name(l, "attn.hook_z") for l in range(L)]
    last = hook_name(L - 1, "hook_resid_post")
    with torch.no_grad():
        _, rc = hk.run(forward_inputs(clean), record=zs + [last], detach=True)
        _, rx = hk.run(forward_inputs(corr), record=zs, detach=True)
        clean_lp = baseline(hk, items, "logprob")
        expect = torch.zeros(L, H)
        for l in range(L):
            w_o = model.model.layers[l].self_attn.o_proj.weight
            for h in range(H):
                dz = rx[zs[l]][:, -1, h] - rc[zs[l]][:, -1, h]
                resid = rc[last][:, -1] + dz @ w_o[:, h * d:(h + 1) * d].T
                lp = model.lm_head(model.model.norm(resid)).log_softmax(-1)
                m = lp.gather(1, clean["answer_ids"][:, None]).mean()
                expect[l, h] = (m - clean_lp) / abs(clean_lp)
    torch.testing.assert_close(res.groups[0].scores, expect, atol=2e-6, rtol=1e-4)
    top = sorted(((l, h) for l in range(L) for h in range(H)), key=lambda t: -abs(float(expect[t])))[:3]
    assert [(l, h) for l, h, _ in res.groups[0].heads] == top


def test_deeper_levels_report_groups_with_earlier_senders(setup):
    tok, model, hk, items = setup
    res = path_patching(hk, items, "logprob", levels=2, top_k=2, components=("q", "kv"), batch_size=6,
                        rows_per_pass=24, progress=False)
    assert [g.level for g in res.groups] == [0, 1, 1]
    assert [g.component for g in res.groups] == ["logits", "q", "kv"]
    receivers = [(l, h) for l, h, _ in res.groups[0].heads]
    for g in res.groups[1:]:
        assert g.receivers == receivers
        max_l = max(l for l, _ in receivers)
        swept = ~torch.isnan(g.scores)
        assert not swept[max_l:].any() and swept[:max_l].sum() > 0
        assert len(g.heads) == 2 and all(l < max_l for l, _, _ in g.heads)
    again = path_patching(hk, items, "logprob", levels=2, top_k=2, components=("q", "kv"), batch_size=3,
                          progress=False)  # another batching gives the same scores
    for a, b in zip(res.groups, again.groups):
        torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=0, equal_nan=True)


def test_path_patching_argument_errors(setup):
    tok, model, hk, items = setup
    with pytest.raises(ValueError, match="made of q, k and v"):
        path_patching(hk, items, components=("qx",), progress=False)
    with pytest.raises(ValueError, match="levels"):
        path_patching(hk, items, levels=0, progress=False)
