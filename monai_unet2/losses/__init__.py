"""monai_unet2.losses: Dice + CE + boundary loss on precomputed distance maps, and its boundary-weight schedule.

Deep supervision (U2Net's list of outputs) reuses ``monai.losses.DeepSupervisionLoss`` around
``DiceCEBoundaryLoss`` (``weight_mode="same"`` for U²-Net's original weights, ``"exp"`` for halving weights); a plain
tensor passes through it unchanged. The boundary weight is scheduled by MONAI's ``ParamSchedulerHandler`` with
``boundary_weight_setter`` (docs/losses.md).
"""

from monai_unet2.losses.boundary import PrecomputedBoundaryLoss, boundary_term, distance_maps_from_target
from monai_unet2.losses.compound import DiceCEBoundaryLoss
from monai_unet2.losses.schedule import BoundaryWeightMetric, boundary_weight_setter

__all__ = [
    "BoundaryWeightMetric",
    "DiceCEBoundaryLoss",
    "PrecomputedBoundaryLoss",
    "boundary_term",
    "boundary_weight_setter",
    "distance_maps_from_target",
]
