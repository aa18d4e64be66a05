"""Header-level checks that turn the files of a DICOM folder into one validated, sorted image series.

:class:`~monai_unet2.data.dicom_series.DicomSeriesReader` reads the headers of every file, then calls the
functions here (after :mod:`~monai_unet2.data.dicom_headers` has turned each file into its frames) to read identical
copies once, pick a series, sort its slices along the slice normal and refuse (with a message naming the folder,
series and files) any series that would otherwise become a silently distorted volume: gaps, duplicated positions,
irregular spacing, changing raster or orientation, rescale tags present in some slices and missing in others.

Nothing in pydicom, SimpleITK/GDCM or MONAI reports these problems: GDCM's sorter and MONAI's ``PydicomReader``
sort and stack whatever they are given and average the spacing, which is exactly the silent distortion this
module exists to prevent.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DicomSeriesError",
    "SliceHeader",
    "drop_identical_copies",
    "pick_series",
    "plain",
    "series_label",
    "validate_series",
]

logger = logging.getLogger(__name__)


class DicomSeriesError(ValueError):
    """A DICOM folder or series cannot be turned into an undistorted volume; the message names where and why."""


@dataclass
class SliceHeader:
    """Geometry, identity and rescale of one image frame, read from its header (pixel data not decoded).

    A classic single-frame slice has ``frame=None``; a frame of a multi-frame (enhanced) image has its 0-based
    index. ``pixel_spacing`` is DICOM's (row spacing, column spacing) in mm; ``row_direction`` is the direction of
    increasing column index (first three values of ImageOrientationPatient), ``column_direction`` that of
    increasing row index, both unit vectors in LPS patient coordinates. ``rescale_slope`` / ``rescale_intercept`` are
    ``None`` where the tag is absent; ``thickness`` is SpacingBetweenSlices, else SliceThickness, else ``None``.
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
    frame: int | None = None
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    thickness: float | None = None
    photometric: str = ""

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    @property
    def name(self) -> str:
        """The file name, with the frame number for a frame of a multi-frame image: how messages name it."""
        return Path(self.path).name + (f" frame {self.frame + 1}" if self.frame is not None else "")


def series_label(series_uid: str) -> str:
    """How a series is named in messages: ``series <SeriesInstanceUID>``."""
    return f"series {series_uid}" if series_uid else "series <no SeriesInstanceUID>"


def plain(value: Any) -> str:
    """A value as a message shows it: plain numbers (``0.8``, not ``np.float64(0.8)``), tuples in brackets."""
    if isinstance(value, (tuple, list, np.ndarray)):
        return "(" + ", ".join(plain(v) for v in value) + ")"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def _z(value: float) -> str:
    return f"{round(float(value), 4)}"


def _names(headers: list[SliceHeader], limit: int = 5) -> str:
    shown = ", ".join(h.name for h in headers[:limit])
    return shown + (f" and {len(headers) - limit} more" if len(headers) > limit else "")


def drop_identical_copies(headers: list[SliceHeader], folder: str) -> list[SliceHeader]:
    """Read byte-identical copies of one instance once: frames with the same SOPInstanceUID (and frame number) whose
    pixel data are equal are kept once, with a warning naming the copies; the same SOPInstanceUID with different
    pixel data is an error naming both files.

    Args:
        headers: the image frames of a folder, in file-name order.
        folder: named in messages.
    """
    first_of: dict[tuple[str, int | None], SliceHeader] = {}
    kept, copies = [], []
    for header in headers:
        key = (header.sop_instance_uid, header.frame)
        original = first_of.get(key) if header.sop_instance_uid else None
        if original is None:
            first_of[key] = header
            kept.append(header)
            continue
        if original.dataset is not header.dataset and original.dataset.PixelData != header.dataset.PixelData:
            raise DicomSeriesError(
                f"DICOM folder {folder}: {original.name} and {header.name} share SOPInstanceUID "
                f"{header.sop_instance_uid} but hold different pixel data; remove the wrong one"
            )
        copies.append(f"{header.name} = {original.name}")
    if copies:
        logger.warning(
            "DICOM folder %s: %d identical copies (same SOPInstanceUID and pixel data) read once: %s",
            folder,
            len(copies),
            "; ".join(copies[:5]) + (f" and {len(copies) - 5} more" if len(copies) > 5 else ""),
        )
    return kept


