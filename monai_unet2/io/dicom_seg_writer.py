"""Encode a label map that lies on a DICOM series' grid as a DICOM SEG referencing that series.

highdicom builds the SEG (modules, functional groups, bit packing, references); what it cannot do is decide which
voxels of a MONAI array belong to which source slice. MONAI arrays are in RAS with readers that may sort, flip or
drop slices differently, so this module maps every source slice's pixels into the label map through the physical
geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing against the array's affine) instead of trusting
slice indices, and refuses a grid that does not match. The reverse mapping is
:func:`monai_unet2.transforms.dicom_seg.seg_to_grid`.

Anonymised series sometimes carry empty UIDs in the data set (only the file meta keeps SOPInstanceUID); the in-memory
copies of the source headers are repaired before highdicom sees them, see :func:`read_source_slices`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pydicom
from monai.data.utils import orientation_ras_lps
from pydicom.uid import generate_uid

__all__ = [
    "DicomSegWriteError",
    "build_dicom_seg",
    "frames_on_source_grid",
    "highdicom_available",
    "import_highdicom",
    "read_source_slices",
    "segment_names",
]

logger = logging.getLogger(__name__)

_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


class DicomSegWriteError(ValueError):
    """A DICOM SEG cannot be made for this prediction; the message names the source folder and the problem."""


def import_highdicom() -> Any:
    """The highdicom module, or an ImportError that says how to install it (the `dicom-seg` extra)."""
    try:
        import highdicom
    except ImportError as err:
        raise ImportError(
            "DICOM SEG output needs highdicom, which is not installed: pip install 'monai-unet2[dicom-seg]'"
        ) from err
    return highdicom


def highdicom_available() -> bool:
    """Whether DICOM SEG output can be written (highdicom importable)."""
    try:
        import_highdicom()
    except ImportError:
        return False
    return True


def _source_folder(source: str | os.PathLike) -> str:
    path = os.path.normpath(os.fspath(source))
    return path if os.path.isdir(path) else os.path.dirname(path)


def _repair(ds: pydicom.Dataset, path: str) -> pydicom.Dataset:
    """Fill what anonymisers blank out and highdicom requires, from the file meta or deterministic UIDs."""
    file_meta = getattr(ds, "file_meta", None) or {}
    if not ds.get("SOPInstanceUID") and file_meta.get("MediaStorageSOPInstanceUID"):
        ds.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    if not ds.get("SOPClassUID") and file_meta.get("MediaStorageSOPClassUID"):
        ds.SOPClassUID = file_meta.MediaStorageSOPClassUID
    if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
        del ds.SpecificCharacterSet
    for missing in ("SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID"):
        if not ds.get(missing):
            raise DicomSegWriteError(f"DICOM file {path} has no {missing}; a DICOM SEG cannot reference it")
    for blank in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(blank):
            setattr(ds, blank, generate_uid(entropy_srcs=[str(ds.FrameOfReferenceUID), blank]))
    return ds


def read_source_slices(source: str | os.PathLike, series_uid: str | None = None) -> list[pydicom.Dataset]:
    """Headers (no pixel data) of the single-frame image slices of one series in a folder.

    Empty SOPInstanceUID / SOPClassUID are taken from the file meta; empty StudyInstanceUID / SeriesInstanceUID
    get a UID derived from the FrameOfReferenceUID (the same for every slice, logged); an empty
    SpecificCharacterSet is dropped. Only the in-memory copies change.

    Args:
        source: the series folder, or one file in it.
        series_uid: keep slices of this SeriesInstanceUID (compared before repair, so ``""`` selects slices with an
            empty one); ``None`` keeps all image slices.

    Raises:
        DicomSegWriteError: no image slices of the series in the folder.
    """
    folder = _source_folder(source)
    if not os.path.isdir(folder):
        raise DicomSegWriteError(f"DICOM source folder {folder} does not exist")
    slices = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(entry.path, stop_before_pixels=True)
        except Exception:  # not DICOM or unreadable: the reader already decided about such files
            logger.debug("DICOM SEG source %s: skipping unreadable %s", folder, entry.name)
            continue
        if any(attr not in ds for attr in _GEOMETRY) or int(ds.get("NumberOfFrames", 1) or 1) > 1:
            continue
        if series_uid is not None and str(ds.get("SeriesInstanceUID", "") or "") != series_uid:
            continue
        slices.append((entry.path, ds))
    if not slices:
        which = f"series {series_uid!r}" if series_uid is not None else "any series"
        raise DicomSegWriteError(f"DICOM source folder {folder} holds no single-frame image slices of {which}")
    blanks = [b for b in ("StudyInstanceUID", "SeriesInstanceUID") if not slices[0][1].get(b)]
    if blanks:
        logger.warning("DICOM source folder %s: empty %s, the SEG uses derived UIDs", folder, ", ".join(blanks))
    return [_repair(ds, path) for path, ds in slices]


def _unit_step(step: np.ndarray, tolerance: float) -> bool:
    rounded = np.round(step)
    return bool(np.abs(step - rounded).max() <= tolerance and np.abs(rounded).sum() == 1)


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
        sources: slice headers, e.g. from :func:`read_source_slices`.
        affine_is_ras: ``affine`` maps to RAS (MONAI's default) rather than DICOM's LPS.
        preferred_uids: when two slices lie at the same position, keep the one listed here (the slice the reader
            used), else the one with the lowest InstanceNumber.
        grid_tolerance: largest accepted offset, in voxels, between a source pixel centre and a voxel centre.
        folder: the source folder, for messages.

    Returns:
        ``(n_frames, Rows, Columns)`` frames and their source headers, in slice order.

    Raises:
        DicomSegWriteError: no source slice lies on the label map's grid, or foreground voxels lie on no slice.
    """
    affine = np.asarray(affine, dtype=np.float64)
    to_voxel = np.linalg.inv(orientation_ras_lps(affine) if affine_is_ras else affine)
    shape = np.asarray(label_map.shape, dtype=np.int64)
    if label_map.ndim != 3:
        raise DicomSegWriteError(f"DICOM SEG for {folder}: the label map must be 3D, got shape {label_map.shape}")
    preferred = set(preferred_uids)
    on_grid: dict[tuple, tuple[pydicom.Dataset, np.ndarray]] = {}  # grid position -> (header, frame)
    off_grid: list[str] = []
    for ds in sources:
        rows, columns = int(ds.Rows), int(ds.Columns)
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        origin = to_voxel[:3, :3] @ np.asarray(ds.ImagePositionPatient, dtype=np.float64) + to_voxel[:3, 3]
        column_step = to_voxel[:3, :3] @ (orientation[:3] * column_spacing)
        row_step = to_voxel[:3, :3] @ (orientation[3:] * row_spacing)
        start = np.round(origin).astype(np.int64)
        steps_ok = _unit_step(column_step, grid_tolerance / columns) and _unit_step(row_step, grid_tolerance / rows)
        if not (np.abs(origin - start).max() <= grid_tolerance and steps_ok):
            off_grid.append(f"{ds.SOPInstanceUID} (origin at voxel {origin.round(3).tolist()})")
            continue
        col_index, row_index = np.round(column_step).astype(np.int64), np.round(row_step).astype(np.int64)
        corners = [start + col_index * c + row_index * r for c in (0, columns - 1) for r in (0, rows - 1)]
        if not all(np.all((corner >= 0) & (corner < shape)) for corner in corners):
            off_grid.append(f"{ds.SOPInstanceUID} (extends outside the array of shape {shape.tolist()})")
            continue
        key = (tuple(start[::-1]), tuple(col_index), tuple(row_index))
        if key in on_grid:
            kept = on_grid[key][0]
            rank = (ds.SOPInstanceUID not in preferred, int(ds.get("InstanceNumber", 0) or 0))
            if rank >= (kept.SOPInstanceUID not in preferred, int(kept.get("InstanceNumber", 0) or 0)):
                continue
        voxels = (
            start[:, None, None]
            + col_index[:, None, None] * np.arange(columns)[None, None, :]
            + row_index[:, None, None] * np.arange(rows)[None, :, None]
        )
        on_grid[key] = (ds, label_map[voxels[0], voxels[1], voxels[2]])
    if not on_grid:
        raise DicomSegWriteError(
            f"DICOM SEG for {folder}: none of its {len(sources)} slices lies on the prediction's grid "
            f"(shape {shape.tolist()}), e.g. {off_grid[0]}; the prediction must be in the input's space (Invertd)"
        )
    if off_grid:
        logger.info("DICOM SEG for %s: %d source slices off the prediction grid skipped", folder, len(off_grid))
    ordered = [on_grid[key] for key in sorted(on_grid)]
    frames = np.stack([frame for _, frame in ordered])
    lost = int(np.count_nonzero(label_map)) - int(np.count_nonzero(frames))
    if lost:
        raise DicomSegWriteError(
            f"DICOM SEG for {folder}: {lost} foreground voxels lie on no source slice of the series "
            f"({len(ordered)} slices on the grid of shape {shape.tolist()})"
        )
    return frames, [ds for ds, _ in ordered]


