"""Content checks for loaded volumes: a clear error naming the file for volumes that would train or infer on
garbage.

NaN/Inf intensities, a 4D (time series or multi-component) file where a 3D volume is expected, zero-size dimensions,
a label on another grid than its image, label values outside the label set: MONAI, nibabel and SimpleITK load such
files without complaint and the pipeline carries on (NaN losses, a misaligned label, a crash in one-hot encoding much
later). :class:`CheckVolumed` checks them right after ``EnsureChannelFirstd`` and raises
:class:`~monai_unet2.data.VolumeFileError` naming the file(s) and what is wrong. nnU-Net's dataset-integrity check
tests the same things offline; nothing in MONAI does it inside a pipeline. Files that cannot be read at all are the
loader's to report (:class:`~monai_unet2.transforms.SafeLoadImaged`).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from monai_unet2.data.affines import grid_distance_mm
from monai_unet2.data.volumes import VolumeFileError

__all__ = ["CheckVolumeD", "CheckVolumeDict", "CheckVolumed", "grid_distance_mm"]

logger = logging.getLogger(__name__)

NONFINITE_POLICIES = (False, "zero")


def _filename(value: Any, key: Hashable) -> str:
    meta = getattr(value, "meta", None)
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return str(name) if name else f"<{key}: no file name in metadata>"


class CheckVolumed(MapTransform):
    """Refuse volumes that would silently train or infer on garbage, with a ``VolumeFileError`` naming the file.

    Place it right after ``LoadImaged`` + ``EnsureChannelFirstd`` (arrays are channel-first ``(C, *spatial)``
    ``MetaTensor``\\ s carrying ``filename_or_obj`` and ``affine``). For every key it checks, in order:

    1. no zero-size dimension (nibabel loads a ``36 x 0 x 38`` volume as an empty array without complaint);
    2. ``expected_spatial_dims`` spatial dimensions and ``expected_channels`` channels. ``EnsureChannelFirstd``
       turns a 4D NIfTI (x, y, z, t) into ``(t, x, y, z)``: a 4D file shows up as too many channels, a 5D one
       (x, y, z, 1, c) as an extra dimension;
    3. finite intensities: NaN/Inf are an error, or with ``allow_nonfinite="zero"`` are replaced by 0 and logged
       (a documented tolerance for scanners that write NaN outside the field of view);
    4. for ``label_key``: every value is in ``expected_labels`` (the message lists the unexpected values and their
       voxel counts);
    5. every spatial size is at least ``min_spatial_size`` (a 1 x 1 image is no fundus photograph: the network would
       segment padding).

    Then every other key must share the geometry of ``reference_key``: the same spatial shape, and affines that put
    every voxel within ``affine_tolerance`` (mm) of the same place (see :func:`grid_distance_mm`).

    The transform does not change geometry, so ``Invertd`` is unaffected.

    Args:
        keys: keys to check (e.g. ``("image", "label")``; ``"image"`` alone for inference).
        label_key: the key holding the label map, or ``None`` when there is none.
        expected_labels: the allowed label values (e.g. ``[0, 1, 2]``); ``None`` skips the label-value check.
        allow_nonfinite: ``False`` (NaN/Inf is an error) or ``"zero"`` (replace with 0 and log a warning).
        expected_spatial_dims: number of spatial dimensions (3 for volumes, 2 for images); ``None`` skips the check.
        expected_channels: channels per key after ``EnsureChannelFirstd``: one int for all keys, one per key, or
            ``None`` to skip.
        affine_tolerance: largest allowed distance in mm between where two keys' affines put the same voxel.
        reference_key: the key whose geometry the others must match; default the first key that is not the label.
        min_spatial_size: the smallest accepted size per spatial axis (one int for all axes, or one per axis with
            ``None`` or 0 for "any"); ``None`` skips the check.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        label_key: str | None = "label",
        expected_labels: Sequence[float] | None = None,
        allow_nonfinite: bool | str = False,
        expected_spatial_dims: int | None = 3,
        expected_channels: int | Sequence[int | None] | None = 1,
        affine_tolerance: float = 1e-3,
        reference_key: str | None = None,
        min_spatial_size: int | Sequence[int | None] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if allow_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"allow_nonfinite must be one of {NONFINITE_POLICIES}, got {allow_nonfinite!r}")
        if affine_tolerance < 0:
            raise ValueError(f"affine_tolerance must be >= 0 mm, got {affine_tolerance}")
        self.label_key = label_key
        self.expected_labels = None if expected_labels is None else sorted(float(v) for v in expected_labels)
        self.allow_nonfinite = allow_nonfinite
        self.expected_spatial_dims = expected_spatial_dims
        self.expected_channels = ensure_tuple_rep(expected_channels, len(self.keys))
        self.affine_tolerance = float(affine_tolerance)
        if reference_key is None:
            reference_key = next((key for key in self.keys if key != label_key), self.keys[0])
        self.reference_key = reference_key
        self.min_spatial_size = min_spatial_size

    def _check_shape(self, array: torch.Tensor, name: str, channels: int | None) -> None:
        meta = getattr(array, "meta", {})
        header_shape = meta.get("spatial_shape") if isinstance(meta, Mapping) else None
        if array.numel() == 0 or 0 in tuple(array.shape):
            shape = tuple(int(s) for s in header_shape) if header_shape is not None else tuple(array.shape)
            raise VolumeFileError(f"{name}: zero-size dimension, shape {shape}: the file holds no voxels")
        shape = tuple(array.shape)
        if self.expected_spatial_dims is not None and len(shape) - 1 != self.expected_spatial_dims:
            raise VolumeFileError(
                f"{name}: expected a {self.expected_spatial_dims}D volume, got {len(shape) - 1} spatial dimensions "
                f"(channel-first array shape {shape}); a {len(shape)}D file where "
                f"{self.expected_spatial_dims}D is expected"
            )
        if channels is not None and shape[0] != channels:
            hint = ""
            if self.expected_spatial_dims == 3 and len(shape) == 4:
                hint = f"; a 4D file (time series or multi-component, {shape[0]} volumes) where a 3D volume is expected"
            raise VolumeFileError(
                f"{name}: expected {channels} channel(s), got {shape[0]} (channel-first array shape {shape}){hint}"
            )

    def _check_size(self, array: torch.Tensor, name: str) -> None:
        if self.min_spatial_size is None:
            return
        spatial = tuple(int(s) for s in array.shape[1:])
        minimum = ensure_tuple_rep(self.min_spatial_size, len(spatial))
        if any(m and size < m for size, m in zip(spatial, minimum)):
            wanted = " x ".join(str(m) if m else "any" for m in minimum)
            raise VolumeFileError(
                f"{name}: too small to segment: spatial size {' x '.join(map(str, spatial))}, the network needs at "
                f"least {wanted} (min_spatial_size)"
            )

    def _check_finite(self, array: torch.Tensor, name: str) -> torch.Tensor:
        if not torch.is_floating_point(array) and not torch.is_complex(array):
            return array
        finite = torch.isfinite(array)
        if bool(finite.all()):
            return array
        n_nan = int(torch.isnan(array).sum())
        n_inf = int((~finite).sum()) - n_nan
        summary = f"{n_nan} NaN and {n_inf} Inf voxels of {array.numel()}"
        if self.allow_nonfinite == "zero":
            logger.warning(f"{name}: {summary} replaced by 0 (allow_nonfinite='zero').")
            return array.masked_fill(~finite, 0)
        raise VolumeFileError(f"{name}: {summary}; fix the file or pass allow_nonfinite='zero' to replace them with 0")

    def _check_labels(self, array: torch.Tensor, name: str) -> None:
        if self.expected_labels is None:
            return
        values, counts = torch.unique(array, return_counts=True)
        allowed = torch.tensor(self.expected_labels, dtype=torch.float64)
        outside = ~torch.isin(values.to(torch.float64), allowed)
        if bool(outside.any()):
            shown = 5  # an image given as a label has thousands of values: name the count, show a few
            outside_values, outside_counts = values[outside].tolist(), counts[outside].tolist()
            found = ", ".join(
                f"{_format_value(v)} ({int(c)} voxels)" for v, c in zip(outside_values[:shown], outside_counts[:shown])
            )
            if len(outside_values) > shown:
                found = f"{len(outside_values)} values, e.g. {found}, ..."
            expected = ", ".join(_format_value(v) for v in self.expected_labels)
            raise VolumeFileError(f"{name}: label values outside the expected set {{{expected}}}: {found}")

    def _check_geometry(self, reference: torch.Tensor, other: torch.Tensor, key: Hashable) -> None:
        ref_name, other_name = _filename(reference, self.reference_key), _filename(other, key)
        ref_shape, other_shape = tuple(reference.shape[1:]), tuple(other.shape[1:])
        if ref_shape != other_shape:
            raise VolumeFileError(
                f"{other_name} ({key}) and {ref_name} ({self.reference_key}) have different grids: "
                f"spatial shape {other_shape} vs {ref_shape}"
            )
        ref_affine, other_affine = getattr(reference, "affine", None), getattr(other, "affine", None)
        if ref_affine is None or other_affine is None:
            return
        distance = grid_distance_mm(ref_affine, other_affine, ref_shape)
        if distance > self.affine_tolerance:
            raise VolumeFileError(
                f"{other_name} ({key}) and {ref_name} ({self.reference_key}) have different geometry: their affines "
                f"place the same voxel up to {distance:.4g} mm apart (tolerance {self.affine_tolerance:g} mm)"
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, channels in self.key_iterator(d, self.expected_channels):
            array = d[key]
            if not isinstance(array, torch.Tensor):
                raise TypeError(
                    f"{type(self).__name__}: '{key}' must be a tensor (after LoadImaged), got {type(array).__name__}"
                )
            name = _filename(array, key)
            self._check_shape(array, name, channels)
            self._check_size(array, name)
            d[key] = self._check_finite(array, name)
            if key == self.label_key:
                self._check_labels(d[key], name)
        if self.reference_key in d:
            for key in self.key_iterator(d):
                if key != self.reference_key:
                    self._check_geometry(d[self.reference_key], d[key], key)
        return d


def _format_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


CheckVolumeD = CheckVolumeDict = CheckVolumed
