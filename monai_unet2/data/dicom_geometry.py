"""Where the pixels of a DICOM frame lie on a voxel grid: the geometry shared by series reading, SEG reading and SEG
writing.

A DICOM frame (an image slice, or a SEG frame) says where it lies in the patient: ImagePositionPatient (the centre of
its first pixel), ImageOrientationPatient (the directions of its rows and columns) and PixelSpacing, all in LPS mm.
A MONAI array says where its voxels lie through its affine (RAS by default). Mapping the frame's pixels through both
puts them in the right voxels whatever the file order, and shows whether the frame lies on the grid at all. Nothing in
pydicom, highdicom or MONAI answers "which voxels of this array does this frame cover": highdicom's SEG class maps
frames to source instances, not to an array, and MONAI's readers only build the affine.

The two directions, grid to frames (SEG writing: :func:`frames_on_source_grid`) and frames to grid (SEG reading,
:func:`~monai_unet2.data.dicom_seg.seg_to_grid`), both go through :func:`place_frame`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from monai.data.utils import orientation_ras_lps

__all__ = [
    "DicomSegError",
    "FramePlacement",
    "frames_on_source_grid",
    "functional_value",
    "pixel_steps",
    "place_frame",
    "world_to_voxel",
]

logger = logging.getLogger(__name__)


class DicomSegError(ValueError):
    """A DICOM SEG cannot be decoded onto a grid, or made from a prediction; the message names the file and why."""


def functional_value(frame_group: Any, shared_group: Any, sequence: str, attribute: str) -> Any:
    """The value of ``attribute`` for one frame of a multi-frame object (enhanced image or SEG), or ``None``.

    DICOM PS3.3 C.7.6.16: a functional group macro (``sequence``, e.g. ``PlanePositionSequence``) holds its values in
    the frame's item of PerFrameFunctionalGroupsSequence or, when they are the same for all frames, in
    SharedFunctionalGroupsSequence; the per-frame item wins.

    Args:
        frame_group: the frame's item of PerFrameFunctionalGroupsSequence (or ``None``).
        shared_group: the item of SharedFunctionalGroupsSequence (or ``None``).
        sequence: the functional group macro's sequence keyword.
        attribute: the attribute inside it, e.g. ``ImagePositionPatient``.
    """
    for group in (frame_group, shared_group):
        if group is not None and sequence in group and len(group[sequence].value) and attribute in group[sequence][0]:
            return group[sequence][0][attribute].value
    return None


def pixel_steps(orientation: Sequence[float], pixel_spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The world (LPS mm) displacement of one step along a frame's columns and one step along its rows.

    Args:
        orientation: ImageOrientationPatient, the row direction (towards increasing column index) then the column
            direction (towards increasing row index).
        pixel_spacing: DICOM's PixelSpacing, (row spacing, column spacing) in mm.

    Returns:
        the step per column index and the step per row index, the first two columns of the frame's affine.
    """
    orientation = np.asarray(orientation, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in pixel_spacing)
    return orientation[:3] * column_spacing, orientation[3:] * row_spacing


def world_to_voxel(affine: np.ndarray, affine_is_ras: bool = True) -> np.ndarray:
    """The 4x4 matrix from DICOM's LPS world coordinates to the voxel indices of a grid with ``affine``.

    Args:
        affine: voxel-to-world matrix of the grid (e.g. a MetaTensor's ``affine``).
        affine_is_ras: ``affine`` maps to RAS (MONAI's default) rather than DICOM's LPS.
    """
    affine = np.asarray(affine, dtype=np.float64)
    return np.linalg.inv(orientation_ras_lps(affine) if affine_is_ras else affine)


def _unit_step(step: np.ndarray, tolerance: float) -> bool:
    rounded = np.round(step)
    return bool(np.abs(step - rounded).max() <= tolerance and np.abs(rounded).sum() == 1)


