"""Affine (voxel-to-world) matrices as read from file headers: whether they describe a grid at all, how far two of them
place the same voxel apart, and how many voxels a grid has after resampling to a target spacing.

A header can hold an affine no resampler can use: NaN, a zero column (a voxel axis of length 0, from a zero pixdim or
a broken sform), two parallel axes. MONAI fails on those deep inside ``Orientation`` (``Unable to find out axis``) or
``Spacing`` (``LinAlgError: SVD did not converge``) without naming the file; :func:`affine_problem` says what is wrong
so that the loader can refuse it by name. :func:`resampled_voxel_count` gives the memory guard the size the volume will
have after ``Orientationd`` + ``Spacingd``, which for 40 mm voxels resampled to 1 mm is 64 000 times the stored size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["affine_problem", "grid_distance_mm", "resampled_voxel_count"]


def _as_array(affine: Any) -> np.ndarray:
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    return np.asarray(affine, dtype=np.float64)


def affine_problem(affine: Any) -> str | None:
    """What makes ``affine`` unusable as a voxel-to-world matrix, or ``None`` when it is a proper one.

    Args:
        affine: ``(r + 1, r + 1)`` matrix.
    """
    matrix = _as_array(affine)
    if not np.isfinite(matrix).all():
        return f"its affine holds NaN or infinite values ({_rows(matrix)})"
    rank = matrix.shape[0] - 1
    linear = matrix[:rank, :rank]
    lengths = np.linalg.norm(linear, axis=0)
    zero = [axis for axis, length in enumerate(lengths) if length == 0]
    if zero:
        return (
            f"its affine gives voxel axis {', '.join(map(str, zero))} a length of 0 mm (a zero column: a zero "
            f"pixdim or a broken sform/qform; {_rows(matrix)})"
        )
    volume = abs(float(np.linalg.det(linear)))
    if volume <= 1e-6 * float(np.prod(lengths)):
        return f"its affine maps the voxel axes onto a plane or a line (parallel axes; {_rows(matrix)})"
    return None


def _rows(matrix: np.ndarray) -> str:
    return "affine rows " + "; ".join(" ".join(f"{v:g}" for v in row) for row in matrix[:-1])


def grid_distance_mm(affine_a: Any, affine_b: Any, spatial_shape: Sequence[int]) -> float:
    """The largest distance (in world units, mm for NIfTI/DICOM) between where two affines put the same voxel,
    over a grid of ``spatial_shape``.

    The displacement between two affine maps is itself affine, so its largest norm over the grid's bounding box is
    reached at one of the ``2 ** spatial_dims`` corner voxels; those are the only points evaluated.

    Args:
        affine_a: voxel-to-world matrix, ``(r + 1, r + 1)``.
        affine_b: voxel-to-world matrix of the same size.
        spatial_shape: grid size; corners are the voxel centres ``0`` and ``size - 1`` along each axis.
    """
    a, b = _as_array(affine_a), _as_array(affine_b)
    if a.shape != b.shape:
        raise ValueError(f"affines of different sizes: {a.shape} and {b.shape}")
    rank = a.shape[0] - 1
    extents = [max(int(size) - 1, 0) for size in spatial_shape][:rank]
    extents += [0] * (rank - len(extents))
    corners = np.array(np.meshgrid(*[[0, extent] for extent in extents], indexing="ij")).reshape(rank, -1)
    homogeneous = np.vstack([corners, np.ones((1, corners.shape[1]))])
    displacement = (a - b)[:rank] @ homogeneous
    return float(np.linalg.norm(displacement, axis=0).max())


def resampled_voxel_count(spatial_shape: Sequence[int], affine: Any, target_spacing: Sequence[float] | float) -> int:
    """The number of voxels of a grid after ``Orientationd`` (to the world axes) and ``Spacingd(pixdim=target)``.

    Each voxel axis goes to the world axis it runs closest to (what ``Orientationd`` does) and keeps the distance
    between its first and last voxel centres, cut into ``target`` mm steps (``Spacing``'s rule,
    ``round((size - 1) * spacing / target + 1)``). Entries of ``target_spacing`` that are not positive
    keep that axis' spacing (as ``Spacingd`` does).

    Args:
        spatial_shape: voxels along each axis of the stored grid.
        affine: its voxel-to-world matrix (``(r + 1, r + 1)``).
        target_spacing: the output spacing per world axis, or one value for all.
    """
    matrix = _as_array(affine)
    rank = min(len(spatial_shape), matrix.shape[0] - 1)
    targets = [float(target_spacing)] * rank if np.isscalar(target_spacing) else [float(t) for t in target_spacing]
    targets += [targets[-1] if targets else 0.0] * (rank - len(targets))
    linear = matrix[:rank, :rank]
    total = 1
    for axis in range(len(spatial_shape)):
        size = int(spatial_shape[axis])
        if axis >= rank:
            total *= size
            continue
        spacing = float(np.linalg.norm(linear[:, axis]))
        world_axis = int(np.argmax(np.abs(linear[:, axis])))
        target = targets[world_axis]
        total *= max(1, round((size - 1) * spacing / target + 1)) if target > 0 else size
    return total
