"""Memory and disk of circuit distillation at Llama-3 scale, computed from the code's own tensors (no download).

The models are built on PyTorch's ``meta`` device from ``LlamaConfig``s with the published dimensions of
Llama-3.2-1B, Llama-3.2-3B (students) and Llama-3-8B (teacher), so parameter counts are exact and nothing is
allocated. Head-only trainable counts come from ``HeadDeltas`` itself, attached to the meta model. The teacher
cache size per item is the formula ``cache_bytes_per_item`` (the tensors ``build_cache`` stores;
``tests/test_scale.py`` checks it against a real cache of tiny models). Activation memory is a rough bound
(documented at ``activation_bytes``), not a measurement. ``docs/scale.md`` quotes this script's output:

    python bench/scale.py                    # the tables of docs/scale.md (batch 16, 128 tokens, k 64)
    python bench/scale.py --seq-len 256 --batch-size 32 --items 2000
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

GiB = 2 ** 30
GB = 1e9
BYTES = {"fp32": 4, "bf16": 2}
GPU_GIB = 81559 / 1024  # what torch reports for an A100/H100 "80GB": 81,559 MiB = 79.6 GiB
USABLE_GIB = 0.9 * GPU_GIB  # CUDA context, allocator fragmentation, workspace: keep 10% free

# Published dimensions (the models' config.json on the Hugging Face Hub)
SHAPES = {
    "Llama-3.2-1B": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "Llama-3.2-3B": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "Llama-3-8B": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
STUDENTS = ("Llama-3.2-1B", "Llama-3.2-3B")
TEACHER = "Llama-3-8B"


def llama_config(name: str):
    from transformers import LlamaConfig

    return LlamaConfig(**SHAPES[name])


def meta_model(name: str):
    """The HF model with every tensor on the meta device (shapes only, no memory)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(llama_config(name))


