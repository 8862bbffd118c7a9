"""Small shared helpers: atomic artifact writes, provenance, seeding, hashing."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

class UserError(ValueError):
    """A mistake in the user's input (options, files, names): the CLI prints its message on one line and exits 2."""


class MissingFile(UserError, FileNotFoundError):
    """An input file or directory that does not exist."""


_TRACKED_PACKAGES = ("circuitdistill", "torch", "transformers", "accelerate", "safetensors", "numpy", "scipy", "pydantic")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def package_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (*_TRACKED_PACKAGES, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance(seed: int | None = None, config: Any = None, **extra: Any) -> dict[str, Any]:
    """What every artifact records: seed, config and package versions."""
    cfg = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    return {"seed": seed, "config": cfg, "versions": package_versions(), **extra}


ARTIFACT_VERSION = 1


def versioned(kind: str, obj: dict, version: int = ARTIFACT_VERSION) -> dict:
    """``obj`` with ``"format": "circuitdistill.KIND/vN"`` first: every JSON artifact says what it is and which
    layout it has, so a reader can refuse (or convert) one written by another version."""
    return {"format": f"circuitdistill.{kind}/v{version}", **{k: v for k, v in obj.items() if k != "format"}}


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def set_open_mode(path: Path, directory: bool = False) -> None:
    """tempfile makes 0600 files and 0700 dirs; an artifact gets what open()/mkdir() would give: 0666/0777 less
    the umask (0644/0755 under the usual 022), so colleagues sharing a cluster can read results."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def set_open_modes_below(root: Path) -> None:
    """``set_open_mode`` on ``root`` and everything below it (libraries such as transformers' save_pretrained
    write their files 0600)."""
    set_open_mode(root, directory=True)
    for p in root.rglob("*"):
        if not p.is_symlink():
            set_open_mode(p, directory=p.is_dir())


def make_temp_dir(prefix: str, dir: str | Path) -> Path:
    """``tempfile.mkdtemp`` with the permissions of a plain ``mkdir`` (umask respected, not 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    set_open_mode(tmp, directory=True)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path in the same directory; rename it over `path` only if the body succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            set_open_mode(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def save_figure_atomic(fig, path: str | Path, **kwargs) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    return Path(path)


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json_file(path: str | Path, what: str = "file", hint: str = "") -> Any:
    """Parse a JSON file; a missing file or bad JSON raises an error naming the file (and line/column)."""
    path = Path(path)
    if not path.exists():
        raise MissingFile(f"{what} {path} does not exist{hint}")
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give the JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); is it the right file?") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def cache_home() -> Path:
    """Root of cached models and artifacts: $CIRCUITDISTILL_HOME or ~/.cache/circuitdistill."""
    return Path(os.environ.get("CIRCUITDISTILL_HOME", Path.home() / ".cache" / "circuitdistill")).expanduser()




# ---- content fingerprints ------------------------------------------------------------------------------------
_FULL_HASH_MAX = 1 << 20  # files up to this size are hashed whole; larger ones by header/metadata + size + mtime
_file_hash_cache: dict[tuple[str, int, int], str] = {}


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return f.read(n) if 0 < n < (1 << 30) else b""


def fingerprint_file(path: str | Path) -> str:
    """Content fingerprint of one file: sha256 of small files (cached by path, size and mtime); for large files
    the safetensors header (tensor names, shapes, offsets) or nothing, plus size and mtime."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _file_hash_cache:
        if st.st_size <= _FULL_HASH_MAX:
            digest = "sha256:" + sha256_file(path)
        else:
            head = _safetensors_header(path) if path.suffix == ".safetensors" else b""
            digest = "meta:" + hashlib.sha256(head + f"|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
        _file_hash_cache[key] = digest
    return _file_hash_cache[key]


def fingerprint_path(path: str | Path) -> str:
    """Content fingerprint of a file or a directory (e.g. a model: every file below it, hidden ones skipped);
    'missing' when the path does not exist. Changes whenever a file is rewritten, added or removed."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_file():
        return fingerprint_file(path)
    parts = {str(p.relative_to(path)): fingerprint_file(p) for p in sorted(path.rglob("*"))
             if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)}
    return sha256_json(parts)
