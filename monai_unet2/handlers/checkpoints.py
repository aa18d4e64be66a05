"""Checkpoints a killed training can resume from: atomic writes, the whole training state, and the resume switch.

MONAI's ``CheckpointSaver`` writes in place (ignite ``DiskSaver(atomic=False)``) and, for a fixed file name such as
``model.pt``, deletes the previous file before writing the new one: a SIGKILL in between leaves no ``model.pt`` or a
truncated one. Its ``CheckpointLoader`` restores what it is given at ``Events.STARTED`` but cannot include the very
trainer it is attached to from a bundle config (``"trainer": "@train#trainer"`` inside ``train#handlers`` is a
reference cycle), fails on a missing file, and has no notion of "resume if there is something to resume".

- :class:`AtomicCheckpointSaver` is ``CheckpointSaver`` with every file written to a hidden temporary and renamed
  over the final name, and with ``state_dict`` for its best-metric bookkeeping, so a resumed run does not
  overwrite a better ``model.pt`` with its first validation.
- :class:`TrainingStateSaver` writes the whole training state (network, optimiser, scheduler, trainer epoch and
  iteration, the evaluator's best metric, the MLflow run, ...) to one file at every epoch end, atomically.
- :class:`TrainingStateLoader` restores that file at the start of a run when ``resume`` is on.
- :class:`BestMetricState` makes an evaluator's ``best_metric``/``best_metric_epoch`` part of that state.

The boundary weight needs no entry: :class:`~monai_unet2.losses.BoundaryWeightSchedule` derives it from the
restored epoch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import IgniteInfo, min_version, optional_import

from ..data.files import write_atomically
from ..distributed import is_rank0

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
    from ignite.handlers.checkpoint import BaseSaveHandler, Checkpoint
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
    BaseSaveHandler, _ = optional_import(
        "ignite.handlers.checkpoint", IgniteInfo.OPT_IMPORT_VERSION, min_version, "BaseSaveHandler"
    )
    Checkpoint, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Checkpoint")

__all__ = [
    "AtomicCheckpointSaver",
    "BestMetricState",
    "TrainingStateError",
    "TrainingStateLoader",
    "TrainingStateSaver",
    "save_checkpoint_atomically",
]

logger = logging.getLogger(__name__)


class TrainingStateError(RuntimeError):
    """A training-state checkpoint cannot be resumed from; the message names the file and the problem."""


def save_checkpoint_atomically(checkpoint: Any, path: str | os.PathLike) -> str:
    """``torch.save`` to a hidden temporary in the same folder, flushed and renamed over ``path``.

    A kill at any moment leaves the previous file or the complete new one under ``path``, never a partial one.

    Args:
        checkpoint: what ``torch.save`` writes (state dicts).
        path: final file name; its folder is created.

    Returns:
        ``path``.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return write_atomically(path, lambda temporary: torch.save(checkpoint, temporary))


class _AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler writing through :func:`save_checkpoint_atomically`, optionally to a fixed file name.

    With a fixed name ``remove`` does nothing: ignite removes the old best before saving the new one, and the
    atomic rename replaces it anyway.
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        self.dirname = dirname
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        save_checkpoint_atomically(checkpoint, os.path.join(self.dirname, self.filename or filename))

    def remove(self, filename: str) -> None:
        if self.filename is None:
            path = os.path.join(self.dirname, filename)
            if os.path.exists(path):
                os.remove(path)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files are written atomically, with resumable best-metric bookkeeping.

    Same arguments and file names as ``CheckpointSaver`` (``save_key_metric``, ``key_metric_filename="model.pt"``,
    ``save_final``, ``save_interval``...): only the way files reach the disk changes. :meth:`state_dict` /
    :meth:`load_state_dict` carry the best key metric seen so far, so put the saver in the training state
    (:class:`TrainingStateSaver`) and a resumed run keeps ``model.pt`` unless it beats that metric.

    Args:
        save_dir: folder of the checkpoints.
        save_dict: objects to save (``{"model": @network}`` gives a bare state dict, as MONAI bundles expect).
        kwargs: every other ``CheckpointSaver`` argument.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        fixed_names = {
            "_final_checkpoint": kwargs.get("final_filename"),
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": None,
        }
        for attribute, filename in fixed_names.items():
            checkpoint = getattr(self, attribute)
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(save_dir, filename)

    def state_dict(self) -> dict:
        """The key-metric tracking list (scores and file names of the kept best checkpoints)."""
        if self._key_metric_checkpoint is None:
            return {"_saved": []}
        return self._key_metric_checkpoint.state_dict()


class BestMetricState:
    """Expose an evaluator's ``best_metric`` and ``best_metric_epoch`` as a state dict.

    MONAI's evaluators keep the best key metric in ``engine.state``, which ignite's ``Engine.state_dict`` leaves
    out; after a resume the first validation would count as a new best without this.

    Args:
        engine: the evaluator (``@validate#evaluator``).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict:
        state = self.engine.state
        return {"best_metric": float(state.best_metric), "best_metric_epoch": int(state.best_metric_epoch)}

    def load_state_dict(self, state_dict: Mapping) -> None:
        self.engine.state.best_metric = float(state_dict["best_metric"])
        self.engine.state.best_metric_epoch = int(state_dict["best_metric_epoch"])


def _present(objects: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop ``None`` entries (items switched off with ``_disabled_``, e.g. MLflow handlers on ranks > 0)."""
    return {name: value for name, value in (objects or {}).items() if value is not None}


