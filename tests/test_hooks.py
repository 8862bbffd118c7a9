"""The head hook layer is exactly faithful to the unmodified HF forward pass, on every supported family."""
from __future__ import annotations

import pytest
import torch

from circuitdistill.models.arch import get_module, head_param_slices
from circuitdistill.models.hooks import (HookedLM, TokenizerMismatch, add_vector, compute_means, hook_name,
                                         mean_ablate, patch, resample_ablate, zero_ablate)
from circuitdistill.models.tiny import TINY_FAMILIES, gpt2_tokenizer, tiny_model

PROMPTS_A = ["The apple is in Box F, the pen is in Box Q. Box F contains the",
             "Mary grabs a cup and fills it with tea. Mary believes the cup contains"]
PROMPTS_B = ["The water is in Box A, the car is in Box Z. Box Z contains the",
             "Bob grabs a jar and fills it with beer. Bob believes the jar contains"]


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


def _enc(tok, prompts):
    return dict(tok(prompts, return_tensors="pt", padding=True))


def _hooked(family, tok, seed=0):
    return HookedLM(tiny_model(family, seed=seed), tok)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_recording_everything_leaves_logits_bitwise_equal(family, tok):
    hm = _hooked(family, tok)
    batch = _enc(tok, PROMPTS_A)
    with torch.no_grad():
        plain = hm.model(**batch).logits
        with hm.hooks(record=[n for n in hm.hook_names() if not n.endswith("hook_pattern")]) as rec:
            hooked = hm.model(**batch).logits
    assert torch.equal(plain, hooked)
    s = hm.shape
    assert rec[hook_name(0, "attn.hook_z")].shape == (2, batch["input_ids"].shape[1], s.n_heads, s.d_head)
    assert rec[hook_name(1, "attn.hook_k")].shape[2] == s.n_kv_heads
    assert rec[hook_name(1, "hook_mlp_out")].shape == (2, batch["input_ids"].shape[1], s.d_model)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_head_outputs_through_o_proj_sum_to_attention_output(family, tok):
    hm = _hooked(family, tok)
    layer = 1
    with torch.no_grad(), hm.hooks(record=[hook_name(layer, "attn.hook_z"), hook_name(layer, "hook_attn_out")]) as rec:
        hm.model(**_enc(tok, PROMPTS_A))
    z = rec[hook_name(layer, "attn.hook_z")]
    total = 0
    for h in range(hm.shape.n_heads):
        (w, idx), = head_param_slices(hm.model, layer, h, "o")
        w_h = w[idx]  # the columns (Linear) or rows (Conv1D) of o_proj owned by head h
        total = total + (z[:, :, h] @ (w_h.T if hm.table.weight_layout == "linear" else w_h))
    bias = getattr(get_module(hm.block(layer), hm.table.o_proj), "bias", None)
    if bias is not None:
        total = total + bias
    torch.testing.assert_close(total, rec[hook_name(layer, "hook_attn_out")], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_zero_ablating_a_head_equals_zeroing_its_o_proj_columns(family, tok):
    hm = _hooked(family, tok)
    batch = _enc(tok, PROMPTS_A)
    layer, head = 0, 2
    with torch.no_grad():
        with hm.hooks(interventions=[zero_ablate(hook_name(layer, "attn.hook_z"), heads=[head])]):
            ablated = hm.model(**batch).logits
        (w, idx), = head_param_slices(hm.model, layer, head, "o")
        saved = w[idx].clone()
        w[idx] = 0
        direct = hm.model(**batch).logits
        w[idx] = saved
        restored = hm.model(**batch).logits
    torch.testing.assert_close(ablated, direct, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ablated, restored, atol=1e-6)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_patching_every_component_from_b_reproduces_b(family, tok):
    hm = _hooked(family, tok)
    a, b = _enc(tok, PROMPTS_A[:1]), _enc(tok, PROMPTS_B[:1])
    n = min(a["input_ids"].shape[1], b["input_ids"].shape[1])
    a = {k: v[:, -n:] for k, v in a.items()}
    b = {k: v[:, -n:] for k, v in b.items()}
    points = [hook_name(0, "hook_resid_pre")] + [hook_name(l, p) for l in range(hm.shape.n_layers)
                                                 for p in ("attn.hook_z", "hook_mlp_out")]
    with torch.no_grad():
        with hm.hooks(record=points) as rec_b:
            logits_b = hm.model(**b).logits
        with hm.hooks(interventions=[patch(p, rec_b[p]) for p in points]):
            patched = hm.model(**a).logits
        logits_a = hm.model(**a).logits
    torch.testing.assert_close(patched, logits_b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits_a, logits_b, atol=1e-3)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma3_text"])
def test_gqa_reports_which_kv_head_each_query_head_reads(family, tok):
    hm = _hooked(family, tok)
    s = hm.shape
    assert s.n_kv_heads < s.n_heads
    batch = _enc(tok, PROMPTS_A)
    with torch.no_grad(), hm.hooks(record=[hook_name(0, "attn.hook_z")]) as clean:
        hm.model(**batch)
    for kv in range(s.n_kv_heads):
        with torch.no_grad(), hm.hooks(record=[hook_name(0, "attn.hook_z")],
                                       interventions=[zero_ablate(hook_name(0, "attn.hook_v"), heads=[kv])]) as rec:
            hm.model(**batch)
        diff = (rec[hook_name(0, "attn.hook_z")] - clean[hook_name(0, "attn.hook_z")]).abs().amax(dim=(0, 1, 3))
        changed = [h for h in range(s.n_heads) if diff[h] > 0]
        assert changed == s.query_heads_of(kv)
        assert all(s.kv_head_of(h) == kv for h in changed)


def test_hooks_are_removed_after_an_exception(tok):
    hm = _hooked("llama", tok)
    modules = list(hm.model.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with hm.hooks(record=hm.hook_names()[:5], interventions=[zero_ablate(hook_name(1, "attn.hook_z"), [0])]):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)
    with pytest.raises(RuntimeError, match="inside"):
        with hm.hooks(record=[hook_name(0, "attn.hook_pattern")]):
            assert hm.model.config._attn_implementation == "eager"
            raise RuntimeError("inside")
    assert hm.model.config._attn_implementation == "sdpa"
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)


