"""The teachers of a trace run: a model name, optionally with a system-prompt persona (``model@persona``), and the
prompt format every teacher and student answers in."""
from __future__ import annotations

from ..models import registry

# Distinct system-prompt "personas" of one model. They are NOT different teachers: a persona teacher is the
# same weights with a different system prompt, and every report labels it as such.
PERSONAS: dict[str, str] = {
    "terse": "You are a terse assistant. Answer in short, plain sentences without lists or formatting.",
    "teacher": "You are a friendly school teacher. Explain things step by step with simple examples.",
}


def split_teacher(spec: str) -> tuple[str, str | None]:
    """``model`` or ``model@persona``."""
    if "@" in spec:
        model, persona = spec.split("@", 1)
        if persona not in PERSONAS:
            raise ValueError(f"unknown persona {persona!r} in teacher {spec!r}; personas: {', '.join(PERSONAS)}")
        return model, persona
    return spec, None


def chat_prompt(tok, instruction: str, system: str | None = None) -> str:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": instruction}]
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    # no chat template (a base model, e.g. the gemma3-270m GGUF): plain format, with the model's BOS token, which
    # we must add ourselves because prompts are encoded with add_special_tokens=False (Gemma degenerates without it)
    bos = tok.bos_token if tok.bos_token and tok.bos_token != tok.eos_token else ""
    return bos + (system + "\n\n" if system else "") + f"Instruction: {instruction}\nAnswer:"


def load_teacher(spec: str, device: str = "cpu", dtype: str = "fp32"):
    """(model, tokenizer, system prompt or None) of a teacher spec."""
    model_name, persona = split_teacher(spec)
    model, tok = registry.load_model(model_name, device=device, dtype=dtype)
    return model, tok, (PERSONAS[persona] if persona else None)