def segment_names(label_names: Mapping[Any, str] | Sequence[str] | None, max_label: int) -> dict[int, str]:
    """Segment number -> label for numbers 1..max(max_label, largest named label); background (0) is dropped.

    ``label_names`` may be a bundle ``channel_def`` (``{"0": "background", "1": "liver"}``) or a list indexed by
    label value; unnamed labels are called ``label_<n>``.
    """
    if label_names is None:
        named: dict[int, str] = {}
    elif isinstance(label_names, Mapping):
        named = {int(k): str(v) for k, v in label_names.items()}
    else:
        named = dict(enumerate(str(v) for v in label_names))
    count = max([max_label, 1, *named.keys()])
    return {n: named.get(n, f"label_{n}") for n in range(1, count + 1)}


def build_dicom_seg(
    label_map: np.ndarray,
    affine: np.ndarray,
    source: str | os.PathLike,
    label_names: Mapping[Any, str] | Sequence[str] | None = None,
    series_uid: str | None = None,
    preferred_uids: Sequence[str] = (),
    affine_is_ras: bool = True,
    series_description: str = "Segmentation",
    series_number: int = 300,
    algorithm_name: str = "monai_unet2",
    algorithm_version: str | None = None,
) -> pydicom.Dataset:
    """A BINARY DICOM SEG of ``label_map`` referencing the series it was predicted from.

    One frame per source slice and segment holding foreground (all frames when nothing is segmented), with
    ReferencedSeriesSequence, per-frame DerivationImage / ReferencedSOPInstanceUID and PlanePosition, shared
    PlaneOrientation / PixelMeasures, the source's Study, Patient and FrameOfReferenceUID, and one segment per
    label value (category and type "Tissue", algorithm type AUTOMATIC).

    Args:
        label_map: 3D integer label map on the source grid (values = segment numbers, 0 = background).
        affine: voxel-to-world matrix of ``label_map``.
        source: the series folder (or a file in it).
        label_names: segment labels, see :func:`segment_names`.
        series_uid: SeriesInstanceUID of the source series in a folder holding several.
        preferred_uids: the SOPInstanceUIDs the reader used (``sop_instance_uids`` of the meta), for duplicates.
        affine_is_ras: ``affine`` maps to RAS rather than LPS.
        series_description: SeriesDescription of the SEG.
        series_number: SeriesNumber of the SEG.
        algorithm_name: AlgorithmName (and ManufacturerModelName) recorded in the SEG.
        algorithm_version: AlgorithmVersion; default: the monai_unet2 version.

    Raises:
        ImportError: highdicom is not installed.
        DicomSegWriteError: the grid does not match the series, or highdicom refuses the sources.
    """
    hd = import_highdicom()
    from pydicom.sr.codedict import codes

    from monai_unet2 import __version__

    folder = _source_folder(source)
    values = np.asarray(label_map)
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint16).max):
        raise DicomSegWriteError(f"DICOM SEG for {folder}: label values must lie in 0..65535")
    sources = read_source_slices(folder, series_uid)
    frames, used = frames_on_source_grid(values, affine, sources, affine_is_ras, preferred_uids, folder=folder)
    names = segment_names(label_names, int(frames.max()) if frames.size else 0)
    frames = frames.astype(np.uint8 if len(names) <= 255 else np.uint16)
    version = algorithm_version or __version__
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm,
        )
        for number, label in names.items()
    ]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*omit_empty_frames.*")
            return hd.seg.Segmentation(
                source_images=used,
                pixel_array=frames,
                segmentation_type="BINARY",
                segment_descriptions=descriptions,
                series_instance_uid=generate_uid(),
                series_number=series_number,
                sop_instance_uid=generate_uid(),
                instance_number=1,
                manufacturer="monai_unet2",
                manufacturer_model_name=algorithm_name[:64],
                software_versions=f"monai_unet2 {__version__}",
                device_serial_number="0",
                series_description=series_description[:64],
            )
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        raise DicomSegWriteError(f"DICOM SEG for {folder}: highdicom refused the source series: {err}") from err
