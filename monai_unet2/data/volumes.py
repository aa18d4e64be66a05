"""Reading volume files safely: read failures named after the file, and volumes too large for memory refused before
they are read.

Read errors: a truncated ``.nii.gz`` fails deep inside nibabel/gzip with ``EOFError: Compressed file ended before the
end-of-stream marker was reached`` and no file name (``LoadImage`` only wraps failures while *choosing* a reader;
nibabel reads the voxels lazily, later, in ``get_data``). :func:`describe_read_error` turns any read failure into a
one-line message with the path and the likely cause; :class:`~monai_unet2.transforms.SafeLoadImage` raises it as
:class:`VolumeFileError`.

Memory: a loader reads the whole volume, and the pipeline then holds several float32 copies of it (the normalised
image, the class probabilities of the inference output, the label map). For a volume far larger than the machine's
memory the process grows until the kernel's OOM killer ends it with SIGKILL: no message, no name, and in a folder run
every other case is lost with it. Nothing in MONAI, nibabel or SimpleITK checks this before reading. The header
alone gives the voxel count (NIfTI/MGH via nibabel's lazy image, NRRD/MHA via SimpleITK's image information, DICOM
via the first slice's ``Rows``/``Columns`` times the number of slice files), and the memory this process may still
use is known (``MemAvailable`` and the cgroup limit), so :func:`memory_refusal` can say no in advance.
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.utils import ensure_tuple

from monai_unet2.data.affines import affine_problem, resampled_voxel_count
from monai_unet2.data.files import dicom_files

__all__ = [
    "DEFAULT_MAX_MEMORY_FRACTION",
    "DEFAULT_MEMORY_PER_VOXEL",
    "VolumeFileError",
    "available_memory",
    "describe_read_error",
    "header_geometry",
    "header_voxel_count",
    "memory_refusal",
]

DEFAULT_MEMORY_PER_VOXEL = 24.0
DEFAULT_MAX_MEMORY_FRACTION = 0.8

NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".mgh", ".mgz", ".hdr", ".img")
SIMPLEITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
_UNLIMITED = 1 << 60


class VolumeFileError(ValueError):
    """A volume file that cannot be read or must not be used; the message names the file(s) and the problem."""


def _lines(text: str) -> list[str]:
    return [line.strip() for line in str(text).splitlines() if line.strip()]


def describe_read_error(filename: Any, error: BaseException) -> str:
    """A one-line message for a failed image read: the file, the likely cause and the original error.

    Args:
        filename: what was passed to the loader (a path or a sequence of paths).
        error: the exception raised while reading.
    """
    names = ensure_tuple(filename)
    path = str(names[0]) if len(names) == 1 else ", ".join(str(name) for name in names)
    detail = f"{type(error).__name__}: {' '.join(_lines(str(error))) or 'no message'}"
    if len(names) == 1 and isinstance(names[0], (str, os.PathLike)) and not os.path.exists(names[0]):
        return f"{path}: cannot read image (file not found)"
    if isinstance(error, (EOFError, zlib.error, gzip.BadGzipFile)):
        cause = "truncated or corrupt gzip data"
    elif isinstance(error, FileNotFoundError):
        cause = "file not found"
    elif isinstance(error, PermissionError):
        cause = "permission denied"
    elif isinstance(error, IsADirectoryError):
        cause = "a folder, not a file"
    elif isinstance(error, OSError) and "truncated" in str(error).lower():
        cause = "truncated image data"
    elif type(error).__name__ == "UnidentifiedImageError":
        cause = "damaged image header, or an image variant PIL does not read"
    elif isinstance(error, OSError) and "bytes" in str(error):
        cause = "file shorter than its header says (truncated)"
    elif isinstance(error, RuntimeError) and "cannot find a suitable reader" in str(error):
        cause = "no image reader accepted it (not an image file, or damaged)"
        detail = (_lines(str(error)) or [""])[-1]
    elif type(error).__name__ == "ImageFileError":
        cause = "not a recognised image file (damaged header or wrong extension)"
    else:
        cause = "read failed"
    return f"{path}: cannot read image ({cause}: {detail})"


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes this process can still allocate: the smaller of ``MemAvailable`` and the cgroup's remaining limit.

    Returns ``None`` where neither is known (not Linux), which switches the check off.
    """
    candidates = []
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < _UNLIMITED:
            candidates.append(max(limit - usage, 0))
    return min(candidates) if candidates else None


def _dicom_geometry(paths: Sequence[Path]) -> tuple[tuple[int, ...], np.ndarray | None] | None:
    """Shape (and, when the first slice says, an LPS affine with the right spacings) of a DICOM series from the
    headers of its first image file and the number of files: all that the memory guard needs."""
    files: list[str | Path] = []
    for path in paths:
        files += list(dicom_files(path, log_ignored=False)) if path.is_dir() else [path]
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:
            continue
        if "Rows" not in header or "Columns" not in header:
            continue
        frames = int(header.get("NumberOfFrames", 1) or 1)
        shape = (int(header.Columns), int(header.Rows), frames * len(files))
        try:
            spacing = [float(v) for v in header.get("PixelSpacing", None) or []]
            step = header.get("SpacingBetweenSlices", None) or header.get("SliceThickness", None)
            if len(spacing) != 2 or step is None:
                shared = header.get("SharedFunctionalGroupsSequence")
                measures = shared[0].get("PixelMeasuresSequence") if shared else None
                spacing = [float(v) for v in measures[0].PixelSpacing] if measures else spacing
                step = (
                    (measures[0].get("SpacingBetweenSlices") or measures[0].get("SliceThickness")) if measures else step
                )
            affine = np.diag([spacing[1], spacing[0], abs(float(step)), 1.0]) if len(spacing) == 2 and step else None
        except (AttributeError, TypeError, ValueError):
            affine = None
        return shape, affine
    return None


