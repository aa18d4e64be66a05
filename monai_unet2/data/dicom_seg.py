"""DICOM SEG, read and written: decode a SEG onto the voxel grid of a reference image, and encode a label map that
lies on a DICOM series' grid as a SEG referencing that series.

Reading (:func:`seg_to_grid`): a SEG frame says where it lies in the patient; it does not have to follow the image's
slice order or cover every slice, and several segments may overlap. Mapping each frame's pixels through the
reference image's affine (:mod:`~monai_unet2.data.dicom_geometry`) puts them in the right voxels whatever the file
order, and checks that the SEG really lies on that grid. Plain pydicom is used rather than highdicom so that this
also works with pydicom 2.4 (highdicom >= 0.23 needs pydicom 3); highdicom's ``get_pixels_by_source_instance``
answers a different question (frames per referenced source instance) and needs the references, which SEGs made by
other tools do not always carry.

Writing (:func:`build_dicom_seg`): highdicom builds the SEG (modules, functional groups, bit packing, references);
what it cannot do is decide which voxels of a MONAI array belong to which source slice. MONAI arrays are in RAS with
readers that may sort, flip or drop slices differently, so every source slice's pixels are mapped into the label map
through the same physical geometry instead of trusting slice indices, and a grid that does not match is refused.
Anonymised series sometimes carry empty UIDs in the data set (only the file meta keeps SOPInstanceUID); the
in-memory copies of the source headers are repaired before highdicom sees them, see :func:`read_source_slices`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pydicom
import torch
from monai.utils import optional_import
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from monai_unet2.data.dicom_geometry import (
    DicomSegError,
    frames_on_source_grid,
    functional_value,
    place_frame,
    world_to_voxel,
)
from monai_unet2.data.files import dicom_files
from monai_unet2.data.seg_description import (
    SegDescription,
    clean_pixel_measures,
    derive_series_number,
    segment_codings,
    segment_item,
)

__all__ = [
    "HIGHDICOM_MISSING",
    "DicomSegError",
    "build_dicom_seg",
    "highdicom_available",
    "read_source_slices",
    "seg_to_grid",
    "segment_names",
]

logger = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
HIGHDICOM_MISSING = "DICOM SEG output needs highdicom, which is not installed: pip install 'monai-unet2[dicom-seg]'"
_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


def highdicom_available() -> bool:
    """Whether DICOM SEG output can be written (highdicom importable); checked when called, not at import."""
    return optional_import("highdicom")[1]


def _frame_item(frame_group: Any, shared_group: Any, sequence: str, attribute: str, path: str, frame: int) -> Any:
    value = functional_value(frame_group, shared_group, sequence, attribute)
    if value is not None:
        return value
    raise DicomSegError(f"DICOM SEG {path}: frame {frame} has no {sequence} > {attribute}")


def _read_seg(seg_file: str, fractional_threshold: float) -> tuple[Any, np.ndarray, list[dict[str, Any]]]:
    """The SEG data set, its per-frame foreground masks ``(frames, Rows, Columns)`` and its segments."""
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
    try:
        pixels = ds.pixel_array
    except Exception as e:
        raise DicomSegError(f"DICOM SEG {seg_file}: pixel data cannot be decoded: {e}") from e
    pixels = pixels.reshape(-1, int(ds.Rows), int(ds.Columns))
    if seg_type == "FRACTIONAL":
        foreground = pixels >= fractional_threshold * float(ds.MaximumFractionalValue)
    else:
        foreground = pixels > 0
    return ds, foreground, segments


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
            :class:`~monai_unet2.data.DicomSeriesReader` or MONAI's readers.
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
    ds, foreground, segments = _read_seg(seg_file, fractional_threshold)
    channel_of = {s["number"]: i for i, s in enumerate(segments)}
    to_voxel = world_to_voxel(affine, affine_is_ras)
    shape = np.asarray(spatial_shape[-3:], dtype=np.int64)
    out = np.zeros((len(segments), *shape), dtype=np.uint8)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    if per_frame is None or len(per_frame) != len(foreground):
        raise DicomSegError(
            f"DICOM SEG {seg_file}: PerFrameFunctionalGroupsSequence does not describe {len(foreground)} frames"
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
        spacing = _frame_item(group, shared, "PixelMeasuresSequence", "PixelSpacing", seg_file, frame)
        placement = place_frame(to_voxel, position, orientation, spacing)
        if not placement.on_grid(mask.shape[0], mask.shape[1], grid_tolerance):
            raise DicomSegError(
                f"DICOM SEG {seg_file}: frame {frame} (segment {number}, position {position.round(4).tolist()}) "
                f"does not lie on the reference grid: origin at voxel {placement.origin.round(3).tolist()}, steps "
                f"per column {placement.column_step.round(4).tolist()} and per row "
                f"{placement.row_step.round(4).tolist()} voxels; resample it first"
            )
        rows, columns = np.nonzero(mask)
        if rows.size == 0:
            continue
        voxels = placement.voxels(rows, columns)
        inside = np.all((voxels >= 0) & (voxels < shape[:, None]), axis=0)
        if not inside.all():
            raise DicomSegError(
                f"DICOM SEG {seg_file}: frame {frame} (segment {number}) has {int((~inside).sum())} foreground pixels "
                f"outside the reference grid of shape {shape.tolist()}"
            )
        out[channel_of[number], voxels[0], voxels[1], voxels[2]] = 1
    return out, segments


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
            raise DicomSegError(f"DICOM file {path} has no {missing}; a DICOM SEG cannot reference it")
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
        DicomSegError: no image slices of the series in the folder.
    """
    folder = _source_folder(source)
    if not os.path.isdir(folder):
        raise DicomSegError(f"DICOM source folder {folder} does not exist")
    slices = []
    for path in dicom_files(folder, log_ignored=False):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # unreadable: the reader already decided about such files
            logger.debug("DICOM SEG source %s: skipping unreadable %s", folder, os.path.basename(path))
            continue
        if any(attr not in ds for attr in _GEOMETRY) or int(ds.get("NumberOfFrames", 1) or 1) > 1:
            continue
        if series_uid is not None and str(ds.get("SeriesInstanceUID", "") or "") != series_uid:
            continue
        slices.append((path, ds))
    if not slices:
        which = f"series {series_uid!r}" if series_uid is not None else "any series"
        raise DicomSegError(f"DICOM source folder {folder} holds no single-frame image slices of {which}")
    blanks = [b for b in ("StudyInstanceUID", "SeriesInstanceUID") if not slices[0][1].get(b)]
    if blanks:
        logger.warning("DICOM source folder %s: empty %s, the SEG uses derived UIDs", folder, ", ".join(blanks))
    return [_repair(ds, path) for path, ds in slices]


