"""bench/gpu.py, the one GPU script, checked the way CI can: its dry run runs the three GPU
measurements (decode against the HBM bound, search over raw, LoRA training) on the CPU with
the random Qwen2.5-7B's shapes shrunk, and writes their rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_script_dry_runs_every_part_on_the_cpu(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "bench" / "gpu.py"), "--dry-run", f"--out={tmp_path}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["dry_run"] and set(report["parts"]) == {"decode", "search", "training"}
    assert all(part["ok"] for part in report["parts"].values())
    decode = report["parts"]["decode"]["result"]
    assert decode["model"].endswith("-shrunk") and decode["rows"]
    assert report["parts"]["search"]["result"]["throughput"]
    assert report["parts"]["training"]["result"]["tokens_per_s"] > 0
    rows = (tmp_path / "gpu_rows.md").read_text()
    assert "| decode |" in rows and "| search |" in rows and "| training |" in rows


def test_the_carried_requirements_cover_what_the_script_installs() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    import gpu

    pinned = {
        line.split("==")[0].lower()
        for line in (REPO / "bench" / "gpu_requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {dist.lower() for dist in gpu.NEEDED.values()} <= pinned
