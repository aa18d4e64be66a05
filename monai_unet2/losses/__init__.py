"""monai_unet2.losses: Dice + CE + boundary loss on precomputed distance maps, and its boundary-weight schedule.

Deep supervision (U2Net's list of outputs) reuses ``monai.losses.DeepSupervisionLoss`` around
``DiceBCEBoundaryLoss`` (``weight_mode="same"`` for U²-Net's original weights, ``"exp"`` for halving weights); a plain
tensor passes through it unchanged.
"""

from monai_unet2.losses.boundary import PrecomputedBoundaryLoss, boundary_term, distance_maps_from_target
from monai_unet2.losses.compound import DiceBCEBoundaryLoss
from monai_unet2.losses.schedule import BoundaryWeightSchedule

__all__ = [
    "BoundaryWeightSchedule",
    "DiceBCEBoundaryLoss",
    "PrecomputedBoundaryLoss",
    "boundary_term",
    "distance_maps_from_target",
]
