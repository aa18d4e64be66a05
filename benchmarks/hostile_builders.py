"""Builders of hostile inputs for benchmarks/hostile_inputs.py: each writes a mutated copy of committed data (the
hippocampus sample, the committed CT series, pixels of a CT slice as 2D images) into a folder and returns the path a
datalist would hold. Options name the mutation, so that a catalogue entry stays one line."""

from __future__ import annotations

import gzip
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
CASE_NIFTI = (
    ROOT / "bundles" / "hippocampus_unet25d_segmentation" / "sample_data" / "imagesTr" / "hippocampus_004.nii.gz"
)
LABEL_NIFTI = CASE_NIFTI.parents[1] / "labelsTr" / CASE_NIFTI.name
CT20 = ROOT / "tests" / "data" / "dicom" / "totalseg_ct20" / "ct"
CT3 = ROOT / "tests" / "data" / "dicom" / "dcmqi_ct3slice" / "ct"


def write_bytes(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def copy_case(
    folder: Path, name: str = CASE_NIFTI.name, truncate: float | None = None, mode: int | None = None
) -> Path:
    """The hippocampus sample case, optionally under another name, cut to a fraction of its bytes, or chmod-ed."""
    path = folder / name
    shutil.copy(CASE_NIFTI, path)
    if truncate is not None:
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * truncate)])
    if mode is not None:
        path.chmod(mode)
    return path


