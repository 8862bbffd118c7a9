"""Resuming at layer L from recorded layer inputs equals the full pass; the layer-skipping sweep equals the naive loop."""
import sys
from pathlib import Path

import pytest
import torch

from circuitdistill.circuits import ablation as A
from circuitdistill.models.hooks import HookedLM, Intervention
from circuitdistill.models.resume import record_layer_calls, run_from_layer
from circuitdistill.models.tiny import TINY_FAMILIES, tiny_model
from circuitdistill.tasks.batching import encode_items
from circuitdistill.tasks.scoring import forward_inputs

torch.set_num_threads(2)


sys.path.insert(0, str(Path(__file__).parent))
from test_circuits_ablation import items, tok  # noqa: E402,F401 - the same left-padded items and tokenizer


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_running_from_any_layer_reproduces_the_full_pass(tok, items, family):
    hk = HookedLM(tiny_model(family, n_layers=3), tok)
    inputs = forward_inputs(encode_items(tok, items))
    assert not inputs["attention_mask"].all()
    with torch.no_grad():
        full = hk.model(**inputs, logits_to_keep=1).logits[:, -1]
        calls = record_layer_calls(hk, inputs)
        for layer in range(3):
            torch.testing.assert_close(run_from_layer(hk, calls, layer, times=2), full.repeat_interleave(2, 0),
                                       atol=1e-5, rtol=0)


def test_an_intervention_at_layer_l_equals_the_same_intervention_on_a_full_pass(tok, items):
    hk = HookedLM(tiny_model("llama", n_layers=3), tok)
    inputs = forward_inputs(encode_items(tok, items))
    iv = Intervention(A.z_hook(1), "zero", [2])
    with torch.no_grad():
        full = hk.run(inputs, interventions=[iv], logits_to_keep=1)[0].logits[:, -1]
        calls = record_layer_calls(hk, inputs)
        with hk.hooks(interventions=[iv]):
            resumed = run_from_layer(hk, calls, 1)
    assert (full - hk.model(**inputs, logits_to_keep=1).logits[:, -1]).abs().max() > 1e-4  # not vacuous
    torch.testing.assert_close(resumed, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family,mode", [("llama", "corrupted"), ("gpt2", "clean"), ("qwen2", "mean"),
                                         ("llama", "zero")])
def test_layer_skipping_sweep_equals_the_naive_loop(tok, items, family, mode):
    hk = HookedLM(tiny_model(family, n_layers=3), tok)
    kw = dict(metric="logprob", mode=mode, batch_size=3, positions="all", progress=False)
    skipped = A.head_sweep(hk, items, rows_per_pass=7, **kw)  # passes of 2 heads x 3 items (and 1 x 2)
    full = A.head_sweep(hk, items, layer_skip=False, **kw)
    naive = A.head_sweep_naive(hk, items, **kw)
    assert naive.std() > 0
    torch.testing.assert_close(skipped, naive, atol=1e-5, rtol=0)
    torch.testing.assert_close(full, naive, atol=1e-5, rtol=0)


def test_the_last_block_runs_its_mlp_on_the_final_position_alone(tok, items):
    hk = HookedLM(tiny_model("llama", n_layers=3), tok)
    inputs = forward_inputs(encode_items(tok, items))
    rows = []
    down = hk.block(2).mlp.down_proj  # a hook inside the MLP leaves the trim on
    handle = down.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            full = hk.model(**inputs, logits_to_keep=1).logits[:, -1]
            calls = record_layer_calls(hk, inputs)
            rows.clear()
            trimmed = run_from_layer(hk, calls, 1)
            assert rows == [1]
            run_from_layer(hk, calls, 1, trim_last=False)
            assert rows[-1] == inputs["input_ids"].shape[1]
    finally:
        handle.remove()
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("point", ["hook_mlp_out", "hook_resid_post"])
def test_a_recording_of_the_last_block_keeps_every_position(tok, items, point):
    hk = HookedLM(tiny_model("gpt2", n_layers=3), tok)
    inputs = forward_inputs(encode_items(tok, items))
    name = f"blocks.2.{point}"
    with torch.no_grad():
        full = hk.run(inputs, record=[name], logits_to_keep=1)[1][name]
        calls = record_layer_calls(hk, inputs)
        with hk.hooks(record=[name]) as rec:
            run_from_layer(hk, calls, 1)
    torch.testing.assert_close(rec[name], full, atol=1e-5, rtol=0)


def test_on_a_cpu_default_layer_skipping_passes_stay_within_the_token_budget(tok, items, monkeypatch):
    hk = HookedLM(tiny_model("llama", n_layers=3), tok)
    p = encode_items(tok, items[:3])["input_ids"].shape[1]
    monkeypatch.setattr(A, "CPU_TOKENS_PER_PASS", 2 * 3 * p)  # two heads of three items
    rows = []
    handle = hk.block(2).register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    try:
        kw = dict(metric="logprob", mode="zero", batch_size=3, positions="all", progress=False)
        default = A.head_sweep(hk, items[:3], **kw)
    finally:
        handle.remove()
    assert max(rows) == 6 and len(rows) == 1 + 3 * 2  # the recorded pass, then 2 passes per layer of 4 heads
    torch.testing.assert_close(default, A.head_sweep(hk, items[:3], rows_per_pass=12, **kw), atol=1e-5, rtol=0)