def pick_series(headers: list[SliceHeader], folder: str, series_uid: str | None) -> list[SliceHeader]:
    """Group slices by SeriesInstanceUID and return the requested series, or else the one with most slices."""
    counts = Counter(h.series_uid for h in headers)
    available = ", ".join(f"{series_label(uid)} ({n} slices)" for uid, n in counts.most_common())
    if series_uid is not None:
        if series_uid not in counts:
            raise DicomSeriesError(f"DICOM folder {folder} has no {series_label(series_uid)}; it holds {available}")
        chosen = series_uid
    else:
        ranked = counts.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            tied = [uid for uid, n in ranked if n == ranked[0][1]]
            raise DicomSeriesError(
                f"DICOM folder {folder} holds {len(tied)} series of {ranked[0][1]} slices each: "
                f"{' and '.join(series_label(uid) for uid in tied)}; picking one would be arbitrary: pass "
                "series_uid=<SeriesInstanceUID> (a DicomSeriesReader argument, also accepted by SafeLoadImaged) "
                "or move the other series out"
            )
        chosen = ranked[0][0]
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
    reference = Counter(plain(value_of(h)) for h in headers).most_common(1)[0][0]
    reference_header = next(h for h in headers if plain(value_of(h)) == reference)
    odd = [h for h in headers if not same(value_of(h), value_of(reference_header))]
    if odd:
        shown = ", ".join(f"{h.name} ({plain(value_of(h))})" for h in odd[:5])
        raise DicomSeriesError(
            f"{label}: {name} changes within the series: {reference} in "
            f"{len(headers) - len(odd)} files, different in {len(odd)}: {shown}"
        )


def _check_rescale(headers: list[SliceHeader], label: str) -> None:
    """RescaleSlope / RescaleIntercept are applied per slice; one missing in some slices but present in others is
    an error: those slices would be read on another scale (1024 HU off for a CT intercept of -1024)."""
    for name, value_of in (
        ("RescaleIntercept", lambda h: h.rescale_intercept),
        ("RescaleSlope", lambda h: h.rescale_slope),
    ):
        missing = [h for h in headers if value_of(h) is None]
        if 0 < len(missing) < len(headers):
            present = Counter(value_of(h) for h in headers if value_of(h) is not None).most_common(1)[0][0]
            raise DicomSeriesError(
                f"{label}: {name} is missing in {len(missing)} of {len(headers)} slices ({_names(missing)}) but "
                f"present in the others (e.g. {plain(present)}); those slices cannot be put on the same intensity "
                "scale: fix or remove them"
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
    _check_constant(headers, label, "PhotometricInterpretation", lambda h: h.photometric, lambda a, b: a == b)
    _check_rescale(headers, label)
    normal = headers[0].normal
    positions = np.array([float(normal @ h.position) for h in headers])
    order = np.lexsort(([h.path for h in headers], [h.instance_number or 0 for h in headers], positions))
    headers, positions = [headers[i] for i in order], positions[order]

    same = np.flatnonzero(np.diff(positions) <= position_tolerance)
    if same.size:
        groups = [(positions[i], headers[i].name, headers[i + 1].name) for i in same]
        shown = "; ".join(f"z={_z(z)}: {a} and {b}" for z, a, b in groups[:5])
        if allow_duplicates != "first":
            raise DicomSeriesError(
                f"{label} has {len(groups)} duplicated slice position(s) holding different instances: {shown}. "
                "If they are copies or repeats of one acquisition, pass allow_duplicates='first' (a DicomSeriesReader "
                "argument, also accepted by SafeLoadImaged) to keep the lowest InstanceNumber at each position"
            )
        keep = np.ones(len(headers), dtype=bool)
        keep[same + 1] = False
        logger.warning("%s: dropped %d duplicated slice(s) (allow_duplicates='first'): %s", label, len(groups), shown)
        headers, positions = [h for h, k in zip(headers, keep) if k], positions[keep]

    if len(headers) == 1:
        thickness = headers[0].thickness
        if not thickness:
            logger.warning(
                "%s: a single slice without a usable SpacingBetweenSlices or SliceThickness (%s); taken as 1 mm thick",
                label,
                headers[0].name,
            )
            thickness = 1.0
        return headers, normal * thickness

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
