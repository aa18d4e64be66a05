"""Checkpoints a killed training can resume from: atomic writes, the whole training state, and the resume switch.

MONAI's ``CheckpointSaver`` writes in place (ignite ``DiskSaver(atomic=False)``) and, for a fixed file name such as
``model.pt``, deletes the previous file before writing the new one: a SIGKILL in between leaves no ``model.pt`` or a
truncated one. Its ``CheckpointLoader`` restores what it is given at ``Events.STARTED`` but cannot include the very
trainer it is attached to from a bundle config (``"trainer": "@train#trainer"`` inside ``train#handlers`` is a
reference cycle), fails on a missing file, and has no notion of "resume if there is something to resume".

- :class:`AtomicCheckpointSaver` keeps the best key-metric checkpoint (``model.pt``) like ``CheckpointSaver``, with
  every file written to a hidden temporary and renamed over the final name, and with ``state_dict`` for its
  best-metric bookkeeping, so a resumed run does not overwrite a better ``model.pt`` with its first validation.
- :class:`TrainingStateSaver` writes the whole training state (network, optimiser, scheduler, trainer epoch and
  iteration, the evaluator's best metric, the MLflow run, ...) to one file at every epoch end, atomically.
- :class:`TrainingStateLoader` restores that file at the start of a run when ``resume`` is on.
- :class:`BestMetricState` makes an evaluator's ``best_metric``/``best_metric_epoch`` part of that state.

The boundary weight needs no entry: its schedule derives it from the restored epoch.

The savers declare ``rank_zero_only = True`` (all ranks hold the same state, one writer is wanted), the loader
``False`` (every rank must restore); :func:`monai_unet2.distributed.rank_zero_handlers` reads the declaration.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from monai.handlers import CheckpointLoader
from monai.utils import IgniteInfo, is_scalar, min_version, optional_import

from ..data.files import write_atomically

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
    """ignite save handler writing through :func:`save_checkpoint_atomically`.

    ignite's ``Checkpoint`` removes the previous best before it saves the new one. Under a fixed file name
    (``model.pt``) both are the same file: ``remove`` then keeps it, and the atomic rename of the save replaces it,
    so there is always a whole ``model.pt``.

    Args:
        dirname: folder of the checkpoints.
        fixed_filename: the one file name every save uses, if any.
    """

    def __init__(self, dirname: str, fixed_filename: str | None = None) -> None:
        self.dirname = dirname
        self.fixed_filename = fixed_filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        save_checkpoint_atomically(checkpoint, os.path.join(self.dirname, filename))

    def remove(self, filename: str) -> None:
        path = os.path.join(self.dirname, filename)
        if filename != self.fixed_filename and os.path.exists(path):
            os.remove(path)


class AtomicCheckpointSaver:
    """Keep the checkpoint of the best key metric, as MONAI's ``CheckpointSaver(save_key_metric=True)``, written
    atomically and with resumable best-metric bookkeeping.

    MONAI's ``CheckpointSaver`` hard-codes ignite's ``DiskSaver(atomic=False)`` and, for a fixed file name such as
    ``model.pt``, deletes the old file before writing the new one: a SIGKILL in between leaves no model or a truncated
    one, and it offers no argument to change the save handler. This class is ignite's public ``Checkpoint`` with
    a save handler that writes to a hidden temporary and renames it over the final name, and keeps the old file
    until then. It takes ``CheckpointSaver``'s key-metric arguments (and only those: the bundles keep no interval or
    final checkpoints). :meth:`state_dict` / :meth:`load_state_dict` carry the best scores seen so far, so put the
    saver in the training state (:class:`TrainingStateSaver`) and a resumed run keeps ``model.pt`` unless it beats
    them.

    Args:
        save_dir: folder of the checkpoints (created when missing).
        save_dict: objects to save (``{"model": @network}`` gives a bare state dict, as MONAI bundles expect; a
            ``DistributedDataParallel`` network is saved unwrapped).
        save_key_metric: must be ``True``: the one kind of checkpoint this saver writes (the argument keeps configs
            written for ``CheckpointSaver`` valid).
        key_metric_name: the ``engine.state.metrics`` entry to compare; ``None`` for the evaluator's key metric.
        key_metric_n_saved: how many of the best checkpoints to keep.
        key_metric_filename: a fixed file name for the best checkpoint (then ``key_metric_n_saved`` must be 1);
            ``None`` names files ``<prefix>_<name>_key_metric=<score>.pt`` as ``CheckpointSaver`` does.
        key_metric_greater_or_equal: replace the kept checkpoint on an equal score too.
        key_metric_negative_sign: smaller is better (compare the negated metric).
        file_prefix: prefix of the generated file names.
    """

    rank_zero_only = True

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        save_key_metric: bool = True,
        key_metric_name: str | None = None,
        key_metric_n_saved: int = 1,
        key_metric_filename: str | None = None,
        key_metric_greater_or_equal: bool = False,
        key_metric_negative_sign: bool = False,
        file_prefix: str = "",
    ) -> None:
        if not save_key_metric:
            raise ValueError(
                "AtomicCheckpointSaver writes the best key-metric checkpoint only (save_key_metric=True); "
                "use MONAI's CheckpointSaver for interval or final checkpoints."
            )
        if key_metric_filename is not None and key_metric_n_saved != 1:
            raise ValueError(
                "AtomicCheckpointSaver: a fixed key_metric_filename keeps one model, key_metric_n_saved=1."
            )
        if not save_dict:
            raise ValueError("AtomicCheckpointSaver: save_dict names no object to save.")
        self.key_metric_name = key_metric_name
        self.sign = -1.0 if key_metric_negative_sign else 1.0
        self.checkpoint = Checkpoint(
            to_save=save_dict,
            save_handler=_AtomicDiskSaver(save_dir, key_metric_filename),
            filename_prefix=file_prefix,
            score_function=self.score,
            score_name="key_metric",
            n_saved=key_metric_n_saved,
            filename_pattern=key_metric_filename,
            greater_or_equal=key_metric_greater_or_equal,
        )

    def score(self, engine: Engine) -> float:
        """The (signed) key metric of ``engine``'s epoch; ``-1`` (never better) for a non-scalar metric, with a
        warning, as ``CheckpointSaver`` does."""
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None:
            raise ValueError("AtomicCheckpointSaver: no key_metric_name given and the engine has no key metric.")
        metric = engine.state.metrics[name]
        if not is_scalar(metric):
            logger.warning(f"key metric {name} is not a scalar ({metric}): no checkpoint is saved for it.")
            return -1.0
        return self.sign * float(metric)

    def attach(self, engine: Engine) -> None:
        """Compare and save at the end of every epoch of ``engine`` (the evaluator)."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.checkpoint)

    def state_dict(self) -> dict:
        """The kept checkpoints' scores and file names (ignite ``Checkpoint.state_dict``)."""
        return self.checkpoint.state_dict()

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore :meth:`state_dict`, e.g. from the training state of an interrupted run."""
        self.checkpoint.load_state_dict(state_dict)


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
    """Drop ``None`` entries (items switched off with ``_disabled_``)."""
    return {name: value for name, value in (objects or {}).items() if value is not None}


class TrainingStateSaver:
    """Write the whole training state to one file at the end of every ``save_interval``-th epoch, atomically.

    Put it last in ``train#handlers`` so that the epoch's validation, scheduler step and model registration are
    part of the saved state. The engine it is attached to is saved under ``engine_key``; the config does not
    need to (and cannot) reference the trainer from inside its own handler list.

    Args:
        checkpoint_path: the file, e.g. ``$@ckpt_dir + '/training_state.pt'``.
        objects: name -> object with ``state_dict()`` (network, optimizer, lr_scheduler, evaluator best metric,
            ``AtomicCheckpointSaver``, MLflow run, registry handler...). ``None`` values are skipped.
        save_interval: epochs between saves.
        engine_key: the name of the trainer's own entry.
    """

    rank_zero_only = True

    def __init__(
        self,
        checkpoint_path: str | os.PathLike,
        objects: Mapping[str, Any],
        save_interval: int = 1,
        engine_key: str = "trainer",
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"TrainingStateSaver: save_interval must be >= 1, got {save_interval}.")
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.objects = _present(objects)
        self.save_interval = save_interval
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        """Save at the end of every ``save_interval``-th epoch of ``engine``."""
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self)

    def __call__(self, engine: Engine) -> None:
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

    rank_zero_only = False

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
