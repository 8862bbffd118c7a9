"""`circuitdistill cache-teacher`: run the teacher ONCE over the training items and store what training needs.

Layout of the output directory:

* ``teacher.safetensors``
    - ``labels`` [N] int64: the teacher's predicted token at the final prompt position (the CE target)
    - ``answer_ids`` [N] int64: the gold answer's first token (to check the cache matches the data)
    - ``topk_values`` [N, k] float32, ``topk_indices`` [N, k] int64: the k largest final-position logits
    - ``heads`` [N, H, d_head] float32: outputs (``blocks.L.attn.hook_z``) of H teacher heads at ``position``
    - ``head_list`` [H, 2] int64: (layer, head) of each stored head
* with ``interchange_pairing``: ``cf_topk_values`` / ``cf_topk_indices`` [N, k] the teacher's top-k final-position
  logits with the pairing's teacher heads patched from the item's corrupted prompt, ``cf_head_list`` [H', 2]
* ``meta.json``: format version, teacher, data file + sha256, N, position, k, vocabulary size and fingerprint, teacher
  shape, seed/config/package versions.

Row i is item i of the data file (file order). Training from the cache never loads the teacher.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..circuits.interchange import interchange_logits
from ..models.hooks import HookedLM, hook_name
from ..models.registry import load_model
from ..tasks.batching import encode_items, first_token_id
from ..tasks.io import load_items
from ..tasks.scoring import forward_inputs
from ..utils import atomic_path, provenance, sha256_file, write_json_atomic
from .config import CacheConfig
from .losses.kd import vocab_fingerprint
from .matching import load_pairing

CACHE_FILE = "teacher.safetensors"
META_FILE = "meta.json"


@torch.no_grad()
def teacher_pass(hooked: HookedLM, batch: dict, head_list: Sequence[tuple[int, int]], position: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forward on a left-padded batch: final-position logits [b, V] and head outputs [b, H, d_head]."""
    layers = sorted({l for l, _ in head_list})
    device = next(hooked.model.parameters()).device
    inputs = {k: v.to(device) for k, v in forward_inputs(batch).items()}
    with hooked.hooks(record=[hook_name(l, "attn.hook_z") for l in layers], detach=True) as rec:
        logits = hooked.model(**inputs, logits_to_keep=1).logits[:, -1, :]
    if head_list:
        heads = torch.stack([rec[hook_name(l, "attn.hook_z")][:, position, h, :] for l, h in head_list], 1)
    else:
        heads = logits.new_zeros(logits.shape[0], 0, hooked.shape.d_head)
    return logits.float(), heads.float()


def build_cache(cfg: CacheConfig, progress: bool = True) -> Path:
    from safetensors.torch import save_file

    torch.set_num_threads(cfg.threads)
    items = load_items(cfg.data)
    if cfg.max_items:
        items = items[:cfg.max_items]
    model, tok = load_model(cfg.teacher, device=cfg.device, dtype=cfg.dtype)
    hooked = HookedLM(model, tok)
    shape = hooked.shape
    if cfg.heads == "all":
        head_list = [(l, h) for l in range(shape.n_layers) for h in range(shape.n_heads)]
    else:
        head_list = sorted({p.teacher for p in load_pairing(cfg.pairing).pairs})
    k = min(cfg.top_k_logits, model.get_output_embeddings().weight.shape[0])
    cf_heads = None
    if cfg.interchange_pairing:
        cf_heads = sorted({p.teacher for p in load_pairing(cfg.interchange_pairing).pairs})
        missing = [i for i, it in enumerate(items) if not it.corrupted_prompt]
        if missing:
            raise ValueError(f"{cfg.data}: {len(missing)} item(s) have no corrupted_prompt (first: line "
                             f"{missing[0] + 1}); the interchange needs one per item")
    t0 = time.time()
    labels, answers, tv, ti, heads, cfv, cfi = [], [], [], [], [], [], []
    for i in tqdm(range(0, len(items), cfg.batch_size), desc="cache-teacher", unit="batch", disable=not progress):
        batch = encode_items(tok, items[i:i + cfg.batch_size])
        logits, h = teacher_pass(hooked, batch, head_list, cfg.position)
        logits = logits.float().cpu()  # stored in float32 on the CPU whatever the teacher's dtype and device
        labels.append(logits.argmax(-1))
        answers.append(batch["answer_ids"])
        top = logits.topk(k, dim=-1)
        tv.append(top.values)
        ti.append(top.indices)
        heads.append(h.float().cpu())
        if cf_heads is not None:
            corr = encode_items(tok, items[i:i + cfg.batch_size], corrupted=True)
            with torch.no_grad():
                cf = interchange_logits(hooked, batch, corr, cf_heads).float().topk(k, dim=-1)
            cfv.append(cf.values.cpu())
            cfi.append(cf.indices.cpu())
    tensors = {"labels": torch.cat(labels), "answer_ids": torch.cat(answers), "topk_values": torch.cat(tv),
               "topk_indices": torch.cat(ti), "heads": torch.cat(heads).contiguous(),
               "head_list": torch.tensor(head_list, dtype=torch.long).reshape(-1, 2)}
    if cf_heads is not None:
        tensors.update({"cf_topk_values": torch.cat(cfv), "cf_topk_indices": torch.cat(cfi),
                        "cf_head_list": torch.tensor(cf_heads, dtype=torch.long).reshape(-1, 2)})
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / CACHE_FILE) as tmp:
        save_file(tensors, str(tmp))
    agree = (tensors["labels"] == tensors["answer_ids"]).float().mean().item()
    # label texts let a student with ANOTHER tokenizer use the teacher's labels (re-encoded, first token)
    label_vocab = {int(i): tok.decode([int(i)]) for i in tensors["labels"].unique().tolist()}
    meta = {"format": 2, "teacher": cfg.teacher, "data": str(cfg.data), "data_sha256": sha256_file(cfg.data), "n_items": len(items),
            "position": cfg.position, "top_k": k, "vocab_size": model.get_output_embeddings().weight.shape[0],
            "vocab_fingerprint": vocab_fingerprint(tok),
            "shape": {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "n_kv_heads": shape.n_kv_heads,
                      "d_head": shape.d_head},
            "n_heads_stored": len(head_list), "label_texts": label_vocab, "teacher_label_accuracy": agree, "wall_s": round(time.time() - t0, 2),
            **provenance(None, cfg)}
    write_json_atomic(out / META_FILE, meta)
    return out