def test_attention_pattern_is_recorded_under_eager_and_rows_sum_to_one(tok):
    hm = _hooked("llama", tok)
    batch = _enc(tok, PROMPTS_A[:1])
    with torch.no_grad(), hm.hooks(record=[hook_name(1, "attn.hook_pattern")]) as rec:
        hm.model(**batch)
    pat = rec[hook_name(1, "attn.hook_pattern")]
    p = batch["input_ids"].shape[1]
    assert pat.shape == (1, hm.shape.n_heads, p, p)
    torch.testing.assert_close(pat.sum(-1), torch.ones(1, hm.shape.n_heads, p))
    assert torch.all(pat.triu(1) == 0)  # causal


def test_per_row_head_mask_equals_separate_runs(tok):
    hm = _hooked("llama", tok)
    batch = _enc(tok, PROMPTS_A[:1])
    n = hm.shape.n_heads
    rows = {k: v.repeat(n, 1) for k, v in batch.items()}
    mask = torch.eye(n, dtype=torch.bool)  # row i ablates head i
    name = hook_name(1, "attn.hook_z")
    with torch.no_grad():
        with hm.hooks(interventions=[zero_ablate(name, heads=mask, positions=[-1])]):
            batched = hm.model(**rows).logits[:, -1]
        for h in range(n):
            with hm.hooks(interventions=[zero_ablate(name, heads=[h], positions=[-1])]):
                single = hm.model(**batch).logits[0, -1]
            torch.testing.assert_close(batched[h], single, atol=1e-5, rtol=1e-5)


def test_mean_ablation_uses_padding_free_means(tok):
    hm = _hooked("qwen2", tok)
    batch = _enc(tok, PROMPTS_A)
    name = hook_name(0, "attn.hook_z")
    means = compute_means(hm, [batch], [name])[name]
    with torch.no_grad(), hm.hooks(record=[name], detach=True) as rec:
        hm.model(**batch)
    act, m = rec[name], batch["attention_mask"].bool()
    torch.testing.assert_close(means, act[m].mean(0), atol=1e-6, rtol=1e-5)
    with torch.no_grad(), hm.hooks(record=[name], interventions=[mean_ablate(name, means, heads=[1], positions=[-1])]) as r2:
        hm.model(**batch)
    torch.testing.assert_close(r2[name][:, -1, 1], means[1].expand(2, -1))
    torch.testing.assert_close(r2[name][:, -1, 0], act[:, -1, 0])
    per_pos = compute_means(hm, [batch], [name], per_position=True)[name]
    assert per_pos.shape == (batch["input_ids"].shape[1], hm.shape.n_heads, hm.shape.d_head)
    torch.testing.assert_close(per_pos[-1], act[:, -1].mean(0), atol=1e-6, rtol=1e-5)


