"""The options every model-loading command shares: where the model runs, its dtype and the CPU threads.

One definition each, so every config offers the same choices with the same help."""
from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, Field

DEVICE_CHOICES = ("auto", "cuda", "cuda:N", "mps", "cpu")


def _check_device(value: str) -> str:
    if value in ("auto", "cuda", "mps", "cpu") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise ValueError(f"choose {', '.join(repr(c) for c in DEVICE_CHOICES)} (N: a GPU index); got {value!r}")


Device = Annotated[str, AfterValidator(_check_device)]
DType = Literal["auto", "bf16", "fp16", "fp32"]
DEVICE_HELP = "where the models run: auto (CUDA, else MPS, else CPU), cuda, cuda:N (GPU N), mps or cpu"
DTYPE_HELP = ("parameter dtype of the loaded models: auto (bf16 on a CUDA GPU that has it, else fp32), bf16, fp16 "
              "or fp32; losses and CKA are computed in float32 whatever it is")
THREADS_HELP = "torch CPU threads (default: every core this process may use)"


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one, else all cores)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def device_field(default: str = "auto", note: str = "") -> Any:
    return Field(default, description=DEVICE_HELP + note)


def dtype_field(default: str = "fp32", note: str = "") -> Any:
    return Field(default, description=DTYPE_HELP + note)


def threads_field(*old_names: str, note: str = "") -> Any:
    """Defaults to ``default_threads()`` when the config is built, so the resolved count is what configs record
    (and what keys derived from them hold). ``old_names``: earlier names of the field still read from files."""
    alias = AliasChoices("threads", *old_names) if old_names else None
    return Field(default_factory=default_threads, ge=1, le=1024, description=THREADS_HELP + note,
                 validation_alias=alias)
