"""A training must not silently replace weights it did not write, such as a bundle's shipped ``models/model.pt``.

A bundle's ``train.json`` saves its best checkpoint as ``<ckpt_dir>/model.pt``, and ``ckpt_dir`` is the bundle's
``models/`` folder: that is where MONAI's bundle format and MONAI Label expect the weights, and where MONAI Label's
retraining must write for the next ``/infer`` to serve them. The same default let a one-epoch test run replace the
repository's trained weights. :class:`WeightsGuard` keeps the default and stops the run at its start, before any
iteration, when ``model.pt`` exists and replacing it is not what the run is for. A ``model.pt`` committed to a git
checkout and unchanged (the repository's shipped weights) is never replaced without ``overwrite``, also not by a
fine-tuning: MONAI Label serving the repository's bundle folder through a symlink would otherwise retrain it in place.
Other files may be replaced when:

- the file was written by an earlier training into the same folder: after every epoch the guard records the
  sha256 of ``model.pt`` in ``model.pt.trained.json`` beside it (a plain rerun, ``--resume True``);
- the training starts from those weights: at ``Events.STARTED``, after the loaders, the network holds exactly the
  tensors of ``model.pt`` (MONAI Label's fine-tuning with ``pretrained``, which loads ``models/model.pt`` first);
- ``overwrite`` is on (``--overwrite_weights True``).

Otherwise the message names the file and the ways out: ``--ckpt_dir <folder>`` to train elsewhere (the registry
keeps every best version anyway), or ``--overwrite_weights True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from monai_unet2.data.files import write_atomically

__all__ = ["MARKER_SUFFIX", "WeightsGuard", "WeightsOverwriteError", "committed_unchanged", "file_sha256"]

logger = logging.getLogger(__name__)

#: appended to the weights file name for the record of what a training wrote
MARKER_SUFFIX = ".trained.json"


class WeightsOverwriteError(RuntimeError):
    """A training would replace weights it did not write; the message names the file and the switches."""


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def committed_unchanged(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file committed to a git checkout and unchanged since (``False`` without git)."""
    folder, name = os.path.split(os.path.abspath(path))

    def git(*args: str) -> int:
        try:
            return subprocess.run(["git", "-C", folder, *args], capture_output=True, timeout=10, check=False).returncode
        except (OSError, subprocess.SubprocessError):
            return -1

    return git("ls-files", "--error-unmatch", "--", name) == 0 and git("diff", "--quiet", "HEAD", "--", name) == 0


def _is_rank_zero() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


class WeightsGuard:
    """Refuse, at the start of training, to replace a ``model.pt`` this training neither wrote nor starts from.

    Attach it to the trainer after the loaders (``TrainingStateLoader``; MONAI Label's ``CheckpointLoader`` comes
    first anyway). It runs on every rank, so that all ranks of a distributed run stop together; rank 0 writes the
    record. See the module docstring for when replacing is allowed.

    Args:
        checkpoint_path: the weights the training saves its best checkpoint to (``$@ckpt_dir + '/model.pt'``).
        network: the trained network (``@network``; a ``DistributedDataParallel`` is unwrapped).
        overwrite: replace the file anyway (``--overwrite_weights True``), with a warning.
    """

    rank_zero_only = False

    def __init__(self, checkpoint_path: str | os.PathLike, network: torch.nn.Module, overwrite: bool = False) -> None:
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.marker_path = self.checkpoint_path + MARKER_SUFFIX
        self.network = network
        self.overwrite = bool(overwrite)

    def attach(self, engine: Any) -> None:
        """Check at ``Events.STARTED``; from then on, record what the training wrote after every epoch."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)

    def started(self, engine: Any) -> None:
        """Refuse or allow; then register the record after the other epoch-end handlers (validation, saver)."""
        from ignite.engine import Events

        self.check()
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, self.record)

    def check(self) -> None:
        """Raise :class:`WeightsOverwriteError` when the training would replace weights it must not."""
        path = self.checkpoint_path
        if not os.path.isfile(path):
            return
        committed = committed_unchanged(path)
        if not committed and (self._written_here() or self._starts_from_them()):
            return
        if self.overwrite:
            logger.warning(f"{path}: replacing weights this training did not write (overwrite_weights is on).")
            return
        if committed:
            raise WeightsOverwriteError(
                f"{path} is a committed file of the git checkout (the bundle's shipped weights): training would "
                "replace them. Train a copy of the bundle (MONAI Label: link a copy), or another folder with "
                "--ckpt_dir <folder>, or pass --overwrite_weights True to replace them."
            )
        raise WeightsOverwriteError(
            f"{path} holds weights that no training into {os.path.dirname(path) or '.'} wrote and that this training "
            "does not start from (a bundle's shipped weights?): its best checkpoint would replace them. Train into "
            "another folder with --ckpt_dir <folder>, or pass --overwrite_weights True to replace them."
        )

    def _written_here(self) -> bool:
        try:
            with open(self.marker_path) as handle:
                recorded = json.load(handle).get("sha256")
        except (OSError, ValueError, AttributeError):
            return False
        return recorded == file_sha256(self.checkpoint_path)

    def _starts_from_them(self) -> bool:
        try:
            saved = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception:
            return False
        if isinstance(saved, Mapping) and isinstance(saved.get("model"), Mapping):
            saved = saved["model"]
        if not isinstance(saved, Mapping) or not saved:
            return False
        current = getattr(self.network, "module", self.network).state_dict()
        return all(
            name in current and torch.equal(current[name].detach().cpu(), tensor)
            for name, tensor in saved.items()
            if isinstance(tensor, torch.Tensor)
        )

    def record(self, engine: Any = None) -> None:
        """Write ``model.pt.trained.json`` with the sha256 of the ``model.pt`` this training wrote (rank 0)."""
        if not _is_rank_zero() or not os.path.isfile(self.checkpoint_path):
            return
        epoch = int(getattr(getattr(engine, "state", None), "epoch", 0) or 0)
        record = {"sha256": file_sha256(self.checkpoint_path), "epoch": epoch}
        write_atomically(self.marker_path, lambda temporary: Path(temporary).write_text(json.dumps(record)))