def header_geometry(filename: Any) -> tuple[tuple[int, ...], np.ndarray | None] | None:
    """The spatial shape of an image, and its voxel-to-world affine where known, from its header only; ``None`` when
    the format is not known here or the header cannot be read (the reader reports that, by name).

    Args:
        filename: a file (NIfTI, MGH, NRRD, MHA, PNG/TIFF/JPEG/GIF/BMP), a DICOM folder or ``.dcm`` files.
    """
    paths = [Path(f"{name}") for name in ensure_tuple(filename)]
    if not paths or not all(path.exists() for path in paths):
        return None
    name = paths[0].name.lower()
    try:
        if len(paths) == 1 and name.endswith(NIBABEL_SUFFIXES):
            import nibabel

            image = nibabel.load(paths[0])
            return tuple(int(size) for size in image.shape), np.asarray(image.affine, dtype=np.float64)
        if len(paths) == 1 and name.endswith(SIMPLEITK_SUFFIXES):
            import SimpleITK

            reader = SimpleITK.ImageFileReader()
            reader.SetFileName(str(paths[0]))
            reader.ReadImageInformation()
            affine = np.eye(len(reader.GetSize()) + 1)
            affine[:-1, :-1] = np.asarray(reader.GetDirection()).reshape(affine.shape[0] - 1, -1) @ np.diag(
                reader.GetSpacing()
            )
            return (*reader.GetSize(), reader.GetNumberOfComponents()), affine
        if len(paths) == 1 and name.endswith(IMAGE_2D_SUFFIXES):
            from PIL import Image

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(paths[0]) as image:  # a decompression bomb raises: the 2D reader names it
                    return (image.width, image.height, len(image.getbands())), None
        if paths[0].is_dir() or name.endswith(".dcm"):
            return _dicom_geometry(paths)
    except Exception:  # an unreadable header is the reader's to report, with its own message
        return None
    return None


def header_voxel_count(filename: Any) -> int | None:
    """The number of voxels of an image from its header only, or ``None`` when the format is not known here.

    Args:
        filename: a file (NIfTI, MGH, NRRD, MHA, 2D images), a DICOM folder or ``.dcm`` files (a sequence for a
            series).
    """
    geometry = header_geometry(filename)
    return None if geometry is None else math.prod(geometry[0])


def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if num_bytes < 1024 or unit == "TiB":
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TiB"


def memory_refusal(
    filename: Any,
    memory_per_voxel: float = DEFAULT_MEMORY_PER_VOXEL,
    max_memory_fraction: float | None = DEFAULT_MAX_MEMORY_FRACTION,
    target_spacing: Sequence[float] | float | None = None,
) -> str | None:
    """The reason to refuse ``filename`` before reading it, or ``None`` when it fits (or cannot be judged).

    With ``target_spacing`` the size judged is the larger of the stored grid and the grid after resampling to that
    spacing (``Orientationd`` + ``Spacingd``, see :func:`~monai_unet2.data.affines.resampled_voxel_count`): a 90 KB
    file of 40 mm voxels becomes billions of voxels at 1 mm.

    Args:
        filename: what is given to the loader.
        memory_per_voxel: bytes the pipeline needs per voxel while processing the volume in one piece
            (default 24: the float32 image, a few float32 class probabilities and the label map).
        max_memory_fraction: refuse when the estimate exceeds this fraction of :func:`available_memory`;
            ``None`` switches the check off.
        target_spacing: the spacing the pipeline resamples to (``Spacingd``'s ``pixdim``), per world axis or one
            value; ``None`` when it does not resample.
    """
    if max_memory_fraction is None:
        return None
    geometry = header_geometry(filename)
    available = available_memory()
    if geometry is None or available is None:
        return None
    shape, affine = geometry
    stored = math.prod(shape)
    voxels, resampled = stored, ""
    if target_spacing is not None and affine is not None and affine_problem(affine) is None:
        after = resampled_voxel_count(shape, affine, target_spacing)
        if after > stored:
            spacing = ", ".join(f"{v:g}" for v in np.linalg.norm(affine[:3, :3], axis=0)[: min(3, len(shape))])
            target = ", ".join(f"{float(t):g}" for t in ensure_tuple(target_spacing))
            voxels = after
            resampled = f" ({stored:,} voxels of {spacing} mm resampled to {target} mm spacing)"
    needed = voxels * float(memory_per_voxel)
    allowed = available * float(max_memory_fraction)
    if needed <= allowed:
        return None
    names = ensure_tuple(filename)
    path = str(names[0]) if len(names) == 1 else f"{names[0]} (+{len(names) - 1} files)"
    return (
        f"{path}: volume too large to process in one piece: {voxels:,} voxels{resampled} need about {_size(needed)} "
        f"({memory_per_voxel:g} bytes per voxel), more than {max_memory_fraction:.0%} of the {_size(available)} "
        "available; refused before reading instead of risking the out-of-memory killer. Crop or resample it, "
        "use a machine with more memory, or adjust memory_per_voxel / max_memory_fraction of SafeLoadImaged."
    )
