"""Header-level checks that turn the files of a DICOM folder into one validated, sorted image series.

:class:`~monai_unet2.data.dicom_series.DicomSeriesReader` reads the headers of every file, then calls the
functions here to sort out objects that are not image slices, pick a series, sort its slices along the slice
normal and refuse (with a message naming the folder, series and files) any series that would otherwise become a
silently distorted volume: gaps, duplicated positions, irregular spacing, changing raster or orientation.

Nothing in pydicom, SimpleITK/GDCM or MONAI reports these problems: GDCM's sorter and MONAI's ``PydicomReader``
sort and stack whatever they are given and average the spacing, which is exactly the silent distortion this
module exists to prevent.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import UID

__all__ = ["DicomSeriesError", "SliceHeader", "read_slice_header", "series_label", "validate_series"]

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


class DicomSeriesError(ValueError):
    """A DICOM folder or series cannot be turned into an undistorted volume; the message names where and why."""


@dataclass
class SliceHeader:
    """Geometry and identity of one single-frame image slice, read from its header (pixel data not decoded).

    ``pixel_spacing`` is DICOM's (row spacing, column spacing) in mm; ``row_direction`` is the direction of
    increasing column index (first three values of ImageOrientationPatient), ``column_direction`` that of
    increasing row index, both in LPS patient coordinates.
    """

    path: str
    dataset: Any
    series_uid: str
    sop_instance_uid: str
    instance_number: int | None
    position: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    transfer_syntax: str

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)


def series_label(series_uid: str) -> str:
    """How a series is named in messages: ``series <SeriesInstanceUID>``."""
    return f"series {series_uid}" if series_uid else "series <no SeriesInstanceUID>"


def _z(value: float) -> str:
    return f"{round(float(value), 4)}"


def _non_image_reason(ds: Any) -> str | None:
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in NON_IMAGE_MODALITIES:
        return f"a non-image object (Modality {modality})"
    meta = getattr(ds, "file_meta", None)
    for uid in (ds.get("SOPClassUID", ""), meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""):
        if uid and str(uid).startswith(NON_IMAGE_SOP_CLASS_PREFIXES):
            return f"a non-image object ({UID(str(uid)).name})"
    return None


def _claims_to_be_image(ds: Any) -> bool:
    meta = getattr(ds, "file_meta", None)
    for uid in (ds.get("SOPClassUID", ""), meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""):
        if uid and "Image Storage" in UID(str(uid)).name:
            return True
    return any(tag in ds for tag in ("Rows", "Columns", "ImagePositionPatient", "BitsAllocated"))


def read_slice_header(path: str, folder: str) -> tuple[SliceHeader | None, str | None]:
    """Read one file's header (pixel data deferred) and classify it.

    Returns ``(header, None)`` for a single-frame image slice, ``(None, reason)`` for an object that is not part of
    an image volume (SEG, SR, DICOMDIR, multi-frame, no position). Raises :class:`DicomSeriesError` for a file that
    cannot be read, or that is an image object whose pixel data is missing (truncated file).
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, defer_size="64 KB")
    except Exception as e:  # pydicom raises many types for corrupt files
        raise DicomSeriesError(f"DICOM folder {folder}: file {path} could not be read: {e}") from e
    for w in caught:
        if "end of file" in str(w.message).lower():
            raise DicomSeriesError(f"DICOM folder {folder}: file {path} is truncated ({w.message})")
    reason = _non_image_reason(ds)
    if reason is not None:
        return None, reason
    if "PixelData" not in ds:
        if _claims_to_be_image(ds):
            raise DicomSeriesError(
                f"DICOM folder {folder}: file {path} is an image object without pixel data (truncated or corrupt)"
            )
        return None, "an object without pixel data"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return None, "a multi-frame object (read it with MONAI's ITKReader or PydicomReader)"
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return None, "an image without ImagePositionPatient/ImageOrientationPatient (not part of a volume)"
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        spacing = ds.get("PixelSpacing", None) or ds.get("ImagerPixelSpacing", None) or (1.0, 1.0)
        pixel_spacing = (float(spacing[0]), float(spacing[1]))
        rows, columns = int(ds.Rows), int(ds.Columns)
    except Exception as e:
        raise DicomSeriesError(f"DICOM folder {folder}: file {path} has unusable geometry tags: {e}") from e
    if iop.shape != (6,) or ipp.shape != (3,) or not (np.isfinite(iop).all() and np.isfinite(ipp).all()):
        raise DicomSeriesError(
            f"DICOM folder {folder}: file {path} has invalid ImageOrientationPatient {list(iop)} "
            f"or ImagePositionPatient {list(ipp)}"
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomSeriesError(
            f"DICOM folder {folder}: file {path} has SamplesPerPixel={ds.SamplesPerPixel}; "
            "only single-sample (greyscale) series are supported"
        )
    instance = ds.get("InstanceNumber", None)
    meta = getattr(ds, "file_meta", None)
    header = SliceHeader(
        path=path,
        dataset=ds,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        sop_instance_uid=str(
            ds.get("SOPInstanceUID", "") or (meta.get("MediaStorageSOPInstanceUID", "") if meta is not None else "")
        ),
        instance_number=int(instance) if instance not in (None, "") else None,
        position=ipp,
        row_direction=iop[:3] / np.linalg.norm(iop[:3]),
        column_direction=iop[3:] / np.linalg.norm(iop[3:]),
        pixel_spacing=pixel_spacing,
        rows=rows,
        columns=columns,
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
    )
    return header, None


def pick_series(headers: list[SliceHeader], folder: str, series_uid: str | None) -> list[SliceHeader]:
    """Group slices by SeriesInstanceUID and return the requested series, or else the one with most slices."""
    counts = Counter(h.series_uid for h in headers)
    available = ", ".join(f"{series_label(uid)} ({n} slices)" for uid, n in counts.most_common())
    if series_uid is not None:
        if series_uid not in counts:
            raise DicomSeriesError(f"DICOM folder {folder} has no {series_label(series_uid)}; it holds {available}")
        chosen = series_uid
    else:
        chosen = sorted(counts, key=lambda uid: (-counts[uid], uid))[0]
    if len(counts) > 1 or series_uid is None:
        logger.info(
            "DICOM folder %s: picked %s (%d slices)%s",
            folder,
            series_label(chosen),
            counts[chosen],
            f" out of {len(counts)} series: {available}" if len(counts) > 1 else "",
        )
    return [h for h in headers if h.series_uid == chosen]


def _check_constant(headers: list[SliceHeader], label: str, name: str, value_of, same) -> None:
    reference = Counter(str(value_of(h)) for h in headers).most_common(1)[0][0]
    reference_header = next(h for h in headers if str(value_of(h)) == reference)
    odd = [h for h in headers if not same(value_of(h), value_of(reference_header))]
    if odd:
        shown = ", ".join(f"{Path(h.path).name} ({value_of(h)})" for h in odd[:5])
        raise DicomSeriesError(
            f"{label}: {name} changes within the series: {value_of(reference_header)} in "
            f"{len(headers) - len(odd)} files, different in {len(odd)}: {shown}"
        )


def validate_series(
    headers: list[SliceHeader],
    folder: str,
    allow_duplicates: str | None,
    spacing_tolerance: float,
    position_tolerance: float,
    orientation_tolerance: float,
    allow_gantry_tilt: bool,
) -> tuple[list[SliceHeader], np.ndarray]:
    """Check one series' geometry and return its slices sorted along the normal, and the slice step vector (LPS mm).

    Args:
        headers: the slices of one series.
        folder: the folder (or first file) named in messages.
        allow_duplicates: ``None`` refuses several slices at one position; ``"first"`` keeps, at each position, the
            slice with the lowest InstanceNumber (then file name) and logs the ones dropped.
        spacing_tolerance: the largest accepted deviation of a slice step from the median step, as a fraction of it.
        position_tolerance: positions closer than this (mm) along the normal are the same position; also the largest
            in-plane drift of ImagePositionPatient accepted without ``allow_gantry_tilt``.
        orientation_tolerance: the largest accepted difference between direction cosines of two slices.
        allow_gantry_tilt: accept slices whose origins drift in-plane (gantry tilt); the affine is then sheared
            (third column = mean step between origins) instead of the normal times the spacing.
    """
    label = f"DICOM folder {folder}: {series_label(headers[0].series_uid)}"
    _check_constant(headers, label, "Rows/Columns", lambda h: (h.rows, h.columns), lambda a, b: a == b)
    _check_constant(
        headers,
        label,
        "PixelSpacing",
        lambda h: h.pixel_spacing,
        lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-5),
    )
    _check_constant(
        headers,
        label,
        "ImageOrientationPatient",
        lambda h: tuple(np.round(np.concatenate([h.row_direction, h.column_direction]), 6)),
        lambda a, b: np.abs(np.subtract(a, b)).max() <= orientation_tolerance,
    )
    normal = headers[0].normal
    positions = np.array([float(normal @ h.position) for h in headers])
    order = np.lexsort(([h.path for h in headers], [h.instance_number or 0 for h in headers], positions))
    headers, positions = [headers[i] for i in order], positions[order]

    same = np.flatnonzero(np.diff(positions) <= position_tolerance)
    if same.size:
        groups = [(positions[i], Path(headers[i].path).name, Path(headers[i + 1].path).name) for i in same]
        shown = "; ".join(f"z={_z(z)}: {a} and {b}" for z, a, b in groups[:5])
        if allow_duplicates != "first":
            raise DicomSeriesError(
                f"{label} has {len(groups)} duplicated slice position(s): {shown}. Pass allow_duplicates='first' "
                "to keep the lowest InstanceNumber at each position"
            )
        keep = np.ones(len(headers), dtype=bool)
        keep[same + 1] = False
        logger.warning("%s: dropped %d duplicated slice(s) (allow_duplicates='first'): %s", label, len(groups), shown)
        headers, positions = [h for h, k in zip(headers, keep) if k], positions[keep]

    if len(headers) == 1:
        ds = headers[0].dataset
        thickness = ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None) or 1.0
        return headers, normal * abs(float(thickness))

    steps = np.diff(positions)
    nominal = float(np.median(steps))
    problems, gaps = [], []
    for i, step in enumerate(steps):
        if abs(step - nominal) <= spacing_tolerance * nominal:
            continue
        multiple = round(step / nominal)
        if multiple >= 2 and abs(step - multiple * nominal) <= spacing_tolerance * nominal * multiple:
            gaps.append(
                f"a gap of {multiple - 1} slice{'s' if multiple > 2 else ''} between "
                f"z={_z(positions[i])} and z={_z(positions[i + 1])}"
            )
        else:
            problems.append(f"z={_z(positions[i])} to z={_z(positions[i + 1])} ({_z(step)} mm)")
    if gaps:
        raise DicomSeriesError(f"{label} has {'; '.join(gaps[:5])} (slice spacing {_z(nominal)} mm)")
    if problems:
        raise DicomSeriesError(
            f"{label} has inconsistent slice spacing: median step {_z(nominal)} mm but "
            f"{'; '.join(problems[:5])}; beyond spacing_tolerance={spacing_tolerance}"
        )

    mean_step = (headers[-1].position - headers[0].position) / (len(headers) - 1)
    drift = max(
        np.linalg.norm((h.position - headers[0].position) - (z - positions[0]) * normal)
        for h, z in zip(headers, positions)
    )
    if drift > position_tolerance:
        if not allow_gantry_tilt:
            raise DicomSeriesError(
                f"{label}: slice origins drift {_z(drift)} mm across the slice plane (gantry tilt or sheared stack); "
                "pass allow_gantry_tilt=True for a sheared affine that keeps every slice at its true position"
            )
        return headers, mean_step
    return headers, normal * float(normal @ mean_step)
