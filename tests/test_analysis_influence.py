"""Component influence: batched per-row sweeps equal direct one-at-a-time ablations (heads and MLPs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from circuitdistill.analysis import influence as I
from circuitdistill.circuits.ablation import head_sweep
from circuitdistill.models.hooks import HookedLM, hook_name, mean_ablate, zero_ablate
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.tasks.metrics import per_item
from circuitdistill.tasks.schema import TaskItem

from _analysis_toy import toy_items


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


def _direct(hm, batch, comp, metric, ablation, means=None):
    """One component ablated in a plain forward pass (no batching tricks)."""
    if comp.head is None:
        name = hook_name(comp.layer, "hook_mlp_out")
        iv = zero_ablate(name) if ablation == "zero" else mean_ablate(name, means[name])
    else:
        name = hook_name(comp.layer, "attn.hook_z")
        iv = zero_ablate(name, heads=[comp.head]) if ablation == "zero" else mean_ablate(name, means[name], heads=[comp.head])
    with torch.no_grad(), hm.hooks(interventions=[iv]):
        logits = hm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, -1]
    return per_item(metric, logits, batch).numpy()


def test_rows_mask_touches_only_selected_rows(tok):
    hm = HookedLM(tiny_model("llama"), tok)
    enc = dict(tok(["The cat sat on the", "A dog ran to the", "Birds fly over the"], return_tensors="pt", padding=True))
    rows = torch.tensor([False, True, False])
    name = hook_name(1, "hook_mlp_out")
    with torch.no_grad():
        plain = hm.model(**enc).logits
        with hm.hooks(interventions=[zero_ablate(name, rows=rows)]):
            masked = hm.model(**enc).logits
        with hm.hooks(interventions=[zero_ablate(name)]):
            full = hm.model(**enc).logits
    assert torch.equal(masked[0], plain[0]) and torch.equal(masked[2], plain[2])
    assert torch.allclose(masked[1], full[1], atol=1e-6) and not torch.allclose(masked[1], plain[1])
    with pytest.raises(ValueError, match="bool tensor of shape"):
        with torch.no_grad(), hm.hooks(interventions=[zero_ablate(name, rows=torch.tensor([1, 0, 1]))]):
            hm.model(**enc)


@pytest.mark.parametrize("family,ablation", [("llama", "zero"), ("gemma3_text", "mean")])
def test_batched_sweep_equals_direct_ablation(tok, family, ablation):
    hm = HookedLM(tiny_model(family, n_layers=2), tok)
    items = toy_items(5)
    batches = I.encode_batches(tok, items, 3)  # two batches of different size
    means = I.ablation_means(hm, batches) if ablation == "mean" else None
    res = I.component_influence(hm, batches, "logit_diff", ablation, means=means, batch_rows=12)
    assert res.ablated.shape == (len(I.all_components(hm)), 5)
    for ci, comp in enumerate(res.components):
        direct = np.concatenate([_direct(hm, b, comp, "logit_diff", ablation, means) for b in batches])
        np.testing.assert_allclose(res.ablated[ci], direct, atol=2e-5, err_msg=comp.name)
    clean = np.concatenate([per_item("logit_diff", hm.model(**{k: b[k] for k in ("input_ids", "attention_mask")})
                                     .logits[:, -1].detach(), b).numpy() for b in batches])
    np.testing.assert_allclose(res.clean, clean, atol=2e-5)
    expected = np.abs(100 * (1 - res.ablated.mean(1) / res.clean.mean()))
    np.testing.assert_allclose(res.influence, expected)


def _ragged_items(n: int):
    items = toy_items(n)
    items[1] = items[1].model_copy(update={"prompt": "Later that day. " + items[1].prompt})
    return items


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_skipping_the_prefix_equals_full_passes(tok, family, ablation):
    """Resuming each chunk at its first ablated layer gives the full-pass values, on left-padded ragged items."""
    hm = HookedLM(tiny_model(family, n_layers=3), tok)
    batches = I.encode_batches(tok, _ragged_items(5), 3)  # a ragged, left-padded batch, then a batch of two
    assert not batches[0]["attention_mask"].all()
    means = I.ablation_means(hm, batches) if ablation == "mean" else None
    comps = I.all_components(hm)
    groups = [[]] + [[c] for c in comps] + [[comps[1], I.Component(2)]]
    kw = dict(metric="logprob", ablation=ablation, means=means, batch_rows=7)
    fast = I.metric_under_ablation(hm, batches, groups, **kw)
    slow = I.metric_under_ablation(hm, batches, groups, skip_prefix=False, **kw)
    assert np.abs(slow[1:] - slow[0]).max() > 1e-4  # ablations change the metric: not vacuous
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    base = I.metric_under_ablation(hm, batches, groups[-3:], base=[I.Component(1, 0)], **kw)
    np.testing.assert_allclose(base, I.metric_under_ablation(hm, batches, groups[-3:], base=[I.Component(1, 0)],
                                                             skip_prefix=False, **kw), atol=1e-5)


def test_skipping_the_prefix_runs_the_first_layers_once(tok):
    hm = HookedLM(tiny_model("llama", n_layers=3), tok)
    batches = I.encode_batches(tok, toy_items(4), 2)
    calls = []
    handle = hm.block(0).register_forward_pre_hook(lambda mod, args: calls.append(1))
    try:
        I.metric_under_ablation(hm, batches, [[c] for c in I.all_components(hm) if c.layer == 2], metric="logprob",
                                batch_rows=4)
    finally:
        handle.remove()
    assert len(calls) == len(batches)  # the recorded clean pass only
    assert all(len(hm.block(l).mlp._forward_hooks) == 0 for l in range(3))


def test_base_ablation_and_groups(tok):
    """metric_under_ablation(base=B, groups=[[c]]) equals ablating B and c together directly."""
    hm = HookedLM(tiny_model("qwen2", n_layers=3), tok)
    batches = I.encode_batches(tok, toy_items(4), 4)
    base = [I.Component(0, 1), I.Component(1)]
    got = I.metric_under_ablation(hm, batches, [[I.Component(2, 3)], []], base, "logprob", batch_rows=8)
    ivs = [zero_ablate(hook_name(0, "attn.hook_z"), heads=[1]), zero_ablate(hook_name(1, "hook_mlp_out")),
           zero_ablate(hook_name(2, "attn.hook_z"), heads=[3])]
    b = batches[0]
    with torch.no_grad(), hm.hooks(interventions=ivs):
        lg = hm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, -1]
    np.testing.assert_allclose(got[0], per_item("logprob", lg, b).numpy(), atol=2e-5)
    with torch.no_grad(), hm.hooks(interventions=ivs[:2]):
        lg = hm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, -1]
    np.testing.assert_allclose(got[1], per_item("logprob", lg, b).numpy(), atol=2e-5)


def test_checkpoint_resume(tok, tmp_path):
    hm = HookedLM(tiny_model("llama"), tok)
    batches = I.encode_batches(tok, toy_items(4), 4)
    groups = [[c] for c in I.all_components(hm)]
    ck = tmp_path / "sweep.ckpt"
    first = I.metric_under_ablation(hm, batches, groups, metric="logprob", batch_rows=8, checkpoint=ck)
    state = torch.load(ck, weights_only=False)
    assert state["done"] == len(groups)
    state["done"] = 4  # pretend the job died after two chunks; poison what would be recomputed
    state["values"][4:] = 123.0
    torch.save(state, ck)
    again = I.metric_under_ablation(hm, batches, groups, metric="logprob", batch_rows=8, checkpoint=ck)
    np.testing.assert_allclose(again, first)


def test_clear_errors(tok):
    hm = HookedLM(tiny_model("llama"), tok)
    items = [TaskItem(prompt="The cat sat on the", answer=" mat")] * 4
    batches = I.encode_batches(tok, items, 4)
    with pytest.raises(ValueError, match="needs a corrupted_answer"):
        I.component_influence(hm, batches, "logit_diff")
    with pytest.raises(ValueError, match="unknown influence metric"):
        I.component_influence(hm, batches, "bleu")
    assert I.Component.parse("L3.H2") == I.Component(3, 2) and I.Component.parse("L0.MLP") == I.Component(0)
    with pytest.raises(ValueError, match="bad component name"):
        I.Component.parse("layer3")


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_single_heads_agree_with_the_circuits_head_sweep(tok, ablation):
    """Where the two engines overlap (one head, every position, zero or dataset-mean) they agree item by item."""
    hm = HookedLM(tiny_model("llama", n_layers=3), tok)
    items = toy_items(5)
    batches = I.encode_batches(tok, items, 5)
    means = I.ablation_means(hm, batches) if ablation == "mean" else None
    res = I.component_influence(hm, batches, "logit_diff", ablation, means=means, batch_rows=15)
    _, per_item_vals = head_sweep(hm, items, "logit_diff", ablation, batch_size=5, progress=False,
                                  return_per_item=True)
    heads = [i for i, c in enumerate(res.components) if c.head is not None]
    np.testing.assert_allclose(res.ablated[heads], per_item_vals.flatten(1).T.numpy(), atol=2e-5)
