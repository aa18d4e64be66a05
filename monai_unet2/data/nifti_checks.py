"""Header checks for NIfTI (and Analyze/MGH) files, before any voxel is read: what nibabel and MONAI's
``NibabelReader`` would otherwise read silently wrong, or fail on far from the file's name.

- complex voxels: ``NibabelReader`` casts to float32 and drops the imaginary part without a word;
- RGB (structured) voxels: fail inside numpy with a dtype error;
- an affine that is no grid (NaN, a zero column, parallel axes): ``Orientationd`` fails with ``Unable to find out
  axis``, ``Spacingd`` with ``LinAlgError: SVD did not converge``;
- qform and sform that disagree: nibabel (and so MONAI) silently uses the sform, and every output is written with
  qform = sform, so a reader that trusts the qform sees the segmentation elsewhere: a warning names the distance;
- ``scl_slope`` / ``scl_inter`` that scale stored values beyond float32: nibabel's float32 result holds ``inf`` where
  the file holds ordinary numbers, and the NaN/Inf check then reports voxels the file does not contain;
- an uncompressed file shorter than its header promises.

nibabel reads the header lazily and validates none of this (by design: it reads what is there).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from monai_unet2.data.affines import affine_problem, grid_distance_mm

__all__ = ["DEFAULT_QFORM_SFORM_TOLERANCE", "nifti_problem"]

logger = logging.getLogger(__name__)

DEFAULT_QFORM_SFORM_TOLERANCE = 0.1
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _scaling_problem(image: Any) -> str | None:
    # nibabel moves scl_slope / scl_inter from the header into the array proxy when it loads a file
    slope = float(getattr(image.dataobj, "slope", 1.0))
    intercept = float(getattr(image.dataobj, "inter", 0.0))
    if slope == 1.0 and intercept == 0.0:
        return None
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        return f"scl_slope {slope:g} and scl_inter {intercept:g} are not finite: its stored values cannot be scaled"
    stored = image.get_data_dtype()
    if np.issubdtype(stored, np.integer):
        info = np.iinfo(stored)
        bound = max(abs(info.min * slope + intercept), abs(info.max * slope + intercept))
        if bound <= _FLOAT32_MAX:
            return None
    raw = np.asanyarray(image.dataobj.get_unscaled())
    if not raw.size:
        return None
    finite = raw[np.isfinite(raw)] if np.issubdtype(raw.dtype, np.floating) else raw
    if not finite.size:
        return None
    low, high = float(finite.min()), float(finite.max())
    scaled = sorted((low * slope + intercept, high * slope + intercept))
    if max(abs(scaled[0]), abs(scaled[1])) <= _FLOAT32_MAX:
        return None
    return (
        f"scl_slope {slope:g} and scl_inter {intercept:g} scale its stored {stored} values ({low:g}..{high:g}) to "
        f"{scaled[0]:.3g}..{scaled[1]:.3g}, beyond the float32 range (+-3.4e+38) the pipeline reads it in "
        "(the file holds no Inf: the scaling overflows)"
    )


def _qform_sform_warning(path: str, image: Any, tolerance: float) -> None:
    header = image.header
    if int(header["sform_code"]) <= 0 or int(header["qform_code"]) <= 0:
        return
    qform, sform = header.get_qform(), header.get_sform()
    if affine_problem(qform) is not None:
        logger.warning("%s: the qform is unusable and the sform is used (%s)", path, affine_problem(qform))
        return
    distance = grid_distance_mm(qform, sform, image.shape[:3])
    if distance > tolerance:
        logger.warning(
            "%s: qform and sform disagree: they place the same voxel up to %.3g mm apart; the sform is used (as "
            "nibabel and MONAI do), and outputs are written with qform = sform. Check which one is right.",
            path,
            distance,
        )


def _truncation(path: str, image: Any) -> str | None:
    holder = getattr(image, "file_map", {}).get("image")
    data_file = getattr(holder, "filename", None) or path  # the .img of a .hdr/.img pair
    if str(data_file).lower().endswith(".gz") or not hasattr(image.dataobj, "offset"):
        return None
    expected = int(image.dataobj.offset) + int(np.prod(image.shape)) * image.get_data_dtype().itemsize
    size = os.path.getsize(data_file)
    if size < expected:
        which = "file" if os.path.samefile(data_file, path) else f"data file {data_file}"
        return (
            f"cannot read image ({which} shorter than its header says (truncated): {size:,} bytes, the header needs "
            f"{expected:,})"
        )
    return None


def nifti_problem(path: str, qform_sform_tolerance: float = DEFAULT_QFORM_SFORM_TOLERANCE) -> str | None:
    """Why the NIfTI/Analyze/MGH file ``path`` must not be read, or ``None``; logs a warning (naming the file) for
    qform/sform disagreement and for a file without orientation.

    The header is read by nibabel (lazily); the voxels are read only when the scaling could overflow float32.

    Args:
        path: the file.
        qform_sform_tolerance: warn when qform and sform place a voxel further apart than this (mm).

    Raises:
        Exception: whatever nibabel raises on a header it cannot parse (the caller names the file).
    """
    import nibabel

    image = nibabel.load(path)
    dtype = image.get_data_dtype()
    if dtype.fields is not None:
        return f"its voxels are {dtype.names} records (e.g. RGB), not intensities; store one channel per file"
    if np.issubdtype(dtype, np.complexfloating):
        return (
            f"its voxels are complex ({dtype}); reading it as real intensities would drop the imaginary part: store "
            "the magnitude (or the real and imaginary parts as separate files)"
        )
    if any(int(size) < 0 for size in image.shape):
        return f"its header declares a negative size, shape {tuple(int(size) for size in image.shape)}"
    problem = affine_problem(image.affine)
    if problem is not None:
        return problem
    problem = _truncation(path, image) or _scaling_problem(image)
    if problem is not None:
        return problem
    header = image.header
    if isinstance(header, nibabel.Nifti1Header):
        if max(int(header["sform_code"]), int(header["qform_code"])) > 0:
            _qform_sform_warning(path, image, qform_sform_tolerance)
            return None
        reason = "qform_code and sform_code are 0"
    elif isinstance(header, nibabel.AnalyzeHeader):
        reason = "an Analyze header"
    else:
        return None
    logger.warning(
        "%s: no orientation (%s): the voxel sizes are used without position or direction, so outputs line up with "
        "it but not with other images in world space",
        path,
        reason,
    )
    return None
