"""What the soak's scenarios share: running an entry point with patches installed first."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def patched(script: str, prelude: str, arguments: list[str]) -> list[str]:
    """The command that runs ``script`` (a root entry point) as ``__main__`` after executing
    ``prelude`` (a fault's or a sabotage's patches) in the same process."""
    path = str(REPO / script)
    launch = (
        f"{prelude}\nimport runpy, sys\nsys.argv = [{path!r}, *sys.argv[1:]]\n"
        f"runpy.run_path({path!r}, run_name='__main__')\n"
    )
    return [sys.executable, "-c", launch, *arguments]


def wall_row(figures: dict[str, Any]) -> tuple[str, str]:
    """The table row of both runs' wall time and the soak's overhead."""
    reference, soak = figures["reference_wall_s"], figures["soak_wall_s"]
    return "wall: reference / soak (overhead)", f"{reference} s / {soak} s ({figures['overhead']}x)"
