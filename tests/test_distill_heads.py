"""Head-only training: only the selected q/k/v/o slices move; everything else stays bit-identical."""
import pytest
import torch

from circuitdistill.distill.head_params import HeadDeltas
from circuitdistill.models.arch import head_param_slices, shape_of
from circuitdistill.models.tiny import tiny_model


def _loss(model, ids):
    return model(input_ids=ids).logits[:, -1].float().logsumexp(-1).mean() - model(input_ids=ids).logits[:, -1, 7].mean()


def _selected_mask(model, heads, kv_heads):
    """param name -> bool mask of the entries owned by the selected slices (direct from head_param_slices)."""
    names = {id(p): n for n, p in model.named_parameters()}
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    wanted = [(l, h, c) for l, h in heads for c in "qo"] + [(l, g, c) for l, g in kv_heads for c in "kv"]
    for l, h, c in wanted:
        for p, idx in head_param_slices(model, l, h, c):
            masks[names[id(p)]][idx] = True
    return masks


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_only_selected_slices_change_after_three_adamw_steps(family):
    model = tiny_model(family, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    heads = [(0, 1), (1, 2), (1, 3)]
    deltas = HeadDeltas(model, heads, gqa_policy="train")
    # weight decay on purpose: with gradient masks it would move untrained entries; with deltas it cannot
    opt = torch.optim.AdamW(deltas.parameters(), lr=1e-2, weight_decay=0.1)
    assert len(opt.param_groups[0]["params"]) == len(deltas.parameters())
    ids = torch.randint(0, 1000, (3, 7), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        _loss(model, ids).backward()
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert {id(p) for p in trainable} == {id(p) for p in deltas.parameters()}
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in deltas.parameters())
        opt.step()
        opt.zero_grad()
    # optimizer state exists only for what trains
    assert set(opt.state) == set(deltas.parameters())
    deltas.merge()
    masks = _selected_mask(model, heads, deltas.kv_heads)
    changed_somewhere = False
    for n, p in model.named_parameters():
        m = masks[n]
        assert torch.equal(p[~m], before[n][~m]), f"{n}: an unselected entry changed"
        assert p.dtype == before[n].dtype and p.shape == before[n].shape
        if m.any():
            changed_somewhere |= not torch.equal(p[m], before[n][m])
    assert changed_somewhere


def test_delta_gradient_equals_the_slice_of_the_full_weight_gradient():
    ref = tiny_model("llama", seed=0)
    model = tiny_model("llama", seed=0)
    ids = torch.randint(0, 1000, (2, 6), generator=torch.Generator().manual_seed(1))
    _loss(ref, ids).backward()
    deltas = HeadDeltas(model, [(1, 2)], gqa_policy="train")
    _loss(model, ids).backward()
    ref_params = dict(ref.named_parameters())
    grads = dict(deltas.named_parameters())
    for comp, h in (("q", 2), ("o", 2), ("k", 1), ("v", 1)):
        (p, idx), = head_param_slices(ref, 1, h, comp)
        name = next(n for n, q in ref.named_parameters() if q is p)
        d = next(q for k, q in grads.items() if k.startswith(name) and k.endswith(f"[L1.{comp}{h}]"))
        torch.testing.assert_close(d.grad, ref_params[name].grad[idx], rtol=1e-5, atol=1e-7)


def test_gqa_policies():
    # tiny llama: 4 query heads, 2 kv heads -> groups {0,1} and {2,3}
    m = tiny_model("llama")
    train = HeadDeltas(m, [(0, 0), (0, 2), (0, 3)], "train").report()
    assert train["trained_kv_heads"] == [[0, 0], [0, 1]] and train["collateral_heads"] == [[0, 1]]
    m = tiny_model("llama")
    whole = HeadDeltas(m, [(0, 0), (0, 2), (0, 3)], "whole-group").report()
    assert whole["trained_kv_heads"] == [[0, 1]] and whole["collateral_heads"] == []
    m = tiny_model("llama")
    frozen = HeadDeltas(m, [(0, 0), (0, 2), (0, 3)], "freeze")
    r = frozen.report()
    assert r["trained_kv_heads"] == [] and r["collateral_heads"] == []
    d = shape_of(m).d_head * shape_of(m).d_model
    assert r["trainable_params"] == 3 * 2 * d  # q and o slices only
    assert train["trainable_params"] == 3 * 2 * d + 2 * 2 * d
    assert r["n_selected_heads"] == 3 and r["head_share"] == pytest.approx(3 / 8)
    # without GQA every selected head owns its k/v, whatever the policy
    m = tiny_model("llama", n_kv_heads=4)
    assert HeadDeltas(m, [(1, 1)], "freeze").report()["trained_kv_heads"] == [[1, 1]]


def test_bad_heads_are_named():
    with pytest.raises(IndexError, match="valid heads are 0..3"):
        HeadDeltas(tiny_model("llama"), [(0, 9)])
    with pytest.raises(ValueError, match="gqa_policy"):
        HeadDeltas(tiny_model("llama"), [(0, 1)], gqa_policy="share")