@dataclass
class FramePlacement:
    """A frame seen from a voxel grid: the voxel coordinates of its first pixel and of one step along its columns
    and rows (fractional; on the grid they are integers, each step one voxel along one axis)."""

    origin: np.ndarray
    column_step: np.ndarray
    row_step: np.ndarray

    def on_grid(self, rows: int, columns: int, tolerance: float) -> bool:
        """Whether every pixel centre of a ``rows x columns`` frame lies within ``tolerance`` voxels of a voxel
        centre, one voxel apart along one array axis per pixel step."""
        return bool(
            np.abs(self.origin - np.round(self.origin)).max() <= tolerance
            and _unit_step(self.column_step, tolerance / max(columns, 1))
            and _unit_step(self.row_step, tolerance / max(rows, 1))
        )

    @property
    def start(self) -> np.ndarray:
        """The voxel of the first pixel."""
        return np.round(self.origin).astype(np.int64)

    @property
    def column_index_step(self) -> np.ndarray:
        """The voxel index step per column (one axis +-1)."""
        return np.round(self.column_step).astype(np.int64)

    @property
    def row_index_step(self) -> np.ndarray:
        """The voxel index step per row (one axis +-1)."""
        return np.round(self.row_step).astype(np.int64)

    def voxels(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Voxel indices ``(3, *shape)`` of the pixels at ``rows`` and ``columns`` (broadcast to one ``shape``)."""
        rows, columns = np.asarray(rows), np.asarray(columns)
        expand = (slice(None),) + (None,) * np.broadcast(rows, columns).ndim
        return (
            self.start[expand]
            + self.column_index_step[expand] * columns[None]
            + self.row_index_step[expand] * rows[None]
        )


def place_frame(
    to_voxel: np.ndarray, position: Sequence[float], orientation: Sequence[float], pixel_spacing: Sequence[float]
) -> FramePlacement:
    """Where a frame with this ImagePositionPatient, ImageOrientationPatient and PixelSpacing lies on a grid.

    Args:
        to_voxel: the grid's LPS world-to-voxel matrix, see :func:`world_to_voxel`.
        position: ImagePositionPatient of the frame.
        orientation: ImageOrientationPatient of the frame.
        pixel_spacing: PixelSpacing of the frame.
    """
    column_world, row_world = pixel_steps(orientation, pixel_spacing)
    return FramePlacement(
        origin=to_voxel[:3, :3] @ np.asarray(position, dtype=np.float64) + to_voxel[:3, 3],
        column_step=to_voxel[:3, :3] @ column_world,
        row_step=to_voxel[:3, :3] @ row_world,
    )


def frames_on_source_grid(
    label_map: np.ndarray,
    affine: np.ndarray,
    sources: Sequence[pydicom.Dataset],
    affine_is_ras: bool = True,
    preferred_uids: Sequence[str] = (),
    grid_tolerance: float = 0.1,
    folder: str = "",
) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """Cut ``label_map`` into one ``(Rows, Columns)`` frame per source slice, through physical space.

    Args:
        label_map: the 3D label map, axes as in ``affine``.
        affine: voxel-to-world matrix of ``label_map``.
        sources: slice headers, e.g. from :func:`~monai_unet2.data.dicom_seg.read_source_slices`.
        affine_is_ras: ``affine`` maps to RAS (MONAI's default) rather than DICOM's LPS.
        preferred_uids: when two slices lie at the same position, keep the one listed here (the slice the reader
            used), else the one with the lowest InstanceNumber.
        grid_tolerance: largest accepted offset, in voxels, between a source pixel centre and a voxel centre.
        folder: the source folder, for messages.

    Returns:
        ``(n_frames, Rows, Columns)`` frames and their source headers, in slice order.

    Raises:
        DicomSegError: no source slice lies on the label map's grid, or foreground voxels lie on no slice.
    """
    to_voxel = world_to_voxel(affine, affine_is_ras)
    shape = np.asarray(label_map.shape, dtype=np.int64)
    if label_map.ndim != 3:
        raise DicomSegError(f"DICOM SEG for {folder}: the label map must be 3D, got shape {label_map.shape}")
    preferred = set(preferred_uids)
    on_grid: dict[tuple, tuple[pydicom.Dataset, np.ndarray]] = {}  # grid position -> (header, frame)
    off_grid: list[str] = []
    for ds in sources:
        rows, columns = int(ds.Rows), int(ds.Columns)
        placement = place_frame(to_voxel, ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing)
        if not placement.on_grid(rows, columns, grid_tolerance):
            off_grid.append(f"{ds.SOPInstanceUID} (origin at voxel {placement.origin.round(3).tolist()})")
            continue
        corners = placement.voxels(np.array([0, rows - 1, 0, rows - 1]), np.array([0, 0, columns - 1, columns - 1]))
        if not np.all((corners >= 0) & (corners < shape[:, None])):
            off_grid.append(f"{ds.SOPInstanceUID} (extends outside the array of shape {shape.tolist()})")
            continue
        key = (
            tuple(placement.start[::-1]),
            tuple(placement.column_index_step),
            tuple(placement.row_index_step),
        )
        if key in on_grid:
            kept = on_grid[key][0]
            rank = (ds.SOPInstanceUID not in preferred, int(ds.get("InstanceNumber", 0) or 0))
            if rank >= (kept.SOPInstanceUID not in preferred, int(kept.get("InstanceNumber", 0) or 0)):
                continue
        voxels = placement.voxels(np.arange(rows)[:, None], np.arange(columns)[None, :])
        on_grid[key] = (ds, label_map[voxels[0], voxels[1], voxels[2]])
    if not on_grid:
        raise DicomSegError(
            f"DICOM SEG for {folder}: none of its {len(sources)} slices lies on the prediction's grid "
            f"(shape {shape.tolist()}), e.g. {off_grid[0]}; the prediction must be in the input's space (Invertd)"
        )
    if off_grid:
        logger.info("DICOM SEG for %s: %d source slices off the prediction grid skipped", folder, len(off_grid))
    ordered = [on_grid[key] for key in sorted(on_grid)]
    frames = np.stack([frame for _, frame in ordered])
    lost = int(np.count_nonzero(label_map)) - int(np.count_nonzero(frames))
    if lost:
        raise DicomSegError(
            f"DICOM SEG for {folder}: {lost} foreground voxels lie on no source slice of the series "
            f"({len(ordered)} slices on the grid of shape {shape.tolist()})"
        )
    return frames, [ds for ds, _ in ordered]