def n_params(model) -> int:
    """Distinct parameters (a tied embedding / lm_head counts once, as in save_pretrained and the optimizer)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ---- teacher cache -------------------------------------------------------------------------------------------
def cache_bytes_per_item(n_heads_stored: int, d_head: int, top_k: int, interchange: bool = False) -> int:
    """Bytes one item adds to ``teacher.safetensors`` (``distill/teacher_cache.py``):

    labels int64 (8) + answer_ids int64 (8) + topk_values float32 (4k) + topk_indices int64 (8k)
    + heads float32 (4 * n_heads_stored * d_head) [+ cf_topk_values/indices (12k) with --interchange-pairing].
    The file adds a constant: head_list (16 bytes per stored head, 16 per cf head) and the safetensors header."""
    per = 8 + 8 + 12 * top_k + 4 * n_heads_stored * d_head
    return per + (12 * top_k if interchange else 0)


# ---- trainable parameters ------------------------------------------------------------------------------------
def head_selection(cfg, budget: float, packed: bool) -> list[tuple[int, int]]:
    """``budget`` of the query heads. packed: whole GQA groups first (fewest k/v slices: the least that trains);
    spread: one query head per k/v group before any group gets a second (the most that trains)."""
    L, H, G = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    n = round(budget * L * H)
    size = H // G
    if packed:
        order = [(l, h) for l in range(L) for h in range(H)]
    else:
        order = [(l, g * size + j) for j in range(size) for l in range(L) for g in range(G)]
    return order[:n]


def head_only_trainable(name: str, budget: float, packed: bool) -> tuple[int, int]:
    """(selected heads, trainable parameters) of HeadDeltas with gqa_policy=train on the meta model."""
    from circuitdistill.distill.head_params import HeadDeltas

    model = meta_model(name)
    heads = head_selection(model.config, budget, packed)
    deltas = HeadDeltas(model, heads, gqa_policy="train")
    return len(heads), sum(p.numel() for p in deltas.parameters())


def attn_proj_elements_per_layer(cfg) -> int:
    """q, k, v, o weights of one layer (what a SliceDelta parametrisation clones in every forward)."""
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    return (2 * q + 2 * kv) * cfg.hidden_size


# ---- activations ---------------------------------------------------------------------------------------------
def activation_bytes(cfg, batch: int, seq: int, nbytes: int, layers: int | None = None) -> int:
    """ROUGH bound of what a training forward keeps for backward: per token and layer, with SDPA attention
    (no seq^2 term; eager attention would add 2 * n_heads * seq per token and layer):
    4 d_model (two RMSNorm inputs and outputs) + 2 q (q before/after RoPE) + 4 kv (k before/after RoPE, v,
    repeat) + q (the per-head outputs, hook_z) + 4 d_ff (gate, up, act(gate), product) elements. The logits
    are computed at the final position only (logits_to_keep=1), so no batch x seq x vocab tensor exists.
    Backward reaches every layer above the earliest trained one: ``layers`` (default all)."""
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    per = 4 * cfg.hidden_size + 3 * q + 4 * kv + 4 * cfg.intermediate_size
    return batch * seq * per * (layers or cfg.num_hidden_layers) * nbytes


def inference_peak_bytes(cfg, batch: int, seq: int, nbytes: int, record_all_heads: bool) -> int:
    """ROUGH transient memory of a no-grad forward: one layer's working set (the largest: the MLP, 3 d_ff) plus
    the residual stream, plus, when every layer's attn.hook_z is recorded (cache-teacher --heads all,
    discover), the recordings: batch x seq x n_heads x d_head per layer, kept to the end of the pass."""
    q = cfg.num_attention_heads * cfg.head_dim
    work = batch * seq * (3 * cfg.intermediate_size + 4 * cfg.hidden_size) * nbytes
    rec = batch * seq * q * cfg.num_hidden_layers * nbytes if record_all_heads else 0
    return work + rec


@dataclass
class Row:
    student: str
    method: str
    dtype: str
    weights: float
    trainable: int
    train_state: float  # trainables' grads + AdamW exp_avg + exp_avg_sq (+ the deltas themselves)
    extra: float  # head-only: SliceDelta weight clones and their gradients
    activations: float
    total: float


def training_rows(batch: int, seq: int, budget: float) -> list[Row]:
    rows = []
    for name in STUDENTS:
        model = meta_model(name)
        cfg, P = model.config, n_params(model)
        n_heads, t_max = head_only_trainable(name, budget, packed=False)
        for dtype, b in BYTES.items():
            act = activation_bytes(cfg, batch, seq, b)
            w = P * b
            # head-only: deltas (T) + grads (T) + AdamW state (2T), all in the model dtype (torch AdamW keeps its
            # state like the parameter); each parametrised projection's full weight is cloned in the forward
            # (kept for backward) and gets a full-size gradient in backward
            clones = 2 * attn_proj_elements_per_layer(cfg) * cfg.num_hidden_layers * b
            tot = w + 4 * t_max * b + clones + act
            rows.append(Row(name, f"head-only ({n_heads} heads)", dtype, w / GiB, t_max, 4 * t_max * b / GiB,
                            clones / GiB, act / GiB, tot / GiB))
            # full rows: grads (P) + AdamW state (2P) in the model dtype; bf16 is pure bf16 (no fp32 master copy)
            tot = w + 3 * P * b + act
            rows.append(Row(name, "full (full-kd, logit-kd)", dtype, w / GiB, P, 3 * P * b / GiB, 0.0, act / GiB,
                            tot / GiB))
    return rows


def fits(gib: float) -> str:
    return "yes" if gib <= USABLE_GIB else ("tight" if gib <= GPU_GIB else "no")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=16, help="training batch (distill's default)")
    ap.add_argument("--teacher-batch-size", type=int, default=32, help="cache-teacher's default batch")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per prompt (7-box entity tracking: ~80)")
    ap.add_argument("--top-k-logits", type=int, default=64, help="cache-teacher --top-k-logits (default 64)")
    ap.add_argument("--items", type=int, default=1000, help="cached items for the disk column")
    ap.add_argument("--budget", type=float, default=0.15, help="head budget (match --budget)")
    a = ap.parse_args(argv)

    print("## Models (exact parameter counts, meta device)\n")
    print("| model | layers | heads (kv) | d_head | parameters | weights fp32 | weights bf16 |")
    print("|---|---|---|---|---|---|---|")
    for name in (*STUDENTS, TEACHER):
        m = meta_model(name)
        c, P = m.config, n_params(m)
        print(f"| {name} | {c.num_hidden_layers} | {c.num_attention_heads} ({c.num_key_value_heads}) | "
              f"{c.head_dim} | {P:,} | {P * 4 / GiB:.2f} GiB | {P * 2 / GiB:.2f} GiB |")

    t = llama_config(TEACHER)
    all_heads = t.num_hidden_layers * t.num_attention_heads
    print(f"\n## Teacher cache ({TEACHER}, top-k {a.top_k_logits}, {a.items:,} items)\n")
    print("| cache | heads stored | bytes per item | for the items |")
    print("|---|---|---|---|")
    for label, h, cf in (("--heads all (experiment: train and validation caches)", all_heads, False),
                         (f"--heads paired (~{round(a.budget * all_heads)} partners at most)",
                          round(a.budget * all_heads), False),
                         ("--interchange-pairing (experiment: circuit-iit)", round(a.budget * all_heads), True)):
        per = cache_bytes_per_item(h, t.head_dim, a.top_k_logits, cf)
        print(f"| {label} | {h} | {per:,} | {per * a.items / GB:.3f} GB |")

    print(f"\n## Training memory per row (batch {a.batch_size}, {a.seq_len} tokens, from the teacher cache; "
          f"GiB)\n")
    print("| student | row | dtype | weights | trainable params | grads + AdamW (+ deltas) | delta clones | "
          "activations (rough) | total | one 80 GB GPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = training_rows(a.batch_size, a.seq_len, a.budget)
    for r in rows:
        print(f"| {r.student} | {r.method} | {r.dtype} | {r.weights:.2f} | {r.trainable:,} | {r.train_state:.2f} | "
              f"{r.extra:.2f} | {r.activations:.2f} | {r.total:.2f} | {fits(r.total)} |")
    tp = n_params(meta_model(TEACHER))
    t_cfg = llama_config(TEACHER)
    print(f"\nWith a live teacher (`distill --teacher`, bench/distill.py) the {TEACHER} teacher is loaded in the "
          "row's dtype next to the student and runs a no-grad forward each step:\n")
    print("| student | row | dtype | total with the live teacher | one 80 GB GPU |")
    print("|---|---|---|---|---|")
    for r in rows:
        b = BYTES[r.dtype]
        tot = r.total + (tp * b + inference_peak_bytes(t_cfg, a.batch_size, a.seq_len, b, False)) / GiB
        print(f"| {r.student} | {r.method} | {r.dtype} | {tot:.2f} | {fits(tot)} |")
    lo = {n: head_only_trainable(n, a.budget, packed=True)[1] for n in STUDENTS}
    print("\nHead-only trainable parameters above are the most a budget can train (one query head per k/v "
          "group first, gqa_policy=train); whole groups first gives " +
          ", ".join(f"{n}: {v:,}" for n, v in lo.items()) + ".")

    print(f"\n## Teacher-side commands ({TEACHER}, no gradients, batch {a.teacher_batch_size}, {a.seq_len} "
          f"tokens; GiB)\n")
    print("| command | dtype | weights | forward working set + recordings (rough) | total | one 80 GB GPU |")
    print("|---|---|---|---|---|---|")
    tm = meta_model(TEACHER)
    TP = n_params(tm)
    for cmd, rec in (("cache-teacher --heads all / discover", True), ("evaluate / match (per model)", False)):
        for dtype, b in BYTES.items():
            w = TP * b
            act = inference_peak_bytes(t, a.teacher_batch_size, a.seq_len, b, rec)
            print(f"| {cmd} | {dtype} | {w / GiB:.2f} | {act / GiB:.2f} | {(w + act) / GiB:.2f} | "
                  f"{fits((w + act) / GiB)} |")
    for name in STUDENTS:
        sm = meta_model(name)
        for dtype, b in BYTES.items():
            w = (TP + n_params(sm)) * b
            act = inference_peak_bytes(t, a.teacher_batch_size, a.seq_len, b, False)
            print(f"| match: {TEACHER} + {name} loaded together | {dtype} | {w / GiB:.2f} | {act / GiB:.2f} | "
                  f"{(w + act) / GiB:.2f} | {fits((w + act) / GiB)} |")

    print("\n## Disk per trained row (GB = 1e9 bytes)\n")
    print("| student | row | dtype | model/ (save_pretrained) | head_deltas.safetensors | checkpoint.pt while "
          "training (peak while one is replaced: 2x) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        b = BYTES[r.dtype]
        model_gb = r.weights * GiB / GB
        if r.method.startswith("head-only"):
            deltas, ckpt = r.trainable * b / GB, 3 * r.trainable * b / GB  # deltas + AdamW state
        else:
            deltas, ckpt = None, 3 * r.trainable * b / GB  # state_dict + AdamW state
        print(f"| {r.student} | {r.method} | {r.dtype} | {model_gb:.2f} | "
              f"{'-' if deltas is None else f'{deltas * 1e3:.0f} MB'} | {ckpt:.2f} GB ({2 * ckpt:.2f} GB) |")


if __name__ == "__main__":
    main()