def test_add_vector_and_resample(tok):
    hm = _hooked("gpt2", tok)
    batch = _enc(tok, PROMPTS_A)
    name = hook_name(1, "hook_resid_pre")
    vec = torch.randn(hm.shape.d_model)
    with torch.no_grad():
        with hm.hooks(record=[name]) as clean:
            hm.model(**batch)
        with hm.hooks(record=[name], interventions=[add_vector(name, vec, positions=[-1])]) as rec:
            hm.model(**batch)
    torch.testing.assert_close(rec[name][:, -1], clean[name][:, -1] + vec)
    torch.testing.assert_close(rec[name][:, :-1], clean[name][:, :-1])
    z = hook_name(0, "attn.hook_z")
    ref = torch.randn(5, batch["input_ids"].shape[1], hm.shape.n_heads, hm.shape.d_head)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    iv1 = resample_ablate(z, ref, batch_size=2, heads=[0], generator=g1)
    iv2 = resample_ablate(z, ref, batch_size=2, heads=[0], generator=g2)
    assert torch.equal(iv1.value, iv2.value)  # seeded
    with torch.no_grad(), hm.hooks(record=[z], interventions=[iv1]) as r:
        hm.model(**batch)
    torch.testing.assert_close(r[z][:, :, 0], iv1.value[:, :, 0])


def test_gradients_flow_through_recordings(tok):
    hm = _hooked("llama", tok)
    name = hook_name(0, "attn.hook_z")
    with hm.hooks(record=[name]) as rec:
        hm.model(**_enc(tok, PROMPTS_A))
    rec[name][:, -1, 1].sum().backward()
    kv = hm.shape.kv_head_of(1)
    (w, idx_read), = head_param_slices(hm.model, 0, kv, "v")[:1]
    (_, idx_other), = head_param_slices(hm.model, 0, 1 - kv, "v")[:1]
    assert w.grad[idx_read].abs().sum() > 0  # query head 1 reads this value head
    assert w.grad[idx_other].abs().sum() == 0  # ... and not the other one


def test_bad_input_gives_clear_errors(tok):
    hm = _hooked("llama", tok)
    with pytest.raises(IndexError, match=r"valid heads are 0\.\.3"):
        with hm.hooks(interventions=[zero_ablate(hook_name(0, "attn.hook_z"), heads=[7])]):
            pass
    with pytest.raises(IndexError, match=r"valid heads are 0\.\.1"):  # 2 KV heads
        with hm.hooks(interventions=[zero_ablate(hook_name(0, "attn.hook_k"), heads=[2])]):
            pass
    with pytest.raises(IndexError, match=r"valid layers are 0\.\.1"):
        with hm.hooks(record=[hook_name(5, "attn.hook_z")]):
            pass
    with pytest.raises(KeyError, match="hook_z"):
        with hm.hooks(record=["blocks.0.attn.hook_zz"]):
            pass
    with pytest.raises(ValueError, match="no head dimension"):
        with hm.hooks(interventions=[zero_ablate(hook_name(0, "hook_mlp_out"), heads=[0])]):
            pass
    small = tiny_model("llama", vocab_size=1000, bos_token_id=1, eos_token_id=2)
    with pytest.raises(TokenizerMismatch, match="embeds only 1000"):
        HookedLM(small, tok)


def test_unsupported_architecture_lists_supported(tok):
    from transformers import BertConfig, BertLMHeadModel

    from circuitdistill.models.arch import UnsupportedArchitecture

    model = BertLMHeadModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, is_decoder=True))
    with pytest.raises(UnsupportedArchitecture, match="llama.*mistral|gpt2.*llama"):
        HookedLM(model)
