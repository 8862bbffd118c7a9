"""bench/scale.py: its per-item teacher-cache formula against a real cache of tiny models, and its head-only
trainable counts against HeadDeltas on a real (tiny) model."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from distill_fixtures import make_world

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks itself up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("heads,interchange", [("all", False), ("paired", True)])
def test_cache_bytes_per_item_matches_a_real_cache(tmp_path, scale, heads, interchange):
    from safetensors.torch import load_file

    from circuitdistill.distill.config import CacheConfig
    from circuitdistill.distill.teacher_cache import CACHE_FILE, META_FILE, build_cache

    w = make_world(tmp_path / "w", n_items=12)
    sizes = {}
    for n in (4, 12):
        out = build_cache(CacheConfig(teacher=w["teacher"], data=w["data"], out=str(tmp_path / f"c{heads}{n}"),
                                      heads=heads, pairing=w["pairing"], max_items=n, top_k_logits=5, threads=1,
                                      interchange_pairing=w["pairing"] if interchange else None), progress=False)
        meta = json.loads((out / META_FILE).read_text())
        per = scale.cache_bytes_per_item(meta["n_heads_stored"], meta["shape"]["d_head"], meta["top_k"],
                                         interchange=interchange)
        t = load_file(str(out / CACHE_FILE))
        per_item = sum(v.numel() * v.element_size() for k, v in t.items() if not k.endswith("head_list"))
        assert per_item == n * per  # every per-item tensor is counted, with its dtype
        sizes[n] = (out / CACHE_FILE).stat().st_size
        constant = sizes[n] - n * per  # head lists + the safetensors header
        assert 0 < constant < 4096
    # the file grows by exactly the formula per item, up to the header's digits and 8-byte padding
    assert abs((sizes[12] - sizes[4]) - 8 * per) <= 16


def test_head_only_trainable_matches_head_deltas(scale):
    from circuitdistill.distill.head_params import HeadDeltas
    from circuitdistill.models.tiny import tiny_model

    model = tiny_model("llama", seed=0)
    cfg = model.config
    for packed in (True, False):
        heads = scale.head_selection(cfg, 0.5, packed)
        assert len(heads) == round(0.5 * cfg.num_hidden_layers * cfg.num_attention_heads)
        d = HeadDeltas(tiny_model("llama", seed=0), heads)
        q, kv = cfg.num_attention_heads, cfg.num_key_value_heads
        groups = {(l, h // (q // kv)) for l, h in heads}
        per_head = 2 * cfg.head_dim * cfg.hidden_size  # q rows + o columns (no biases in llama)
        assert sum(p.numel() for p in d.parameters()) == len(heads) * per_head + len(groups) * per_head


def test_head_deltas_report_counts_a_tied_embedding_once():
    from transformers import LlamaForCausalLM

    from circuitdistill.distill.head_params import HeadDeltas
    from circuitdistill.models.tiny import tiny_config

    cfg = tiny_config("llama")
    cfg.tie_word_embeddings = True
    model = LlamaForCausalLM(cfg)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    n = sum(p.numel() for p in model.parameters())  # distinct parameters
    assert HeadDeltas(model, [(0, 1)]).report()["total_params"] == n


def test_scale_prints_the_tables(scale, capsys):
    scale.main([])
    out = capsys.readouterr().out
    assert "| Llama-3.2-1B | 16 | 32 (8) | 64 | 1,235,814,400 |" in out
    assert "| Llama-3-8B | 32 | 32 (8) | 128 | 8,030,261,248 |" in out
    assert "525,072" in out  # Llama-3-8B, all 1024 heads, k 64: bytes per item
