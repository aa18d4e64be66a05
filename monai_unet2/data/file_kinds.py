"""What an input really is, from its content: the first bytes of a file (magic numbers), or a folder's DICOM files.

MONAI's ``LoadImage`` chooses a reader by file name, or by trying each registered reader in turn and keeping the
first that does not raise. Both go wrong on hostile input: every NIfTI input logs ``DicomSeriesReader: unable to
load ...`` when the DICOM reader is tried first, and a text file named ``.nii.gz`` or a gzip stream named ``.nii``
ends with an error about a missing ``DICM`` prefix, blaming the wrong format. :func:`sniff` reads the signature of
the file instead (gzip, NIfTI-1/2 and Analyze headers, the DICOM preamble, PNG/JPEG/TIFF/GIF/BMP/JPEG 2000, NRRD,
MetaImage, NumPy), so that :class:`~monai_unet2.transforms.SafeLoadImage` can hand it to the one reader that fits,
and :func:`kind_mismatch` can refuse a file whose name and content disagree, saying what it really holds.

No library does this for medical formats: ``imghdr`` is gone from Python 3.13 and knows none of them, ``filetype``
and ``python-magic`` know neither NIfTI nor the DICOM preamble.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from monai_unet2.data.files import dicom_files

__all__ = ["FileKind", "kind_mismatch", "sniff", "suffix_family"]

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img", ".img.gz", ".hdr.gz")
MGH_SUFFIXES = (".mgh", ".mgz")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".jp2", ".j2k")
_SIGNATURES_2D = (
    (b"\x89PNG\r\n\x1a\n", "png", "a PNG image"),
    (b"\xff\xd8\xff", "jpeg", "a JPEG image"),
    (b"II*\x00", "tiff", "a TIFF image"),
    (b"MM\x00*", "tiff", "a TIFF image"),
    (b"II+\x00", "tiff", "a BigTIFF image"),
    (b"MM\x00+", "tiff", "a BigTIFF image"),
    (b"GIF87a", "gif", "a GIF image"),
    (b"GIF89a", "gif", "a GIF image"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "jpeg2000", "a JPEG 2000 codestream"),
)
_HEAD_BYTES = 1024
FAMILY_NAMES = {
    "nifti": "NIfTI",
    "dicom": "DICOM",
    "image2d": "2D image",
    "nrrd": "NRRD",
    "metaimage": "MetaImage",
    "mgh": "MGH",
    "numpy": "NumPy",
}


@dataclass(frozen=True)
class FileKind:
    """What an input holds.

    Attributes:
        family: the reader family that fits (``"nifti"``, ``"dicom"``, ``"image2d"``, ``"nrrd"``, ``"metaimage"``,
            ``"mgh"``, ``"numpy"``), or ``None`` when no image reader fits.
        kind: the precise kind (``"nifti1"``, ``"nifti1_gz"``, ``"nifti2"``, ``"analyze"``, ``"dicom_file"``,
            ``"dicom_folder"``, ``"png"``, ``"tiff"``, ... or ``"missing"``, ``"empty"``, ``"folder"``, ``"text"``,
            ``"gzip"``, ``"unreadable"``, ``"unknown"``).
        description: what it is, for messages (``"gzip-compressed NIfTI-1"``, ``"a text file"``).
        compressed: the content is gzip-compressed.
    """

    family: str | None
    kind: str
    description: str
    compressed: bool = False


def _text_preview(head: bytes) -> str | None:
    """The first line of ``head`` when it reads as text, else ``None``."""
    if not head or b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    if printable < 0.95 * len(text):
        return None
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line[:40] + ("..." if len(line) > 40 else "")


def _nifti_header_kind(head: bytes) -> tuple[str, str] | None:
    if len(head) >= 348:
        for order in ("<", ">"):
            if struct.unpack(f"{order}i", head[:4])[0] == 348:
                magic = head[344:348]
                if magic == b"n+1\x00":
                    return "nifti1", "NIfTI-1"
                if magic == b"ni1\x00":
                    return "nifti1_pair", "a NIfTI-1 header (.hdr/.img pair)"
                return "analyze", "an Analyze 7.5 header"
    if len(head) >= 12:
        for order in ("<", ">"):
            if struct.unpack(f"{order}i", head[:4])[0] == 540 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
                return "nifti2", "NIfTI-2"
    return None


def _gzip_head(path: str) -> bytes | None:
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read(_HEAD_BYTES)
    except (OSError, EOFError, zlib.error):
        return None


def _sniff_bytes(head: bytes, path: str) -> FileKind:
    nifti = _nifti_header_kind(head)
    if nifti is not None:
        return FileKind("nifti", nifti[0], nifti[1])
    if 4 <= len(head) < 348 and 348 in (struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]):
        return FileKind(None, "truncated", f"a NIfTI-1 header cut short: {len(head)} of its 348 bytes (truncated)")
    if len(head) >= 132 and head[128:132] == b"DICM":
        return FileKind("dicom", "dicom_file", "a DICOM file")
    for signature, kind, description in _SIGNATURES_2D:
        if head.startswith(signature):
            return FileKind("image2d", kind, description)
    if head.startswith(b"BM") and len(head) >= 26 and struct.unpack("<I", head[2:6])[0] > 26:
        return FileKind("image2d", "bmp", "a BMP image")
    if head.startswith(b"NRRD000"):
        return FileKind("nrrd", "nrrd", "an NRRD file")
    if head.startswith(b"\x93NUMPY"):
        return FileKind("numpy", "npy", "a NumPy array file")
    if head.startswith(b"PK\x03\x04"):
        if path.lower().endswith(".npz"):
            return FileKind("numpy", "npz", "a NumPy .npz archive")
        return FileKind(None, "zip", "a zip archive")
    text = _text_preview(head)
    if text is not None:
        if text.split("=")[0].strip() in ("ObjectType", "NDims"):
            return FileKind("metaimage", "metaimage", "a MetaImage header")
        return FileKind(None, "text", f"a text file (starting {text!r})" if text else "a text file")
    if path.lower().endswith((".dcm", ".dicom")) and len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00"):
        return FileKind("dicom", "dicom_file", "a DICOM file without preamble")
    if path.lower().endswith(MGH_SUFFIXES) and len(head) >= 4 and struct.unpack(">i", head[:4])[0] == 1:
        return FileKind("mgh", "mgh", "an MGH volume")
    return FileKind(None, "unknown", f"binary data of no known image format (first bytes {head[:8].hex(' ')})")


def sniff(path: str | os.PathLike) -> FileKind:
    """What ``path`` holds, from its first bytes (or, for a folder, whether it holds DICOM files).

    Never raises for a bad input: missing, unreadable, empty and unknown inputs come back as kinds with
    ``family=None`` and a description for the refusal.

    Args:
        path: a file or a folder.
    """
    name = os.fspath(path)
    if not os.path.lexists(name):
        return FileKind(None, "missing", "file not found")
    if not os.path.exists(name):
        return FileKind(None, "missing", f"a broken symbolic link to {os.readlink(name)}")
    if os.path.isdir(name):
        try:
            has_dicom = next(iter(dicom_files(name, log_ignored=False)), None) is not None
        except PermissionError:
            return FileKind(None, "unreadable", "a folder that cannot be listed (permission denied)")
        if has_dicom:
            return FileKind("dicom", "dicom_folder", "a DICOM folder")
        subfolders = sorted(entry.name for entry in os.scandir(name) if entry.is_dir())
        if subfolders:
            shown = ", ".join(subfolders[:3]) + (", ..." if len(subfolders) > 3 else "")
            return FileKind(None, "folder", f"a folder without DICOM files; its sub-folders ({shown}) are not searched")
        return FileKind(None, "folder", "a folder without DICOM files")
    mode = os.stat(name).st_mode
    if not stat.S_ISREG(mode):
        return FileKind(None, "special", "not a regular file (a device, pipe or socket)")
    try:
        with open(name, "rb") as stream:
            head = stream.read(_HEAD_BYTES)
    except PermissionError:
        return FileKind(None, "unreadable", "not readable (permission denied)")
    except OSError as error:
        return FileKind(None, "unreadable", f"not readable ({error.strerror or error})")
    if not head:
        return FileKind(None, "empty", "an empty file (0 bytes)")
    partner = re.sub(r"\.img(\.gz)?$", r".hdr\1", name, flags=re.IGNORECASE)
    if partner != name and os.path.isfile(partner):  # the voxels of a .hdr/.img pair: its header says what it is
        return sniff(partner)
    if head.startswith(b"\x1f\x8b"):
        inner = _gzip_head(name)
        if not inner:
            return FileKind(None, "gzip", "gzip data that cannot be decompressed (truncated or corrupt)", True)
        found = _sniff_bytes(inner, name[:-3] if name.lower().endswith(".gz") else name)
        description = "gzip-compressed " + re.sub(r"^an? ", "", found.description)
        if found.family is None:
            return FileKind(None, "gzip", description, True)
        return FileKind(found.family, f"{found.kind}_gz", description, True)
    return _sniff_bytes(head, name)


def suffix_family(path: str | os.PathLike) -> str | None:
    """The reader family a file name promises (``"nifti"`` for ``x.nii.gz``), or ``None`` for an unknown suffix."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(MGH_SUFFIXES):
        return "mgh"
    if name.endswith((".dcm", ".dicom")):
        return "dicom"
    if name.endswith(IMAGE_2D_SUFFIXES):
        return "image2d"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith((".mha", ".mhd")):
        return "metaimage"
    if name.endswith((".npy", ".npz")):
        return "numpy"
    return None


def kind_mismatch(path: str | os.PathLike, kind: FileKind) -> str | None:
    """Why the name and the content of ``path`` disagree in a way no reader can work around, or ``None``.

    A NIfTI reader decides from the name whether to decompress, so compression must match the ``.gz`` suffix; a file
    named as one medical format that holds another (a PNG named ``.nii.gz``) is refused rather than read as something
    its name denies. Folders and 2D images under another 2D suffix (PIL reads by content) are fine.

    Args:
        path: the input.
        kind: what :func:`sniff` found in it.
    """
    if kind.family is None or kind.kind == "dicom_folder":
        return None
    name = Path(path).name.lower()
    promised = suffix_family(name)
    if promised == "nifti" and kind.family == "nifti":
        if name.endswith(".gz") and not kind.compressed:
            return f"holds uncompressed {kind.description} but is named {Path(path).suffix}: rename it without .gz"
        if not name.endswith(".gz") and kind.compressed:
            return f"holds {kind.description} but is named without .gz: rename it to end in .nii.gz"
        return None
    if promised in (None, kind.family):
        return None
    return f"is {kind.description}, not the {FAMILY_NAMES[promised]} file its name says"
