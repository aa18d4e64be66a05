"""A MONAI ``ImageReader`` for DICOM series folders that refuses to build a distorted volume.

MONAI's ``PydicomReader`` sorts slices by InstanceNumber, averages the z steps and only warns about changing
shapes; GDCM (behind ``ITKReader`` and SimpleITK) sorts by position but also stacks gaps and duplicates without a
word. Both are fine for clean data and silently wrong otherwise. :class:`DicomSeriesReader` sorts along the slice
normal, checks the series (see :mod:`monai_unet2.data.dicom_checks`) and produces the same array layout and
metadata as MONAI's readers, so every MONAI transform downstream behaves identically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.config import PathLike
from monai.data import ImageReader
from monai.data.utils import affine_to_spacing, orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple
from pydicom.uid import UID

from monai_unet2.data.dicom_checks import (
    DicomSeriesError,
    SliceHeader,
    drop_identical_copies,
    pick_series,
    series_label,
    validate_series,
)
from monai_unet2.data.dicom_geometry import pixel_steps
from monai_unet2.data.dicom_headers import read_file_headers
from monai_unet2.data.files import dicom_files

__all__ = ["DicomSeries", "DicomSeriesError", "DicomSeriesReader", "decoder_available"]

logger = logging.getLogger(__name__)


def decoder_available(transfer_syntax: str) -> bool:
    """Whether the installed pydicom decoders can decode pixel data stored with ``transfer_syntax``.

    Works with pydicom 2.4 (``pixel_data_handlers``) and 3.x (``pydicom.pixels.get_decoder``).
    """
    uid = UID(transfer_syntax)
    try:
        if not uid.is_compressed:
            return True
    except ValueError:  # pydicom 2.4: not a transfer syntax it knows
        return False
    try:
        from pydicom.pixels import get_decoder
    except ImportError:
        return any(h.supports_transfer_syntax(uid) and h.is_available() for h in pydicom.config.pixel_data_handlers)
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


class DicomSeries:
    """A validated series: its slices sorted along the normal and its affine, pixel data not yet decoded.

    Decoding (``DicomSeriesReader.get_data``) releases each slice's dataset as it goes, so it happens once.
    """

    def __init__(self, folder: str, slices: list[SliceHeader], slice_step: np.ndarray):
        self.folder = folder
        self.slices = slices
        self.series_uid = slices[0].series_uid
        first = slices[0]
        self.modality = str(first.dataset.get("Modality", "") or "")
        affine = np.eye(4)
        orientation = np.concatenate([first.row_direction, first.column_direction])
        affine[:3, 0], affine[:3, 1] = pixel_steps(orientation, first.pixel_spacing)
        affine[:3, 2] = slice_step
        affine[:3, 3] = first.position
        self.affine_lps = affine
        self.spatial_shape = (first.columns, first.rows, len(slices))

    def __repr__(self) -> str:
        return f"DicomSeries({self.folder!r}, {series_label(self.series_uid)}, {len(self.slices)} slices)"


class DicomSeriesReader(ImageReader):
    """Read a DICOM series folder (or list of slice files) into an ``(X, Y, Z)`` array and a RAS affine.

    Conventions match MONAI's ``ITKReader``/``PydicomReader``: array axes are (column, row, slice), the slice axis
    runs along the slice normal (ImageOrientationPatient row x column direction) in increasing position, like
    GDCM; the metadata holds ``affine``/``original_affine`` (RAS unless ``affine_lps_to_ras=False``), ``spacing``,
    ``spatial_shape``, ``space`` and ``original_channel_dim`` (no channel), plus ``SeriesInstanceUID``, ``Modality``
    and ``sop_instance_uids`` (backslash-joined, in slice order). Pixel values have RescaleSlope/RescaleIntercept
    applied per slice (per frame); tags present in some slices and missing in others are an error.

    A folder may hold several series and non-image objects (SEG, SR, presentation states, DICOMDIR): non-image
    objects are skipped with a log line, and the series is ``series_uid`` or else the one with most slices (logged;
    two series of equal size are an error naming both, since the pick would be arbitrary). Enhanced (and legacy
    converted enhanced) multi-frame images are read frame by frame from their functional groups, so a folder may
    hold one multi-frame file or a mix. Byte-identical copies of an instance (same SOPInstanceUID, same pixel data)
    are read once, with a warning. Non-DICOM files (no DICOM preamble and no ``.dcm`` suffix) and hidden files are
    ignored. Every problem that would distort the volume raises :class:`DicomSeriesError` naming the folder, series
    and files (a file that does not parse is such a problem, never a skip); the opt-in tolerances below relax
    specific checks.

    Several folders given together are read as one channel each (they must share the same grid).

    Args:
        series_uid: SeriesInstanceUID to read; default: the series with most image slices.
        allow_duplicates: ``None`` (default) refuses two slices at one position; ``"first"`` keeps the one with the
            lowest InstanceNumber at each position (use only when the duplicates are copies, not other phases).
        spacing_tolerance: accepted deviation of each slice step from the median step, as a fraction of it
            (default 0.01). Missing slices (a step close to a multiple of the median) are always an error.
        position_tolerance: positions closer than this (mm) along the normal count as duplicates; also the in-plane
            drift of slice origins accepted without ``allow_gantry_tilt``.
        orientation_tolerance: accepted difference in direction cosines between slices.
        allow_gantry_tilt: accept origins that drift in-plane; the affine is then sheared so that every slice stays
            at its true position.
        on_unreadable: ``"error"`` (default) raises on a corrupt or truncated DICOM file; ``"skip"`` logs a warning
            and leaves it out. Use with care: gap checks catch a missing slice inside the series, but a slice left
            out at either end shortens the volume without a gap.
        affine_lps_to_ras: convert the affine from DICOM's LPS to RAS, as MONAI's readers do by default.
        dtype: output array dtype.
        num_threads: threads used to decode slices; only helps with decoders that release the GIL (Pillow's
            JPEG 2000 decoder gave no gain in ``benchmarks/loading.py``).
    """

    def __init__(
        self,
        series_uid: str | None = None,
        allow_duplicates: str | None = None,
        spacing_tolerance: float = 0.01,
        position_tolerance: float = 0.01,
        orientation_tolerance: float = 1e-4,
        allow_gantry_tilt: bool = False,
        on_unreadable: str = "error",
        affine_lps_to_ras: bool = True,
        dtype: np.dtype | type | str = np.float32,
        num_threads: int = 1,
    ):
        super().__init__()
        if allow_duplicates not in (None, "first"):
            raise ValueError(f"allow_duplicates must be None or 'first', got {allow_duplicates!r}")
        if on_unreadable not in ("error", "skip"):
            raise ValueError(f"on_unreadable must be 'error' or 'skip', got {on_unreadable!r}")
        self.series_uid = series_uid
        self.allow_duplicates = allow_duplicates
        self.spacing_tolerance = spacing_tolerance
        self.position_tolerance = position_tolerance
        self.orientation_tolerance = orientation_tolerance
        self.allow_gantry_tilt = allow_gantry_tilt
        self.on_unreadable = on_unreadable
        self.affine_lps_to_ras = affine_lps_to_ras
        self.dtype = np.dtype(dtype)
        self.num_threads = max(1, int(num_threads))

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True when every entry is a folder or a DICOM file (``.dcm`` suffix or DICOM preamble)."""
        for name in ensure_tuple(filename):
            path = Path(f"{name}")
            if not (path.is_dir() or path.suffix.lower() == ".dcm" or (path.is_file() and pydicom.misc.is_dicom(path))):
                return False
        return True

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> tuple[str, ...]:
        """Accept DICOM folders or slice files; the reading and checking happen in :meth:`get_data`.

        ``LoadImage`` catches any exception from ``read`` and silently retries with its other readers (MONAI's
        ``PydicomReader`` would then stack the broken series), so only "this is not DICOM at all" is raised here,
        which lets ``LoadImage`` fall back to e.g. ``NibabelReader`` for NIfTI inputs; series problems are raised
        from ``get_data``, which ``LoadImage`` does not catch.
        """
        names = tuple(f"{name}" for name in ensure_tuple(data))
        if not self.verify_suffix(names):
            raise ValueError(f"{type(self).__name__} reads DICOM folders or .dcm files, got {names}")
        if len(names) > 1 and any(Path(n).is_dir() for n in names) and not all(Path(n).is_dir() for n in names):
            raise DicomSeriesError(f"mix of folders and files given to {type(self).__name__}: {names}")
        return names

    def read_series(self, data: Sequence[PathLike] | PathLike) -> list[DicomSeries]:
        """Read and check the headers: one :class:`DicomSeries` per folder, or one for a list of slice files."""
        names = [f"{name}" for name in ensure_tuple(data)]
        if all(Path(n).is_dir() for n in names):
            return [self._read_series(n, self._list_folder(n)) for n in names]
        return [self._read_series(names[0], names)]

    @staticmethod
    def _list_folder(folder: str) -> list[str]:
        if not os.path.isdir(folder):
            raise DicomSeriesError(f"DICOM folder {folder} does not exist")
        return list(dicom_files(folder))

    def _read_series(self, folder: str, files: list[str]) -> DicomSeries:
        headers: list[SliceHeader] = []
        skipped: list[str] = []
        for path in files:
            try:
                frames, reason = read_file_headers(path, folder)
            except DicomSeriesError as e:
                if self.on_unreadable == "error":
                    raise
                logger.warning("%s (left out: on_unreadable='skip')", e)
                skipped.append(f"{Path(path).name} (unreadable)")
                continue
            if reason is not None:
                logger.info("DICOM folder %s: skipping %s: %s", folder, Path(path).name, reason)
                skipped.append(f"{Path(path).name} ({reason})")
            headers += frames
        if not headers:
            raise DicomSeriesError(
                f"DICOM folder {folder} holds no image slices ({len(files)} DICOM files"
                + (f"; skipped: {', '.join(skipped[:5])}" if skipped else "")
                + ")"
            )
        chosen = pick_series(drop_identical_copies(headers, folder), folder, self.series_uid)
        slices, step = validate_series(
            chosen,
            folder,
            self.allow_duplicates,
            self.spacing_tolerance,
            self.position_tolerance,
            self.orientation_tolerance,
            self.allow_gantry_tilt,
        )
        return DicomSeries(folder, slices, step)

    @staticmethod
    def _pixels(header: SliceHeader, label: str, decoded: dict[int, np.ndarray], lock: threading.Lock) -> np.ndarray:
        """The stored values of one frame, ``(rows, columns)``; a multi-frame file is decoded once for all frames."""
        key = id(header.dataset)
        with lock if header.frame is not None else contextlib.nullcontext():
            pixels = decoded.get(key)
            if pixels is None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        pixels = header.dataset.pixel_array
                except Exception as e:
                    raise DicomSeriesError(
                        f"{label}: file {header.path} has pixel data that cannot be decoded: {e}"
                    ) from e
                if header.frame is not None:
                    decoded[key] = pixels
        if header.frame is not None:
            pixels = pixels[header.frame] if pixels.ndim == 3 else pixels
        if pixels.shape != (header.rows, header.columns):
            raise DicomSeriesError(
                f"{label}: {header.name} decodes to shape {pixels.shape}, expected {(header.rows, header.columns)}"
            )
        return pixels

    def _decode(self, header: SliceHeader, label: str, decoded: dict, lock: threading.Lock) -> np.ndarray:
        values = self._pixels(header, label, decoded, lock).T
        slope = 1.0 if header.rescale_slope is None else header.rescale_slope
        intercept = 0.0 if header.rescale_intercept is None else header.rescale_intercept
        if slope != 1.0 or intercept != 0.0:
            values = values.astype(np.float64) * slope + intercept
        if np.issubdtype(self.dtype, np.floating) and values.size:
            largest = float(np.abs(values).max())
            if largest > np.finfo(self.dtype).max:
                raise DicomSeriesError(
                    f"{label}: {header.name}: RescaleSlope {slope:g} and RescaleIntercept {intercept:g} scale its "
                    f"pixel values up to {largest:.3g}, beyond the {self.dtype} range the volume is read in"
                )
        out = values.astype(self.dtype)
        if header.frame is None:
            header.dataset = None  # release the decoded frame cache and file bytes
        return out

    def _series_array(self, series: DicomSeries) -> np.ndarray:
        label = f"DICOM folder {series.folder}: {series_label(series.series_uid)}"
        for syntax in sorted({h.transfer_syntax for h in series.slices}):
            if syntax and not decoder_available(syntax):
                raise DicomSeriesError(
                    f"{label}: pixel data uses transfer syntax {syntax} ({UID(syntax).name}), which none of the "
                    "installed pydicom decoders can decode (install e.g. pylibjpeg with its plugins, or GDCM)"
                )
        volume = np.empty(series.spatial_shape, dtype=self.dtype)
        decoded: dict[int, np.ndarray] = {}
        lock = threading.Lock()

        def fill(index: int) -> None:
            volume[:, :, index] = self._decode(series.slices[index], label, decoded, lock)

        if self.num_threads > 1:
            with ThreadPoolExecutor(self.num_threads) as pool:
                list(pool.map(fill, range(len(series.slices))))
        else:
            for index in range(len(series.slices)):
                fill(index)
        for header in series.slices:
            header.dataset = None
        return volume

    def _meta(self, series: DicomSeries) -> dict[str, Any]:
        affine = orientation_ras_lps(series.affine_lps) if self.affine_lps_to_ras else series.affine_lps.copy()
        return {
            MetaKeys.ORIGINAL_AFFINE: affine,
            MetaKeys.AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(series.spatial_shape),
            MetaKeys.SPACE: SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            "spacing": affine_to_spacing(affine, r=3),
            "SeriesInstanceUID": series.series_uid,
            "Modality": series.modality,
            "sop_instance_uids": "\\".join(h.sop_instance_uid for h in series.slices),
        }

    def get_data(self, img: Sequence[str] | DicomSeries | Sequence[DicomSeries]) -> tuple[np.ndarray, dict]:
        """Check and decode; several folders are stacked as channels (first axis) and must share one grid.

        Args:
            img: what :meth:`read` returned (paths), or series from :meth:`read_series`.
        """
        if isinstance(img, DicomSeries):
            all_series = [img]
        elif all(isinstance(item, DicomSeries) for item in ensure_tuple(img)):
            all_series = list(img)
        else:
            all_series = self.read_series(img)
        metas = [self._meta(s) for s in all_series]
        for series, meta in zip(all_series[1:], metas[1:]):
            if not np.allclose(meta[MetaKeys.AFFINE], metas[0][MetaKeys.AFFINE], atol=1e-4) or tuple(
                meta[MetaKeys.SPATIAL_SHAPE]
            ) != tuple(metas[0][MetaKeys.SPATIAL_SHAPE]):
                raise DicomSeriesError(
                    f"DICOM folder {series.folder} does not share the grid of {all_series[0].folder}; "
                    "series read as channels must have the same shape and affine"
                )
        arrays = [self._series_array(s) for s in all_series]
        if len(arrays) == 1:
            return arrays[0], metas[0]
        metas[0][MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), metas[0]
