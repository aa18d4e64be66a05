"""monai_unet2.handlers: ignite/MONAI handlers used by the bundles; each declares ``rank_zero_only``."""

from .checkpoints import (
    AtomicCheckpointSaver,
    BestMetricState,
    TrainingStateError,
    TrainingStateLoader,
    TrainingStateSaver,
    save_checkpoint_atomically,
)
from .metrics import class_output_transform, fov_pixels
from .progress import EpochProgressBar
from .references import handler_reference
from .weights import (
    SafeCheckpointLoader,
    WeightsFileError,
    describe_weights_error,
    load_weights,
    load_weights_into,
    save_half_precision,
    with_pretrained_weights,
)

__all__ = [
    "AtomicCheckpointSaver",
    "BestMetricState",
    "EpochProgressBar",
    "SafeCheckpointLoader",
    "TrainingStateError",
    "TrainingStateLoader",
    "TrainingStateSaver",
    "WeightsFileError",
    "class_output_transform",
    "describe_weights_error",
    "fov_pixels",
    "handler_reference",
    "load_weights",
    "load_weights_into",
    "save_checkpoint_atomically",
    "save_half_precision",
    "with_pretrained_weights",
]