def segment_names(label_names: Mapping[Any, str] | Sequence[str] | None, max_label: int) -> dict[int, str]:
    """Segment number -> label for numbers 1..max(max_label, largest named label); background (0) is dropped.

    ``label_names`` may be a bundle ``channel_def`` (``{"0": "background", "1": "liver"}``) or a list indexed by
    label value; unnamed labels are called ``label_<n>``.

    Args:
        label_names: label value -> name, or names indexed by label value, or ``None``.
        max_label: the largest label value present.
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
    description: SegDescription | None = None,
) -> pydicom.Dataset:
    """A BINARY DICOM SEG of ``label_map`` referencing the series it was predicted from.

    One frame per source slice and segment holding foreground (all frames when nothing is segmented), with
    ReferencedSeriesSequence, per-frame DerivationImage / ReferencedSOPInstanceUID and PlanePosition, shared
    PlaneOrientation / PixelMeasures (spacing written without floating-point noise), the source's Study, Patient and
    FrameOfReferenceUID, and one segment per label value: its codes, SegmentDescription and
    RecommendedDisplayCIELabValue from ``description`` (see :mod:`~monai_unet2.data.seg_description`), algorithm type
    AUTOMATIC with the algorithm's name, version and source. The series gets ``description``'s SeriesDescription, a
    SeriesNumber derived from the source's (:func:`~monai_unet2.data.seg_description.derive_series_number`) and a
    ContentCreatorName (type 2, empty when not known).

    Args:
        label_map: 3D integer label map on the source grid (values = segment numbers, 0 = background).
        affine: voxel-to-world matrix of ``label_map``.
        source: the series folder (or a file in it).
        label_names: segment labels, see :func:`segment_names`.
        series_uid: SeriesInstanceUID of the source series in a folder holding several.
        preferred_uids: the SOPInstanceUIDs the reader used (``sop_instance_uids`` of the meta), for duplicates.
        affine_is_ras: ``affine`` maps to RAS rather than LPS.
        description: segment codes, series description and algorithm identity (a bundle's, built with
            :meth:`~monai_unet2.data.SegDescription.from_metadata`); ``None``: the package as algorithm and codes
            from DICOM's lists where the label names are standard (else "Tissue", with a warning).

    Raises:
        ImportError: highdicom is not installed.
        DicomSegError: the grid does not match the series, or highdicom refuses the sources.
    """
    hd, has_highdicom = optional_import("highdicom")
    if not has_highdicom:
        raise ImportError(HIGHDICOM_MISSING)
    from monai_unet2 import __version__

    folder = _source_folder(source)
    values = np.asarray(label_map)
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint16).max):
        raise DicomSegError(f"DICOM SEG for {folder}: label values must lie in 0..65535")
    sources = read_source_slices(folder, series_uid)
    frames, used = frames_on_source_grid(values, affine, sources, affine_is_ras, preferred_uids, folder=folder)
    names = segment_names(label_names, int(frames.max()) if frames.size else 0)
    frames = frames.astype(np.uint8 if len(names) <= 255 else np.uint16)
    if description is None:
        description = SegDescription(series_description="monai_unet2 segmentation", algorithm_version=__version__)
    version = description.algorithm_version or __version__
    algorithm = hd.AlgorithmIdentificationSequence(
        name=description.algorithm_name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=version[:64],
        source=description.algorithm_source[:64] if description.algorithm_source else None,
    )
    codings = segment_codings(names, description)
    segments = [segment_item(hd, number, coding, algorithm) for number, coding in codings.items()]
    series_number = description.series_number
    if series_number is None:
        series_number = derive_series_number(used[0].get("SeriesNumber"), f"{description.algorithm_name} {version}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*omit_empty_frames.*")
            seg = hd.seg.Segmentation(
                source_images=used,
                pixel_array=frames,
                segmentation_type="BINARY",
                segment_descriptions=segments,
                series_instance_uid=generate_uid(),
                series_number=series_number,
                sop_instance_uid=generate_uid(),
                instance_number=1,
                manufacturer="monai_unet2",
                manufacturer_model_name=description.algorithm_name[:64],
                software_versions=f"monai_unet2 {__version__}",
                device_serial_number="0",
                series_description=(description.series_description or "monai_unet2 segmentation")[:64],
            )
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        raise DicomSegError(f"DICOM SEG for {folder}: highdicom refused the source series: {err}") from err
    seg.ContentCreatorName = description.content_creator_name
    if used[0].get("BodyPartExamined"):
        seg.BodyPartExamined = used[0].BodyPartExamined
    clean_pixel_measures(seg)
    return seg
