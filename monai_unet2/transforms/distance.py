"""Signed distance maps for Kervadec's boundary loss, computed once per sample in the data pipeline.

The boundary loss (Kervadec et al., MIDL 2019) needs, for every foreground class ``c``, the signed Euclidean
distance map ``phi_c`` of the ground truth: negative inside, positive outside, zero on the boundary. The map depends
only on the label, so it belongs in the deterministic part of the data pipeline, where ``CacheDataset`` /
``PersistentDataset`` store it, and never inside the loss (MONAI's ``BoundaryLoss`` recomputes it on every step).

Definition used here (``d_in`` / ``d_out``: Euclidean distance, in physical units, to the nearest voxel of the other
side, ``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``):

- outside the object: ``phi = d_out`` (distance to the nearest object voxel);
- inside the object: ``phi = -(d_in - step)``, where ``step`` is the distance from the nearest outside voxel back
  to the object. At unit spacing ``step`` is always 1 and this is exactly Kervadec's ``-(d - 1)``: the object's
  boundary voxels get 0. With a voxel spacing the reference code keeps the literal ``1`` (mm), which makes boundary
  voxels *positive* for sub-millimetre spacing (``0.7 - 1 < 0``) and breaks the sign; ``step`` is the size of the
  actual step across the boundary, so boundary voxels stay at 0 and a spacing of ``(1, 2)`` exactly doubles the map
  along the second axis;
- an empty or a full mask has no boundary: ``phi = 0`` everywhere (not distances to the image border).

2D vs 3D maps for a 2.5D pipeline: use ``slice_axis``. A 2D network predicts one slice; the boundary loss compares
that prediction with the boundary of the object *in that slice*. A 3D map seen on a slice measures the distance to
the 3D surface, which may lie on another slice: near the top and bottom of an organ the whole in-plane error is
then discounted (the surface above is close) and the weighting no longer matches what the network sees. A 2D map
per slice is the correct one. Computing it *after* random slice sampling would put it behind the first random
transform, where no dataset cache reaches, and recompute it every time a slice is drawn. So compute the per-slice
2D maps for the whole volume *before* slicing (``slice_axis=2``), in the cached part of the pipeline, and let the
slice sampler cut ``distance_map`` along with ``label``. The per-slice maps cost the same as one 3D transform (linear
in the number of voxels), and computing-then-slicing equals slicing-then-computing exactly (tested).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep
from scipy.ndimage import distance_transform_edt

__all__ = ["SignedDistanceMapd", "signed_distance_map"]


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).ravel())
    if len(values) != ndim:
        raise ValueError(f"spacing {values} has {len(values)} values but the mask has {ndim} spatial dimensions.")
    if not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing {values} must be finite and positive.")
    return values


def signed_distance_map(
    mask: np.ndarray | torch.Tensor, spacing: Sequence[float] | None = None, slice_axis: int | None = None
) -> np.ndarray:
    """Signed distance map of one binary mask (no channel dimension), as defined in the module docstring.

    Args:
        mask: binary mask of any spatial rank; non-zero values are the object.
        spacing: voxel size along each axis of ``mask`` (physical units, e.g. mm). ``None`` means 1 everywhere.
        slice_axis: if given, compute an independent map of one dimension less for every slice along this axis
            (2D maps of a 3D volume for a 2D / 2.5D network); the spacing along that axis is then unused.

    Returns:
        float32 array of the shape of ``mask``: negative inside, positive outside, 0 on the boundary voxels, and 0
        everywhere for an empty or a full mask (per slice when ``slice_axis`` is given).
    """
    mask_np = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    mask_np = mask_np.astype(bool, copy=False)
    voxel_size = _check_spacing(spacing, mask_np.ndim)
    if slice_axis is not None:
        axis = slice_axis % mask_np.ndim
        in_plane = voxel_size[:axis] + voxel_size[axis + 1 :]
        moved = np.moveaxis(mask_np, axis, 0)
        maps = np.stack([signed_distance_map(plane, in_plane) for plane in moved])
        return np.ascontiguousarray(np.moveaxis(maps, 0, axis))

    phi = np.zeros(mask_np.shape, dtype=np.float32)
    if mask_np.size == 0 or not mask_np.any() or mask_np.all():
        return phi
    outside = ~mask_np
    distance_outside = distance_transform_edt(outside, sampling=voxel_size)
    phi[outside] = distance_outside[outside]
    if len(set(voxel_size)) == 1:
        # isotropic: the nearest outside voxel is always one voxel step from the object
        distance_inside = distance_transform_edt(mask_np, sampling=voxel_size)
        phi[mask_np] = -(distance_inside[mask_np] - voxel_size[0])
    else:
        distance_inside, nearest_outside = distance_transform_edt(mask_np, sampling=voxel_size, return_indices=True)
        step_across_boundary = distance_outside[tuple(nearest_outside)]
        phi[mask_np] = -(distance_inside[mask_np] - step_across_boundary[mask_np])
    return phi + np.float32(0.0)


class SignedDistanceMapd(MapTransform):
    """Add the per-class signed distance map of a label for the boundary loss (see the module docstring).

    Deterministic and label-only: place it after the spatial preprocessing (orientation, spacing, cropping) and
    before the first random transform so that ``CacheDataset`` / ``PersistentDataset`` store the result. Random
    spatial transforms that follow must include the output key and should keep distances: flips, rotations and
    slice sampling do; a random zoom by ``s`` leaves the map off by ``(s - 1) x distance``; elastic ones break it.

    Label layouts:

    - class indices ``(1, *spatial)`` with ``num_classes``: one channel per class ``1..num_classes-1``
      (``0..num_classes-1`` with ``include_background=True``);
    - one-hot / multi-label ``(C, *spatial)``, ``C > 1``, ``num_classes=None``: one channel per input channel,
      channel 0 (background) dropped unless ``include_background=True``;
    - binary ``(1, *spatial)`` with values 0/1 and ``num_classes=None``: one channel.

    The output channel order matches the prediction channels that ``DiceCEBoundaryLoss`` uses for the boundary
    term. The voxel spacing comes from ``spacing`` if given, else from ``data[spacing_key]``, else from the label's
    ``MetaTensor.pixdim`` (its affine), else 1.

    Args:
        keys: label key(s).
        output_key: key(s) for the maps, one per key; defaults to ``"distance_map"``.
        num_classes: number of classes of a class-index label (including background).
        include_background: keep a map for class / channel 0.
        spacing: explicit voxel spacing of the label's spatial axes; overrides the metadata.
        spacing_key: key of a per-sample spacing (sequence of floats) in the data dictionary.
        slice_axis: spatial axis (0-based, channel excluded) along which to compute independent 2D maps of a 3D
            label, for 2D / 2.5D networks; ``None`` computes maps in the label's full dimensionality.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        output_key: str | Sequence[str] = "distance_map",
        num_classes: int | None = None,
        include_background: bool = False,
        spacing: Sequence[float] | None = None,
        spacing_key: str | None = None,
        slice_axis: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = ensure_tuple_rep(output_key, len(self.keys))
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background + one class), got {num_classes}.")
        self.num_classes = num_classes
        self.include_background = include_background
        self.spacing = spacing
        self.spacing_key = spacing_key
        self.slice_axis = slice_axis

    def _spacing(self, data: Mapping, label: np.ndarray | torch.Tensor, key: Hashable) -> Sequence[float] | None:
        spatial_ndim = label.ndim - 1
        if self.spacing is not None:
            return self.spacing
        if self.spacing_key is not None:
            if self.spacing_key not in data:
                raise KeyError(f"spacing_key '{self.spacing_key}' is not in the data for label '{key}'.")
            return np.asarray(data[self.spacing_key], dtype=np.float64).ravel()[:spatial_ndim]
        if isinstance(label, MetaTensor):
            return label.pixdim.detach().cpu().numpy()[:spatial_ndim]
        return None

    def _masks(self, label: np.ndarray, key: Hashable) -> np.ndarray:
        if self.num_classes is not None:
            if label.shape[0] != 1:
                raise ValueError(
                    f"label '{key}' has {label.shape[0]} channels; with num_classes a class-index label (1, *spatial)"
                    " is expected."
                )
            values = np.unique(label)
            if values.min() < 0 or values.max() >= self.num_classes or not np.all(values == np.round(values)):
                raise ValueError(f"label '{key}' has values {values.tolist()}, outside 0..{self.num_classes - 1}.")
            first = 0 if self.include_background else 1
            return np.stack([label[0] == c for c in range(first, self.num_classes)])
        if label.shape[0] == 1:
            values = np.unique(label)
            if not np.isin(values, (0, 1)).all():
                raise ValueError(
                    f"label '{key}' is single-channel with values {values.tolist()[:10]}: a binary mask must be 0/1;"
                    " pass num_classes for a class-index label."
                )
            return label > 0
        return label[(0 if self.include_background else 1) :] > 0.5

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, output_key in self.key_iterator(d, self.output_keys):
            label = d[key]
            if label.ndim < 3:
                raise ValueError(f"label '{key}' must be channel-first (C, *spatial); got shape {tuple(label.shape)}.")
            spacing = self._spacing(d, label, key)
            label_np = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
            masks = self._masks(label_np, key)
            if self.slice_axis is not None and not -masks.ndim + 1 <= self.slice_axis < masks.ndim - 1:
                raise ValueError(f"slice_axis {self.slice_axis} is out of range for label '{key}' {label_np.shape}.")
            maps = np.stack([signed_distance_map(m, spacing, self.slice_axis) for m in masks])
            out = torch.from_numpy(maps)
            if isinstance(label, MetaTensor):
                out = MetaTensor(out, meta=label.meta)  # the meta holds the affine: passing both warns
            d[output_key] = out
        return d
