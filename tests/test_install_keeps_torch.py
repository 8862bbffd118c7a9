"""`pip install circuitdistill` into an environment that already holds another torch keeps that torch.

The held torch is a metadata-only distribution (torch 2.7.1+heldbyuser): pip decides from installed metadata, so a
stand-in answers the question without a second multi-GB build. pip runs with ``--dry-run --report``: the
report lists everything pip would install for the package and its extras, resolved against the package index.
"""
from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELD = "2.7.1+heldbyuser"


def _hold_torch(env_dir: Path) -> Path:
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    info = site / f"torch-{HELD}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {HELD}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")
    return py


@pytest.mark.skipif(sys.platform == "win32", reason="venv layout")
def test_pip_install_leaves_an_existing_torch_in_place(tmp_path):
    py = _hold_torch(tmp_path / "env")
    assert subprocess.check_output([py, "-m", "pip", "show", "torch"], text=True).count(HELD) == 1
    report = tmp_path / "report.json"
    res = subprocess.run([py, "-m", "pip", "install", "--quiet", "--dry-run", "--report", str(report),
                          f"{ROOT}[trace,models]"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    planned = {item["metadata"]["name"].lower(): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "circuitdistill" in planned and "transformers" in planned  # the resolution really ran
    assert "torch" not in planned, f"pip would replace the held torch {HELD} with torch {planned.get('torch')}"
