"""Baselines for teacher tracing: perplexity under each teacher, and lexical similarity.

* :func:`perplexity_scores` - mean negative log-likelihood of each text's answer tokens under each candidate
  teacher, conditioned on the instruction in that teacher's own prompt format. Attribution = lowest perplexity.
* :func:`similarity_scores` - bag-of-words cosine similarity (scikit-learn ``CountVectorizer`` + sklearn's
  ``cosine_similarity``) of each text to every text of each teacher, averaged per teacher. Attribution = highest.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm


@torch.no_grad()
def answer_nll(model, tok, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 8,
               desc: str = "perplexity") -> np.ndarray:
    """Mean NLL (nats/token) of each answer given its prompt string; rows are right padded."""
    out = np.zeros(len(answers))
    bar = tqdm(range(0, len(answers), batch_size), desc=desc, unit="batch", leave=False)
    for s in bar:
        ps, ans = prompts[s:s + batch_size], answers[s:s + batch_size]
        seqs, labs = [], []
        for p, a in zip(ps, ans):
            pid = tok(p, add_special_tokens=False)["input_ids"]
            aid = tok(a, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
            seqs.append(pid + aid)
            labs.append([-100] * len(pid) + aid)
        n = max(map(len, seqs))
        ids = torch.full((len(seqs), n), tok.pad_token_id, dtype=torch.long)
        lab = torch.full((len(seqs), n), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, (q, l) in enumerate(zip(seqs, labs)):
            ids[i, :len(q)] = torch.tensor(q)
            lab[i, :len(l)] = torch.tensor(l)
            mask[i, :len(q)] = 1
        device = next(model.parameters()).device
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        tgt = lab[:, 1:].to(device)
        lp = torch.log_softmax(logits, -1)
        valid = tgt != -100
        tok_nll = -lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
        out[s:s + len(ans)] = (tok_nll.sum(1) / valid.sum(1).clamp(min=1)).cpu().numpy()
    return out


def perplexity_scores(instructions: Sequence[str], texts: Sequence[str], teachers: Sequence[str],
                      load_teacher: Callable, prompt_fn: Callable, batch_size: int = 8) -> np.ndarray:
    """[n_texts, n_teachers] perplexity of each text under each teacher. ``load_teacher(spec) -> (model, tok,
    system)``; ``prompt_fn(tok, instruction, system) -> str`` formats the prompt as that teacher saw it."""
    P = np.zeros((len(texts), len(teachers)))
    for j, t in enumerate(teachers):
        model, tok, system = load_teacher(t)
        prompts = [prompt_fn(tok, ins, system) for ins in instructions]
        P[:, j] = np.exp(answer_nll(model, tok, prompts, texts, batch_size, desc=f"ppl under {t}"))
        del model
    return P


def similarity_scores(train_texts: Sequence[str], train_labels: Sequence[str], texts: Sequence[str],
                      classes: Sequence[str]) -> np.ndarray:
    """[n_texts, n_classes] mean bag-of-words cosine similarity of each text to each class's training texts."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    vec = CountVectorizer(lowercase=True).fit(list(train_texts) + list(texts))
    A = vec.transform(list(texts))
    B = vec.transform(list(train_texts))
    S = cosine_similarity(A, B)
    y = np.asarray(train_labels)
    return np.stack([S[:, y == c].mean(1) for c in classes], axis=1)
