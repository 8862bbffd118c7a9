"""Gradient (activation) checkpointing of a Hugging Face model that trains in eval mode.

Our training rows run the model in eval mode (dropout off). HF checkpoints a decoder layer, and turns off the
KV cache of the forward, only while that layer / the base model is in training mode, so only the modules that
carry HF's ``gradient_checkpointing`` flag are switched to training mode; their dropout submodules stay off and
the loss is the one the row computes without checkpointing.
"""
from __future__ import annotations

from ..utils import UserError


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward pass (``use_reentrant=False``). Forward hooks
    inside a layer fire again during the recomputation, so callers must not record or patch through hooks while
    it is on."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"{type(model).__name__} does not support gradient checkpointing")
    # transformers >= 5.24 renamed the method; the old name still works there but warns
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for m in model.modules():
        if getattr(m, "gradient_checkpointing", False):
            m.training = True  # this module only, not its dropout submodules
