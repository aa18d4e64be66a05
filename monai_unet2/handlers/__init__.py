"""monai_unet2.handlers: ignite/MONAI handlers used by the bundles; each declares ``rank_zero_only``."""

from .checkpoints import (
    AtomicCheckpointSaver,
    BestMetricState,
    TrainingStateError,
    TrainingStateLoader,
    TrainingStateSaver,
    save_checkpoint_atomically,
)
from .metrics import class_output_transform
from .progress import EpochProgressBar
from .references import handler_reference

__all__ = [
    "AtomicCheckpointSaver",
    "BestMetricState",
    "EpochProgressBar",
    "TrainingStateError",
    "TrainingStateLoader",
    "TrainingStateSaver",
    "class_output_transform",
    "handler_reference",
    "save_checkpoint_atomically",
]