def build_nifti(folder: Path, filename: str, name: str | None = None, **change: Any) -> Path:
    """A NIfTI made from the sample case (its label with ``label=True``), with one change:

    ``dtype`` ("complex64", "rgb"), ``affine`` ("zero_column", "nan", "qform_sform_50mm", "no_codes"), ``zooms``
    (voxel size in mm), ``shift`` (mm along x), ``scaling`` ((slope, intercept) on int8 values), ``frames`` (a 4D
    copy), ``nan_voxels`` (count), ``crop`` (index), ``cut_bytes`` (remove from the end), ``big_endian``,
    ``nifti2``, ``pair`` (a .hdr/.img pair; ``filename`` ends in .img), ``dim1`` (written into dim[1] of an
    uncompressed file); ``name`` renames the written file (e.g. an uncompressed file named ``.nii.gz``).
    """
    source = nib.load(LABEL_NIFTI if change.get("label") else CASE_NIFTI)
    array, affine = np.asarray(source.dataobj), source.affine.copy()
    if "crop" in change:
        array = array[change["crop"]]
    if change.get("dtype") == "complex64":
        array = array.astype(np.complex64) * (1 + 1j)
    if change.get("dtype") == "rgb":
        array = np.zeros(array.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    if "frames" in change:
        array = np.stack([array] * change["frames"], axis=-1)
    if "nan_voxels" in change:
        array = array.astype(np.float32)
        array.flat[: change["nan_voxels"]] = np.nan
    if "zooms" in change:
        affine = affine @ np.diag([change["zooms"]] * 3 + [1.0])
    affine[0, 3] += change.get("shift", 0.0)
    image_class = nib.Nifti2Image if change.get("nifti2") else nib.Nifti1Pair if change.get("pair") else nib.Nifti1Image
    image = image_class(array, None)
    broken = affine.copy()
    if change.get("affine") == "zero_column":
        broken[:, 1] = 0
    if change.get("affine") == "nan":
        broken[0, 3] = np.nan
    image.set_sform(broken, code=0 if change.get("affine") == "no_codes" else 1)
    if change.get("affine") == "qform_sform_50mm":
        image.set_qform(affine + np.array([[0, 0, 0, 30], [0, 0, 0, 40], [0, 0, 0, 0], [0, 0, 0, 0]]), code=1)
    elif change.get("affine") in ("zero_column", "nan", "no_codes"):
        image.set_qform(None, code=0)
    else:
        image.set_qform(affine, code=1)
    if change.get("big_endian"):
        image = image_class(array.astype(array.dtype.newbyteorder(">")), None, image.header.as_byteswapped(">"))
    path = folder / filename
    if "scaling" in change:
        image = nib.Nifti1Image(np.clip(array / 20, -128, 127).astype(np.int8), affine)
    nib.save(image, path)
    if "scaling" in change:
        raw = gzip.decompress(path.read_bytes())
        header = nib.Nifti1Header(raw[:348])
        header["scl_slope"], header["scl_inter"] = change["scaling"]
        path.write_bytes(gzip.compress(header.binaryblock + raw[348:]))
    if "dim1" in change:
        raw = bytearray(path.read_bytes())
        raw[42:44] = np.int16(change["dim1"]).tobytes()
        path.write_bytes(bytes(raw))
    if "cut_bytes" in change:
        path.write_bytes(path.read_bytes()[: -change["cut_bytes"]])
    if name is not None:
        path = path.rename(folder / name)
    return path


def build_dicom(folder: Path, source: Path = CT20, **change: Any) -> Path:
    """A copy of a committed series in ``folder/series`` with one change: ``damage_header`` (index of the slice, in
    position order, whose bytes 132-164 are overwritten), ``drop_rescale`` (indices), ``raw`` ({index: (keyword,
    bytes)} written unvalidated), ``delete`` ({index: keyword}), ``duplicate`` (index copied under a new name),
    ``second_series`` (an equally large second series), ``drop_files`` / ``keep`` (indices), ``transfer_syntax``,
    ``short_pixels`` (index whose pixel data loses its last byte pair)."""
    target = folder / "series"
    target.mkdir(parents=True)
    files = sorted(source.glob("*.dcm"))
    for index, path in enumerate(files):
        if index in change.get("drop_files", ()) or ("keep" in change and index not in change["keep"]):
            continue
        ds = pydicom.dcmread(path)
        if index in change.get("drop_rescale", ()):
            del ds.RescaleSlope, ds.RescaleIntercept
        if index in change.get("raw", {}):
            keyword, value = change["raw"][index]
            tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
            ds._dict[tag] = RawDataElement(tag, pydicom.datadict.dictionary_VR(tag), len(value), value, 0, False, True)
        if index in change.get("delete", {}):
            delattr(ds, change["delete"][index])
        if "transfer_syntax" in change:
            ds.file_meta.TransferSyntaxUID = change["transfer_syntax"]
        if index == change.get("short_pixels"):
            ds.PixelData = ds.PixelData[:-2]
        ds.save_as(target / path.name)
        if change.get("second_series"):
            ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77", generate_uid()
            ds.save_as(target / f"other_{index}.dcm")
    if "duplicate" in change:
        shutil.copy(files[change["duplicate"]], target / "copy.dcm")
    if "damage_header" in change:
        by_position = sorted(target.glob("*.dcm"), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
        victim = by_position[change["damage_header"]]
        payload = bytearray(victim.read_bytes())
        payload[132:164] = np.random.default_rng(0).integers(0, 256, 32, dtype=np.uint8).tobytes()
        victim.write_bytes(bytes(payload))
    return target


def build_enhanced(folder: Path) -> Path:
    """An enhanced multi-frame CT converted from the committed 20-slice series by highdicom's legacy converter."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    sources = [pydicom.dcmread(path) for path in sorted(CT20.glob("*.dcm"))]
    for ds in sources:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    target = folder / "enhanced"
    target.mkdir()
    LegacyConvertedEnhancedCTImage(sources, generate_uid(), 99, generate_uid(), 1).save_as(target / "ct.dcm")
    return target


def _ct_pixels() -> np.ndarray:
    return (pydicom.dcmread(sorted(CT3.glob("*.dcm"))[0]).pixel_array.astype(np.int32) + 2000).astype(np.uint16)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _write_png(path: Path, header: bytes, idat: bytes) -> None:
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )


def build_png(
    folder: Path,
    filename: str,
    kind: str = "rgb",
    truncate: float | None = None,
    name: str | None = None,
    flip_byte: int | None = None,
) -> Path:
    """A 2D image from the pixels of a committed CT slice: ``kind`` "rgb" (three windows), "grey16", "rgb16"
    (16 bits per channel), "palette", "jpeg", "tiny" (1 x 1), "multiframe" (3-page TIFF) or "bomb" (a PNG header
    declaring 50000 x 50000); ``truncate`` keeps a fraction of the bytes, ``flip_byte`` inverts one byte."""
    path = folder / filename
    pixels = _ct_pixels()
    windows = [(pixels.astype(np.float64) - low) / width for low, width in ((900, 400), (1000, 1500), (2000, 2400))]
    rgb = np.stack([np.clip(w * 255, 0, 255) for w in windows], axis=-1).astype(np.uint8)
    if kind == "grey16":
        Image.fromarray(pixels).save(path, format="PNG")
    elif kind == "palette":
        Image.fromarray(rgb).quantize(colors=64).save(path, format="PNG")
    elif kind == "jpeg":
        Image.fromarray(rgb).save(path, format="JPEG", quality=95)
    elif kind == "tiny":
        Image.fromarray(rgb[200:201, 300:301]).save(path, format="PNG")
    elif kind == "multiframe":
        frames = [Image.fromarray(np.roll(rgb, shift, axis=0)) for shift in (0, 5, 10)]
        frames[0].save(path, format="TIFF", save_all=True, append_images=frames[1:])
    elif kind == "bomb":
        header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 0, 0, 0, 0)
        _write_png(path, header, zlib.compress(b"\0" * 64))
    elif kind == "rgb16":
        height, width = pixels.shape
        header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
        rows = np.repeat((pixels.astype(np.uint32) * 14).astype(">u2")[..., None], 3, axis=-1).reshape(height, -1)
        _write_png(path, header, zlib.compress(b"".join(b"\0" + row.tobytes() for row in rows)))
    else:
        Image.fromarray(rgb).save(path, format="PNG")
    if truncate is not None:
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * truncate)])
    if flip_byte is not None:
        payload = bytearray(path.read_bytes())
        payload[flip_byte] ^= 0xFF
        path.write_bytes(bytes(payload))
    if name is not None:
        path = path.rename(folder / name)
    return path
