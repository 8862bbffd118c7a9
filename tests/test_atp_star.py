"""AtP*: the QK fix is exact where the model is linear apart from attention softmaxes, and beats plain AtP
under attention saturation; GradDrop averages |AtP| over layers whose gradient is dropped. The softmax fix is exact
where only the output log-softmax is nonlinear."""
import pytest
import torch

from circuitdistill.circuits.ablation import z_hook
from circuitdistill.circuits.attribution import attribution_patching
from circuitdistill.circuits.output_softmax import softmax_terms
from circuitdistill.circuits.patching import activation_patching
from circuitdistill.circuits.toy import box_items
from circuitdistill.models.hooks import HookedLM, Intervention
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.tasks.batching import encode_items
from circuitdistill.tasks.metrics import answer_logprob
from circuitdistill.tasks.scoring import forward_inputs

torch.set_num_threads(2)
HUGE_EPS = 1e10  # float32: mean(x^2) + 1e10 rounds to 1e10 for O(1) activations, so the RMSNorm is x * constant


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def items(tok):
    return box_items(tok, 6, 3, seed=0)


def linear_but_softmax(saturation: float = 20.0):
    """A 2-layer Llama in which the logit difference is linear in every head output except through layer 1's softmax.

    - Both MLPs output exactly zero (down_proj = 0).
    - Layer 1's input norm and the final norm get a huge epsilon: in float32 they multiply by a constant, so the
      logits are linear in the residual stream (a plain final norm would make even a last-layer head nonlinear).
      Weights downstream of those norms are scaled up by the constant's inverse.
    - Layer 0's heads write only into the first 16 residual dimensions, which layer 1's v_proj ignores: patching a
      layer-0 head changes layer 1's queries and keys (through the softmax) but not its values.
    - Layer 1's q/k are scaled by ``saturation``: its attention is saturated, where plain AtP goes wrong.
    So a layer-1 head feeds the logits linearly (AtP is exact), and for a layer-0 head the only nonlinearity is layer
    1's softmax along the direct residual path, which the QK fix computes exactly.
    """
    model = tiny_model("llama", n_layers=2, seed=0)
    l0, l1 = model.model.layers
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(50)
        for layer in (l0, l1):
            layer.mlp.down_proj.weight.zero_()
        l0.self_attn.o_proj.weight[16:] = 0
        l0.self_attn.o_proj.weight.mul_(50)
        l1.input_layernorm.variance_epsilon = HUGE_EPS
        l1.self_attn.v_proj.weight[:, :16] = 0
        for proj in (l1.self_attn.q_proj, l1.self_attn.k_proj):
            proj.weight.mul_(1e5 * saturation)
        l1.self_attn.o_proj.weight.mul_(1e5 * 50)
        model.model.norm.variance_epsilon = HUGE_EPS
        model.lm_head.weight.mul_(1e6)
    return model


@pytest.mark.parametrize("positions", ["all", "final"])
def test_qk_fix_is_exact_where_only_a_softmax_is_nonlinear_and_plain_atp_is_not(tok, items, positions):
    hk = HookedLM(linear_but_softmax(), tok)
    exact = activation_patching(hk, items, "logit_diff", positions=positions, progress=False).effect
    plain = attribution_patching(hk, items, "logit_diff", positions=positions, progress=False)
    fixed = attribution_patching(hk, items, "logit_diff", positions=positions, progress=False, qk_fix=True)
    scale = exact.abs().max()
    assert scale > 0.05
    torch.testing.assert_close(fixed, exact, atol=1e-5 * float(scale) * 10, rtol=0)
    torch.testing.assert_close(plain[1], exact[1], atol=1e-4 * float(scale), rtol=0)  # last layer: linear, AtP exact
    assert (plain[0] - exact[0]).abs().max() > 100 * (fixed[0] - exact[0]).abs().max()  # saturation fools AtP


def test_qk_fix_is_closer_to_exact_on_a_saturated_model_with_norms_and_mlps(tok, items):
    model = tiny_model("llama", n_layers=3, seed=1)
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(10)
            layer.self_attn.v_proj.weight.mul_(3)
        model.lm_head.weight.mul_(10)
    hk = HookedLM(model, tok)
    exact = activation_patching(hk, items, "logprob", positions="all", progress=False).effect
    plain = attribution_patching(hk, items, "logprob", positions="all", progress=False)
    fixed = attribution_patching(hk, items, "logprob", positions="all", progress=False, qk_fix=True)
    assert (fixed - exact).abs().mean() < 0.6 * (plain - exact).abs().mean()


