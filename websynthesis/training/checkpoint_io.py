"""Checkpoints written so that a kill at any moment leaves the last one whole.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction: the bytes go to a
temporary file in ``$TMPDIR``, then ``shutil.move`` puts it in place. When the run dir is on
another filesystem than ``/tmp`` (a node's local disk, the runs on NFS or Lustre) that move
is a copy, which a kill can cut: ``last.ckpt`` is then torn and the resume it exists for
fails. A killed write also leaves its temporary file in ``/tmp``, one checkpoint's size each
time. :class:`SameDirCheckpointIO` writes next to the checkpoint instead
(:func:`websynthesis.io.atomic_write`: fsync, rename), so the rename is atomic wherever the
run dir is, and clears what an earlier killed write left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from websynthesis.io import atomic_write, stale_temporaries


class SameDirCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with a write that is atomic on any filesystem (see above)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        for stale in stale_temporaries(path):  # one writer per run dir: rank zero
            stale.unlink(missing_ok=True)
        atomic_write(path, lambda handle: torch.save(checkpoint, handle))
