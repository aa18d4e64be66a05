"""Kervadec's boundary loss term on precomputed signed distance maps.

``BoundaryLoss`` in MONAI computes the distance transform of the target inside every forward pass (scipy on the CPU,
one transform per sample and class, 12-32x the cost of DiceCE) and has no voxel spacing. Here the term is a single
multiply-and-mean on maps that ``monai_unet2.transforms.SignedDistanceMapd`` computed once per sample; computing
them on the fly is kept only as a fallback (``distance_maps_from_target``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn.modules.loss import _Loss

from monai_unet2.transforms.distance import signed_distance_map

__all__ = ["PrecomputedBoundaryLoss", "boundary_term", "distance_maps_from_target"]


def boundary_term(probabilities: torch.Tensor, distance_map: torch.Tensor) -> torch.Tensor:
    """Mean over batch, channels and voxels of ``probability * phi``.

    Minimal when the probability is 1 exactly where ``phi < 0`` (inside the ground truth) and 0 where ``phi > 0``;
    a false positive costs its distance to the true boundary, so the term grows with how far an error is.

    Args:
        probabilities: ``(B, C, *spatial)`` probabilities of the classes that ``distance_map`` describes.
        distance_map: ``(B, C, *spatial)`` signed distance maps, same shape.
    """
    if probabilities.shape != distance_map.shape:
        raise ValueError(
            f"boundary term: probabilities {tuple(probabilities.shape)} and distance maps "
            f"{tuple(distance_map.shape)} must have the same shape."
        )
    return (probabilities.float() * distance_map.to(device=probabilities.device, dtype=torch.float32)).mean()


def distance_maps_from_target(one_hot_target: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Signed distance maps of every channel of a ``(B, C, *spatial)`` binary target (slow fallback path).

    Args:
        one_hot_target: binary / one-hot target of the classes that need a map.
        spacing: voxel spacing of the spatial axes; ``None`` means 1.
    """
    masks = one_hot_target.detach().cpu().numpy() > 0.5
    maps = np.stack([np.stack([signed_distance_map(channel, spacing) for channel in sample]) for sample in masks])
    return torch.from_numpy(maps).to(one_hot_target.device)


class PrecomputedBoundaryLoss(_Loss):
    """Boundary loss alone (``probability x phi``), with ``phi`` passed in by the caller.

    Use ``DiceCEBoundaryLoss`` for training: the boundary loss must be combined with a region loss. This class is
    for analysis and for composing other losses.

    Args:
        sigmoid: apply a sigmoid to the logits.
        softmax: apply a softmax over channels to the logits, then drop channel 0 (background).
    """

    def __init__(self, sigmoid: bool = False, softmax: bool = False) -> None:
        super().__init__()
        if sigmoid == softmax:
            raise ValueError("PrecomputedBoundaryLoss: set exactly one of sigmoid=True or softmax=True.")
        self.sigmoid = sigmoid
        self.softmax = softmax

    def forward(self, input: torch.Tensor, distance_map: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits ``(B, N, *spatial)``.
            distance_map: ``(B, N, *spatial)`` for sigmoid, ``(B, N - 1, *spatial)`` for softmax.
        """
        logits = input.float()
        probabilities = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=1)[:, 1:]
        return boundary_term(probabilities, distance_map)