class TeacherCache:
    """Read side of the cache; rows are item indices of the data file."""

    def __init__(self, path: str | Path):
        from safetensors.torch import load_file

        self.path = Path(path)
        f, m = self.path / CACHE_FILE, self.path / META_FILE
        if not f.exists() or not m.exists():
            raise FileNotFoundError(f"{self.path} is not a teacher cache (needs {CACHE_FILE} and {META_FILE}); "
                                    "build one with: circuitdistill cache-teacher --teacher T --data F --out DIR")
        self.meta = json.loads(m.read_text())
        t = load_file(str(f))
        self.labels, self.answer_ids = t["labels"], t["answer_ids"]
        self.topk_values, self.topk_indices = t["topk_values"], t["topk_indices"]
        self.heads = t["heads"]
        self.cf_topk = (t["cf_topk_values"], t["cf_topk_indices"]) if "cf_topk_values" in t else None
        self.cf_head_list = [tuple(map(int, r)) for r in t["cf_head_list"].tolist()] if self.cf_topk else None
        self.head_list = [tuple(map(int, r)) for r in t["head_list"].tolist()]
        self._col = {hd: i for i, hd in enumerate(self.head_list)}

    @property
    def n_items(self) -> int:
        return int(self.labels.shape[0])

    @property
    def position(self) -> int:
        return int(self.meta["position"])

    def check_data(self, data_path: str | Path, n_needed: int, answer_ids: torch.Tensor | None = None) -> None:
        sha = sha256_file(data_path)
        if sha != self.meta.get("data_sha256"):
            raise ValueError(f"teacher cache {self.path} was built from {self.meta.get('data')} (sha256 "
                             f"{str(self.meta.get('data_sha256'))[:12]}), not from {data_path} (sha256 {sha[:12]}); "
                             "rebuild it with circuitdistill cache-teacher on this data")
        if n_needed > self.n_items:
            raise ValueError(f"teacher cache {self.path} holds {self.n_items} items; training uses {n_needed}. "
                             "Rebuild it without --max-items or lower max_train_items")
        if answer_ids is not None and not torch.equal(answer_ids, self.answer_ids[:len(answer_ids)]):
            raise ValueError(f"teacher cache {self.path}: answer tokens differ from the student tokenizer's; "
                             "the cache was made with a different tokenizer")

    def labels_for(self, student_tokenizer, student_fp: str) -> torch.Tensor:
        """Teacher labels as STUDENT token ids (identity when the tokenizers are the same)."""
        if student_fp == self.meta.get("vocab_fingerprint"):
            return self.labels
        texts = self.meta["label_texts"]
        ids = {int(k): first_token_id(student_tokenizer, v) for k, v in texts.items()}
        return torch.tensor([ids[int(i)] for i in self.labels.tolist()])

    def require_heads(self, heads: Sequence[tuple[int, int]]) -> None:
        missing = [h for h in heads if h not in self._col]
        if missing:
            raise ValueError(f"teacher cache {self.path} lacks teacher head(s) "
                             f"{', '.join(f'L{l}.H{h}' for l, h in missing[:5])}; rebuild it with --heads all")

    def require_interchange(self, teacher_heads: Sequence[tuple[int, int]]) -> None:
        want = sorted(set(teacher_heads))
        if self.cf_head_list is None:
            raise ValueError(f"teacher cache {self.path} holds no interchange outputs; build one with "
                             "circuitdistill cache-teacher --interchange-pairing PAIRING.json")
        if self.cf_head_list != want:
            raise ValueError(f"teacher cache {self.path} patched teacher heads "
                             f"{', '.join(f'L{l}.H{h}' for l, h in self.cf_head_list[:6])}, but the pairing's "
                             "partners differ; rebuild it with --interchange-pairing on this pairing")

    def head_rows(self, rows: torch.Tensor, heads: Sequence[tuple[int, int]]) -> torch.Tensor:
        """[len(rows), len(heads), d_head] teacher head outputs."""
        cols = torch.tensor([self._col[h] for h in heads], dtype=torch.long)
        return self.heads[rows][:, cols]
