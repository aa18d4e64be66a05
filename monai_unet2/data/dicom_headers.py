"""One DICOM file's header turned into the frames it contributes to a volume: one for a classic single-frame slice,
one per frame for an enhanced (or legacy-converted enhanced) multi-frame image, none for an object that is not part
of an image volume (SEG, SR, presentation state...), which is then named with the reason.

Every value a frame's place or intensity depends on is read and checked here, so that a problem names the file (and
frame) it comes from: a damaged header is an error, never "an object without pixel data" to skip; ImagePositionPatient,
ImageOrientationPatient and PixelSpacing must be finite and sane (perpendicular unit directions, positive spacing),
and RescaleSlope / RescaleIntercept must be numbers. For enhanced images the per-frame and shared functional groups
(PlanePositionSequence, PlaneOrientationSequence, PixelMeasuresSequence, PixelValueTransformationSequence) are read
the way DICOM PS3.3 C.7.6.16 defines them: a per-frame item overrides the shared one. pydicom parses the tags but
places no frame; highdicom builds such images but has no reader that returns the frames' geometry for a volume.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import UID

from monai_unet2.data.dicom_checks import DicomSeriesError, SliceHeader
from monai_unet2.data.dicom_geometry import functional_value
from monai_unet2.data.file_kinds import sniff

__all__ = ["read_file_headers"]

logger = logging.getLogger(__name__)

NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "KO", "PR", "REG", "DOC", "FID", "PLAN"}
NON_IMAGE_SOP_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, segmentation, surface segmentation
    "1.2.840.10008.5.1.4.1.1.88",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.11",  # presentation states
    "1.2.840.10008.5.1.4.1.1.481",  # RT objects (structure sets, plans, dose)
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated documents
    "1.2.840.10008.1.3.10",  # media storage directory (DICOMDIR)
)
_DIRECTION_TOLERANCE = 1e-3


def _sop_class(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""))


def _non_image_reason(ds: Any) -> str | None:
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in NON_IMAGE_MODALITIES:
        return f"a non-image object (Modality {modality})"
    uid = _sop_class(ds)
    if uid and uid.startswith(NON_IMAGE_SOP_CLASS_PREFIXES):
        return f"a non-image object ({UID(uid).name})"
    return None


def _claims_to_be_image(ds: Any) -> bool:
    uid = _sop_class(ds)
    if uid and "Image Storage" in UID(uid).name:
        return True
    return any(tag in ds for tag in ("Rows", "Columns", "ImagePositionPatient", "BitsAllocated"))


def _numbers(value: Any, count: int, what: str, where: str) -> np.ndarray:
    items = [] if value is None else [value] if isinstance(value, (str, bytes, int, float)) else list(value)
    try:
        numbers = np.asarray([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        raise DicomSeriesError(f"{where} has {what} {_shown(value)}, not {count} numbers") from None
    if numbers.shape != (count,) or not np.isfinite(numbers).all():
        raise DicomSeriesError(f"{where} has {what} {_shown(value)}, not {count} finite numbers")
    return numbers


def _shown(value: Any) -> str:
    if value is None:
        return "<missing>"
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return repr(str(value))


def _rescale(value: Any, keyword: str, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DicomSeriesError(f"{where} has {keyword} {_shown(value)}, not a number") from None
    if not np.isfinite(number) or (keyword == "RescaleSlope" and number == 0):
        raise DicomSeriesError(f"{where} has {keyword} {number:g}, which makes its pixel values meaningless")
    return number


def _frame_header(ds: Any, path: str, folder: str, frame: int | None, frame_group: Any) -> SliceHeader:
    where = f"DICOM folder {folder}: file {path}" + (f" frame {frame + 1}" if frame is not None else "")

    shared = ds.get("SharedFunctionalGroupsSequence")

    def value(sequence: str, attribute: str) -> Any:
        found = functional_value(frame_group, shared[0] if shared else None, sequence, attribute)
        return ds.get(attribute) if found is None else found

    position = _numbers(value("PlanePositionSequence", "ImagePositionPatient"), 3, "ImagePositionPatient", where)
    orientation = _numbers(
        value("PlaneOrientationSequence", "ImageOrientationPatient"), 6, "ImageOrientationPatient", where
    )
    norms = np.linalg.norm(orientation.reshape(2, 3), axis=1)
    if (np.abs(norms - 1) > 0.01).any():
        raise DicomSeriesError(
            f"{where} has ImageOrientationPatient {_shown(orientation.tolist())}: its row and column directions "
            f"have lengths {norms[0]:.4g} and {norms[1]:.4g}, not 1"
        )
    row, column = orientation[:3] / norms[0], orientation[3:] / norms[1]
    if abs(float(row @ column)) > _DIRECTION_TOLERANCE:
        raise DicomSeriesError(
            f"{where} has ImageOrientationPatient {_shown(orientation.tolist())}: its row and column directions "
            f"are not perpendicular (cosine {float(row @ column):.4g})"
        )
    spacing_value = value("PixelMeasuresSequence", "PixelSpacing")
    if spacing_value is None:
        spacing_value = ds.get("ImagerPixelSpacing")
    if spacing_value is None:
        raise DicomSeriesError(f"{where} has no PixelSpacing: the size of its pixels in mm is unknown")
    spacing = _numbers(spacing_value, 2, "PixelSpacing", where)
    if (spacing <= 0).any():
        raise DicomSeriesError(f"{where} has PixelSpacing {_shown(spacing.tolist())}: spacings must be positive")
    thickness = None
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        raw = value("PixelMeasuresSequence", keyword)
        if raw not in (None, ""):
            thickness = abs(_numbers(raw, 1, keyword, where)[0])
            break
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise DicomSeriesError(f"{where} has no usable Rows/Columns") from None
    if rows <= 0 or columns <= 0:
        raise DicomSeriesError(f"{where} has {rows} rows and {columns} columns: no pixels")
    slope = _rescale(value("PixelValueTransformationSequence", "RescaleSlope"), "RescaleSlope", where)
    intercept = _rescale(value("PixelValueTransformationSequence", "RescaleIntercept"), "RescaleIntercept", where)
    meta = getattr(ds, "file_meta", None)
    instance = ds.get("InstanceNumber", None)
    try:
        instance_number = int(instance) if instance not in (None, "") else None
    except (TypeError, ValueError):
        instance_number = None
    return SliceHeader(
        path=path,
        dataset=ds,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        sop_instance_uid=str(
            ds.get("SOPInstanceUID", "") or (meta.get("MediaStorageSOPInstanceUID", "") if meta is not None else "")
        ),
        instance_number=instance_number,
        position=position,
        row_direction=row,
        column_direction=column,
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        rows=rows,
        columns=columns,
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
        frame=frame,
        rescale_slope=slope,
        rescale_intercept=intercept,
        thickness=thickness,
        photometric=str(ds.get("PhotometricInterpretation", "") or ""),
    )


def _multiframe_headers(ds: Any, path: str, folder: str, frames: int) -> tuple[list[SliceHeader], str | None]:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        raise DicomSeriesError(
            f"DICOM folder {folder}: file {path} is a multi-frame image ({frames} frames) without per-frame "
            "functional groups (PerFrameFunctionalGroupsSequence), so its frames cannot be placed in space"
        )
    if len(per_frame) != frames:
        raise DicomSeriesError(
            f"DICOM folder {folder}: file {path} has NumberOfFrames {frames} but {len(per_frame)} per-frame "
            "functional group items"
        )
    return [_frame_header(ds, path, folder, index, per_frame[index]) for index in range(frames)], None


def read_file_headers(path: str, folder: str) -> tuple[list[SliceHeader], str | None]:
    """Read one file's header (pixel data deferred) and return the frames it contributes to a volume.

    Returns ``(frames, None)`` for an image: one :class:`SliceHeader` for a single-frame slice, one per frame for a
    multi-frame image with per-frame functional groups (enhanced CT/MR/PET, legacy converted enhanced images).
    Returns ``([], reason)`` for an object that is positively not part of an image volume: a non-image SOP class or
    modality (SEG, SR, RT, presentation state, DICOMDIR), a non-image object without pixel data, or an image without
    ImagePositionPatient / ImageOrientationPatient (a secondary capture, a screenshot).

    Raises:
        DicomSeriesError: naming the file (and frame) when it cannot be read, is truncated, has a damaged header (no
            SOP class and no pixel data: what a corrupt preamble or meta group leaves), is an image without pixel
            data, or has unusable geometry or rescale values.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, defer_size="64 KB")
    except Exception as e:  # pydicom raises many types for corrupt files
        kind = sniff(path)
        if kind.family != "dicom":
            raise DicomSeriesError(f"DICOM folder {folder}: file {path} is not DICOM: it is {kind.description}") from e
        raise DicomSeriesError(f"DICOM folder {folder}: file {path} could not be read: {e}") from e
    for w in caught:
        if "end of file" in str(w.message).lower():
            raise DicomSeriesError(f"DICOM folder {folder}: file {path} is truncated ({w.message})")
    reason = _non_image_reason(ds)
    if reason is not None:
        return [], reason
    if "PixelData" not in ds:
        if not _sop_class(ds):
            raise DicomSeriesError(
                f"DICOM folder {folder}: file {path} does not parse as DICOM: no SOP Class UID and no pixel data "
                f"were found in it ({len(ds)} elements read; damaged header)"
            )
        if _claims_to_be_image(ds):
            raise DicomSeriesError(
                f"DICOM folder {folder}: file {path} is an image object without pixel data (truncated or corrupt)"
            )
        return [], f"an object without pixel data ({UID(_sop_class(ds)).name})"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        raise DicomSeriesError(
            f"DICOM folder {folder}: file {path} is a colour image (SamplesPerPixel={ds.get('SamplesPerPixel', 1)}, "
            f"PhotometricInterpretation {ds.get('PhotometricInterpretation', '')}); only greyscale series are supported"
        )
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise DicomSeriesError(f"DICOM folder {folder}: file {path} has NumberOfFrames {ds.NumberOfFrames!r}") from None
    if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        return _multiframe_headers(ds, path, folder, frames)
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return [], "an image without ImagePositionPatient/ImageOrientationPatient (not part of a volume)"
    return [_frame_header(ds, path, folder, None, None)], None
