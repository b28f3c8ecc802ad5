"""Checkpoints are written next to themselves and renamed into place (never through $TMPDIR,
whose move onto another filesystem is a copy a kill can cut); a killed write's temporary file
is cleared by the next one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from websynthesis.io import atomic_write, stale_temporaries
from websynthesis.training.checkpoint_io import SameDirCheckpointIO


def test_a_checkpoint_is_written_in_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "tmpdir"
    elsewhere.mkdir()
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    path = tmp_path / "checkpoints" / "last.ckpt"
    stale = path.parent / f".{path.name}.killed.tmp"
    path.parent.mkdir()
    stale.write_bytes(b"half a checkpoint")
    SameDirCheckpointIO().save_checkpoint({"step": 3, "w": torch.ones(2)}, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], torch.ones(2))
    assert list(elsewhere.iterdir()) == [] and not stale.exists()
    assert stale_temporaries(path) == []


def test_a_failed_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    path.write_bytes(b"old")

    def fail(handle: object) -> None:
        os.write(handle.fileno(), b"new but cut")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and stale_temporaries(path) == []