def test_grad_drop_is_the_mean_magnitude_over_dropped_layers(tok, items):
    """In the 2-layer model: dropping layer 0 leaves a layer-1 head's gradient alone and dropping its own layer zeroes
    it, so GradDrop = |AtP|. A layer-0 head keeps only its direct path when layer 1 is dropped: GradDrop = |its
    direct effect|, exact here (patched with layer 1's head outputs frozen to the clean run; the tail is linear)."""
    model = linear_but_softmax(saturation=1.0)
    hk = HookedLM(model, tok)
    plain = attribution_patching(hk, items, "logit_diff", positions="all", progress=False)
    gd = attribution_patching(hk, items, "logit_diff", positions="all", progress=False, grad_drop=True)
    torch.testing.assert_close(gd[1], plain[1].abs() * plain[1].sign(), atol=1e-6, rtol=1e-4)
    clean, corr = encode_items(tok, items), encode_items(tok, items, corrupted=True)
    with torch.no_grad():
        z1 = hk.run(forward_inputs(clean), record=[z_hook(1)], detach=True)[1][z_hook(1)]
        z0_corr = hk.run(forward_inputs(corr), record=[z_hook(0)], detach=True)[1][z_hook(0)]
        base = model(**forward_inputs(clean), logits_to_keep=1).logits[:, -1]

        def logit_diff(logits):
            return (logits.gather(1, clean["answer_ids"][:, None]) - logits.gather(1, clean["corrupted_answer_ids"][:, None])).mean()

        for h in range(4):
            ivs = [Intervention(z_hook(0), "patch", [h], None, z0_corr), Intervention(z_hook(1), "patch", None, None, z1)]
            out = hk.run(forward_inputs(clean), interventions=ivs, logits_to_keep=1)[0].logits[:, -1]
            direct = float(logit_diff(out) - logit_diff(base))
            assert abs(abs(float(gd[0, h])) - abs(direct)) < 1e-4 * abs(direct) + 1e-7, (h, float(gd[0, h]), direct)
    with pytest.raises(ValueError, match="alternatives"):
        attribution_patching(hk, items, "logit_diff", ig_steps=2, qk_fix=True, progress=False)


def linear_but_output_softmax(tok, candidates: list[str], scale: float = 10.0):
    """``linear_but_softmax`` whose unembedding keeps only the rows of ``candidates`` (scaled up so they dominate) and
    zeroes every other row. For a layer-1 head the candidates' logits are linear in its output and so is the
    logsumexp of the rest (a constant, log(V - c)): the output log-softmax is its only nonlinearity."""
    model = linear_but_softmax()
    ids = sorted({tok(c, add_special_tokens=False).input_ids[0] for c in candidates})
    with torch.no_grad():
        w = model.lm_head.weight
        keep = w[ids] * scale
        w.zero_()
        w[ids] = keep
    return model


@pytest.mark.parametrize("positions", ["all", "final"])
def test_softmax_fix_is_exact_where_only_the_output_softmax_is_nonlinear_and_plain_atp_is_not(tok, items, positions):
    union = sorted({c for it in items for c in it.candidates})  # one candidate set: the rest is the same tokens
    shared = [it.model_copy(update={"candidates": union}) for it in items]
    hk = HookedLM(linear_but_output_softmax(tok, union), tok)
    exact = activation_patching(hk, shared, "logprob", positions=positions, progress=False).effect
    plain = attribution_patching(hk, shared, "logprob", positions=positions, progress=False)
    fixed = attribution_patching(hk, shared, "logprob", positions=positions, progress=False, softmax_fix=True)
    scale = float(exact[1].abs().max())
    assert scale > 0.3  # large enough for the log-softmax to bend
    torch.testing.assert_close(fixed[1], exact[1], atol=1e-4 * scale, rtol=0)
    assert (plain[1] - exact[1]).abs().max() > 100 * (fixed[1] - exact[1]).abs().max()


