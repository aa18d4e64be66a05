"""Whether an output already on disk is a finished output of its input, for ``--resume True``.

A resumed run skips the inputs whose outputs exist. "Exists" is not enough: a 0-byte file (a full disk, a copy
interrupted outside this program), a truncated ``.nii.gz``, an output of another input of the same name, or a DICOM
SEG that does not parse would be counted as done and never redone. :func:`output_problem` opens the output with the
library that reads its format and compares it with its input's header:

- NIfTI: nibabel reads the header and every voxel (a truncated gzip stream fails here); 2 or 3 spatial dimensions, a
  finite affine, and the input's spatial shape (for a DICOM series: its rows and columns, and no more slices than its
  files);
- PNG: Pillow checks the chunks, decodes the pixels, and the size must be the input image's;
- DICOM SEG: pydicom parses the whole file; it must be a Segmentation object with pixel data, referencing the
  input's series.

Atomic writing (:func:`~monai_unet2.data.files.write_atomically`) means this program never leaves such files under a
final name; they come from elsewhere, and the check costs one read of each output, a fraction of its inference.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter

import numpy as np

from monai_unet2.data.files import dicom_files
from monai_unet2.data.volumes import header_geometry

__all__ = ["output_problem"]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _nifti_problem(output: str, source: str) -> str | None:
    import nibabel

    image = nibabel.load(output)
    data = np.asarray(image.dataobj)
    if data.ndim not in (2, 3) or 0 in data.shape:
        return f"it holds an array of shape {data.shape}, not a 2D or 3D label map"
    if not np.all(np.isfinite(image.affine)):
        return "its affine holds NaN or infinite values"
    geometry = header_geometry(source)
    if geometry is None:
        return None
    shape = geometry[0]
    if os.path.isdir(source) or source.lower().endswith(".dcm"):
        in_plane, dims = Counter(shape[:2]), Counter(data.shape)
        slices = list((dims - in_plane).elements())
        if data.ndim != 3 or in_plane - dims or slices[0] > shape[2]:
            return (
                f"its shape {tuple(data.shape)} does not fit the DICOM series ({shape[1]} rows, {shape[0]} columns, "
                f"{shape[2]} files)"
            )
        return None
    expected = tuple(shape[:3]) if len(shape) >= 3 else tuple(shape)
    if tuple(data.shape) != expected[: data.ndim] or data.ndim < min(len(expected), 3):
        return f"its shape {tuple(data.shape)} is not the input's spatial shape {expected}"
    return None


def _png_problem(output: str, source: str) -> str | None:
    from PIL import Image

    with Image.open(output) as image:
        image.verify()
    with Image.open(output) as image:
        image.load()
        size = image.size
    geometry = header_geometry(source)
    if geometry is not None and tuple(geometry[0][:2]) != size:
        return f"its size {size[0]} x {size[1]} is not the input's {geometry[0][0]} x {geometry[0][1]}"
    return None


def _seg_problem(output: str, source: str) -> str | None:
    import pydicom

    dataset = pydicom.dcmread(output)
    if str(dataset.get("SOPClassUID", "")) != SEGMENTATION_STORAGE or "PixelData" not in dataset:
        return "it is not a DICOM Segmentation object with pixel data"
    referenced = dataset.get("ReferencedSeriesSequence")
    referenced_uid = str(referenced[0].SeriesInstanceUID) if referenced else None
    first = next(dicom_files(source, log_ignored=False), None) if os.path.isdir(source) else None
    if first is not None and referenced_uid is not None:
        source_uid = str(pydicom.dcmread(first, stop_before_pixels=True).get("SeriesInstanceUID", ""))
        if source_uid and source_uid != referenced_uid:
            return f"it references series {referenced_uid}, not the input's series {source_uid}"
    return None


def output_problem(output: str | os.PathLike, source: str | os.PathLike) -> str | None:
    """Why ``output`` is not a finished output of ``source``, or ``None`` when it is one.

    Args:
        output: an output file (``.nii.gz``, ``.png`` or DICOM SEG ``.dcm``) named after ``source``.
        source: the input it was made from (an image file or a DICOM series folder).

    Returns:
        ``None``, or a phrase such as ``"an empty file (0 bytes)"`` or ``"it cannot be read (EOFError: ...)"``.
    """
    path, source = os.fspath(output), os.fspath(source)
    if not os.path.lexists(path):
        return "it does not exist"
    if not os.path.isfile(path):
        return "it is not a regular file" if os.path.exists(path) else "it is a broken symbolic link"
    if os.path.getsize(path) == 0:
        return "an empty file (0 bytes)"
    name = path.lower()
    check = _png_problem if name.endswith(".png") else _seg_problem if name.endswith(".dcm") else _nifti_problem
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return check(path, source)
    except Exception as error:
        message = " ".join(str(error).split())[:200]
        return f"it cannot be read ({type(error).__name__}: {message})"
