"""The softmax fix: attribution patching of log p(answer) with the output log-softmax computed exactly.

Plain AtP linearises log p(answer) = logit_a - logsumexp(all logits) at the clean run. Where the model is confident,
the gradient is scaled by (1 - p(answer)) and a head that would flip the answer scores near zero: the output
softmax saturates the way a downstream attention softmax does for the QK fix. The fix linearises the quantities
the log-softmax is taken over instead of the log-prob itself:

    v = [logit of each of the item's candidates, logsumexp of the logits of every other token]

(one backward pass per entry of v), so each head gets a first-order change dv_h per item, and then

    estimate(h) = mean over items of  [log_softmax(v + dv_h)]_answer - [log_softmax(v)]_answer

exactly. The clean term equals the true log p(answer), because the candidates and the rest together are the whole
vocabulary. It is exact wherever v is linear in the patched head (tested), and costs one backward pass per
candidate plus one.
"""
from __future__ import annotations

import torch


def check_candidates(items) -> None:
    """Every item needs candidates that include its answer (the vocabulary is split into those and the rest)."""
    bad = [i for i, it in enumerate(items) if not it.candidates or it.answer not in it.candidates]
    if bad:
        raise ValueError(f"the softmax fix needs candidates that include the answer on every item; items {bad[:10]} "
                         "have none or miss the answer (use plain AtP, or add candidates to the task's items)")


def candidate_mask(candidate_ids: torch.Tensor) -> torch.Tensor:
    """[b, c] True for each distinct candidate token of a row (padding -1 and repeats are False)."""
    same = candidate_ids[:, :, None] == candidate_ids[:, None, :]
    earlier = torch.ones_like(same[0], dtype=torch.bool).tril(-1)
    repeat = (same & earlier).any(-1)
    return (candidate_ids >= 0) & ~repeat


def softmax_terms(final: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v [b, c + 1] (candidate logits, then the logsumexp of every other token), its valid mask and the answer's
    column [b]. ``final``: the final-position logits [b, V]."""
    cands = batch["candidate_ids"].to(final.device)
    valid = candidate_mask(cands)
    idx = cands.clamp_min(0)
    logits = final.float()
    picked = logits.gather(1, idx)
    in_cands = torch.zeros_like(logits, dtype=torch.bool).scatter(1, idx, valid)
    rest = logits.masked_fill(in_cands, float("-inf")).logsumexp(-1, keepdim=True)
    answer = ((cands == batch["answer_ids"].to(final.device)[:, None]) & valid).float().argmax(1)
    v = torch.cat([picked, rest], 1)
    return v, torch.cat([valid, valid.new_ones(valid.shape[0], 1)], 1), answer


def exact_logprob_change(v: torch.Tensor, valid: torch.Tensor, answer: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
    """Sum over items of the change of log p(answer) with each head's first-order change applied inside an exact
    log-softmax. ``v``/``valid`` [b, k]; ``answer`` [b]; ``dv`` [b, k, n_layers, n_heads] -> [n_layers, n_heads]."""
    v = v.detach().double().masked_fill(~valid, float("-inf"))
    new = (v[:, :, None, None] + dv.double()).masked_fill(~valid[:, :, None, None], float("-inf"))
    rows = torch.arange(v.shape[0], device=v.device)
    before = v[rows, answer] - v.logsumexp(1)
    after = new[rows, answer] - new.logsumexp(1)
    return (after - before[:, None, None]).sum(0)
