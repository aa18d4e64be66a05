"""Decode a DICOM SEG object onto the voxel grid of a reference image, through physical space.

A SEG frame says where it lies in the patient (ImagePositionPatient, ImageOrientationPatient, PixelSpacing); it
does not have to follow the image's slice order or cover every slice, and several segments may overlap. Mapping
each frame's pixels through the reference image's affine puts them in the right voxels whatever the file order,
and checks that the SEG really lies on that grid.

Plain pydicom is used rather than highdicom so that this also works with pydicom 2.4 (highdicom >= 0.23 needs
pydicom 3); highdicom's ``get_pixels_by_source_instance`` answers a different question (frames per referenced
source instance) and needs the references, which SEGs made by other tools do not always carry.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import orientation_ras_lps
from monai.transforms import MapTransform

__all__ = ["DicomSegError", "LoadDicomSegD", "LoadDicomSegDict", "LoadDicomSegd", "seg_to_grid"]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


class DicomSegError(ValueError):
    """A DICOM SEG cannot be decoded onto the requested grid; the message names the file and the problem."""


def _frame_item(frame_group: Any, shared_group: Any, sequence: str, attribute: str, path: str, frame: int) -> Any:
    for group in (frame_group, shared_group):
        if group is not None and sequence in group and len(group[sequence].value) and attribute in group[sequence][0]:
            return group[sequence][0][attribute].value
    raise DicomSegError(f"DICOM SEG {path}: frame {frame} has no {sequence} > {attribute}")


def _unit_step(step: np.ndarray, tolerance: float) -> bool:
    rounded = np.round(step)
    return np.abs(step - rounded).max() <= tolerance and np.abs(rounded).sum() == 1


def seg_to_grid(
    seg_file: str,
    affine: np.ndarray | torch.Tensor,
    spatial_shape: Sequence[int],
    affine_is_ras: bool = True,
    grid_tolerance: float = 0.1,
    fractional_threshold: float = 0.5,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Decode ``seg_file`` onto the 3D grid described by ``affine`` and ``spatial_shape``.

    Args:
        seg_file: path of a DICOM Segmentation Storage object (BINARY or FRACTIONAL).
        affine: 4x4 voxel-to-world matrix of the reference grid, e.g. ``image.affine`` of a MetaTensor read by
            :class:`~monai_unet2.transforms.DicomSeriesReader` or MONAI's readers.
        spatial_shape: the reference grid's 3 spatial sizes.
        affine_is_ras: whether ``affine`` maps to RAS (MONAI's default) rather than DICOM's LPS.
        grid_tolerance: largest accepted distance (in voxels) between a SEG pixel centre and a grid voxel centre;
            a SEG on another raster (different spacing or orientation) is refused, resample it instead.
        fractional_threshold: FRACTIONAL segments are foreground where value / MaximumFractionalValue >= this.

    Returns:
        an ``(n_segments, *spatial_shape)`` uint8 array, one channel per segment in SegmentNumber order, and one
        dict per channel with ``number``, ``label`` and ``description`` of the segment.

    Raises:
        DicomSegError: not a SEG, unsupported segmentation type, missing geometry, a frame off the grid, or
        foreground outside the grid.
    """
    try:
        ds = pydicom.dcmread(seg_file)
    except Exception as e:
        raise DicomSegError(f"DICOM SEG {seg_file} could not be read: {e}") from e
    if str(ds.get("SOPClassUID", "")) != SEGMENTATION_STORAGE and ds.get("Modality", "") != "SEG":
        raise DicomSegError(f"{seg_file} is not a DICOM SEG (SOPClassUID {ds.get('SOPClassUID', '')})")
    seg_type = str(ds.get("SegmentationType", ""))
    if seg_type not in ("BINARY", "FRACTIONAL"):
        raise DicomSegError(
            f"DICOM SEG {seg_file}: SegmentationType {seg_type!r} is not supported (BINARY, FRACTIONAL)"
        )
    segments = sorted(
        (
            {
                "number": int(item.SegmentNumber),
                "label": str(item.get("SegmentLabel", "")),
                "description": str(item.get("SegmentDescription", "")),
            }
            for item in ds.SegmentSequence
        ),
        key=lambda s: s["number"],
    )
    channel_of = {s["number"]: i for i, s in enumerate(segments)}
    try:
        pixels = ds.pixel_array
    except Exception as e:
        raise DicomSegError(f"DICOM SEG {seg_file}: pixel data cannot be decoded: {e}") from e
    pixels = pixels.reshape(-1, int(ds.Rows), int(ds.Columns))
    if seg_type == "FRACTIONAL":
        foreground = pixels >= fractional_threshold * float(ds.MaximumFractionalValue)
    else:
        foreground = pixels > 0

    affine = np.asarray(affine, dtype=np.float64)
    to_voxel = np.linalg.inv(orientation_ras_lps(affine) if affine_is_ras else affine)
    shape = np.asarray(spatial_shape[-3:], dtype=np.int64)
    out = np.zeros((len(segments), *shape), dtype=np.uint8)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    if per_frame is None or len(per_frame) != len(pixels):
        raise DicomSegError(
            f"DICOM SEG {seg_file}: PerFrameFunctionalGroupsSequence does not describe {len(pixels)} frames"
        )

    for frame, (group, mask) in enumerate(zip(per_frame, foreground)):
        number = int(
            _frame_item(group, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber", seg_file, frame)
        )
        if number not in channel_of:
            raise DicomSegError(f"DICOM SEG {seg_file}: frame {frame} references undefined segment {number}")
        orientation = np.asarray(
            _frame_item(group, shared, "PlaneOrientationSequence", "ImageOrientationPatient", seg_file, frame), float
        )
        position = np.asarray(
            _frame_item(group, shared, "PlanePositionSequence", "ImagePositionPatient", seg_file, frame), float
        )
        row_spacing, column_spacing = (
            float(v) for v in _frame_item(group, shared, "PixelMeasuresSequence", "PixelSpacing", seg_file, frame)
        )
        origin = to_voxel[:3, :3] @ position + to_voxel[:3, 3]
        column_step = to_voxel[:3, :3] @ (orientation[:3] * column_spacing)
        row_step = to_voxel[:3, :3] @ (orientation[3:] * row_spacing)
        if not (
            np.abs(origin - np.round(origin)).max() <= grid_tolerance
            and _unit_step(column_step, grid_tolerance / max(mask.shape[1], 1))
            and _unit_step(row_step, grid_tolerance / max(mask.shape[0], 1))
        ):
            raise DicomSegError(
                f"DICOM SEG {seg_file}: frame {frame} (segment {number}, position {position.round(4).tolist()}) "
                f"does not lie on the reference grid: origin at voxel {origin.round(3).tolist()}, steps per column "
                f"{column_step.round(4).tolist()} and per row {row_step.round(4).tolist()} voxels; resample it first"
            )
        rows, columns = np.nonzero(mask)
        if rows.size == 0:
            continue
        voxels = (
            np.round(origin).astype(np.int64)[:, None]
            + np.round(column_step).astype(np.int64)[:, None] * columns[None]
            + np.round(row_step).astype(np.int64)[:, None] * rows[None]
        )
        inside = np.all((voxels >= 0) & (voxels < shape[:, None]), axis=0)
        if not inside.all():
            raise DicomSegError(
                f"DICOM SEG {seg_file}: frame {frame} (segment {number}) has {int((~inside).sum())} foreground pixels "
                f"outside the reference grid of shape {shape.tolist()}"
            )
        out[channel_of[number], voxels[0], voxels[1], voxels[2]] = 1
    return out, segments


class LoadDicomSegd(MapTransform):
    """Load DICOM SEG files onto the grid of an already loaded reference image (e.g. the CT series they annotate).

    Place it right after ``LoadImaged``/``EnsureChannelFirstd`` of the reference key, before any resampling.
    Each key's value (a SEG path) is replaced by a MetaTensor on the reference grid with the reference's affine:
    ``(n_segments, X, Y, Z)`` uint8 (one channel per segment, overlaps kept) or, with ``labelmap=True``,
    ``(1, X, Y, Z)`` holding the SegmentNumber of each voxel (overlapping segments are then an error). The meta dict
    gets ``segment_labels`` (backslash-joined, in channel order, so that it collates like any string).

    Args:
        keys: keys holding SEG file paths.
        ref_key: key of the reference image (MetaTensor with an affine; channel-first or not).
        labelmap: return one label-map channel instead of one channel per segment.
        grid_tolerance: see :func:`seg_to_grid`.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        labelmap: bool = False,
        grid_tolerance: float = 0.1,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.labelmap = labelmap
        self.grid_tolerance = grid_tolerance

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reference = d[self.ref_key]
        if not isinstance(reference, MetaTensor):
            raise TypeError(f"LoadDicomSegd needs the reference {self.ref_key!r} as a MetaTensor with an affine")
        for key in self.key_iterator(d):
            path = f"{d[key]}"
            channels, segments = seg_to_grid(
                path, reference.affine, reference.shape[-3:], grid_tolerance=self.grid_tolerance
            )
            if self.labelmap:
                overlap = int((channels.sum(axis=0) > 1).sum())
                if overlap:
                    raise DicomSegError(
                        f"DICOM SEG {path}: {overlap} voxels belong to several segments; use labelmap=False"
                    )
                numbers = np.asarray([s["number"] for s in segments], dtype=np.int16).reshape(-1, 1, 1, 1)
                channels = (channels * numbers).sum(axis=0, keepdims=True).astype(np.int16)
            meta = {"filename_or_obj": path, "segment_labels": "\\".join(s["label"] for s in segments)}
            d[key] = MetaTensor(torch.as_tensor(channels), affine=reference.affine.clone(), meta=meta)
        return d


LoadDicomSegD = LoadDicomSegDict = LoadDicomSegd
