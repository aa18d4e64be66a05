"""The hostile-input catalogue's cases: one :class:`Case` per hostile input, built by
:mod:`hostile_builders` from committed data and run by ``benchmarks/hostile_inputs.py``.

Adding a case is one entry in ``CASES``: a name, the expected outcome, a builder (a function of the case's folder
returning the datalist entry), the pipeline (a key of ``hostile_inputs.PIPELINES``) and, for processed cases, a check.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostile_builders import (
    CT3,
    CT20,
    build_dicom,
    build_enhanced,
    build_nifti,
    build_png,
    copy_case,
    write_bytes,
)

Check = Callable[[Any, str, Callable[[Any], Any]], "str | None"]


@dataclass
class Case:
    """One hostile input.

    Attributes:
        name: what it is, e.g. ``"NIfTI: complex voxels"``.
        expected: ``"processed"`` or ``"refused"``.
        build: writes the input into the given folder and returns the datalist entry (a path, or a dict of paths).
        pipeline: a key of ``hostile_inputs.PIPELINES``.
        check: for processed cases: ``check(output, log_text, rerun)`` returns ``None`` when the result is right,
            else what is wrong; ``rerun(entry)`` runs another input through the same pipeline.
        skip: a reason not to run the case here (e.g. it needs a non-root user), or ``None``.
    """

    name: str
    expected: str
    build: Callable[[Path], Any]
    pipeline: str = "hippocampus"
    check: Check | None = None
    skip: str | None = None


def _shape(expected: tuple) -> Check:
    return lambda out, log, rerun: (
        None if tuple(out["image"].shape) == expected else f"shape {tuple(out['image'].shape)}"
    )


def _all(*checks: Check) -> Check:
    return lambda out, log, rerun: next((problem for check in checks if (problem := check(out, log, rerun))), None)


def _not_logged(text: str) -> Check:
    return lambda out, log, rerun: f"logged {text!r}" if text in log else None


def _not_saturated(out: Any, log: str, rerun: Callable[[Any], Any]) -> str | None:
    """At most half the pixels share one value (PIL's RGB conversion of the 16-bit CT slice saturates 79 %)."""
    _, counts = out["image"][0].unique(return_counts=True)
    share = float(counts.max()) / out["image"][0].numel()
    return None if share < 0.5 else f"{share:.1%} of the pixels have one value (saturated)"


def _warned(text: str) -> Check:
    return lambda out, log, rerun: None if text in log else f"no warning containing {text!r}"


def _nifti_outputs(shape: tuple) -> Check:
    def check(outputs: Any, log: str, rerun: Callable[[Any], Any]) -> str | None:
        import nibabel as nib

        found = [nib.load(path).shape for path in outputs if str(path).endswith(".nii.gz")]
        return None if found == [shape] else f"outputs {found}, expected one of shape {shape}"

    return check


def _same_as(reference: Path) -> Check:
    """The output equals that of the untouched input ``reference`` through the same pipeline."""

    def check(out: Any, log: str, rerun: Callable[[Any], Any]) -> str | None:
        import torch

        expected = rerun(reference)["image"]
        same = out["image"].shape == expected.shape and torch.allclose(out["image"], expected)
        return None if same else "voxels differ from the untouched input read the same way"

    return check


CASES: list[Case] = [
    # content versus name
    Case(
        "NIfTI read by content: no DICOM reader tried",
        "processed",
        lambda d: copy_case(d),
        check=_shape((1, 36, 52, 38)),
    ),
    Case("text file named .nii.gz", "refused", lambda d: write_bytes(d / "notes.nii.gz", b"patients 1-20\n")),
    Case("gzip NIfTI named .nii", "refused", lambda d: copy_case(d, "compressed.nii")),
    Case("uncompressed NIfTI named .nii.gz", "refused", lambda d: build_nifti(d, "plain.nii", name="plain.nii.gz")),
    Case("0-byte .nii.gz", "refused", lambda d: write_bytes(d / "empty.nii.gz", b"")),
    Case("folder named like a file", "refused", lambda d: (d / "case.nii.gz").mkdir() or d / "case.nii.gz"),
    Case("PNG named .nii.gz", "refused", lambda d: build_png(d, "photo.png", name="photo.nii.gz")),
    Case("truncated .nii.gz", "refused", lambda d: copy_case(d, truncate=0.5)),
    Case("broken symbolic link", "refused", lambda d: os.symlink(d / "gone.nii.gz", d / "x.nii.gz") or d / "x.nii.gz"),
    Case(
        "permission denied",
        "refused",
        lambda d: copy_case(d, mode=0),
        skip="running as root: permissions do not stop root" if os.geteuid() == 0 else None,
    ),
    # NIfTI header lies and surprises
    Case("NIfTI complex voxels", "refused", lambda d: build_nifti(d, "complex.nii.gz", dtype="complex64")),
    Case("NIfTI RGB voxels", "refused", lambda d: build_nifti(d, "rgb.nii.gz", dtype="rgb")),
    Case("NIfTI zero column in the affine", "refused", lambda d: build_nifti(d, "zero.nii.gz", affine="zero_column")),
    Case("NIfTI NaN in the affine", "refused", lambda d: build_nifti(d, "nan.nii.gz", affine="nan")),
    Case(
        "NIfTI qform and sform 50 mm apart",
        "processed",
        lambda d: build_nifti(d, "qs.nii.gz", affine="qform_sform_50mm"),
        check=_warned("place the same voxel up to 50 mm apart"),
    ),
    Case("NIfTI int8 with huge scl_slope", "refused", lambda d: build_nifti(d, "slope.nii.gz", scaling=(1e37, 0))),
    Case("NIfTI int8 with scl_slope 2", "processed", lambda d: build_nifti(d, "s2.nii.gz", scaling=(2.0, -3.0))),
    Case("NIfTI negative size in the header", "refused", lambda d: build_nifti(d, "neg.nii", dim1=-5)),
    Case("NIfTI 4D time series", "refused", lambda d: build_nifti(d, "fmri.nii.gz", frames=5)),
    Case("NIfTI NaN voxels", "refused", lambda d: build_nifti(d, "nan_voxels.nii.gz", nan_voxels=5)),
    Case(
        "NIfTI zero-size axis",
        "refused",
        lambda d: build_nifti(d, "empty_axis.nii.gz", crop=(slice(None), slice(0, 0))),
    ),
    Case("NIfTI shorter than its header", "refused", lambda d: build_nifti(d, "short.nii", cut_bytes=7)),
    Case(
        "NIfTI big-endian",
        "processed",
        lambda d: build_nifti(d, "big.nii.gz", big_endian=True),
        check=_shape((1, 36, 52, 38)),
    ),
    Case(
        "NIfTI .hdr/.img pair given as .img",
        "processed",
        lambda d: build_nifti(d, "pair.img", pair=True),
        check=_shape((1, 36, 52, 38)),
    ),
    Case("NIfTI-2", "processed", lambda d: build_nifti(d, "two.nii.gz", nifti2=True), check=_shape((1, 36, 52, 38))),
    Case(
        "NIfTI without orientation (codes 0)",
        "processed",
        lambda d: build_nifti(d, "noorient.nii.gz", affine="no_codes"),
        check=_warned("no orientation"),
    ),
    Case(
        "NIfTI 40 mm voxels (4.2 billion voxels at 1 mm)",
        "refused",
        lambda d: build_nifti(d, "coarse.nii.gz", zooms=40.0),
    ),
    Case(
        "single-slice NIfTI, whole inference",
        "processed",
        lambda d: build_nifti(d, "one.nii.gz", crop=(slice(None), slice(None), slice(19, 20))),
        "hippocampus-run",
        _nifti_outputs((36, 52, 1)),
    ),
    Case(
        "label on another grid (2 mm shift)",
        "refused",
        lambda d: {"image": copy_case(d), "label": build_nifti(d, "label.nii.gz", label=True, shift=2.0)},
        "hippocampus-evaluate",
    ),
    # DICOM
    Case("DICOM damaged header in an end slice", "refused", lambda d: build_dicom(d, damage_header=0)),
    Case("DICOM rescale missing in 4 of 20 slices", "refused", lambda d: build_dicom(d, drop_rescale=(3, 4, 5, 6))),
    Case("DICOM RescaleSlope 'abcd'", "refused", lambda d: build_dicom(d, raw={2: ("RescaleSlope", b"abcd")})),
    Case(
        "DICOM identical duplicate file",
        "processed",
        lambda d: build_dicom(d, duplicate=7),
        check=_same_as(CT20),
    ),
    Case("DICOM two series of equal size", "refused", lambda d: build_dicom(d, CT3, second_series=True)),
    Case("DICOM enhanced multi-frame", "processed", lambda d: build_enhanced(d), check=_same_as(CT20)),
    Case("DICOM NaN PixelSpacing", "refused", lambda d: build_dicom(d, raw={4: ("PixelSpacing", b"nan\\0.97")})),
    Case("DICOM PixelSpacing missing", "refused", lambda d: build_dicom(d, delete={4: "PixelSpacing"})),
    Case(
        "DICOM non-perpendicular orientation",
        "refused",
        lambda d: build_dicom(d, raw={4: ("ImageOrientationPatient", b"1\\0\\0\\1\\0\\0")}),
    ),
    Case(
        "DICOM 0-byte .dcm in the series",
        "refused",
        lambda d: write_bytes(build_dicom(d, CT3) / "zero.dcm", b"").parent,
    ),
    Case(
        "DICOM text file named .dcm in the series",
        "refused",
        lambda d: write_bytes(build_dicom(d, CT3) / "readme.dcm", b"exported by PACS\n").parent,
    ),
    Case("DICOM missing slice (gap)", "refused", lambda d: build_dicom(d, drop_files=(7,))),
    Case(
        "DICOM unsupported transfer syntax",
        "refused",
        lambda d: build_dicom(d, transfer_syntax="1.2.840.10008.1.2.4.92"),
    ),
    Case("DICOM pixel data shorter than Rows x Columns", "refused", lambda d: build_dicom(d, CT3, short_pixels=1)),
    Case(
        "DICOM single-slice series, whole inference",
        "processed",
        lambda d: build_dicom(d / "in", CT3, keep=(1,)),
        "hippocampus-run",
        _nifti_outputs((512, 512, 1)),
    ),
    # 2D images (DRIVE)
    Case(
        "16-bit greyscale PNG",
        "processed",
        lambda d: build_png(d, "ct16.png", kind="grey16"),
        "drive",
        _all(_shape((3, 512, 512)), _not_saturated),
    ),
    Case("PNG with a damaged header (CRC)", "refused", lambda d: build_png(d, "crc.png", flip_byte=29), "drive"),
    Case("truncated JPEG", "refused", lambda d: build_png(d, "cut.jpg", kind="jpeg", truncate=0.05), "drive"),
    Case(
        "16-bit colour PNG (PIL reads 8 bits)",
        "processed",
        lambda d: build_png(d, "rgb16.png", kind="rgb16"),
        "drive",
        _warned("a 16-bit colour PNG: PIL reads it at 8 bits per channel"),
    ),
    Case("multi-frame TIFF", "refused", lambda d: build_png(d, "stack.tif", kind="multiframe"), "drive"),
    Case("truncated PNG", "refused", lambda d: build_png(d, "cut.png", truncate=0.5), "drive"),
    Case("decompression bomb PNG (50000 x 50000)", "refused", lambda d: build_png(d, "bomb.png", kind="bomb"), "drive"),
    Case("1 x 1 image", "refused", lambda d: build_png(d, "tiny.png", kind="tiny"), "drive"),
    Case(
        "palette PNG",
        "processed",
        lambda d: build_png(d, "palette.png", kind="palette"),
        "drive",
        _shape((3, 512, 512)),
    ),
    Case(
        "JPEG named .png", "processed", lambda d: build_png(d, "photo.png", kind="jpeg"), "drive", _shape((3, 512, 512))
    ),
]
