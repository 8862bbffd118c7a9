"""Per-head activation patching equals TransformerLens' oracle; AtP agrees with exact patching."""
import copy
import warnings

import pytest
import torch
from scipy.stats import spearmanr

from circuitdistill.circuits.attribution import attribution_patching
from circuitdistill.circuits.patching import activation_patching
from circuitdistill.circuits.toy import box_items
from circuitdistill.models.hooks import HookedLM
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.tasks.batching import encode_items

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


@pytest.mark.parametrize("metric", ["logprob", "logit_diff"])
def test_activation_patching_equals_transformer_lens(tok, metric):
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    items = box_items(tok, 6, 3, seed=2)
    model = tiny_model("gpt2", seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = build_bridge_from_module(copy.deepcopy(model), "GPT2LMHeadModel", hf_config=model.config)
    bridge.eval()
    clean, corr = encode_items(tok, items), encode_items(tok, items, corrupted=True)
    assert clean["attention_mask"].all() and corr["input_ids"].shape == clean["input_ids"].shape
    _, clean_cache = bridge.run_with_cache(clean["input_ids"])
    ans, wrong = clean["answer_ids"], clean["corrupted_answer_ids"]

    def tl_metric(logits):
        final = logits[:, -1].float()
        if metric == "logprob":
            return final.log_softmax(-1).gather(1, ans[:, None]).mean()
        return (final.gather(1, ans[:, None]) - final.gather(1, wrong[:, None])).mean()

    oracle = get_act_patch_attn_head_out_all_pos(bridge, corr["input_ids"], clean_cache, tl_metric)
    ours = activation_patching(HookedLM(model, tok), items, metric, direction="denoising", positions="all",
                               batch_size=4, progress=False)
    torch.testing.assert_close(ours.patched, oracle.float().cpu(), atol=1e-4, rtol=0)
    assert ours.patched.std() > 0  # the comparison is not vacuous


def one_head_model(signal=(1, 2)):
    """Tiny GPT-2 whose attention output is dominated by one head: all o-projections shrunk, one scaled up."""
    model = tiny_model("gpt2", seed=0)
    d = model.config.n_embd // model.config.n_head
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_proj.weight.mul_(0.05)
        l, h = signal
        model.transformer.h[l].attn.c_proj.weight[h * d:(h + 1) * d] *= 400
    return model


@pytest.mark.parametrize("positions,ig_steps", [("final", 0), ("all", 0), ("final", 3)])
def test_atp_agrees_with_exact_patching_when_one_head_carries_the_signal(tok, positions, ig_steps):
    items = box_items(tok, 8, 3, seed=0)
    hk = HookedLM(one_head_model((1, 2)), tok)
    exact = activation_patching(hk, items, "logprob", positions=positions, progress=False).effect
    atp = attribution_patching(hk, items, "logprob", positions=positions, ig_steps=ig_steps, progress=False)
    flat_e, flat_a = exact.flatten(), atp.flatten()
    assert int(flat_e.abs().argmax()) == int(flat_a.abs().argmax()) == 1 * 4 + 2  # the signal head, both ways
    assert torch.sign(exact[1, 2]) == torch.sign(atp[1, 2])
    big = flat_e.abs() > 0.1 * flat_e.abs().max()
    assert (torch.sign(flat_e[big]) == torch.sign(flat_a[big])).all()
    assert spearmanr(flat_e, flat_a)[0] > 0.9
    torch.testing.assert_close(atp[1, 2], exact[1, 2], rtol=0.05, atol=0)


def test_atp_restores_training_mode_and_grad_flags(tok):
    items = box_items(tok, 4, 3)
    model = tiny_model("llama")
    model.train()
    model.lm_head.weight.requires_grad_(False)
    attribution_patching(HookedLM(model, tok), items, "logit_diff", replacement="mean", progress=False)
    assert model.training and not model.lm_head.weight.requires_grad
    assert model.model.embed_tokens.weight.requires_grad
    with pytest.raises(ValueError, match="differentiable"):
        attribution_patching(HookedLM(model, tok), items, "accuracy", progress=False)


STAR = {"qk_fix": True, "grad_drop": True}


@pytest.mark.parametrize("family,replacement,ig_steps,fixes", [
    ("llama", "corrupted", 0, {}), ("llama", "mean", 2, {}), ("gpt2", "corrupted", 2, {}), ("qwen2", "zero", 0, {}),
    ("llama", "corrupted", 0, STAR), ("gpt2", "corrupted", 0, STAR), ("qwen2", "mean", 0, {"qk_fix": True}),
    ("llama", "corrupted", 0, {"softmax_fix": True}), ("gpt2", "mean", 0, {"softmax_fix": True}),
    ("qwen2", "corrupted", 0, {"softmax_fix": True, **STAR})])
def test_final_position_atp_on_the_shared_prefix_equals_full_passes(tok, family, replacement, ig_steps, fixes):
    items = box_items(tok, 5, 3, seed=1)
    items[3] = items[3].model_copy(update={"prompt": "Short. " + items[3].prompt})  # left padding in the batch
    hk = HookedLM(tiny_model(family, seed=4), tok)
    kw = dict(metric="logprob", replacement=replacement, positions="final", ig_steps=ig_steps, batch_size=3,
              progress=False, **fixes)
    shared = attribution_patching(hk, items, prefix_cache=True, **kw)
    full = attribution_patching(hk, items, prefix_cache=False, **kw)
    assert full.abs().max() > 1e-4  # not vacuous
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-4)
