"""Choosing the reader of an input from what it holds, and refusing by name what no reader can read correctly.

Used by :class:`~monai_unet2.transforms.SafeLoadImage`: :func:`input_family` sniffs each path
(:func:`~monai_unet2.data.file_kinds.sniff`) and refuses missing, unreadable, empty, non-image or misnamed inputs
with one line naming the file and what it really is; :func:`pick_reader` returns the registered reader of that
family (or a default one), so no reader is tried on a file it cannot read; :func:`header_problem` runs the
family's header checks (NIfTI: :func:`~monai_unet2.data.nifti_checks.nifti_problem`; 2D images:
:func:`~monai_unet2.data.images2d.image_problem`) before any voxel is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from monai.data import ImageReader, NibabelReader, NumpyReader
from monai.utils import ensure_tuple

from monai_unet2.data.dicom_series import DicomSeriesReader
from monai_unet2.data.file_kinds import FAMILY_NAMES, kind_mismatch, sniff
from monai_unet2.data.images2d import DEFAULT_MAX_PIXELS, Image2DReader, image_problem
from monai_unet2.data.nifti_checks import DEFAULT_QFORM_SFORM_TOLERANCE, nifti_problem
from monai_unet2.data.volumes import VolumeFileError, describe_read_error

__all__ = ["FAMILY_READERS", "header_problem", "input_family", "pick_reader"]

FAMILY_READERS: dict[str, tuple[str, ...]] = {
    "dicom": ("DicomSeriesReader", "PydicomReader", "ITKReader"),
    "nifti": ("NibabelReader", "ITKReader"),
    "mgh": ("NibabelReader",),
    "image2d": ("Image2DReader", "PILReader", "ITKReader"),
    "nrrd": ("NrrdReader", "ITKReader"),
    "metaimage": ("ITKReader",),
    "numpy": ("NumpyReader",),
}


def _name(filename: Any) -> str:
    names = ensure_tuple(filename)
    return str(names[0]) if len(names) == 1 else f"{names[0]} (+{len(names) - 1} files)"


def input_family(filename: Any) -> str:
    """The reader family of ``filename`` (one path, or several read together), from the content.

    Args:
        filename: what is given to the loader.

    Raises:
        VolumeFileError: ``"<path>: cannot read image (<what it is>)"`` for a missing, unreadable or empty file, a
            folder without DICOM files, a file holding no image format (text, an unknown binary, a zip), a file
            whose name and content disagree in a way no reader works around, or paths of different families.
    """
    families = []
    for name in ensure_tuple(filename):
        path = os.fspath(name)
        kind = sniff(path)
        if kind.family is None:
            raise VolumeFileError(f"{path}: cannot read image ({kind.description})")
        mismatch = kind_mismatch(path, kind)
        if mismatch is not None:
            raise VolumeFileError(f"{path}: cannot read image (it {mismatch})")
        families.append(kind.family)
    if len(set(families)) > 1:
        found = ", ".join(sorted({FAMILY_NAMES[f] for f in families}))
        raise VolumeFileError(f"{_name(filename)}: cannot read files of different formats together ({found})")
    return families[0]


def _matches(reader: ImageReader, family: str) -> bool:
    wanted = FAMILY_READERS.get(family, ())
    return any(cls.__name__ in wanted for cls in type(reader).__mro__)


def _default_reader(family: str) -> ImageReader | None:
    defaults = {
        "dicom": DicomSeriesReader,
        "nifti": NibabelReader,
        "mgh": NibabelReader,
        "image2d": Image2DReader,
        "numpy": NumpyReader,
    }
    return defaults[family]() if family in defaults else None


def pick_reader(readers: Sequence[ImageReader], family: str, filename: Any) -> ImageReader:
    """The reader for an input of ``family``: the last registered one of that family (``LoadImage`` gives the last
    registered reader priority, and user readers are registered after MONAI's defaults), else a default one.

    Args:
        readers: the loader's registered readers, in registration order.
        family: from :func:`input_family`.
        filename: named in the message when no installed reader fits.

    Raises:
        VolumeFileError: no installed reader reads this format (NRRD or MetaImage without ``itk`` / ``pynrrd``).
    """
    for reader in reversed(list(readers)):
        if _matches(reader, family):
            return reader
    reader = _default_reader(family)
    if reader is None:
        raise VolumeFileError(
            f"{_name(filename)}: cannot read image (a {FAMILY_NAMES[family]} file, and no installed reader reads "
            f"{FAMILY_NAMES[family]}: install one of {', '.join(FAMILY_READERS[family])}'s libraries, or convert it to "
            "NIfTI)"
        )
    return reader


def header_problem(
    filename: Any,
    family: str,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    qform_sform_tolerance: float = DEFAULT_QFORM_SFORM_TOLERANCE,
) -> str | None:
    """The one-line refusal of ``filename`` from its header(s) (naming the file), or ``None``.

    Args:
        filename: what is given to the loader.
        family: from :func:`input_family`.
        max_pixels: the largest width x height of a 2D image.
        qform_sform_tolerance: NIfTI qform/sform disagreement (mm) above which a warning is logged.
    """
    for name in ensure_tuple(filename):
        path = os.fspath(name)
        if family in ("nifti", "mgh"):
            try:
                problem = nifti_problem(path, qform_sform_tolerance)
            except Exception as error:  # nibabel cannot parse the header
                return describe_read_error(path, error)
        elif family == "image2d":
            try:
                problem = image_problem(path, max_pixels)
            except Exception as error:  # PIL cannot even parse the header
                return describe_read_error(path, error)
        else:
            problem = None
        if problem is not None:
            return f"{path}: {problem}"
    return None