class TrainingStateSaver:
    """Write the whole training state to one file at the end of every ``save_interval``-th epoch, atomically.

    Put it last in ``train#handlers`` so that the epoch's validation, scheduler step and model registration are
    part of the saved state. The engine it is attached to is saved under ``engine_key``; the config does not
    need to (and cannot) reference the trainer from inside its own handler list.

    Args:
        checkpoint_path: the file, e.g. ``$@ckpt_dir + '/training_state.pt'``.
        objects: name -> object with ``state_dict()`` (network, optimizer, lr_scheduler, evaluator best metric,
            ``AtomicCheckpointSaver``, MLflow handler, registry handler...). ``None`` values are skipped.
        save_interval: epochs between saves.
        engine_key: the name of the trainer's own entry.
        rank_zero_only: in a ``torch.distributed`` run, only rank 0 writes (all ranks hold the same state).
    """

    def __init__(
        self,
        checkpoint_path: str | os.PathLike,
        objects: Mapping[str, Any],
        save_interval: int = 1,
        engine_key: str = "trainer",
        rank_zero_only: bool = True,
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"TrainingStateSaver: save_interval must be >= 1, got {save_interval}.")
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.objects = _present(objects)
        self.save_interval = save_interval
        self.engine_key = engine_key
        self.rank_zero_only = rank_zero_only

    def attach(self, engine: Engine) -> None:
        """Save at the end of every ``save_interval``-th epoch of ``engine``."""
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self)

    def __call__(self, engine: Engine) -> None:
        if self.rank_zero_only and not is_rank0():
            return
        state = {name: obj.state_dict() for name, obj in {**self.objects, self.engine_key: engine}.items()}
        save_checkpoint_atomically(state, self.checkpoint_path)
        logger.info(f"saved the training state of epoch {engine.state.epoch} to {self.checkpoint_path}")


class TrainingStateLoader(CheckpointLoader):
    """The resume switch: restore a :class:`TrainingStateSaver` file into the run before it starts.

    With ``resume`` off it does nothing. With ``resume`` on and no file at ``checkpoint_path`` it logs that
    training starts from scratch (so one command line works for the first run and for every rerun after a kill,
    as nnU-Net's ``--c``). Otherwise it loads the file with ``weights_only=True`` and restores every object and the
    trainer's epoch and iteration; the trainer then continues with the epoch after the saved one. Put it first in
    ``train#handlers``: it must run before the MLflow handler opens its run, so that the saved run is continued.

    Args:
        checkpoint_path: the file :class:`TrainingStateSaver` writes.
        objects: the same objects given to the saver (``None`` values are skipped).
        resume: the switch (``--resume True`` on the bundle command line).
        engine_key: the name of the trainer's own entry.
        map_location: ``torch.load`` map location (e.g. ``@device``).
    """

    def __init__(
        self,
        checkpoint_path: str | os.PathLike,
        objects: Mapping[str, Any],
        resume: bool = False,
        engine_key: str = "trainer",
        map_location: Any = None,
    ) -> None:
        super().__init__(load_path=os.fspath(checkpoint_path), load_dict=_present(objects), map_location=map_location)
        self.resume = bool(resume)
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        """Restore at ``Events.STARTED`` of ``engine`` when resuming and the file exists."""
        if not self.resume:
            return
        if not os.path.exists(self.load_path):
            logger.warning(f"resume requested but there is no training state at {self.load_path}: starting at epoch 1.")
            return
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = self.load_path
        try:
            checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
        except Exception as error:
            raise TrainingStateError(
                f"{path}: cannot resume from this training state, it could not be read ({type(error).__name__}: "
                f"{error}). Move it away to start training from scratch."
            ) from error
        to_load = {**self.load_dict, self.engine_key: engine}
        missing = sorted(set(to_load) - set(checkpoint) if isinstance(checkpoint, Mapping) else to_load)
        if missing:
            raise TrainingStateError(
                f"{path}: not a training state of this configuration: missing {', '.join(missing)} "
                f"(it holds {', '.join(sorted(checkpoint)) if isinstance(checkpoint, Mapping) else type(checkpoint)})."
            )
        engine_state = checkpoint[self.engine_key]
        saved_epoch = int(engine_state.get("epoch") or engine_state["iteration"] // engine_state["epoch_length"])
        max_epochs = engine.state.max_epochs
        if max_epochs is not None and saved_epoch >= max_epochs:
            raise TrainingStateError(
                f"{path}: this training already finished ({saved_epoch} of max_epochs {max_epochs}); "
                "nothing to resume. Raise max_epochs to train further, or start a new run without resume."
            )
        try:
            Checkpoint.load_objects(to_load=to_load, checkpoint=checkpoint, strict=True)
        except Exception as error:
            raise TrainingStateError(
                f"{path}: cannot restore the training state into this configuration ({type(error).__name__}: {error})."
            ) from error
        engine.state.max_epochs = max_epochs
        logger.info(
            f"resumed from {path}: epoch {engine.state.epoch} of {max_epochs} done, continuing with epoch "
            f"{engine.state.epoch + 1}."
        )
