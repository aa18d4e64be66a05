"""Bundle configuration helpers: each dataset fact stated once, each shared component built once.

A bundle states its facts in ``configs/metadata.json`` (labels, input channels) and ``configs/plans.json`` (slice
axis, context slices, orientation, spacing, normalisation, window size, network); ``train.json``, ``inference.json``
and ``evaluate.json`` read them with :func:`read_plans`, :func:`label_names` and :func:`input_channel_names` and
build what they share with :func:`volume_preprocessing` (or :func:`image_preprocessing`), :func:`build_network` and
:func:`per_class_dice`; evaluation reports by label name are :class:`LabelMetricsReport`. See docs/user_guide.md ("How a bundle's configs fit together").
"""

from .components import (
    NORMALIZATIONS,
    build_network,
    image_preprocessing,
    intensity_normalization,
    per_class_dice,
    volume_preprocessing,
)
from .evaluation import CONVENTIONS, LabelMetricsReport, case_label_metrics
from .facts import (
    METADATA_FILE,
    PLANS_FILE,
    Plans,
    input_channel_names,
    label_names,
    read_metadata,
    read_plans,
    view_models_dir,
    view_plan,
)

__all__ = [
    "CONVENTIONS",
    "METADATA_FILE",
    "NORMALIZATIONS",
    "PLANS_FILE",
    "LabelMetricsReport",
    "Plans",
    "build_network",
    "case_label_metrics",
    "image_preprocessing",
    "input_channel_names",
    "intensity_normalization",
    "label_names",
    "per_class_dice",
    "read_metadata",
    "read_plans",
    "view_models_dir",
    "view_plan",
    "volume_preprocessing",
]
