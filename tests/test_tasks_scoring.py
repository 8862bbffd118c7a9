"""Scoring: left-padded batches agree with per-example evaluation; CIs; interventions."""
from __future__ import annotations

import math

import pytest
import torch

from circuitdistill.models.hooks import zero_ablate
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.tasks import metrics as M
from circuitdistill.tasks.batching import encode_items
from circuitdistill.tasks.schema import TaskItem
from circuitdistill.tasks.scoring import EvalResult, evaluate, final_position_logits, forward_inputs, wilson_ci


def _items():
    # hand-built, very different prompt lengths so the batch really is left-padded
    return [
        TaskItem(prompt="The apple is in Box F. Box F contains the", answer=" apple", candidates=[" apple", " pen"],
                 corrupted_prompt="The pen is in Box F. Box F contains the", corrupted_answer=" pen"),
        TaskItem(prompt="Hi", answer=" there", candidates=[" there", " you"], corrupted_prompt="Yo",
                 corrupted_answer=" you"),
        TaskItem(prompt="One two three four five six seven eight nine ten eleven twelve", answer=" thirteen",
                 candidates=[" thirteen", " one"], corrupted_prompt="x", corrupted_answer=" one"),
        TaskItem(prompt="The cat sat on the", answer=" mat", candidates=[" mat", " hat", " cat"],
                 corrupted_prompt="The dog sat on the", corrupted_answer=" hat"),
    ]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_left_padded_batch_matches_per_example(family):
    tok = gpt2_tokenizer()
    model = tiny_model(family, seed=1)
    items = _items()
    batch = encode_items(tok, items)
    assert (batch["attention_mask"] == 0).any()  # padding is really there, on the left
    assert (batch["attention_mask"][:, -1] == 1).all()
    together = evaluate(model, tok, items, batch_size=len(items))
    alone = evaluate(model, tok, items, batch_size=1)
    for k, v in together.per_item.items():
        torch.testing.assert_close(v, alone.per_item[k], atol=1e-4, rtol=1e-4), k
    # and the per-example numbers are exactly the metric definitions on an unpadded forward
    for i, it in enumerate(items):
        ids = tok(it.prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            final = model(input_ids=ids).logits[:, -1, :]
        b = encode_items(tok, [it])
        assert alone.accuracy[i].item() == M.accuracy(final, b).item()
        assert math.isclose(alone.logprob[i].item(), M.answer_logprob(final, b).item(), abs_tol=1e-4)


def test_accuracy_on_a_model_that_knows_the_answer():
    """Bias the unembedding so one token always wins: accuracy is 1 exactly for the items with that answer."""
    tok = gpt2_tokenizer()
    model = tiny_model("llama", seed=0)
    target = tok(" mat", add_special_tokens=False).input_ids[0]
    with torch.no_grad():
        model.lm_head.weight[target] *= 0
        model.lm_head.weight[target] += model.model.norm.weight.sign() * 50  # huge logit everywhere
    res = evaluate(model, tok, _items(), batch_size=3)
    assert res.accuracy.tolist() == [0.0, 0.0, 0.0, 1.0]
    assert res.candidate_accuracy[3].item() == 1.0


def test_summary_has_cis_and_logit_diff():
    tok = gpt2_tokenizer()
    res = evaluate(tiny_model("llama"), tok, _items() * 5, batch_size=8)
    s = res.summary()
    assert s["n"] == 20 and set(s) == {"n", "accuracy", "candidate_accuracy", "logprob", "logit_diff"}
    for k in ("accuracy", "candidate_accuracy", "logprob", "logit_diff"):
        lo, hi = s[k]["ci95"]
        assert lo <= s[k]["mean"] <= hi
    j = res.to_json()
    assert len(j["per_item"]["accuracy"]) == 20
    # no corrupted answers -> no logit diff
    plain = [TaskItem(prompt=i.prompt, answer=i.answer) for i in _items()]
    assert evaluate(tiny_model("llama"), tok, plain).logit_diff is None


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward does not take logits_to_keep."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, position_ids):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def test_final_position_logits_is_the_last_row_of_the_full_logits_with_or_without_logits_to_keep():
    model = tiny_model("llama", seed=2)
    inputs = forward_inputs(encode_items(gpt2_tokenizer(), _items()))
    with torch.no_grad():
        full = M.final_logits(model(**inputs).logits)
        torch.testing.assert_close(final_position_logits(model, inputs), full)
        torch.testing.assert_close(final_position_logits(_NoLogitsToKeep(model), inputs), full)


class _TypeErrorInside(torch.nn.Linear):
    """Takes logits_to_keep, then fails inside the forward: no reason to retry without it."""

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep=0):
        if logits_to_keep:
            raise TypeError("raised inside the forward")
        raise AssertionError("retried without logits_to_keep")


def test_final_position_logits_lets_other_type_errors_through():
    inputs = forward_inputs(encode_items(gpt2_tokenizer(), _items()))
    with pytest.raises(TypeError, match="inside the forward"):
        final_position_logits(_TypeErrorInside(1, 1), inputs)


def test_wilson_ci():
    lo, hi = wilson_ci(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35
    lo, hi = wilson_ci(50, 100)
    assert lo < 0.5 < hi and abs((0.5 - lo) - (hi - 0.5)) < 1e-9
    r = EvalResult(torch.ones(3), torch.ones(3), torch.zeros(3))
    assert r.summary()["accuracy"]["ci95"][1] == 1.0


def test_interventions_list_and_callable_and_hooks_removed():
    tok = gpt2_tokenizer()
    model = tiny_model("llama", seed=2)
    items = _items()
    base = evaluate(model, tok, items, batch_size=2)
    ivs = [zero_ablate(f"blocks.{l}.attn.hook_z") for l in range(2)]
    ablated = evaluate(model, tok, items, batch_size=2, interventions=ivs)
    assert not torch.allclose(base.logprob, ablated.logprob)
    seen = []

    def per_batch(batch):
        seen.append(batch["input_ids"].shape[0])
        return ivs

    again = evaluate(model, tok, items, batch_size=3, interventions=per_batch)
    assert seen == [3, 1]
    torch.testing.assert_close(again.logprob, ablated.logprob, atol=1e-4, rtol=1e-4)
    # all hooks gone: plain evaluation is unchanged
    torch.testing.assert_close(evaluate(model, tok, items, batch_size=2).logprob, base.logprob)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_forward_inputs_use_the_batchs_position_ids():
    batch = encode_items(gpt2_tokenizer(), _items())
    assert forward_inputs(batch)["position_ids"] is batch["position_ids"]
    bare = {k: batch[k] for k in ("input_ids", "attention_mask")}
    assert torch.equal(forward_inputs(bare)["position_ids"], batch["position_ids"])
    assert set(forward_inputs(bare)) == set(forward_inputs(batch))