@pytest.mark.parametrize("positions", ["all", "final"])
def test_softmax_fix_with_the_qk_fix_is_exact_for_every_head_where_only_softmaxes_are_nonlinear(tok, items, positions):
    """A layer-0 head meets two softmaxes, layer 1's attention and the output: the QK fix takes the first exactly
    and the softmax fix the second, so together they equal exact patching for every head; either alone does not."""
    union = sorted({c for it in items for c in it.candidates})
    shared = [it.model_copy(update={"candidates": union}) for it in items]
    hk = HookedLM(linear_but_output_softmax(tok, union), tok)
    exact = activation_patching(hk, shared, "logprob", positions=positions, progress=False).effect
    both = attribution_patching(hk, shared, "logprob", positions=positions, progress=False, softmax_fix=True,
                                qk_fix=True)
    qk = attribution_patching(hk, shared, "logprob", positions=positions, progress=False, qk_fix=True)
    sm = attribution_patching(hk, shared, "logprob", positions=positions, progress=False, softmax_fix=True)
    scale = float(exact.abs().max())
    assert scale > 0.3 and exact[0].abs().max() > 0.05 * scale  # both layers matter and the log-softmax bends
    err = float((both - exact).abs().max())
    assert err < 1e-3 * scale
    assert float((qk - exact).abs().max()) > 30 * err and float((sm[0] - exact[0]).abs().max()) > 30 * err


def test_grad_drop_with_the_softmax_fix_drops_per_candidate_gradients(tok, items):
    """In the 2-layer model a layer-1 head keeps its gradient when layer 0 is dropped and loses it when its own layer
    is, so GradDrop with the softmax fix gives it the softmax fix's estimate. A layer-0 head keeps only its direct
    path when layer 1 is dropped: its magnitude is the exact direct effect (layer 1's head outputs frozen)."""
    union = sorted({c for it in items for c in it.candidates})
    shared = [it.model_copy(update={"candidates": union}) for it in items]
    hk = HookedLM(linear_but_output_softmax(tok, union), tok)
    sm = attribution_patching(hk, shared, "logprob", positions="all", progress=False, softmax_fix=True)
    gd = attribution_patching(hk, shared, "logprob", positions="all", progress=False, softmax_fix=True,
                              grad_drop=True)
    torch.testing.assert_close(gd[1], sm[1], atol=1e-6, rtol=1e-4)
    clean, corr = encode_items(tok, shared), encode_items(tok, shared, corrupted=True)
    with torch.no_grad():
        z1 = hk.run(forward_inputs(clean), record=[z_hook(1)], detach=True)[1][z_hook(1)]
        z0_corr = hk.run(forward_inputs(corr), record=[z_hook(0)], detach=True)[1][z_hook(0)]
        base = answer_logprob(hk.model(**forward_inputs(clean), logits_to_keep=1).logits[:, -1], clean)
        for h in range(4):
            ivs = [Intervention(z_hook(0), "patch", [h], None, z0_corr), Intervention(z_hook(1), "patch", None, None, z1)]
            out = hk.run(forward_inputs(clean), interventions=ivs, logits_to_keep=1)[0].logits[:, -1]
            direct = float((answer_logprob(out, clean) - base).mean())
            assert abs(abs(float(gd[0, h])) - abs(direct)) < 1e-4 * abs(direct) + 1e-6, (h, float(gd[0, h]), direct)


def test_softmax_terms_give_the_full_vocabulary_log_prob(tok, items):
    """The candidates (a repeat and padding included) and the logsumexp of the rest are the whole vocabulary."""
    odd = [items[0].model_copy(update={"candidates": items[0].candidates + [items[0].candidates[0]]}), *items[1:]]
    odd[1] = odd[1].model_copy(update={"candidates": [odd[1].answer]})
    batch = encode_items(tok, odd)
    final = torch.randn(len(odd), len(tok)) * 5
    v, valid, answer = softmax_terms(final, batch)
    assert valid.sum(1).tolist() == [len(set(it.candidates)) + 1 for it in odd]
    logp = v.masked_fill(~valid, float("-inf")).log_softmax(1).gather(1, answer[:, None]).squeeze(1)
    torch.testing.assert_close(logp, answer_logprob(final, batch), atol=1e-5, rtol=0)


def test_softmax_fix_checks_its_inputs(tok, items):
    hk = HookedLM(tiny_model("llama", seed=0), tok)
    with pytest.raises(ValueError, match="metric logprob"):
        attribution_patching(hk, items, "logit_diff", softmax_fix=True, progress=False)
    with pytest.raises(ValueError, match="alternatives"):
        attribution_patching(hk, items, "logprob", softmax_fix=True, ig_steps=2, progress=False)
    bare = [items[0].model_copy(update={"candidates": None}), *items[1:]]
    with pytest.raises(ValueError, match=r"candidates that include the answer on every item; items \[0\]"):
        attribution_patching(hk, bare, "logprob", softmax_fix=True, progress=False)
