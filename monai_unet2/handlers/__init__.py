"""monai_unet2.handlers: ignite/MONAI handlers and helpers used by the bundles."""

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
from .references import handler_entry
